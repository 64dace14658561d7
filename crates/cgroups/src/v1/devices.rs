//! v1 devices controller: `devices.deny` then `devices.allow`, written
//! before any task joins (kernel `Documentation/admin-guide/cgroup-v1/devices.rst`).

use std::path::Path;

use crate::devices::DeviceRule;
use crate::fs::write;
use crate::CgroupError;

pub(super) fn apply(dir: &Path, allowed: &[DeviceRule]) -> Result<(), CgroupError> {
    write(&dir.join("devices.deny"), "a")?;
    for rule in allowed {
        write(&dir.join("devices.allow"), &rule.v1_line())?;
    }
    Ok(())
}
