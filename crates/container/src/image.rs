//! The shared read-only root filesystem image: the static workload binary
//! plus the empty directories the mounts need. Built once per binary (keyed
//! by its identity: device, inode, size, mtime) under
//! `<state_dir>/images/<hash>` and used as the overlay's lower layer by
//! every instance and by the OCI bundles.
//!
//! Users hold an [`ImageLease`] (a shared `flock` on the image directory)
//! for as long as a container or bundle uses the image; pruning takes the
//! lock exclusively and skips an image it cannot get, so an image in use is
//! never removed.

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

/// An image held in use: pruning skips it while this lives.
#[derive(Debug)]
pub struct ImageLease {
    pub dir: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// [`ensure`], then a shared lock on the image (rebuilt if a concurrent
/// prune removed it between the two).
pub fn lease(state_dir: &Path, workload_bin: &Path) -> Result<ImageLease, ContainerError> {
    for _ in 0..3 {
        let dir = ensure(state_dir, workload_bin)?;
        let Ok(file) = std::fs::File::open(&dir) else {
            continue;
        };
        let lock =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared).map_err(|(_, e)| {
                ContainerError::Image {
                    path: dir.clone(),
                    source: e.into(),
                }
            })?;
        if dir.join("workload").is_file() {
            return Ok(ImageLease { dir, _lock: lock });
        }
    }
    Err(ContainerError::Image {
        path: state_dir.join("images"),
        source: std::io::Error::other("the image was removed while being leased, three times"),
    })
}

/// Checks that `workload_bin` is a regular file holding an ELF executable
/// (or position-independent executable).
pub fn check_binary(workload_bin: &Path) -> Result<std::fs::Metadata, ContainerError> {
    use std::io::Read;
    let bad = |source| ContainerError::WorkloadBinary {
        path: workload_bin.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(workload_bin).map_err(bad)?;
    if !meta.is_file() {
        return Err(bad(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut head = [0u8; 18];
    let n = std::fs::File::open(workload_bin)
        .and_then(|mut f| f.read(&mut head))
        .map_err(bad)?;
    // e_ident magic, then e_type at offset 16: ET_EXEC (2) or ET_DYN (3).
    let e_type = u16::from_le_bytes([head[16], head[17]]);
    if n < head.len() || &head[..4] != b"\x7fELF" || !matches!(e_type, 2 | 3) {
        return Err(ContainerError::WorkloadNotElf {
            path: workload_bin.to_path_buf(),
        });
    }
    Ok(meta)
}

/// Returns the image directory for `workload_bin`, building it if needed.
/// Concurrent builders race safely: each builds in a private directory and
/// the first rename wins.
pub fn ensure(state_dir: &Path, workload_bin: &Path) -> Result<PathBuf, ContainerError> {
    let meta = check_binary(workload_bin)?;
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

/// Removes all but the newest images (by build time), never `current`
/// and never one that is leased.
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
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        // Held until the removal is done: a new user blocks, then sees the
        // image gone and rebuilds it.
        if let Ok(_lock) =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            let _ = std::fs::remove_dir_all(&path);
        }
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

    /// The smallest file `check_binary` takes: an ELF header of an
    /// x86_64 executable with `extra` appended.
    fn elf(extra: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little endian
        h[6] = 1;
        h[16] = 2; // ET_EXEC
        h[18] = 62; // x86_64
        h.extend_from_slice(extra);
        h
    }

    #[test]
    fn an_image_is_built_once_and_reused() {
        let state = tempfile::tempdir().unwrap();
        let bin = state.path().join("wl");
        std::fs::write(&bin, elf(b"binary")).unwrap();
        let a = ensure(state.path(), &bin).unwrap();
        assert_eq!(std::fs::read(a.join("workload")).unwrap(), elf(b"binary"));
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
        let mut leases = Vec::new();
        for i in 0..6 {
            // A different size keeps each build's key distinct even when the
            // filesystem's mtime granularity is coarse.
            std::fs::write(&bin, elf("x".repeat(i + 1).as_bytes())).unwrap();
            dirs.push(ensure(state.path(), &bin).unwrap());
            if i == 0 {
                leases.push(lease(state.path(), &bin).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let left = std::fs::read_dir(state.path().join("images"))
            .unwrap()
            .count();
        // The oldest is leased (a container uses it), so it stays too.
        assert_eq!(left, KEEP_OLD + 2);
        assert!(
            dirs[5].join("workload").is_file(),
            "the current image stays"
        );
        assert!(dirs[0].join("workload").is_file(), "the leased image stays");
        assert!(!dirs[1].exists(), "the oldest unused one is gone");
        drop(leases);
        std::fs::write(&bin, elf(b"seventh")).unwrap();
        ensure(state.path(), &bin).unwrap();
        assert!(!dirs[0].exists(), "released, it is pruned");
    }

    #[test]
    fn a_file_that_is_not_an_elf_executable_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
        let err = check_binary(&text).unwrap_err();
        assert!(
            matches!(err, ContainerError::WorkloadNotElf { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("script"), "{err}");
        assert!(err.is_usage());
        let mut obj = elf(b"");
        obj[16] = 1; // ET_REL: an object file, not an executable
        std::fs::write(&text, obj).unwrap();
        assert!(check_binary(&text).is_err());
        assert!(check_binary(dir.path()).is_err(), "a directory");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let state = tempfile::tempdir().unwrap();
        let err = ensure(state.path(), Path::new("/nonexistent/workload")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/workload"), "{err}");
    }
}
