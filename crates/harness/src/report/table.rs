//! Terminal table: startup and memory side by side, ratios against the
//! plain-process baseline, then the method and the environment.

use std::fmt::Write;

use super::{
    closing_sections, density_lines, fmt_ms, launch_phase_rows, memory_cells, startup_cells,
};
use crate::compare::CompareReport;

pub(crate) fn grid(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "  {}", line.join("  "));
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (cols.saturating_sub(1));
            let _ = writeln!(out, "  {}", "-".repeat(total));
        }
    }
    out
}

/// Render the report for a terminal.
pub fn render(r: &CompareReport) -> String {
    let mut out = String::new();
    let what = match &r.config.image {
        Some(i) => format!("image '{}' (--ready {})", i.short_name(), i.ready),
        None => format!("workload '{}'", r.config.workload),
    };
    let _ = writeln!(
        out,
        "isolab compare: {what}, {} run(s) per mode",
        r.config.runs
    );
    if let Some(l) = &r.environment.label {
        let _ = writeln!(out, "*** {l} ***");
    }
    let _ = writeln!(out, "\nStartup (ms; ratio = p50 / process p50)");
    let http = r.config.workload.serves_http();
    let mut rows = vec![{
        let mut h = vec![
            "mode",
            "status",
            "n",
            "ready p50",
            "p90",
            "p99",
            "p50 95% CI",
            "ratio",
        ];
        if http {
            h.extend(["1st resp p50", "p99", "ratio"]);
        }
        h.into_iter().map(String::from).collect::<Vec<_>>()
    }];
    for m in &r.modes {
        rows.push(startup_cells(m, http, ".."));
    }
    out.push_str(&grid(&rows));

    let _ = writeln!(out, "\nMemory per instance (MiB, median over runs)");
    let mut rows = vec![[
        "mode",
        "PSS",
        "USS",
        "cgroup",
        "MemAvail drop",
        "VMM overhead",
        "guest touched",
        "in huge pages",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    rows.extend(r.modes.iter().map(memory_cells));
    out.push_str(&grid(&rows));

    if r.modes.iter().any(|m| m.phases.is_some()) {
        let _ = writeln!(out, "\nMicroVM boot phases (ms from monitor start, p50)");
        let mut rows = vec![["mode", "VMM setup", "kernel", "init", "workload ready"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()];
        for m in &r.modes {
            if let Some(p) = &m.phases {
                let mut row = vec![m.mode.name().to_string()];
                row.extend(
                    crate::compare::PHASES
                        .iter()
                        .map(|(name, _)| fmt_ms(p.get(*name), |s| s.p50)),
                );
                rows.push(row);
            }
        }
        out.push_str(&grid(&rows));
    }

    if let Some(rows) = launch_phase_rows(r) {
        let _ = writeln!(out, "\nContainer launch phases (ms from launch, p50)");
        out.push_str(&grid(&rows));
    }

    if r.modes.iter().any(|m| m.load.is_some()) {
        let _ = writeln!(out, "\nRequest/response (sequential, one connection)");
        let mut rows = vec![["mode", "requests", "errors", "p50 us", "p99 us", "req/s"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()];
        for m in &r.modes {
            if let Some(l) = &m.load {
                rows.push(vec![
                    m.mode.name().into(),
                    l.requests.to_string(),
                    l.errors.to_string(),
                    format!("{:.0}", l.latency_us.p50),
                    format!("{:.0}", l.latency_us.p99),
                    format!("{:.0}", l.requests_per_sec),
                ]);
            }
        }
        out.push_str(&grid(&rows));
    }

    for d in &r.density {
        let lines = density_lines(d);
        let _ = writeln!(out, "\n{}", lines[0]);
        for l in &lines[1..] {
            let _ = writeln!(out, "  {l}");
        }
    }

    out.push_str(&super::isolation::table(r));

    for (title, lines) in closing_sections(r) {
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}");
        // Environment lines are facts, not a list of points.
        let bullet = if title == "Environment" { "" } else { "- " };
        for l in lines {
            let _ = writeln!(out, "  {bullet}{l}");
        }
    }
    let reading = super::reading::lines(r);
    if !reading.is_empty() {
        let _ = writeln!(out, "\n{}", super::reading::TITLE);
        for l in reading {
            let _ = writeln!(out, "  - {l}");
        }
    }
    out
}
