//! What the cloned child does, in order, before it becomes the container's
//! init (see `docs/design.md`, container launch sequence):
//!
//! 1. reset signal dispositions (all stay blocked for init's signalfd);
//! 2. wait for the launcher's `GO` (it has written id maps, attached the
//!    network, on v2 moved us into the cgroup); EOF means the launcher gave
//!    up or died, and the child exits;
//! 3. join the cgroup (v1: itself, through `tasks`, which avoids the
//!    kernel's global threadgroup lock); in a user namespace, become its root;
//! 4. unshare the cgroup namespace now, so its root is the instance cgroup;
//! 5. mount the root filesystem and pivot into it, mask paths;
//! 6. set the hostname, bring up `lo`;
//! 7. become init ([`crate::init`]).
//!
//! A failure is sent to the launcher as (step, errno) and the child exits.

use std::os::fd::RawFd;

use nix::sched::CloneFlags;

use crate::error::ChildStep;
use crate::process::{self, ExecPlan};
use crate::rootfs::{self, RootfsPlan, Step, StepResult};
use crate::sync::{self, GO, MSG_LEN};
use crate::syscall::Syscall;
use crate::{init, pivot};

/// Descriptors the child uses (the launcher's ends are closed after clone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildFds {
    pub sync: RawFd,
    pub ready_w: RawFd,
    pub stdout_w: RawFd,
    pub status_w: RawFd,
    /// Read end of the launcher's lifeline: EOF when the launcher dies.
    pub lifeline: RawFd,
}

/// Everything the child needs, prepared before the clone.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    pub rootfs: RootfsPlan,
    pub hostname: String,
    pub user_namespace: bool,
    /// Workload stderr to `/dev/null` inside the container.
    pub quiet_stderr: bool,
    /// cgroup v1 `tasks` files the child writes `0` to, to join its cgroup
    /// itself (empty when the launcher moves it by pid).
    pub cgroup_tasks: Vec<std::path::PathBuf>,
    pub exec: ExecPlan,
    pub fds: ChildFds,
}

/// Entry point of the cloned child. Returns only to exit with a failure.
pub(crate) fn main(plan: &ChildPlan, sys: &dyn Syscall) -> isize {
    let f = plan.fds;
    let _ = process::close_all_except([f.sync, f.ready_w, f.stdout_w, f.status_w, f.lifeline]);
    let result = prepare(plan).and_then(|()| build_view(plan, sys));
    match result {
        Ok(()) => init::run(plan),
        Err((step, errno)) => {
            let _ = process::write_msg(plan.fds.sync, &sync::failure(step, errno));
            1
        }
    }
}

/// Steps 1–2.
fn prepare(plan: &ChildPlan) -> StepResult {
    process::default_signals();
    // Shows up as the container's PID 1 in `ps` instead of the launcher's name.
    let _ = nix::sys::prctl::set_name(c"isolab-init");
    let mut msg = [0u8; MSG_LEN];
    match process::read_msg(plan.fds.sync, &mut msg).step(ChildStep::SyncWait)? {
        1 if msg[0] == GO => Ok(()),
        // The launcher closed its end: it failed or died before GO.
        _ => Err((ChildStep::SyncWait, nix::Error::EPIPE)),
    }
}

/// Steps 3–6: the container's view of the system.
pub(crate) fn build_view(plan: &ChildPlan, sys: &dyn Syscall) -> StepResult {
    // First, so everything below is charged to the container. Still host
    // root here (before become_root), so the host's cgroupfs accepts it.
    for tasks in &plan.cgroup_tasks {
        sys.write_file(tasks, b"0").step(ChildStep::CgroupJoin)?;
    }
    if plan.user_namespace {
        sys.become_root().step(ChildStep::UserIds)?;
    }
    sys.unshare(CloneFlags::CLONE_NEWCGROUP)
        .step(ChildStep::CgroupNamespace)?;
    rootfs::mount_all(&plan.rootfs, sys)?;
    pivot::pivot_into_cwd(sys)?;
    rootfs::mask_and_protect(sys)?;
    sys.sethostname(&plan.hostname).step(ChildStep::Hostname)?;
    sys.loopback_up().step(ChildStep::Loopback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::RecordingSyscall;

    fn plan(userns: bool) -> ChildPlan {
        ChildPlan {
            rootfs: RootfsPlan {
                rootfs: "/r".into(),
                overlay_options: "lowerdir=/i,upperdir=/u,workdir=/w".into(),
            },
            hostname: "box-1".into(),
            user_namespace: userns,
            quiet_stderr: false,
            cgroup_tasks: vec![
                "/cg/memory/isolab/x/tasks".into(),
                "/cg/pids/isolab/x/tasks".into(),
            ],
            exec: ExecPlan::new("/workload", &["/workload".into(), "noop".into()], &[]).unwrap(),
            fds: ChildFds {
                sync: -1,
                ready_w: -1,
                stdout_w: -1,
                status_w: -1,
                lifeline: -1,
            },
        }
    }

    #[test]
    fn the_view_is_built_in_order() {
        let sys = RecordingSyscall::default();
        build_view(&plan(false), &sys).unwrap();
        let cgroupns = sys.position("unshare CLONE_NEWCGROUP").unwrap();
        let overlay = sys.position("mount overlay").unwrap();
        let pivot = sys.position("pivot_root").unwrap();
        let mask = sys.position("mount /dev/null /proc/kcore").unwrap();
        let host = sys.position("sethostname box-1").unwrap();
        let lo = sys.position("loopback_up").unwrap();
        assert!(cgroupns < overlay && overlay < pivot && pivot < mask && mask < host && host < lo);
        assert!(sys.position("become_root").is_none());
    }

    #[test]
    fn a_user_namespace_becomes_root_right_after_joining_the_cgroup() {
        let sys = RecordingSyscall::default();
        build_view(&plan(true), &sys).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], "write /cg/memory/isolab/x/tasks 0");
        assert_eq!(calls[1], "write /cg/pids/isolab/x/tasks 0");
        assert_eq!(calls[2], "become_root");
    }

    #[test]
    fn a_refused_cgroup_join_stops_before_any_mount() {
        let sys = RecordingSyscall {
            fail_on: Some(("write", nix::Error::EACCES)),
            ..Default::default()
        };
        assert_eq!(
            build_view(&plan(false), &sys),
            Err((ChildStep::CgroupJoin, nix::Error::EACCES))
        );
        assert_eq!(sys.calls().len(), 1);
    }

    #[test]
    fn a_hostname_failure_names_that_step() {
        let sys = RecordingSyscall {
            fail_on: Some(("sethostname", nix::Error::EPERM)),
            ..Default::default()
        };
        assert_eq!(
            build_view(&plan(false), &sys),
            Err((ChildStep::Hostname, nix::Error::EPERM))
        );
        assert!(sys.position("loopback_up").is_none());
    }
}
