//! The namespaces of a container and the one clone that creates them.
//!
//! pid, mount, uts and ipc (plus user, when asked) are created by a single
//! clone with all flags, crun's fast path: no intermediate process. The
//! network namespace is made concurrently by a launcher thread, which also
//! runs the network hook on it, and joined by the child before it mounts
//! `/sys` ([`new_netns`]), unless the container has a user namespace (its
//! network namespace must belong to it): then it is in the clone too. The cgroup namespace is unshared by the
//! child after it joined its cgroup, so the namespace's root is the
//! instance cgroup.

use std::os::fd::{OwnedFd, RawFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::child;
use crate::plan::ChildPlan;
use crate::syscall::LinuxSyscall;

/// Stack of the cloned child (init's loop and the setup run on it).
const STACK_SIZE: usize = 256 * 1024;

/// The clone's flags; without `CLONE_NEWNET` when the launcher makes the
/// network namespace concurrently ([`new_netns`]).
pub(crate) fn clone_flags(user_namespace: bool, netns_in_clone: bool) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if netns_in_clone {
        f |= CloneFlags::CLONE_NEWNET;
    }
    if user_namespace {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    f
}

/// A new network namespace with `lo` up, made on the calling thread (a
/// launcher thread of its own, concurrently with the launch: creating one
/// costs 1-3 ms of kernel time here, the largest single piece of a
/// launch): unshare it, bring `lo` up, open `/proc/thread-self/ns/net`.
/// The thread stays in it (and ends); the descriptor is then the
/// namespace's only reference until the child joins it. Each launch gets
/// its own, made during that launch (no pool).
pub(crate) fn new_netns() -> nix::Result<OwnedFd> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
    crate::syscall::Syscall::loopback_up(&LinuxSyscall)?;
    nix::fcntl::open(
        "/proc/thread-self/ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Clones the container's init. The caller has blocked all signals in this
/// thread (the child inherits the mask and waits for signals with sigwait).
/// With `plan.cgroup_dir` (cgroup v2) the child is born in its cgroup:
/// `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7+), as crun does, so nobody
/// has to move it there (a move takes the kernel's global threadgroup lock).
pub(crate) fn clone_init(plan: &ChildPlan) -> nix::Result<Pid> {
    let flags = clone_flags(plan.user_namespace, plan.rootfs.netns_from.is_none());
    if let Some(dir) = plan.cgroup_dir {
        return clone3_into_cgroup(plan, flags, dir);
    }
    let mut stack = vec![0u8; STACK_SIZE];
    let cb = Box::new(|| child::main(plan, &LinuxSyscall));
    // SAFETY: the child gets a copy-on-write copy of this address space
    // (no CLONE_VM), runs `child::main` on its own copy of `stack`, and only
    // makes async-signal-safe, non-allocating calls until execve or _exit
    // (all strings and paths were prepared in `plan` before this call), so
    // locks held by other launcher threads at the time of the clone are
    // never taken in the child.
    unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone3_into_cgroup(plan: &ChildPlan, flags: CloneFlags, cgroup_dir: RawFd) -> nix::Result<Pid> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (size given) and, without CLONE_VM and
    // with no stack, creates a copy-on-write child that returns from the
    // syscall here on its copy of this thread's stack, like fork(2) but
    // without glibc's atfork handlers. The child never returns from this
    // function: it runs `child::main` (async-signal-safe, non-allocating
    // calls only, everything prepared in `plan`) and exits with `_exit`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match nix::Error::result(rc)? {
        0 => {
            let code = child::main(plan, &LinuxSyscall);
            crate::process::exit_now(code as i32)
        }
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_namespaces_but_cgroup_are_in_the_one_clone() {
        let f = clone_flags(false, true);
        assert!(f.contains(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS
        ));
        assert!(!f.contains(CloneFlags::CLONE_NEWUSER));
        assert!(!f.contains(CloneFlags::CLONE_NEWCGROUP));
        assert!(clone_flags(true, true).contains(CloneFlags::CLONE_NEWUSER));
        assert!(!clone_flags(false, false).contains(CloneFlags::CLONE_NEWNET));
    }
}
