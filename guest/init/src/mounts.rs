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
        if let Err(source) = std::fs::create_dir(target) {
            if source.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(InitError::MkMountPoint { target, source });
            }
        }
        let data = (!data.is_empty()).then_some(data);
        match mount(
            Some(fstype),
            target,
            Some(fstype),
            MsFlags::from_bits_truncate(flags),
            data,
        ) {
            // The kernel may have mounted devtmpfs already (DEVTMPFS_MOUNT).
            Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    fstype,
                    target,
                    source,
                })
            }
            Ok(()) => {}
        }
    }
    Ok(())
}
