//! Exit codes of `bench`, one place for all subcommands.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (or the workload's own status 0) |
//! | 1 | the run failed (a launch step, the guest, a peer) |
//! | 2 | usage error: bad flag or value; nothing was changed on the host |
//! | 3 | the host lacks something: not root, no `/dev/kvm`, PVM KVM, a cgroup controller, a package |
//! | other | `bench container run` / `bench vm run` pass the workload's status through (128+N for signal N) |

use std::fmt;

/// Usage error: the user typed something wrong.
pub const USAGE: u8 = 2;
/// The host lacks a capability the command needs.
pub const HOST: u8 = 3;
/// Anything else that failed.
pub const FAILURE: u8 = 1;

/// Marks an error as a usage error (exit 2) when wrapped into `anyhow::Error`.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// Marks an error as "the host lacks a capability" (exit 3).
#[derive(Debug)]
pub struct HostError(pub String);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for HostError {}

/// Convenience constructors.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub fn host(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(HostError(msg.into()))
}

/// The exit code for an error chain: the first marker found wins.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
        if cause.downcast_ref::<HostError>().is_some() {
            return HOST;
        }
    }
    FAILURE
}
