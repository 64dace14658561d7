//! The image's root filesystem in the guest: the read-only disk
//! (`isolab.root=`, erofs unless `isolab.rootfstype=` says otherwise)
//! under a writable overlay whose upper layer is a tmpfs, with /proc,
//! /sys, /dev, /dev/pts and /dev/shm inside. Init itself stays in the
//! initramfs; only the workload is chrooted into [`ROOT`].

use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use crate::error::InitError;
use crate::mounts::{mkdir, mount_at};

/// The disk, read-only.
pub const LOWER: &str = "/mnt/lower";
/// The tmpfs holding the overlay's upper and work directories.
pub const RW: &str = "/mnt/rw";
const UPPER: &str = "/mnt/rw/upper";
const WORK: &str = "/mnt/rw/work";
/// The merged root the workload is chrooted into.
pub const ROOT: &str = "/mnt/root";
/// How long to wait for the disk's device node (the virtio-blk probe runs
/// before init, so it is normally there at once).
const DEVICE_WAIT: Duration = Duration::from_secs(2);

/// Pseudo filesystems inside the root: (fstype, target, flags, data).
const INNER: &[(&str, &str, u64, &str)] = &[
    (
        "proc",
        "/mnt/root/proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "sysfs",
        "/mnt/root/sys",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
        "",
    ),
    ("devtmpfs", "/mnt/root/dev", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/mnt/root/dev/pts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    (
        "tmpfs",
        "/mnt/root/dev/shm",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
];

/// Waits (briefly) for the disk's device node.
fn wait_for(device: &str) -> Result<(), InitError> {
    let start = Instant::now();
    while !Path::new(device).exists() {
        if start.elapsed() > DEVICE_WAIT {
            return Err(InitError::NoRootDevice {
                device: device.to_string(),
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Mounts the disk read-only, the overlay over it, and the pseudo
/// filesystems inside; returns the root to chroot into.
pub fn prepare(device: &str, fstype: &str) -> Result<&'static str, InitError> {
    wait_for(device)?;
    mkdir(LOWER)?;
    mount(
        Some(device),
        LOWER,
        Some(fstype),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|source| InitError::MountRoot {
        device: device.to_string(),
        fstype: fstype.to_string(),
        source,
    })?;
    mount_at("tmpfs", "tmpfs", RW, libc::MS_NOSUID, "mode=0755")?;
    mkdir(UPPER)?;
    mkdir(WORK)?;
    let opts = format!("lowerdir={LOWER},upperdir={UPPER},workdir={WORK}");
    mount_at("overlay", "overlay", ROOT, 0, &opts)?;
    for &(fstype, target, flags, data) in INNER {
        mount_at(fstype, fstype, target, flags, data)?;
    }
    Ok(ROOT)
}
