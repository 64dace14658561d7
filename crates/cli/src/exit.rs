//! Exit codes of `bench`, one place for all subcommands.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (or the workload's own status 0) |
//! | 1 | the run failed (a launch step, the guest, a peer) |
//! | 2 | usage error: bad flag or value; nothing was changed on the host |
//! | 3 | the host lacks something: not root, no `/dev/kvm`, PVM KVM, a cgroup controller, a package |
//! | other | `bench container run` / `bench vm run` pass the workload's status through (128+N for signal N) |
//!
//! The class of an error comes from the libraries' typed methods
//! (`is_usage()`, `is_host()`), found by walking the error's chain; the
//! CLI's own checks mark their errors with [`usage`] and [`host`].

use std::fmt;

use isolab_emuhost::EmuhostError;
use isolab_harness::HarnessError;

/// Usage error: the user typed something wrong.
pub const USAGE: u8 = 2;
/// The host lacks a capability the command needs.
pub const HOST: u8 = 3;
/// Anything else that failed.
pub const FAILURE: u8 = 1;

/// An error of the CLI's own checks, with its class.
#[derive(Debug)]
struct Marked {
    code: u8,
    msg: String,
}

impl fmt::Display for Marked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}
impl std::error::Error for Marked {}

/// A usage error (exit 2).
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Marked {
        code: USAGE,
        msg: msg.into(),
    })
}

/// "The host lacks a capability" (exit 3).
pub fn host(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Marked {
        code: HOST,
        msg: msg.into(),
    })
}

/// The class of one error of the chain, if its type says.
fn class_of(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    let (is_usage, is_host) = if let Some(m) = e.downcast_ref::<Marked>() {
        return Some(m.code);
    } else if let Some(e) = e.downcast_ref::<HarnessError>() {
        (e.is_usage(), e.is_host())
    } else if let Some(e) = e.downcast_ref::<EmuhostError>() {
        (e.is_usage(), e.is_host())
    } else if let Some(e) = e.downcast_ref::<isolab_guest_kernel::ProvisionError>() {
        (false, e.is_host())
    } else {
        return None;
    };
    if is_usage {
        Some(USAGE)
    } else if is_host {
        Some(HOST)
    } else {
        None
    }
}

/// The exit code for an error chain: the first classified cause wins.
pub fn code_for(err: &anyhow::Error) -> u8 {
    err.chain().find_map(class_of).unwrap_or(FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_classified_cause_decides() {
        assert_eq!(code_for(&usage("bad")), USAGE);
        assert_eq!(code_for(&host("no kvm").context("vm run")), HOST);
        assert_eq!(code_for(&anyhow::anyhow!("boom")), FAILURE);
        let e = anyhow::Error::new(HarnessError::Unavailable("no /dev/kvm".into()));
        assert_eq!(code_for(&e.context("bench vm run")), HOST);
        let e = anyhow::Error::new(HarnessError::Config("--net needs api".into()));
        assert_eq!(code_for(&e), USAGE);
        let e = anyhow::Error::new(HarnessError::Launch("the guest failed".into()));
        assert_eq!(code_for(&e), FAILURE);
    }
}
