//! isolab's measurement harness: scenarios (startup, memory, density), the
//! modes they run in, statistics, the host fingerprint and the reports.
//!
//! It owns *how* things are measured; how a container is launched or a VM
//! booted belongs to `isolab-container` and `isolab-microvm`.

pub mod compare;
pub mod demo;
pub mod density;
pub mod env;
pub mod memory;
pub mod modes;
pub mod probe;
pub mod ready;
pub mod report;
pub mod stats;

use std::path::PathBuf;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("I/O error during: {0}")]
    Io(String, #[source] std::io::Error),
    #[error("Timed out: {0}")]
    Timeout(String),
    #[error("Instance never became ready: {0}")]
    NotReady(String),
    #[error("HTTP probe failed: {0}")]
    Probe(String),
    #[error("Binary not found: {0} (build the workspace: cargo build --release)")]
    MissingBinary(PathBuf),
    #[error("Launch failed: {0}")]
    Launch(String),
    #[error("Invalid configuration: {0}")]
    Config(String),
    #[error("Interrupted")]
    Interrupted,
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Catch SIGINT/SIGTERM so long runs stop between steps and tear down what
/// they started instead of dying with instances still running.
pub fn install_interrupt_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &act) };
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}
