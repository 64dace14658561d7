//! The startup-and-memory scenario behind `bench compare`: warm-up, then N
//! runs per mode, each measured launch -> ready marker, launch -> first HTTP
//! response (HTTP workloads), the VM phases, and memory three ways.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::density::DensityReport;
use crate::env::Environment;
use crate::memory::mem_available;
use crate::modes::{InstanceMemory, InstanceSpec, Launcher, ModeKind, VmPhases};
use crate::probe::{first_response, request_run, LoadResult};
use crate::stats::{summarize, Summary};
use crate::{interrupted, HarnessError};

/// Version of the JSON document (docs/schema/compare.v1.json).
pub const SCHEMA: &str = "isolab.compare.v1";

/// Workloads that serve HTTP and are probed for a first response.
pub fn serves_http(workload: &str) -> bool {
    matches!(workload, "api" | "cache")
}

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareConfig {
    pub workload: String,
    pub runs: usize,
    pub warmup: usize,
    /// Requests in the short request/response run per mode (HTTP workloads).
    pub requests: usize,
    #[serde(skip)]
    pub ready_timeout: Duration,
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
}

/// Phase summaries in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PhaseReport {
    pub vmm_setup_ms: Option<Summary>,
    pub kernel_boot_ms: Option<Summary>,
    pub init_ms: Option<Summary>,
    pub workload_ready_ms: Option<Summary>,
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
}

/// One measured run.
#[derive(Debug, Default)]
struct RunSample {
    ready_ms: f64,
    first_response_ms: Option<f64>,
    memory: InstanceMemory,
    mem_available_delta: Option<f64>,
    phases: Option<VmPhases>,
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
    // The HTTP probe starts at launch, on its own thread, so first-response
    // is measured from the same instant as ready and does not wait for it.
    let probe = if serves_http(&spec.workload) {
        inst.http_target()
            .map(|t| std::thread::spawn(move || first_response(&t, deadline)))
    } else {
        None
    };
    let ready = match inst.wait_ready(cfg.ready_timeout) {
        Ok(at) => at,
        Err(e) => {
            let _ = inst.stop();
            return Err(e);
        }
    };
    let mut sample = RunSample {
        ready_ms: ms(ready - launched),
        ..Default::default()
    };
    if let Some(p) = probe {
        match p
            .join()
            .map_err(|_| HarnessError::Probe("probe thread panicked".into()))?
        {
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
        if let Some(t) = inst.http_target() {
            load = Some(request_run(&t, cfg.requests)?);
        }
    }
    let outcome = if serves_http(&spec.workload) {
        inst.stop()?
    } else {
        inst.wait_exit(cfg.ready_timeout)?
    };
    sample.status = outcome.status;
    if sample.first_response_ms.is_none() {
        sample.first_response_ms = outcome.first_response_ms;
    }
    sample.phases = outcome.phases;
    Ok((sample, load))
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
            Err(e) => {
                report.status = ModeStatus::Failed {
                    error: format!("run {}: {e}", i + 1),
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
    };
    if samples.iter().any(|s| s.phases.is_some()) {
        let ph = |f: &dyn Fn(&VmPhases) -> Option<f64>| {
            summarize_opt(samples.iter().map(|s| s.phases.as_ref().and_then(f)))
        };
        report.phases = Some(PhaseReport {
            vmm_setup_ms: ph(&|p| p.vmm_setup_ms),
            kernel_boot_ms: ph(&|p| p.kernel_boot_ms),
            init_ms: ph(&|p| p.init_ms),
            workload_ready_ms: ph(&|p| p.workload_ready_ms),
        });
    }
    if let Some(bad) = report
        .statuses
        .iter()
        .find(|s| **s != Some(0) && !serves_http(&spec.workload))
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
    for m in modes.iter_mut() {
        m.ready_ratio_vs_process = match (m.ready_ms.as_ref(), base_ready) {
            (Some(s), Some(b)) if b > 0.0 => Some(s.p50 / b),
            _ => None,
        };
        m.first_response_ratio_vs_process = match (m.first_response_ms.as_ref(), base_fr) {
            (Some(s), Some(b)) if b > 0.0 => Some(s.p50 / b),
            _ => None,
        };
    }
}

/// The method lines every rendering shows.
pub fn method_lines(cfg: &CompareConfig) -> Vec<String> {
    let mut v = vec![
        format!(
            "{} warm-up run(s) discarded, then {} measured run(s) per mode, one instance at a time",
            cfg.warmup, cfg.runs
        ),
        "ready: launch -> the workload's ready byte on an inherited pipe (VM: relayed by the guest init through the monitor's marker port), CLOCK_MONOTONIC".into(),
        "p50/p90/p99 by linear interpolation; 95% CI of the median by percentile bootstrap (2000 resamples); outliers flagged by Tukey fences (1.5 IQR), never dropped".into(),
        "memory: PSS/USS summed over the instance's host processes from /proc/PID/smaps_rollup (launcher/monitor included); cgroup usage where the instance has one; host MemAvailable drop while it ran".into(),
    ];
    if serves_http(&cfg.workload) {
        v.push(format!(
            "first response: a probe thread started at launch connects, retrying every {} us on connection-refused only, then GET /health must answer 200 (microVM: its monitor probes the guest over virtio-net on the workbench bridge after the ready marker, from the monitor's start)",
            crate::probe::RETRY_INTERVAL.as_micros()
        ));
        v.push(format!(
            "load: {} sequential GET /health on one keep-alive connection, last run of each mode",
            cfg.requests
        ));
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

/// Elapsed helper for progress displays.
pub fn since(t: Instant) -> Duration {
    t.elapsed()
}
