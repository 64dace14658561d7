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
        // The run's summary: the count measured, the rule (its evidence is
        // in the JSON and the text reports) and, apart, the projection.
        out.push_str(&format!(
            "{mode},density_measured,,{},instances,{label}\n",
            d.count
        ));
        out.push_str(&format!(
            "{mode},density_stop_rule,,{},rule,{label}\n",
            esc(&d.stop_rule)
        ));
        if let Some(t) = &d.startup_trend {
            out.push_str(&format!(
                "{mode},density_startup_baseline_p50,,{:.4},ms,{label}\n",
                t.baseline_ms
            ));
            out.push_str(&format!(
                "{mode},density_startup_window_p50,,{:.4},ms,{label}\n",
                t.window_ms
            ));
        }
        if let Some(p) = d.projected_count {
            out.push_str(&format!(
                "{mode},density_projection,,{p},instances (projection),{label}\n"
            ));
        }
        for p in &d.points {
            let n = p.n;
            out.push_str(&format!(
                "{mode},density_memory,{n},{},bytes,{label}\n",
                p.memory_bytes
            ));
            out.push_str(&format!(
                "{mode},density_ready,{n},{:.4},ms,{label}\n",
                p.ready_ms
            ));
        }
    }
    out
}
