//! PID 1 of the container: a tiny loop in the cloned child, no re-exec.
//!
//! It forks the workload (PID 2), which sets up its descriptors and execs;
//! then init waits on a signalfd (all signals are blocked since the clone)
//! and on the launcher's lifeline pipe: SIGCHLD reaps every child (orphans
//! included), any other catchable signal is forwarded to the workload, and
//! EOF on the lifeline (the launcher process died, even by SIGKILL) ends
//! the container. Unlike a parent-death signal, the lifeline is tied to the
//! launcher process, not to the thread that happened to start the
//! container. When the workload ends, init reports its exit code or signal
//! on the status pipe and exits, which makes the kernel kill whatever else
//! is left in the PID namespace.
//!
//! Init runs under the container's capabilities and seccomp filter (applied
//! in [`crate::child::harden`] before it forks), so the workload cannot use
//! it to get around them.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::ChildStep;
use crate::phases::{self, ChildStamps};
use crate::plan::ChildPlan;
use crate::process;
use crate::sync::{self, ExitStatus};

/// Stack of the workload between its clone and its execve.
const WORKLOAD_STACK: usize = 64 * 1024;

/// The fd number of the ready pipe in the workload (`ISOLAB_READY_FD`),
/// the same slot `runc --preserve-fds 1` gives.
pub const READY_FD: i32 = 3;

pub(crate) fn run(plan: &ChildPlan, stamps: &ChildStamps) -> ! {
    // All signals are blocked since the clone; init reads them from a
    // signalfd, so it can also watch the launcher's lifeline.
    let signals = match SignalFd::with_flags(&SigSet::all(), SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = process::write_msg(plan.fds.sync, &sync::failure(ChildStep::InitSignals, e));
            process::exit_now(1)
        }
    };
    // The launcher's phases: sent before the fork, so they arrive before
    // the EOF that says the workload exec'd.
    let _ = process::write_msg(plan.fds.sync, &phases::encode(stamps));
    // The workload is started like posix_spawn does: it shares init's
    // memory (CLONE_VM) on a stack of its own and init waits until it has
    // exec'd (CLONE_VFORK), so no page tables are copied. It only makes
    // system calls before execve (or _exit), writing nothing init reads.
    let mut stack = [0u8; WORKLOAD_STACK];
    let spawned = process::spawn_vfork(&mut stack, || exec_workload(plan));
    let workload = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = process::write_msg(plan.fds.sync, &sync::failure(ChildStep::Fork, e));
            process::exit_now(1)
        }
    };
    // Init keeps only the status pipe: closing the sync socket lets the
    // launcher see EOF once the workload has exec'd. `plan` lives in the
    // launcher's memory, which init may share (see `crate::namespaces`),
    // and the launcher drops it after that EOF: what init needs later is
    // copied first.
    let fds = plan.fds;
    for fd in [fds.sync, fds.ready_w, fds.stdout_w, fds.stderr_w] {
        process::close(fd);
    }
    match reap_until(workload, &signals, fds.lifeline) {
        Some(status) => {
            let _ = process::write_msg(fds.status_w, &sync::status(status));
            process::exit_now(0)
        }
        // The launcher is gone: end the container with it (init's exit
        // makes the kernel kill everything left in the PID namespace).
        None => process::exit_now(1),
    }
}

/// Waits for the workload's end, forwarding signals and reaping orphans;
/// `None` if the launcher process died first (its lifeline closed).
fn reap_until(workload: Pid, signals: &SignalFd, lifeline: RawFd) -> Option<ExitStatus> {
    loop {
        let (signalled, launcher_gone) = match process::poll2(signals.as_raw_fd(), lifeline) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if launcher_gone {
            let _ = nix::sys::signal::kill(workload, Signal::SIGKILL);
            return None;
        }
        if !signalled {
            continue;
        }
        let sig = match signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        };
        match sig {
            Some(Signal::SIGCHLD) => {}
            Some(sig) => {
                let _ = nix::sys::signal::kill(workload, sig);
                continue;
            }
            None => continue,
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                    return Some(ExitStatus::Exited(code))
                }
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == workload => {
                    return Some(ExitStatus::Signaled(s as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// PID 2: descriptors, session, signal mask, then execve.
fn exec_workload(plan: &ChildPlan) -> ! {
    let fds = plan.fds;
    let setup = (|| {
        // Its own session: a terminal's Ctrl-C reaches the launcher, which
        // forwards it through init, not the workload directly.
        nix::unistd::setsid()?;
        // stdin is the container's own /dev/null (after pivot_root), never
        // the launcher's terminal; stdout and stderr are pipes the
        // launcher reads.
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        process::dup_to(std::os::fd::AsRawFd::as_raw_fd(&null), 0)?;
        process::dup_to(fds.stdout_w, 1)?;
        process::dup_to(fds.stderr_w, 2)?;
        process::dup_to(fds.ready_w, READY_FD)?;
        process::cloexec_from(READY_FD as u32 + 1)?;
        if let Some(id) = &plan.identity {
            id.apply()?;
        }
        process::set_mask(&SigSet::empty())
    })();
    let errno = match setup {
        Err(e) => (ChildStep::SetupFds, e),
        Ok(()) => (ChildStep::Exec, plan.exec.exec()),
    };
    let _ = process::write_msg(fds.sync, &sync::failure(errno.0, errno.1));
    process::exit_now(127)
}
