//! Density: how many instances of one mode fit in a fixed memory budget.
//!
//! Instances start one at a time into one parent cgroup whose memory limit
//! is the budget. An instance counts once it answered (HTTP workloads) or
//! signalled ready, i.e. after it touched its working set. The run stops at
//! the first rule that fires, and says which:
//! - `budget`: the parent's usage plus one more instance (the mean so far)
//!   would exceed the budget;
//! - `oom-kill`: the kernel OOM-killed something in the parent cgroup;
//! - `startup-p99-degradation`: the p99 of the last 10 startups exceeds 3x
//!   the median of the first 5;
//! - `start-failure`: an instance failed to start or answer;
//! - `max-instances`: the safety cap was reached;
//! - `host-safety`: host MemAvailable fell below 10% of RAM;
//! - `interrupted`: Ctrl-C.
//!
//! Everything is torn down afterwards, whatever rule fired.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::memory::{mem_available, meminfo_field};
use crate::modes::{Instance, InstanceSpec, Launcher, ModeKind};
use crate::probe::first_response;
use crate::stats::{linear_fit, percentile, LinearFit};
use crate::{interrupted, HarnessError};

/// The parent cgroup the instances share; backed by `isolab-cgroups`.
pub trait BudgetGroup {
    /// Name to pass as `InstanceSpec::parent_cgroup`.
    fn name(&self) -> String;
    /// Memory charged to the whole group now, bytes.
    fn usage(&self) -> Option<u64>;
    /// OOM kills counted in the group so far.
    fn oom_kills(&self) -> u64;
    /// `cgroup.procs` files that instances without a cgroup of their own join.
    fn procs_files(&self) -> Vec<std::path::PathBuf>;
}

/// One point of the density curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DensityPoint {
    /// Instances running, this one included.
    pub n: usize,
    /// Memory charged to the parent cgroup (or PSS sum) with `n` running.
    pub memory_bytes: u64,
    /// This instance's launch -> ready (or first response) time.
    pub ready_ms: f64,
    /// Host MemAvailable drop since the start of the run.
    pub mem_available_drop: u64,
}

/// Result of a density run for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DensityReport {
    pub mode: ModeKind,
    pub budget_bytes: u64,
    pub count: usize,
    pub stop_rule: String,
    pub stop_detail: String,
    pub points: Vec<DensityPoint>,
    /// memory = intercept + slope * n.
    pub memory_fit: Option<LinearFit>,
    pub startup_fit: Option<LinearFit>,
}

/// Limits of a density run.
#[derive(Debug, Clone)]
pub struct DensityConfig {
    pub budget_bytes: u64,
    pub max_instances: usize,
    pub ready_timeout: Duration,
}

fn degraded(ready: &[f64]) -> bool {
    if ready.len() < 15 {
        return false;
    }
    let mut base: Vec<f64> = ready[..5].to_vec();
    base.sort_by(|a, b| a.total_cmp(b));
    let mut last: Vec<f64> = ready[ready.len() - 10..].to_vec();
    last.sort_by(|a, b| a.total_cmp(b));
    percentile(&last, 0.99) > 3.0 * percentile(&base, 0.5)
}

/// Run the density scenario for one mode.
pub fn run(
    launcher: &dyn Launcher,
    spec: &InstanceSpec,
    group: &dyn BudgetGroup,
    cfg: &DensityConfig,
    progress: &mut dyn FnMut(usize, &str),
) -> Result<DensityReport, HarnessError> {
    let proc_root = Path::new("/proc");
    let avail0 = mem_available(proc_root).unwrap_or(0);
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_field(&t, "MemTotal:"))
        .unwrap_or(u64::MAX);
    let mut spec = spec.clone();
    spec.parent_cgroup = Some(group.name());
    if launcher.kind() != ModeKind::Container {
        spec.join_cgroups = group.procs_files();
    }
    let mut running: Vec<Box<dyn Instance>> = vec![];
    let mut points = vec![];
    let mut ready_times = vec![];
    let (rule, detail) = loop {
        if interrupted() {
            break ("interrupted", "Ctrl-C".to_string());
        }
        if running.len() >= cfg.max_instances {
            break (
                "max-instances",
                format!("safety cap of {} instances", cfg.max_instances),
            );
        }
        if let Some(used) = group.usage() {
            let per = if running.is_empty() {
                0
            } else {
                used / running.len() as u64
            };
            if used + per > cfg.budget_bytes {
                break (
                    "budget",
                    format!(
                        "{:.1} MiB used + {:.1} MiB for one more > {:.0} MiB budget",
                        used as f64 / 1048576.0,
                        per as f64 / 1048576.0,
                        cfg.budget_bytes as f64 / 1048576.0
                    ),
                );
            }
        }
        let mut inst = match launcher.launch(&spec) {
            Ok(i) => i,
            Err(e) => break ("start-failure", e.to_string()),
        };
        let launched = inst.launched_at();
        let answered = match inst.wait_ready(cfg.ready_timeout) {
            Ok(at) => match inst.http_target() {
                Some(t) if crate::compare::serves_http(&spec.workload) => {
                    first_response(&t, launched + cfg.ready_timeout)
                }
                _ => Ok(at),
            },
            Err(e) => Err(e),
        };
        let at = match answered {
            Ok(at) => at,
            Err(e) => {
                let _ = inst.stop();
                break ("start-failure", e.to_string());
            }
        };
        running.push(inst);
        let ms = (at - launched).as_secs_f64() * 1e3;
        ready_times.push(ms);
        let memory_bytes = group
            .usage()
            .unwrap_or_else(|| running.iter().map(|i| i.memory().pss).sum());
        let avail = mem_available(proc_root).unwrap_or(avail0);
        points.push(DensityPoint {
            n: running.len(),
            memory_bytes,
            ready_ms: ms,
            mem_available_drop: avail0.saturating_sub(avail),
        });
        progress(running.len(), "");
        if group.oom_kills() > 0 {
            break (
                "oom-kill",
                format!("{} OOM kill(s) in the parent cgroup", group.oom_kills()),
            );
        }
        if degraded(&ready_times) {
            break (
                "startup-p99-degradation",
                "p99 of the last 10 startups > 3x the median of the first 5".into(),
            );
        }
        if avail < total / 10 {
            break ("host-safety", "host MemAvailable below 10% of RAM".into());
        }
    };
    progress(running.len(), "tearing down");
    let count = points.len();
    for inst in running.drain(..).rev() {
        let _ = inst.stop();
    }
    let mem_pts: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.n as f64, p.memory_bytes as f64))
        .collect();
    let st_pts: Vec<(f64, f64)> = points.iter().map(|p| (p.n as f64, p.ready_ms)).collect();
    Ok(DensityReport {
        mode: launcher.kind(),
        budget_bytes: cfg.budget_bytes,
        count,
        stop_rule: rule.to_string(),
        stop_detail: detail,
        memory_fit: linear_fit(&mem_pts),
        startup_fit: linear_fit(&st_pts),
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degradation_rule() {
        let mut v = vec![10.0; 15];
        assert!(!degraded(&v));
        v.push(100.0);
        assert!(degraded(&v));
        assert!(!degraded(&v[..10]));
    }
}

/// The budget as a memory limit on the workbench's parent cgroup
/// (`isolab`), under which every instance cgroup lives: container instances
/// get their own child cgroups there; process and microVM instances are moved
/// into a `density-<mode>` child right after they are spawned. A holder child
/// keeps the parent alive while instances come and go. The limit is removed
/// again, and the children deleted, when this is dropped.
#[derive(Debug)]
pub struct ParentBudget {
    /// The memory-controller directory of the parent.
    memory_dir: std::path::PathBuf,
    v2: bool,
    /// `density-<mode>` cgroup for modes without their own cgroup.
    pub members: Box<dyn isolab_cgroups::CgroupManager>,
}

impl ParentBudget {
    /// Create the member cgroup and set the parent's memory limit.
    pub fn create(mode: ModeKind, budget: u64) -> Result<Self, HarnessError> {
        use isolab_cgroups::{Hierarchy, Limits, PARENT};
        let err =
            |e: isolab_cgroups::CgroupError| HarnessError::Launch(format!("density cgroup: {e}"));
        let hier = Hierarchy::detect_host().map_err(err)?;
        let name = format!("density-{}-{}", mode.name(), std::process::id());
        let members = isolab_cgroups::create(&hier, &name, &Limits::default()).map_err(err)?;
        let (memory_dir, v2, file, value) = match &hier {
            Hierarchy::V1(m) => (
                m.get("memory").map_err(err)?.join(PARENT),
                false,
                "memory.limit_in_bytes",
                budget.to_string(),
            ),
            Hierarchy::V2 { root } => (root.join(PARENT), true, "memory.max", budget.to_string()),
        };
        std::fs::write(memory_dir.join(file), value)
            .map_err(|e| HarnessError::Io(format!("set {}/{file}", memory_dir.display()), e))?;
        Ok(ParentBudget {
            memory_dir,
            v2,
            members,
        })
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.memory_dir.join(file)).ok()
    }
}

impl BudgetGroup for ParentBudget {
    fn name(&self) -> String {
        isolab_cgroups::PARENT.into()
    }

    fn usage(&self) -> Option<u64> {
        let f = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        self.read(f).and_then(|s| s.trim().parse().ok())
    }

    fn oom_kills(&self) -> u64 {
        let f = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read(f)
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    fn procs_files(&self) -> Vec<std::path::PathBuf> {
        self.members
            .paths()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }
}

impl Drop for ParentBudget {
    fn drop(&mut self) {
        let (file, value) = if self.v2 {
            ("memory.max", "max")
        } else {
            ("memory.limit_in_bytes", "-1")
        };
        let _ = std::fs::write(self.memory_dir.join(file), value);
        let _ = self.members.remove();
    }
}
