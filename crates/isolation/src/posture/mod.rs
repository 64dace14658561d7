//! Security posture, two sides of one boundary:
//!
//! - [`host`]: what each host-side process of an instance (the workload in
//!   process/container mode, the monitor, a runtime's or sandbox's
//!   processes) holds over the **host** kernel: capabilities, no_new_privs,
//!   seccomp, user-namespace mapping; read from `/proc/PID/...`.
//! - [`workload`]: what the workload holds over the kernel **it** talks to
//!   (the host's, gVisor's Sentry, or a guest kernel), as reported by
//!   `workload probe` from inside, parsed into types.
//!
//! Readers take the `/proc` root as a parameter, so they are unit-tested on
//! fake trees.

pub mod caps;
pub mod host;
pub mod workload;

pub use caps::CapSet;
pub use host::{IdMapping, ProcessPosture, Seccomp};
pub use workload::{HostKernel, KernelRelation, ProbeFacts, WorkloadPosture, PROBE_FACTS};

/// Failures of reading or parsing a posture.
#[derive(Debug, thiserror::Error)]
pub enum PostureError {
    /// `/proc/PID/status` could not be read (the process is gone?).
    #[error("Cannot read the status of process {pid} under {proc_root:?}")]
    Status {
        pid: u32,
        proc_root: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The probe's result line is not the JSON object expected.
    #[error("The probe report is not a workload probe result")]
    Probe(#[source] serde_json::Error),
}
