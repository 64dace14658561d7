//! The noisy-neighbour scenario for one mode: a tenant `api` instance
//! serves a fixed request run alone, then again while a neighbour instance
//! of the same mode runs a `cpu`, `memory` or `fork` storm; the tenant's
//! latency and throughput alone and with the neighbour, the interference
//! ratio, and what stopped the neighbour.
//!
//! Sequence per mode: launch the tenant (the mode's normal limits), wait
//! for ready and its first HTTP response, send a short warm-up run
//! (discarded); then for each neighbour kind: the tenant alone (sequential,
//! then concurrent, repeated and pooled per pattern for
//! [`NeighbourConfig::window_ms`]), the neighbour launched (same mode, same
//! limits) and ready, its cgroup watched ([`super::watch`]), the tenant
//! again (the same rounds, until the neighbour has run for the window and
//! the limit matching its kind acted), the neighbour stopped and its fate read;
//! finally the tenant is stopped. The alone run is repeated before every
//! neighbour so each ratio compares runs taken seconds, not a whole
//! scenario, apart.
//!
//! The plain process has no limits, which is the point; its memory and
//! fork neighbours are capped by the harness: the hog at a fraction
//! ([`PROCESS_HOG_FRACTION`]) of MemAvailable, the fork loop at the pids
//! limit as a process-count ceiling, so the host is never at risk.

use std::time::{Duration, Instant};

use isolab_isolation::interference::{interference, Interference, LoadPattern, LoadRun};
use isolab_isolation::neighbour::{
    NeighbourExit, NeighbourFate, NeighbourKind, NeighbourObservation,
};
use isolab_workload::args::{FORK_HARD_CAP, HOG_HARD_CAP_MIB};
use serde::{Deserialize, Serialize};

use super::load::TenantLoad;
use super::watch::CgroupWatch;
use crate::image::ImageWorkload;
use crate::modes::{Instance, InstanceOutcome, InstanceSpec, Isolation, Launcher, ModeKind};
use crate::{HarnessError, Workload};

/// The plain-process hog stops at MemAvailable / this.
pub const PROCESS_HOG_FRACTION: u64 = 8;
/// A CPU neighbour spins at most this long (it is stopped long before).
pub const CPU_NEIGHBOUR_MAX_MS: u64 = 120_000;
/// Requests of the discarded warm-up run.
pub const WARMUP_REQUESTS: usize = 20;

/// The limits every instance of the scenario gets where its mode has them
/// (containers: a cgroup; microVMs: vCPUs and guest RAM); equal across
/// modes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs (container CPU bandwidth; a microVM gets this many vCPUs,
    /// rounded up).
    pub cpus: f64,
    /// Memory limit or guest RAM, bytes.
    pub memory_bytes: u64,
    /// pids.max (containers); the plain process's fork ceiling.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpus: 1.0,
            memory_bytes: 256 << 20,
            pids: 128,
        }
    }
}

impl Limits {
    /// Checks the limits a user gave; the error is one line saying which
    /// is wrong and what is accepted.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if !(self.cpus.is_finite() && self.cpus >= 0.01 && self.cpus <= 64.0) {
            return bad(format!(
                "neighbour CPU limit {} is outside 0.01..=64 CPUs",
                self.cpus
            ));
        }
        if self.memory_bytes < (32 << 20) {
            return bad(format!(
                "neighbour memory limit {} bytes is below 32 MiB (the tenant needs room to serve)",
                self.memory_bytes
            ));
        }
        if self.memory_bytes > (HOG_HARD_CAP_MIB << 20) {
            return bad(format!(
                "neighbour memory limit {} MiB is above the hog's hard safety cap of {HOG_HARD_CAP_MIB} MiB",
                self.memory_bytes >> 20
            ));
        }
        if !(8..=FORK_HARD_CAP).contains(&self.pids) {
            return bad(format!(
                "neighbour pids limit {} is outside 8..={FORK_HARD_CAP}",
                self.pids
            ));
        }
        Ok(())
    }
}

/// What the scenario runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighbourConfig {
    pub kinds: Vec<NeighbourKind>,
    pub limits: Limits,
    /// Requests of the sequential run (one connection).
    pub sequential_requests: usize,
    /// Requests of the concurrent run, split over `connections`.
    pub concurrent_requests: usize,
    pub connections: u32,
    /// The tenant's runs beside the neighbour are repeated (and pooled per
    /// pattern) until the neighbour has run at least this long, so a storm
    /// has time to meet its limit (a 100 ms CFS period, a hog's growth)
    /// before it is stopped. Where its cgroup is watched, the rounds go on
    /// past the window until the limit matching its kind has acted, up to
    /// `window_max_ms`.
    pub window_ms: u64,
    pub window_max_ms: u64,
    #[serde(skip)]
    pub ready_timeout: Duration,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        NeighbourConfig {
            kinds: NeighbourKind::ALL.to_vec(),
            limits: Limits::default(),
            sequential_requests: 400,
            concurrent_requests: 400,
            connections: 4,
            window_ms: 1000,
            window_max_ms: 10_000,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl NeighbourConfig {
    /// The load patterns of every run, in order.
    pub fn patterns(&self) -> Vec<(LoadPattern, usize)> {
        let mut p = vec![];
        if self.sequential_requests > 0 {
            p.push((LoadPattern::Sequential, self.sequential_requests));
        }
        if self.concurrent_requests > 0 && self.connections > 0 {
            p.push((
                LoadPattern::Concurrent {
                    connections: self.connections,
                },
                self.concurrent_requests,
            ));
        }
        p
    }
}

/// Facts of this host the harness's safety caps are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    pub mem_available_bytes: u64,
    pub cpus: u32,
}

impl HostFacts {
    /// This host's, now.
    pub fn capture() -> Self {
        HostFacts {
            mem_available_bytes: crate::memory::mem_available(std::path::Path::new("/proc"))
                .unwrap_or(1 << 30),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        }
    }
}

/// Whether the scenario ran for a mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ScenarioStatus {
    Measured,
    Unavailable { reason: String },
    Failed { error: String },
}

/// One neighbour's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighbourResult {
    pub kind: NeighbourKind,
    /// The neighbour's workload command line (its caps visible).
    pub command: String,
    /// One entry per load pattern: alone vs with the neighbour.
    pub interference: Vec<Interference>,
    /// Tenant requests that failed while the neighbour ran (all patterns).
    pub tenant_errors: u64,
    /// Tenant requests that failed alone, before it (all patterns).
    pub tenant_errors_alone: u64,
    /// Rounds of the tenant's runs beside the neighbour (pooled; the alone
    /// side runs rounds for the same window first).
    pub rounds_with: usize,
    pub observation: NeighbourObservation,
    pub fate: NeighbourFate,
    /// The neighbour failed to launch or the comparison failed: why.
    pub error: Option<String>,
}

/// The scenario's result for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeNeighbours {
    pub mode: ModeKind,
    pub peer: bool,
    pub status: ScenarioStatus,
    /// Limits the instances got (`None`: the plain process, none).
    pub limits: Option<Limits>,
    pub neighbours: Vec<NeighbourResult>,
}

/// The tenant's spec: `api` (or a user's image) with the mode's limits.
pub fn tenant_spec(isolation: Isolation, limits: &Limits, image: Image<'_>) -> InstanceSpec {
    let spec = InstanceSpec {
        image: image.cloned(),
        ..InstanceSpec::new(Workload::Api, &[])
    };
    with_limits(spec, isolation, limits)
}

fn with_limits(mut spec: InstanceSpec, isolation: Isolation, l: &Limits) -> InstanceSpec {
    match isolation {
        Isolation::None => {}
        Isolation::Container => {
            spec.cpus = Some(l.cpus);
            spec.memory_bytes = Some(l.memory_bytes);
            spec.pids = Some(l.pids);
        }
        Isolation::Vm => {
            spec.vcpus = Some(l.cpus.ceil().clamp(1.0, 255.0) as u8);
            spec.memory_bytes = Some(l.memory_bytes);
            // The monitor in a cgroup of its own with the container's CPU
            // and pids limits (no memory limit: guest RAM is the VM's).
            spec.cpus = Some(l.cpus);
            spec.pids = Some(l.pids);
        }
    }
    spec
}

/// The neighbour's spec: the storm of `kind` with the mode's limits, and
/// the harness's caps where the mode has no limit of its own.
pub fn neighbour_spec(
    kind: NeighbourKind,
    isolation: Isolation,
    limits: &Limits,
    host: &HostFacts,
) -> InstanceSpec {
    let s = |v: u64| v.to_string();
    let limit_mib = limits.memory_bytes >> 20;
    let spec = match kind {
        NeighbourKind::Cpu => InstanceSpec::new(
            Workload::Worker,
            &[
                "--duration-ms",
                &s(CPU_NEIGHBOUR_MAX_MS),
                "--threads",
                &s(u64::from(host.cpus.max(1))),
            ],
        ),
        NeighbourKind::Memory => {
            let cap = match isolation {
                // No limit: the cap is the stop.
                Isolation::None => (host.mem_available_bytes / PROCESS_HOG_FRACTION) >> 20,
                // The limit stops it; the cap (twice the limit) is the net.
                _ => limit_mib * 2,
            };
            InstanceSpec::new(
                Workload::Hog,
                &[
                    "--step-mib",
                    "4",
                    "--max-mib",
                    &s(cap.clamp(4, HOG_HARD_CAP_MIB)),
                ],
            )
        }
        NeighbourKind::Fork => {
            let max = match isolation {
                Isolation::None => limits.pids,
                _ => limits.pids * 4,
            };
            InstanceSpec::new(Workload::Forkloop, &["--max", &s(max.min(FORK_HARD_CAP))])
        }
    };
    let mut spec = with_limits(spec, isolation, limits);
    spec.keep_stderr = false;
    spec
}

/// What was seen about a neighbour: its cgroup as the mode read it at the
/// end, raised by what the watch saw during the run; its exit; whether the
/// harness's cap stopped it.
pub fn observe(
    outcome: &InstanceOutcome,
    watched: Option<NeighbourObservation>,
) -> NeighbourObservation {
    let mut o = watched.unwrap_or_default();
    let max = |a: &mut Option<u64>, b: Option<u64>| {
        if let Some(b) = b {
            *a = Some(a.map_or(b, |a| a.max(b)));
        }
    };
    if let Some(s) = &outcome.cgroup {
        max(&mut o.throttled_periods, s.cpu_throttled_periods);
        max(&mut o.throttled_us, s.cpu_throttled_usec);
        max(&mut o.oom_kills, Some(s.oom_kills));
        max(&mut o.forks_refused, s.pids_limit_hits);
    }
    // The fork loop's own report: a fork refused with EAGAIN is a pids
    // limit acting (its cgroup may be gone before the watch saw the count).
    if outcome.fact("errno").and_then(|v| v.as_str()) == Some("EAGAIN") {
        max(&mut o.forks_refused, Some(1));
    }
    // A VM's guest kernel OOM killer, read from its console.
    if outcome.guest_oom.is_some() {
        o.guest_oom = outcome.guest_oom;
    }
    o.capped_by_harness = outcome.fact("capped").and_then(|v| v.as_bool()) == Some(true);
    o.exit = outcome.status.map(|s| {
        if s > 128 {
            NeighbourExit::Signal(s - 128)
        } else {
            NeighbourExit::Code(s)
        }
    });
    o
}

/// Whether the limit that matches a neighbour's kind has acted on it.
pub fn limit_acted(kind: NeighbourKind, o: &NeighbourObservation) -> bool {
    let n = match kind {
        NeighbourKind::Cpu => o.throttled_periods,
        NeighbourKind::Memory => o.oom_kills,
        NeighbourKind::Fork => o.forks_refused,
    };
    n.is_some_and(|n| n > 0)
}

/// Host processes of a gVisor sandbox once its workload runs: `runsc run`,
/// the gofer, the sandbox (the Sentry) and at least one ptrace stub (the
/// address space of a process inside).
pub const GVISOR_RUNNING_PROCESSES: usize = 4;

/// Waits until the neighbour runs. Every mode but gVisor signals ready when
/// its workload starts; gVisor has no ready byte (`runsc run` has no
/// `--preserve-fds`), and for a workload that serves nothing its ready is
/// the end of `runsc run`, which would wait out the whole storm. A gVisor
/// neighbour counts as running once its sandbox has a stub
/// ([`GVISOR_RUNNING_PROCESSES`] host processes) or has already ended (a
/// storm that met its limit at once; its fate tells).
fn neighbour_started(
    mode: ModeKind,
    n: &mut dyn Instance,
    timeout: Duration,
) -> Result<(), HarnessError> {
    if mode != ModeKind::Gvisor {
        return n.wait_ready(timeout).map(|_| ());
    }
    let deadline = n.launched_at() + timeout;
    loop {
        let pids = n.host_pids();
        let alive = pids.iter().filter(|p| running(**p)).count();
        if alive >= GVISOR_RUNNING_PROCESSES || alive == 0 {
            return Ok(());
        }
        if Instant::now() > deadline || crate::interrupted() {
            return Err(HarnessError::Launch(format!(
                "the gVisor sandbox had {alive} host process(es) after {timeout:?}, not yet a stub"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether every host process of `n` has ended (none listed counts as
/// running: a fake or a mode that lists none).
fn ended(n: &dyn Instance) -> bool {
    let pids = n.host_pids();
    !pids.is_empty() && pids.iter().all(|p| !running(*p))
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// Runs the scenario for the mode of `launcher` with the built-in `api`
/// as the tenant. Never fails as a whole: a mode that cannot run or fails
/// is reported so, with what was measured.
pub fn run_mode(
    launcher: &dyn Launcher,
    cfg: &NeighbourConfig,
    load: &dyn TenantLoad,
    host: &HostFacts,
    progress: &mut dyn FnMut(usize, &str),
) -> ModeNeighbours {
    run_mode_for(launcher, cfg, None, load, host, progress)
}

/// [`run_mode`] with a user's image as the tenant when `image` is given
/// (served and loaded by its HTTP ready rule; the neighbours stay the
/// built-in storms). An image without an HTTP rule, or a mode that cannot
/// run it, is reported unavailable with the reason.
pub fn run_mode_for(
    launcher: &dyn Launcher,
    cfg: &NeighbourConfig,
    image: Image<'_>,
    load: &dyn TenantLoad,
    host: &HostFacts,
    progress: &mut dyn FnMut(usize, &str),
) -> ModeNeighbours {
    let mode = launcher.kind();
    let isolation = mode.isolation();
    let mut report = ModeNeighbours {
        mode,
        peer: mode.is_peer(),
        status: ScenarioStatus::Measured,
        limits: (isolation != Isolation::None).then_some(cfg.limits),
        neighbours: vec![],
    };
    if let Some(reason) = launcher
        .unavailable()
        .or_else(|| image.and_then(|i| super::requests_unavailable(i)))
    {
        report.status = ScenarioStatus::Unavailable { reason };
        return report;
    }
    let tenant = match start_tenant(launcher, cfg, isolation, image, load) {
        Ok(t) => t,
        Err(HarnessError::Unavailable(reason)) => {
            report.status = ScenarioStatus::Unavailable { reason };
            return report;
        }
        Err(e) => {
            report.status = ScenarioStatus::Failed {
                error: crate::chain(&e),
            };
            return report;
        }
    };
    for (i, &kind) in cfg.kinds.iter().enumerate() {
        progress(i, &format!("{kind} neighbour"));
        let t = Tenant {
            inst: tenant.as_ref(),
            image,
        };
        match one_neighbour(launcher, t, kind, cfg, isolation, load, host) {
            Ok(r) => report.neighbours.push(r),
            Err(e) => {
                report.status = ScenarioStatus::Failed {
                    error: format!("{kind} neighbour: {}", crate::chain(&e)),
                };
                break;
            }
        }
        if crate::interrupted() {
            break;
        }
    }
    progress(cfg.kinds.len(), "");
    if let Err(e) = tenant.stop() {
        if matches!(report.status, ScenarioStatus::Measured) {
            report.status = ScenarioStatus::Failed {
                error: format!("stopping the tenant: {}", crate::chain(&e)),
            };
        }
    }
    report
}

/// A user's image, when it is the tenant.
pub type Image<'a> = Option<&'a std::sync::Arc<ImageWorkload>>;

/// The running tenant and what it runs.
struct Tenant<'a> {
    inst: &'a dyn Instance,
    image: Image<'a>,
}

fn start_tenant(
    launcher: &dyn Launcher,
    cfg: &NeighbourConfig,
    isolation: Isolation,
    image: Image<'_>,
    load: &dyn TenantLoad,
) -> Result<Box<dyn Instance>, HarnessError> {
    let mut t = launcher.launch(&tenant_spec(isolation, &cfg.limits, image))?;
    let launched = t.launched_at();
    let warm = (|| {
        t.wait_ready(cfg.ready_timeout)?;
        // An image's ready rule was its first HTTP answer already.
        if let (Some(h), None) = (t.http_target(), image) {
            crate::net::first_response(&h.target, launched, launched + cfg.ready_timeout)?;
        }
        let target = super::tenant_target(t.as_ref(), image.map(|i| &**i));
        load.run(target.as_ref(), LoadPattern::Sequential, WARMUP_REQUESTS)
    })();
    match warm {
        Ok(_) => Ok(t),
        Err(e) => {
            let _ = t.stop();
            Err(e)
        }
    }
}

fn runs(
    tenant: &Tenant<'_>,
    cfg: &NeighbourConfig,
    load: &dyn TenantLoad,
) -> Result<Vec<LoadRun>, HarnessError> {
    let target = super::tenant_target(tenant.inst, tenant.image.map(|i| &**i));
    cfg.patterns()
        .into_iter()
        .map(|(p, n)| load.run(target.as_ref(), p, n))
        .collect()
}

/// Rounds of the runs until `window` has passed (at least one), pooled
/// per pattern.
fn pooled_rounds(
    tenant: &Tenant<'_>,
    cfg: &NeighbourConfig,
    load: &dyn TenantLoad,
    window: Duration,
) -> Result<Vec<LoadRun>, HarnessError> {
    let started = Instant::now();
    let mut rounds = vec![];
    loop {
        rounds.push(runs(tenant, cfg, load)?);
        if started.elapsed() >= window || crate::interrupted() {
            break;
        }
    }
    Ok(pool(&rounds))
}

/// Per pattern, every round's run as one.
fn pool(rounds: &[Vec<LoadRun>]) -> Vec<LoadRun> {
    let patterns = rounds.first().map_or(0, Vec::len);
    (0..patterns)
        .filter_map(|i| {
            let same: Vec<LoadRun> = rounds.iter().map(|r| r[i].clone()).collect();
            LoadRun::pool(&same)
        })
        .collect()
}

fn one_neighbour(
    launcher: &dyn Launcher,
    tenant: Tenant<'_>,
    kind: NeighbourKind,
    cfg: &NeighbourConfig,
    isolation: Isolation,
    load: &dyn TenantLoad,
    host: &HostFacts,
) -> Result<NeighbourResult, HarnessError> {
    // The tenant alone for the same window as beside the neighbour, so both
    // sides pool comparable numbers of rounds from this moment's host.
    let alone = pooled_rounds(&tenant, cfg, load, Duration::from_millis(cfg.window_ms))?;
    let spec = neighbour_spec(kind, isolation, &cfg.limits, host);
    let command = format!("{} {}", spec.workload, spec.args.join(" "));
    let mut result = NeighbourResult {
        kind,
        command,
        interference: vec![],
        tenant_errors: 0,
        tenant_errors_alone: alone.iter().map(|r| r.errors).sum(),
        rounds_with: 0,
        observation: NeighbourObservation::default(),
        fate: NeighbourFate::Unchecked,
        error: None,
    };
    let mut n = match launcher.launch(&spec) {
        Ok(n) => n,
        Err(e) => {
            result.error = Some(format!(
                "the neighbour did not launch: {}",
                crate::chain(&e)
            ));
            return Ok(result);
        }
    };
    if let Err(e) = neighbour_started(launcher.kind(), n.as_mut(), cfg.ready_timeout) {
        let _ = n.stop();
        result.error = Some(format!(
            "the neighbour never became ready: {}",
            crate::chain(&e)
        ));
        return Ok(result);
    }
    let watch = CgroupWatch::start(&n.host_pids());
    let started = Instant::now();
    let window = Duration::from_millis(cfg.window_ms);
    let window_max = Duration::from_millis(cfg.window_max_ms.max(cfg.window_ms));
    let mut rounds = vec![];
    let with = loop {
        match runs(&tenant, cfg, load) {
            Ok(r) => rounds.push(r),
            Err(e) => break Err(e),
        }
        let waited = started.elapsed();
        // Acted, or nothing more can act: the neighbour has ended (a VM's
        // guest OOM ends its workload and the VM, seen only at its end).
        let met = watch.as_ref().is_none_or(|w| limit_acted(kind, &w.now())) || ended(n.as_ref());
        if (waited >= window && met) || waited >= window_max || crate::interrupted() {
            break Ok(());
        }
    };
    let outcome = n.stop();
    let watched = watch.map(CgroupWatch::finish);
    with?;
    // A neighbour whose end cannot be read (a monitor killed before its
    // report) is this neighbour's error, with what its cgroup showed; the
    // tenant's figures stand and the next kind still runs.
    let outcome = outcome.unwrap_or_else(|e| {
        result.error = Some(format!(
            "the neighbour's end could not be read: {}",
            crate::chain(&e)
        ));
        InstanceOutcome::default()
    });
    result.rounds_with = rounds.len();
    let with = pool(&rounds);
    result.tenant_errors = with.iter().map(|r| r.errors).sum();
    result.observation = observe(&outcome, watched);
    result.fate = NeighbourFate::of(kind, &result.observation);
    for (a, w) in alone.iter().zip(&with) {
        match interference(a, w) {
            Ok(i) => result.interference.push(i),
            Err(e) => {
                result.error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use isolab_cgroups::Stats;

    use super::*;
    use crate::modes::fake::{FakeLauncher, FakeRun};
    use crate::modes::HttpTarget;

    /// A tenant whose latency triples while a second instance (the
    /// neighbour) of its fake launcher is live; records every run.
    struct ScriptedLoad {
        live: Arc<AtomicUsize>,
        calls: RefCell<Vec<(LoadPattern, usize, usize)>>,
    }

    impl TenantLoad for ScriptedLoad {
        fn run(
            &self,
            _: Option<&HttpTarget>,
            pattern: LoadPattern,
            requests: usize,
        ) -> Result<LoadRun, HarnessError> {
            let live = self.live.load(Ordering::SeqCst);
            self.calls.borrow_mut().push((pattern, requests, live));
            let base = if live > 1 { 300.0 } else { 100.0 };
            Ok(LoadRun {
                pattern,
                latencies_us: (0..requests)
                    .map(|i| base * (1.0 + (i % 7) as f64 * 0.01))
                    .collect(),
                errors: u64::from(live > 1),
                wall_s: requests as f64 * base * 1e-6,
            })
        }
    }

    fn ended(status: i32, cgroup: Option<Stats>, result: Option<serde_json::Value>) -> FakeRun {
        let mut r = FakeRun::ready(1);
        r.outcome.status = Some(status);
        r.outcome.cgroup = cgroup;
        r.outcome.result = result.and_then(|v| v.as_object().cloned());
        r
    }

    fn small() -> NeighbourConfig {
        NeighbourConfig {
            sequential_requests: 50,
            concurrent_requests: 40,
            connections: 4,
            window_ms: 0,
            ..NeighbourConfig::default()
        }
    }

    const HOST: HostFacts = HostFacts {
        mem_available_bytes: 1 << 30,
        cpus: 2,
    };

    fn scenario(l: &FakeLauncher, cfg: &NeighbourConfig) -> (ModeNeighbours, ScriptedLoad) {
        let load = ScriptedLoad {
            live: Arc::clone(&l.live),
            calls: RefCell::default(),
        };
        let r = run_mode(l, cfg, &load, &HOST, &mut |_, _| {});
        (r, load)
    }

    #[test]
    fn each_neighbour_of_a_container_runs_beside_the_tenant_with_the_same_limits_and_its_fate_is_read(
    ) {
        let l = FakeLauncher::new(
            ModeKind::Container,
            vec![
                FakeRun::ready(5),
                ended(
                    143,
                    Some(Stats {
                        cpu_throttled_periods: Some(7),
                        ..Stats::default()
                    }),
                    None,
                ),
                ended(
                    137,
                    Some(Stats {
                        oom_kills: 1,
                        ..Stats::default()
                    }),
                    None,
                ),
                ended(
                    0,
                    Some(Stats {
                        pids_limit_hits: Some(40),
                        ..Stats::default()
                    }),
                    Some(serde_json::json!({"workload": "forkloop", "capped": false})),
                ),
            ],
        );
        let (r, load) = scenario(&l, &small());
        assert!(
            matches!(r.status, ScenarioStatus::Measured),
            "{:?}",
            r.status
        );
        assert_eq!(
            l.jobs(),
            [
                "api ",
                "worker --duration-ms 120000 --threads 2",
                "hog --step-mib 4 --max-mib 512",
                "forkloop --max 512"
            ]
        );
        for s in l.launched.borrow().iter() {
            assert_eq!(
                (s.cpus, s.memory_bytes, s.pids),
                (Some(1.0), Some(256 << 20), Some(128)),
                "tenant and neighbours get the same limits"
            );
        }
        assert_eq!(l.live.load(Ordering::SeqCst), 0, "every instance ended");
        // Warm-up, then per neighbour: two runs alone, two beside it.
        let calls = load.calls.borrow();
        assert_eq!(calls.len(), 1 + 3 * 4);
        assert_eq!(calls[0], (LoadPattern::Sequential, WARMUP_REQUESTS, 1));
        let conc = LoadPattern::Concurrent { connections: 4 };
        assert_eq!(
            calls[1..5],
            [
                (LoadPattern::Sequential, 50, 1),
                (conc, 40, 1),
                (LoadPattern::Sequential, 50, 2),
                (conc, 40, 2)
            ]
        );
        let fates: Vec<_> = r.neighbours.iter().map(|n| n.fate).collect();
        assert_eq!(
            fates,
            [
                NeighbourFate::Throttled { periods: 7 },
                NeighbourFate::OomKilled { kills: 1 },
                NeighbourFate::ForksRefused { refused: 40 }
            ]
        );
        let mem = &r.neighbours[1];
        assert_eq!(mem.observation.exit, Some(NeighbourExit::Signal(9)));
        assert_eq!((mem.tenant_errors, mem.tenant_errors_alone), (2, 0));
        assert_eq!(mem.interference.len(), 2);
        for i in &mem.interference {
            assert!((i.p99_ratio.ratio - 3.0).abs() < 0.01, "{:?}", i.p99_ratio);
            assert!(i.p99_ratio.slower());
        }
        assert_eq!(r.limits, Some(Limits::default()));
    }

    #[test]
    fn the_plain_process_gets_no_limits_and_its_storms_are_capped_by_the_harness() {
        let capped = serde_json::json!({"workload": "hog", "capped": true});
        let l = FakeLauncher::new(
            ModeKind::Process,
            vec![FakeRun::ready(1), ended(0, None, Some(capped))],
        );
        let cfg = NeighbourConfig {
            kinds: vec![NeighbourKind::Memory, NeighbourKind::Fork],
            ..small()
        };
        let (r, _) = scenario(&l, &cfg);
        // 1 GiB available / 8 = 128 MiB; the fork ceiling is the pids limit.
        assert_eq!(
            l.jobs(),
            [
                "api ",
                "hog --step-mib 4 --max-mib 128",
                "forkloop --max 128"
            ]
        );
        for s in l.launched.borrow().iter() {
            assert_eq!((s.cpus, s.memory_bytes, s.pids), (None, None, None));
        }
        assert_eq!(r.limits, None);
        assert!(r
            .neighbours
            .iter()
            .all(|n| n.fate == NeighbourFate::CappedByHarness));
    }

    #[test]
    fn an_unavailable_mode_is_explained_and_never_launched() {
        let mut l = FakeLauncher::new(ModeKind::Microvm, vec![FakeRun::ready(1)]);
        l.unavailable = Some("no KVM here".into());
        let (r, load) = scenario(&l, &small());
        assert!(
            matches!(&r.status, ScenarioStatus::Unavailable { reason } if reason == "no KVM here")
        );
        assert!(l.jobs().is_empty() && load.calls.borrow().is_empty());
    }

    #[test]
    fn a_neighbour_that_fails_to_launch_is_reported_and_the_others_still_run() {
        let l = FakeLauncher::new(
            ModeKind::Runc,
            vec![
                FakeRun::ready(1),
                FakeRun {
                    launch_error: Some("runc: exec failed".into()),
                    ..FakeRun::default()
                },
                FakeRun::ready(1),
            ],
        );
        let cfg = NeighbourConfig {
            kinds: vec![NeighbourKind::Cpu, NeighbourKind::Fork],
            ..small()
        };
        let (r, _) = scenario(&l, &cfg);
        assert!(matches!(r.status, ScenarioStatus::Measured));
        assert!(r.neighbours[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("runc: exec failed")));
        assert!(r.neighbours[0].interference.is_empty());
        assert_eq!(r.neighbours[1].interference.len(), 2);
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_tenant_that_never_becomes_ready_fails_the_mode_and_is_stopped() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::default()]);
        let (r, _) = scenario(&l, &small());
        assert!(matches!(r.status, ScenarioStatus::Failed { .. }));
        assert_eq!(l.jobs().len(), 1);
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_microvm_memory_neighbour_killed_by_its_guest_kernel_reads_guest_oom() {
        let mut r = ended(137, Some(Stats::default()), None);
        r.outcome.guest_oom = Some(true);
        let l = FakeLauncher::new(ModeKind::Microvm, vec![FakeRun::ready(1), r]);
        let cfg = NeighbourConfig {
            kinds: vec![NeighbourKind::Memory],
            ..small()
        };
        let (m, _) = scenario(&l, &cfg);
        let n = &m.neighbours[0];
        assert_eq!(n.observation.guest_oom, Some(true));
        assert_eq!(
            n.observation.oom_kills,
            Some(0),
            "the monitor's cgroup saw none"
        );
        assert_eq!(n.fate, NeighbourFate::GuestOom);
        assert_eq!(l.launched.borrow()[1].cpus, Some(1.0));
    }

    #[test]
    fn a_neighbour_whose_end_cannot_be_read_is_its_own_error_and_the_next_kind_runs() {
        let mut lost = FakeRun::ready(1);
        lost.stop_error = Some("The monitor exited (status 137) without a report".into());
        let l = FakeLauncher::new(
            ModeKind::Microvm,
            vec![FakeRun::ready(1), lost, FakeRun::ready(1)],
        );
        let cfg = NeighbourConfig {
            kinds: vec![NeighbourKind::Memory, NeighbourKind::Cpu],
            ..small()
        };
        let (r, _) = scenario(&l, &cfg);
        assert!(
            matches!(r.status, ScenarioStatus::Measured),
            "{:?}",
            r.status
        );
        let mem = &r.neighbours[0];
        assert!(mem
            .error
            .as_deref()
            .is_some_and(|e| e.contains("end could not be read") && e.contains("status 137")));
        assert_eq!(mem.interference.len(), 2, "the tenant's figures stand");
        assert_eq!(mem.fate, NeighbourFate::Unchecked);
        assert!(r.neighbours[1].error.is_none());
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn bad_limits_are_one_line_usage_errors() {
        let bad = [
            Limits {
                cpus: 0.0,
                ..Limits::default()
            },
            Limits {
                cpus: f64::NAN,
                ..Limits::default()
            },
            Limits {
                memory_bytes: 1 << 20,
                ..Limits::default()
            },
            Limits {
                memory_bytes: 64 << 30,
                ..Limits::default()
            },
            Limits {
                pids: 2,
                ..Limits::default()
            },
        ];
        for l in bad {
            let e = l.validate().unwrap_err();
            assert!(e.is_usage(), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
        Limits::default().validate().unwrap();
    }

    #[test]
    fn a_fork_loop_that_saw_eagain_was_refused_even_when_its_cgroup_went_unseen() {
        let r = ended(
            0,
            None,
            Some(serde_json::json!({"workload": "forkloop", "errno": "EAGAIN", "capped": false})),
        );
        let o = observe(&r.outcome, None);
        assert_eq!(o.forks_refused, Some(1));
        assert_eq!(
            NeighbourFate::of(NeighbourKind::Fork, &o),
            NeighbourFate::ForksRefused { refused: 1 }
        );
    }

    #[test]
    fn the_microvm_gets_vcpus_guest_ram_and_a_monitor_cgroup() {
        let s = neighbour_spec(
            NeighbourKind::Memory,
            Isolation::Vm,
            &Limits::default(),
            &HOST,
        );
        assert_eq!(
            (s.vcpus, s.memory_bytes, s.cpus, s.pids),
            (Some(1), Some(256 << 20), Some(1.0), Some(128)),
            "vCPUs and guest RAM; the monitor's cgroup gets the CPU and pids limits"
        );
        assert_eq!(s.args, ["--step-mib", "4", "--max-mib", "512"]);
    }

    #[test]
    fn an_image_is_the_tenant_and_the_neighbours_stay_the_built_in_storms() {
        let img = Arc::new(crate::image::ImageWorkload::for_tests("http:80/"));
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(5)]);
        let load = ScriptedLoad {
            live: Arc::clone(&l.live),
            calls: RefCell::default(),
        };
        let cfg = NeighbourConfig {
            kinds: vec![NeighbourKind::Cpu],
            ..small()
        };
        let r = run_mode_for(&l, &cfg, Some(&img), &load, &HOST, &mut |_, _| {});
        assert!(
            matches!(r.status, ScenarioStatus::Measured),
            "{:?}",
            r.status
        );
        let specs = l.launched.borrow();
        assert_eq!(specs[0].image.as_deref(), Some(&*img), "the tenant");
        assert_eq!(specs[0].memory_bytes, Some(256 << 20), "with the limits");
        assert!(specs[1].image.is_none(), "the neighbour is ours");
        assert_eq!(specs[1].workload, Workload::Worker);
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_image_without_an_http_rule_is_not_run_and_says_why() {
        for rule in ["tcp:6379", "exit", "log:ready"] {
            let img = Arc::new(crate::image::ImageWorkload::for_tests(rule));
            let l = FakeLauncher::new(ModeKind::Process, vec![FakeRun::ready(1)]);
            let r = run_mode_for(
                &l,
                &small(),
                Some(&img),
                &super::super::load::ProbeLoad,
                &HOST,
                &mut |_, _| {},
            );
            match &r.status {
                ScenarioStatus::Unavailable { reason } => assert!(
                    reason.contains("need an HTTP ready rule") && reason.contains(rule),
                    "{reason}"
                ),
                s => panic!("{rule}: {s:?}"),
            }
            assert!(l.jobs().is_empty(), "nothing launched");
        }
    }

    #[test]
    fn a_mode_that_cannot_run_the_image_is_unavailable_not_failed() {
        let img = Arc::new(crate::image::ImageWorkload::for_tests("http:80/"));
        struct Refuses;
        impl Launcher for Refuses {
            fn kind(&self) -> ModeKind {
                ModeKind::Crun
            }
            fn unavailable(&self) -> Option<String> {
                None
            }
            fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
                crate::modes::refuse_image(ModeKind::Crun, spec)?;
                Err(HarnessError::Launch("not reached".into()))
            }
        }
        let r = run_mode_for(
            &Refuses,
            &small(),
            Some(&img),
            &super::super::load::ProbeLoad,
            &HOST,
            &mut |_, _| {},
        );
        assert!(
            matches!(&r.status, ScenarioStatus::Unavailable { reason } if reason.contains("cannot run an image")),
            "{:?}",
            r.status
        );
    }
}
