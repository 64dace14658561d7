//! v1 cpu and cpuacct controllers: CFS bandwidth (`cpu.cfs_quota_us`,
//! `cpu.cfs_period_us`), throttling in `cpu.stat` (ns), usage in
//! `cpuacct.usage` (ns) (kernel `Documentation/scheduler/sched-bwc.rst`).

use std::path::Path;

use crate::fs::{keyed, read_opt, read_u64_opt, write};
use crate::units::quota_us;
use crate::{CgroupError, Stats, CPU_PERIOD_US};

pub(super) fn apply(cpu_dir: &Path, cpus: Option<f64>) -> Result<(), CgroupError> {
    let Some(cpus) = cpus else {
        return Ok(());
    };
    write(
        &cpu_dir.join("cpu.cfs_period_us"),
        &CPU_PERIOD_US.to_string(),
    )?;
    write(
        &cpu_dir.join("cpu.cfs_quota_us"),
        &quota_us(cpus, CPU_PERIOD_US).to_string(),
    )
}

pub(super) fn stats(
    cpu_dir: &Path,
    cpuacct_dir: &Path,
    stats: &mut Stats,
) -> Result<(), CgroupError> {
    if let Some(text) = read_opt(&cpu_dir.join("cpu.stat"))? {
        stats.cpu_periods = keyed(&text, "nr_periods");
        stats.cpu_throttled_periods = keyed(&text, "nr_throttled");
        // v1 reports nanoseconds; normalise to v2's microseconds.
        stats.cpu_throttled_usec = keyed(&text, "throttled_time").map(|ns| ns / 1000);
    }
    stats.cpu_usage_usec = read_u64_opt(&cpuacct_dir.join("cpuacct.usage"))?.map(|ns| ns / 1000);
    Ok(())
}
