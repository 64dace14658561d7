//! Errors of the container launcher: one variant per failing parent step, and
//! [`ChildStep`] naming the step that failed inside the new namespaces.

use std::fmt;
use std::path::PathBuf;

/// A step performed by the cloned child (PID 1) or the workload process
/// before `execve`. Sent to the parent as one byte, so the numbering is ABI
/// between the two halves of one binary only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum ChildStep {
    InitSignals = 1,
    SyncWait,
    CgroupJoin,
    UserIds,
    CgroupNamespace,
    MountPropagation,
    MountOverlay,
    EnterRootfs,
    MountProc,
    JoinNetns,
    MountSys,
    MountDev,
    MountDevice,
    MountDevpts,
    MountShm,
    DevSymlinks,
    PivotRoot,
    DetachOldRoot,
    MaskPaths,
    ReadonlyPaths,
    Hostname,
    Loopback,
    DropCapabilities,
    NoNewPrivs,
    Seccomp,
    Fork,
    SetupFds,
    Exec,
}

impl ChildStep {
    const ALL: [ChildStep; 28] = [
        Self::InitSignals,
        Self::SyncWait,
        Self::CgroupJoin,
        Self::UserIds,
        Self::CgroupNamespace,
        Self::MountPropagation,
        Self::MountOverlay,
        Self::EnterRootfs,
        Self::MountProc,
        Self::JoinNetns,
        Self::MountSys,
        Self::MountDev,
        Self::MountDevice,
        Self::MountDevpts,
        Self::MountShm,
        Self::DevSymlinks,
        Self::PivotRoot,
        Self::DetachOldRoot,
        Self::MaskPaths,
        Self::ReadonlyPaths,
        Self::Hostname,
        Self::Loopback,
        Self::DropCapabilities,
        Self::NoNewPrivs,
        Self::Seccomp,
        Self::Fork,
        Self::SetupFds,
        Self::Exec,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| *s as u8 == v)
    }

    /// What the step does, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::InitSignals => "set up init's signal handling",
            Self::SyncWait => "wait for the launcher",
            Self::CgroupJoin => "join its cgroup",
            Self::UserIds => "become root in the user namespace",
            Self::CgroupNamespace => "create the cgroup namespace",
            Self::MountPropagation => "make the mounts private",
            Self::MountOverlay => "mount the overlay root filesystem",
            Self::EnterRootfs => "enter the root filesystem",
            Self::MountProc => "mount /proc",
            Self::JoinNetns => "join its network namespace",
            Self::MountSys => "mount /sys read-only",
            Self::MountDev => "mount /dev",
            Self::MountDevice => "bind a device into /dev",
            Self::MountDevpts => "mount /dev/pts",
            Self::MountShm => "mount /dev/shm",
            Self::DevSymlinks => "create /dev symlinks",
            Self::PivotRoot => "pivot_root into the root filesystem",
            Self::DetachOldRoot => "detach the old root",
            Self::MaskPaths => "mask /proc and /sys paths",
            Self::ReadonlyPaths => "make /proc paths read-only",
            Self::Hostname => "set the hostname",
            Self::Loopback => "bring up lo",
            Self::DropCapabilities => "drop capabilities",
            Self::NoNewPrivs => "set no_new_privs",
            Self::Seccomp => "install the seccomp filter",
            Self::Fork => "fork the workload",
            Self::SetupFds => "set up the workload's file descriptors",
            Self::Exec => "execute the workload",
        }
    }
}

impl fmt::Display for ChildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("Invalid container config: {0}")]
    Config(String),
    #[error("The workload binary {path} cannot be used; build it with `cargo build -p isolab-workload` or pass its path")]
    WorkloadBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The workload binary {path} is not an ELF executable; pass the static `workload` binary (target/x86_64-unknown-linux-gnu/<profile>/workload)")]
    WorkloadNotElf { path: PathBuf },
    #[error("Containers need root (CAP_SYS_ADMIN); run as root")]
    NotRoot,
    #[error("Cannot detect the host's cgroups")]
    Cgroups(#[source] isolab_cgroups::CgroupError),
    #[error("Cannot create the cgroup of instance {id}")]
    CgroupCreate {
        id: String,
        #[source]
        source: isolab_cgroups::CgroupError,
    },
    #[error("Cannot build the root filesystem image in {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot prepare the instance directory {path}")]
    InstanceDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot prepare the security profile")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    #[error("Cannot create the container's network namespace")]
    NetNamespace(#[source] nix::Error),
    #[error("Cannot create the {what} channel to the container")]
    Channel {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot clone the container process")]
    Clone(#[source] nix::Error),
    #[error("Cannot write the id map of pid {pid} ({file})")]
    IdMap {
        pid: i32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Kept for API compatibility: containers are no longer moved by pid
    /// (v1: the child joins itself, `ChildStep::CgroupJoin`; v2: cloned in).
    #[error("Cannot move pid {pid} into its cgroup")]
    CgroupJoin {
        pid: i32,
        #[source]
        source: isolab_cgroups::CgroupError,
    },
    #[error("The network hook failed to attach the container's network namespace")]
    NetworkHook {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Cannot talk to the container's init over the sync socket")]
    Sync(#[source] nix::Error),
    #[error("The container failed to {step}")]
    Child {
        step: ChildStep,
        #[source]
        source: nix::Error,
    },
    #[error("The container's init died during setup ({status})")]
    ChildDied { status: String },
    #[error("Cannot wait for the container's init (pid {pid})")]
    Wait {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot signal the container's init (pid {pid})")]
    Signal {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot read the statistics of instance {id}")]
    Stats {
        id: String,
        #[source]
        source: isolab_cgroups::CgroupError,
    },
    #[error("Cannot clean up instance {id}")]
    Cleanup {
        id: String,
        #[source]
        source: isolab_cgroups::CgroupError,
    },
}

impl ContainerError {
    /// Whether the caller asked for something that cannot work (nothing
    /// was changed on the host): a CLI maps this to exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::WorkloadBinary { .. } | Self::WorkloadNotElf { .. }
        )
    }

    /// Whether the host lacks what containers need (root, cgroups).
    pub fn is_host(&self) -> bool {
        matches!(self, Self::NotRoot | Self::Cgroups(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_round_trips_through_its_byte() {
        for s in ChildStep::ALL {
            assert_eq!(ChildStep::from_u8(s as u8), Some(s));
        }
        assert_eq!(ChildStep::from_u8(0), None);
        assert_eq!(ChildStep::from_u8(200), None);
    }

    #[test]
    fn a_child_error_names_the_step() {
        let e = ContainerError::Child {
            step: ChildStep::Exec,
            source: nix::Error::ENOENT,
        };
        assert_eq!(
            e.to_string(),
            "The container failed to execute the workload"
        );
    }
}
