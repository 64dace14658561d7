//! Interruption: a caller's Ctrl-C (SIGINT), SIGTERM or SIGHUP must stop
//! the emulated host and still run every cleanup. QEMU runs in its own
//! process group, so the terminal's signal reaches only the caller; the
//! handlers installed here set a flag that the runner polls, and the runner
//! kills QEMU and returns [`crate::RunError::Interrupted`]. Without the
//! handlers the caller dies and QEMU follows by `PR_SET_PDEATHSIG`.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the flag-setting handlers for SIGINT, SIGTERM and SIGHUP.
pub fn install_handlers() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to a static atomic, which is
        // async-signal-safe, and it does not replace a handler that any code
        // of ours relies on.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// True once one of the signals arrived.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
