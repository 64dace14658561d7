//! Ctrl-C and SIGTERM for the commands that run one instance (`bench
//! container run`, `bench vm run`): the first one is passed on to the
//! instance as SIGTERM (the container's init or the monitor stops its
//! workload and reports), a second one SIGKILLs it; `bench` itself keeps
//! running so the library tears down what it created (cgroups, the
//! workbench network) on its normal path.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use anyhow::Context;

/// Host pid of the running instance; 0 while there is none.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Interrupts received so far.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_interrupt(_sig: libc::c_int) {
    let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    let pid = TARGET.load(Ordering::SeqCst);
    if pid > 0 {
        let sig = if n == 0 { libc::SIGTERM } else { libc::SIGKILL };
        // SAFETY: kill(2) is async-signal-safe and takes no pointers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Installs the forwarding handler for SIGINT, SIGTERM and SIGHUP.
pub fn forward_to_child() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches atomics and calls kill(2), both
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.context("cannot install the interrupt handler")?;
    }
    Ok(())
}

/// The instance now running (0: none). An interrupt that came before it
/// started is passed on at once.
pub fn target(pid: i32) {
    TARGET.store(pid, Ordering::SeqCst);
    if pid > 0 && INTERRUPTS.load(Ordering::SeqCst) > 0 {
        // SAFETY: kill(2) takes plain integers; `pid` is our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
