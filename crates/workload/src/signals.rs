//! Ending the servers on SIGTERM/SIGINT without a signal handler.
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
