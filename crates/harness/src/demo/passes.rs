//! The two demos built on the isolation half of `bench compare`: the
//! noisy-neighbour demo runs [`crate::isolation::noisy::run_mode`] and the
//! attack-surface demo [`crate::isolation::surface::run_mode`] in every
//! requested mode, with the compare run's short budget; this module turns
//! their results into the demo's rows, checked findings and a conclusion
//! generated from the numbers by the same reading as compare's
//! ([`crate::report::reading`]).
//!
//! The microVM column: natively it runs where the host can boot a guest
//! (the launcher says why not otherwise); a microVM in the emulated host
//! reports only when it has ended, so no tenant there can be loaded, and
//! the column says so and where the figures come from instead.

use std::path::PathBuf;

use isolab_isolation::hap::HapConfig;
use isolab_isolation::interference::{Interference, LoadPattern};
use isolab_isolation::neighbour::{NeighbourFate, NeighbourKind};
use isolab_isolation::reading::reading;

use super::facts::{Finding, Row, NOT_RUN};
use super::session::{ColumnReport, DemoError, ModeRun};
use crate::isolation::noisy::{self, HostFacts, ModeNeighbours, NeighbourResult, ScenarioStatus};
use crate::isolation::surface::{self, TraceProcess, TRACE_BIN};
use crate::isolation::{
    load, method_lines, surface_method, Budget, ModeSurface, NeighbourConfig, SurfaceConfig,
};
use crate::modes::{InstanceSpec, Isolation, Launcher, ModeKind, VmHost};
use crate::report::isolation::fate_text;
use crate::report::reading::{neighbour_axes, surface_axes};
use crate::Workload;

/// Which isolation pass a demo runs instead of one job per column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The noisy-neighbour scenario (sequential tenant runs only).
    Neighbours,
    /// The attack-surface pass (host system calls; ftrace where allowed).
    Surface,
}

/// A column's result under a pass.
#[derive(Debug, Clone)]
pub enum PassRun {
    Neighbours(ModeNeighbours),
    Surface(ModeSurface),
}

/// What the pass demos run with.
#[derive(Debug, Clone)]
pub struct DemoSetup {
    pub neighbours: NeighbourConfig,
    pub surface: SurfaceConfig,
    /// The `isolab-trace` binary.
    pub tracer: PathBuf,
    /// Where the microVM column runs.
    pub vm_host: VmHost,
}

impl Default for DemoSetup {
    /// The compare run's short budget, the tenant's runs sequential only
    /// (one number per neighbour for the class), the tracer beside the
    /// running executable, the microVM on this host. A storm may run up to
    /// the full budget's longest window, so that its limit acts before the
    /// class sees its fate (the rounds stop as soon as it has).
    fn default() -> Self {
        let b = Budget::Short;
        let window = b.window_ms();
        DemoSetup {
            neighbours: NeighbourConfig {
                sequential_requests: b.neighbour_requests(),
                concurrent_requests: 0,
                window_ms: window,
                window_max_ms: Budget::Full.window_max_ms(window),
                ..NeighbourConfig::default()
            },
            surface: SurfaceConfig {
                requests: b.surface_requests(),
                ..SurfaceConfig::default()
            },
            tracer: isolab_guest_kernel::binary_dir()
                .map(|d| d.join(TRACE_BIN))
                .unwrap_or_else(|| PathBuf::from(TRACE_BIN)),
            vm_host: VmHost::Native,
        }
    }
}

/// Why a microVM column in the emulated host does not run a pass.
pub const EMULATED_VM_REASON: &str = "a microVM in the emulated host reports only when it has ended, so no tenant in it can be loaded from here; `bench compare --workload api --host emulated` measures this pass with bench inside that host";

/// The spec shown for a column (the tenant, or the traced instance).
pub fn column_spec(pass: Pass, isolation: Isolation, setup: &DemoSetup) -> InstanceSpec {
    match pass {
        Pass::Neighbours => noisy::tenant_spec(isolation, &setup.neighbours.limits, None),
        Pass::Surface => InstanceSpec::measured(Workload::Api),
    }
}

/// "How it was measured" lines of a pass demo: compare's own method text.
pub fn method(pass: Pass, setup: &DemoSetup) -> Vec<String> {
    match pass {
        Pass::Neighbours => method_lines(&setup.neighbours),
        Pass::Surface => vec![
            surface_method(&setup.surface),
            format!("host kernel functions (ftrace, HAP method): {}", hap_here()),
        ],
    }
}

/// Whether the host kernel's functions can be counted here, in words.
fn hap_here() -> String {
    if HapConfig::detect().own_kernel {
        "not measured by the demo (this kernel is our own: `bench compare --workload api` counts them here)".into()
    } else {
        format!(
            "not measured on this host: {} is the real host's kernel, whose tracing settings (tracefs) are host settings the workbench never writes; they are counted only in a kernel of our own (the emulated host's)",
            HapConfig::detect().tracefs.display()
        )
    }
}

/// Runs `pass` in the mode of `launcher`. The process and container
/// columns fail the demo when the pass fails; a microVM column explains.
pub fn run(pass: Pass, launcher: &dyn Launcher, setup: &DemoSetup) -> Result<ModeRun, DemoError> {
    let kind = launcher.kind();
    let vm = kind.isolation() == Isolation::Vm;
    if vm && setup.vm_host == VmHost::Emulated {
        return Ok(ModeRun::Unavailable {
            reason: EMULATED_VM_REASON.into(),
        });
    }
    let (status, run) = match pass {
        Pass::Neighbours => {
            let r = noisy::run_mode(
                launcher,
                &setup.neighbours,
                &load::ProbeLoad,
                &HostFacts::capture(),
                &mut |_, _| {},
            );
            (r.status.clone(), PassRun::Neighbours(r))
        }
        Pass::Surface => {
            let tracer = TraceProcess {
                binary: setup.tracer.clone(),
            };
            let r = surface::run_mode(launcher, &setup.surface, &load::ProbeLoad, &tracer);
            (r.status.clone(), PassRun::Surface(r))
        }
    };
    if crate::interrupted() {
        return Err(DemoError::Interrupted);
    }
    match status {
        ScenarioStatus::Measured => Ok(ModeRun::Measured(Box::new(run))),
        ScenarioStatus::Unavailable { reason } => Ok(ModeRun::Unavailable { reason }),
        ScenarioStatus::Failed { error } if vm => Ok(ModeRun::Unavailable {
            reason: format!("failed: {error}"),
        }),
        ScenarioStatus::Failed { error } => Err(DemoError::Pass {
            mode: kind.name(),
            error,
        }),
    }
}

fn neighbours_of(c: &ColumnReport) -> Option<&ModeNeighbours> {
    match &c.run {
        ModeRun::Measured(p) => match p.as_ref() {
            PassRun::Neighbours(n) => Some(n),
            PassRun::Surface(_) => None,
        },
        _ => None,
    }
}

fn surface_of(c: &ColumnReport) -> Option<&ModeSurface> {
    match &c.run {
        ModeRun::Measured(p) => match p.as_ref() {
            PassRun::Surface(s) => Some(s),
            PassRun::Neighbours(_) => None,
        },
        _ => None,
    }
}

/// A row with one cell per column; `—` where the column did not run.
fn row<T>(
    label: &str,
    cols: &[ColumnReport],
    get: impl Fn(&ColumnReport) -> Option<&T>,
    f: impl Fn(&ColumnReport, &T) -> String,
) -> Row {
    Row {
        label: label.to_owned(),
        cells: cols
            .iter()
            .map(|c| get(c).map_or_else(|| NOT_RUN.to_owned(), |t| f(c, t)))
            .collect(),
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// The neighbour of `kind` and its sequential comparison.
fn sequential(
    m: &ModeNeighbours,
    kind: NeighbourKind,
) -> Option<(&NeighbourResult, &Interference)> {
    let n = m.neighbours.iter().find(|n| n.kind == kind)?;
    let i = n
        .interference
        .iter()
        .find(|i| i.pattern == LoadPattern::Sequential)?;
    Some((n, i))
}

fn limits_text(c: &ColumnReport) -> String {
    let s = &c.spec;
    match c.mode.isolation() {
        Isolation::None => "none (the harness caps the neighbours)".into(),
        Isolation::Container => format!(
            "{} CPU, {} MiB, {} pids",
            s.cpus.unwrap_or(0.0),
            s.memory_bytes.unwrap_or(0) >> 20,
            s.pids.unwrap_or(0)
        ),
        Isolation::Vm => format!(
            "{} vCPU, {} MiB guest RAM",
            s.vcpus.unwrap_or(1),
            s.memory_bytes.unwrap_or(0) >> 20
        ),
    }
}

/// The rows of a pass demo's table.
pub fn rows(pass: Pass, cols: &[ColumnReport]) -> Vec<Row> {
    match pass {
        Pass::Neighbours => neighbour_rows(cols),
        Pass::Surface => surface_rows(cols),
    }
}

fn neighbour_rows(cols: &[ColumnReport]) -> Vec<Row> {
    let mut v = vec![row(
        "limits (tenant and neighbour)",
        cols,
        neighbours_of,
        |c, _| limits_text(c),
    )];
    let kinds: Vec<NeighbourKind> = NeighbourKind::ALL
        .into_iter()
        .filter(|k| {
            cols.iter()
                .filter_map(neighbours_of)
                .any(|m| m.neighbours.iter().any(|n| n.kind == *k))
        })
        .collect();
    for kind in kinds {
        let cell = |f: fn(&NeighbourResult, &Interference) -> String| {
            move |_: &ColumnReport, m: &ModeNeighbours| {
                sequential(m, kind).map_or_else(|| "n/a".to_owned(), |(n, i)| f(n, i))
            }
        };
        v.push(row(
            &format!("{kind}: tenant p99 alone"),
            cols,
            neighbours_of,
            cell(|_, i| us(i.alone.p99_us)),
        ));
        v.push(row(
            &format!("{kind}: tenant p99 with it"),
            cols,
            neighbours_of,
            cell(|_, i| us(i.with_neighbour.p99_us)),
        ));
        v.push(row(
            &format!("{kind}: p99 ratio (95% CI)"),
            cols,
            neighbours_of,
            cell(|_, i| {
                let r = &i.p99_ratio;
                format!("{:.2}x ({:.2}-{:.2})", r.ratio, r.ci95[0], r.ci95[1])
            }),
        ));
        v.push(row(
            &format!("{kind}: tenant errors alone/with"),
            cols,
            neighbours_of,
            move |_, m| {
                m.neighbours.iter().find(|n| n.kind == kind).map_or_else(
                    || "n/a".to_owned(),
                    |n| format!("{}/{}", n.tenant_errors_alone, n.tenant_errors),
                )
            },
        ));
        v.push(row(
            &format!("{kind}: neighbour's fate"),
            cols,
            neighbours_of,
            move |_, m| {
                m.neighbours
                    .iter()
                    .find(|n| n.kind == kind)
                    .map_or_else(|| "n/a".to_owned(), fate_text)
            },
        ));
    }
    v
}

fn surface_rows(cols: &[ColumnReport]) -> Vec<Row> {
    vec![
        row(
            "host processes / threads traced",
            cols,
            surface_of,
            |_, s| format!("{} / {}", s.processes, s.threads),
        ),
        row("requests while traced", cols, surface_of, |_, s| {
            format!("{} ({} errors)", s.requests, s.errors)
        }),
        row("distinct host system calls", cols, surface_of, |_, s| {
            s.distinct().to_string()
        }),
        row("host system calls in all", cols, surface_of, |_, s| {
            s.calls().to_string()
        }),
        row("host system calls per request", cols, surface_of, |_, s| {
            if s.requests == 0 {
                "n/a".into()
            } else {
                format!("{:.1}", s.calls() as f64 / s.requests as f64)
            }
        }),
        row("most frequent", cols, surface_of, |_, s| top(s, 3)),
        row(
            "host kernel functions (ftrace)",
            cols,
            surface_of,
            |_, _| "not measured (see the method)".into(),
        ),
    ]
}

/// The `n` most frequent calls, `name count`, by count then name.
fn top(s: &ModeSurface, n: usize) -> String {
    let mut v: Vec<(&String, &u64)> = s.syscalls.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .take(n)
        .map(|(k, c)| format!("{k} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Notes under the table: neighbours that failed, threads not traced.
pub fn notes(c: &ColumnReport, run: &PassRun) -> Vec<String> {
    let label = c.label();
    match run {
        PassRun::Neighbours(m) => m
            .neighbours
            .iter()
            .filter_map(|n| {
                n.error
                    .as_ref()
                    .map(|e| format!("{label}: {} neighbour: {e}", n.kind))
            })
            .collect(),
        PassRun::Surface(s) => {
            let names: Vec<&str> = s.syscalls.keys().map(String::as_str).collect();
            let mut v = vec![format!("{label} made: {}", names.join(" "))];
            if !s.not_traced.is_empty() {
                v.push(format!("{label}: not traced: {}", s.not_traced.join("; ")));
            }
            v
        }
    }
}

/// The claims a pass demo's table supports, each checked.
pub fn findings(pass: Pass, cols: &[ColumnReport]) -> Vec<Finding> {
    let mut out = vec![];
    let find = |m: ModeKind| cols.iter().find(|c| c.mode == m);
    match pass {
        Pass::Neighbours => {
            if let Some(m) = find(ModeKind::Container).and_then(neighbours_of) {
                for n in &m.neighbours {
                    let (holds, what) = match (n.kind, n.fate) {
                        (NeighbourKind::Memory, NeighbourFate::OomKilled { .. }) => {
                            (true, "was OOM-killed inside its own cgroup")
                        }
                        (NeighbourKind::Memory, _) => {
                            (false, "was OOM-killed inside its own cgroup")
                        }
                        (NeighbourKind::Fork, NeighbourFate::ForksRefused { .. }) => {
                            (true, "had its forks refused at its cgroup's pids.max")
                        }
                        (NeighbourKind::Fork, _) => {
                            (false, "had its forks refused at its cgroup's pids.max")
                        }
                        (NeighbourKind::Cpu, NeighbourFate::Throttled { .. }) => {
                            (true, "was throttled by its cgroup's CPU quota")
                        }
                        (NeighbourKind::Cpu, _) => {
                            (false, "was throttled by its cgroup's CPU quota")
                        }
                    };
                    out.push(Finding {
                        holds,
                        text: format!(
                            "The container's {} neighbour {what} ({}).",
                            n.kind,
                            fate_text(n)
                        ),
                    });
                }
                let answered = m.neighbours.iter().all(|n| {
                    n.error.is_none() && n.interference.iter().all(|i| i.with_neighbour.n > 0)
                });
                let errors: u64 = m.neighbours.iter().map(|n| n.tenant_errors).sum();
                out.push(Finding {
                    holds: answered && errors == 0,
                    text: format!(
                        "The container tenant kept answering beside every neighbour ({errors} failed requests)."
                    ),
                });
            }
            if let Some(m) = find(ModeKind::Process).and_then(neighbours_of) {
                if !m.neighbours.is_empty() {
                    let unlimited = m.neighbours.iter().all(|n| {
                        matches!(
                            n.fate,
                            NeighbourFate::CappedByHarness | NeighbourFate::Unchecked
                        )
                    });
                    out.push(Finding {
                        holds: unlimited,
                        text: "No limit acted on the plain process's neighbours: only the harness stopped them (its safety cap, or the end of the run).".into(),
                    });
                }
            }
        }
        Pass::Surface => {
            for m in [ModeKind::Process, ModeKind::Container] {
                if let Some(s) = find(m).and_then(surface_of) {
                    out.push(Finding {
                        holds: s.distinct() > 0,
                        text: format!(
                            "The {} workload's requests were served by {} distinct host system calls, made straight into the host kernel.",
                            m.name(),
                            s.distinct()
                        ),
                    });
                }
            }
        }
    }
    out
}

/// The conclusion, generated from the numbers by compare's reading.
pub fn conclusion(pass: Pass, cols: &[ColumnReport]) -> Vec<String> {
    match pass {
        Pass::Neighbours => {
            let ms: Vec<ModeNeighbours> = cols.iter().filter_map(neighbours_of).cloned().collect();
            reading(&neighbour_axes(&ms, &[]))
        }
        Pass::Surface => {
            let ms: Vec<ModeSurface> = cols.iter().filter_map(surface_of).cloned().collect();
            reading(&surface_axes(&ms, &[]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isolab_isolation::interference::{interference, LoadRun};
    use isolab_isolation::neighbour::NeighbourObservation;

    fn run(base: f64) -> LoadRun {
        LoadRun {
            pattern: LoadPattern::Sequential,
            latencies_us: (0..50).map(|i| base + f64::from(i % 5)).collect(),
            errors: 0,
            wall_s: 0.01,
        }
    }

    /// A column whose memory neighbour slowed the tenant `slowdown` times
    /// and met `fate`.
    fn column(mode: ModeKind, slowdown: f64, fate: NeighbourFate) -> ColumnReport {
        let setup = DemoSetup::default();
        let n = NeighbourResult {
            kind: NeighbourKind::Memory,
            command: "hog".into(),
            interference: vec![interference(&run(100.0), &run(100.0 * slowdown)).unwrap()],
            tenant_errors: 0,
            tenant_errors_alone: 0,
            rounds_with: 1,
            observation: NeighbourObservation::default(),
            fate,
            error: None,
        };
        ColumnReport {
            mode,
            spec: column_spec(Pass::Neighbours, mode.isolation(), &setup),
            run: ModeRun::Measured(Box::new(PassRun::Neighbours(ModeNeighbours {
                mode,
                peer: false,
                status: ScenarioStatus::Measured,
                limits: None,
                neighbours: vec![n],
            }))),
            probe: None,
        }
    }

    #[test]
    fn rows_findings_and_conclusion_follow_the_numbers() {
        let cols = [
            column(ModeKind::Process, 3.0, NeighbourFate::CappedByHarness),
            column(
                ModeKind::Container,
                1.0,
                NeighbourFate::OomKilled { kills: 1 },
            ),
            ColumnReport {
                run: ModeRun::Unavailable {
                    reason: "no KVM".into(),
                },
                ..column(ModeKind::Microvm, 1.0, NeighbourFate::GuestOom)
            },
        ];
        let rows = rows(Pass::Neighbours, &cols);
        let get = |l: &str| rows.iter().find(|r| r.label == l).unwrap().cells.clone();
        assert_eq!(
            get("limits (tenant and neighbour)")[1],
            "1 CPU, 256 MiB, 128 pids"
        );
        assert_eq!(get("memory: tenant p99 alone")[0], "104 µs");
        assert_eq!(get("memory: tenant p99 with it")[0], "304 µs");
        assert_eq!(
            get("memory: neighbour's fate"),
            [
                "no limit: stopped by the harness cap",
                "OOM-killed in its cgroup (1)",
                NOT_RUN
            ]
        );
        let f = findings(Pass::Neighbours, &cols);
        assert!(f.iter().all(|f| f.holds), "{f:?}");
        let c = conclusion(Pass::Neighbours, &cols);
        assert!(c[0].contains("container led"), "{c:?}");
        // Other numbers, other sentence: nothing is written in advance.
        let swapped = [
            column(ModeKind::Process, 1.0, NeighbourFate::CappedByHarness),
            column(ModeKind::Container, 3.0, NeighbourFate::Unchecked),
        ];
        let c = conclusion(Pass::Neighbours, &swapped);
        assert!(c[0].contains("process led"), "{c:?}");
        assert!(!findings(Pass::Neighbours, &swapped)[0].holds);
    }

    #[test]
    fn the_default_setup_is_the_short_budget_sequential_only() {
        let s = DemoSetup::default();
        let b = Budget::Short;
        assert_eq!(s.neighbours.sequential_requests, b.neighbour_requests());
        assert_eq!(s.neighbours.patterns().len(), 1);
        assert_eq!(s.surface.requests, b.surface_requests());
        assert!(s.tracer.ends_with(TRACE_BIN));
        let m = method(Pass::Neighbours, &s);
        assert!(!m[0].contains("concurrent"), "{}", m[0]);
    }
}
