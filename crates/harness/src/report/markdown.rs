//! Markdown report: the same tables as the terminal, plus links to the SVG
//! plots when they were written alongside.

use std::fmt::Write;

use super::{environment_lines, fmt_mib, fmt_ms, fmt_ratio, status_notes, status_text};
use crate::compare::CompareReport;

/// Render the report as Markdown; `plots` are file names to embed.
pub fn render_with_plots(r: &CompareReport, plots: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# isolab compare: `{}`\n", r.config.workload);
    if let Some(l) = &r.environment.label {
        let _ = writeln!(o, "> **{l}**\n");
    }
    let _ = writeln!(o, "## Startup (ms)\n");
    let _ = writeln!(o, "| mode | status | n | ready p50 | p90 | p99 | p50 95% CI | ratio vs process | first response p50 | p99 | ratio |");
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.modes {
        let s = m.ready_ms.as_ref();
        let f = m.first_response_ms.as_ref();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.mode.name(),
            status_text(m),
            s.map(|s| s.n.to_string()).unwrap_or_else(|| "-".into()),
            fmt_ms(s, |s| s.p50),
            fmt_ms(s, |s| s.p90),
            fmt_ms(s, |s| s.p99),
            s.map(|s| format!("{:.2}–{:.2}", s.p50_ci95[0], s.p50_ci95[1]))
                .unwrap_or_else(|| "-".into()),
            fmt_ratio(m.ready_ratio_vs_process),
            fmt_ms(f, |s| s.p50),
            fmt_ms(f, |s| s.p99),
            fmt_ratio(m.first_response_ratio_vs_process),
        );
    }
    let _ = writeln!(o, "\n## Memory per instance (MiB, median)\n");
    let _ = writeln!(
        o,
        "| mode | PSS | USS | cgroup | MemAvailable drop | VMM overhead | guest touched |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    for m in &r.modes {
        let mm = &m.memory;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.mode.name(),
            fmt_mib(mm.pss.as_ref()),
            fmt_mib(mm.uss.as_ref()),
            fmt_mib(mm.cgroup_current.as_ref()),
            fmt_mib(mm.mem_available_delta.as_ref()),
            fmt_mib(mm.vmm_overhead.as_ref()),
            fmt_mib(mm.guest_touched.as_ref()),
        );
    }
    for d in &r.density {
        let _ = writeln!(
            o,
            "\n## Density: {}\n\n{} instance(s) within a {:.0} MiB budget; stop rule: **{}**.",
            d.mode.name(),
            d.count,
            d.budget_bytes as f64 / 1048576.0,
            d.stop_rule
        );
        if let Some(f) = &d.memory_fit {
            let _ = writeln!(
                o,
                "Memory vs N: {:.2} MiB per instance + {:.2} MiB fixed (r² {:.3}).",
                f.slope / 1048576.0,
                f.intercept / 1048576.0,
                f.r2
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(o, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(o, "![{p}]({p})\n");
        }
    }
    let notes = status_notes(r);
    if !notes.is_empty() {
        let _ = writeln!(o, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    let _ = writeln!(o, "\n## Method\n");
    for m in &r.method {
        let _ = writeln!(o, "- {m}");
    }
    let _ = writeln!(o, "\n## Environment\n");
    for e in environment_lines(r) {
        let _ = writeln!(o, "- {e}");
    }
    o
}

/// Render without plots.
pub fn render(r: &CompareReport) -> String {
    render_with_plots(r, &[])
}
