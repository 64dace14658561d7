//! The isolation sections of the compare report (table and Markdown): the
//! noisy-neighbour scenario per mode, one row per neighbour and load
//! pattern, then what did not run and why. Kept apart from the cost
//! sections' renderers; `table.rs` and `markdown.rs` call in here.

use std::fmt::Write;

use isolab_isolation::interference::Interference;
use isolab_isolation::neighbour::{NeighbourExit, NeighbourFate};

use crate::compare::CompareReport;
use crate::isolation::noisy::{ModeNeighbours, NeighbourResult, ScenarioStatus};

/// The neighbour's fate in a few words.
pub fn fate_text(n: &NeighbourResult) -> String {
    let exit = match n.observation.exit {
        Some(NeighbourExit::Signal(9)) => ", SIGKILL",
        _ => "",
    };
    match n.fate {
        NeighbourFate::Throttled { periods } => format!("throttled ({periods} periods)"),
        NeighbourFate::OomKilled { kills } => format!("OOM-killed in its cgroup ({kills}{exit})"),
        NeighbourFate::ForksRefused { refused } => {
            format!("forks refused at pids.max ({refused})")
        }
        NeighbourFate::GuestOom => "guest OOM killer".into(),
        NeighbourFate::CappedByHarness => "no limit: stopped by the harness cap".into(),
        NeighbourFate::Unchecked => "no limit acted".into(),
    }
}

fn us(v: f64) -> String {
    format!("{v:.0}")
}

/// Cells of one row: mode, neighbour, load, alone p50/p99/req/s, with
/// p50/p99/req/s, p99 ratio with its interval, errors alone/with, fate.
fn cells(m: &ModeNeighbours, n: &NeighbourResult, i: &Interference, sep: &str) -> Vec<String> {
    let r = &i.p99_ratio;
    vec![
        m.mode.name().into(),
        n.kind.name().into(),
        i.pattern.to_string(),
        us(i.alone.p50_us),
        us(i.alone.p99_us),
        us(i.alone.requests_per_s),
        us(i.with_neighbour.p50_us),
        us(i.with_neighbour.p99_us),
        us(i.with_neighbour.requests_per_s),
        format!("{:.2} ({:.2}{sep}{:.2})", r.ratio, r.ci95[0], r.ci95[1]),
        format!("{}/{}", n.tenant_errors_alone, n.tenant_errors),
        fate_text(n),
    ]
}

const HEADER: [&str; 12] = [
    "mode",
    "neighbour",
    "load",
    "p50 alone",
    "p99 alone",
    "req/s alone",
    "p50 with",
    "p99 with",
    "req/s with",
    "p99 ratio (95% CI)",
    "errors alone/with",
    "neighbour fate",
];

/// Lines for modes that did not run and neighbours that failed.
fn notes(r: &CompareReport) -> Vec<String> {
    let mut v = vec![];
    for m in &r.neighbours {
        match &m.status {
            ScenarioStatus::Measured => {}
            ScenarioStatus::Unavailable { reason } => {
                v.push(format!("{}: not run: {reason}", m.mode.name()))
            }
            ScenarioStatus::Failed { error } => {
                v.push(format!("{}: failed: {error}", m.mode.name()))
            }
        }
        for n in &m.neighbours {
            if let Some(e) = &n.error {
                v.push(format!("{} {} neighbour: {e}", m.mode.name(), n.kind));
            }
        }
    }
    v
}

const TITLE: &str = "Noisy neighbour (tenant api, latency us; ratio = p99 with / p99 alone)";

/// The terminal section; empty when the scenario did not run.
pub fn table(r: &CompareReport) -> String {
    if r.neighbours.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{TITLE}\n");
    let mut rows = vec![HEADER.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for m in &r.neighbours {
        for n in &m.neighbours {
            for i in &n.interference {
                rows.push(cells(m, n, i, ".."));
            }
        }
    }
    if rows.len() > 1 {
        out.push_str(&super::table::grid(&rows));
    }
    for l in notes(r) {
        let _ = writeln!(out, "  - {l}");
    }
    out
}

/// The Markdown section; empty when the scenario did not run.
pub fn markdown(r: &CompareReport) -> String {
    if r.neighbours.is_empty() {
        return String::new();
    }
    let mut o = format!("\n## {TITLE}\n\n| {} |\n", HEADER.join(" | "));
    let _ = writeln!(o, "|---|---|---|{}---|", "---:|".repeat(8));
    for m in &r.neighbours {
        for n in &m.neighbours {
            for i in &n.interference {
                let _ = writeln!(o, "| {} |", cells(m, n, i, "–").join(" | "));
            }
        }
    }
    let notes = notes(r);
    if !notes.is_empty() {
        o.push('\n');
        for l in notes {
            let _ = writeln!(o, "- {l}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::CompareConfig;
    use crate::isolation::noisy::Limits;
    use crate::modes::ModeKind;
    use crate::Workload;
    use isolab_isolation::interference::{interference, LoadPattern, LoadRun};
    use isolab_isolation::neighbour::{NeighbourKind, NeighbourObservation};

    fn report() -> CompareReport {
        let run = |base: f64| LoadRun {
            pattern: LoadPattern::Sequential,
            latencies_us: (0..50)
                .map(|i| base * (1.0 + (i % 5) as f64 * 0.01))
                .collect(),
            errors: 0,
            wall_s: 50.0 * base * 1e-6,
        };
        let i = interference(&run(100.0), &run(250.0)).unwrap();
        let n = NeighbourResult {
            kind: NeighbourKind::Memory,
            command: "hog --step-mib 4 --max-mib 512".into(),
            interference: vec![i],
            tenant_errors: 0,
            tenant_errors_alone: 0,
            rounds_with: 3,
            observation: NeighbourObservation {
                oom_kills: Some(1),
                exit: Some(NeighbourExit::Signal(9)),
                ..Default::default()
            },
            fate: NeighbourFate::OomKilled { kills: 1 },
            error: None,
        };
        CompareReport {
            schema: crate::compare::SCHEMA.into(),
            created_unix: 0,
            config: CompareConfig {
                workload: Workload::Api,
                runs: 1,
                warmup: 0,
                requests: 0,
                ready_timeout: std::time::Duration::from_secs(1),
                modes: vec![],
                density: None,
                neighbours: None,
            },
            environment: crate::env::Environment::capture(),
            method: vec![],
            modes: vec![],
            density: vec![],
            neighbours: vec![
                ModeNeighbours {
                    mode: ModeKind::Container,
                    peer: false,
                    status: ScenarioStatus::Measured,
                    limits: Some(Limits::default()),
                    neighbours: vec![n],
                },
                ModeNeighbours {
                    mode: ModeKind::Microvm,
                    peer: false,
                    status: ScenarioStatus::Unavailable {
                        reason: "no hardware KVM".into(),
                    },
                    limits: Some(Limits::default()),
                    neighbours: vec![],
                },
            ],
        }
    }

    #[test]
    fn every_neighbour_row_shows_alone_with_ratio_errors_and_fate() {
        let r = report();
        let t = table(&r);
        assert!(t.contains("Noisy neighbour"), "{t}");
        let row = t.lines().find(|l| l.contains("container")).unwrap();
        for want in [
            "memory",
            "sequential",
            " 102 ",
            " 104 ",
            " 260 ",
            "2.50 (",
            "0/0",
            "OOM-killed in its cgroup (1, SIGKILL)",
        ] {
            assert!(row.contains(want), "{want} missing in {row}");
        }
        assert!(t.contains("microvm: not run: no hardware KVM"), "{t}");
        let md = markdown(&r);
        assert!(
            md.contains("| container | memory | sequential | 102 | 104 |"),
            "{md}"
        );
        assert!(md.contains("- microvm: not run: no hardware KVM"));
        let json = crate::report::json(&r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["neighbours"][0]["neighbours"][0]["fate"]["fate"],
            "oom_killed"
        );
        assert_eq!(v["neighbours"][1]["status"]["state"], "unavailable");
    }

    #[test]
    fn without_the_scenario_there_is_no_section() {
        let r = CompareReport {
            neighbours: vec![],
            ..report()
        };
        assert_eq!(table(&r), "");
        assert_eq!(markdown(&r), "");
        assert!(!crate::report::json(&r).contains("\"neighbours\""));
    }
}
