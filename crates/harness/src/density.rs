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

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::memory::{mem_available, meminfo_field};
use crate::modes::{Instance, InstanceSpec, Isolation, Launcher, ModeKind};
use crate::stats::{linear_fit, percentile, LinearFit};
use crate::{interrupted, HarnessError};

/// The parent cgroup the instances share; backed by `isolab-cgroups`.
pub trait BudgetGroup {
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
#[derive(Debug, Clone, PartialEq)]
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
    run_at(launcher, spec, group, cfg, progress, Path::new("/proc"))
}

/// [`run`] with the host's `/proc` root given (its `meminfo` feeds the
/// host-safety rule).
fn run_at(
    launcher: &dyn Launcher,
    spec: &InstanceSpec,
    group: &dyn BudgetGroup,
    cfg: &DensityConfig,
    progress: &mut dyn FnMut(usize, &str),
    proc_root: &Path,
) -> Result<DensityReport, HarnessError> {
    let avail0 = mem_available(proc_root).unwrap_or(0);
    let total = std::fs::read_to_string(proc_root.join("meminfo"))
        .ok()
        .and_then(|t| meminfo_field(&t, "MemTotal:"))
        .unwrap_or(u64::MAX);
    let mut spec = spec.clone();
    // Container instances get child cgroups of the budget parent; the
    // others join a member cgroup there before they exec.
    if launcher.kind().isolation() != Isolation::Container {
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
            Err(e) => break ("start-failure", crate::chain(&e)),
        };
        let launched = inst.launched_at();
        let answered = match inst.wait_ready(cfg.ready_timeout) {
            Ok(at) => match inst.http_target() {
                Some(t) => {
                    crate::net::first_response(&t.target, launched, launched + cfg.ready_timeout)
                }
                None => Ok(at),
            },
            Err(e) => Err(e),
        };
        let at = match answered {
            Ok(at) => at,
            Err(e) => {
                let _ = inst.stop();
                break ("start-failure", crate::chain(&e));
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

/// The budget as a memory limit on the workbench's parent cgroup
/// (`isolab`), under which every instance cgroup lives: container instances
/// get their own child cgroups there; process and microVM instances join a
/// `density-<mode>` child before they exec. The member child keeps the
/// parent alive while instances come and go. The limit is removed again,
/// and the member deleted, when this is dropped.
#[derive(Debug)]
pub struct ParentBudget {
    /// The memory-controller directory of the parent.
    memory_dir: PathBuf,
    v2: bool,
    /// `density-<mode>` cgroup for modes without their own cgroup.
    members: Box<dyn isolab_cgroups::CgroupManager>,
}

impl ParentBudget {
    /// Create the member cgroup and set the parent's memory limit.
    pub fn create(mode: ModeKind, budget: u64) -> Result<Self, HarnessError> {
        use isolab_cgroups::{Hierarchy, Limits, PARENT};
        let hier = Hierarchy::detect_host()?;
        let name = format!("density-{}-{}", mode.name(), std::process::id());
        let members = isolab_cgroups::create(&hier, &name, &Limits::default())?;
        let (memory_dir, v2) = match &hier {
            Hierarchy::V1(m) => (m.get("memory")?.join(PARENT), false),
            Hierarchy::V2 { root } => (root.join(PARENT), true),
        };
        ParentBudget::with_parts(memory_dir, v2, members, budget)
    }

    /// Set `budget` as the limit of the parent at `memory_dir` (a v1
    /// memory-controller directory, or a v2 cgroup), with `members` created.
    pub fn with_parts(
        memory_dir: PathBuf,
        v2: bool,
        members: Box<dyn isolab_cgroups::CgroupManager>,
        budget: u64,
    ) -> Result<Self, HarnessError> {
        let b = ParentBudget {
            memory_dir,
            v2,
            members,
        };
        let file = b.file(budget_file(v2));
        // On failure `b` drops: the member cgroup goes, no limit was set.
        std::fs::write(&file, budget.to_string())
            .map_err(|e| HarnessError::io(format!("set {}", file.display()), e))?;
        Ok(b)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.memory_dir.join(name)
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(name)).ok()
    }
}

fn budget_file(v2: bool) -> &'static str {
    if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    }
}

impl BudgetGroup for ParentBudget {
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

    fn procs_files(&self) -> Vec<PathBuf> {
        self.members
            .paths()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }
}

impl Drop for ParentBudget {
    fn drop(&mut self) {
        let unlimited = if self.v2 { "max" } else { "-1" };
        let _ = std::fs::write(self.file(budget_file(self.v2)), unlimited);
        let _ = self.members.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::fake::{FakeLauncher, FakeRun};
    use crate::Workload;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A budget group whose usage is `per` bytes per live instance.
    struct FakeGroup {
        live: Arc<AtomicUsize>,
        per: Option<u64>,
        oom: AtomicU64,
    }

    impl BudgetGroup for FakeGroup {
        fn usage(&self) -> Option<u64> {
            self.per
                .map(|p| p * self.live.load(Ordering::SeqCst) as u64)
        }
        fn oom_kills(&self) -> u64 {
            self.oom.load(Ordering::SeqCst)
        }
        fn procs_files(&self) -> Vec<PathBuf> {
            vec![PathBuf::from("/fake/density/cgroup.procs")]
        }
    }

    fn group(l: &FakeLauncher, per_mib: Option<u64>) -> FakeGroup {
        FakeGroup {
            live: Arc::clone(&l.live),
            per: per_mib.map(|m| m << 20),
            oom: AtomicU64::new(0),
        }
    }

    fn cfg(budget_mib: u64, max: usize) -> DensityConfig {
        DensityConfig {
            budget_bytes: budget_mib << 20,
            max_instances: max,
            ready_timeout: Duration::from_secs(1),
        }
    }

    /// A `/proc` with a roomy meminfo (or a nearly full one).
    fn proc_tree(avail_kb: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("meminfo"),
            format!("MemTotal: 1000000 kB\nMemAvailable: {avail_kb} kB\n"),
        )
        .unwrap();
        d
    }

    fn density(
        l: &FakeLauncher,
        g: &dyn BudgetGroup,
        c: &DensityConfig,
        avail_kb: u64,
    ) -> DensityReport {
        let p = proc_tree(avail_kb);
        run_at(
            l,
            &InstanceSpec::measured(Workload::Noop),
            g,
            c,
            &mut |_, _| {},
            p.path(),
        )
        .unwrap()
    }

    #[test]
    fn the_budget_stops_before_one_more_would_not_fit() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(5)]);
        let g = group(&l, Some(10));
        let r = density(&l, &g, &cfg(35, 100), 900_000);
        assert_eq!(
            (r.stop_rule.as_str(), r.count),
            ("budget", 3),
            "{}",
            r.stop_detail
        );
        assert_eq!(r.points.last().unwrap().memory_bytes, 30 << 20);
        let fit = r.memory_fit.unwrap();
        assert!((fit.slope - (10u64 << 20) as f64).abs() < 1.0, "{fit:?}");
        assert_eq!(l.live.load(Ordering::SeqCst), 0, "all torn down");
        assert!(
            l.launched.borrow()[0].join_cgroups.is_empty(),
            "containers get their own child cgroups"
        );
    }

    #[test]
    fn processes_join_the_budget_cgroup_and_the_cap_stops_them() {
        let l = FakeLauncher::new(ModeKind::Process, vec![FakeRun::ready(5)]);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1024, 4), 900_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("max-instances", 4));
        assert_eq!(
            l.launched.borrow()[0].join_cgroups,
            [PathBuf::from("/fake/density/cgroup.procs")]
        );
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_start_stops_the_run_and_names_the_error() {
        let mut script = vec![FakeRun::ready(5); 3];
        script.push(FakeRun {
            launch_error: Some("clone: EAGAIN".into()),
            ..FakeRun::default()
        });
        let l = FakeLauncher::new(ModeKind::Container, script);
        let g = group(&l, Some(1));
        let r = density(&l, &g, &cfg(1024, 100), 900_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("start-failure", 3));
        assert_eq!(r.stop_detail, "clone: EAGAIN");
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_oom_kill_in_the_group_stops_the_run() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(5)]);
        let g = Arc::new(group(&l, Some(1)));
        let fired = Arc::new(AtomicBool::new(false));
        let g2 = Arc::clone(&g);
        let mut l = l;
        let launches = AtomicUsize::new(0);
        let (f2, launches) = (Arc::clone(&fired), Arc::new(launches));
        let n2 = Arc::clone(&launches);
        l.on_launch = Some(Box::new(move || {
            if n2.fetch_add(1, Ordering::SeqCst) == 1 {
                g2.oom.store(1, Ordering::SeqCst);
                f2.store(true, Ordering::SeqCst);
            }
        }));
        let r = density(&l, g.as_ref(), &cfg(1024, 100), 900_000);
        assert!(fired.load(Ordering::SeqCst));
        assert_eq!((r.stop_rule.as_str(), r.count), ("oom-kill", 2));
    }

    #[test]
    fn a_degrading_startup_stops_the_run() {
        let mut script = vec![FakeRun::ready(10); 14];
        script.push(FakeRun::ready(100));
        let l = FakeLauncher::new(ModeKind::Container, script);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1024, 100), 900_000);
        assert_eq!(
            (r.stop_rule.as_str(), r.count),
            ("startup-p99-degradation", 15)
        );
        assert_eq!(r.points[14].ready_ms, 100.0);
    }

    #[test]
    fn a_host_low_on_memory_stops_the_run_at_once() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(5)]);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1024, 100), 50_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("host-safety", 1));
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn degradation_rule() {
        let mut v = vec![10.0; 15];
        assert!(!degraded(&v));
        v.push(100.0);
        assert!(degraded(&v));
        assert!(!degraded(&v[..10]));
    }

    /// A [`CgroupManager`](isolab_cgroups::CgroupManager) test double: its
    /// directories are paths in a temp dir; removal is recorded.
    #[derive(Debug)]
    struct FakeCgroup {
        dirs: Vec<PathBuf>,
        removed: Arc<AtomicBool>,
    }

    impl isolab_cgroups::CgroupManager for FakeCgroup {
        fn add_pid(&self, _: i32) -> Result<(), isolab_cgroups::CgroupError> {
            Ok(())
        }
        fn stats(&self) -> Result<isolab_cgroups::Stats, isolab_cgroups::CgroupError> {
            Ok(isolab_cgroups::Stats::default())
        }
        fn pids(&self) -> Result<Vec<i32>, isolab_cgroups::CgroupError> {
            Ok(vec![])
        }
        fn kill_all(&self) -> Result<(), isolab_cgroups::CgroupError> {
            Ok(())
        }
        fn remove(&self) -> Result<(), isolab_cgroups::CgroupError> {
            self.removed.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn paths(&self) -> Vec<PathBuf> {
            self.dirs.clone()
        }
    }

    fn budget(
        v2: bool,
        files: &[(&str, &str)],
    ) -> (tempfile::TempDir, Arc<AtomicBool>, ParentBudget) {
        let d = tempfile::tempdir().unwrap();
        for (f, text) in files {
            std::fs::write(d.path().join(f), text).unwrap();
        }
        let removed = Arc::new(AtomicBool::new(false));
        let members = Box::new(FakeCgroup {
            dirs: vec![d.path().join("density-process-1")],
            removed: Arc::clone(&removed),
        });
        let b = ParentBudget::with_parts(d.path().to_path_buf(), v2, members, 64 << 20).unwrap();
        (d, removed, b)
    }

    #[test]
    fn the_v1_budget_is_set_read_and_lifted_again() {
        let (d, removed, b) = budget(
            false,
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "12345\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
            ],
        );
        let limit = || std::fs::read_to_string(d.path().join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit(), (64u64 << 20).to_string());
        assert_eq!((b.usage(), b.oom_kills()), (Some(12345), 2));
        assert_eq!(
            b.procs_files(),
            [d.path().join("density-process-1/cgroup.procs")]
        );
        drop(b);
        assert_eq!(limit(), "-1");
        assert!(removed.load(Ordering::SeqCst), "the member cgroup went");
    }

    #[test]
    fn the_v2_budget_uses_the_unified_files() {
        let (d, removed, b) = budget(
            true,
            &[
                ("memory.max", "max\n"),
                ("memory.current", "4096\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ],
        );
        assert_eq!((b.usage(), b.oom_kills()), (Some(4096), 1));
        drop(b);
        assert_eq!(
            std::fs::read_to_string(d.path().join("memory.max")).unwrap(),
            "max"
        );
        assert!(removed.load(Ordering::SeqCst));
    }

    #[test]
    fn a_budget_that_cannot_be_set_leaves_no_member_behind() {
        let removed = Arc::new(AtomicBool::new(false));
        let members = Box::new(FakeCgroup {
            dirs: vec![],
            removed: Arc::clone(&removed),
        });
        let e = ParentBudget::with_parts(PathBuf::from("/nonexistent/memory"), false, members, 1)
            .unwrap_err();
        assert!(e.to_string().contains("memory.limit_in_bytes"), "{e}");
        assert!(removed.load(Ordering::SeqCst));
    }
}
