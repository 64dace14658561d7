//! Ending the workloads on SIGTERM/SIGINT: the servers without a signal
//! handler (below), the worker with a flag-only handler ([`flag_on_term`]).
//!
//! The two signals are blocked in the calling thread *before* any other
//! thread exists, so every thread (including tiny_http's) inherits the mask
//! and the signals stay pending until one dedicated thread collects them
//! with `sigwait`. That thread then runs the stop action (unblocking the
//! server's accept loop), and the main thread prints the result line.

use nix::sys::signal::{SigSet, Signal};

/// Errors while arranging for termination signals.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// `pthread_sigmask` refused the mask.
    #[error("Could not block SIGTERM/SIGINT")]
    Block(#[source] nix::Error),
    /// The waiter thread could not be spawned.
    #[error("Could not start the signal thread")]
    Spawn(#[source] std::io::Error),
    /// `sigaction` refused the handler.
    #[error("Could not install the SIGTERM/SIGINT handler")]
    Handler(#[source] nix::Error),
}

fn term_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT in this thread. Call before spawning threads.
pub fn block_term() -> Result<(), SignalError> {
    term_set().thread_block().map_err(SignalError::Block)
}

/// Spawns the thread that waits for SIGTERM/SIGINT and then calls `on_term`
/// with the signal received. [`block_term`] must have been called first.
pub fn on_term<F>(on_term: F) -> Result<(), SignalError>
where
    F: FnOnce(Signal) + Send + 'static,
{
    std::thread::Builder::new()
        .name("sigwait".into())
        .spawn(move || {
            let set = term_set();
            // sigwait only fails for an invalid set; fall back to SIGTERM so
            // the server still stops instead of hanging.
            let sig = set.wait().unwrap_or(Signal::SIGTERM);
            on_term(sig);
        })
        .map(|_| ())
        .map_err(SignalError::Spawn)
}

/// The signal [`flag_on_term`]'s handler saw (0: none yet).
static TERM_SEEN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn note_term(sig: nix::libc::c_int) {
    // Async-signal-safe: one atomic store.
    TERM_SEEN.store(sig, std::sync::atomic::Ordering::Relaxed);
}

/// Installs a handler that only records SIGTERM/SIGINT, for a workload that
/// checks [`term_seen`] between batches of work: no waiter thread, so the
/// process keeps exactly the threads it was asked for (a container's
/// `pids.current` counts every one). A handler also makes SIGTERM end a
/// PID 1, whose default action the kernel does not apply.
pub fn flag_on_term() -> Result<(), SignalError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let action = SigAction::new(
        SigHandler::Handler(note_term),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler performs one atomic store, which is
        // async-signal-safe, and touches nothing else.
        unsafe { sigaction(sig, &action) }.map_err(SignalError::Handler)?;
    }
    Ok(())
}

/// The termination signal the [`flag_on_term`] handler saw, if any.
pub fn term_seen() -> Option<Signal> {
    match TERM_SEEN.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}
