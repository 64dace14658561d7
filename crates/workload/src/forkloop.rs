//! `workload forkloop`: forks children that stay alive (sleeping) until
//! fork is refused (`EAGAIN` under a pids limit) or the cap is reached.
//!
//! The children ask the kernel to kill them when the parent dies
//! (`PR_SET_PDEATHSIG`), and the parent kills and reaps every child before
//! it prints its result, so nothing outlives the run.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use serde_json::Value;

use crate::{ready, result};

/// Runs the fork loop and returns the result object.
pub fn run(max: u64) -> Result<serde_json::Map<String, Value>, crate::WorkloadError> {
    ready::signal()?;
    let mut children: Vec<Pid> = Vec::new();
    let mut errno: Option<nix::Error> = None;
    let parent = nix::unistd::getpid();
    while (children.len() as u64) < max {
        // SAFETY: forkloop is single-threaded (no other thread can hold a
        // lock the child would need), and the child only calls the
        // async-signal-safe prctl, pause and _exit.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => child(parent),
            Ok(ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                errno = Some(e);
                break;
            }
        }
    }
    let forked = children.len() as u64;
    for pid in &children {
        // ESRCH would mean it already died; it is reaped below either way.
        let _ = kill(*pid, Signal::SIGKILL);
    }
    let mut reaped = 0u64;
    for pid in &children {
        if waitpid(*pid, None).is_ok() {
            reaped += 1;
        }
    }
    let ok = matches!(errno, None | Some(nix::Error::EAGAIN)) && reaped == forked;
    let mut out = result::object("forkloop", ok);
    out.insert("forked".into(), forked.into());
    out.insert("max".into(), max.into());
    out.insert("capped".into(), errno.is_none().into());
    out.insert("errno".into(), errno.map(|e| format!("{e:?}")).into());
    out.insert("reaped".into(), reaped.into());
    Ok(out)
}

/// The child: die with the parent, otherwise sleep until killed.
fn child(parent: Pid) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG), getppid, pause and _exit are
    // async-signal-safe and take plain integers, touching no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        // The parent may have died before the prctl took effect.
        if libc::getppid() != parent.as_raw() {
            libc::_exit(0);
        }
        loop {
            libc::pause();
        }
    }
}
