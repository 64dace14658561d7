//! Renderings of a [`CompareReport`]: terminal table, JSON (versioned
//! schema), CSV and Markdown, plus SVG plots for `--out DIR`.

pub mod csv;
pub mod markdown;
pub mod plots;
pub mod table;

use crate::compare::{CompareReport, ModeReport, ModeStatus};
use crate::stats::Summary;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    Markdown,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "table" => Format::Table,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "markdown" | "md" => Format::Markdown,
            _ => return None,
        })
    }
}

/// Render in a format.
pub fn render(report: &CompareReport, format: Format) -> String {
    match format {
        Format::Table => table::render(report),
        Format::Json => json(report),
        Format::Csv => csv::render(report),
        Format::Markdown => markdown::render(report),
    }
}

/// Pretty JSON of the whole document.
pub fn json(report: &CompareReport) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub(crate) fn fmt_ms(s: Option<&Summary>, f: impl Fn(&Summary) -> f64) -> String {
    s.map(|s| format!("{:.2}", f(s)))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn fmt_mib(s: Option<&Summary>) -> String {
    s.map(|s| format!("{:.2}", s.p50 / 1048576.0))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

pub(crate) fn status_text(m: &ModeReport) -> String {
    match &m.status {
        ModeStatus::Measured => "measured".into(),
        ModeStatus::Unavailable { .. } => "not run".into(),
        ModeStatus::Failed { .. } => "FAILED".into(),
    }
}

/// Lines explaining modes that were not measured.
pub(crate) fn status_notes(report: &CompareReport) -> Vec<String> {
    let mut v = vec![];
    for m in &report.modes {
        match &m.status {
            ModeStatus::Unavailable { reason } => {
                v.push(format!("{}: not run: {reason}", m.mode.name()))
            }
            ModeStatus::Failed { error } => v.push(format!("{}: failed: {error}", m.mode.name())),
            ModeStatus::Measured => {}
        }
        for n in &m.notes {
            v.push(format!("{}: {n}", m.mode.name()));
        }
        if let Some(s) = &m.ready_ms {
            if !s.outliers.is_empty() {
                v.push(format!(
                    "{}: {} outlier(s) in ready times (run index {:?}), kept in the statistics",
                    m.mode.name(),
                    s.outliers.len(),
                    s.outliers
                ));
            }
        }
    }
    v
}

/// Environment lines shared by table and Markdown.
pub(crate) fn environment_lines(report: &CompareReport) -> Vec<String> {
    let e = &report.environment;
    let mut v = vec![];
    if let Some(l) = &e.label {
        v.push(format!("LABEL: {l}"));
    }
    v.push(format!(
        "kernel {} | {} x{} | {:.1} GiB RAM",
        e.kernel_release,
        e.cpu_model,
        e.cpus,
        e.mem_total_bytes as f64 / 1073741824.0
    ));
    v.push(format!(
        "cgroups {} | KVM {:?} | THP {} | KSM {} | swap {:.1} GiB",
        e.cgroup_layout,
        e.kvm,
        e.transparent_hugepage,
        e.ksm_run,
        e.swap_total_bytes as f64 / 1073741824.0
    ));
    v.push(format!(
        "isolab {} (git {})",
        e.isolab_version, e.git_revision
    ));
    for (t, ver) in &e.tools {
        v.push(format!("{t}: {ver}"));
    }
    v.push(format!("kernel cmdline: {}", e.kernel_cmdline));
    v
}
