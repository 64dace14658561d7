//! CSV: one row per raw sample, so spreadsheets can redo any statistic.
//! Columns: mode,metric,run,value,unit,label.

use crate::compare::CompareReport;

fn esc(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Render raw samples as CSV.
pub fn render(r: &CompareReport) -> String {
    let label = r.environment.label.clone().unwrap_or_default();
    let mut out = String::from("mode,metric,run,value,unit,label\n");
    for m in &r.modes {
        for (metric, v) in [
            ("ready", &m.raw_ready_ms),
            ("first_response", &m.raw_first_response_ms),
        ] {
            for (i, x) in v.iter().enumerate() {
                out.push_str(&format!(
                    "{},{metric},{},{x:.4},ms,{}\n",
                    m.mode.name(),
                    i + 1,
                    esc(&label)
                ));
            }
        }
    }
    for d in &r.density {
        let mode = d.mode.name();
        let label = esc(&label);
        let mut row = |metric: &str, run: String, value: String, unit: &str| {
            out.push_str(&format!("{mode},{metric},{run},{value},{unit},{label}\n"));
        };
        // The run's summary: the count measured, the rule (its evidence is
        // in the JSON and the text reports) and, apart, the projection.
        row(
            "density_measured",
            String::new(),
            d.count.to_string(),
            "instances",
        );
        row(
            "density_stop_rule",
            String::new(),
            esc(&d.stop_rule),
            "rule",
        );
        if let Some(t) = &d.startup_trend {
            for (metric, v) in [
                ("density_startup_baseline_p50", t.baseline_ms),
                ("density_startup_window_p50", t.window_ms),
            ] {
                row(metric, String::new(), format!("{v:.4}"), "ms");
            }
        }
        if let Some(p) = d.projected_count {
            row(
                "density_projection",
                String::new(),
                p.to_string(),
                "instances (projection)",
            );
        }
        for p in &d.points {
            let n = p.n.to_string();
            row(
                "density_memory",
                n.clone(),
                p.memory_bytes.to_string(),
                "bytes",
            );
            row("density_ready", n, format!("{:.4}", p.ready_ms), "ms");
        }
    }
    isolation_rows(r, &esc(&label), &mut out);
    out
}

/// The isolation half's figures, one row each: per mode, neighbour kind
/// and load pattern the tenant's p50/p99 alone and with, the p99 ratio
/// with its interval bounds and the errors (the `run` column names the
/// neighbour and pattern, e.g. `cpu/sequential`); per mode the host system
/// calls (distinct, per request, and each call's count with its name in
/// `run`); per mode measured by ftrace the host kernel functions
/// (distinct, entries, entries lost).
fn isolation_rows(r: &CompareReport, label: &str, out: &mut String) {
    for m in &r.neighbours {
        let mode = m.mode.name();
        for n in &m.neighbours {
            for i in &n.interference {
                let run = esc(&format!("{}/{}", n.kind, i.pattern));
                let rows = [
                    ("tenant_p50_alone", i.alone.p50_us, "us"),
                    ("tenant_p99_alone", i.alone.p99_us, "us"),
                    ("tenant_p50_with", i.with_neighbour.p50_us, "us"),
                    ("tenant_p99_with", i.with_neighbour.p99_us, "us"),
                    ("tenant_rps_alone", i.alone.requests_per_s, "req/s"),
                    ("tenant_rps_with", i.with_neighbour.requests_per_s, "req/s"),
                    ("interference_p99_ratio", i.p99_ratio.ratio, "ratio"),
                    (
                        "interference_p99_ratio_ci_low",
                        i.p99_ratio.ci95[0],
                        "ratio",
                    ),
                    (
                        "interference_p99_ratio_ci_high",
                        i.p99_ratio.ci95[1],
                        "ratio",
                    ),
                ];
                for (metric, v, unit) in rows {
                    out.push_str(&format!("{mode},{metric},{run},{v:.4},{unit},{label}\n"));
                }
                out.push_str(&format!(
                    "{mode},tenant_errors_with,{run},{},requests,{label}\n",
                    n.tenant_errors
                ));
            }
        }
    }
    for s in &r.surface {
        if !matches!(s.status, crate::isolation::noisy::ScenarioStatus::Measured) {
            continue;
        }
        let mode = s.mode.name();
        out.push_str(&format!(
            "{mode},host_syscalls_distinct,,{},syscalls,{label}\n",
            s.distinct()
        ));
        if s.requests > 0 {
            out.push_str(&format!(
                "{mode},host_syscalls_per_request,,{:.4},calls,{label}\n",
                s.calls() as f64 / s.requests as f64
            ));
        }
        for (name, n) in &s.syscalls {
            out.push_str(&format!(
                "{mode},host_syscall,{},{n},calls,{label}\n",
                esc(name)
            ));
        }
    }
    for k in &r.kernel_functions {
        if !matches!(k.status, crate::isolation::noisy::ScenarioStatus::Measured) {
            continue;
        }
        let mode = k.mode.name();
        out.push_str(&format!(
            "{mode},host_kernel_functions_distinct,,{},functions,{label}\n",
            k.distinct
        ));
        out.push_str(&format!(
            "{mode},host_kernel_function_entries,,{},entries,{label}\n",
            k.entries
        ));
        out.push_str(&format!(
            "{mode},host_kernel_function_lost,,{},entries,{label}\n",
            k.lost_events
        ));
    }
}
