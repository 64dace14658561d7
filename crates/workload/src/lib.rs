//! The one workload binary run in every isolation mode (process, container,
//! microVM): `workload <name> [flags]` (names: [`Workload`]).
//!
//! Owns: argument parsing ([`args`]), the readiness signal ([`ready`]), the
//! workloads themselves, and the single JSON result line ([`result`]). Does
//! not own launching, measuring or isolation: launchers hold the read end of
//! the ready pipe and take timestamps (docs/contracts.md).
//!
//! The binary is measured for startup and memory, so it stays lean: no
//! async runtime, no argument-parsing framework, threads only where the HTTP
//! server needs them.

pub mod api;
pub mod args;
pub mod cache;
pub mod forkloop;
pub mod hog;
pub mod http;
pub mod knob;
pub mod memory;
pub mod probe;
pub mod ready;
pub mod result;
pub mod signals;
pub mod status;
pub mod worker;
pub mod workload;

use serde_json::{Map, Value};

pub use args::{parse, Mode, UsageError};
pub use probe::ProbeReport;
pub use workload::{UnknownWorkload, Workload, HTTP_PORT};

/// A workload that started but failed; the binary prints a result line with
/// `"ok": false` and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The ready signal could not be delivered.
    #[error(transparent)]
    Ready(#[from] ready::ReadyError),
    /// The HTTP server could not start.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The termination signals could not be arranged for (worker).
    #[error(transparent)]
    Signals(#[from] signals::SignalError),
}

/// Runs the selected workload to its end and returns its result object.
pub fn run(mode: &Mode) -> Result<Map<String, Value>, WorkloadError> {
    Ok(match mode {
        Mode::Noop => {
            ready::signal()?;
            result::object("noop", true)
        }
        Mode::Api { listen } => api::run(listen)?,
        Mode::Worker { limit, threads } => worker::run(*limit, *threads)?,
        Mode::Cache { mib, listen } => cache::run(*mib, listen)?,
        Mode::Hog { step_mib, max_mib } => hog::run(*step_mib, *max_mib)?,
        Mode::Forkloop { max } => forkloop::run(*max)?,
        Mode::Probe => probe::run()?,
        Mode::Knob { change } => knob::run_workload(*change)?,
    })
}

/// Formats an error with its whole source chain on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// The result object of a workload that failed after it started.
pub fn failure(name: &str, err: &WorkloadError) -> Map<String, Value> {
    let mut out = result::object(name, false);
    out.insert("error".into(), error_chain(err).into());
    out
}
