//! Markdown report: the same tables as the terminal, plus links to the SVG
//! plots when they were written alongside.

use std::fmt::Write;

use super::{closing_sections, density_lines, launch_phase_rows, memory_cells, startup_cells};
use crate::compare::CompareReport;

/// Render the report as Markdown; `plots` are file names to embed.
pub fn render_with_plots(r: &CompareReport, plots: &[String]) -> String {
    let mut o = String::new();
    match &r.config.image {
        Some(i) => writeln!(o, "# isolab compare: image `{}`\n", i.short_name()),
        None => writeln!(o, "# isolab compare: `{}`\n", r.config.workload),
    }
    .ok();
    if let Some(l) = &r.environment.label {
        let _ = writeln!(o, "> **{l}**\n");
    }
    let _ = writeln!(o, "## Startup (ms)\n");
    let _ = writeln!(o, "| mode | status | n | ready p50 | p90 | p99 | p50 95% CI | ratio vs process | first response p50 | p99 | ratio |");
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.modes {
        let _ = writeln!(o, "| {} |", startup_cells(m, true, "–").join(" | "));
    }
    let _ = writeln!(o, "\n## Memory per instance (MiB, median)\n");
    let _ = writeln!(
        o,
        "| mode | PSS | USS | cgroup | MemAvailable drop | VMM overhead | guest touched | in huge pages |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.modes {
        let _ = writeln!(o, "| {} |", memory_cells(m).join(" | "));
    }
    if let Some(rows) = launch_phase_rows(r) {
        let _ = writeln!(o, "\n## Container launch phases (ms from launch, p50)\n");
        for (i, row) in rows.iter().enumerate() {
            let _ = writeln!(o, "| {} |", row.join(" | "));
            if i == 0 {
                let _ = writeln!(o, "|---|{}", "---:|".repeat(row.len() - 1));
            }
        }
    }
    for d in &r.density {
        let lines = density_lines(d);
        let _ = writeln!(o, "\n## {}\n", lines[0]);
        for l in &lines[1..] {
            let _ = writeln!(o, "- {l}");
        }
    }
    o.push_str(&super::isolation::markdown(r));
    if !plots.is_empty() {
        let _ = writeln!(o, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(o, "![{p}]({p})\n");
        }
    }
    for (title, lines) in closing_sections(r) {
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\n## {title}\n");
        for l in lines {
            let _ = writeln!(o, "- {l}");
        }
    }
    let reading = super::reading::lines(r);
    if !reading.is_empty() {
        let _ = writeln!(o, "\n## {}\n", super::reading::TITLE);
        for l in reading {
            let _ = writeln!(o, "- {l}");
        }
    }
    o
}

/// Render without plots.
pub fn render(r: &CompareReport) -> String {
    render_with_plots(r, &[])
}
