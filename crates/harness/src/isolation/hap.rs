//! The kernel-function pass (Horizontal Attack Profile): how many distinct
//! host kernel functions serve an instance during a request run, counted
//! by ftrace's function tracer in a tracing instance of our own
//! ([`isolab_isolation::hap`]).
//!
//! Per mode: an `api` instance is launched, ready and answering, warmed
//! up; then every thread of every host-side process of it
//! ([`crate::modes::Instance::host_pids`], each `/proc/PID/task/*`) goes
//! into the instance's `set_ftrace_pid` (with `function-fork`, so threads
//! and children started later are followed) while the same fixed
//! sequential request run as the system-call pass goes through the one
//! HTTP probe. It is its own pass, after the system-call pass and never
//! beside it: ptrace stops would add their own kernel functions, and the
//! function tracer slows every kernel call, so no timing comes from it.
//!
//! It runs only where the kernel is ours (the emulated host): on any other
//! host every mode is reported "not measured here" with the reason, no
//! instance is launched and tracefs is never touched.
//!
//! [`FunctionTracer`] is the seam: the unit tests script the result.

use std::collections::BTreeMap;
use std::path::Path;

use isolab_isolation::hap::{HapConfig, HapSession, KernelFunctions};
use isolab_isolation::interference::{LoadPattern, LoadRun};
use serde::{Deserialize, Serialize};

use super::load::TenantLoad;
use super::noisy::{Image, ScenarioStatus};
use super::surface::SurfaceConfig;
use crate::modes::{Launcher, ModeKind};
use crate::HarnessError;

/// Prefixes listed per mode (the most distinct functions first).
pub const TOP_PREFIXES: usize = 8;

/// Counts kernel functions run by host threads while a load runs.
pub trait FunctionTracer {
    /// Why kernel functions are not measured here ("not measured: ..."),
    /// if they are not; nothing is launched then.
    fn unavailable(&self) -> Option<String>;
    /// Traces `tids` (and what they start) during `during`.
    fn trace(
        &self,
        tids: &[u32],
        during: &mut dyn FnMut() -> Result<LoadRun, HarnessError>,
    ) -> Result<(KernelFunctions, LoadRun), HarnessError>;
}

/// The real tracer: a [`HapSession`] in a tracing instance of our own.
#[derive(Debug, Clone)]
pub struct Ftrace {
    pub cfg: HapConfig,
}

impl Ftrace {
    /// This host's tracefs; measures only inside the emulated host.
    pub fn detect() -> Self {
        Ftrace {
            cfg: HapConfig::detect(),
        }
    }
}

impl FunctionTracer for Ftrace {
    fn unavailable(&self) -> Option<String> {
        if !self.cfg.own_kernel {
            return Some(isolab_isolation::hap::NotMeasured::HostKernel.to_string());
        }
        if !self.cfg.tracefs.is_dir() {
            return Some(
                isolab_isolation::hap::NotMeasured::NoTracefs {
                    path: self.cfg.tracefs.clone(),
                }
                .to_string(),
            );
        }
        None
    }

    fn trace(
        &self,
        tids: &[u32],
        during: &mut dyn FnMut() -> Result<LoadRun, HarnessError>,
    ) -> Result<(KernelFunctions, LoadRun), HarnessError> {
        let err = |e: &dyn std::error::Error| {
            HarnessError::Launch(format!("ftrace: {}", crate::chain(e)))
        };
        let session = HapSession::start(&self.cfg, tids)
            .map_err(|e| err(&e))?
            .map_err(|why| HarnessError::Unavailable(why.to_string()))?;
        let run = during();
        let found = session.finish().map_err(|e| err(&e))?;
        Ok((found, run?))
    }
}

/// The pass's result for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeKernelFunctions {
    pub mode: ModeKind,
    pub peer: bool,
    /// `unavailable` carries "not measured: <reason>" where the kernel is
    /// not ours.
    pub status: ScenarioStatus,
    /// Host threads given to `set_ftrace_pid` (later ones are followed).
    pub threads: usize,
    /// Distinct host kernel functions entered by them.
    pub distinct: usize,
    /// Function entries read.
    pub entries: u64,
    /// Entries the ring buffer dropped: when not zero, `distinct` is a
    /// lower bound.
    pub lost_events: u64,
    /// Requests answered / failed while traced.
    pub requests: usize,
    pub errors: u64,
    /// Distinct functions per name prefix (`tcp`, `kvm`, `svm`, ...), the
    /// [`TOP_PREFIXES`] largest.
    pub prefixes: Vec<(String, usize)>,
}

impl ModeKernelFunctions {
    fn new(mode: ModeKind) -> Self {
        ModeKernelFunctions {
            mode,
            peer: mode.is_peer(),
            status: ScenarioStatus::Measured,
            threads: 0,
            distinct: 0,
            entries: 0,
            lost_events: 0,
            requests: 0,
            errors: 0,
            prefixes: vec![],
        }
    }
}

/// A function's prefix: its name up to the first `_` (leading
/// underscores skipped), so `__x64_sys_read` counts under `x64`,
/// `tcp_sendmsg` under `tcp`, `svm_vcpu_run` under `svm`.
pub fn prefix(function: &str) -> &str {
    let f = function.trim_start_matches('_');
    let end = f.find(['_', '.']).unwrap_or(f.len());
    &f[..end]
}

/// The [`TOP_PREFIXES`] prefixes with the most distinct functions.
pub fn top_prefixes(functions: &[String]) -> Vec<(String, usize)> {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for f in functions {
        *by.entry(prefix(f)).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = by.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(TOP_PREFIXES);
    v
}

/// Every thread of `pids`, from `proc/PID/task` (a process that ended
/// meanwhile is skipped).
pub fn threads_of(proc: &Path, pids: &[u32]) -> Vec<u32> {
    let mut tids: Vec<u32> = pids
        .iter()
        .flat_map(|p| {
            std::fs::read_dir(proc.join(p.to_string()).join("task"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        })
        .collect();
    tids.sort_unstable();
    tids.dedup();
    tids
}

/// Runs the pass for the mode of `launcher`; never fails as a whole.
pub fn run_mode(
    launcher: &dyn Launcher,
    cfg: &SurfaceConfig,
    load: &dyn TenantLoad,
    tracer: &dyn FunctionTracer,
) -> ModeKernelFunctions {
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
    tracer: &dyn FunctionTracer,
) -> ModeKernelFunctions {
    let mut r = ModeKernelFunctions::new(launcher.kind());
    if let Some(reason) = tracer
        .unavailable()
        .or_else(|| launcher.unavailable())
        .or_else(|| image.and_then(|i| super::requests_unavailable(i)))
    {
        r.status = ScenarioStatus::Unavailable { reason };
        return r;
    }
    match traced_run(launcher, cfg, image, load, tracer, &mut r) {
        Ok(()) => {}
        Err(HarnessError::Unavailable(reason)) => r.status = ScenarioStatus::Unavailable { reason },
        Err(e) => {
            r.status = ScenarioStatus::Failed {
                error: crate::chain(&e),
            }
        }
    }
    r
}

fn traced_run(
    launcher: &dyn Launcher,
    cfg: &SurfaceConfig,
    image: Image<'_>,
    load: &dyn TenantLoad,
    tracer: &dyn FunctionTracer,
    r: &mut ModeKernelFunctions,
) -> Result<(), HarnessError> {
    super::traced_tenant_run(launcher, cfg.ready_timeout, image, load, |inst, target| {
        let tids = threads_of(Path::new("/proc"), &inst.host_pids());
        let (found, run) = tracer.trace(&tids, &mut || {
            load.run(target, LoadPattern::Sequential, cfg.requests)
        })?;
        r.threads = found.threads.len();
        r.distinct = found.distinct;
        r.entries = found.entries;
        r.lost_events = found.lost_events;
        r.prefixes = top_prefixes(&found.functions);
        r.requests = run.latencies_us.len();
        r.errors = run.errors;
        Ok(())
    })
}

/// "How it was measured" line of the pass.
pub fn method(cfg: &SurfaceConfig) -> String {
    method_for(cfg, None)
}

/// [`method`] naming the traced instance (a user's image, when given).
pub fn method_for(cfg: &SurfaceConfig, image: Option<&crate::image::ImageWorkload>) -> String {
    let (tenant, path) = super::tenant_words(image);
    format!(
        "host kernel functions (HAP, IBM nabla-measurements' method): only where the host kernel is ours (the emulated host); every thread of an `{tenant}` instance's host processes in set_ftrace_pid of a tracing instance of our own (function tracer, function-fork follows new threads) during {} sequential GET {path} after a 20-request warm-up; distinct functions entered, at function granularity; work done for the instance in other threads (softirq, kworkers, the prober's side of the network) is not counted; its own pass, after the system-call pass, so no timing comes from it",
        cfg.requests
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::isolation::load::fake::RecordingLoad;
    use crate::isolation::noisy::WARMUP_REQUESTS;
    use crate::modes::fake::{FakeLauncher, FakeRun};

    struct Scripted(Option<String>);

    impl FunctionTracer for Scripted {
        fn unavailable(&self) -> Option<String> {
            self.0.clone()
        }
        fn trace(
            &self,
            tids: &[u32],
            during: &mut dyn FnMut() -> Result<LoadRun, HarnessError>,
        ) -> Result<(KernelFunctions, LoadRun), HarnessError> {
            let run = during()?;
            let functions: Vec<String> = [
                "__x64_sys_read",
                "tcp_sendmsg",
                "tcp_recvmsg",
                "kvm_vcpu_ioctl",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            Ok((
                KernelFunctions {
                    distinct: functions.len(),
                    functions,
                    entries: 40,
                    lost_events: 0,
                    threads: tids.to_vec(),
                },
                run,
            ))
        }
    }

    #[test]
    fn functions_are_counted_in_their_own_pass_after_a_warm_up_and_the_instance_is_stopped() {
        let l = FakeLauncher::new(ModeKind::Microvm, vec![FakeRun::ready(1)]);
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
        assert_eq!((r.distinct, r.entries, r.requests), (4, 40, 7));
        assert_eq!(r.prefixes[0], ("tcp".to_owned(), 2));
        assert_eq!(l.jobs(), ["api "]);
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn where_the_kernel_is_not_ours_nothing_launches_and_the_reason_is_kept() {
        let l = FakeLauncher::new(ModeKind::Container, vec![FakeRun::ready(1)]);
        let why = isolab_isolation::hap::NotMeasured::HostKernel.to_string();
        let r = run_mode(
            &l,
            &SurfaceConfig::default(),
            &RecordingLoad::default(),
            &Scripted(Some(why.clone())),
        );
        assert!(matches!(&r.status, ScenarioStatus::Unavailable { reason } if *reason == why));
        assert!(l.jobs().is_empty());
    }

    #[test]
    fn the_real_tracer_refuses_this_hosts_kernel_without_touching_tracefs() {
        let dir = tempfile::tempdir().unwrap();
        let t = Ftrace {
            cfg: HapConfig {
                tracefs: dir.path().to_path_buf(),
                own_kernel: false,
                buffer_kb: 64,
            },
        };
        let why = t.unavailable().unwrap();
        assert!(
            why.starts_with("not measured: the host kernel is not ours"),
            "{why}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn prefixes_group_functions_by_subsystem() {
        assert_eq!(prefix("__x64_sys_read"), "x64");
        assert_eq!(prefix("tcp_sendmsg"), "tcp");
        assert_eq!(prefix("skb_release_data.isra.0"), "skb");
        assert_eq!(prefix("schedule"), "schedule");
        let f: Vec<String> = ["a_1", "b_1", "b_2", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(top_prefixes(&f)[0], ("b".to_owned(), 2));
    }

    #[test]
    fn threads_are_read_from_each_process_task_directory() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["10/task/10", "10/task/11", "20/task/20"] {
            std::fs::create_dir_all(dir.path().join(t)).unwrap();
        }
        assert_eq!(threads_of(dir.path(), &[10, 20, 30]), [10, 11, 20]);
    }
}
