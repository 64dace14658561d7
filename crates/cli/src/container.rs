//! `bench container`: argument parsing only; the work is in the libraries.
//!
//! `bench container run --workload <name> [--memory 64M] [--cpus 0.5]
//! [--pids 64] [--cpuset 0] [--hostname h] [--userns] [--json]
//! [--workload-bin PATH] [-- args]`

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use anyhow::Context;
use isolab_cgroups::{parse_cpus, parse_size, CgroupError, CpuSet, Limits};
use isolab_container::config::WORKLOADS;
use isolab_container::{ContainerConfig, ContainerError, Outcome};

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

fn run_one(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = config(&args)?;
    install_interrupt_handler()?;
    let running = isolab_container::start(&cfg).map_err(classify)?;
    TARGET.store(running.pid(), Ordering::SeqCst);
    if INTERRUPTS.load(Ordering::SeqCst) > 0 {
        let _ = running.signal(nix::sys::signal::Signal::SIGTERM);
    }
    let outcome = running.wait().map_err(classify);
    TARGET.store(0, Ordering::SeqCst);
    let outcome = outcome?;
    // A closed stdout (`| head`) must not turn a finished run into a panic.
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        writeln!(out, "{}", serde_json::to_string(&outcome)?)
    } else {
        print_human(&mut out, &outcome)
    };
    match printed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("cannot print the outcome"))
        }
        _ => {}
    }
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
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
    }
}
