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
        for p in &d.points {
            let (n, label) = (p.n, esc(&label));
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
