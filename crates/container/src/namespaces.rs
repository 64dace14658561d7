//! The namespaces of a container and the one clone that creates them.
//!
//! pid, mount, uts, ipc and net (plus user, when asked) are created by a
//! single clone with all flags, crun's fast path: no intermediate process.
//! The cgroup namespace is unshared by the child after the launcher has
//! moved it into its cgroup, so the namespace's root is the instance cgroup
//! (cgroup v1 has no CLONE_INTO_CGROUP).

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::child;
use crate::plan::ChildPlan;
use crate::syscall::LinuxSyscall;

/// Stack of the cloned child (init's loop and the setup run on it).
const STACK_SIZE: usize = 256 * 1024;

pub(crate) fn clone_flags(user_namespace: bool) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    if user_namespace {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    f
}

/// Clones the container's init. The caller has blocked all signals in this
/// thread (the child inherits the mask and waits for signals with sigwait).
pub(crate) fn clone_init(plan: &ChildPlan) -> nix::Result<Pid> {
    let mut stack = vec![0u8; STACK_SIZE];
    let cb = Box::new(|| child::main(plan, &LinuxSyscall));
    // SAFETY: the child gets a copy-on-write copy of this address space
    // (no CLONE_VM), runs `child::main` on its own copy of `stack`, and only
    // makes async-signal-safe, non-allocating calls until execve or _exit
    // (all strings and paths were prepared in `plan` before this call), so
    // locks held by other launcher threads at the time of the clone are
    // never taken in the child.
    unsafe {
        nix::sched::clone(
            cb,
            &mut stack,
            clone_flags(plan.user_namespace),
            Some(libc::SIGCHLD),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_namespaces_but_cgroup_are_in_the_one_clone() {
        let f = clone_flags(false);
        assert!(f.contains(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS
        ));
        assert!(!f.contains(CloneFlags::CLONE_NEWUSER));
        assert!(!f.contains(CloneFlags::CLONE_NEWCGROUP));
        assert!(clone_flags(true).contains(CloneFlags::CLONE_NEWUSER));
    }
}
