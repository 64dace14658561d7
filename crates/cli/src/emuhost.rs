//! `bench emuhost`: drive the emulated hardware-virtualisation host directly
//! (`run`, `info`), and the entry point other subcommands use to run
//! `bench` itself inside it ([`run_bench_inside`], for `--host emulated`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use isolab_emuhost::{
    cache::EmuhostCache, info, interrupt, parse_memory_mib, EmuhostError, EmulatedHost, FileMap,
    HostConfig, Invocation, Outcome, RunError, EMULATED_HOST_LABEL,
};

use crate::exit;

/// Arguments of `bench emuhost`.
#[derive(Debug, clap::Args)]
pub struct EmuhostCmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Boot the emulated host, run a command in it, pass its exit status through.
    Run(RunArgs),
    /// Show what is cached (kernel, base images) and which tools are present.
    Info(InfoArgs),
}

/// Options of the emulated host's machine, shared with `--host emulated`.
#[derive(Debug, Clone, clap::Args)]
pub struct HostOpts {
    /// Guest RAM of the emulated host (e.g. 2G, 1536M).
    #[arg(long, default_value = "2G", value_name = "SIZE")]
    pub memory: String,
    /// Virtual CPUs of the emulated host.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Seconds before the emulated host is killed, boot included.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,
    /// Also put the host's qemu-system-x86_64 (libraries, firmware) inside,
    /// as the reference microVM peer.
    #[arg(long)]
    pub with_qemu: bool,
    /// Install missing Debian packages (qemu-system-x86, busybox-static) with apt.
    #[arg(long)]
    pub install: bool,
    /// Ask apt for the newest cloud kernel even if one is cached.
    #[arg(long)]
    pub refresh_kernel: bool,
}

impl Default for HostOpts {
    fn default() -> Self {
        Self {
            memory: "2G".into(),
            smp: 1,
            timeout: 600,
            with_qemu: false,
            install: false,
            refresh_kernel: false,
        }
    }
}

impl HostOpts {
    /// The library config, or a usage error naming the bad value.
    pub fn to_config(&self) -> anyhow::Result<HostConfig> {
        let memory_mib = parse_memory_mib(&self.memory).ok_or_else(|| {
            exit::usage(format!(
                "--memory {:?} is not a size: use MiB or a suffix, e.g. 2G or 1536M",
                self.memory
            ))
        })?;
        let config = HostConfig {
            memory_mib,
            smp: self.smp,
            timeout_s: self.timeout,
            include_qemu: self.with_qemu,
            allow_install: self.install,
            refresh_kernel: self.refresh_kernel,
            ..HostConfig::default()
        };
        config
            .validate()
            .map_err(|e| exit::usage(format!("{e} (see bench emuhost run --help)")))?;
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Copy a host file or directory in: HOST:GUEST (GUEST absolute). Repeatable.
    #[arg(long = "file", value_name = "HOST:GUEST")]
    files: Vec<String>,
    #[command(flatten)]
    host: HostOpts,
    /// The command to run inside (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EmuhostCmd) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Run(a) => run_command(a),
        Action::Info(a) => show_info(a),
    }
}

/// Maps a library error to the CLI's exit-code classes.
fn classify(err: EmuhostError) -> anyhow::Error {
    let usage = err.is_usage_problem();
    let host = err.is_host_problem();
    let text = format!("{:#}", anyhow::Error::new(err));
    if usage {
        exit::usage(text)
    } else if host {
        exit::host(text)
    } else {
        anyhow::anyhow!(text)
    }
}

fn prepare(config: HostConfig) -> anyhow::Result<EmulatedHost> {
    interrupt::install_handlers().context("Cannot install signal handlers")?;
    eprintln!("emuhost: preparing (first run downloads the Debian cloud kernel)...");
    EmulatedHost::prepare(config).map_err(classify)
}

/// Runs the invocation, streaming output to stdout; the exit code is the
/// command's status (130 when interrupted).
fn boot(host: &EmulatedHost, inv: &Invocation) -> anyhow::Result<(ExitCode, Option<Outcome>)> {
    let stdout = std::io::stdout();
    let result = host.run(inv, &mut |line| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    match result {
        Ok(outcome) => {
            let code = u8::try_from(outcome.status).unwrap_or(exit::FAILURE);
            Ok((ExitCode::from(code), Some(outcome)))
        }
        Err(EmuhostError::Run(RunError::Interrupted)) => {
            // As a shell reports a command ended by SIGINT.
            eprintln!("emuhost: interrupted; QEMU stopped");
            Ok((ExitCode::from(INTERRUPTED), None))
        }
        Err(e) => Err(classify(e)),
    }
}

/// Exit code after an interruption (128 + SIGINT).
const INTERRUPTED: u8 = 130;

fn report(outcome: Option<&Outcome>) {
    let Some(outcome) = outcome else {
        return;
    };
    let to_command = outcome
        .to_command
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    eprintln!(
        "emuhost: status {}, start to command {}, total {:.2} s ({EMULATED_HOST_LABEL})",
        outcome.status,
        to_command,
        outcome.elapsed.as_secs_f64()
    );
}

fn run_command(a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for spec in &a.files {
        let map = FileMap::parse(spec).ok_or_else(|| {
            exit::usage(format!(
                "--file {spec:?} is not HOST:GUEST with an absolute GUEST path, e.g. ./data:/data"
            ))
        })?;
        if !map.host.exists() {
            return Err(exit::usage(format!(
                "--file {spec:?}: {} does not exist",
                map.host.display()
            )));
        }
        files.push(map);
    }
    let config = a.host.to_config()?;
    let host = prepare(config)?;
    let inv = Invocation {
        command: a.command,
        env: Vec::new(),
        files,
    };
    let (code, outcome) = boot(&host, &inv)?;
    report(outcome.as_ref());
    Ok(code)
}

/// Runs `bench <inner_args>` inside the emulated host with this `bench`,
/// its sibling binaries and the built guest kernels; output streams to
/// stdout between two label lines, and the inner `bench` sees
/// `ISOLAB_EMULATED_HOST=1`. The exit code is the inner `bench`'s.
/// For `bench vm run --host emulated` and `bench compare --host emulated`:
/// pass the arguments without `--host emulated` ([`strip_host_flag`]).
#[allow(dead_code)] // wired by `bench vm` / `bench compare`
pub fn run_bench_inside(inner_args: &[String], opts: &HostOpts) -> anyhow::Result<ExitCode> {
    let host = prepare(opts.to_config()?)?;
    let cache_root = isolab_emuhost::cache::cache_root().map_err(|e| classify(e.into()))?;
    let bin_dir = isolab_emuhost::bench::binary_dir().map_err(|e| classify(e.into()))?;
    let inv = isolab_emuhost::bench::bench_invocation(inner_args, &bin_dir, &cache_root)
        .map_err(|e| classify(e.into()))?;
    println!("== {EMULATED_HOST_LABEL} ==");
    let result = boot(&host, &inv);
    println!("== end of emulated host output ({EMULATED_HOST_LABEL}) ==");
    let (code, outcome) = result?;
    report(outcome.as_ref());
    Ok(code)
}

/// The arguments with `--host emulated` / `--host=emulated` removed.
#[allow(dead_code)] // used by `bench vm` / `bench compare` once wired
pub fn strip_host_flag(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--host" && args.get(i + 1).is_some_and(|v| v == "emulated") {
            i += 2;
            continue;
        }
        if args[i] == "--host=emulated" {
            i += 1;
            continue;
        }
        out.push(args[i].clone());
        i += 1;
    }
    out
}

fn show_info(a: InfoArgs) -> anyhow::Result<ExitCode> {
    let cache = EmuhostCache::from_env().map_err(|e| classify(e.into()))?;
    let info = info::gather(&cache);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("cache:    {}", info.cache_dir.display());
    match &info.kernel {
        Some(k) => println!(
            "kernel:   {} {} (release {})",
            k.package, k.version, k.release
        ),
        None => println!("kernel:   not cached (the first `bench emuhost run` downloads it)"),
    }
    if info.base_images.is_empty() {
        println!("base:     none cached");
    }
    for (path, size) in &info.base_images {
        println!(
            "base:     {} ({:.1} MiB)",
            path.display(),
            *size as f64 / (1024.0 * 1024.0)
        );
    }
    match &info.qemu {
        Some((p, v)) => println!("qemu:     {} ({v})", p.display()),
        None => println!("qemu:     missing: apt-get install qemu-system-x86"),
    }
    match &info.busybox {
        Some((p, true)) => println!("busybox:  {} (static)", p.display()),
        Some((p, false)) => println!(
            "busybox:  {} is dynamic: apt-get install busybox-static",
            p.display()
        ),
        None => println!("busybox:  missing: apt-get install busybox-static"),
    }
    println!("label:    {EMULATED_HOST_LABEL}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_flag_is_removed_in_both_spellings() {
        let a: Vec<String> = [
            "vm",
            "run",
            "--host",
            "emulated",
            "--workload",
            "noop",
            "--host=emulated",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(strip_host_flag(&a), ["vm", "run", "--workload", "noop"]);
    }

    #[test]
    fn bad_memory_is_a_usage_error_naming_the_value() {
        let opts = HostOpts {
            memory: "lots".into(),
            ..HostOpts::default()
        };
        let e = opts.to_config().unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE);
        assert!(e.to_string().contains("\"lots\""), "{e}");
        let opts = HostOpts {
            smp: 0,
            ..HostOpts::default()
        };
        assert_eq!(exit::code_for(&opts.to_config().unwrap_err()), exit::USAGE);
    }
}
