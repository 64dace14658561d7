//! v2 cpu controller: `cpu.max` = "$QUOTA $PERIOD"; `cpu.stat` in microseconds.

use std::path::Path;

use crate::fs::{keyed, read_opt, write};
use crate::units::quota_us;
use crate::{CgroupError, Stats, CPU_PERIOD_US};

pub(super) fn apply(dir: &Path, cpus: Option<f64>) -> Result<(), CgroupError> {
    let Some(cpus) = cpus else {
        return Ok(());
    };
    write(
        &dir.join("cpu.max"),
        &format!("{} {}", quota_us(cpus, CPU_PERIOD_US), CPU_PERIOD_US),
    )
}

pub(super) fn stats(dir: &Path, stats: &mut Stats) -> Result<(), CgroupError> {
    if let Some(text) = read_opt(&dir.join("cpu.stat"))? {
        stats.cpu_usage_usec = keyed(&text, "usage_usec");
        stats.cpu_periods = keyed(&text, "nr_periods");
        stats.cpu_throttled_periods = keyed(&text, "nr_throttled");
        stats.cpu_throttled_usec = keyed(&text, "throttled_usec");
    }
    Ok(())
}
