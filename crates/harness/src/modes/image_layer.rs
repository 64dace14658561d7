//! A writable layer of its own for every instance of a user's image, so
//! the unpacked rootfs in the cache stays as unpacked (nginx writes its pid
//! file and logs; a second instance must not see the first one's).
//!
//! The layer is an overlay: the cached rootfs read-only as lower, an upper
//! and work directory of the instance's on `/run` (tmpfs), mounted at
//! `<dir>/rootfs` in the host's mount namespace, as our container's (made in
//! its own namespace by `isolab_container`). Where it lives:
//!
//! - **runc, crun, gVisor**: inside the instance's bundle directory, so it
//!   goes with the bundle: [`super::oci::remove_bundle`], the launcher's
//!   watchdog and the next start's sweep ([`crate::stale`]) unmount it
//!   before removing the bundle.
//! - **process mode** (chrooted into it; no namespaces, the point of the
//!   mode): an [`ImageLayer`] under [`LAYERS_DIR`] named after its
//!   launcher, unmounted and removed when the instance is dropped, and by
//!   the next start's sweep ([`clean_stale`]) when its launcher is gone.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::HarnessError;

/// The mount point of the merged root inside a layer's directory.
pub const MERGED: &str = "rootfs";
/// Where process-mode instances keep their layers.
pub const LAYERS_DIR: &str = "/run/isolab/layers";

/// Mounts the overlay of `lower` with an upper layer in `<dir>/layer` at
/// `<dir>/rootfs` (created); returns the mount point.
pub(crate) fn mount_in(lower: &Path, dir: &Path) -> Result<PathBuf, HarnessError> {
    let (upper, work, merged) = (
        dir.join("layer/upper"),
        dir.join("layer/work"),
        dir.join(MERGED),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d)
            .map_err(|e| HarnessError::io(format!("create {}", d.display()), e))?;
    }
    let bad = |p: &Path| p.to_string_lossy().contains([',', ':']);
    if [lower, dir].into_iter().any(bad) {
        return Err(HarnessError::Config(format!(
            "{} or {}: an overlay cannot name a path with ',' or ':'; move the image cache (ISOLAB_CACHE)",
            lower.display(),
            dir.display()
        )));
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| {
        HarnessError::io(
            format!(
                "mount the image's writable layer over {} at {}",
                lower.display(),
                merged.display()
            ),
            std::io::Error::from(e),
        )
    })?;
    Ok(merged)
}

/// Unmounts `<dir>/rootfs` if it is mounted (lazily: a process still in
/// it keeps it until it ends). Best effort.
pub(crate) fn release_in(dir: &Path) {
    let merged = dir.join(MERGED);
    if merged.is_dir() {
        let _ = umount2(&merged, MntFlags::MNT_DETACH);
    }
}

/// A process-mode instance's layer: unmounted and removed on drop.
#[derive(Debug)]
pub(crate) struct ImageLayer {
    dir: PathBuf,
    root: PathBuf,
}

impl ImageLayer {
    /// A new layer over `lower` under [`LAYERS_DIR`]; leftovers of launchers
    /// that are gone are swept first.
    pub fn over(lower: &Path) -> Result<Self, HarnessError> {
        crate::stale::clean_at_start();
        let dir =
            Path::new(LAYERS_DIR).join(format!("{}-{}", crate::stale::owner_name(), next_id()));
        match mount_in(lower, &dir) {
            Ok(root) => Ok(ImageLayer { dir, root }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The merged root to chroot into.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for ImageLayer {
    fn drop(&mut self) {
        release_in(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(LAYERS_DIR);
    }
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Unmounts and removes the layers under `layers_dir` whose launcher
/// (`<pid>.<start time>-<n>`) is gone; returns how many.
pub fn clean_stale(layers_dir: &Path, proc_root: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(layers_dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name.rsplit_once('-').map_or(name.as_str(), |(o, _)| o);
        if crate::stale::owner_alive(proc_root, owner) {
            continue;
        }
        release_in(&e.path());
        if std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    let _ = std::fs::remove_dir(layers_dir);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_of_launchers_that_are_gone_are_swept_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let proc_root = d.path().join("proc");
        // A live launcher: pid 7 started at tick 99.
        std::fs::create_dir_all(proc_root.join("7")).unwrap();
        let stat = format!("7 (bench) S{}", " 0".repeat(18) + " 99 0");
        std::fs::write(proc_root.join("7/stat"), stat).unwrap();
        let layers = d.path().join("layers");
        for n in ["7.99-0", "7.12-3", "8.99-1"] {
            std::fs::create_dir_all(layers.join(n).join("layer/upper")).unwrap();
        }
        assert_eq!(clean_stale(&layers, &proc_root), 2);
        let left: Vec<_> = std::fs::read_dir(&layers)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["7.99-0"]);
    }
}
