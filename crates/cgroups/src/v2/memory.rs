//! v2 memory controller: `memory.max`, `memory.swap.max`, `memory.current`,
//! `memory.peak`, `memory.events` (kernel `Documentation/admin-guide/cgroup-v2.rst`).

use std::path::Path;

use crate::fs::{keyed, read_opt, read_u64_opt, write};
use crate::{CgroupError, Stats};

pub(super) fn apply(dir: &Path, limit_bytes: Option<u64>) -> Result<(), CgroupError> {
    let Some(limit) = limit_bytes else {
        return Ok(());
    };
    write(&dir.join("memory.max"), &limit.to_string())?;
    // v2 limits swap separately; no swap for the instance, like v1's memsw = limit.
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write(&swap, "0")?;
    }
    Ok(())
}

pub(super) fn stats(dir: &Path, stats: &mut Stats) -> Result<(), CgroupError> {
    stats.memory_current_bytes = read_u64_opt(&dir.join("memory.current"))?;
    stats.memory_peak_bytes = read_u64_opt(&dir.join("memory.peak"))?;
    // memory.events is hierarchical and counts oom_kill in this cgroup even
    // when the limit hit was a parent's (oom is counted only where the limit is).
    if let Some(text) = read_opt(&dir.join("memory.events"))? {
        stats.oom_kills = keyed(&text, "oom_kill").unwrap_or(0);
    }
    Ok(())
}
