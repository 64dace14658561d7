//! v1 devices controller: `devices.deny` then `devices.allow`, written
//! before any task joins (kernel `Documentation/admin-guide/cgroup-v1/devices.rst`).

use std::io::Write;
use std::path::Path;

use crate::devices::DeviceRule;
use crate::fs::write;
use crate::CgroupError;

pub(super) fn apply(dir: &Path, allowed: &[DeviceRule]) -> Result<(), CgroupError> {
    write(&dir.join("devices.deny"), "a")?;
    // The kernel takes one rule per write(2): every rule through one open
    // file instead of an open, a write and a close each (per launch).
    let path = dir.join("devices.allow");
    let err = |value: String| {
        let path = path.clone();
        move |source| CgroupError::Write {
            path,
            value,
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(err(String::new()))?;
    for rule in allowed {
        let line = rule.v1_line();
        f.write_all(line.as_bytes()).map_err(err(line))?;
    }
    Ok(())
}
