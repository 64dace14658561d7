//! OCI runtime bundles (`config.json` + a root filesystem), the input of
//! `runc run`, read with `oci-spec`'s runtime types so every mode can run
//! the same process a runc peer runs.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::config::RunSpec;

/// Reading a bundle failed; every variant is the input's fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The directory does not exist.
    #[error("Bundle directory {path:?} not found")]
    NotFound { path: PathBuf },
    /// No `config.json` in it.
    #[error("No config.json in bundle {path:?}: an OCI runtime bundle needs one")]
    MissingConfig { path: PathBuf },
    /// `config.json` does not parse as a runtime spec.
    #[error("Invalid config.json in bundle {path:?}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    /// `root.path` names no directory.
    #[error("Bundle {path:?}: root filesystem {rootfs:?} is not a directory")]
    MissingRootfs { path: PathBuf, rootfs: PathBuf },
    /// No `process` and no command given.
    #[error("Bundle {path:?}: config.json has no process.args and no command was given after --")]
    NoCommand { path: PathBuf },
}

impl BundleError {
    /// Always true: a bundle error is bad input (exit 2).
    pub fn is_usage(&self) -> bool {
        true
    }
}

/// An OCI runtime bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    /// `root.path`, resolved against the bundle directory.
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Reads `dir/config.json` and checks the root filesystem exists.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        if !dir.is_dir() {
            return Err(BundleError::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let cfg = dir.join("config.json");
        if !cfg.is_file() {
            return Err(BundleError::MissingConfig {
                path: dir.to_path_buf(),
            });
        }
        let spec = Spec::load(&cfg).map_err(|e| BundleError::BadConfig {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let root = spec
            .root()
            .as_ref()
            .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
        let rootfs = if root.is_absolute() {
            root
        } else {
            dir.join(root)
        };
        if !rootfs.is_dir() {
            return Err(BundleError::MissingRootfs {
                path: dir.to_path_buf(),
                rootfs,
            });
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            spec,
        })
    }

    /// The bundle's process (runc semantics: the environment as written,
    /// no defaults added); `args` replace `process.args` when given.
    pub fn run_spec(&self, args: Option<&[String]>) -> Result<RunSpec, BundleError> {
        let process = self.spec.process().as_ref();
        let argv: Vec<String> = match args {
            Some(a) if !a.is_empty() => a.to_vec(),
            _ => process.and_then(|p| p.args().clone()).unwrap_or_default(),
        };
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(BundleError::NoCommand {
                path: self.dir.clone(),
            });
        }
        let (uid, gid, additional_gids) = process.map_or((0, 0, Vec::new()), |p| {
            let u = p.user();
            (
                u.uid(),
                u.gid(),
                u.additional_gids().clone().unwrap_or_default(),
            )
        });
        Ok(RunSpec {
            rootfs: self.rootfs.clone(),
            args: argv,
            env: process.and_then(|p| p.env().clone()).unwrap_or_default(),
            cwd: process.map_or_else(|| "/".into(), |p| p.cwd().display().to_string()),
            uid,
            gid,
            additional_gids,
            exposed_ports: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 33, "gid": 33, "additionalGids": [4]},
            "args": ["/bin/httpd", "-f"],
            "env": ["PATH=/bin"],
            "cwd": "/www"
        },
        "root": {"path": "rootfs", "readonly": true}
    }"#;

    #[test]
    fn reads_process_and_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("config.json"), CONFIG).unwrap();
        let b = Bundle::open(d.path()).unwrap();
        assert_eq!(b.rootfs, d.path().join("rootfs"));
        let s = b.run_spec(None).unwrap();
        assert_eq!(s.args, ["/bin/httpd", "-f"]);
        assert_eq!((s.uid, s.gid, s.additional_gids.clone()), (33, 33, vec![4]));
        assert_eq!(
            (s.cwd.as_str(), s.env.clone()),
            ("/www", vec!["PATH=/bin".to_string()])
        );
        let o = b.run_spec(Some(&["/bin/true".into()])).unwrap();
        assert_eq!(o.args, ["/bin/true"]);
    }

    #[test]
    fn bad_bundles_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = Bundle::open(&d.path().join("nope")).unwrap_err();
        assert!(matches!(e, BundleError::NotFound { .. }) && e.is_usage());
        assert!(matches!(
            Bundle::open(d.path()).unwrap_err(),
            BundleError::MissingConfig { .. }
        ));
        std::fs::write(d.path().join("config.json"), "{").unwrap();
        assert!(matches!(
            Bundle::open(d.path()).unwrap_err(),
            BundleError::BadConfig { .. }
        ));
        std::fs::write(d.path().join("config.json"), CONFIG).unwrap();
        assert!(matches!(
            Bundle::open(d.path()).unwrap_err(),
            BundleError::MissingRootfs { .. }
        ));
    }
}
