//! v2 pids controller: `pids.max`, `pids.current`, `pids.peak`, `pids.events`.

use std::path::Path;

use crate::fs::{keyed, read_opt, read_u64_opt, write};
use crate::{CgroupError, Stats};

pub(super) fn apply(dir: &Path, max: Option<u64>) -> Result<(), CgroupError> {
    match max {
        Some(max) => write(&dir.join("pids.max"), &max.to_string()),
        None => Ok(()),
    }
}

pub(super) fn stats(dir: &Path, stats: &mut Stats) -> Result<(), CgroupError> {
    stats.pids_current = read_u64_opt(&dir.join("pids.current"))?;
    stats.pids_peak = read_u64_opt(&dir.join("pids.peak"))?;
    stats.pids_limit_hits = read_opt(&dir.join("pids.events"))?.and_then(|t| keyed(&t, "max"));
    Ok(())
}
