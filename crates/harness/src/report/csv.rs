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
    out
}
