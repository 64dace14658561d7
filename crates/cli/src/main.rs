//! `bench`: the isolab command line. Each subcommand lives in its own file:
//! arguments -> library config -> run (in `isolab-harness` and the crates
//! below it) -> render. Presentation (tables, JSON, exit codes) is owned
//! here; errors are classified for exit codes by the libraries' typed
//! methods (`exit.rs`).

mod args;
mod compare;
mod container;
mod demo;
mod emuhost;
mod emulated;
mod exit;
mod image;
mod paths;
mod provision;
mod signals;
mod vm;
mod vm_image;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Make the difference between a process, a container and a microVM measurable.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workload as a namespaced, cgroup-limited container on the host kernel.
    Container(container::ContainerCmd),
    /// Run a workload in a KVM microVM with its own guest kernel.
    Vm(vm::VmCmd),
    /// Compare process, container and microVM side by side (startup, memory, density).
    Compare(compare::CompareArgs),
    /// Classroom demos of the shared-kernel vs guest-kernel boundary.
    Demo(demo::DemoArgs),
    /// Run commands inside the emulated hardware-virtualisation host (QEMU TCG + nested KVM).
    Emuhost(emuhost::EmuhostCmd),
    /// Build or fetch what the microVM needs (guest kernel, initramfs); cached.
    Provision(provision::ProvisionArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `bench container`: clap would print the help; one error line
            // says what is missing and where the help is.
            let cmd: Vec<String> = std::env::args()
                .skip(1)
                .take_while(|a| !a.starts_with('-'))
                .collect();
            let cmd = std::iter::once("bench".to_owned())
                .chain(cmd)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("error: `{cmd}` needs a subcommand; see `{cmd} --help`");
            return ExitCode::from(exit::USAGE);
        }
        Err(e) if e.use_stderr() => {
            // One line: what was wrong (clap's usage and tips follow it in
            // its full rendering, which `--help` shows anyway).
            let text = e.render().to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("error: invalid arguments")
            );
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            // Help and version go to stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::Container(cmd) => container::run(cmd),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Compare(args) => compare::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Emuhost(args) => emuhost::run(args),
        Command::Provision(args) => provision::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::code_for(&err))
        }
    }
}
