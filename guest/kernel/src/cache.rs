//! Where built artifacts live (docs/contracts.md, "Artifact cache"):
//! `$ISOLAB_CACHE`, else `$XDG_CACHE_HOME/isolab`, else `$HOME/.cache/isolab`.
//! The one cache root of the workspace (the emulated host keeps its part
//! under `emuhost/` of the same root), and the lookup of what provisioning
//! left there.

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

/// Built guest kernels: the `kernel/<config-hash>/` directories that have a
/// `meta.json` (written last, so a half-built kernel never counts), newest
/// first. The kernel source and build trees beside them are left out.
pub fn built_kernels(cache_root: &Path) -> Vec<PathBuf> {
    newest_first(&cache_root.join("kernel"), |p| {
        p.join("meta.json").is_file().then(|| p.to_path_buf())
    })
}

/// Guest initramfs images (`initramfs/guest-<key>.cpio`), newest first.
pub fn guest_initramfs_images(cache_root: &Path) -> Vec<PathBuf> {
    newest_first(&cache_root.join("initramfs"), |p| {
        let name = p.file_name()?.to_str()?;
        (name.starts_with("guest-") && name.ends_with(".cpio")).then(|| p.to_path_buf())
    })
}

/// A provisioned guest: the kernel (both images) and the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestArtifacts {
    pub vmlinux: PathBuf,
    pub bz_image: PathBuf,
    pub initramfs: PathBuf,
}

/// The newest built kernel and guest initramfs in the cache, if both exist
/// (what `bench provision` leaves; for tests and benchmarks that must not
/// start a build).
pub fn cached_guest(cache_root: &Path) -> Option<GuestArtifacts> {
    let kernel = built_kernels(cache_root)
        .into_iter()
        .find(|d| d.join("vmlinux").is_file() && d.join("bzImage").is_file())?;
    let initramfs = guest_initramfs_images(cache_root).into_iter().next()?;
    Some(GuestArtifacts {
        vmlinux: kernel.join("vmlinux"),
        bz_image: kernel.join("bzImage"),
        initramfs,
    })
}

fn newest_first(dir: &Path, pick: impl Fn(&Path) -> Option<PathBuf>) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| pick(&e.path()))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_follows_the_contract() {
        let r = |a, b, c| cache_root_from(a, b, c).unwrap();
        assert_eq!(r(Some("/c"), Some("/x"), Some("/h")), PathBuf::from("/c"));
        assert_eq!(r(None, Some("/x"), Some("/h")), PathBuf::from("/x/isolab"));
        assert_eq!(
            r(Some(""), None, Some("/h")),
            PathBuf::from("/h/.cache/isolab")
        );
        assert!(cache_root_from(None, None, None).is_err());
    }

    #[test]
    fn only_finished_kernels_and_guest_images_are_found() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert_eq!(cached_guest(root), None);
        for dir in ["kernel/src", "kernel/build", "kernel/abc", "initramfs"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for f in [
            "kernel/abc/vmlinux",
            "kernel/abc/bzImage",
            "initramfs/.tmp-1.cpio",
        ] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        assert_eq!(
            built_kernels(root),
            Vec::<PathBuf>::new(),
            "no meta.json yet"
        );
        std::fs::write(root.join("kernel/abc/meta.json"), "{}").unwrap();
        assert_eq!(built_kernels(root), vec![root.join("kernel/abc")]);
        assert_eq!(cached_guest(root), None, "no guest image yet");
        std::fs::write(root.join("initramfs/guest-k.cpio"), "x").unwrap();
        let g = cached_guest(root).unwrap();
        assert_eq!(g.vmlinux, root.join("kernel/abc/vmlinux"));
        assert_eq!(g.initramfs, root.join("initramfs/guest-k.cpio"));
    }
}
