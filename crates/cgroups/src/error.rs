//! Errors of the cgroup library: one variant per failing step.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Cannot inspect the cgroup filesystem at {path}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("No cgroup filesystem at {path} (filesystem type {fs_type:#x}); mount cgroup v1 controllers or cgroup2 there")]
    NotCgroupFs { path: PathBuf, fs_type: i64 },
    #[error("Cannot read the mount table {path}")]
    MountInfo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "The cgroup controller '{controller}' is not available on this host; mount or enable it"
    )]
    ControllerMissing { controller: String },
    #[error("Invalid cgroup name '{name}': use a non-empty name without '/'")]
    BadName { name: String },
    #[error("Cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write '{value}' to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Unexpected content in {path}: '{content}'")]
    Parse { path: PathBuf, content: String },
    #[error("Cannot move pid {pid} into {path}")]
    AddPid {
        pid: i32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot kill pid {pid} of cgroup {path}")]
    Kill {
        pid: i32,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cgroup {path} still has processes after killing them")]
    NotEmpty { path: PathBuf },
    #[error("Cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot {step} the device filter of cgroup {path}")]
    DeviceFilter {
        path: PathBuf,
        /// `load`, `open` or `attach`.
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("CPU set {requested} is not a subset of the host's CPUs {available}")]
    CpusetUnavailable {
        requested: String,
        available: String,
    },
}
