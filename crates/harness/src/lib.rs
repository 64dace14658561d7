//! isolab's measurement harness: the modes an instance runs in (one
//! [`modes::Launcher`] per mode and peer), the scenarios that use them
//! (startup and memory in [`compare`], [`density`], the classroom
//! [`demo`]s, one instance in [`single`]), statistics, the host fingerprint
//! and the reports.
//!
//! It owns *how* things are measured and run side by side; how a container
//! is launched or a VM booted belongs to `isolab-container` and
//! `isolab-microvm` (the latter as the `isolab-vmm` process).

pub mod compare;
pub mod demo;
pub mod density;
pub mod emulated;
pub mod env;
pub mod image;
pub mod isolation;
pub mod memory;
pub mod modes;
pub mod net;
pub mod ready;
pub mod report;
pub mod single;
pub mod stale;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use isolab_cgroups::CgroupError;
use isolab_container::ContainerError;
use isolab_emuhost::EmuhostError;
use isolab_guest_kernel::ProvisionError;
use isolab_net::{ProbeError, WorkbenchError};
pub use isolab_workload::{UnknownWorkload, Workload};

/// Errors of the harness, by what failed; [`HarnessError::is_usage`] and
/// [`HarnessError::is_host`] classify them for the CLI's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("No ready signal within {0:?}")]
    Timeout(Duration),
    #[error("Instance never became ready: {0}")]
    NotReady(String),
    #[error("{what} never answered over HTTP")]
    NoAnswer {
        what: String,
        #[source]
        source: ProbeError,
    },
    #[error("Binary not found: {0} (build the workspace: cargo build --release)")]
    MissingBinary(PathBuf),
    #[error("{0}")]
    Launch(String),
    /// A value the user gave is wrong; the text says which and what to do.
    #[error("{0}")]
    Config(String),
    /// The monitor (`isolab-vmm`) ended without a report.
    #[error("The monitor exited ({}) without a report: {message}", status.map_or("?".into(), |s| format!("status {s}")))]
    Monitor {
        status: Option<i32>,
        message: String,
    },
    /// The mode cannot run on this host; the text says why and what to do.
    #[error("{0}")]
    Unavailable(String),
    #[error("Container")]
    Container(#[from] ContainerError),
    #[error("Cgroup of the density run")]
    Cgroup(#[from] CgroupError),
    #[error("Workbench network")]
    Workbench(#[from] WorkbenchError),
    #[error("Guest artifacts could not be provisioned")]
    Provision(#[from] ProvisionError),
    #[error("Emulated host")]
    Emuhost(#[from] EmuhostError),
    #[error("Interrupted")]
    Interrupted,
}

impl HarnessError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        HarnessError::Io {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Whether a user-given value was wrong (nothing ran).
    pub fn is_usage(&self) -> bool {
        match self {
            HarnessError::Config(_) => true,
            // The monitor's own exit codes (crates/vmm): 2 usage, 3 host.
            HarnessError::Monitor { status, .. } => *status == Some(2),
            HarnessError::Container(e) => container_class(e) == Some(true),
            HarnessError::Emuhost(e) => e.is_usage(),
            _ => false,
        }
    }

    /// Whether the host lacks something (root, a controller, KVM, a
    /// package, a built binary) rather than a run having failed.
    pub fn is_host(&self) -> bool {
        match self {
            HarnessError::MissingBinary(_) | HarnessError::Unavailable(_) => true,
            HarnessError::Monitor { status, .. } => *status == Some(3),
            HarnessError::Container(e) => container_class(e) == Some(false),
            HarnessError::Workbench(e) => e.is_host(),
            HarnessError::Provision(e) => e.is_host(),
            HarnessError::Emuhost(e) => e.is_host(),
            _ => false,
        }
    }
}

/// A container error's class: `Some(true)` usage, `Some(false)` the host,
/// `None` a failed run. The container crate's own `is_usage()`/`is_host()`
/// decide, except for its cgroup errors, which the cgroup error's type
/// decides: a CPU set the host lacks is the user's, a write that failed is
/// a failed run, anything else (a missing controller) is the host's.
fn container_class(e: &ContainerError) -> Option<bool> {
    let cgroup = match e {
        ContainerError::Cgroups(c) | ContainerError::CgroupCreate { source: c, .. } => Some(c),
        _ => None,
    };
    match cgroup {
        Some(CgroupError::CpusetUnavailable { .. }) => Some(true),
        Some(CgroupError::Write { .. } | CgroupError::Create { .. }) => None,
        Some(_) => Some(false),
        None if e.is_usage() => Some(true),
        None if e.is_host() => Some(false),
        None => None,
    }
}

/// An error and its sources on one line (for messages that must fit one
/// table cell or report field).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_type() {
        let missing = ContainerError::CgroupCreate {
            id: "x".into(),
            source: CgroupError::ControllerMissing {
                controller: "pids".into(),
            },
        };
        let e = HarnessError::from(missing);
        assert!(e.is_host() && !e.is_usage());
        assert!(
            chain(&e).contains("'pids' is not available"),
            "{}",
            chain(&e)
        );
        assert!(HarnessError::from(ContainerError::NotRoot).is_host());
        let child = ContainerError::Child {
            step: isolab_container::ChildStep::Exec,
            source: nix::Error::ENOENT,
        };
        let e = HarnessError::from(child);
        assert!(!e.is_host() && !e.is_usage());
        assert!(HarnessError::Config("x".into()).is_usage());
        assert!(HarnessError::Unavailable("no KVM".into()).is_host());
    }
}
