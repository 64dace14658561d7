//! `bench container`: arguments -> [`ContainerConfig`] ->
//! [`isolab_harness::single::container`] -> rendering.
//!
//! `bench container run --workload <name> [--memory 64M] [--cpus 0.5]
//! [--pids 64] [--cpuset 0] [--hostname h] [--userns] [--json]
//! [--privileged] [--no-new-privileges]
//! [--net [--requests N]] [--workload-bin PATH] [-- args]`
//!
//! The container runs under Docker's default profile (14 capabilities,
//! Docker's seccomp profile, a devices cgroup); `--privileged` asks for
//! the unconfined container on purpose, `--no-new-privileges` sets
//! no_new_privs (off by default, as in Docker).
//!
//! With `--net` the library creates the workbench network for this
//! invocation, attaches the container through a veth before its workload starts,
//! probes `GET /health` from inside the workbench namespace, stops the
//! workload and removes everything (docs/contracts.md, "Workbench network").

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use isolab_cgroups::{CpuSet, Limits};
use isolab_container::{ContainerConfig, Outcome};
use isolab_harness::net::NetReport;
use isolab_harness::single;
use isolab_harness::Workload;

use crate::{args, exit, signals};

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
    /// Workload: noop, api, worker, cache, hog, forkloop, probe, knob.
    #[arg(long, value_parser = args::workload,
          required_unless_present_any = ["image", "bundle"],
          conflicts_with_all = ["image", "bundle"])]
    workload: Option<Workload>,
    #[command(flatten)]
    image: crate::image::ImageArgs,
    /// Memory limit: 512K, 64M, 1G (a bare number is bytes).
    #[arg(long, allow_hyphen_values = true, value_parser = args::size)]
    memory: Option<u64>,
    /// CPU bandwidth in CPUs, e.g. 0.5.
    #[arg(long, allow_hyphen_values = true, value_parser = args::cpus)]
    cpus: Option<f64>,
    /// Maximum number of processes and threads.
    #[arg(long, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u64).range(1..=args::MAX_PIDS))]
    pids: Option<u64>,
    /// CPUs to run on, e.g. 0 or 0-1.
    #[arg(long)]
    cpuset: Option<String>,
    /// Hostname inside the container (default isolab-<id>).
    #[arg(long)]
    hostname: Option<String>,
    /// Also create a user namespace (container root = host uid 100000).
    #[arg(long)]
    userns: bool,
    /// Run unconfined on purpose: every capability, no seccomp filter, no
    /// device rules (the default is Docker's profile: 14 capabilities,
    /// seccomp, devices cgroup).
    #[arg(long)]
    privileged: bool,
    /// Set no_new_privs: setuid binaries and file capabilities grant
    /// nothing on execve (off by default, as in Docker).
    #[arg(long)]
    no_new_privileges: bool,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    json: bool,
    /// Attach to the workbench network and probe the workload over HTTP
    /// (api or cache): time to first response and a short request run.
    #[arg(long)]
    net: bool,
    /// With --net: requests in the request/response run after the first.
    #[arg(long, default_value_t = 200, requires = "net",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    requests: u32,
    /// The workload binary (default: `workload` next to this executable).
    #[arg(long)]
    workload_bin: Option<PathBuf>,
    /// Arguments passed to the workload (with --image/--bundle: the
    /// command that replaces the image's).
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
    let workload = args
        .workload
        .ok_or_else(|| exit::usage("name a --workload, --image or --bundle"))?;
    let cpuset = args
        .cpuset
        .as_deref()
        .map(CpuSet::parse)
        .transpose()
        .map_err(|e| exit::usage(format!("--cpuset: {e}")))?;
    if let (Some(set), Some(online)) = (&cpuset, CpuSet::online(std::path::Path::new("/sys"))) {
        if !set.is_subset(&online) {
            return Err(exit::usage(format!(
                "--cpuset: CPUs {set} are not all on this host (online CPUs: {online})"
            )));
        }
    }
    if args.net {
        single::check_net(workload, &args.args)?;
    }
    let workload_bin = match &args.workload_bin {
        Some(p) => p.clone(),
        None => {
            isolab_harness::modes::Binaries::in_dir(
                &isolab_guest_kernel::binary_dir().context("cannot locate the bench executable")?,
            )
            .workload
        }
    };
    let mut cfg = ContainerConfig::new(workload_bin, workload.name());
    cfg.args = args.args.clone();
    cfg.hostname = args.hostname.clone();
    cfg.user_namespace = args.userns;
    cfg.privileged = args.privileged;
    cfg.no_new_privileges = args.no_new_privileges;
    cfg.limits = Limits {
        memory_bytes: args.memory,
        cpus: args.cpus,
        pids: args.pids,
        cpuset,
    };
    cfg.validate().map_err(|e| exit::usage(e.to_string()))?;
    Ok(cfg)
}

fn run_one(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(image) = args.image.load(&args.args)? {
        if args.cpuset.is_some() || args.userns || args.no_new_privileges {
            return Err(exit::usage(
                "--cpuset, --userns and --no-new-privileges are not supported with --image/--bundle yet",
            ));
        }
        return crate::image::run_container(
            image,
            crate::image::ContainerRun {
                memory: args.memory,
                cpus: args.cpus,
                pids: args.pids,
                hostname: args.hostname.clone(),
                privileged: args.privileged,
                bridge: args.net,
                json: args.json,
            },
        );
    }
    let cfg = config(&args)?;
    // Up front, before anything is created: a regular file holding an ELF
    // executable (a script, a directory or a FIFO is refused here).
    isolab_container::image::check_binary(&cfg.workload_bin)
        .map_err(|e| exit::usage(format!("--workload-bin: {e}")))?;
    signals::forward_to_child()?;
    let run = single::container(&cfg, args.net.then_some(args.requests), &signals::target)?;
    // A closed stdout (`| head`) must not turn a finished run into a failure.
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        let mut v = serde_json::to_value(&run.outcome)?;
        if let (Some(net), Some(obj)) = (&run.net, v.as_object_mut()) {
            obj.insert("net".into(), serde_json::to_value(net)?);
        }
        writeln!(out, "{v}")
    } else {
        print_human(&mut out, &run.outcome).and_then(|()| match &run.net {
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
    if run.net.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(run.outcome.exit_code.clamp(0, 255) as u8))
}

/// The probe's lines under a human-readable outcome (container and VM).
pub fn print_net(out: &mut impl Write, n: &NetReport) -> std::io::Result<()> {
    let via = n
        .tap
        .as_ref()
        .map_or(String::new(), |t| format!(" via {t}"));
    writeln!(
        out,
        "  launch -> first HTTP response {:.2} ms ({} attempts, status {}, {}{via})",
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

/// The launch phases, in order, one line: where launch -> ready went.
fn print_phases(out: &mut impl Write, p: &isolab_container::LaunchPhases) -> std::io::Result<()> {
    let parts: Vec<String> = p
        .named()
        .iter()
        .filter(|(name, _)| *name != "workload ready" || p.workload_ready_us.is_some())
        .map(|(name, us)| format!("{name} {:.2}", *us as f64 / 1000.0))
        .collect();
    writeln!(out, "  launch phases ms  {}", parts.join(", "))
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
    print_phases(out, &o.phases)?;
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

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: Sub,
    }

    fn parse(argv: &[&str]) -> anyhow::Result<ContainerConfig> {
        let t = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
            .map_err(|e| exit::usage(e.to_string()))?;
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
        assert!(!c.privileged && !c.no_new_privileges, "Docker's defaults");
    }

    #[test]
    fn security_flags_reach_the_config() {
        let c = parse(&["run", "--workload", "probe", "--privileged"]).unwrap();
        assert!(c.privileged && !c.no_new_privileges);
        assert_eq!(c.security().name, "privileged");
        let c = parse(&["run", "--workload", "probe", "--no-new-privileges"]).unwrap();
        assert!(!c.privileged && c.no_new_privileges);
        assert_eq!(c.security().summary().capabilities, Some(14));
    }

    #[test]
    fn bad_input_is_a_usage_error_naming_the_value() {
        assert!(usage_msg(&["run", "--workload", "noop", "--memory", "64X"]).contains("'64X'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--memory", "0"])
            .contains("greater than zero"));
        assert!(usage_msg(&["run", "--workload", "noop", "--cpus", "0"]).contains("'0'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--cpus", "-1"]).contains("'-1'"));
        assert!(usage_msg(&["run", "--workload", "noop", "--cpus", "1e12"]).contains("at most"));
        assert!(usage_msg(&["run", "--workload", "noop", "--pids", "0"]).contains("'0'"));
        assert!(
            usage_msg(&["run", "--workload", "noop", "--pids", "99999999999"])
                .contains("99999999999")
        );
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
        assert!(
            parse(&["run", "--workload", "knob"]).is_ok(),
            "every workload runs"
        );
    }

    #[test]
    fn the_launch_phases_are_printed_in_order() {
        let mut p = isolab_container::LaunchPhases {
            prepare_us: 150,
            clone_us: 1_250,
            rootfs_us: 900,
            hardening_us: 300,
            ..Default::default()
        };
        let line = |p: &isolab_container::LaunchPhases| {
            let mut o = vec![];
            print_phases(&mut o, p).unwrap();
            String::from_utf8(o).unwrap()
        };
        let l = line(&p);
        assert!(
            l.starts_with(
                "  launch phases ms  prepare 0.15, instance dir 0.00, cgroup 0.00, clone 1.25,"
            ),
            "{l}"
        );
        assert!(
            l.contains("rootfs 0.90") && l.contains("hardening 0.30"),
            "{l}"
        );
        assert!(l.trim_end().ends_with("exec 0.00"), "never ready: {l}");
        p.workload_ready_us = Some(2_000);
        assert!(line(&p).trim_end().ends_with("workload ready 2.00"));
    }
}
