//! The container's root filesystem, assembled inside its new mount
//! namespace (so the kernel drops every mount when the namespace dies, even
//! if the launcher is SIGKILLed):
//!
//! 1. mark all mounts slave, so nothing propagates back to the host;
//! 2. overlay: the shared read-only image as lower, the instance's upper/work;
//! 3. `cd` into it; fresh `/proc`; tmpfs `/dev` with bind
//!    mounts of the host's null, zero, full, random, urandom, tty; a private
//!    devpts with `/dev/ptmx`; `/dev/shm`; the `/dev/fd` family of symlinks;
//! 4. (pivot_root, see [`crate::pivot`]);
//! 5. runc's masked paths and read-only paths of `/proc` ([`protect_proc`]);
//! 6. join the network namespace the launcher made, then `/sys` read-only
//!    ([`mount_sys`]), then its masked paths ([`mask_sys`]).
//!
//! Mount targets below the new root are relative to it (the child has
//! `cd`'d into it), so nothing here allocates.

use std::path::Path;

use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use crate::error::ChildStep;
use crate::syscall::Syscall;

/// A failed step and the kernel's answer.
pub(crate) type StepResult = Result<(), (ChildStep, nix::Error)>;

pub(crate) trait Step<T> {
    fn step(self, step: ChildStep) -> Result<T, (ChildStep, nix::Error)>;
}

impl<T> Step<T> for nix::Result<T> {
    fn step(self, step: ChildStep) -> Result<T, (ChildStep, nix::Error)> {
        self.map_err(|e| (step, e))
    }
}

/// Devices bound from the host into `/dev` (the OCI default device set).
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// runc's default masked paths: hidden behind /dev/null (files) or an empty
/// read-only tmpfs (directories).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the root filesystem comes from, prepared before the clone.
#[derive(Debug, Clone)]
pub(crate) struct RootfsPlan {
    /// Mount point of the overlay (`/run/isolab/<id>/rootfs`).
    pub rootfs: std::path::PathBuf,
    /// The sync socket, when the launcher sends the network namespace it
    /// made concurrently: joined after the pivot, before `/sys` is mounted (sysfs shows the
    /// devices of the mounter's network namespace).
    pub netns_from: Option<std::os::fd::RawFd>,
    /// `lowerdir=<image>,upperdir=<upper>,workdir=<work>`.
    pub overlay_options: String,
    /// A user's image may lack `/proc`, `/sys` and `/dev`: make them in
    /// the overlay's upper layer first (ours always has them).
    pub make_mount_points: bool,
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Steps 1–3: mounts in the new namespace, ending with the cwd at the new root.
pub(crate) fn mount_all(plan: &RootfsPlan, sys: &dyn Syscall) -> StepResult {
    let none: Option<&str> = None;
    sys.mount(
        none,
        p("/"),
        none,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        none,
    )
    .step(ChildStep::MountPropagation)?;
    sys.mount(
        Some("overlay"),
        &plan.rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(&plan.overlay_options),
    )
    .step(ChildStep::MountOverlay)?;
    sys.chdir(&plan.rootfs).step(ChildStep::EnterRootfs)?;
    if plan.make_mount_points {
        for d in ["proc", "sys", "dev"] {
            sys.mkdir(p(d), Mode::from_bits_truncate(0o755))
                .step(ChildStep::EnterRootfs)?;
        }
    }

    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys.mount(Some("proc"), p("proc"), Some("proc"), secure, none)
        .step(ChildStep::MountProc)?;
    if plan.netns_from.is_none() {
        // The network namespace came with the clone. (In a user namespace
        // sysfs may only be mounted while the host's /sys is visible in
        // the mount namespace, i.e. before the pivot.)
        mount_sysfs(sys, p("sys"))?;
    }
    mount_dev(sys)
}

fn mount_sysfs(sys: &dyn Syscall, at: &Path) -> StepResult {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys.mount(
        Some("sysfs"),
        at,
        Some("sysfs"),
        secure | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .step(ChildStep::MountSys)
}

/// After the pivot, when the launcher makes the network namespace (no user
/// namespace): join it (it arrives once the launcher's thread has made it
/// and its network hook has attached the veth, so everything before this
/// step overlaps with that work), then mount `/sys` read-only (sysfs shows
/// the network devices of the mounter's namespace, so after the join).
pub(crate) fn mount_sys(plan: &RootfsPlan, sys: &dyn Syscall) -> StepResult {
    match plan.netns_from {
        Some(sock) => {
            sys.join_netns_from(sock).step(ChildStep::JoinNetns)?;
            mount_sysfs(sys, p("/sys"))
        }
        // Mounted before the pivot ([`mount_all`]).
        None => Ok(()),
    }
}

fn mount_dev(sys: &dyn Syscall) -> StepResult {
    sys.mount(
        Some("tmpfs"),
        p("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .step(ChildStep::MountDev)?;
    // Bind mounts work in a user namespace too, where mknod does not.
    const HOST: [&str; 6] = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ];
    const TARGET: [&str; 6] = [
        "dev/null",
        "dev/zero",
        "dev/full",
        "dev/random",
        "dev/urandom",
        "dev/tty",
    ];
    for (host, target) in HOST.iter().zip(TARGET) {
        sys.create_file(p(target)).step(ChildStep::MountDevice)?;
        sys.mount(Some(host), p(target), None, MsFlags::MS_BIND, None)
            .step(ChildStep::MountDevice)?;
    }
    sys.mkdir(p("dev/pts"), Mode::from_bits_truncate(0o755))
        .step(ChildStep::MountDevpts)?;
    sys.mount(
        Some("devpts"),
        p("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .step(ChildStep::MountDevpts)?;
    sys.mkdir(p("dev/shm"), Mode::from_bits_truncate(0o1777))
        .step(ChildStep::MountShm)?;
    sys.mount(
        Some("shm"),
        p("dev/shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .step(ChildStep::MountShm)?;
    for (target, link) in [
        ("pts/ptmx", "dev/ptmx"),
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ] {
        sys.symlink(target, p(link)).step(ChildStep::DevSymlinks)?;
    }
    Ok(())
}

/// Step 6, after pivot_root: hide and freeze the host-revealing paths of
/// `/proc` (needs no network namespace, so it runs while the launcher's
/// thread may still be attaching the veth).
pub(crate) fn protect_proc(sys: &dyn Syscall) -> StepResult {
    mask(sys, "/proc/")?;
    readonly(sys)
}

/// Step 6, once `/sys` is mounted: hide its host-revealing paths.
pub(crate) fn mask_sys(sys: &dyn Syscall) -> StepResult {
    mask(sys, "/sys/")
}

/// The [`MASKED_PATHS`] under `prefix`.
fn mask(sys: &dyn Syscall, prefix: &str) -> StepResult {
    for path in MASKED_PATHS.iter().filter(|m| m.starts_with(prefix)) {
        match sys.is_dir(p(path)) {
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err((ChildStep::MaskPaths, e)),
            Ok(true) => sys
                .mount(
                    Some("tmpfs"),
                    p(path),
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )
                .step(ChildStep::MaskPaths)?,
            Ok(false) => sys
                .mount(Some("/dev/null"), p(path), None, MsFlags::MS_BIND, None)
                .step(ChildStep::MaskPaths)?,
        }
    }
    Ok(())
}

fn readonly(sys: &dyn Syscall) -> StepResult {
    for path in READONLY_PATHS {
        match sys.is_dir(p(path)) {
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err((ChildStep::ReadonlyPaths, e)),
            Ok(_) => {}
        }
        sys.mount(
            Some(path),
            p(path),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .step(ChildStep::ReadonlyPaths)?;
        // A remount must repeat the flags /proc carries (they are locked in
        // a user namespace).
        sys.mount(
            None,
            p(path),
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )
        .step(ChildStep::ReadonlyPaths)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::RecordingSyscall;

    fn plan() -> RootfsPlan {
        RootfsPlan {
            rootfs: "/run/isolab/x/rootfs".into(),
            netns_from: None,
            overlay_options:
                "lowerdir=/img,upperdir=/run/isolab/x/upper,workdir=/run/isolab/x/work".into(),
            make_mount_points: false,
        }
    }

    #[test]
    fn an_images_mount_points_are_made_before_anything_is_mounted_on_them() {
        let sys = RecordingSyscall::default();
        let plan = RootfsPlan {
            make_mount_points: true,
            ..plan()
        };
        mount_all(&plan, &sys).unwrap();
        let mk = sys.position("mkdir proc").unwrap();
        assert!(sys.position("chdir").unwrap() < mk);
        assert!(mk < sys.position("mount proc proc proc").unwrap());
        assert!(sys.position("mkdir dev").is_some() && sys.position("mkdir sys").is_some());
    }

    #[test]
    fn mounts_happen_inside_the_overlay_after_propagation_is_cut() {
        let sys = RecordingSyscall::default();
        mount_all(&plan(), &sys).unwrap();
        let calls = sys.calls();
        assert!(
            calls[0].starts_with("mount - / - MS_REC | MS_SLAVE"),
            "{}",
            calls[0]
        );
        assert!(calls[1].starts_with("mount overlay /run/isolab/x/rootfs overlay"));
        assert!(calls[1]
            .ends_with("lowerdir=/img,upperdir=/run/isolab/x/upper,workdir=/run/isolab/x/work"));
        assert_eq!(calls[2], "chdir /run/isolab/x/rootfs");
        let proc_ = sys.position("mount proc proc proc").unwrap();
        // The namespace came with the clone: /sys before the pivot.
        let sys_ = sys.position("mount sysfs sys sysfs").unwrap();
        assert!(calls[sys_].contains("MS_RDONLY"));
        assert!(proc_ > 2 && sys_ > 2);
        for d in DEVICES {
            let create = sys.position(&format!("create dev/{d}")).unwrap();
            let bind = sys
                .position(&format!("mount /dev/{d} dev/{d} - MS_BIND"))
                .unwrap();
            assert!(create < bind);
        }
        assert!(sys.position("symlink dev/ptmx pts/ptmx").is_some());
        assert!(sys.position("mount devpts dev/pts devpts").is_some());
    }

    #[test]
    fn a_network_namespace_from_the_launcher_is_joined_before_sys_is_mounted() {
        let sys = RecordingSyscall::default();
        let mut plan = plan();
        plan.netns_from = Some(5);
        mount_all(&plan, &sys).unwrap();
        assert!(sys.position("join_netns").is_none(), "not before the pivot");
        assert!(
            sys.position("mount sysfs").is_none(),
            "not before the pivot"
        );
        mount_sys(&plan, &sys).unwrap();
        let join = sys.position("join_netns 5").unwrap();
        let sys_ = sys.position("mount sysfs /sys").unwrap();
        assert!(join < sys_);
    }

    #[test]
    fn an_overlay_failure_is_reported_as_that_step() {
        let sys = RecordingSyscall {
            fail_on: Some(("mount overlay", nix::Error::EINVAL)),
            ..Default::default()
        };
        let err = mount_all(&plan(), &sys).unwrap_err();
        assert_eq!(err, (ChildStep::MountOverlay, nix::Error::EINVAL));
        // Nothing after the failing step was attempted.
        assert_eq!(sys.calls().len(), 2);
    }

    #[test]
    fn masked_dirs_get_tmpfs_files_get_dev_null_and_absent_ones_are_skipped() {
        let sys = RecordingSyscall {
            dirs: vec![
                "/proc/acpi",
                "/sys/firmware",
                "/proc/sys",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
            ],
            absent: vec!["/proc/asound", "/proc/timer_stats"],
            ..Default::default()
        };
        protect_proc(&sys).unwrap();
        assert!(
            !sys.calls().iter().any(|c| c.contains("/sys/")),
            "/sys is masked only once mounted"
        );
        mask_sys(&sys).unwrap();
        let calls = sys.calls();
        assert!(calls.contains(&"mount tmpfs /sys/firmware tmpfs MS_RDONLY -".to_string()));
        assert!(calls.contains(&"mount tmpfs /proc/acpi tmpfs MS_RDONLY -".to_string()));
        assert!(calls.contains(&"mount /dev/null /proc/kcore - MS_BIND -".to_string()));
        assert!(calls.contains(&"mount /dev/null /proc/keys - MS_BIND -".to_string()));
        assert!(!calls.iter().any(|c| c.contains("/proc/asound")));
        let bind = sys
            .position("mount /proc/sys /proc/sys - MS_BIND | MS_REC")
            .unwrap();
        assert!(calls[bind + 1].contains("MS_RDONLY") && calls[bind + 1].contains("MS_REMOUNT"));
    }
}
