//! The startup-and-memory scenario behind `bench compare`: for every mode,
//! warm-up runs, then N runs, each measured launch -> ready marker, launch
//! -> first HTTP response (HTTP workloads), the VM phases, and memory three
//! ways; ratios against the process baseline; then, on request, the
//! density scenario per mode.

use std::path::Path;
use std::time::Duration;

use isolab_microvm::timing::Phases;
use serde::{Deserialize, Serialize};

use crate::density::{self, DensityConfig, DensityReport, ParentBudget};
use crate::env::Environment;
use crate::isolation::{
    ModeKernelFunctions, ModeNeighbours, ModePosture, ModeSurface, NeighbourConfig, SurfaceConfig,
};
use crate::memory::mem_available;
use crate::modes::{Context, InstanceMemory, InstanceSpec, Launcher, ModeKind};
use crate::stats::{summarize, Summary};
use crate::{interrupted, HarnessError, Workload};

/// Version of the JSON document (docs/schema/compare.v2.json; v2 added
/// the isolation half and the generated reading to v1).
pub const SCHEMA: &str = "isolab.compare.v2";

/// The workloads `compare` measures: the ones that signal ready and end
/// by themselves or serve HTTP until stopped.
pub const WORKLOADS: [Workload; 4] = [
    Workload::Api,
    Workload::Worker,
    Workload::Cache,
    Workload::Noop,
];

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareConfig {
    pub workload: Workload,
    pub runs: usize,
    pub warmup: usize,
    /// Requests in the short request/response run per mode (HTTP workloads).
    pub requests: usize,
    #[serde(skip)]
    pub ready_timeout: Duration,
    /// Containers (ours and the peers') serving HTTP are probed on loopback
    /// inside their own namespace instead of over a veth on the workbench
    /// bridge ([`crate::modes::InstanceSpec::loopback_http`]).
    #[serde(default)]
    pub container_loopback: bool,
    /// Modes and peers to measure, in order.
    #[serde(skip)]
    pub modes: Vec<ModeKind>,
    /// Also run the density scenario for every non-peer mode.
    #[serde(skip)]
    pub density: Option<DensityConfig>,
    /// Also run the noisy-neighbour scenario for every mode and peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbours: Option<NeighbourConfig>,
    /// Also run the attack-surface pass (host system calls) per mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface: Option<SurfaceConfig>,
    /// Also run the security-posture pass per mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub posture: bool,
    /// A user's image or bundle measured instead of the built-in workload
    /// (`workload` then says whether it serves or ends by itself); the
    /// method lines name it and its ready rule. In JSON its
    /// [`crate::image::ImageSummary`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::image::summary"
    )]
    pub image: Option<std::sync::Arc<crate::image::ImageWorkload>>,
    /// The isolation half's budget when it runs by default (`short`, or
    /// `full` with `--isolation`); `None` with `--isolation off`, where
    /// only the passes asked for by their own flags run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<crate::isolation::Budget>,
}

#[cfg(test)]
impl CompareConfig {
    /// The smallest configuration for unit tests: one run, no warm-up, no
    /// requests, no scenarios.
    pub(crate) fn for_tests(workload: Workload) -> Self {
        CompareConfig {
            workload,
            runs: 1,
            warmup: 0,
            requests: 0,
            ready_timeout: Duration::from_secs(1),
            container_loopback: false,
            modes: vec![],
            density: None,
            neighbours: None,
            surface: None,
            posture: false,
            image: None,
            isolation: None,
        }
    }
}

/// Whether a mode was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModeStatus {
    Measured,
    /// Could not run on this host; `reason` says why and what to do.
    Unavailable {
        reason: String,
    },
    /// Started but failed; the error, verbatim.
    Failed {
        error: String,
    },
}

/// Memory summaries in bytes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MemoryReport {
    pub pss: Option<Summary>,
    pub uss: Option<Summary>,
    pub cgroup_current: Option<Summary>,
    /// Host `MemAvailable` drop while one instance ran (median over runs).
    pub mem_available_delta: Option<Summary>,
    pub vmm_overhead: Option<Summary>,
    pub guest_touched: Option<Summary>,
    /// Of `guest_touched`, what huge pages (THP or hugetlb) back.
    #[serde(default)]
    pub guest_huge: Option<Summary>,
}

/// Reads one phase of the monitor's report.
pub type PhaseOf = fn(&Phases) -> Option<f64>;

/// The VM phases summarised over runs: the monitor's
/// [`isolab_microvm::timing::Phases`] fields of that name, in ms.
pub const PHASES: [(&str, PhaseOf); 4] = [
    ("vmm_setup_ms", |p| p.vmm_setup_ms),
    ("kernel_boot_ms", |p| p.kernel_boot_ms),
    ("init_ms", |p| p.init_ms),
    ("workload_ready_ms", |p| p.workload_ready_ms),
];

/// Phase summaries by [`PHASES`] name (or [`launch_phase_key`]).
pub type PhaseReport = std::collections::BTreeMap<String, Summary>;

/// The container's launch phases in order, as (key, label): keys of
/// [`ModeReport::launch_phases`] ("clone_ms"), labels for tables and plots
/// ("clone"); [`isolab_container::LaunchPhases::named`]'s order.
pub fn launch_phase_names() -> Vec<(String, &'static str)> {
    isolab_container::LaunchPhases::default()
        .named()
        .iter()
        .map(|(label, _)| (launch_phase_key(label), *label))
        .collect()
}

/// "instance dir" -> "instance_dir_ms".
fn launch_phase_key(label: &str) -> String {
    format!("{}_ms", label.replace(' ', "_"))
}

/// The phases of one launch in ms by key; `workload_ready_ms` only when
/// the workload signalled ready.
fn launch_phase_values(p: &isolab_container::LaunchPhases) -> Vec<(String, f64)> {
    p.named()
        .iter()
        .filter(|(label, _)| *label != "workload ready" || p.workload_ready_us.is_some())
        .map(|(label, us)| (launch_phase_key(label), *us as f64 / 1e3))
        .collect()
}

/// Result of a short request/response run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub requests: usize,
    pub errors: usize,
    /// Latency of each request in microseconds.
    pub latency_us: Summary,
    pub requests_per_sec: f64,
}

/// Everything measured for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: ModeKind,
    pub peer: bool,
    pub status: ModeStatus,
    /// launch -> ready marker, ms.
    pub ready_ms: Option<Summary>,
    /// launch -> first successful HTTP response, ms.
    pub first_response_ms: Option<Summary>,
    /// Raw samples, in run order (ms); never trimmed.
    pub raw_ready_ms: Vec<f64>,
    pub raw_first_response_ms: Vec<f64>,
    pub phases: Option<PhaseReport>,
    /// The container's launch phases over runs (ms, by
    /// [`launch_phase_names`] key); absent for every other mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_phases: Option<PhaseReport>,
    pub memory: MemoryReport,
    pub load: Option<LoadResult>,
    /// p50 ready time relative to the process baseline's p50.
    pub ready_ratio_vs_process: Option<f64>,
    pub first_response_ratio_vs_process: Option<f64>,
    /// Exit statuses seen (workloads that end by themselves).
    pub statuses: Vec<Option<i32>>,
    pub notes: Vec<String>,
}

impl ModeReport {
    pub fn unavailable(mode: ModeKind, reason: String) -> Self {
        let mut r = ModeReport::empty(mode);
        r.status = ModeStatus::Unavailable { reason };
        r
    }

    fn empty(mode: ModeKind) -> Self {
        ModeReport {
            mode,
            peer: mode.is_peer(),
            status: ModeStatus::Measured,
            ready_ms: None,
            first_response_ms: None,
            raw_ready_ms: vec![],
            raw_first_response_ms: vec![],
            phases: None,
            launch_phases: None,
            memory: MemoryReport::default(),
            load: None,
            ready_ratio_vs_process: None,
            first_response_ratio_vs_process: None,
            statuses: vec![],
            notes: vec![],
        }
    }
}

/// The whole document `bench compare` prints or writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub schema: String,
    pub created_unix: u64,
    pub config: CompareConfig,
    pub environment: Environment,
    /// "How it was measured", shown with every rendering.
    pub method: Vec<String>,
    pub modes: Vec<ModeReport>,
    pub density: Vec<DensityReport>,
    /// The noisy-neighbour scenario per mode (empty when not asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<ModeNeighbours>,
    /// The attack-surface pass per mode (empty when not asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub surface: Vec<ModeSurface>,
    /// The kernel-function pass (HAP) per mode, with the attack-surface
    /// pass (empty when not asked for); measured only where the host
    /// kernel is ours (the emulated host), elsewhere each says why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_functions: Vec<ModeKernelFunctions>,
    /// The security-posture pass per mode (empty when not asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posture: Vec<ModePosture>,
    /// The reading generated from the numbers above
    /// ([`crate::report::reading::lines`]), the same sentences the table
    /// and Markdown end with; filled when the run ends.
    #[serde(default)]
    pub reading: Vec<String>,
}

/// How a long run reports progress (the CLI draws bars; tests ignore it).
pub trait Progress {
    /// A stage of `total` steps begins.
    fn start(&mut self, what: &str, total: usize);
    /// `done` steps of the stage are finished; `msg` says what happens now.
    fn step(&mut self, done: usize, msg: &str);
    /// The stage is over.
    fn finish(&mut self);
    /// A line worth telling the user now (a mode that will not run).
    fn note(&mut self, line: &str);
}

/// Progress nobody watches.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: usize) {}
    fn step(&mut self, _: usize, _: &str) {}
    fn finish(&mut self) {}
    fn note(&mut self, _: &str) {}
}

/// Runs the whole comparison on this host: every mode in `cfg.modes`, the
/// ratios, then density for every non-peer mode when asked. Stops early on
/// Ctrl-C ([`interrupted`]) with what was measured so far.
pub fn run(
    cfg: &CompareConfig,
    progress: &mut dyn Progress,
) -> Result<CompareReport, HarnessError> {
    let ctx = Context::new(cfg.workload)?;
    let spec = InstanceSpec {
        loopback_http: cfg.container_loopback,
        image: cfg.image.clone(),
        ..InstanceSpec::measured(cfg.workload)
    };
    let mut reports = vec![];
    for &kind in &cfg.modes {
        let launcher = ctx.launcher(kind);
        progress.start(
            &format!("{} {}", kind.name(), cfg.workload),
            cfg.warmup + cfg.runs,
        );
        let r = measure_mode(launcher.as_ref(), &spec, cfg, &mut |done, _| {
            progress.step(done, "")
        });
        progress.finish();
        reports.push(r);
        if interrupted() {
            break;
        }
    }
    fill_ratios(&mut reports);
    if let Some(reason) = cfg
        .image
        .as_deref()
        .filter(|_| cfg.neighbours.is_some() || cfg.surface.is_some())
        .and_then(crate::isolation::requests_unavailable)
    {
        progress.note(&format!(
            "noisy neighbour and host system calls: not run: {reason}"
        ));
    }
    // The three passes report to the one progress display.
    let mut on_event = |ev: crate::isolation::Event<'_>| match ev {
        crate::isolation::Event::Start(what, n) => progress.start(what, n),
        crate::isolation::Event::Step(done, msg) => progress.step(done, msg),
        crate::isolation::Event::Finish => progress.finish(),
    };
    let neighbours = match cfg.neighbours.as_ref().filter(|_| !interrupted()) {
        Some(ncfg) => {
            crate::isolation::run_modes(&ctx, &cfg.modes, ncfg, cfg.image.as_ref(), &mut on_event)
        }
        None => vec![],
    };
    let surface = match cfg.surface.as_ref().filter(|_| !interrupted()) {
        Some(scfg) => crate::isolation::surface_modes(
            &ctx,
            &cfg.modes,
            scfg,
            cfg.image.as_ref(),
            &mut on_event,
        ),
        None => vec![],
    };
    // Its own pass after the system-call pass: the function tracer and
    // ptrace never run on the same instance.
    let kernel_functions = match cfg.surface.as_ref().filter(|_| !interrupted()) {
        Some(scfg) => crate::isolation::kernel_modes(
            &ctx,
            &cfg.modes,
            scfg,
            cfg.image.as_ref(),
            &mut on_event,
        ),
        None => vec![],
    };
    let posture = if cfg.posture && !interrupted() {
        crate::isolation::posture_modes(
            &ctx,
            &cfg.modes,
            cfg.ready_timeout,
            cfg.image.as_ref(),
            &mut |ev| match ev {
                crate::isolation::Event::Start(what, n) => progress.start(what, n),
                crate::isolation::Event::Step(done, msg) => progress.step(done, msg),
                crate::isolation::Event::Finish => progress.finish(),
            },
        )
    } else {
        vec![]
    };
    let mut density_reports = vec![];
    if let Some(dcfg) = cfg.density.as_ref().filter(|_| !interrupted()) {
        for &kind in cfg.modes.iter().filter(|k| !k.is_peer()) {
            let launcher = ctx.launcher(kind);
            if let Some(reason) = launcher.unavailable() {
                progress.note(&format!("density {}: not run: {reason}", kind.name()));
                continue;
            }
            if let Some(reason) = cfg
                .image
                .as_deref()
                .and_then(|i| density::image_unavailable(kind, i))
            {
                progress.note(&format!("density {}: not run: {reason}", kind.name()));
                density_reports.push(DensityReport::unavailable(kind, dcfg, reason));
                continue;
            }
            let group = ParentBudget::create(kind, dcfg.budget_bytes)?;
            let (cap, _) = density::instance_cap(dcfg, std::path::Path::new("/proc"));
            progress.start(&format!("density {}", kind.name()), cap);
            let d = density::run(launcher.as_ref(), &spec, &group, dcfg, &mut |n, msg| {
                progress.step(n, msg)
            });
            progress.finish();
            density_reports.push(d?);
        }
    }
    let mut report = CompareReport {
        schema: SCHEMA.into(),
        created_unix: now_unix(),
        method: method_lines(cfg),
        config: cfg.clone(),
        environment: Environment::capture(),
        modes: reports,
        density: density_reports,
        neighbours,
        surface,
        kernel_functions,
        posture,
        reading: vec![],
    };
    report.reading = crate::report::reading::lines(&report);
    Ok(report)
}

/// One measured run.
#[derive(Debug, Default)]
struct RunSample {
    ready_ms: f64,
    first_response_ms: Option<f64>,
    memory: InstanceMemory,
    mem_available_delta: Option<f64>,
    phases: Option<Phases>,
    launch_phases: Option<isolab_container::LaunchPhases>,
    status: Option<i32>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn one_run(
    launcher: &dyn Launcher,
    spec: &InstanceSpec,
    cfg: &CompareConfig,
    load_run: bool,
) -> Result<(RunSample, Option<LoadResult>), HarnessError> {
    let avail_before = mem_available(Path::new("/proc")).ok();
    let mut inst = launcher.launch(spec)?;
    let launched = inst.launched_at();
    let deadline = launched + cfg.ready_timeout;
    let target = inst.http_target();
    // The HTTP probe starts at launch, on its own thread, so first-response
    // is measured from the same instant as ready and does not wait for it
    // (unless the instance can only be reached once ready).
    let spawn_probe = |t: &crate::modes::HttpTarget| {
        let t = t.target.clone();
        std::thread::spawn(move || crate::net::first_response(&t, launched, deadline))
    };
    let mut probe = target.as_ref().filter(|t| !t.after_ready).map(spawn_probe);
    let ready = match inst.wait_ready(cfg.ready_timeout) {
        Ok(at) => at,
        Err(e) => {
            let _ = inst.stop();
            return Err(e);
        }
    };
    if probe.is_none() {
        probe = target.as_ref().map(spawn_probe);
    }
    let mut sample = RunSample {
        ready_ms: ms(ready - launched),
        ..Default::default()
    };
    if let Some(p) = probe {
        let answered = p
            .join()
            .unwrap_or_else(|_| Err(HarnessError::Launch("the probe thread panicked".into())));
        match answered {
            Ok(at) => sample.first_response_ms = Some(ms(at - launched)),
            Err(e) => {
                let _ = inst.stop();
                return Err(e);
            }
        }
    }
    sample.memory = inst.memory();
    if let (Some(before), Ok(after)) = (avail_before, mem_available(Path::new("/proc"))) {
        sample.mem_available_delta = Some(before as f64 - after as f64);
    }
    let mut load = None;
    if load_run && cfg.requests > 0 {
        if let Some(t) = &target {
            load = Some(request_run(&t.target, cfg.requests)?);
        }
    }
    let outcome = if spec.workload.serves_http() {
        inst.stop()?
    } else {
        inst.wait_exit(cfg.ready_timeout)?
    };
    sample.status = outcome.status;
    sample.phases = outcome.vm.map(|r| r.phases);
    sample.launch_phases = outcome.launch_phases;
    Ok((sample, load))
}

/// `n` sequential requests on one keep-alive connection, summarised.
fn request_run(target: &isolab_net::Target, n: usize) -> Result<LoadResult, HarnessError> {
    let cfg = isolab_net::ProbeConfig::default();
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let run = isolab_net::probe::request_run_at(target, n32, &cfg).map_err(|source| {
        HarnessError::NoAnswer {
            what: format!("the request run against {}", target.addr),
            source,
        }
    })?;
    let lat: Vec<f64> = run
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    let latency_us = summarize(&lat).ok_or_else(|| {
        HarnessError::Launch(format!("all {n} requests to {} failed", target.addr))
    })?;
    Ok(LoadResult {
        requests: n,
        errors: run.errors as usize,
        latency_us,
        requests_per_sec: run.throughput_rps(),
    })
}

fn summarize_opt(v: impl Iterator<Item = Option<f64>>) -> Option<Summary> {
    let v: Vec<f64> = v.flatten().collect();
    summarize(&v)
}

/// Measure one mode: warm-up runs (discarded), then `cfg.runs` measured runs.
/// `progress` is called after every run with (done, total).
pub fn measure_mode(
    launcher: &dyn Launcher,
    spec: &InstanceSpec,
    cfg: &CompareConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> ModeReport {
    let mode = launcher.kind();
    if let Some(reason) = launcher.unavailable() {
        return ModeReport::unavailable(mode, reason);
    }
    let mut report = ModeReport::empty(mode);
    let total = cfg.warmup + cfg.runs;
    let mut samples = Vec::with_capacity(cfg.runs);
    for i in 0..total {
        if interrupted() {
            report.status = ModeStatus::Failed {
                error: "interrupted".into(),
            };
            break;
        }
        let last = i + 1 == total;
        match one_run(launcher, spec, cfg, last) {
            Ok((s, load)) => {
                if i >= cfg.warmup {
                    samples.push(s);
                }
                if load.is_some() {
                    report.load = load;
                }
            }
            // A mode that cannot run what was asked (a user's image) is
            // skipped with its reason, not counted as a failure.
            Err(HarnessError::Unavailable(reason)) if i == 0 => {
                return ModeReport::unavailable(mode, reason);
            }
            Err(e) => {
                report.status = ModeStatus::Failed {
                    error: format!("run {}: {}", i + 1, crate::chain(&e)),
                };
                break;
            }
        }
        progress(i + 1, total);
    }
    report.raw_ready_ms = samples.iter().map(|s| s.ready_ms).collect();
    report.raw_first_response_ms = samples.iter().filter_map(|s| s.first_response_ms).collect();
    report.ready_ms = summarize(&report.raw_ready_ms);
    report.first_response_ms = summarize(&report.raw_first_response_ms);
    report.statuses = samples.iter().map(|s| s.status).collect();
    let mem = |f: &dyn Fn(&InstanceMemory) -> Option<u64>| {
        summarize_opt(samples.iter().map(|s| f(&s.memory).map(|v| v as f64)))
    };
    report.memory = MemoryReport {
        pss: mem(&|m| Some(m.pss)),
        uss: mem(&|m| Some(m.uss)),
        cgroup_current: mem(&|m| m.cgroup_current),
        mem_available_delta: summarize_opt(samples.iter().map(|s| s.mem_available_delta)),
        vmm_overhead: mem(&|m| m.vmm_overhead),
        guest_touched: mem(&|m| m.guest_touched),
        guest_huge: mem(&|m| m.guest_huge),
    };
    if samples.iter().any(|s| s.phases.is_some()) {
        report.phases = Some(
            PHASES
                .iter()
                .filter_map(|(name, f)| {
                    let s = summarize_opt(samples.iter().map(|s| s.phases.as_ref().and_then(f)))?;
                    Some((name.to_string(), s))
                })
                .collect(),
        );
    }
    if samples.iter().any(|s| s.launch_phases.is_some()) {
        let per_run: Vec<Vec<(String, f64)>> = samples
            .iter()
            .map(|s| {
                s.launch_phases
                    .as_ref()
                    .map(launch_phase_values)
                    .unwrap_or_default()
            })
            .collect();
        report.launch_phases = Some(
            launch_phase_names()
                .into_iter()
                .filter_map(|(key, _)| {
                    let s = summarize_opt(
                        per_run
                            .iter()
                            .map(|r| r.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)),
                    )?;
                    Some((key, s))
                })
                .collect(),
        );
    }
    if let Some(bad) = report
        .statuses
        .iter()
        .find(|s| **s != Some(0) && !spec.workload.serves_http())
    {
        report
            .notes
            .push(format!("workload exit status {bad:?} in a measured run"));
    }
    report
}

/// Fill the ratios relative to the process baseline.
pub fn fill_ratios(modes: &mut [ModeReport]) {
    let base = modes.iter().find(|m| m.mode == ModeKind::Process).map(|m| {
        (
            m.ready_ms.as_ref().map(|s| s.p50),
            m.first_response_ms.as_ref().map(|s| s.p50),
        )
    });
    let Some((base_ready, base_fr)) = base else {
        return;
    };
    let ratio = |s: Option<&Summary>, b: Option<f64>| match (s, b) {
        (Some(s), Some(b)) if b > 0.0 => Some(s.p50 / b),
        _ => None,
    };
    for m in modes.iter_mut() {
        m.ready_ratio_vs_process = ratio(m.ready_ms.as_ref(), base_ready);
        m.first_response_ratio_vs_process = ratio(m.first_response_ms.as_ref(), base_fr);
    }
}

/// What ran: the user's image, its command and user.
fn image_line(i: &crate::image::ImageWorkload) -> String {
    format!(
        "image: {}{}; command {:?} as uid {} gid {} in {}; process mode runs it chrooted (host network), container in its own namespaces, crun/runc/gVisor as their bundle's root, each instance on a writable overlay of its own over the unpacked rootfs (which stays as unpacked; mounted inside the launch clock for the container and the peers, as part of making their root, and before it for the plain process, which a deployment would run in place); modes that cannot run an image are listed as unavailable",
        i.label,
        i.key.as_deref().map_or(String::new(), |k| format!(" ({k})")),
        i.run.args.join(" "),
        i.run.uid,
        i.run.gid,
        i.run.cwd
    )
}

/// How an image's readiness was observed (it knows nothing of our pipe).
fn image_ready_line(i: &crate::image::ImageWorkload) -> String {
    use crate::image::ReadyRule;
    let how = match &i.ready {
        ReadyRule::Http { port, path } => format!(
            "the first HTTP answer to GET {path} on port {port}, by the one probe (retry every {} us), so ready is the first response",
            isolab_net::probe::RETRY_INTERVAL.as_micros()
        ),
        ReadyRule::Tcp { port } => format!("the first accepted TCP connection on port {port}"),
        ReadyRule::Exit => "its exit (time to completion)".into(),
        ReadyRule::Log(t) => format!("the first line of its stdout/stderr containing {t:?}"),
    };
    format!(
        "ready (--ready {}): launch -> {how}; observed from outside (process on host loopback, our container on the workbench bridge or its own loopback, the peers at their bridge address too; with --container-net loopback, loopback in their own network namespace), CLOCK_MONOTONIC",
        i.ready
    )
}

/// How the isolation half treats a user's image.
fn image_isolation_line(i: &crate::image::ImageWorkload) -> String {
    let requests = match crate::isolation::requests_unavailable(i) {
        Some(reason) => format!("noisy neighbour and host system calls not run: {reason}"),
        None => format!(
            "the tenant of the noisy-neighbour scenario and the traced instance of the host-system-call pass are {}, its request runs GET {} on port {} (its ready rule), reached where its readiness was probed, with the limits below; the neighbours stay the built-in cpu/memory/fork storms in the same mode",
            i.short_name(),
            match &i.ready {
                crate::image::ReadyRule::Http { path, .. } => path.as_str(),
                _ => "/",
            },
            i.ready.port().unwrap_or(0)
        ),
    };
    format!(
        "isolation half with an image: {requests}; posture: the image runs no probe of ours, so its workload side is read from the host (/proc/PID/status and id maps of its process: CapEff, CapBnd, NoNewPrivs, Seccomp, Seccomp_filters, uid_map; the host's kernel by construction) where that process is a host process (process, container, crun, runc), and only the kernel is known inside a guest or gVisor's Sentry; what only a probe inside sees (/proc/sys writable, devices, host paths) is ?; host side from /proc/PID/status of the image instance's host processes"
    )
}

/// The method lines every rendering shows.
pub fn method_lines(cfg: &CompareConfig) -> Vec<String> {
    let mut v = vec![
        format!(
            "{} warm-up run(s) discarded, then {} measured run(s) per mode, one instance at a time",
            cfg.warmup, cfg.runs
        ),
        match &cfg.image {
            None => "ready: launch -> the workload's ready byte on an inherited pipe (VM: relayed by the guest init through the monitor's marker port), CLOCK_MONOTONIC".into(),
            Some(i) => image_ready_line(i),
        },
        "p50/p90/p99 by linear interpolation; 95% CI of the median by percentile bootstrap (2000 resamples); outliers flagged by Tukey fences (1.5 IQR), never dropped".into(),
        "memory: PSS/USS summed over the instance's host processes from /proc/PID/smaps_rollup (launcher/monitor included; our container's init shares the launcher's memory, so it is left out, and its own pages, its stack, are in the cgroup's figure); cgroup usage where the instance has one; host MemAvailable drop while it ran".into(),
    ];
    let containers: Vec<&str> = cfg
        .modes
        .iter()
        .filter(|m| m.isolation() == crate::modes::Isolation::Container)
        .map(|m| m.name())
        .collect();
    if !containers.is_empty() {
        // The confinement is part of a real container's launch: say which
        // one every container-isolation mode ran under (the same for all).
        v.push(format!(
            "container profile ({}): {}",
            containers.join(", "),
            isolab_container::SecurityProfile::new(false, false)
                .summary()
                .description
        ));
    }
    for m in &cfg.modes {
        v.extend(m.info().notes.iter().map(|n| format!("{}: {n}", m.name())));
    }
    if let Some(i) = &cfg.image {
        v.push(image_line(i));
    }
    if cfg.workload.serves_http() && cfg.image.is_none() {
        v.push(format!(
            "first response: launch -> GET /health answered, by one probe for every mode, started at launch on its own thread; it retries every {} us on connection refused, host/network unreachable, a {} ms connect timeout or HTTP 503. One probe path per mode: process on host loopback; container, crun, runc and gVisor {}; microVM and QEMU over virtio-net on the workbench bridge, probed from the ready marker on (the guest has no address before)",
            isolab_net::probe::RETRY_INTERVAL.as_micros(),
            isolab_net::probe::CONNECT_TIMEOUT.as_millis(),
            if cfg.container_loopback {
                "on loopback inside their own network namespace (--container-net loopback)"
            } else {
                "over a veth on the workbench bridge, probed from the workbench namespace (Docker's attachment: ours made on a network namespace the launcher makes while the container is cloned, the peers' as a network namespace the launcher makes and passes by path in the OCI config; both inside the launch clock, so inside ready)"
            }
        ));
        v.push(format!(
            "load: {} sequential GET /health on one keep-alive connection, last run of each mode",
            cfg.requests
        ));
    }
    if let Some(b) = cfg.isolation {
        v.push(format!(
            "isolation half: the {} budget ({}; `--isolation full` measures longer, `--isolation off` measures cost only)",
            b.name(),
            match b {
                crate::isolation::Budget::Short => "the default run's, sized so cost and isolation fit in one run: intervals are wider",
                crate::isolation::Budget::Full => "--isolation",
            }
        ));
    }
    if let Some(i) = cfg
        .image
        .as_deref()
        .filter(|_| cfg.neighbours.is_some() || cfg.surface.is_some() || cfg.posture)
    {
        v.push(image_isolation_line(i));
    }
    if let Some(n) = &cfg.neighbours {
        v.extend(crate::isolation::method_lines_for(n, cfg.image.as_deref()));
    }
    if let Some(s) = &cfg.surface {
        v.push(crate::isolation::surface_method_for(
            s,
            cfg.image.as_deref(),
        ));
        v.push(crate::isolation::hap::method_for(s, cfg.image.as_deref()));
    }
    if cfg.posture && cfg.image.is_none() {
        v.push(crate::isolation::POSTURE_METHOD.into());
    }
    v
}

/// Unix time now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::fake::{FakeLauncher, FakeRun};
    use std::sync::atomic::Ordering;

    fn cfg(workload: Workload, warmup: usize, runs: usize) -> CompareConfig {
        CompareConfig {
            runs,
            warmup,
            ..CompareConfig::for_tests(workload)
        }
    }

    fn ready_after(ms: &[u64]) -> Vec<FakeRun> {
        ms.iter()
            .map(|&m| FakeRun {
                memory: InstanceMemory {
                    pss: m << 20,
                    uss: m << 19,
                    ..InstanceMemory::default()
                },
                ..FakeRun::ready(m)
            })
            .collect()
    }

    #[test]
    fn warmups_are_discarded_and_every_instance_is_ended() {
        let l = FakeLauncher::new(ModeKind::Container, ready_after(&[50, 60, 7, 8, 9]));
        let spec = InstanceSpec::measured(Workload::Noop);
        let mut seen = vec![];
        let r = measure_mode(&l, &spec, &cfg(Workload::Noop, 2, 3), &mut |d, t| {
            seen.push((d, t))
        });
        assert!(matches!(r.status, ModeStatus::Measured));
        assert_eq!(
            r.raw_ready_ms,
            [7.0, 8.0, 9.0],
            "warm-ups dropped, order kept"
        );
        let s = r.ready_ms.unwrap();
        assert_eq!((s.n, s.p50, s.min, s.max), (3, 8.0, 7.0, 9.0));
        assert_eq!(r.memory.pss.unwrap().p50, (8u64 << 20) as f64);
        assert_eq!(r.statuses, [Some(0); 3]);
        assert!(r.notes.is_empty());
        assert_eq!(seen.last(), Some(&(5, 5)));
        assert_eq!(l.launched.borrow().len(), 5);
        assert_eq!(l.live.load(Ordering::SeqCst), 0, "every instance ended");
        assert!(r.phases.is_none() && r.first_response_ms.is_none());
    }

    #[test]
    fn an_unavailable_mode_is_explained_and_never_launched() {
        let mut l = FakeLauncher::new(ModeKind::Microvm, ready_after(&[1]));
        l.unavailable = Some("/dev/kvm here is PVM".into());
        let r = measure_mode(
            &l,
            &InstanceSpec::measured(Workload::Noop),
            &cfg(Workload::Noop, 0, 3),
            &mut |_, _| {},
        );
        assert!(matches!(&r.status, ModeStatus::Unavailable { reason } if reason.contains("PVM")));
        assert!(l.launched.borrow().is_empty());
        assert!(r.ready_ms.is_none());
    }

    #[test]
    fn a_failed_run_ends_the_mode_with_its_error_and_keeps_what_was_measured() {
        let mut script = ready_after(&[3]);
        script.push(FakeRun::default()); // never ready
        let l = FakeLauncher::new(ModeKind::Runc, script);
        let r = measure_mode(
            &l,
            &InstanceSpec::measured(Workload::Noop),
            &cfg(Workload::Noop, 0, 5),
            &mut |_, _| {},
        );
        match &r.status {
            ModeStatus::Failed { error } => {
                assert!(
                    error.starts_with("run 2: Instance never became ready"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.raw_ready_ms, [3.0]);
        assert_eq!(
            l.live.load(Ordering::SeqCst),
            0,
            "the failed instance was stopped"
        );
        assert!(r.peer);
    }

    #[test]
    fn nonzero_statuses_are_noted_and_vm_phases_summarised() {
        let mut run = FakeRun::ready(4);
        run.outcome.status = Some(3);
        let report: isolab_microvm::VmReport = serde_json::from_str(
            r#"{"host":{"kind":"unknown"},"vcpus":1,"memory_mib":128,"kernel_format":"elf",
            "boot_protocol":"pvh","cmdline":"","stop_reason":"guest_reset","exit_status":3,
            "phases":{"vmm_setup_ms":2.0,"kernel_boot_ms":30.0,"init_ms":1.0,"workload_ready_ms":0.5},
            "memory_at_ready":null,"memory_at_end":{"vmm_overhead_kib":1,"guest_touched_kib":1,
            "total_rss_kib":2,"vmm_overhead_pss_kib":1},"workload_output":"","unknown_markers":[]}"#,
        )
        .unwrap();
        run.outcome.vm = Some(Box::new(report));
        let l = FakeLauncher::new(ModeKind::Microvm, vec![run]);
        let r = measure_mode(
            &l,
            &InstanceSpec::measured(Workload::Worker),
            &cfg(Workload::Worker, 0, 2),
            &mut |_, _| {},
        );
        assert_eq!(r.notes, ["workload exit status Some(3) in a measured run"]);
        let phases = r.phases.unwrap();
        assert_eq!(phases["kernel_boot_ms"].p50, 30.0);
        assert_eq!(
            phases.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "init_ms",
                "kernel_boot_ms",
                "vmm_setup_ms",
                "workload_ready_ms"
            ]
        );
    }

    #[test]
    fn ratios_are_p50_over_the_process_p50() {
        let spec = InstanceSpec::measured(Workload::Noop);
        let c = cfg(Workload::Noop, 0, 3);
        let run = |kind, ms: &[u64]| {
            measure_mode(
                &FakeLauncher::new(kind, ready_after(ms)),
                &spec,
                &c,
                &mut |_, _| {},
            )
        };
        let mut modes = vec![
            run(ModeKind::Process, &[2, 4, 6]),
            run(ModeKind::Container, &[10, 11, 12]),
            ModeReport::unavailable(ModeKind::Microvm, "no".into()),
        ];
        fill_ratios(&mut modes);
        assert_eq!(modes[0].ready_ratio_vs_process, Some(1.0));
        assert_eq!(modes[1].ready_ratio_vs_process, Some(2.75));
        assert_eq!(modes[2].ready_ratio_vs_process, None);
        assert_eq!(modes[1].first_response_ratio_vs_process, None);
        // Without a process baseline there is nothing to divide by.
        let mut alone = vec![run(ModeKind::Container, &[10])];
        fill_ratios(&mut alone);
        assert_eq!(alone[0].ready_ratio_vs_process, None);
    }

    #[test]
    fn the_method_names_the_one_probe_policy() {
        let mut c = cfg(Workload::Api, 1, 5);
        c.modes = vec![ModeKind::Process, ModeKind::Container, ModeKind::Runc];
        let http = method_lines(&c);
        assert!(http.iter().any(|l| l.contains("retries every 250 us")));
        let profile = http
            .iter()
            .find(|l| l.starts_with("container profile ("))
            .expect("the containers' profile is named");
        assert!(
            profile.starts_with("container profile (container, runc): default: 14 capabilities")
                && profile.contains("seccomp"),
            "{profile}"
        );
        assert!(!method_lines(&cfg(Workload::Api, 1, 5))
            .iter()
            .any(|l| l.starts_with("container profile")));
        assert!(!method_lines(&cfg(Workload::Noop, 1, 5))
            .iter()
            .any(|l| l.contains("first response")));
    }

    #[test]
    fn container_launch_phases_are_summarised_and_rendered_beside_the_rest() {
        let mut run = FakeRun::ready(6);
        run.outcome.launch_phases = Some(isolab_container::LaunchPhases {
            clone_us: 1_200,
            hardening_us: 400,
            workload_ready_us: Some(2_000),
            ..Default::default()
        });
        let l = FakeLauncher::new(ModeKind::Container, vec![run]);
        let c = cfg(Workload::Noop, 0, 3);
        let spec = InstanceSpec::measured(Workload::Noop);
        let r = measure_mode(&l, &spec, &c, &mut |_, _| {});
        let p = r.launch_phases.as_ref().unwrap();
        assert_eq!((p["clone_ms"].p50, p["clone_ms"].n), (1.2, 3));
        assert_eq!(p["workload_ready_ms"].p50, 2.0);
        assert_eq!(p.len(), 12, "every phase, in ms: {:?}", p.keys());
        let process = measure_mode(
            &FakeLauncher::new(ModeKind::Process, ready_after(&[2])),
            &spec,
            &c,
            &mut |_, _| {},
        );
        assert!(process.launch_phases.is_none());
        let doc = CompareReport {
            schema: SCHEMA.into(),
            created_unix: 0,
            method: vec![],
            config: c,
            environment: Environment::capture(),
            modes: vec![process, r],
            density: vec![],
            neighbours: vec![],
            surface: vec![],
            kernel_functions: vec![],
            posture: vec![],
            reading: vec![],
        };
        let json: serde_json::Value = serde_json::from_str(&crate::report::json(&doc)).unwrap();
        assert_eq!(
            json["modes"][1]["launch_phases"]["hardening_ms"]["p50"],
            0.4
        );
        assert!(
            json["modes"][0].get("launch_phases").is_none(),
            "other modes' JSON unchanged"
        );
        let table = crate::report::table::render(&doc);
        assert!(
            table.contains("Container launch phases (ms from launch, p50)"),
            "{table}"
        );
        let clone_row = table
            .lines()
            .find(|l| l.trim_start().starts_with("clone"))
            .unwrap();
        assert!(clone_row.trim_end().ends_with("1.20"), "{clone_row}");
        let md = crate::report::markdown::render(&doc);
        assert!(
            md.contains("| phase | container |\n|---|---:|\n| prepare | 0.00 |"),
            "{md}"
        );
        assert!(md.contains("| = launch -> ready | 6.00 |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        let written = crate::report::plots::write_all(&doc, dir.path()).unwrap();
        assert!(written.contains(&"phases.svg".to_string()), "{written:?}");
        let svg = std::fs::read_to_string(dir.path().join("phases.svg")).unwrap();
        assert!(svg.contains("container: clone 1.20"), "stacked, labelled");
    }
}
