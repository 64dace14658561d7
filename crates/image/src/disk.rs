//! The microVM's root disk: an unpacked root filesystem written as a
//! read-only erofs image (`mkfs.erofs` from Debian's erofs-utils), served
//! by the monitor's virtio-blk device and mounted by the guest init under
//! a writable overlay.
//!
//! Why erofs rather than `mkfs.ext4 -d`: the disk is read-only by design
//! (writes go to the guest's tmpfs upper layer), and erofs is a read-only
//! file system made for exactly this (container image layers on Android,
//! Kata, composefs): it needs no size computed in advance (ext4 must be
//! sized before `-d` fills it, and a wrong guess fails or wastes space),
//! has no journal to replay or skip on mount, packs small files and
//! metadata inline (smaller images), and its kernel side is a fraction of
//! ext4 + jbd2 in the guest kernel. Written uncompressed, so the guest
//! never spends vCPU time decompressing.
//!
//! Images are cached beside the rootfs (`<image dir>/rootfs.erofs`), so
//! the key is the image's manifest digest; a bundle's disk goes wherever
//! the caller says.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cache::UnpackedImage;

/// The tool that builds the disk.
pub const MKFS_EROFS: &str = "mkfs.erofs";
/// The Debian package that has it.
pub const EROFS_PACKAGE: &str = "erofs-utils";
/// File system type for the guest's mount (`isolab.rootfstype=`).
pub const ROOT_FSTYPE: &str = "erofs";
/// File name of an image's disk in its cache directory.
pub const DISK_FILE: &str = "rootfs.erofs";

/// Building a root disk failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `mkfs.erofs` is not installed.
    #[error("{MKFS_EROFS} not found: apt-get install {EROFS_PACKAGE}")]
    MissingTool,
    /// It could not be started.
    #[error("Cannot run {MKFS_EROFS}")]
    Spawn(#[source] std::io::Error),
    /// It failed.
    #[error("{MKFS_EROFS} failed on {rootfs:?} ({status}): {stderr}")]
    Mkfs {
        rootfs: PathBuf,
        status: String,
        stderr: String,
    },
    /// Moving the image into place failed.
    #[error("Cannot write {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DiskError {
    /// True when the host lacks the tool (CLI: exit 3).
    pub fn is_host(&self) -> bool {
        matches!(self, Self::MissingTool)
    }
}

/// A root disk image.
#[derive(Debug, Clone, PartialEq)]
pub struct RootDisk {
    pub path: PathBuf,
    pub bytes: u64,
    /// True when it was already built.
    pub cached: bool,
    /// Time to build it (0 when cached).
    pub build_ms: f64,
}

fn find_tool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(MKFS_EROFS))
        .find(|p| p.is_file())
}

/// Writes the erofs image of `rootfs` to `out`, through a temporary file
/// renamed into place (a failed build leaves nothing at `out`).
pub fn build_erofs(rootfs: &Path, out: &Path) -> Result<RootDisk, DiskError> {
    let tool = find_tool().ok_or(DiskError::MissingTool)?;
    let started = Instant::now();
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let result = Command::new(tool)
        .arg("--quiet")
        // xattrs kept (file capabilities); uncompressed.
        .arg(&tmp)
        .arg(rootfs)
        .output()
        .map_err(DiskError::Spawn)?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let stderr = String::from_utf8_lossy(&result.stderr);
        return Err(DiskError::Mkfs {
            rootfs: rootfs.to_path_buf(),
            status: result.status.to_string(),
            stderr: stderr.lines().last().unwrap_or("").trim().to_string(),
        });
    }
    std::fs::rename(&tmp, out).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DiskError::Write {
            path: out.to_path_buf(),
            source,
        }
    })?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(RootDisk {
        path: out.to_path_buf(),
        bytes,
        cached: false,
        build_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

impl UnpackedImage {
    /// The image's root disk, built once per image (cached by manifest
    /// digest, beside the rootfs).
    pub fn root_disk(&self) -> Result<RootDisk, DiskError> {
        let path = self.dir.join(DISK_FILE);
        if let Ok(m) = std::fs::metadata(&path) {
            return Ok(RootDisk {
                path,
                bytes: m.len(),
                cached: true,
                build_ms: 0.0,
            });
        }
        build_erofs(&self.rootfs, &path)
    }
}
