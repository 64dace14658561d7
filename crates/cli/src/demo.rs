//! `bench demo`: arguments -> the demos and the modes' launchers ->
//! [`isolab_harness::demo::run_demo`] -> rendering. Any registered mode or
//! peer can be a column (`--modes process,container,microvm,runc`).
//!
//! ```text
//! bench demo list
//! bench demo <name>|all [--modes process,container,microvm] [--format table|markdown]
//!                       [--host native|emulated] [--out FILE]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use isolab_harness::demo::{
    render_markdown, render_table, run_demo_with, Demo, DemoReport, DemoSetup, DEMOS,
};
use isolab_harness::modes::{Launcher, ModeKind, VmHost};
use isolab_harness::Workload;

use crate::{exit, paths};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text tables with findings and explanations.
    Table,
    /// A teacher's handout: tables, explanations and knowledge-check questions.
    Markdown,
}

/// Where the microVM column runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Host {
    /// This host's /dev/kvm.
    Native,
    /// The emulated hardware-virtualisation host (labelled: timings not comparable).
    Emulated,
}

/// Arguments of `bench demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// `list`, `all`, or a demo name (see `bench demo list`).
    #[arg(value_name = "NAME")]
    name: String,
    /// Columns to run, comma-separated: process, container, microvm.
    #[arg(long, default_value = "process,container,microvm")]
    modes: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Where the microVM column runs.
    #[arg(long, value_enum, default_value = "native")]
    host: Host,
    /// Write the output to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Parses `--modes`: known names, no repeats, at least one.
fn parse_modes(s: &str) -> anyhow::Result<Vec<ModeKind>> {
    let mut modes = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let m = ModeKind::parse(part).ok_or_else(|| {
            exit::usage(format!(
                "--modes: unknown mode '{}'; use a comma-separated list of {}, {}",
                part.trim(),
                ModeKind::names(false),
                ModeKind::names(true)
            ))
        })?;
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    if modes.is_empty() {
        return Err(exit::usage(
            "--modes is empty; use a comma-separated list of process, container, microvm",
        ));
    }
    Ok(modes)
}

fn resolve(name: &str) -> anyhow::Result<Vec<&'static Demo>> {
    if name == "all" {
        return Ok(DEMOS.iter().collect());
    }
    Demo::find(name).map(|d| vec![d]).ok_or_else(|| {
        exit::usage(format!(
            "unknown demo '{name}'; run `bench demo list` to see the demos"
        ))
    })
}

fn list() -> String {
    let w = DEMOS.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let mut s =
        String::from("Demos (run one with `bench demo <name>`, all with `bench demo all`):\n");
    for d in DEMOS {
        s.push_str(&format!("  {:<w$}  {}\n", d.name, d.summary));
        if !d.aliases.is_empty() {
            s.push_str(&format!("  {:<w$}    also: {}\n", "", d.aliases.join(", ")));
        }
    }
    s
}

fn emit(out: &Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(p) => paths::write_nofollow(p, text).with_context(|| format!("write {}", p.display())),
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes()).context("write to stdout")?;
            o.flush().context("write to stdout")
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.out {
        paths::output_file("--out", p)?;
    }
    if args.name == "list" {
        emit(&args.out, &list())?;
        return Ok(ExitCode::SUCCESS);
    }
    // Usage errors first: nothing below has run yet.
    let demos = resolve(&args.name)?;
    let modes = parse_modes(&args.modes)?;
    let mut ctx = isolab_harness::modes::Context::new(Workload::Probe)?;
    ctx.vm_host = match args.host {
        Host::Native => VmHost::Native,
        Host::Emulated => VmHost::Emulated,
    };
    let setup = DemoSetup {
        tracer: ctx
            .bins
            .workload
            .with_file_name(isolab_harness::isolation::surface::TRACE_BIN),
        vm_host: ctx.vm_host,
        ..DemoSetup::default()
    };
    let launchers: Vec<Box<dyn Launcher>> = modes.iter().map(|m| ctx.launcher(*m)).collect();
    let launchers: Vec<&dyn Launcher> = launchers.iter().map(AsRef::as_ref).collect();

    // Ctrl-C stops between steps so every run started is torn down (the
    // microVM runs in its own process group and would not see the signal).
    isolab_harness::install_interrupt_handler();
    let mut reports: Vec<DemoReport> = Vec::new();
    let mut text = String::new();
    for demo in demos {
        eprintln!("bench demo: running {} ({})", demo.name, args.modes);
        let report = run_demo_with(demo, &launchers, &setup)
            .with_context(|| format!("demo {} failed", demo.name))?;
        if args.format == Format::Table {
            let t = render_table(&report);
            if args.out.is_none() {
                emit(&None, &format!("{t}\n"))?;
            }
            text.push_str(&t);
            text.push('\n');
        }
        reports.push(report);
    }
    match (args.format, &args.out) {
        (Format::Markdown, out) => emit(out, &render_markdown(&reports))?,
        (Format::Table, Some(_)) => emit(&args.out, &text)?,
        (Format::Table, None) => {}
    }
    if let Some(p) = &args.out {
        eprintln!("bench demo: wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_dedupe_and_refuse_unknowns() {
        assert_eq!(
            parse_modes("container,process,container").unwrap(),
            vec![ModeKind::Container, ModeKind::Process]
        );
        assert_eq!(
            parse_modes("vm,runc").unwrap(),
            [ModeKind::Microvm, ModeKind::Runc]
        );
        let e = parse_modes("process,docker").unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE);
        assert!(e.to_string().contains("'docker'"));
        assert_eq!(exit::code_for(&parse_modes(",").unwrap_err()), exit::USAGE);
    }

    #[test]
    fn demos_resolve_by_name_alias_or_all() {
        assert_eq!(resolve("all").unwrap().len(), DEMOS.len());
        assert_eq!(resolve("hostname").unwrap()[0].name, "network");
        let e = resolve("nope").unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE);
        assert!(e.to_string().contains("bench demo list"));
    }

    #[test]
    fn the_list_names_every_demo() {
        let l = list();
        for d in DEMOS {
            assert!(l.contains(d.name));
        }
    }
}
