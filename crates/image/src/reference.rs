//! `REF` as users write it: `PATH` or `PATH:TAG`, where PATH is an OCI
//! image layout directory, an `oci-archive` or a `docker-archive` tarball.
//!
//! A path may itself contain `:`, so the whole string is tried as a path
//! first; only when it names nothing is the part after the last `:` taken
//! as the tag (skopeo's `oci:` transport reads it the same way).

use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// Where an image is and which of its images to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub path: PathBuf,
    /// `None`: the input must hold exactly one image.
    pub tag: Option<String>,
}

impl ImageRef {
    /// Parses `PATH[:TAG]`; the path must exist.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        if s.is_empty() {
            return Err(ImageError::NotFound {
                path: PathBuf::new(),
            });
        }
        if Path::new(s).exists() {
            return Ok(ImageRef {
                path: s.into(),
                tag: None,
            });
        }
        if let Some((path, tag)) = s.rsplit_once(':') {
            if !tag.is_empty() && !tag.contains('/') && Path::new(path).exists() {
                return Ok(ImageRef {
                    path: path.into(),
                    tag: Some(tag.to_string()),
                });
            }
        }
        Err(ImageError::NotFound { path: s.into() })
    }

    /// A reference to `path` with an optional tag.
    pub fn new(path: impl Into<PathBuf>, tag: Option<&str>) -> ImageRef {
        ImageRef {
            path: path.into(),
            tag: tag.map(str::to_string),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_first_then_tag() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("img.tar");
        std::fs::write(&a, b"").unwrap();
        let colon = d.path().join("odd:name");
        std::fs::write(&colon, b"").unwrap();
        let s = a.to_str().unwrap();
        assert_eq!(ImageRef::parse(s).unwrap(), ImageRef::new(&a, None));
        assert_eq!(
            ImageRef::parse(&format!("{s}:v1")).unwrap(),
            ImageRef::new(&a, Some("v1"))
        );
        let c = colon.to_str().unwrap();
        assert_eq!(ImageRef::parse(c).unwrap(), ImageRef::new(&colon, None));
        assert_eq!(
            ImageRef::parse(&format!("{c}:latest"))
                .unwrap()
                .tag
                .as_deref(),
            Some("latest")
        );
        let e = ImageRef::parse(&format!("{s}x:v1")).unwrap_err();
        assert!(matches!(e, ImageError::NotFound { .. }) && e.is_usage());
        assert!(
            e.to_string().contains("PATH") || e.to_string().contains(":TAG"),
            "{e}"
        );
        assert_eq!(format!("{}", ImageRef::new("/a", Some("t"))), "/a:t");
    }
}
