//! Density: how many instances of one mode fit in a fixed memory budget.
//!
//! Instances start one at a time into one parent cgroup whose memory limit
//! is the budget. An instance counts once it answered (HTTP workloads) or
//! signalled ready, i.e. after it touched its working set. The run stops at
//! the first rule that fires, and says which, with its evidence:
//! - `budget`: the parent's usage plus one more instance (the mean so far)
//!   would exceed the budget;
//! - `oom-kill`: the kernel OOM-killed something in the parent cgroup;
//! - `startup-degradation`: sustained, never one sample: the median of the
//!   last [`WINDOW`] startups exceeds [`DEGRADATION_FACTOR`] times the
//!   median of the first [`WINDOW`] (the two windows never overlap);
//! - `start-failure`: an instance failed to start or answer;
//! - `max-instances`: the cap was reached: `--max-instances` when given,
//!   else derived from the budget and the host's memory ([`instance_cap`]);
//! - `host-safety`: host MemAvailable fell below the margin (10% of RAM);
//! - `interrupted`: Ctrl-C.
//!
//! Everything is torn down afterwards, whatever rule fired, by several
//! threads at once so that a thousand instances go in seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::image::ImageWorkload;
use crate::memory::{mem_available, meminfo_field};
use crate::modes::{Instance, InstanceSpec, Isolation, Launcher, ModeKind};
use crate::stats::{linear_fit, percentile, LinearFit};
use crate::{interrupted, HarnessError};

/// Startups in the baseline (the first ones) and in the sliding window
/// (the last ones) of the degradation rule.
pub const WINDOW: usize = 20;
/// How many times the baseline median the window's median must exceed.
pub const DEGRADATION_FACTOR: f64 = 3.0;
/// The most instances a run starts, derived or given (`--max-instances`).
pub const MAX_INSTANCES: usize = 10_000;
/// The least an instance is assumed to cost when the cap is derived from
/// the budget: below any real instance (a process's kernel structures), so
/// the derived cap never binds before the budget does.
pub const MIN_INSTANCE_BYTES: u64 = 256 << 10;
/// Threads that stop instances at the end of a run.
const TEARDOWN_THREADS: usize = 16;

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
    /// This launch's phases (our container), to see which step slows
    /// down as instances accumulate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_phases: Option<isolab_container::LaunchPhases>,
}

/// The startup evidence of the degradation rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StartupTrend {
    /// Median of the first [`WINDOW`] startups, ms.
    pub baseline_ms: f64,
    /// Median of the last [`WINDOW`] startups, ms.
    pub window_ms: f64,
    /// 1-based index of the window's first startup.
    pub window_from: usize,
}

impl StartupTrend {
    /// The trend of `ready` (ms, in launch order); `None` until the window
    /// and the baseline no longer overlap.
    pub fn of(ready: &[f64]) -> Option<Self> {
        if ready.len() < 2 * WINDOW {
            return None;
        }
        let from = ready.len() - WINDOW;
        Some(StartupTrend {
            baseline_ms: median(&ready[..WINDOW]),
            window_ms: median(&ready[from..]),
            window_from: from + 1,
        })
    }

    /// Sustained degradation: the window's median over the factor.
    pub fn degraded(&self) -> bool {
        self.window_ms > DEGRADATION_FACTOR * self.baseline_ms
    }

    /// "median of startups 81-100 19.20 ms vs 5.10 ms (median of the
    /// first 20): 3.76x".
    pub fn describe(&self) -> String {
        format!(
            "median of startups {}-{} {:.2} ms vs {:.2} ms (median of the first {WINDOW}): {:.2}x (stops above {DEGRADATION_FACTOR:.0}x)",
            self.window_from,
            self.window_from + WINDOW - 1,
            self.window_ms,
            self.baseline_ms,
            self.window_ms / self.baseline_ms
        )
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    percentile(&s, 0.5)
}

/// Result of a density run for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DensityReport {
    pub mode: ModeKind,
    pub budget_bytes: u64,
    /// Instances measured (started, answered, running together).
    pub count: usize,
    pub stop_rule: String,
    /// The stop rule's evidence, in words.
    pub stop_detail: String,
    /// The cap in force and where it came from.
    pub max_instances: usize,
    pub cap_basis: String,
    /// The startup trend at the end of the run (with [`2 * WINDOW`]
    /// instances or more), whatever rule stopped it.
    pub startup_trend: Option<StartupTrend>,
    /// budget / memory-fit slope: how many would fit if memory stayed
    /// linear. A projection, not a measurement.
    pub projected_count: Option<u64>,
    /// Wall time of the teardown of all instances, ms.
    pub teardown_ms: f64,
    pub points: Vec<DensityPoint>,
    /// memory = intercept + slope * n.
    pub memory_fit: Option<LinearFit>,
    pub startup_fit: Option<LinearFit>,
}

/// Why `N` instances of a user's image cannot run together in `mode`, if
/// they cannot: the plain process shares the host's network namespace, so
/// a second copy of a program listening on a fixed port fails to bind.
/// Every other mode gives each instance its own network namespace (a
/// container's, a guest's).
pub fn image_unavailable(mode: ModeKind, image: &ImageWorkload) -> Option<String> {
    let port = image
        .ready
        .port()
        .or_else(|| image.run.exposed_ports.iter().map(|p| p.port).min())?;
    (mode.isolation() == Isolation::None).then(|| {
        format!(
            "{} runs in the host's network namespace: copies of {} listening on its fixed port {port} cannot run together",
            mode.name(),
            image.short_name()
        )
    })
}

impl DensityReport {
    /// The report of a mode the density run could not measure, with why.
    pub fn unavailable(mode: ModeKind, cfg: &DensityConfig, reason: String) -> Self {
        // The cap that would have applied, for the same fields as a run.
        let (max_instances, cap_basis) = instance_cap(cfg, Path::new("/proc"));
        DensityReport {
            mode,
            budget_bytes: cfg.budget_bytes,
            count: 0,
            stop_rule: "unavailable".into(),
            stop_detail: reason,
            max_instances,
            cap_basis,
            startup_trend: None,
            projected_count: None,
            teardown_ms: 0.0,
            points: vec![],
            memory_fit: None,
            startup_fit: None,
        }
    }
}

/// Limits of a density run.
#[derive(Debug, Clone, PartialEq)]
pub struct DensityConfig {
    pub budget_bytes: u64,
    /// `--max-instances`; `None`: derived by [`instance_cap`].
    pub max_instances: Option<usize>,
    pub ready_timeout: Duration,
}

/// Host memory the run must leave: 10% of RAM (the host-safety rule).
fn host_margin(mem_total: u64) -> u64 {
    mem_total / 10
}

/// The instance cap of a run, and its basis in words: `--max-instances`
/// when given (at most [`MAX_INSTANCES`]); else what fits of the budget,
/// or of MemAvailable less the host margin if that is smaller, at
/// [`MIN_INSTANCE_BYTES`] per instance, at most [`MAX_INSTANCES`].
pub fn instance_cap(cfg: &DensityConfig, proc_root: &Path) -> (usize, String) {
    if let Some(n) = cfg.max_instances {
        let n = n.clamp(1, MAX_INSTANCES);
        return (n, format!("--max-instances {n}"));
    }
    let meminfo = std::fs::read_to_string(proc_root.join("meminfo")).unwrap_or_default();
    let avail = meminfo_field(&meminfo, "MemAvailable:");
    let total = meminfo_field(&meminfo, "MemTotal:");
    let mib = |b: u64| b as f64 / 1048576.0;
    let (usable, basis) = match (avail, total) {
        (Some(a), Some(t)) if a.saturating_sub(host_margin(t)) < cfg.budget_bytes => {
            let u = a.saturating_sub(host_margin(t));
            (
                u,
                format!(
                    "MemAvailable {:.0} MiB less the 10% host margin {:.0} MiB (below the budget)",
                    mib(a),
                    mib(host_margin(t))
                ),
            )
        }
        _ => (
            cfg.budget_bytes,
            format!("budget {:.0} MiB", mib(cfg.budget_bytes)),
        ),
    };
    let n = ((usable / MIN_INSTANCE_BYTES) as usize).clamp(1, MAX_INSTANCES);
    (
        n,
        format!(
            "derived: {basis} / {} KiB per instance at least, at most {MAX_INSTANCES}",
            MIN_INSTANCE_BYTES >> 10
        ),
    )
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
/// cap and the host-safety rule).
fn run_at(
    launcher: &dyn Launcher,
    spec: &InstanceSpec,
    group: &dyn BudgetGroup,
    cfg: &DensityConfig,
    progress: &mut dyn FnMut(usize, &str),
    proc_root: &Path,
) -> Result<DensityReport, HarnessError> {
    let (cap, cap_basis) = instance_cap(cfg, proc_root);
    let avail0 = mem_available(proc_root).unwrap_or(0);
    let total = std::fs::read_to_string(proc_root.join("meminfo"))
        .ok()
        .and_then(|t| meminfo_field(&t, "MemTotal:"))
        .unwrap_or(u64::MAX);
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut spec = spec.clone();
    // Container instances get child cgroups of the budget parent; the
    // others join a member cgroup there before they exec.
    if launcher.kind().isolation() != Isolation::Container {
        spec.join_cgroups = group.procs_files();
    }
    // An HTTP workload answers on loopback in its own namespace: on the
    // workbench bridge each instance would hold a veth and one of the
    // subnet's 253 leases, which a density run of a thousand exhausts.
    spec.loopback_http = true;
    let mut running: Vec<Box<dyn Instance>> = vec![];
    let mut points = vec![];
    let mut ready_times = vec![];
    let (rule, detail) = loop {
        if interrupted() {
            break ("interrupted", "Ctrl-C".to_string());
        }
        if running.len() >= cap {
            break (
                "max-instances",
                format!("cap of {cap} reached ({cap_basis})"),
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
                        mib(used),
                        mib(per),
                        mib(cfg.budget_bytes)
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
            launch_phases: running.last().and_then(|i| i.launch_phases()),
        });
        progress(running.len(), "");
        if group.oom_kills() > 0 {
            break (
                "oom-kill",
                format!("{} OOM kill(s) in the parent cgroup", group.oom_kills()),
            );
        }
        if let Some(t) = StartupTrend::of(&ready_times).filter(StartupTrend::degraded) {
            break ("startup-degradation", t.describe());
        }
        if avail < host_margin(total) {
            break (
                "host-safety",
                format!(
                    "host MemAvailable {:.0} MiB below the 10% margin {:.0} MiB",
                    mib(avail),
                    mib(host_margin(total))
                ),
            );
        }
    };
    progress(running.len(), "tearing down");
    let count = points.len();
    let t = Instant::now();
    teardown(running);
    let teardown_ms = t.elapsed().as_secs_f64() * 1e3;
    let mem_pts: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.n as f64, p.memory_bytes as f64))
        .collect();
    let st_pts: Vec<(f64, f64)> = points.iter().map(|p| (p.n as f64, p.ready_ms)).collect();
    let memory_fit = linear_fit(&mem_pts);
    Ok(DensityReport {
        mode: launcher.kind(),
        budget_bytes: cfg.budget_bytes,
        count,
        stop_rule: rule.to_string(),
        stop_detail: detail,
        max_instances: cap,
        cap_basis,
        startup_trend: StartupTrend::of(&ready_times),
        projected_count: memory_fit
            .as_ref()
            .and_then(|f| projection(cfg.budget_bytes, f.slope)),
        teardown_ms,
        memory_fit,
        startup_fit: linear_fit(&st_pts),
        points,
    })
}

/// budget / slope, when the slope is a cost (positive).
fn projection(budget: u64, slope: f64) -> Option<u64> {
    (slope.is_finite() && slope > 0.0).then(|| (budget as f64 / slope).floor() as u64)
}

/// Stop every instance, newest first within each of a few threads: stops
/// wait (for a signal to land, a process to be reaped, a cgroup to go), so
/// they overlap instead of queueing one behind the other.
fn teardown(running: Vec<Box<dyn Instance>>) {
    let threads = TEARDOWN_THREADS.min(running.len()).max(1);
    let mut shares: Vec<Vec<Box<dyn Instance>>> = (0..threads).map(|_| vec![]).collect();
    for (i, inst) in running.into_iter().rev().enumerate() {
        shares[i % threads].push(inst);
    }
    std::thread::scope(|s| {
        for share in shares {
            s.spawn(move || {
                for inst in share {
                    let _ = inst.stop();
                }
            });
        }
    });
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
            max_instances: Some(max),
            ready_timeout: Duration::from_secs(1),
        }
    }

    /// A `/proc` with a roomy meminfo (or a nearly full one).
    fn proc_tree(avail_kb: u64) -> tempfile::TempDir {
        host_proc(1_000_000, avail_kb)
    }

    fn host_proc(total_kb: u64, avail_kb: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("meminfo"),
            format!("MemTotal: {total_kb} kB\nMemAvailable: {avail_kb} kB\n"),
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

    /// `n` startups of `ms` each.
    fn startups(n: usize, ms: u64) -> Vec<FakeRun> {
        vec![FakeRun::ready(ms); n]
    }

    #[test]
    fn one_slow_startup_does_not_stop_the_run() {
        // The old rule (p99 of the last 10 vs the first 5) stopped here.
        let mut script = startups(45, 5);
        script.push(FakeRun::ready(100));
        script.extend(startups(14, 5));
        let l = FakeLauncher::new(ModeKind::Container, script);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1024, 60), 900_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("max-instances", 60));
        let t = r.startup_trend.unwrap();
        assert_eq!((t.baseline_ms, t.window_ms, t.window_from), (5.0, 5.0, 41));
    }

    #[test]
    fn sustained_threefold_startups_stop_the_run_with_their_evidence() {
        let mut script = startups(40, 5);
        script.extend(startups(100, 16));
        let l = FakeLauncher::new(ModeKind::Container, script);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1024, 1000), 900_000);
        // With 50 running the window (31-50) is half 5 ms, half 16 ms: a
        // median of 10.5 ms; the 51st tips it to 16 ms > 3 x 5 ms.
        assert_eq!((r.stop_rule.as_str(), r.count), ("startup-degradation", 51));
        assert_eq!(
            r.stop_detail,
            "median of startups 32-51 16.00 ms vs 5.00 ms (median of the first 20): 3.20x (stops above 3x)"
        );
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn startups_below_the_factor_or_too_few_never_stop_it() {
        let mut v = vec![10.0; 39];
        v.extend([1000.0; 1]);
        assert!(StartupTrend::of(&v[..39]).is_none(), "windows overlap");
        assert!(!StartupTrend::of(&v).unwrap().degraded(), "one sample");
        let mut v = vec![10.0; 20];
        v.extend([30.0; 20]);
        assert!(
            !StartupTrend::of(&v).unwrap().degraded(),
            "3x is not over 3x"
        );
        v.extend([31.0; 11]);
        assert!(StartupTrend::of(&v).unwrap().degraded());
    }

    #[test]
    fn the_cap_comes_from_the_budget_unless_given_and_is_bounded() {
        let p = proc_tree(900_000);
        let c = |budget_mib: u64, max| DensityConfig {
            budget_bytes: budget_mib << 20,
            max_instances: max,
            ready_timeout: Duration::from_secs(1),
        };
        let (n, basis) = instance_cap(&c(64, None), p.path());
        assert_eq!(n, 256, "64 MiB / 256 KiB");
        assert!(basis.starts_with("derived: budget 64 MiB"), "{basis}");
        let big = host_proc(1 << 30, 1 << 30);
        assert_eq!(instance_cap(&c(1 << 20, None), big.path()).0, MAX_INSTANCES);
        assert_eq!(instance_cap(&c(64, Some(5)), p.path()).0, 5);
        assert_eq!(
            instance_cap(&c(64, Some(99_999)), p.path()),
            (MAX_INSTANCES, format!("--max-instances {MAX_INSTANCES}"))
        );
        // 1000000 kB RAM, 150000 kB available, 100000 kB margin: 50000 kB
        // usable, 195 instances of 256 KiB.
        let low = proc_tree(150_000);
        let (n, basis) = instance_cap(&c(4096, None), low.path());
        assert_eq!(n, 195, "{basis}");
        assert!(basis.contains("host margin"), "{basis}");
    }

    #[test]
    fn the_report_projects_from_the_slope_and_says_so_apart() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(5)]);
        let g = group(&l, Some(3));
        let r = density(&l, &g, &cfg(100, 10), 900_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("max-instances", 10));
        assert_eq!(r.projected_count, Some(33), "100 MiB / 3 MiB");
        assert_eq!(r.cap_basis, "--max-instances 10");
    }

    #[test]
    fn a_host_low_on_memory_stops_the_run_at_once() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(5)]);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1024, 100), 50_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("host-safety", 1));
        assert_eq!(
            r.stop_detail,
            "host MemAvailable 49 MiB below the 10% margin 98 MiB"
        );
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_thousand_instances_are_all_torn_down() {
        let l = FakeLauncher::new(ModeKind::Process, vec![FakeRun::ready(1)]);
        let g = group(&l, None);
        let r = density(&l, &g, &cfg(1 << 20, 1000), 900_000);
        assert_eq!((r.stop_rule.as_str(), r.count), ("max-instances", 1000));
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
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

    #[test]
    fn copies_of_an_image_on_a_fixed_port_cannot_share_the_host_network() {
        let img = crate::image::ImageWorkload::for_tests("http:80/");
        let why = image_unavailable(ModeKind::Process, &img).unwrap();
        assert!(why.contains("fixed port 80"), "{why}");
        assert_eq!(image_unavailable(ModeKind::Container, &img), None);
        assert_eq!(image_unavailable(ModeKind::Microvm, &img), None);
        let exits = crate::image::ImageWorkload::for_tests("exit");
        assert_eq!(image_unavailable(ModeKind::Process, &exits), None);
        let cfg = DensityConfig {
            budget_bytes: 1 << 30,
            max_instances: None,
            ready_timeout: Duration::from_secs(1),
        };
        let d = DensityReport::unavailable(ModeKind::Process, &cfg, why);
        assert_eq!((d.count, d.stop_rule.as_str()), (0, "unavailable"));
    }
}
