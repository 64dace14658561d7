//! v1 memory controller: `memory.limit_in_bytes`, `memory.memsw.*`,
//! `memory.oom_control` (kernel `Documentation/admin-guide/cgroup-v1/memory.rst`).

use std::path::Path;

use crate::fs::{keyed, read, read_u64_opt, write};
use crate::{CgroupError, Stats};

/// Writes the hard limit, then memory+swap to the same value (no swap for
/// the instance). memsw must stay >= the limit at every step, so the limit
/// goes first (both start unlimited in a fresh cgroup).
pub(super) fn apply(dir: &Path, limit_bytes: Option<u64>) -> Result<(), CgroupError> {
    let Some(limit) = limit_bytes else {
        return Ok(());
    };
    write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        write(&memsw, &limit.to_string())?;
    }
    Ok(())
}

pub(super) fn stats(dir: &Path, stats: &mut Stats) -> Result<(), CgroupError> {
    stats.memory_current_bytes = read_u64_opt(&dir.join("memory.usage_in_bytes"))?;
    stats.memory_peak_bytes = read_u64_opt(&dir.join("memory.max_usage_in_bytes"))?;
    let oom = dir.join("memory.oom_control");
    if oom.exists() {
        let text = read(&oom)?;
        stats.oom_kills = keyed(&text, "oom_kill").unwrap_or(0);
    }
    Ok(())
}
