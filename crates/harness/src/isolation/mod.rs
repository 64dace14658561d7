//! The isolation half of `bench compare`: scenarios that measure what the
//! price of a container or a VM buys, on instances launched through the
//! same [`crate::modes`] launchers as the cost half, with the instruments
//! of `isolab-isolation`.
//!
//! - [`noisy`]: the noisy-neighbour scenario (tenant latency alone and next
//!   to a `cpu`, `memory` or `fork` neighbour of the same mode; the
//!   neighbour's fate).
//! - [`load`]: the tenant's request runs through the one HTTP probe.
//! - [`watch`]: a neighbour's cgroup counters, sampled while it runs.
//! - [`posture`]: the security-posture pass (workload side from `workload
//!   probe`, host side from the instance's host processes).
//! - [`surface`]: the attack-surface pass (host system calls serving an
//!   instance during a request run, by the `isolab-trace` process).
//! - [`hap`]: the kernel-function pass (distinct host kernel functions
//!   serving an instance, by ftrace; only where the kernel is ours).

pub mod hap;
pub mod load;
pub mod noisy;
pub mod posture;
pub mod surface;
pub mod watch;

pub use hap::ModeKernelFunctions;
pub use isolab_isolation::neighbour::NeighbourKind;
pub use isolab_isolation::neighbour::UnknownNeighbour;
pub use noisy::{HostFacts, Limits, ModeNeighbours, NeighbourConfig};
pub use posture::ModePosture;
pub use surface::{ModeSurface, SurfaceConfig};

use serde::{Deserialize, Serialize};

use crate::image::{ImageWorkload, ReadyRule};
use crate::modes::{Context, HttpTarget, Instance, ModeKind};

/// How long the isolation half of `bench compare` measures: `short` is the
/// default run's (so cost and isolation fit in one run of the default
/// length), `full` is `--isolation`'s. A flag given explicitly
/// (`--neighbour-requests`, `--neighbour-window-ms`, `--surface-requests`)
/// overrides the budget's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    Short,
    Full,
}

impl Budget {
    /// Requests per tenant run (sequential, and again concurrent).
    pub fn neighbour_requests(self) -> usize {
        match self {
            Budget::Short => 50,
            Budget::Full => 400,
        }
    }

    /// Least time the tenant runs beside each neighbour, ms.
    pub fn window_ms(self) -> u64 {
        match self {
            Budget::Short => 100,
            Budget::Full => 1000,
        }
    }

    /// Most time the tenant runs beside a neighbour whose limit has not
    /// acted yet, ms, for a window of `window_ms`.
    pub fn window_max_ms(self, window_ms: u64) -> u64 {
        match self {
            Budget::Short => (window_ms * 4).max(600),
            Budget::Full => (window_ms * 10).max(10_000),
        }
    }

    /// Requests sent while the attack-surface pass traces.
    pub fn surface_requests(self) -> usize {
        match self {
            Budget::Short => 30,
            Budget::Full => 100,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Budget::Short => "short",
            Budget::Full => "full",
        }
    }
}

/// Progress of the isolation scenarios (the caller draws it).
#[derive(Debug)]
pub enum Event<'a> {
    /// A stage of `n` steps begins.
    Start(&'a str, usize),
    /// `done` steps are finished; the text says what runs now.
    Step(usize, &'a str),
    Finish,
}

/// Why the request-driven scenarios (noisy neighbour, host system calls)
/// cannot run on `image`, if they cannot: they send HTTP requests, so they
/// need its ready rule to name the port and path (`--ready http:PORT/PATH`).
pub fn requests_unavailable(image: &ImageWorkload) -> Option<String> {
    match image.ready {
        ReadyRule::Http { .. } => None,
        ref other => Some(format!(
            "the request-driven scenarios need an HTTP ready rule (--ready http:PORT/PATH); {} is ready by --ready {other}",
            image.short_name()
        )),
    }
}

/// Where the tenant's request runs go: a user's image at its HTTP rule's
/// port, where its readiness was probed; else the built-in workload's HTTP
/// The run both tracing passes (host system calls, host kernel functions)
/// make: launch the tenant (`image`, else the api), wait until it answers,
/// warm it up, then `traced(instance, target)` around the measured request
/// run, and stop it whatever happened.
pub(crate) fn traced_tenant_run<T>(
    launcher: &dyn crate::modes::Launcher,
    ready_timeout: std::time::Duration,
    image: noisy::Image<'_>,
    load: &dyn load::TenantLoad,
    traced: impl FnOnce(&dyn Instance, Option<&HttpTarget>) -> Result<T, crate::HarnessError>,
) -> Result<T, crate::HarnessError> {
    let spec = crate::modes::InstanceSpec {
        image: image.cloned(),
        ..crate::modes::InstanceSpec::measured(crate::Workload::Api)
    };
    let mut inst = launcher.launch(&spec)?;
    let launched = inst.launched_at();
    let result = (|| {
        inst.wait_ready(ready_timeout)?;
        let target = tenant_target(inst.as_ref(), image.map(|i| &**i));
        // An image's ready rule was its first HTTP answer already.
        if let (Some(h), None) = (&target, image) {
            crate::net::first_response(&h.target, launched, launched + ready_timeout)?;
        }
        load.run(
            target.as_ref(),
            isolab_isolation::interference::LoadPattern::Sequential,
            noisy::WARMUP_REQUESTS,
        )?;
        traced(inst.as_ref(), target.as_ref())
    })();
    let stopped = inst.stop();
    let value = result?;
    stopped.map(|_| value)
}

/// service.
pub fn tenant_target(inst: &dyn Instance, image: Option<&ImageWorkload>) -> Option<HttpTarget> {
    let Some(image) = image else {
        return inst.http_target();
    };
    let ReadyRule::Http { port, .. } = image.ready else {
        return None;
    };
    let mut target = inst.image_reach()?;
    target.addr.set_port(port);
    Some(HttpTarget {
        target,
        after_ready: false,
    })
}

/// The request load for a tenant: `GET /health` for the built-in api, the
/// HTTP rule's path for a user's image.
pub fn tenant_load(image: Option<&ImageWorkload>) -> Box<dyn load::TenantLoad> {
    match image.map(|i| &i.ready) {
        Some(ReadyRule::Http { path, .. }) => Box::new(load::ProbeLoadAt(path.clone())),
        _ => Box::new(load::ProbeLoad),
    }
}

/// The noisy-neighbour scenario for every mode in `modes`, in order, with
/// `image` as the tenant when given; stops early on Ctrl-C with what was
/// measured.
pub fn run_modes(
    ctx: &Context,
    modes: &[ModeKind],
    cfg: &NeighbourConfig,
    image: noisy::Image<'_>,
    progress: &mut dyn FnMut(Event),
) -> Vec<ModeNeighbours> {
    let host = HostFacts::capture();
    let load = tenant_load(image.map(|i| &**i));
    let mut out = vec![];
    for &kind in modes {
        let launcher = ctx.launcher(kind);
        let title = format!("neighbours {}", kind.name());
        progress(Event::Start(&title, cfg.kinds.len()));
        out.push(noisy::run_mode_for(
            launcher.as_ref(),
            cfg,
            image,
            load.as_ref(),
            &host,
            &mut |done, msg| progress(Event::Step(done, msg)),
        ));
        progress(Event::Finish);
        if crate::interrupted() {
            break;
        }
    }
    out
}

/// The attack-surface pass for every mode in `modes`, in order, tracing
/// `image` when given.
pub fn surface_modes(
    ctx: &Context,
    modes: &[ModeKind],
    cfg: &SurfaceConfig,
    image: noisy::Image<'_>,
    progress: &mut dyn FnMut(Event),
) -> Vec<ModeSurface> {
    let load = tenant_load(image.map(|i| &**i));
    let tracer = surface::TraceProcess {
        binary: ctx
            .bins
            .workload
            .parent()
            .map(|d| d.join(surface::TRACE_BIN))
            .unwrap_or_default(),
    };
    one_step_per_mode(ctx, modes, "syscalls", progress, |l| {
        surface::run_mode_for(l, cfg, image, load.as_ref(), &tracer)
    })
}

/// `pass` on every mode in `modes`, in order, each one progress step
/// titled `what <mode>`; stops after the mode an interrupt arrived in.
fn one_step_per_mode<T>(
    ctx: &Context,
    modes: &[ModeKind],
    what: &str,
    progress: &mut dyn FnMut(Event),
    mut pass: impl FnMut(&dyn crate::modes::Launcher) -> T,
) -> Vec<T> {
    let mut out = vec![];
    for &kind in modes {
        let launcher = ctx.launcher(kind);
        let title = format!("{what} {}", kind.name());
        progress(Event::Start(&title, 1));
        out.push(pass(launcher.as_ref()));
        progress(Event::Finish);
        if crate::interrupted() {
            break;
        }
    }
    out
}

/// The kernel-function pass (HAP) for every mode in `modes`, in order, of
/// `image` when given; where the kernel is not ours every mode says why and
/// nothing launches.
pub fn kernel_modes(
    ctx: &Context,
    modes: &[ModeKind],
    cfg: &SurfaceConfig,
    image: noisy::Image<'_>,
    progress: &mut dyn FnMut(Event),
) -> Vec<ModeKernelFunctions> {
    let tracer = hap::Ftrace::detect();
    let load = tenant_load(image.map(|i| &**i));
    one_step_per_mode(ctx, modes, "kernel functions", progress, |l| {
        hap::run_mode_for(l, cfg, image, load.as_ref(), &tracer)
    })
}

/// The posture pass for every mode in `modes`, in order, of `image` when
/// given.
pub fn posture_modes(
    ctx: &Context,
    modes: &[ModeKind],
    ready_timeout: std::time::Duration,
    image: noisy::Image<'_>,
    progress: &mut dyn FnMut(Event),
) -> Vec<ModePosture> {
    one_step_per_mode(ctx, modes, "posture", progress, |l| match image {
        None => posture::run_mode(l, ready_timeout),
        Some(i) => posture::run_image_mode(l, ready_timeout, i),
    })
}

/// "How it was measured" line of the posture pass.
pub const POSTURE_METHOD: &str = "posture: workload side from `workload probe` run in each mode (capabilities, no_new_privs, seccomp, user-namespace mapping, writable /proc/sys, device nodes, host paths; same kernel as the host by boot id); host side from /proc/PID/status of an `api` instance's host processes (effective capabilities that count over the host kernel: those in the initial user namespace)";

/// The tenant's name and the path its requests get, for the method lines:
/// `api` and `/health`, or a user's image and its HTTP rule's path.
pub(crate) fn tenant_words(image: Option<&ImageWorkload>) -> (String, String) {
    match image {
        None => ("api".into(), "/health".into()),
        Some(i) => (
            i.short_name().to_owned(),
            match &i.ready {
                ReadyRule::Http { path, .. } => path.clone(),
                _ => "/".into(),
            },
        ),
    }
}

/// "How it was measured" line of the attack-surface pass.
pub fn surface_method(cfg: &SurfaceConfig) -> String {
    surface_method_for(cfg, None)
}

/// [`surface_method`] naming the traced instance (a user's image, when
/// given).
pub fn surface_method_for(cfg: &SurfaceConfig, image: Option<&ImageWorkload>) -> String {
    let (tenant, path) = tenant_words(image);
    format!(
        "host system calls: every host process and thread of an `{tenant}` instance per mode (workload, container init, runtime, monitor threads) seized by the isolab-trace process (ptrace seize, following clones/forks) during {} sequential GET {path} after a 20-request warm-up; calls counted at syscall entry by name; its own pass, so no timing comes from it",
        cfg.requests
    )
}

/// "How it was measured" lines of the noisy-neighbour scenario.
pub fn method_lines(cfg: &NeighbourConfig) -> Vec<String> {
    method_lines_for(cfg, None)
}

/// [`method_lines`] naming the tenant (a user's image, when given).
pub fn method_lines_for(cfg: &NeighbourConfig, image: Option<&ImageWorkload>) -> Vec<String> {
    let l = &cfg.limits;
    let (tenant, path) = tenant_words(image);
    let concurrent = if cfg.concurrent_requests > 0 && cfg.connections > 0 {
        format!(
            " and {} over {} concurrent connections",
            cfg.concurrent_requests, cfg.connections
        )
    } else {
        String::new()
    };
    vec![
        format!(
            "noisy neighbour: a tenant `{tenant}` instance per mode; {} sequential GET {path} on one connection{concurrent}, repeated and pooled for {} ms alone, then beside a neighbour instance of the same mode ({}) until the neighbour ran as long and the limit matching its kind acted (at most {} ms); the alone rounds are repeated before every neighbour",
            cfg.sequential_requests,
            cfg.window_ms,
            cfg.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
            cfg.window_max_ms.max(cfg.window_ms),
        ),
        format!(
            "neighbour limits, equal across modes: {} CPU, {} MiB, {} pids (container cgroup; microVM vCPUs and guest RAM); the plain process has none, so the harness caps its hog at MemAvailable/{} and its fork loop at {} processes",
            l.cpus,
            l.memory_bytes >> 20,
            l.pids,
            noisy::PROCESS_HOG_FRACTION,
            l.pids
        ),
        format!(
            "interference ratio: tenant p99 with / p99 alone, 95% CI by percentile bootstrap ({} resamples, fixed seed); neighbour fate from its cgroup (cpu.stat nr_throttled, oom_kill, pids.events max), sampled every {} ms while it runs and read at its end, and its exit",
            isolab_isolation::interference::BOOTSTRAP_RESAMPLES,
            watch::INTERVAL.as_millis()
        ),
    ]
}

/// The `bench compare` arguments that ask for `cfg` (for the run inside
/// the emulated host).
pub fn cli_args(cfg: &NeighbourConfig) -> Vec<String> {
    let kinds: Vec<&str> = cfg.kinds.iter().map(|k| k.name()).collect();
    vec![
        "--neighbours".into(),
        kinds.join(","),
        "--neighbour-cpus".into(),
        cfg.limits.cpus.to_string(),
        "--neighbour-memory".into(),
        format!("{}K", cfg.limits.memory_bytes >> 10),
        "--neighbour-pids".into(),
        cfg.limits.pids.to_string(),
        "--neighbour-requests".into(),
        cfg.sequential_requests.to_string(),
        "--neighbour-connections".into(),
        cfg.connections.to_string(),
        "--neighbour-window-ms".into(),
        cfg.window_ms.to_string(),
    ]
}
