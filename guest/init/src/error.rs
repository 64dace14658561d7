//! Init's error type: one variant per step. Init has no dependencies beyond
//! nix, libc and the std-only guest spec, so Display is written by hand.

use std::fmt;

use crate::cmdline::CmdlineError;
use isolab_guest_spec::FormatError as SpecError;

#[derive(Debug)]
pub enum InitError {
    /// Not PID 1: refusing to mount over and reboot the host.
    NotPid1 { pid: i32 },
    /// Creating a mount point failed.
    MkMountPoint {
        target: &'static str,
        source: std::io::Error,
    },
    /// A mount failed.
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    /// `/proc/cmdline` could not be read.
    ReadCmdline(std::io::Error),
    /// The `isolab.*` parameters are wrong.
    Cmdline(CmdlineError),
    /// sethostname failed.
    Hostname { name: String, source: nix::Error },
    /// A network configuration ioctl failed.
    Net {
        step: &'static str,
        iface: &'static str,
        source: nix::Error,
    },
    /// The guest spec (`/isolab/spec`) could not be read.
    ReadSpec {
        path: &'static str,
        source: std::io::Error,
    },
    /// The guest spec does not parse.
    Spec(SpecError),
    /// The root disk's device node never appeared.
    NoRootDevice { device: String, waited_ms: u64 },
    /// Mounting the root disk failed.
    MountRoot {
        device: String,
        fstype: String,
        source: nix::Error,
    },
    /// Creating the ready pipe failed.
    ReadyPipe(nix::Error),
    /// Creating the output pipe failed.
    OutputPipe(nix::Error),
    /// Starting the workload failed.
    Spawn {
        path: String,
        source: std::io::Error,
    },
    /// poll/read on the workload's pipes failed.
    Relay {
        what: &'static str,
        source: nix::Error,
    },
    /// waitpid failed.
    Wait(nix::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPid1 { pid } => write!(
                f,
                "running as PID {pid}: isolab-init is the guest's /init and must be PID 1 \
                 (it mounts /proc and reboots the machine)"
            ),
            Self::MkMountPoint { target, source } => {
                write!(f, "cannot create mount point {target}: {source}")
            }
            Self::Mount {
                fstype,
                target,
                source,
            } => {
                write!(f, "cannot mount {fstype} on {target}: {source}")
            }
            Self::ReadCmdline(e) => write!(f, "cannot read /proc/cmdline: {e}"),
            Self::Cmdline(e) => write!(f, "bad kernel command line: {e}"),
            Self::Hostname { name, source } => write!(f, "cannot set hostname {name:?}: {source}"),
            Self::Net {
                step,
                iface,
                source,
            } => write!(f, "cannot {step} on {iface}: {source}"),
            Self::ReadSpec { path, source } => write!(f, "cannot read the guest spec {path}: {source}"),
            Self::Spec(SpecError::Malformed { reason }) => write!(f, "bad guest spec: {reason}"),
            Self::Spec(e) => write!(f, "bad guest spec: {e}"),
            Self::NoRootDevice { device, waited_ms } => write!(
                f,
                "root device {device} did not appear within {waited_ms} ms (no virtio-blk disk attached?)"
            ),
            Self::MountRoot {
                device,
                fstype,
                source,
            } => write!(f, "cannot mount {device} as {fstype} read-only: {source}"),
            Self::ReadyPipe(e) => write!(f, "cannot create the ready pipe: {e}"),
            Self::OutputPipe(e) => write!(f, "cannot create the output pipe: {e}"),
            Self::Spawn { path, source } => write!(f, "cannot start {path}: {source}"),
            Self::Relay { what, source } => write!(f, "cannot {what}: {source}"),
            Self::Wait(e) => write!(f, "cannot wait for the workload: {e}"),
        }
    }
}

impl std::error::Error for InitError {}

impl From<SpecError> for InitError {
    fn from(e: SpecError) -> Self {
        Self::Spec(e)
    }
}

impl From<CmdlineError> for InitError {
    fn from(e: CmdlineError) -> Self {
        Self::Cmdline(e)
    }
}
