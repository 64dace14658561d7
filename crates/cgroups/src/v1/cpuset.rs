//! v1 cpuset controller. A new v1 cpuset cgroup starts with empty
//! `cpuset.cpus`/`cpuset.mems` and refuses tasks until both are set, so the
//! parent is initialised from the hierarchy root and the child inherits mems.

use std::path::Path;

use crate::fs::{read, write};
use crate::units::CpuSet;
use crate::CgroupError;

/// Checks the requested set against the CPUs of the hierarchy root.
pub(super) fn validate(mount: &Path, requested: &CpuSet) -> Result<(), CgroupError> {
    let available = read(&mount.join("cpuset.cpus"))?;
    let available_set = CpuSet::parse(available.trim()).map_err(|_| CgroupError::Parse {
        path: mount.join("cpuset.cpus"),
        content: available.trim().to_string(),
    })?;
    if requested.is_subset(&available_set) {
        Ok(())
    } else {
        Err(CgroupError::CpusetUnavailable {
            requested: requested.to_string(),
            available: available.trim().to_string(),
        })
    }
}

/// Copies `cpuset.cpus` and `cpuset.mems` from `from` into `dir` where empty.
pub(super) fn inherit(from: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(file);
        let current = std::fs::read_to_string(&mine).unwrap_or_default();
        if current.trim().is_empty() {
            let value = read(&from.join(file))?;
            write(&mine, value.trim())?;
        }
    }
    Ok(())
}

pub(super) fn apply(dir: &Path, cpus: &CpuSet) -> Result<(), CgroupError> {
    write(&dir.join("cpuset.cpus"), &cpus.to_string())
}
