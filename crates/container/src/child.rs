//! The launch sequence inside the cloned child, one function per step, in
//! the order of `docs/design.md` ("Container launch sequence", child side):
//!
//! 1. [`prepare`]: close inherited descriptors, not dumpable, default signal
//!    dispositions (all stay blocked for init's signalfd), name `isolab-init`;
//! 2. [`wait_for_go`]: the launcher's `GO` (it has written id maps and, in
//!    a user namespace, run the network hook); EOF means the launcher gave
//!    up or died, and the child exits. Skipped without a user namespace:
//!    the network namespace (with the hook's veth attached on a launcher
//!    thread) is received and joined in step 8, after the pivot;
//!    a launcher that dies later is seen by init through the lifeline;
//! 3. [`join_cgroup`]: v1: join by writing `0` to each `tasks` (avoids the
//!    kernel's global threadgroup lock); in a user namespace become its root;
//!    unshare the cgroup namespace, so its root is the instance cgroup;
//! 4. [`mount_rootfs`]: overlay, `/proc`, `/dev` ([`crate::rootfs`]);
//! 5. [`pivot`]: pivot_root into it ([`crate::pivot`]);
//! 6. [`protect_proc`]: masked and read-only paths of `/proc`;
//! 7. [`set_hostname`];
//! 8. join the launcher's network namespace, `/sys`
//!    ([`crate::rootfs::mount_sys`]: as late as it can be, so the
//!    launcher's thread has the most time to make it and attach the veth;
//!    steps 6 and 7 need no network namespace, so they run before it),
//!    then the masked paths of `/sys` ([`crate::rootfs::mask_sys`]);
//! 9. [`loopback_up`]: `lo` up;
//! 10. [`harden`]: capabilities, no_new_privs, seccomp
//!     ([`crate::security`]);
//! 11. become init ([`crate::init`]): send the stamps, fork and exec the
//!     workload.
//!
//! A failure is sent to the launcher as (step, errno) and the child exits.
//! Each step stamps the clock when it is done ([`crate::phases`]).

use nix::sched::CloneFlags;

use crate::error::ChildStep;
use crate::phases::{ChildStamps, Stamp};
use crate::plan::{ChildPlan, HardeningPlan};
use crate::process;
use crate::rootfs::{self, Step, StepResult};
use crate::sync::{self, GO, MSG_LEN};
use crate::syscall::Syscall;
use crate::{init, pivot};

/// Entry point of the cloned child. Returns only to exit with a failure.
pub(crate) fn main(plan: &ChildPlan, sys: &dyn Syscall) -> isize {
    let mut stamps = ChildStamps::default();
    let result = prepare(plan)
        .and_then(|()| wait_for_go(plan, &mut stamps))
        .and_then(|()| build_view(plan, sys, &mut stamps));
    match result {
        Ok(()) => init::run(plan, &stamps),
        Err((step, errno)) => {
            let _ = process::write_msg(plan.fds.sync, &sync::failure(step, errno));
            1
        }
    }
}

/// Step 1.
fn prepare(plan: &ChildPlan) -> StepResult {
    // A clone made by another launcher thread at the same moment must not
    // hold on to our pipes (the launcher waits for their EOF).
    let _ = process::close_all_except(plan.fds.all());
    // Not dumpable: nothing in the container without CAP_SYS_PTRACE may
    // ptrace init or open its /proc/1/{mem,environ,maps,exe}. Init may
    // share the launcher's memory (`crate::namespaces`), so this also
    // keeps the container's processes out of the launcher's; the flag
    // belongs to that memory, so the launcher is not dumpable afterwards
    // either. The workload's execve gives it a flag of its own.
    let _ = nix::sys::prctl::set_dumpable(false);
    process::default_signals();
    // Shows up as the container's PID 1 in `ps` instead of the launcher's name.
    let _ = nix::sys::prctl::set_name(c"isolab-init");
    Ok(())
}

/// Step 2.
fn wait_for_go(plan: &ChildPlan, stamps: &mut ChildStamps) -> StepResult {
    if !plan.wait_for_go {
        return Ok(());
    }
    let mut msg = [0u8; MSG_LEN];
    match process::read_msg(plan.fds.sync, &mut msg).step(ChildStep::SyncWait)? {
        1 if msg[0] == GO => {
            stamps.mark(Stamp::Go);
            Ok(())
        }
        // The launcher closed its end: it failed or died before GO.
        _ => Err((ChildStep::SyncWait, nix::Error::EPIPE)),
    }
}

/// Steps 3–10: the container's view of the system, then its confinement.
pub(crate) fn build_view(
    plan: &ChildPlan,
    sys: &dyn Syscall,
    stamps: &mut ChildStamps,
) -> StepResult {
    join_cgroup(plan, sys)?;
    stamps.mark(Stamp::Joined);
    mount_rootfs(plan, sys)?;
    stamps.mark(Stamp::Rootfs);
    pivot(sys)?;
    stamps.mark(Stamp::Pivoted);
    // What needs no network namespace first: the launcher's thread may
    // still be making it and attaching the veth.
    protect_proc(sys)?;
    set_hostname(plan, sys)?;
    rootfs::mount_sys(&plan.rootfs, sys)?;
    rootfs::mask_sys(sys)?;
    loopback_up(sys)?;
    stamps.mark(Stamp::Paths);
    harden(&plan.hardening, sys)?;
    stamps.mark(Stamp::Hardened);
    Ok(())
}

/// Step 3.
fn join_cgroup(plan: &ChildPlan, sys: &dyn Syscall) -> StepResult {
    // First, so everything below is charged to the container. Still host
    // root here (before become_root), so the host's cgroupfs accepts it.
    for tasks in &plan.cgroup_tasks {
        sys.write_file(tasks, b"0").step(ChildStep::CgroupJoin)?;
    }
    if plan.user_namespace {
        sys.become_root().step(ChildStep::UserIds)?;
    }
    sys.unshare(CloneFlags::CLONE_NEWCGROUP)
        .step(ChildStep::CgroupNamespace)
}

/// Step 4.
fn mount_rootfs(plan: &ChildPlan, sys: &dyn Syscall) -> StepResult {
    rootfs::mount_all(&plan.rootfs, sys)
}

/// Step 5.
fn pivot(sys: &dyn Syscall) -> StepResult {
    pivot::pivot_into_cwd(sys)
}

/// Step 6.
fn protect_proc(sys: &dyn Syscall) -> StepResult {
    rootfs::protect_proc(sys)
}

/// Step 7.
fn set_hostname(plan: &ChildPlan, sys: &dyn Syscall) -> StepResult {
    sys.sethostname(&plan.hostname).step(ChildStep::Hostname)
}

/// Step 9 (in the container's network namespace).
fn loopback_up(sys: &dyn Syscall) -> StepResult {
    sys.loopback_up().step(ChildStep::Loopback)
}

/// Step 10, in runc's order: without no_new_privs, installing a filter needs
/// `CAP_SYS_ADMIN`, so the filter goes on first and the capabilities are
/// dropped under it (the profile allows `capset` and `prctl`); with
/// no_new_privs the capabilities go first and the filter last, as close
/// to exec as possible.
pub(crate) fn harden(h: &HardeningPlan, sys: &dyn Syscall) -> StepResult {
    let drop_caps = |sys: &dyn Syscall| match h.keep_caps {
        Some(keep) => sys
            .drop_capabilities(keep)
            .step(ChildStep::DropCapabilities),
        None => Ok(()),
    };
    if h.no_new_privs {
        drop_caps(sys)?;
        sys.set_no_new_privs().step(ChildStep::NoNewPrivs)?;
    }
    for filter in h.filters.iter() {
        sys.install_seccomp(filter).step(ChildStep::Seccomp)?;
    }
    if !h.no_new_privs {
        drop_caps(sys)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ChildFds;
    use crate::process::ExecPlan;
    use crate::rootfs::RootfsPlan;
    use crate::security::SecurityProfile;
    use crate::syscall::recording::RecordingSyscall;

    fn hardening(privileged: bool, nnp: bool) -> HardeningPlan {
        let p = SecurityProfile::new(privileged, nnp);
        HardeningPlan {
            keep_caps: p.caps.map(|c| c.0),
            no_new_privs: nnp,
            filters: p.filters().unwrap(),
        }
    }

    fn plan(userns: bool) -> ChildPlan {
        ChildPlan {
            wait_for_go: true,
            rootfs: RootfsPlan {
                rootfs: "/r".into(),
                netns_from: None,
                overlay_options: "lowerdir=/i,upperdir=/u,workdir=/w".into(),
                make_mount_points: false,
            },
            hostname: "box-1".into(),
            user_namespace: userns,
            cgroup_tasks: vec![
                "/cg/memory/isolab/x/tasks".into(),
                "/cg/pids/isolab/x/tasks".into(),
            ],
            cgroup_dir: None,
            shares_memory: false,
            hardening: hardening(false, false),
            exec: ExecPlan::new("/workload", &["/workload".into(), "noop".into()], &[]).unwrap(),
            identity: None,
            fds: ChildFds {
                sync: -1,
                ready_w: -1,
                stdout_w: -1,
                stderr_w: -1,
                status_w: -1,
                lifeline: -1,
            },
        }
    }

    fn build(plan: &ChildPlan, sys: &RecordingSyscall) -> (StepResult, ChildStamps) {
        let mut stamps = ChildStamps::default();
        (build_view(plan, sys, &mut stamps), stamps)
    }

    #[test]
    fn the_view_is_built_in_order_and_hardened_last() {
        let sys = RecordingSyscall::default();
        let (r, stamps) = build(&plan(false), &sys);
        r.unwrap();
        let order = [
            "unshare CLONE_NEWCGROUP",
            "mount overlay",
            "pivot_root",
            "mount /dev/null /proc/kcore",
            "sethostname box-1",
            "loopback_up",
            "seccomp",
            "drop_capabilities 00000000a80425fb",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.position(c).expect(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:?}", sys.calls());
        // A network namespace from the launcher is joined after what needs
        // none (/proc's paths, the hostname) and before /sys and lo.
        let sys = RecordingSyscall {
            dirs: vec!["/sys/firmware"],
            ..Default::default()
        };
        let mut from_launcher = plan(false);
        from_launcher.rootfs.netns_from = Some(5);
        build(&from_launcher, &sys).0.unwrap();
        let order = [
            "pivot_root",
            "mount /dev/null /proc/kcore",
            "sethostname box-1",
            "join_netns 5",
            "mount sysfs /sys",
            "mount tmpfs /sys/firmware",
            "loopback_up",
            "seccomp",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.position(c).expect(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:?}", sys.calls());
        assert!(sys.position("become_root").is_none());
        assert!(sys.position("no_new_privs").is_none(), "off by default");
        // Every stamp after GO was taken, in order.
        let s = &stamps.0[Stamp::Joined as usize..];
        assert!(s.iter().all(|t| *t > 0) && s.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn with_no_new_privs_capabilities_go_first_and_the_filter_last() {
        let sys = RecordingSyscall::default();
        harden(&hardening(false, true), &sys).unwrap();
        let calls = sys.calls();
        assert!(calls[0].starts_with("drop_capabilities"));
        assert_eq!(calls[1], "no_new_privs");
        assert!(calls[2].starts_with("seccomp"));
        assert_eq!(calls.len(), 3, "one filter: {calls:?}");
    }

    #[test]
    fn privileged_is_not_hardened() {
        let sys = RecordingSyscall::default();
        harden(&hardening(true, false), &sys).unwrap();
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
    }

    #[test]
    fn a_user_namespace_becomes_root_right_after_joining_the_cgroup() {
        let sys = RecordingSyscall::default();
        build(&plan(true), &sys).0.unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], "write /cg/memory/isolab/x/tasks 0");
        assert_eq!(calls[1], "write /cg/pids/isolab/x/tasks 0");
        assert_eq!(calls[2], "become_root");
    }

    /// Every child step's failure reaches the launcher as its own step.
    #[test]
    fn each_failing_call_names_its_own_step() {
        let cases: [(&str, ChildStep); 17] = [
            ("write", ChildStep::CgroupJoin),
            ("become_root", ChildStep::UserIds),
            ("unshare", ChildStep::CgroupNamespace),
            ("mount - / -", ChildStep::MountPropagation),
            ("mount overlay", ChildStep::MountOverlay),
            ("chdir /r", ChildStep::EnterRootfs),
            ("mount proc", ChildStep::MountProc),
            ("mount sysfs", ChildStep::MountSys),
            ("mount tmpfs dev", ChildStep::MountDev),
            ("create dev/null", ChildStep::MountDevice),
            ("mkdir dev/pts", ChildStep::MountDevpts),
            ("mkdir dev/shm", ChildStep::MountShm),
            ("symlink", ChildStep::DevSymlinks),
            ("pivot_root", ChildStep::PivotRoot),
            ("umount2", ChildStep::DetachOldRoot),
            ("sethostname", ChildStep::Hostname),
            ("loopback_up", ChildStep::Loopback),
        ];
        for (call, step) in cases {
            let sys = RecordingSyscall {
                fail_on: Some((call, nix::Error::EACCES)),
                ..Default::default()
            };
            assert_eq!(
                build(&plan(true), &sys).0,
                Err((step, nix::Error::EACCES)),
                "{call}"
            );
        }
        for (call, step, nnp) in [
            ("drop_capabilities", ChildStep::DropCapabilities, true),
            ("drop_capabilities", ChildStep::DropCapabilities, false),
            ("no_new_privs", ChildStep::NoNewPrivs, true),
            ("seccomp", ChildStep::Seccomp, false),
        ] {
            let sys = RecordingSyscall {
                fail_on: Some((call, nix::Error::EPERM)),
                ..Default::default()
            };
            assert_eq!(
                harden(&hardening(false, nnp), &sys),
                Err((step, nix::Error::EPERM)),
                "{call}"
            );
        }
        let sys = RecordingSyscall {
            fail_on: Some(("mount /dev/null /proc/kcore", nix::Error::EPERM)),
            ..Default::default()
        };
        assert_eq!(
            build(&plan(false), &sys).0,
            Err((ChildStep::MaskPaths, nix::Error::EPERM))
        );
        let sys = RecordingSyscall {
            fail_on: Some(("mount /proc/sys", nix::Error::EPERM)),
            dirs: vec!["/proc/sys"],
            ..Default::default()
        };
        assert_eq!(
            build(&plan(false), &sys).0,
            Err((ChildStep::ReadonlyPaths, nix::Error::EPERM))
        );
    }

    #[test]
    fn a_refused_cgroup_join_stops_before_any_mount() {
        let sys = RecordingSyscall {
            fail_on: Some(("write", nix::Error::EACCES)),
            ..Default::default()
        };
        assert_eq!(
            build(&plan(false), &sys).0,
            Err((ChildStep::CgroupJoin, nix::Error::EACCES))
        );
        assert_eq!(sys.calls().len(), 1);
    }
}
