//! cgroups for the workbench: one parent cgroup (`isolab`) with one child per
//! instance, on cgroup v1 (legacy and hybrid layouts) and cgroup v2 (unified).
//!
//! This crate owns: layout detection by filesystem type ([`layout`]), the
//! [`CgroupManager`] trait with its v1 and v2 backends side by side
//! ([`v1`], [`v2`]), the limit and statistic types ([`Limits`], [`Stats`]) and
//! the parsers for user-facing sizes and CPU amounts ([`units`]).
//! It does not own processes: callers add pids and kill through the manager.
//!
//! Every path is a parameter (the cgroup root, `/proc/self/mountinfo`), so the
//! v1 and v2 logic is unit-tested on fake trees in temporary directories.

pub mod devices;
pub mod error;
mod fs;
pub mod layout;
pub mod units;
pub mod v1;
pub mod v2;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

pub use devices::{DevicePolicy, DeviceRule};
pub use error::CgroupError;
pub use layout::{Hierarchy, Layout};
pub use units::{parse_cpus, parse_size, CpuSet};

/// Name of the workbench's parent cgroup in every hierarchy.
pub const PARENT: &str = "isolab";

/// Removes the workbench's parent cgroup from every cgroup hierarchy mounted
/// here where it is empty. Our own instances remove their parent as they go
/// (in the controllers they use); an OCI runtime creates `/isolab/<id>` in
/// every hierarchy (named ones such as `name=systemd` and a hybrid host's
/// cgroup2 too) and deletes only its leaf. A parent still holding an
/// instance is busy and stays; rmdir of an empty cgroup of our own is not
/// a host setting.
pub fn remove_unused_parents() {
    let Ok(text) = std::fs::read_to_string(layout::DEFAULT_MOUNTINFO) else {
        return;
    };
    for mp in layout::cgroup_mount_points(&text) {
        fs::rmdir_parent_if_unused(&mp.join(PARENT));
    }
}

/// CFS period used for CPU quotas, in microseconds (the kernel default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Resource limits of one instance. `None` leaves the kernel default (unlimited).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory hard limit in bytes; swap is limited to zero where the kernel has the knob.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs (0.5 = half of one CPU per period).
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// CPUs the instance may run on.
    pub cpuset: Option<CpuSet>,
}

/// Statistics of one instance's cgroup; `None` where the kernel lacks the file.
///
/// Units are normalised: bytes, microseconds, counts, for v1 and v2 alike.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub memory_current_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup (`oom_kill` counter).
    pub oom_kills: u64,
    /// CPU time used, user + system.
    pub cpu_usage_usec: Option<u64>,
    /// CFS enforcement periods that elapsed while the cgroup was runnable.
    pub cpu_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub cpu_throttled_periods: Option<u64>,
    /// Total time the cgroup was throttled.
    pub cpu_throttled_usec: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_peak: Option<u64>,
    /// Forks refused because `pids.max` was reached (`pids.events: max`).
    pub pids_limit_hits: Option<u64>,
}

/// One instance's cgroup, whatever the hierarchy. Created with limits already
/// written (see [`create`]), so the workload never runs unconstrained.
pub trait CgroupManager: Debug + Send + Sync {
    /// Moves `pid` (a whole process) into the cgroup, in every hierarchy.
    fn add_pid(&self, pid: i32) -> Result<(), CgroupError>;
    /// Reads the current statistics.
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// Pids of the processes in the cgroup.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Kills every process in the cgroup (SIGKILL) and waits until it is empty.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Removes the instance's directories (kills leftovers first), then the
    /// parent if no other instance uses it. Idempotent.
    fn remove(&self) -> Result<(), CgroupError>;
    /// The instance's directories, one per hierarchy.
    fn paths(&self) -> Vec<PathBuf>;
    /// Files through which a single-threaded process can move *itself* by
    /// writing `0`, without the kernel's global threadgroup lock (whose
    /// write side waits for an RCU grace period, milliseconds on a busy
    /// host). cgroup v1's per-hierarchy `tasks` files allow that; on v2 a
    /// thread cannot leave its domain this way, so it is empty there and
    /// the launcher uses [`CgroupManager::add_pid`].
    fn self_join_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// Creates the cgroup of instance `name` under the workbench parent and writes
/// `limits` before returning. On failure nothing is left behind.
pub fn create(
    hierarchy: &Hierarchy,
    name: &str,
    limits: &Limits,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    create_with_devices(hierarchy, name, limits, DevicePolicy::Unrestricted)
}

/// [`create`] with device access restricted by `devices` (v1: the devices
/// controller; v2: an attached device program), in place before any task
/// joins.
pub fn create_with_devices(
    hierarchy: &Hierarchy,
    name: &str,
    limits: &Limits,
    devices: DevicePolicy,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    validate_name(name)?;
    match hierarchy {
        Hierarchy::V1(mounts) => Ok(Box::new(v1::V1Cgroup::create(
            mounts, name, limits, devices,
        )?)),
        Hierarchy::V2 { root } => Ok(Box::new(v2::V2Cgroup::create(root, name, limits, devices)?)),
    }
}

/// Opens an existing instance cgroup without changing it (to clean up an
/// instance whose launcher died). Returns `None` if no directory exists.
pub fn open_existing(hierarchy: &Hierarchy, name: &str) -> Option<Box<dyn CgroupManager>> {
    validate_name(name).ok()?;
    match hierarchy {
        Hierarchy::V1(mounts) => {
            v1::V1Cgroup::open(mounts, name).map(|c| Box::new(c) as Box<dyn CgroupManager>)
        }
        Hierarchy::V2 { root } => {
            v2::V2Cgroup::open(root, name).map(|c| Box::new(c) as Box<dyn CgroupManager>)
        }
    }
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadName { name: name.into() })
    }
}

/// Path of the instance under the parent in one hierarchy directory.
pub(crate) fn instance_dir(hierarchy_dir: &Path, name: &str) -> PathBuf {
    hierarchy_dir.join(PARENT).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_or_dots_are_refused() {
        for bad in ["", ".", "..", "a/b", "x\0"] {
            assert!(
                matches!(validate_name(bad), Err(CgroupError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_name("i-123-abc").is_ok());
    }
}
