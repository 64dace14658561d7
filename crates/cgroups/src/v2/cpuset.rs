//! v2 cpuset controller: `cpuset.cpus` (empty means "inherit the parent's
//! effective CPUs"), checked against the root's `cpuset.cpus.effective`.

use std::path::Path;

use crate::fs::{read_opt, write};
use crate::units::CpuSet;
use crate::CgroupError;

pub(super) fn validate(root: &Path, requested: &CpuSet) -> Result<(), CgroupError> {
    let file = root.join("cpuset.cpus.effective");
    let Some(available) = read_opt(&file)? else {
        // The root of a v2 tree may lack the file on old kernels; the kernel
        // then validates the write itself.
        return Ok(());
    };
    let set = CpuSet::parse(available.trim()).map_err(|_| CgroupError::Parse {
        path: file.clone(),
        content: available.trim().to_string(),
    })?;
    if requested.is_subset(&set) {
        Ok(())
    } else {
        Err(CgroupError::CpusetUnavailable {
            requested: requested.to_string(),
            available: available.trim().to_string(),
        })
    }
}

pub(super) fn apply(dir: &Path, cpus: &CpuSet) -> Result<(), CgroupError> {
    write(&dir.join("cpuset.cpus"), &cpus.to_string())
}
