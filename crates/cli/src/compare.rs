//! `bench compare`: process, container and microVM side by side, with peers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use isolab_harness::compare::{
    fill_ratios, measure_mode, method_lines, now_unix, CompareConfig, CompareReport, SCHEMA,
};
use isolab_harness::density::{self, DensityConfig};
use isolab_harness::env::Environment;
use isolab_harness::modes::{self, ModeKind};
use isolab_harness::report::{self, Format};

use crate::exit::usage;

/// Workloads `compare` knows how to measure.
const WORKLOADS: &[&str] = &["api", "worker", "cache", "noop"];

/// Arguments of `bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Workload to run in every mode: api, worker, cache or noop.
    #[arg(long, default_value = "api")]
    pub workload: String,
    /// Modes to measure, comma-separated: process, container, microvm.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "process,container,microvm"
    )]
    pub modes: Vec<String>,
    /// Peers measured the same way, comma-separated: crun, runc, qemu-microvm ("none" for none).
    #[arg(long, value_delimiter = ',', default_value = "crun,runc,qemu-microvm")]
    pub peers: Vec<String>,
    /// Measured runs per mode.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Warm-up runs per mode (discarded).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Requests in the short request/response run (HTTP workloads).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Also run the density scenario.
    #[arg(long)]
    pub density: bool,
    /// Memory budget of the density run (e.g. 1G, 512M).
    #[arg(long, default_value = "4G")]
    pub budget: String,
    /// Safety cap on instances in the density run.
    #[arg(long, default_value_t = 200)]
    pub max_instances: usize,
    /// Output format: table, json, csv or markdown.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Also write report.md, report.json, samples.csv and SVG plots here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to run: native (this host) or emulated (QEMU-TCG host with nested KVM).
    #[arg(long, default_value = "native")]
    pub host: String,
    /// Seconds to wait for an instance to become ready.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout: u64,
}

/// Validated arguments.
struct Plan {
    modes: Vec<ModeKind>,
    format: Format,
    budget: u64,
}

fn plan(args: &CompareArgs) -> anyhow::Result<Plan> {
    if !WORKLOADS.contains(&args.workload.as_str()) {
        return Err(usage(format!(
            "unknown workload '{}': choose one of {}",
            args.workload,
            WORKLOADS.join(", ")
        )));
    }
    if args.runs == 0 {
        return Err(usage("--runs must be at least 1"));
    }
    let mut modes = vec![];
    for m in &args.modes {
        match ModeKind::parse(m.trim()) {
            Some(k) if !k.is_peer() => modes.push(k),
            _ => {
                return Err(usage(format!(
                    "unknown mode '{m}': choose from process, container, microvm"
                )))
            }
        }
    }
    for p in &args.peers {
        let p = p.trim();
        if p == "none" || p.is_empty() {
            continue;
        }
        match ModeKind::parse(p) {
            Some(k) if k.is_peer() => modes.push(k),
            _ => {
                return Err(usage(format!(
                    "unknown peer '{p}': choose from crun, runc, qemu-microvm, none"
                )))
            }
        }
    }
    modes.dedup();
    let format = Format::parse(&args.format).ok_or_else(|| {
        usage(format!(
            "unknown format '{}': choose table, json, csv or markdown",
            args.format
        ))
    })?;
    let budget = isolab_container::parse_size(&args.budget)
        .map_err(|e| usage(format!("--budget {}: {e}", args.budget)))?;
    if args.host != "native" && args.host != "emulated" {
        return Err(usage(format!(
            "--host {}: choose native or emulated",
            args.host
        )));
    }
    Ok(Plan {
        modes,
        format,
        budget,
    })
}

/// A progress bar on stderr; hidden when `ISOLAB_PROGRESS=0` (set for runs
/// inside the emulated host, whose console nobody watches).
pub fn bar(len: u64, what: String) -> ProgressBar {
    if std::env::var("ISOLAB_PROGRESS").is_ok_and(|v| v == "0") {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    if args.host == "emulated" {
        return crate::emulated::compare(&args, plan.format);
    }
    isolab_harness::install_interrupt_handler();
    let cfg = CompareConfig {
        workload: args.workload.clone(),
        runs: args.runs,
        warmup: args.warmup,
        requests: args.requests,
        ready_timeout: Duration::from_secs(args.ready_timeout),
    };
    let ctx = modes::Context::new(&args.workload).context("prepare the modes")?;
    let spec = ctx.spec();
    let mut reports = vec![];
    for &kind in &plan.modes {
        let launcher = ctx.launcher(kind);
        let pb = bar(
            (cfg.warmup + cfg.runs) as u64,
            format!("{} {}", kind.name(), cfg.workload),
        );
        let r = measure_mode(launcher.as_ref(), &spec, &cfg, &mut |done, _| {
            pb.set_position(done as u64)
        });
        pb.finish_and_clear();
        reports.push(r);
        if isolab_harness::interrupted() {
            break;
        }
    }
    fill_ratios(&mut reports);
    let mut density_reports = vec![];
    if args.density && !isolab_harness::interrupted() {
        for &kind in plan.modes.iter().filter(|k| !k.is_peer()) {
            let launcher = ctx.launcher(kind);
            if let Some(reason) = launcher.unavailable() {
                eprintln!("density {}: not run: {reason}", kind.name());
                continue;
            }
            let group = density::ParentBudget::create(kind, plan.budget)
                .context("create the density cgroup")?;
            let pb = bar(
                args.max_instances as u64,
                format!("density {}", kind.name()),
            );
            let dcfg = DensityConfig {
                budget_bytes: plan.budget,
                max_instances: args.max_instances,
                ready_timeout: cfg.ready_timeout,
            };
            let d = density::run(launcher.as_ref(), &spec, &group, &dcfg, &mut |n, msg| {
                pb.set_position(n as u64);
                if !msg.is_empty() {
                    pb.set_message(format!("density {}: {msg}", kind.name()));
                }
            });
            pb.finish_and_clear();
            density_reports.push(d.with_context(|| format!("density run for {}", kind.name()))?);
        }
    }
    let report = CompareReport {
        schema: SCHEMA.into(),
        created_unix: now_unix(),
        method: method_lines(&cfg),
        config: cfg,
        environment: Environment::capture(),
        modes: reports,
        density: density_reports,
    };
    emit(&report, plan.format, args.out.as_deref())?;
    if isolab_harness::interrupted() {
        eprintln!("interrupted: stopped early; everything started was torn down");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// Print in the chosen format and, with `--out`, write the report files.
pub fn emit(
    report: &CompareReport,
    format: Format,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let text = report::render(report, format);
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let plots = report::plots::write_all(report, dir)?;
        std::fs::write(dir.join("report.json"), report::json(report))?;
        std::fs::write(dir.join("samples.csv"), report::csv::render(report))?;
        std::fs::write(
            dir.join("report.md"),
            report::markdown::render_with_plots(report, &plots),
        )?;
        eprintln!(
            "wrote {}/report.md, report.json, samples.csv and {} plot(s)",
            dir.display(),
            plots.len()
        );
    }
    Ok(())
}
