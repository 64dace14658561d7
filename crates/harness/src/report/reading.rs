//! The reading that ends a compare report: the axes of both halves (cost:
//! startup, memory, throughput; isolation: interference under each
//! neighbour, host system calls, what the host-side processes hold), each
//! filled from the measured numbers of this report and turned into
//! sentences by [`isolab_isolation::reading`]. Nothing here names a
//! winner: change the numbers and the sentences change.

use isolab_isolation::interference::LoadPattern;
use isolab_isolation::neighbour::NeighbourKind;
use isolab_isolation::posture::KernelRelation;
use isolab_isolation::reading::{reading, Axis, Better, Figure};

use crate::compare::{CompareReport, ModeStatus};
use crate::isolation::noisy::{ModeNeighbours, ScenarioStatus};
use crate::isolation::{ModeKernelFunctions, ModeSurface};

/// A reason cut to its first clause, for a sentence (the notes carry it
/// whole).
fn short(reason: &str) -> String {
    let first = reason.split(", ").next().unwrap_or(reason);
    let first = first.split(": run on ").next().unwrap_or(first);
    if first.chars().count() > 90 {
        let cut: String = first.chars().take(87).collect();
        format!("{cut}...")
    } else {
        first.to_owned()
    }
}

/// Modes of the cost half that did not run at all, with why: said once,
/// left out of every axis.
fn absent(r: &CompareReport) -> Vec<(String, String)> {
    r.modes
        .iter()
        .filter_map(|m| match &m.status {
            ModeStatus::Measured => None,
            ModeStatus::Unavailable { reason } => Some((m.mode.name().to_owned(), short(reason))),
            ModeStatus::Failed { error } => Some((m.mode.name().to_owned(), short(error))),
        })
        .collect()
}

fn measured(value: f64, ci95: Option<[f64; 2]>) -> Figure {
    Figure::Measured { value, ci95 }
}

fn axis(name: &str, unit: &str, better: Better, figures: Vec<(String, Figure)>) -> Axis {
    Axis {
        name: name.to_owned(),
        unit: unit.to_owned(),
        better,
        figures,
    }
}

/// The cost axes: startup (p50 ready, with its interval), PSS, requests/s.
fn cost_axes(r: &CompareReport, skip: &[String]) -> Vec<Axis> {
    let modes = || {
        r.modes
            .iter()
            .filter(|m| !skip.contains(&m.mode.name().to_owned()))
    };
    let mut v = vec![axis(
        "startup (p50 launch -> ready)",
        "ms",
        Better::Lower,
        modes()
            .filter_map(|m| {
                let s = m.ready_ms.as_ref()?;
                Some((m.mode.name().to_owned(), measured(s.p50, Some(s.p50_ci95))))
            })
            .collect(),
    )];
    v.push(axis(
        "memory (p50 PSS of the host processes)",
        "MiB",
        Better::Lower,
        modes()
            .filter_map(|m| {
                let s = m.memory.pss.as_ref()?;
                Some((m.mode.name().to_owned(), measured(s.p50 / 1048576.0, None)))
            })
            .collect(),
    ));
    v.push(axis(
        "throughput (sequential req/s)",
        "req/s",
        Better::Higher,
        modes()
            .filter_map(|m| {
                let l = m.load.as_ref()?;
                Some((m.mode.name().to_owned(), measured(l.requests_per_sec, None)))
            })
            .collect(),
    ));
    v
}

/// One interference axis per neighbour kind and load pattern: the p99
/// ratio with its interval (also the noisy-neighbour demo's conclusion).
pub(crate) fn neighbour_axes(neighbours: &[ModeNeighbours], skip: &[String]) -> Vec<Axis> {
    let mut v = vec![];
    let kinds: Vec<NeighbourKind> = NeighbourKind::ALL
        .into_iter()
        .filter(|k| {
            neighbours
                .iter()
                .any(|m| m.neighbours.iter().any(|n| n.kind == *k))
        })
        .collect();
    for kind in kinds {
        for sequential in [true, false] {
            let mut figures = vec![];
            let mut pattern_name = None;
            for m in neighbours {
                let name = m.mode.name().to_owned();
                if skip.contains(&name) {
                    continue;
                }
                if let ScenarioStatus::Failed { error } = &m.status {
                    if !m.neighbours.iter().any(|n| n.kind == kind) {
                        figures.push((
                            name,
                            Figure::NotMeasured {
                                reason: short(error),
                            },
                        ));
                        continue;
                    }
                }
                let Some(n) = m.neighbours.iter().find(|n| n.kind == kind) else {
                    continue;
                };
                let i = n
                    .interference
                    .iter()
                    .find(|i| matches!(i.pattern, LoadPattern::Sequential) == sequential);
                match (i, &n.error) {
                    (Some(i), _) => {
                        pattern_name.get_or_insert_with(|| i.pattern.to_string());
                        figures.push((name, measured(i.p99_ratio.ratio, Some(i.p99_ratio.ci95))));
                    }
                    (None, Some(e)) if sequential => {
                        figures.push((name, Figure::NotMeasured { reason: short(e) }))
                    }
                    _ => {}
                }
            }
            if figures.is_empty() {
                continue;
            }
            let pattern = pattern_name.unwrap_or_else(|| {
                if sequential {
                    "sequential"
                } else {
                    "concurrent"
                }
                .into()
            });
            v.push(axis(
                &format!("tenant p99 under a {kind} neighbour ({pattern}, with / alone)"),
                "x",
                Better::Lower,
                figures,
            ));
        }
    }
    v
}

/// Host kernel functions (HAP), where they were measured (the emulated
/// host): distinct functions over the request run.
pub(crate) fn kernel_axes(kernel: &[ModeKernelFunctions], skip: &[String]) -> Vec<Axis> {
    let ms: Vec<_> = kernel
        .iter()
        .filter(|m| matches!(m.status, ScenarioStatus::Measured) && m.distinct > 0)
        .filter(|m| !skip.contains(&m.mode.name().to_owned()))
        .collect();
    if ms.is_empty() {
        return vec![];
    }
    vec![axis(
        "distinct host kernel functions serving a request run (ftrace)",
        "",
        Better::Lower,
        ms.iter()
            .map(|m| (m.mode.name().to_owned(), measured(m.distinct as f64, None)))
            .collect(),
    )]
}

/// Host system calls: distinct, and per request (also the attack-surface
/// demo's conclusion).
pub(crate) fn surface_axes(surface: &[ModeSurface], skip: &[String]) -> Vec<Axis> {
    let ms: Vec<_> = surface
        .iter()
        .filter(|m| matches!(m.status, ScenarioStatus::Measured) && m.requests > 0)
        .filter(|m| !skip.contains(&m.mode.name().to_owned()))
        .collect();
    if ms.is_empty() {
        return vec![];
    }
    vec![
        axis(
            "distinct host system calls serving a request run",
            "",
            Better::Lower,
            ms.iter()
                .map(|m| {
                    (
                        m.mode.name().to_owned(),
                        measured(m.distinct() as f64, None),
                    )
                })
                .collect(),
        ),
        axis(
            "host system calls per request",
            "",
            Better::Lower,
            ms.iter()
                .map(|m| {
                    let per = m.calls() as f64 / m.requests as f64;
                    (m.mode.name().to_owned(), measured(per, None))
                })
                .collect(),
        ),
    ]
}

/// What the host-side processes hold over the host kernel.
fn posture_axes(r: &CompareReport, skip: &[String]) -> Vec<Axis> {
    let ms: Vec<_> = r
        .posture
        .iter()
        .filter(|m| matches!(m.status, ScenarioStatus::Measured) && !m.host.is_empty())
        .filter(|m| !skip.contains(&m.mode.name().to_owned()))
        .collect();
    if ms.is_empty() {
        return vec![];
    }
    let mut v = vec![axis(
        "capabilities the workload holds (effective)",
        "",
        Better::Lower,
        ms.iter()
            .filter_map(|m| {
                let c = m.workload.as_ref()?.cap_eff.as_ref()?;
                Some((m.mode.name().to_owned(), measured(c.count as f64, None)))
            })
            .collect(),
    )];
    v.push(axis(
        "host capabilities of the most privileged host-side process",
        "",
        Better::Lower,
        ms.iter()
            .filter_map(|m| {
                let c = m.host.iter().filter_map(|p| p.host_capabilities()).max()?;
                Some((m.mode.name().to_owned(), measured(c as f64, None)))
            })
            .collect(),
    ));
    v
}

/// Which kernel each mode's workload talks to, from the posture pass.
fn kernel_sentence(r: &CompareReport, skip: &[String]) -> Option<String> {
    let mut host = vec![];
    let mut own = vec![];
    for m in r
        .posture
        .iter()
        .filter(|m| !skip.contains(&m.mode.name().to_owned()))
    {
        match m.workload.as_ref().map(|w| &w.kernel) {
            Some(KernelRelation::Host) => host.push(m.mode.name()),
            Some(KernelRelation::Own { release }) => own.push(match release {
                Some(rel) => format!("{} ({rel})", m.mode.name()),
                None => m.mode.name().to_owned(),
            }),
            _ => {}
        }
    }
    if host.is_empty() && own.is_empty() {
        return None;
    }
    let mut s = String::from("kernel the workload talks to: ");
    if !host.is_empty() {
        s.push_str(&format!("the host's for {}", host.join(", ")));
    }
    if !own.is_empty() {
        if !host.is_empty() {
            s.push_str("; ");
        }
        s.push_str(&format!("its own for {}", own.join(", ")));
    }
    s.push('.');
    Some(s)
}

/// The whole reading: cost sentences, isolation sentences, then the modes
/// not measured at all and why. Empty when nothing was measured.
pub fn lines(r: &CompareReport) -> Vec<String> {
    let gone = absent(r);
    let skip: Vec<String> = gone.iter().map(|(m, _)| m.clone()).collect();
    let mut v = reading(&cost_axes(r, &skip));
    v.extend(reading(&neighbour_axes(&r.neighbours, &skip)));
    v.extend(reading(&surface_axes(&r.surface, &skip)));
    v.extend(reading(&kernel_axes(&r.kernel_functions, &skip)));
    v.extend(reading(&posture_axes(r, &skip)));
    v.extend(kernel_sentence(r, &skip));
    if !v.is_empty() && !gone.is_empty() {
        v.push(format!(
            "not measured on this host: {}.",
            gone.iter()
                .map(|(m, why)| format!("{m} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    v
}

/// The heading the renderings give it.
pub const TITLE: &str = "Reading (generated from the numbers above)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{CompareConfig, LoadResult, ModeReport, ModeStatus};
    use crate::isolation::noisy::{ModeNeighbours, NeighbourResult};
    use crate::isolation::ModeSurface;
    use crate::modes::ModeKind;
    use crate::stats::summarize;
    use crate::Workload;
    use isolab_isolation::interference::{interference, LoadRun};
    use isolab_isolation::neighbour::{NeighbourFate, NeighbourObservation};

    fn mode(kind: ModeKind, ready: &[f64], pss_mib: f64, rps: f64) -> ModeReport {
        let mut m = ModeReport::unavailable(kind, String::new());
        m.status = ModeStatus::Measured;
        m.ready_ms = summarize(ready);
        m.memory.pss = summarize(&[pss_mib * 1048576.0]);
        m.load = Some(LoadResult {
            requests: 10,
            errors: 0,
            latency_us: summarize(&[100.0]).unwrap(),
            requests_per_sec: rps,
        });
        m
    }

    fn run(base: f64, pattern: LoadPattern) -> LoadRun {
        LoadRun {
            pattern,
            latencies_us: (0..200)
                .map(|i| base * (1.0 + (i % 7) as f64 * 0.01))
                .collect(),
            errors: 0,
            wall_s: 1.0,
        }
    }

    fn neighbours(kind: ModeKind, with: f64) -> ModeNeighbours {
        let p = LoadPattern::Sequential;
        ModeNeighbours {
            mode: kind,
            peer: kind.is_peer(),
            status: ScenarioStatus::Measured,
            limits: None,
            neighbours: vec![NeighbourResult {
                kind: NeighbourKind::Cpu,
                command: "worker".into(),
                interference: vec![interference(&run(100.0, p), &run(with, p)).unwrap()],
                tenant_errors: 0,
                tenant_errors_alone: 0,
                rounds_with: 1,
                observation: NeighbourObservation::default(),
                fate: NeighbourFate::Unchecked,
                error: None,
            }],
        }
    }

    fn report() -> CompareReport {
        let surface = |kind: ModeKind, calls: &[(&str, u64)]| ModeSurface {
            mode: kind,
            peer: kind.is_peer(),
            status: ScenarioStatus::Measured,
            processes: 1,
            threads: 1,
            not_traced: vec![],
            requests: 10,
            errors: 0,
            syscalls: calls.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        CompareReport {
            schema: crate::compare::SCHEMA.into(),
            created_unix: 0,
            config: CompareConfig::for_tests(Workload::Api),
            environment: crate::env::Environment::capture(),
            method: vec![],
            modes: vec![
                mode(ModeKind::Process, &[4.0, 4.1, 4.2, 3.9, 4.0], 2.0, 9000.0),
                mode(ModeKind::Container, &[20.0, 21.0, 22.0, 19.0, 20.0], 3.0, 7000.0),
                ModeReport::unavailable(
                    ModeKind::Microvm,
                    "/dev/kvm here is PVM (kvm_pvm), which cannot boot a stock guest kernel: run on a host with VT-x".into(),
                ),
            ],
            density: vec![],
            neighbours: vec![
                neighbours(ModeKind::Process, 400.0),
                neighbours(ModeKind::Container, 150.0),
            ],
            surface: vec![
                surface(ModeKind::Process, &[("read", 10), ("write", 10)]),
                surface(
                    ModeKind::Container,
                    &[("read", 10), ("write", 10), ("futex", 30)],
                ),
            ],
            kernel_functions: vec![],
            posture: vec![],
            reading: vec![],
        }
    }

    #[test]
    fn both_halves_are_read_from_the_numbers() {
        let l = lines(&report());
        let has = |s: &str| l.iter().any(|x| x.contains(s));
        assert!(
            has("startup (p50 launch -> ready): process led (4 ms), 5x better than container (20 ms)"),
            "{l:#?}"
        );
        assert!(has("memory (p50 PSS of the host processes): process led (2 MiB), 1.50x better than container (3 MiB)"), "{l:#?}");
        assert!(has("throughput (sequential req/s): process led"), "{l:#?}");
        assert!(
            has("tenant p99 under a cpu neighbour (sequential, with / alone): container led (1.50x)"),
            "{l:#?}"
        );
        assert!(
            has("distinct host system calls serving a request run: process led (2), 1.50x better than container (3)"),
            "{l:#?}"
        );
        assert_eq!(
            l.last().unwrap(),
            "not measured on this host: microvm (/dev/kvm here is PVM (kvm_pvm))."
        );
        assert!(!l[..l.len() - 1].iter().any(|x| x.contains("microvm")));
    }

    #[test]
    fn kernel_functions_are_read_where_measured_only() {
        use crate::isolation::noisy::ScenarioStatus;
        use crate::isolation::ModeKernelFunctions;
        let k = |mode, distinct, status| ModeKernelFunctions {
            mode,
            peer: false,
            status,
            threads: 2,
            distinct,
            entries: 100,
            lost_events: 0,
            requests: 10,
            errors: 0,
            prefixes: vec![],
        };
        let mut r = report();
        r.kernel_functions = vec![
            k(ModeKind::Process, 1500, ScenarioStatus::Measured),
            k(ModeKind::Container, 3000, ScenarioStatus::Measured),
        ];
        let l = lines(&r);
        assert!(
            l.iter().any(|x| x.contains(
                "distinct host kernel functions serving a request run (ftrace): process led (1500), 2x better than container (3000)"
            )),
            "{l:#?}"
        );
        r.kernel_functions = vec![k(
            ModeKind::Process,
            0,
            ScenarioStatus::Unavailable {
                reason: "not measured: the host kernel is not ours".into(),
            },
        )];
        assert!(!lines(&r).iter().any(|x| x.contains("kernel functions")));
    }

    #[test]
    fn other_numbers_read_otherwise() {
        let mut r = report();
        r.neighbours = vec![
            neighbours(ModeKind::Process, 120.0),
            neighbours(ModeKind::Container, 500.0),
        ];
        r.modes[0].ready_ms = summarize(&[40.0, 41.0, 42.0]);
        let l = lines(&r);
        assert!(
            l.iter()
                .any(|x| x.starts_with("startup (p50 launch -> ready): container led")),
            "{l:#?}"
        );
        assert!(
            l.iter().any(|x| x.starts_with(
                "tenant p99 under a cpu neighbour (sequential, with / alone): process led"
            )),
            "{l:#?}"
        );
    }

    #[test]
    fn the_table_and_markdown_end_with_the_reading() {
        let r = report();
        let t = crate::report::table::render(&r);
        let tail = t.split(TITLE).nth(1).expect("the reading is rendered");
        assert!(tail.contains("process led"), "{tail}");
        assert!(!tail.contains("\nEnvironment"), "the reading comes last");
        let md = crate::report::markdown::render(&r);
        assert!(md.contains(&format!("## {TITLE}")), "{md}");
        assert!(md.trim_end().ends_with("(/dev/kvm here is PVM (kvm_pvm))."));
    }

    #[test]
    fn the_json_carries_the_same_reading() {
        let r = report();
        let json: serde_json::Value = serde_json::from_str(&crate::report::json(&r)).expect("JSON");
        let want = lines(&r);
        assert!(!want.is_empty());
        assert_eq!(json["schema"], "isolab.compare.v2");
        assert_eq!(json["reading"], serde_json::json!(want));
        let md = crate::report::markdown::render(&r);
        for l in &want {
            assert!(md.contains(&format!("- {l}\n")), "{l}");
        }
    }
}
