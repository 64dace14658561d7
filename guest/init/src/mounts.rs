//! The pseudo filesystems the workload expects. The initramfs carries the
//! mount points; they are created here too in case an image lacks them.

use nix::mount::{mount, MsFlags};

use crate::error::InitError;

/// (fstype, target, flags, data); devtmpfs gives /dev/null, /dev/console and
/// the rest without a static /dev.
const MOUNTS: &[(&str, &str, u64, &str)] = &[
    (
        "proc",
        "/proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "sysfs",
        "/sys",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    ("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755"),
    (
        "tmpfs",
        "/tmp",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
];

pub fn mount_all() -> Result<(), InitError> {
    for &(fstype, target, flags, data) in MOUNTS {
        match mount_at(fstype, fstype, target, flags, data) {
            // The kernel may have mounted devtmpfs already (DEVTMPFS_MOUNT).
            Err(InitError::Mount {
                source: nix::Error::EBUSY,
                ..
            }) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Creates the mount point `target` (and its parents) if missing.
pub fn mkdir(target: &'static str) -> Result<(), InitError> {
    std::fs::create_dir_all(target).map_err(|source| InitError::MkMountPoint { target, source })
}

/// Mounts `source` as `fstype` on `target` (created if missing); `data`
/// empty means none.
pub fn mount_at(
    source: &str,
    fstype: &'static str,
    target: &'static str,
    flags: u64,
    data: &str,
) -> Result<(), InitError> {
    mkdir(target)?;
    let data = (!data.is_empty()).then_some(data);
    mount(
        Some(source),
        target,
        Some(fstype),
        MsFlags::from_bits_truncate(flags),
        data,
    )
    .map_err(|source| InitError::Mount {
        fstype,
        target,
        source,
    })
}
