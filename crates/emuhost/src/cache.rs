//! Where the emulated host keeps what it downloads and builds
//! (docs/contracts.md, "Artifact cache"): `<cache root>/emuhost/`.
//!
//! ```text
//! emuhost/kernel/<package version>/{vmlinuz, modules/, meta.json}
//! emuhost/current            the package version in use
//! emuhost/base-<key>.cpio    busybox + modules + /init (reused across runs)
//! emuhost/log/<nonce>.log    the emulated host's kernel messages of a run
//!                            (the newest few kept)
//! ```

use std::path::{Path, PathBuf};

/// No cache directory can be derived from the environment.
#[derive(Debug, thiserror::Error)]
#[error("No cache directory: set ISOLAB_CACHE (or HOME) to a writable directory")]
pub struct CacheError;

/// The cache root from explicit environment values (testable).
pub fn cache_root_from(
    isolab_cache: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, CacheError> {
    let set = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(p) = set(isolab_cache) {
        return Ok(p);
    }
    if let Some(p) = set(xdg_cache_home) {
        return Ok(p.join("isolab"));
    }
    if let Some(p) = set(home) {
        return Ok(p.join(".cache").join("isolab"));
    }
    Err(CacheError)
}

/// The cache root from this process's environment.
pub fn cache_root() -> Result<PathBuf, CacheError> {
    let var = |k| std::env::var(k).ok();
    cache_root_from(
        var("ISOLAB_CACHE").as_deref(),
        var("XDG_CACHE_HOME").as_deref(),
        var("HOME").as_deref(),
    )
}

/// The paths of the emulated host's part of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuhostCache {
    root: PathBuf,
}

impl EmuhostCache {
    /// The emuhost cache under the given cache root.
    pub fn new(cache_root: &Path) -> Self {
        Self {
            root: cache_root.join("emuhost"),
        }
    }

    /// The emuhost cache under this process's cache root.
    pub fn from_env() -> Result<Self, CacheError> {
        Ok(Self::new(&cache_root()?))
    }

    /// `<cache>/emuhost`.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Where the emulated host's kernel logs of recent runs are kept.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    /// Where one extracted kernel package lives.
    pub fn kernel_dir(&self, version: &str) -> PathBuf {
        self.root.join("kernel").join(version)
    }

    /// The file naming the kernel package version in use.
    pub fn current_file(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The cached base initramfs for a content key.
    pub fn base_cpio(&self, key: &str) -> PathBuf {
        self.root.join(format!("base-{key}.cpio"))
    }

    /// Scratch space for downloads, on the same filesystem as the cache so
    /// finished extractions can be renamed into place atomically.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_root_prefers_isolab_cache_then_xdg_then_home() {
        assert_eq!(
            cache_root_from(Some("/c"), Some("/x"), Some("/h")).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_root_from(Some(""), Some("/x"), Some("/h")).unwrap(),
            PathBuf::from("/x/isolab")
        );
        assert_eq!(
            cache_root_from(None, None, Some("/h")).unwrap(),
            PathBuf::from("/h/.cache/isolab")
        );
        assert!(cache_root_from(None, None, None).is_err());
    }

    #[test]
    fn emuhost_paths_live_under_emuhost() {
        let c = EmuhostCache::new(Path::new("/c"));
        assert_eq!(
            c.kernel_dir("6.1.0-1"),
            PathBuf::from("/c/emuhost/kernel/6.1.0-1")
        );
        assert_eq!(c.base_cpio("ab"), PathBuf::from("/c/emuhost/base-ab.cpio"));
        assert_eq!(c.current_file(), PathBuf::from("/c/emuhost/current"));
    }
}
