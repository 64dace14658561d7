//! Where the emulated host keeps what it downloads and builds
//! (docs/contracts.md, "Artifact cache"): `<cache root>/emuhost/`, under
//! the workspace's one cache root ([`cache_root`], owned by
//! `isolab-guest-kernel` with the rest of the cache layout).
//!
//! ```text
//! emuhost/kernel/<package version>/{vmlinuz, modules/, meta.json}
//! emuhost/current            the package version in use
//! emuhost/base-<key>.cpio    busybox + modules + /init (reused across runs)
//! emuhost/log/<nonce>.log    the emulated host's kernel messages of a run
//!                            (the newest few kept)
//! ```

use std::path::{Path, PathBuf};

pub use isolab_guest_kernel::{cache_root, CacheError};

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

/// Removes all but the `keep` most recently modified files in `dir` whose
/// name `matches`. Best effort: a file that cannot be removed stays, and
/// one another run has open stays readable through its fd.
pub(crate) fn keep_newest(dir: &Path, keep: usize, matches: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| matches(&e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(keep);
    for (_, path) in found.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes `contents` to `path`, last modified `secs` after the epoch.
#[cfg(test)]
pub(crate) fn write_aged(path: &Path, contents: &str, secs: u64) {
    std::fs::write(path, contents).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

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
