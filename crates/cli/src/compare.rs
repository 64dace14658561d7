//! `bench compare`: arguments -> [`CompareConfig`] ->
//! [`isolab_harness::compare::run`] (or the same inside the emulated host)
//! -> rendering and report files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use isolab_harness::compare::{self, CompareConfig, CompareReport, Progress};
use isolab_harness::density::DensityConfig;
use isolab_harness::isolation::{Budget, Limits, NeighbourConfig, NeighbourKind, SurfaceConfig};
use isolab_harness::modes::ModeKind;
use isolab_harness::report::{self, Format};
use isolab_harness::Workload;

use crate::{args, emulated, exit, paths};

/// `--peers`' help, from the registry, so a new peer needs no change here.
fn peers_help() -> String {
    format!(
        "Peers measured the same way, comma-separated: {}; \"all\" or \"none\"",
        ModeKind::names(true)
    )
}

/// Arguments of `bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Workload to run in every mode: api, worker, cache or noop.
    #[arg(long, default_value = "api", value_parser = args::workload)]
    pub workload: Workload,
    /// Modes to measure, comma-separated: process, container, microvm.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "process,container,microvm"
    )]
    pub modes: Vec<String>,
    // Peers measured the same way: the help names the registry's.
    #[arg(long, value_delimiter = ',', default_value = "all", help = peers_help())]
    pub peers: Vec<String>,
    /// Measured runs per mode.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub runs: u64,
    /// Warm-up runs per mode (discarded).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub warmup: u64,
    /// Requests in the short request/response run (HTTP workloads).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub requests: u64,
    /// Also run the density scenario.
    #[arg(long)]
    pub density: bool,
    /// Memory budget of the density run: 1G, 512M (a bare number is bytes).
    #[arg(long, default_value = "4G", value_parser = args::size)]
    pub budget: u64,
    /// Cap on instances in the density run (1..=10000); default: derived
    /// from the budget and the host's MemAvailable less a 10% margin.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_instances: Option<u64>,
    /// Output format: table, json, csv or markdown.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Also write report.md, report.json, samples.csv and SVG plots here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to run: native (this host) or emulated (QEMU-TCG host with nested KVM).
    #[arg(long, default_value = "native")]
    pub host: String,
    /// How containers (ours, crun, runc, gVisor) serving HTTP are reached:
    /// bridge (a veth on the workbench bridge, as Docker attaches them) or
    /// loopback (inside the container's own network namespace).
    #[arg(long, default_value = "bridge", value_name = "bridge|loopback")]
    pub container_net: String,
    /// Seconds to wait for an instance to become ready.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub ready_timeout: u64,
    /// The isolation half (noisy neighbours, host system calls, posture):
    /// short (the default run's budget), full (longer runs; `--isolation`
    /// alone) or off (cost only).
    #[arg(
        long,
        value_name = "short|full|off",
        default_value = "short",
        num_args = 0..=1,
        default_missing_value = "full"
    )]
    pub isolation: String,
    /// Cost only, no isolation half (as --isolation off).
    #[arg(long, conflicts_with = "isolation")]
    pub no_isolation: bool,
    /// Attack-surface passes (host system calls serving each mode, ptrace; host kernel functions, ftrace, only with --host emulated) even with --isolation off.
    #[arg(long)]
    pub attack_surface: bool,
    /// Security-posture pass even with --isolation off.
    #[arg(long)]
    pub posture: bool,
    /// Requests sent while the attack-surface pass traces [default: 30 short, 100 full].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub surface_requests: Option<u64>,
    /// Noisy-neighbour kinds, comma-separated: cpu, memory, fork; "all" or "none" [default: all unless --isolation off].
    #[arg(long, value_delimiter = ',')]
    pub neighbours: Option<Vec<String>>,
    /// CPU limit of tenant and neighbour (containers; microVM vCPUs, rounded up).
    #[arg(long, default_value = "1", value_parser = args::cpus)]
    pub neighbour_cpus: f64,
    /// Memory limit of tenant and neighbour (cgroup; microVM guest RAM): 256M, 1G.
    #[arg(long, default_value = "256M", value_parser = args::size)]
    pub neighbour_memory: u64,
    /// pids.max of tenant and neighbour; the plain process's fork ceiling.
    #[arg(long, default_value_t = 128)]
    pub neighbour_pids: u64,
    /// Requests per tenant run (sequential, and again split over the connections) [default: 50 short, 400 full].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub neighbour_requests: Option<u64>,
    /// Connections of the tenant's concurrent run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub neighbour_connections: u32,
    /// Least time the tenant runs beside each neighbour, ms [default: 100 short, 1000 full].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub neighbour_window_ms: Option<u64>,
    #[command(flatten)]
    pub image: crate::image::ImageArgs,
    /// With --image/--bundle: the command that replaces the image's.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The isolation budget the arguments ask for: `None` is `--isolation
/// off` (then only the passes named by their own flags run, with the full
/// budget's numbers, as before the isolation half became default).
fn isolation_budget(args: &CompareArgs) -> anyhow::Result<Option<Budget>> {
    if args.no_isolation {
        return Ok(None);
    }
    match args.isolation.as_str() {
        "short" => Ok(Some(Budget::Short)),
        "full" => Ok(Some(Budget::Full)),
        "off" => Ok(None),
        other => Err(exit::usage(format!(
            "--isolation {other}: choose short, full or off"
        ))),
    }
}

/// The noisy-neighbour configuration the arguments ask for, if any.
fn neighbours(
    args: &CompareArgs,
    budget: Option<Budget>,
) -> anyhow::Result<Option<NeighbourConfig>> {
    let mut kinds: Vec<NeighbourKind> = vec![];
    let all = NeighbourKind::ALL.to_vec();
    match &args.neighbours {
        None if budget.is_some() => kinds = all.clone(),
        None => {}
        Some(asked) => {
            for k in asked {
                match k.trim() {
                    "none" | "" => {}
                    "all" => kinds.extend(&all),
                    k => kinds.push(k.parse().map_err(
                        |e: isolab_harness::isolation::UnknownNeighbour| {
                            exit::usage(format!("{e}, all or none"))
                        },
                    )?),
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    kinds.retain(|k| seen.insert(*k));
    if kinds.is_empty() {
        return Ok(None);
    }
    let limits = Limits {
        cpus: args.neighbour_cpus,
        memory_bytes: args.neighbour_memory,
        pids: args.neighbour_pids,
    };
    limits.validate().map_err(|e| exit::usage(e.to_string()))?;
    let b = budget.unwrap_or(Budget::Full);
    let requests = args
        .neighbour_requests
        .map_or(b.neighbour_requests(), |n| n as usize);
    let window_ms = args.neighbour_window_ms.unwrap_or(b.window_ms());
    Ok(Some(NeighbourConfig {
        kinds,
        limits,
        sequential_requests: requests,
        concurrent_requests: requests,
        connections: args.neighbour_connections,
        window_ms,
        window_max_ms: b.window_max_ms(window_ms),
        ready_timeout: Duration::from_secs(args.ready_timeout),
    }))
}

/// What to measure and how to show it.
struct Plan {
    config: CompareConfig,
    format: Format,
    emulated: bool,
}

fn plan(args: &CompareArgs) -> anyhow::Result<Plan> {
    if !compare::WORKLOADS.contains(&args.workload) {
        return Err(exit::usage(format!(
            "compare measures {}, not '{}'",
            Workload::list(&compare::WORKLOADS),
            args.workload
        )));
    }
    let mut modes = vec![];
    for m in &args.modes {
        match ModeKind::parse(m) {
            Some(k) if !k.is_peer() => modes.push(k),
            _ => {
                return Err(exit::usage(format!(
                    "unknown mode '{m}': choose from {}",
                    ModeKind::names(false)
                )))
            }
        }
    }
    for p in &args.peers {
        match p.trim() {
            "none" | "" => {}
            "all" => modes.extend(
                isolab_harness::modes::MODES
                    .iter()
                    .filter(|m| m.peer)
                    .map(|m| m.kind),
            ),
            p => match ModeKind::parse(p) {
                Some(k) if k.is_peer() => modes.push(k),
                _ => {
                    return Err(exit::usage(format!(
                        "unknown peer '{p}': choose from {}, all, none",
                        ModeKind::names(true)
                    )))
                }
            },
        }
    }
    let mut seen = std::collections::HashSet::new();
    modes.retain(|m| seen.insert(*m));
    let format = Format::parse(&args.format).ok_or_else(|| {
        exit::usage(format!(
            "unknown format '{}': choose table, json, csv or markdown",
            args.format
        ))
    })?;
    let emulated = match args.host.as_str() {
        "native" => false,
        "emulated" => true,
        other => {
            return Err(exit::usage(format!(
                "--host {other}: choose native or emulated"
            )))
        }
    };
    let container_loopback = match args.container_net.as_str() {
        "bridge" => false,
        "loopback" => true,
        other => {
            return Err(exit::usage(format!(
                "--container-net {other}: choose bridge or loopback"
            )))
        }
    };
    if let Some(out) = &args.out {
        paths::output_dir("--out", out)?;
    }
    let ready_timeout = Duration::from_secs(args.ready_timeout);
    if !args.args.is_empty()
        && args.image.image.is_none()
        && args.image.bundle.is_none()
        && args.image.image_key.is_none()
    {
        return Err(exit::usage(
            "arguments after -- replace an image's command: give --image or --bundle",
        ));
    }
    if emulated && args.image.bundle.is_some() {
        return Err(exit::usage(
            "--bundle runs on this host only: drop --host emulated, or pass the image as --image REF",
        ));
    }
    let budget = isolation_budget(args)?;
    let image = args.image.load(&args.args)?;
    Ok(Plan {
        config: CompareConfig {
            workload: image
                .as_deref()
                .map_or(args.workload, crate::image::stand_in),
            image,
            runs: args.runs as usize,
            warmup: args.warmup as usize,
            requests: args.requests as usize,
            ready_timeout,
            container_loopback,
            modes,
            density: args.density.then_some(DensityConfig {
                budget_bytes: args.budget,
                max_instances: args.max_instances.map(|n| n as usize),
                ready_timeout,
            }),
            neighbours: neighbours(args, budget)?,
            surface: (budget.is_some() || args.attack_surface).then_some(SurfaceConfig {
                requests: args
                    .surface_requests
                    .map_or(budget.unwrap_or(Budget::Full).surface_requests(), |n| {
                        n as usize
                    }),
                ready_timeout,
            }),
            posture: budget.is_some() || args.posture,
            isolation: budget,
        },
        format,
        emulated,
    })
}

/// Progress bars on stderr; hidden when `ISOLAB_PROGRESS=0` (set for runs
/// inside the emulated host, whose console nobody watches).
#[derive(Default)]
struct Bars(Option<ProgressBar>);

impl Progress for Bars {
    fn start(&mut self, what: &str, total: usize) {
        if std::env::var("ISOLAB_PROGRESS").is_ok_and(|v| v == "0") {
            self.0 = Some(ProgressBar::hidden());
            return;
        }
        let pb = ProgressBar::new(total as u64);
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(what.to_owned());
        pb.enable_steady_tick(Duration::from_millis(200));
        self.0 = Some(pb);
    }

    fn step(&mut self, done: usize, msg: &str) {
        if let Some(pb) = &self.0 {
            pb.set_position(done as u64);
            if !msg.is_empty() {
                pb.set_message(msg.to_owned());
            }
        }
    }

    fn finish(&mut self) {
        if let Some(pb) = self.0.take() {
            pb.finish_and_clear();
        }
    }

    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    let report = if plan.emulated {
        emulated::compare(&plan.config, &args.args)?
    } else {
        isolab_harness::install_interrupt_handler();
        compare::run(&plan.config, &mut Bars::default())?
    };
    emit(&report, plan.format, args.out.as_deref())?;
    if isolab_harness::interrupted() {
        eprintln!("interrupted: stopped early; everything started was torn down");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// Print in the chosen format and, with `--out`, write the report files.
fn emit(
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
        // Checked before the run (`paths::output_dir`); every file inside
        // is opened without following a symlink.
        if !dir.is_dir() {
            std::fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let plots = report::plots::write_all(report, dir)?;
        let write = |name: &str, data: String| {
            let p = dir.join(name);
            paths::write_nofollow(&p, data).with_context(|| format!("write {}", p.display()))
        };
        write("report.json", report::json(report))?;
        write("samples.csv", report::csv::render(report))?;
        write(
            "report.md",
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: CompareArgs,
    }

    fn plan_of(argv: &[&str]) -> anyhow::Result<Plan> {
        let t = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
            .map_err(|e| exit::usage(e.to_string()))?;
        plan(&t.a)
    }

    #[test]
    fn defaults_measure_every_mode_and_peer_in_registry_order() {
        let p = plan_of(&[]).unwrap();
        let names: Vec<&str> = p.config.modes.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "process",
                "container",
                "microvm",
                "crun",
                "runc",
                "qemu-microvm",
                "gvisor"
            ]
        );
        assert_eq!(p.config.workload, Workload::Api);
        assert!(p.config.density.is_none() && !p.emulated);
        let p = plan_of(&["--peers", "none", "--modes", "container,process,container"]).unwrap();
        assert_eq!(p.config.modes, [ModeKind::Container, ModeKind::Process]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["--workload", "hog"][..],
            &["--workload", "nope"],
            &["--modes", "process,teleport"],
            &["--peers", "docker"],
            &["--runs", "0"],
            &["--runs", "18446744073709551615"],
            &["--warmup", "99999"],
            &["--ready-timeout", "99999999999"],
            &["--budget", "4X", "--density"],
            &["--density", "--max-instances", "0"],
            &["--density", "--max-instances", "10001"],
            &["--format", "yaml"],
            &["--host", "cloud"],
            &["--neighbours", "cpu,disk"],
            &["--isolation", "long"],
            &["--isolation", "off", "--no-isolation"],
            &["--isolation", "--neighbour-memory", "1M"],
            &["--isolation", "--neighbour-cpus", "0"],
            &["--isolation", "--neighbour-pids", "1"],
            &["--isolation", "--neighbour-memory", "lots"],
        ] {
            let e = plan_of(argv)
                .err()
                .unwrap_or_else(|| panic!("{argv:?} accepted"));
            assert_eq!(exit::code_for(&e), exit::USAGE, "{argv:?}: {e:#}");
        }
        let p = plan_of(&["--density", "--budget", "1G", "--max-instances", "5"]).unwrap();
        assert_eq!(
            p.config.density.map(|d| (d.budget_bytes, d.max_instances)),
            Some((1 << 30, Some(5)))
        );
        let p = plan_of(&["--density"]).unwrap();
        assert_eq!(
            p.config.density.map(|d| (d.budget_bytes, d.max_instances)),
            Some((4 << 30, None)),
            "the cap is derived unless given"
        );
        let e = plan_of(&["--neighbours", "disk"]).err().unwrap();
        assert_eq!(
            format!("{e:#}"),
            "Unknown neighbour kind \"disk\": choose one of cpu, memory, fork, all or none"
        );
    }

    #[test]
    fn isolation_is_on_by_default_with_the_short_budget() {
        let c = plan_of(&[]).unwrap().config;
        assert_eq!(c.isolation, Some(Budget::Short));
        let n = c.neighbours.unwrap();
        assert_eq!(n.kinds, NeighbourKind::ALL);
        assert_eq!(n.limits, Limits::default());
        assert_eq!(
            (n.sequential_requests, n.window_ms, n.window_max_ms),
            (50, 100, 600)
        );
        assert_eq!(c.surface.map(|s| s.requests), Some(30));
        assert!(c.posture);
    }

    #[test]
    fn isolation_alone_is_the_full_budget_and_off_is_cost_only() {
        for argv in [&["--isolation"][..], &["--isolation", "full"]] {
            let c = plan_of(argv).unwrap().config;
            assert_eq!(c.isolation, Some(Budget::Full), "{argv:?}");
            let n = c.neighbours.unwrap();
            assert_eq!(
                (n.sequential_requests, n.window_ms, n.window_max_ms),
                (400, 1000, 10_000)
            );
            assert_eq!(c.surface.map(|s| s.requests), Some(100));
        }
        for argv in [&["--isolation", "off"][..], &["--no-isolation"]] {
            let c = plan_of(argv).unwrap().config;
            assert!(
                c.isolation.is_none()
                    && c.neighbours.is_none()
                    && c.surface.is_none()
                    && !c.posture,
                "{argv:?}"
            );
        }
        // Off, a pass asked for by its own flag runs with the full numbers.
        let c = plan_of(&[
            "--isolation",
            "off",
            "--neighbours",
            "fork,memory,fork",
            "--neighbour-memory",
            "512M",
        ])
        .unwrap()
        .config;
        let n = c.neighbours.unwrap();
        assert_eq!(n.kinds, [NeighbourKind::Fork, NeighbourKind::Memory]);
        assert_eq!(n.limits.memory_bytes, 512 << 20);
        assert_eq!(n.sequential_requests, 400);
        assert!(c.surface.is_none() && !c.posture);
        // An explicit number wins over the budget's.
        let c = plan_of(&[
            "--neighbours",
            "cpu",
            "--neighbour-requests",
            "30",
            "--surface-requests",
            "7",
        ])
        .unwrap()
        .config;
        let n = c.neighbours.unwrap();
        assert_eq!(
            (n.kinds.as_slice(), n.sequential_requests),
            (&[NeighbourKind::Cpu][..], 30)
        );
        assert_eq!(c.surface.map(|s| s.requests), Some(7));
        assert!(plan_of(&["--neighbours", "none"])
            .unwrap()
            .config
            .neighbours
            .is_none());
    }

    /// A runtime bundle (the cheapest user's workload to make in a unit
    /// test): `httpd -f` as root from `rootfs`.
    fn bundle() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/bin")).unwrap();
        std::fs::write(d.path().join("rootfs/bin/httpd"), "").unwrap();
        std::fs::write(
            d.path().join("config.json"),
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "process": {"args": ["/bin/httpd", "-f"], "cwd": "/", "user": {"uid": 0, "gid": 0}}}"#,
        )
        .unwrap();
        d
    }

    #[test]
    fn an_image_gets_both_halves_and_density_and_a_bundle_not_the_emulated_host() {
        let d = bundle();
        let b = d.path().to_str().unwrap();
        let c = plan_of(&["--bundle", b, "--ready", "http:80/"])
            .unwrap()
            .config;
        assert_eq!(
            c.image.as_ref().map(|i| i.ready.to_string()).as_deref(),
            Some("http:80/")
        );
        assert_eq!(c.isolation, Some(Budget::Short), "the default budget");
        assert!(c.neighbours.is_some() && c.surface.is_some() && c.posture);
        let c = plan_of(&[
            "--bundle",
            b,
            "--ready",
            "tcp:80",
            "--isolation",
            "full",
            "--density",
        ])
        .unwrap()
        .config;
        assert_eq!(c.isolation, Some(Budget::Full));
        assert!(c.density.is_some() && c.neighbours.is_some());
        let c = plan_of(&["--bundle", b, "--isolation", "off", "--neighbours", "cpu"])
            .unwrap()
            .config;
        assert_eq!(
            c.neighbours.map(|n| n.kinds),
            Some(vec![NeighbourKind::Cpu])
        );
        let e = plan_of(&["--bundle", b, "--host", "emulated"])
            .err()
            .unwrap();
        assert_eq!(exit::code_for(&e), exit::USAGE, "{e:#}");
        assert!(format!("{e}").contains("--image REF"), "{e}");
    }
}
