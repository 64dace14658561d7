//! The attack-surface pass: which host system calls serve an instance.
//!
//! Per mode: an `api` instance is launched (the mode's defaults), ready and
//! answering, warmed up; then every host-side process and thread of it
//! ([`crate::modes::Instance::host_pids`]: the workload, the container's
//! init, the runtime, the monitor's threads) is seized by the `isolab-trace`
//! process ([`isolab_isolation::systrace::TracerProcess`]) while a fixed
//! sequential request run goes through the one HTTP probe; the distinct
//! calls and their counts are reported. Tracing is its own pass (a traced
//! thread stops twice per call): no timing in any report comes from it.
//!
//! [`HostTracer`] is the seam: the unit tests script the profile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use isolab_isolation::interference::{LoadPattern, LoadRun};
use isolab_isolation::systrace::TracerProcess;
use serde::{Deserialize, Serialize};

use super::load::TenantLoad;
use super::noisy::{Image, ScenarioStatus};
use crate::modes::{Launcher, ModeKind};
use crate::HarnessError;

/// The tracer's binary name, next to `bench`.
pub const TRACE_BIN: &str = "isolab-trace";

/// What the pass runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SurfaceConfig {
    /// Sequential requests sent while traced.
    pub requests: usize,
    #[serde(skip)]
    pub ready_timeout: std::time::Duration,
}

impl Default for SurfaceConfig {
    fn default() -> Self {
        SurfaceConfig {
            requests: 100,
            ready_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// What a tracer saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traced {
    /// Calls by name over every traced thread.
    pub totals: BTreeMap<String, u64>,
    pub processes: usize,
    pub threads: usize,
    /// `tid: reason` of threads that could not be traced.
    pub not_traced: Vec<String>,
}

/// Traces host threads while a load runs.
pub trait HostTracer {
    /// Why tracing cannot run here, if it cannot.
    fn unavailable(&self) -> Option<String>;
    /// Seizes `pids`, runs `during`, detaches.
    fn trace(
        &self,
        pids: &[u32],
        during: &mut dyn FnMut() -> Result<LoadRun, HarnessError>,
    ) -> Result<(Traced, LoadRun), HarnessError>;
}

/// The real tracer: the `isolab-trace` process.
#[derive(Debug)]
pub struct TraceProcess {
    pub binary: PathBuf,
}

impl HostTracer for TraceProcess {
    fn unavailable(&self) -> Option<String> {
        if !self.binary.is_file() {
            return Some(format!(
                "{} is not built: cargo build --release -p isolab-isolation",
                self.binary.display()
            ));
        }
        (!nix::unistd::geteuid().is_root())
            .then(|| "tracing another user's instance needs root: run as root".into())
    }

    fn trace(
        &self,
        pids: &[u32],
        during: &mut dyn FnMut() -> Result<LoadRun, HarnessError>,
    ) -> Result<(Traced, LoadRun), HarnessError> {
        let t = TracerProcess::attach(&self.binary, pids)
            .map_err(|e| HarnessError::Launch(format!("tracer: {}", crate::chain(&e))))?;
        let run = during();
        let profile = t
            .finish()
            .map_err(|e| HarnessError::Launch(format!("tracer: {}", crate::chain(&e))))?;
        let traced = Traced {
            totals: profile.totals(),
            processes: profile.processes().len(),
            threads: profile.threads.len(),
            not_traced: profile
                .not_traced
                .iter()
                .map(|n| format!("{}: {}", n.tid, n.reason))
                .collect(),
        };
        Ok((traced, run?))
    }
}

/// The pass's result for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeSurface {
    pub mode: ModeKind,
    pub peer: bool,
    pub status: ScenarioStatus,
    /// Host processes and threads traced.
    pub processes: usize,
    pub threads: usize,
    pub not_traced: Vec<String>,
    /// Requests answered / failed while traced.
    pub requests: usize,
    pub errors: u64,
    /// Host system calls by name, over every traced thread.
    pub syscalls: BTreeMap<String, u64>,
}

impl ModeSurface {
    fn new(mode: ModeKind) -> Self {
        ModeSurface {
            mode,
            peer: mode.is_peer(),
            status: ScenarioStatus::Measured,
            processes: 0,
            threads: 0,
            not_traced: vec![],
            requests: 0,
            errors: 0,
            syscalls: BTreeMap::new(),
        }
    }

    /// Distinct host system calls.
    pub fn distinct(&self) -> usize {
        self.syscalls.len()
    }

    /// Calls in all.
    pub fn calls(&self) -> u64 {
        self.syscalls.values().sum()
    }
}

/// Runs the pass for the mode of `launcher` on the built-in `api`; never
/// fails as a whole.
pub fn run_mode(
    launcher: &dyn Launcher,
    cfg: &SurfaceConfig,
    load: &dyn TenantLoad,
    tracer: &dyn HostTracer,
) -> ModeSurface {
    run_mode_for(launcher, cfg, None, load, tracer)
}

/// [`run_mode`] on a user's image when `image` is given (loaded by its HTTP
/// ready rule). An image without an HTTP rule, or a mode that cannot run
/// it, is reported unavailable with the reason.
pub fn run_mode_for(
    launcher: &dyn Launcher,
    cfg: &SurfaceConfig,
    image: Image<'_>,
    load: &dyn TenantLoad,
    tracer: &dyn HostTracer,
) -> ModeSurface {
    let mut r = ModeSurface::new(launcher.kind());
    if let Some(reason) = launcher
        .unavailable()
        .or_else(|| image.and_then(|i| super::requests_unavailable(i)))
        .or_else(|| tracer.unavailable())
    {
        r.status = ScenarioStatus::Unavailable { reason };
        return r;
    }
    match traced_run(launcher, cfg, image, load, tracer, &mut r) {
        Ok(()) => {}
        Err(HarnessError::Unavailable(reason)) => {
            r.status = ScenarioStatus::Unavailable { reason };
        }
        Err(e) => {
            r.status = ScenarioStatus::Failed {
                error: crate::chain(&e),
            };
        }
    }
    r
}

fn traced_run(
    launcher: &dyn Launcher,
    cfg: &SurfaceConfig,
    image: Image<'_>,
    load: &dyn TenantLoad,
    tracer: &dyn HostTracer,
    r: &mut ModeSurface,
) -> Result<(), HarnessError> {
    super::traced_tenant_run(launcher, cfg.ready_timeout, image, load, |inst, target| {
        let (traced, run) = tracer.trace(&inst.host_pids(), &mut || {
            load.run(target, LoadPattern::Sequential, cfg.requests)
        })?;
        r.processes = traced.processes;
        r.threads = traced.threads;
        r.not_traced = traced.not_traced;
        r.syscalls = traced.totals;
        r.requests = run.latencies_us.len();
        r.errors = run.errors;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::load::fake::RecordingLoad;
    use crate::isolation::noisy::WARMUP_REQUESTS;
    use crate::modes::fake::{FakeLauncher, FakeRun};
    use std::sync::atomic::Ordering;

    struct Scripted(Option<String>);

    impl HostTracer for Scripted {
        fn unavailable(&self) -> Option<String> {
            self.0.clone()
        }
        fn trace(
            &self,
            _: &[u32],
            during: &mut dyn FnMut() -> Result<LoadRun, HarnessError>,
        ) -> Result<(Traced, LoadRun), HarnessError> {
            let run = during()?;
            Ok((
                Traced {
                    totals: [("read".to_owned(), 10), ("write".to_owned(), 10)].into(),
                    processes: 1,
                    threads: 2,
                    not_traced: vec![],
                },
                run,
            ))
        }
    }

    #[test]
    fn the_traced_run_is_its_own_pass_after_a_warm_up_and_the_instance_is_stopped() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(1)]);
        let load = RecordingLoad::default();
        let cfg = SurfaceConfig {
            requests: 7,
            ..SurfaceConfig::default()
        };
        let r = run_mode(&l, &cfg, &load, &Scripted(None));
        assert!(
            matches!(r.status, ScenarioStatus::Measured),
            "{:?}",
            r.status
        );
        assert_eq!(*load.0.borrow(), [WARMUP_REQUESTS, 7]);
        assert_eq!(
            (r.distinct(), r.calls(), r.threads, r.requests),
            (2, 20, 2, 7)
        );
        assert_eq!(l.jobs(), ["api "]);
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn without_the_tracer_the_mode_is_explained_and_nothing_launches() {
        let l = FakeLauncher::new(ModeKind::Process, vec![FakeRun::ready(1)]);
        let r = run_mode(
            &l,
            &SurfaceConfig::default(),
            &RecordingLoad::default(),
            &Scripted(Some("isolab-trace is not built".into())),
        );
        assert!(matches!(r.status, ScenarioStatus::Unavailable { .. }));
        assert!(l.jobs().is_empty());
    }

    #[test]
    fn an_image_is_traced_under_its_http_rule_and_without_one_says_why() {
        let img = std::sync::Arc::new(crate::image::ImageWorkload::for_tests("http:80/"));
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(1)]);
        let load = RecordingLoad::default();
        let r = run_mode_for(
            &l,
            &SurfaceConfig::default(),
            Some(&img),
            &load,
            &Scripted(None),
        );
        assert!(
            matches!(r.status, ScenarioStatus::Measured),
            "{:?}",
            r.status
        );
        assert_eq!(l.launched.borrow()[0].image.as_deref(), Some(&*img));
        let img = std::sync::Arc::new(crate::image::ImageWorkload::for_tests("tcp:80"));
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(1)]);
        let r = run_mode_for(
            &l,
            &SurfaceConfig::default(),
            Some(&img),
            &load,
            &Scripted(None),
        );
        assert!(
            matches!(&r.status, ScenarioStatus::Unavailable { reason } if reason.contains("--ready http:PORT/PATH")),
            "{:?}",
            r.status
        );
        assert!(l.jobs().is_empty());
    }
}
