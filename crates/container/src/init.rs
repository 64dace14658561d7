//! PID 1 of the container: a tiny loop in the cloned child, no re-exec.
//!
//! It forks the workload (PID 2), which sets up its descriptors and execs;
//! then init waits for signals (all blocked since the clone): SIGCHLD reaps
//! every child (orphans included), any other catchable signal is forwarded
//! to the workload. When the workload ends, init reports its exit code or
//! signal on the status pipe and exits, which makes the kernel kill whatever
//! else is left in the PID namespace.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::child::ChildPlan;
use crate::error::ChildStep;
use crate::process;
use crate::sync::{self, ExitStatus};

/// The fd number of the ready pipe in the workload (`ISOLAB_READY_FD`),
/// the same slot `runc --preserve-fds 1` gives.
pub const READY_FD: i32 = 3;

pub(crate) fn run(plan: &ChildPlan) -> ! {
    let workload = match process::fork() {
        Ok(ForkResult::Child) => exec_workload(plan),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            let _ = process::write_msg(plan.fds.sync, &sync::failure(ChildStep::Fork, e));
            process::exit_now(1)
        }
    };
    // Init keeps only the status pipe: closing the sync socket lets the
    // launcher see EOF once the workload has exec'd.
    for fd in [plan.fds.sync, plan.fds.ready_w, plan.fds.stdout_w] {
        process::close(fd);
    }
    let status = reap_until(workload);
    let _ = process::write_msg(plan.fds.status_w, &sync::status(status));
    process::exit_now(0)
}

fn reap_until(workload: Pid) -> ExitStatus {
    let all = SigSet::all();
    loop {
        let sig = match all.wait() {
            Ok(sig) => sig,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(workload, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                    return ExitStatus::Exited(code)
                }
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == workload => {
                    return ExitStatus::Signaled(s as i32)
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
        process::dup_to(fds.stdout_w, 1)?;
        process::dup_to(fds.ready_w, READY_FD)?;
        process::cloexec_from(READY_FD as u32 + 1)?;
        process::set_mask(&SigSet::empty())
    })();
    let errno = match setup {
        Err(e) => (ChildStep::SetupFds, e),
        Ok(()) => (ChildStep::Exec, plan.exec.exec()),
    };
    let _ = process::write_msg(fds.sync, &sync::failure(errno.0, errno.1));
    process::exit_now(127)
}
