//! The shared read-only root filesystem image: the static workload binary
//! plus the empty directories the mounts need. Built once per binary (keyed
//! by its identity: device, inode, size, mtime) under
//! `<state_dir>/images/<hash>` and used as the overlay's lower layer by
//! every instance and by the OCI bundles.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::ContainerError;

/// Path of the workload inside the container.
pub const WORKLOAD_PATH: &str = "/workload";

/// Directories of the image (mount points and writable scratch).
const DIRS: [(&str, u32); 6] = [
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("run", 0o755),
];

fn image_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Image {
        path: path.to_path_buf(),
        source,
    }
}

/// Returns the image directory for `workload_bin`, building it if needed.
/// Concurrent builders race safely: each builds in a private directory and
/// the first rename wins.
pub fn ensure(state_dir: &Path, workload_bin: &Path) -> Result<PathBuf, ContainerError> {
    let meta =
        std::fs::metadata(workload_bin).map_err(|source| ContainerError::WorkloadBinary {
            path: workload_bin.to_path_buf(),
            source,
        })?;
    if !meta.is_file() {
        return Err(ContainerError::WorkloadBinary {
            path: workload_bin.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let images = state_dir.join("images");
    let dir = images.join(key(&meta));
    if dir.join("workload").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&images).map_err(image_err(&images))?;
    // Private to this process and thread: concurrent builders never share it.
    let tmp = images.join(format!(".build-{}", crate::instance::new_id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = build(&tmp, workload_bin);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &dir).is_ok() {
        prune(&images, &dir);
    } else {
        // Someone else finished first; theirs is identical.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("workload").is_file() {
            return Err(ContainerError::Image {
                path: dir,
                source: std::io::Error::other("image directory exists without a workload"),
            });
        }
    }
    Ok(dir)
}

/// Images kept besides the newest: each rebuild of the workload makes a new
/// one, and a container started from an older binary may still use it.
const KEEP_OLD: usize = 3;

/// Removes all but the newest images (by build time), never `current`.
fn prune(images: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.path() != current)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    old.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, path) in old.into_iter().skip(KEEP_OLD) {
        let _ = std::fs::remove_dir_all(path);
    }
}

fn key(meta: &std::fs::Metadata) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ));
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn build(dir: &Path, workload_bin: &Path) -> Result<(), ContainerError> {
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o755);
    b.create(dir).map_err(image_err(dir))?;
    for (name, mode) in DIRS {
        let p = dir.join(name);
        std::fs::create_dir(&p).map_err(image_err(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(image_err(&p))?;
    }
    let target = dir.join("workload");
    std::fs::copy(workload_bin, &target).map_err(|source| ContainerError::WorkloadBinary {
        path: workload_bin.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(image_err(&target))?;
    // Readable by anyone: a user-namespaced container sees these as nobody's.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(image_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_built_once_and_reused() {
        let state = tempfile::tempdir().unwrap();
        let bin = state.path().join("wl");
        std::fs::write(&bin, b"#!binary").unwrap();
        let a = ensure(state.path(), &bin).unwrap();
        assert_eq!(std::fs::read(a.join("workload")).unwrap(), b"#!binary");
        for (d, _) in DIRS {
            assert!(a.join(d).is_dir(), "{d}");
        }
        let mode = std::fs::metadata(a.join("tmp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
        let b = ensure(state.path(), &bin).unwrap();
        assert_eq!(a, b);
        // No build directories are left.
        let n = std::fs::read_dir(state.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn old_images_are_pruned_to_the_newest_few() {
        let state = tempfile::tempdir().unwrap();
        let bin = state.path().join("wl");
        let mut dirs = Vec::new();
        for i in 0..6 {
            // A different size keeps each build's key distinct even when the
            // filesystem's mtime granularity is coarse.
            std::fs::write(&bin, "x".repeat(i + 1)).unwrap();
            dirs.push(ensure(state.path(), &bin).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let left = std::fs::read_dir(state.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(left, KEEP_OLD + 1);
        assert!(
            dirs[5].join("workload").is_file(),
            "the current image stays"
        );
        assert!(!dirs[0].exists(), "the oldest is gone");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let state = tempfile::tempdir().unwrap();
        let err = ensure(state.path(), Path::new("/nonexistent/workload")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/workload"), "{err}");
    }
}
