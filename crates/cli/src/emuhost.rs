//! `bench emuhost`: drive the emulated hardware-virtualisation host directly
//! (`run`, `info`). Running `bench` itself inside it (`--host emulated`) is
//! [`crate::emulated`].

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use isolab_emuhost::{
    cache::EmuhostCache, info, interrupt, EmuhostError, EmulatedHost, FileMap, HostConfig,
    Invocation, Outcome, RunError, EMULATED_HOST_LABEL,
};

use crate::{args, exit};

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

/// Options of the emulated host's machine.
#[derive(Debug, Clone, clap::Args)]
pub struct HostOpts {
    /// Guest RAM of the emulated host in whole MiB (e.g. 2G, 1536M; a bare number is bytes).
    #[arg(long, default_value = "2G", value_name = "SIZE", value_parser = args::mib)]
    pub memory: u64,
    /// Virtual CPUs of the emulated host.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub smp: u32,
    /// Seconds before the emulated host is killed, boot included.
    #[arg(long, default_value_t = 600, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
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
            memory: 2048,
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
        let memory_mib = u32::try_from(self.memory)
            .map_err(|_| exit::usage(format!("--memory {} MiB is too large", self.memory)))?;
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

fn prepare(config: HostConfig) -> anyhow::Result<EmulatedHost> {
    interrupt::install_handlers().context("Cannot install signal handlers")?;
    eprintln!("emuhost: preparing (first run downloads the Debian cloud kernel)...");
    Ok(EmulatedHost::prepare(config)?)
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
        Err(e) => Err(e.into()),
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

fn show_info(a: InfoArgs) -> anyhow::Result<ExitCode> {
    let cache = EmuhostCache::from_env().map_err(EmuhostError::from)?;
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
    fn bad_memory_is_a_usage_error_naming_the_value() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct T {
            #[command(flatten)]
            host: HostOpts,
        }
        for bad in ["lots", "1536", "0"] {
            let e = T::try_parse_from(["t", "--memory", bad]).unwrap_err();
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        assert_eq!(
            T::try_parse_from(["t", "--memory", "1536M"])
                .unwrap()
                .host
                .memory,
            1536
        );
        assert!(T::try_parse_from(["t", "--smp", "0"]).is_err());
        let opts = HostOpts {
            memory: 16,
            ..HostOpts::default()
        };
        assert_eq!(exit::code_for(&opts.to_config().unwrap_err()), exit::USAGE);
    }
}
