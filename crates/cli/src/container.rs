//! `bench container`: argument parsing only; the work is in the libraries.
//!
//! `bench container run --workload <name> [--memory 64M] [--cpus 0.5]
//! [--pids 64] [--cpuset 0] [--hostname h] [--userns] [--json]
//! [--net [--requests N]] [--workload-bin PATH] [-- args]`
//!
//! With `--net` this invocation creates the workbench network (namespace
//! `isolab0`, bridge `isobr0`) for its own lifetime, attaches the container
//! through a veth while its init waits, probes `GET /health` on port 8080
//! from inside the workbench namespace (launch -> first response, then a
//! short request run), stops the workload and removes the veth, the lease
//! and the namespace. A second `bench ... --net` running at the same time
//! gets a clear "already in use" error rather than sharing the bridge.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use isolab_cgroups::{parse_cpus, parse_size, CgroupError, CpuSet, Limits};
use isolab_container::config::WORKLOADS;
use isolab_container::{ContainerConfig, ContainerError, NetworkHook, Outcome};
use isolab_net::{ProbeConfig, VethAttachment, Workbench, WorkbenchConfig, WorkbenchError};

use crate::exit;

/// Run workloads as namespaced, cgroup-limited containers.
#[derive(Debug, clap::Args)]
pub struct ContainerCmd {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Run one workload in a container and report exit, timings, memory, CPU.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Workload mode: noop, api, worker, cache, hog, forkloop, probe.
    #[arg(long)]
    workload: String,
    /// Memory limit (binary suffixes: 512K, 64M, 1G).
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// CPU bandwidth in CPUs, e.g. 0.5.
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, allow_hyphen_values = true)]
    pids: Option<String>,
    /// CPUs to run on, e.g. 0 or 0-1.
    #[arg(long)]
    cpuset: Option<String>,
    /// Hostname inside the container (default isolab-<id>).
    #[arg(long)]
    hostname: Option<String>,
    /// Also create a user namespace (container root = host uid 100000).
    #[arg(long)]
    userns: bool,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    json: bool,
    /// Attach to the workbench network and probe the workload over HTTP
    /// (api or cache): time to first response and a short request run.
    #[arg(long)]
    net: bool,
    /// With --net: requests in the request/response run after the first.
    #[arg(long, default_value_t = 200, requires = "net")]
    requests: u32,
    /// The workload binary (default: `workload` next to this executable).
    #[arg(long)]
    workload_bin: Option<PathBuf>,
    /// Arguments passed to the workload.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(cmd: ContainerCmd) -> anyhow::Result<ExitCode> {
    match cmd.command {
        Sub::Run(args) => run_one(args),
    }
}

/// Turns the arguments into a config; every error here is a usage error.
fn config(args: &RunArgs) -> anyhow::Result<ContainerConfig> {
    if !WORKLOADS.contains(&args.workload.as_str()) {
        return Err(exit::usage(format!(
            "unknown workload '{}': choose one of {}",
            args.workload,
            WORKLOADS.join(", ")
        )));
    }
    let usage = |e: isolab_cgroups::units::UnitError| exit::usage(format!("{e}"));
    let memory = args
        .memory
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| exit::usage(format!("--memory: {e}")))?;
    let cpus = args
        .cpus
        .as_deref()
        .map(parse_cpus)
        .transpose()
        .map_err(|e| exit::usage(format!("--cpus: {e}")))?;
    let pids = match args.pids.as_deref() {
        None => None,
        Some(p) => match p.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(exit::usage(format!(
                    "--pids: invalid value '{p}': use a positive number of processes, e.g. 64"
                )))
            }
        },
    };
    let cpuset = args
        .cpuset
        .as_deref()
        .map(CpuSet::parse)
        .transpose()
        .map_err(|e| exit::usage(format!("--cpuset: {}", usage(e))))?;
    if let (Some(set), Some(online)) = (&cpuset, CpuSet::online(std::path::Path::new("/sys"))) {
        if !set.is_subset(&online) {
            return Err(exit::usage(format!(
                "--cpuset: CPUs {set} are not all on this host (online CPUs: {online})"
            )));
        }
    }
    if args.net && !NET_WORKLOADS.contains(&args.workload.as_str()) {
        return Err(exit::usage(format!(
            "--net probes HTTP on port {NET_PORT}: use --workload {}, not '{}'",
            NET_WORKLOADS.join(" or "),
            args.workload
        )));
    }
    if args.net && args.args.iter().any(|a| a == "--port" || a == "--bind") {
        return Err(exit::usage(format!(
            "--net needs the workload on 0.0.0.0:{NET_PORT}: drop --port/--bind from its arguments"
        )));
    }
    let workload_bin = match &args.workload_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate the bench executable")?
            .parent()
            .map(|d| d.join("workload"))
            .unwrap_or_else(|| PathBuf::from("workload")),
    };
    let mut cfg = ContainerConfig::new(workload_bin, args.workload.clone());
    cfg.args = args.args.clone();
    cfg.hostname = args.hostname.clone();
    cfg.user_namespace = args.userns;
    cfg.limits = Limits {
        memory_bytes: memory,
        cpus,
        pids,
        cpuset,
    };
    cfg.validate().map_err(|e| match e {
        ContainerError::Config(m) => exit::usage(m),
        other => exit::usage(other.to_string()),
    })?;
    Ok(cfg)
}

/// Classifies a library error for the exit code: host capability (3),
/// usage (2) or a failed run (1).
fn classify(err: ContainerError) -> anyhow::Error {
    let msg = format!("{:#}", anyhow::Error::new(err_ref(&err)));
    match &err {
        ContainerError::NotRoot | ContainerError::WorkloadBinary { .. } => exit::host(msg),
        ContainerError::Config(_) => exit::usage(msg),
        ContainerError::Cgroups(e) | ContainerError::CgroupCreate { source: e, .. } => match e {
            CgroupError::CpusetUnavailable { .. } => exit::usage(msg),
            CgroupError::Write { .. } | CgroupError::Create { .. } => anyhow::Error::new(err),
            _ => exit::host(msg),
        },
        _ => anyhow::Error::new(err),
    }
}

/// An owned copy of the message chain (anyhow needs 'static errors).
fn err_ref(err: &ContainerError) -> ChainMsg {
    let mut parts = vec![err.to_string()];
    let mut src = std::error::Error::source(err);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    ChainMsg(parts.join(": "))
}

#[derive(Debug)]
struct ChainMsg(String);
impl std::fmt::Display for ChainMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ChainMsg {}

/// Host pid of the running container's init, for the signal handler.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Interrupts received so far.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Ctrl-C / SIGTERM: first forward SIGTERM to the container (its init
/// passes it on), then SIGKILL it; the launcher's normal path tears down.
extern "C" fn on_interrupt(_sig: libc::c_int) {
    let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    let pid = TARGET.load(Ordering::SeqCst);
    if pid > 0 {
        let sig = if n == 0 { libc::SIGTERM } else { libc::SIGKILL };
        // SAFETY: kill(2) is async-signal-safe and takes no pointers.
        unsafe { libc::kill(pid, sig) };
    }
}

fn install_interrupt_handler() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches atomics and calls kill(2), both
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.context("cannot install the interrupt handler")?;
    }
    Ok(())
}

/// Workloads that answer HTTP, the only ones `--net` can probe.
const NET_WORKLOADS: &[&str] = &["api", "cache"];
/// The port api and cache listen on by default (on 0.0.0.0).
const NET_PORT: u16 = 8080;

/// Attaches the container's network namespace to the workbench bridge
/// while its init waits; keeps the veth (and so the lease) until dropped.
#[derive(Debug)]
struct VethHook<'a> {
    workbench: &'a Workbench,
    attached: Mutex<Option<VethAttachment>>,
}

impl NetworkHook for VethHook<'_> {
    fn attach(&self, pid: i32) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let veth = self.workbench.attach_veth_pid(pid, "eth0")?;
        *self.attached.lock().unwrap_or_else(|e| e.into_inner()) = Some(veth);
        Ok(())
    }
}

impl VethHook<'_> {
    fn addr(&self) -> Option<Ipv4Addr> {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(VethAttachment::addr)
    }
}

/// What the probe saw, for the report (`"net"` in `--json`).
#[derive(Debug, Clone, serde::Serialize)]
struct NetReport {
    /// The container's address on the bridge, with the port.
    addr: String,
    /// Launch (start of `start_with`) -> first successful HTTP response.
    launch_to_first_response_ms: f64,
    /// Connection attempts until the first response (1 ms apart).
    attempts: u32,
    /// HTTP status of the first response.
    status: u16,
    /// The request/response run after the first response.
    requests: u32,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    throughput_rps: f64,
}

fn dur_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Maps a workbench failure to an exit code: host capability (3) or a
/// failed run (1).
fn net_error(err: WorkbenchError) -> anyhow::Error {
    let msg = format!("{:#}", anyhow::Error::new(chain_of(&err)));
    if err.is_host_problem() {
        exit::host(format!("workbench network: {msg}"))
    } else {
        anyhow::anyhow!("workbench network: {msg}")
    }
}

fn chain_of(err: &dyn std::error::Error) -> ChainMsg {
    let mut parts = vec![err.to_string()];
    let mut src = err.source();
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    ChainMsg(parts.join(": "))
}

/// Probes a started container from inside the workbench namespace.
fn probe(
    workbench: &Workbench,
    addr: SocketAddr,
    launched: Instant,
    requests: u32,
) -> anyhow::Result<NetReport> {
    let cfg = ProbeConfig::default();
    let first = workbench
        .probe_first_response(addr, launched, &cfg)
        .map_err(net_error)?
        .map_err(|e| anyhow::anyhow!("{}", chain_of(&e)))
        .with_context(|| format!("the workload at {addr} never answered GET {}", cfg.path))?;
    let run = workbench
        .probe_run(addr, requests, &cfg)
        .map_err(net_error)?
        .map_err(|e| anyhow::anyhow!("{}", chain_of(&e)))
        .with_context(|| format!("the request run against {addr} failed"))?;
    Ok(NetReport {
        addr: addr.to_string(),
        launch_to_first_response_ms: dur_ms(first.elapsed),
        attempts: first.attempts,
        status: first.status,
        requests: run.requests,
        p50_ms: dur_ms(run.p50),
        p99_ms: dur_ms(run.p99),
        max_ms: dur_ms(run.max),
        throughput_rps: run.throughput_rps,
    })
}

fn run_one(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = config(&args)?;
    install_interrupt_handler()?;
    // Owned for this invocation; dropped (namespace and every interface in
    // it removed) after the container, on every path.
    let workbench = if args.net {
        Some(Workbench::create(WorkbenchConfig::default()).map_err(net_error)?)
    } else {
        None
    };
    let hook = workbench.as_ref().map(|w| VethHook {
        workbench: w,
        attached: Mutex::new(None),
    });
    let running = isolab_container::start_with(&cfg, hook.as_ref().map(|h| h as &dyn NetworkHook))
        .map_err(classify)?;
    TARGET.store(running.pid(), Ordering::SeqCst);
    if INTERRUPTS.load(Ordering::SeqCst) > 0 {
        let _ = running.signal(nix::sys::signal::Signal::SIGTERM);
    }
    let (outcome, net) = match (&workbench, &hook) {
        (Some(w), Some(h)) => {
            let ip = h
                .addr()
                .context("the network hook ran but left no veth attached")?;
            let probed = probe(
                w,
                SocketAddr::from((ip, NET_PORT)),
                running.launched_at(),
                args.requests,
            );
            let outcome = running.stop().map_err(classify);
            TARGET.store(0, Ordering::SeqCst);
            let outcome = outcome?;
            match probed {
                Ok(net) => (outcome, Some(net)),
                Err(e) => {
                    let last = outcome.stdout.lines().last().unwrap_or("(no output)");
                    return Err(e.context(format!(
                        "container {} ended {}; its last output: {last}",
                        outcome.id, outcome.status
                    )));
                }
            }
        }
        _ => {
            let outcome = running.wait().map_err(classify);
            TARGET.store(0, Ordering::SeqCst);
            (outcome?, None)
        }
    };
    drop(hook);
    if let Some(w) = workbench {
        w.destroy().map_err(net_error)?;
    }
    // A closed stdout (`| head`) must not turn a finished run into a panic.
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        let mut v = serde_json::to_value(&outcome)?;
        if let (Some(net), Some(obj)) = (&net, v.as_object_mut()) {
            obj.insert("net".into(), serde_json::to_value(net)?);
        }
        writeln!(out, "{v}")
    } else {
        print_human(&mut out, &outcome).and_then(|()| match &net {
            Some(n) => print_net(&mut out, n),
            None => Ok(()),
        })
    };
    match printed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("cannot print the outcome"))
        }
        _ => {}
    }
    // A server stopped by our SIGTERM after answering has done its job.
    if net.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}

fn print_net(out: &mut impl Write, n: &NetReport) -> std::io::Result<()> {
    writeln!(
        out,
        "  launch -> first HTTP response {:.2} ms ({} attempts, status {}, {})",
        n.launch_to_first_response_ms, n.attempts, n.status, n.addr
    )?;
    writeln!(
        out,
        "  {} requests        p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {:.0} req/s",
        n.requests, n.p50_ms, n.p99_ms, n.max_ms, n.throughput_rps
    )
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

fn opt(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |v| v.to_string())
}

fn print_human(out: &mut impl Write, o: &Outcome) -> std::io::Result<()> {
    write!(out, "{}", o.stdout)?;
    if !o.stdout.is_empty() && !o.stdout.ends_with('\n') {
        writeln!(out)?;
    }
    let s = &o.stats;
    writeln!(out, "container {} ({}): {}", o.id, o.workload, o.status)?;
    writeln!(
        out,
        "  launch -> ready   {}",
        o.launch_to_ready_us.map_or("never signalled".into(), ms)
    )?;
    writeln!(out, "  launch -> exit    {}", ms(o.launch_to_exit_us))?;
    writeln!(
        out,
        "  memory            peak {}, current {} (cgroup {})",
        mib(s.memory_peak_bytes),
        mib(s.memory_current_bytes),
        o.cgroup_version
    )?;
    let share = match (s.cpu_usage_usec, o.launch_to_exit_us) {
        (Some(u), t) if t > 0 => format!(" ({:.0}% of one CPU)", 100.0 * u as f64 / t as f64),
        _ => String::new(),
    };
    writeln!(
        out,
        "  cpu               {} used{share}; throttled {} of {} periods, {}",
        s.cpu_usage_usec.map_or("n/a".into(), ms),
        opt(s.cpu_throttled_periods),
        opt(s.cpu_periods),
        s.cpu_throttled_usec.map_or("n/a".into(), ms)
    )?;
    writeln!(
        out,
        "  pids              peak {}, forks refused {}",
        opt(s.pids_peak),
        opt(s.pids_limit_hits)
    )?;
    writeln!(
        out,
        "  oom kills         {}{}",
        s.oom_kills,
        if o.oom_killed { " (OOM-killed)" } else { "" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn host_problems_exit_3_and_run_failures_exit_1() {
        let missing = ContainerError::CgroupCreate {
            id: "x".into(),
            source: CgroupError::ControllerMissing {
                controller: "pids".into(),
            },
        };
        let e = classify(missing);
        assert_eq!(exit::code_for(&e), exit::HOST);
        assert!(format!("{e:#}").contains("'pids' is not available"));
        assert_eq!(
            exit::code_for(&classify(ContainerError::NotRoot)),
            exit::HOST
        );
        let child = ContainerError::Child {
            step: isolab_container::ChildStep::Exec,
            source: nix::Error::ENOENT,
        };
        assert_eq!(exit::code_for(&classify(child)), exit::FAILURE);
    }

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: Sub,
    }

    fn parse(argv: &[&str]) -> anyhow::Result<ContainerConfig> {
        let t = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))?;
        let Sub::Run(a) = t.c;
        config(&a)
    }

    fn usage_msg(argv: &[&str]) -> String {
        let e = parse(argv).unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE, "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn limits_and_args_reach_the_config() {
        let c = parse(&[
            "run",
            "--workload",
            "worker",
            "--memory",
            "64M",
            "--cpus",
            "0.5",
            "--pids",
            "64",
            "--cpuset",
            "0",
            "--hostname",
            "h1",
            "--",
            "--duration-ms",
            "10",
        ])
        .unwrap();
        assert_eq!(c.limits.memory_bytes, Some(64 << 20));
        assert_eq!(c.limits.cpus, Some(0.5));
        assert_eq!(c.limits.pids, Some(64));
        assert_eq!(c.limits.cpuset.unwrap().to_string(), "0");
        assert_eq!(c.hostname.as_deref(), Some("h1"));
        assert_eq!(c.args, vec!["--duration-ms", "10"]);
        assert!(c.workload_bin.ends_with("workload"));
    }

    #[test]
    fn bad_input_is_a_usage_error_naming_the_value() {
        assert!(usage_msg(&["run", "--workload", "noop", "--memory", "64X"]).contains("'64X'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--memory", "0"])
            .contains("greater than zero"));
        assert!(usage_msg(&["run", "--workload", "noop", "--cpus", "0"]).contains("'0'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--cpus", "-1"]).contains("'-1'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--pids", "0"]).contains("'0'"));
        assert!(usage_msg(&["run", "--workload", "nope"]).contains("unknown workload 'nope'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--cpuset", "x"]).contains("'x'"));
        assert!(
            usage_msg(&["run", "--workload", "noop", "--cpuset", "4095"])
                .contains("not all on this host")
        );
        assert!(usage_msg(&["run", "--workload", "noop", "--hostname", "a b"]).contains("'a b'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--net"])
            .contains("use --workload api or cache, not 'noop'"));
        assert!(
            usage_msg(&["run", "--workload", "api", "--net", "--", "--port", "9"])
                .contains("drop --port")
        );
        assert!(parse(&["run", "--workload", "api", "--net"]).is_ok());
    }
}
