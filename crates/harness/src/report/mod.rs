//! Renderings of a [`CompareReport`]: terminal table, JSON (versioned
//! schema), CSV and Markdown, plus SVG plots for `--out DIR`.

pub mod csv;
pub mod isolation;
pub mod markdown;
pub mod plots;
pub mod reading;
pub mod table;

use crate::compare::{CompareReport, ModeReport, ModeStatus};
use crate::density::{DensityReport, WINDOW};
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

/// Pretty JSON of the whole document, its `reading` generated from its
/// numbers (as the table's and Markdown's) where the run left it empty.
pub fn json(report: &CompareReport) -> String {
    let filled;
    let report = if report.reading.is_empty() {
        let mut r = report.clone();
        r.reading = reading::lines(report);
        filled = r;
        &filled
    } else {
        report
    };
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

/// The startup row of a mode: mode, status, n, ready p50/p90/p99, the
/// median's CI (`lo{ci_sep}hi`), the ratio; with `http` also first
/// response p50/p99 and its ratio.
pub(crate) fn startup_cells(m: &ModeReport, http: bool, ci_sep: &str) -> Vec<String> {
    let s = m.ready_ms.as_ref();
    let mut row = vec![
        m.mode.name().to_string(),
        status_text(m),
        s.map(|s| s.n.to_string()).unwrap_or_else(|| "-".into()),
        fmt_ms(s, |s| s.p50),
        fmt_ms(s, |s| s.p90),
        fmt_ms(s, |s| s.p99),
        s.map(|s| format!("{:.2}{ci_sep}{:.2}", s.p50_ci95[0], s.p50_ci95[1]))
            .unwrap_or_else(|| "-".into()),
        fmt_ratio(m.ready_ratio_vs_process),
    ];
    if http {
        let f = m.first_response_ms.as_ref();
        row.extend([
            fmt_ms(f, |s| s.p50),
            fmt_ms(f, |s| s.p99),
            fmt_ratio(m.first_response_ratio_vs_process),
        ]);
    }
    row
}

/// The memory row of a mode (MiB, medians).
pub(crate) fn memory_cells(m: &ModeReport) -> Vec<String> {
    let mm = &m.memory;
    vec![
        m.mode.name().to_string(),
        fmt_mib(mm.pss.as_ref()),
        fmt_mib(mm.uss.as_ref()),
        fmt_mib(mm.cgroup_current.as_ref()),
        fmt_mib(mm.mem_available_delta.as_ref()),
        fmt_mib(mm.vmm_overhead.as_ref()),
        fmt_mib(mm.guest_touched.as_ref()),
        fmt_mib(mm.guest_huge.as_ref()),
    ]
}

pub(crate) fn status_text(m: &ModeReport) -> String {
    match &m.status {
        ModeStatus::Measured => "measured".into(),
        ModeStatus::Unavailable { .. } => "not run".into(),
        ModeStatus::Failed { .. } => "FAILED".into(),
    }
}

/// The container launch phases (p50 ms over runs) of every mode that has
/// them: a header row ("phase", modes...), then one row per phase in launch
/// order, then launch -> ready. `None` when no mode has them.
pub(crate) fn launch_phase_rows(r: &CompareReport) -> Option<Vec<Vec<String>>> {
    let modes: Vec<&ModeReport> = r
        .modes
        .iter()
        .filter(|m| m.launch_phases.is_some())
        .collect();
    if modes.is_empty() {
        return None;
    }
    let mut rows = vec![std::iter::once("phase".to_string())
        .chain(modes.iter().map(|m| m.mode.name().to_string()))
        .collect::<Vec<_>>()];
    for (key, label) in crate::compare::launch_phase_names() {
        let mut row = vec![label.to_string()];
        row.extend(modes.iter().map(|m| {
            fmt_ms(m.launch_phases.as_ref().and_then(|p| p.get(&key)), |s| {
                s.p50
            })
        }));
        rows.push(row);
    }
    let mut total = vec!["= launch -> ready".to_string()];
    total.extend(modes.iter().map(|m| fmt_ms(m.ready_ms.as_ref(), |s| s.p50)));
    rows.push(total);
    Some(rows)
}

/// The density result of one mode, side by side and in the same words for
/// table and Markdown: what was measured, the rule that stopped it with its
/// evidence, the startup trend, the memory fit and, apart, the projection.
/// The first line is the heading.
pub(crate) fn density_lines(d: &DensityReport) -> Vec<String> {
    let mib = |b: f64| b / 1048576.0;
    let mut v = vec![
        format!("Density: {}", d.mode.name()),
        format!(
            "measured: {} instance(s) running together within a {:.0} MiB budget",
            d.count,
            mib(d.budget_bytes as f64)
        ),
        format!("stopped by: {} ({})", d.stop_rule, d.stop_detail),
    ];
    if let Some(t) = &d.startup_trend {
        v.push(format!(
            "startup: median of the first {WINDOW} {:.2} ms, of the last {WINDOW} {:.2} ms",
            t.baseline_ms, t.window_ms
        ));
    }
    if let Some(f) = &d.memory_fit {
        v.push(format!(
            "memory vs N: {:.2} MiB per instance + {:.2} MiB fixed (r2 {:.3})",
            mib(f.slope),
            mib(f.intercept),
            f.r2
        ));
    }
    if let Some(p) = d.projected_count {
        v.push(format!(
            "projection (budget / slope, not measured): ~{p} instance(s) would fit"
        ));
    }
    v.push(format!(
        "cap: {} ({}); teardown of all: {:.0} ms",
        d.max_instances, d.cap_basis, d.teardown_ms
    ));
    v
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

/// The closing sections of the text renderings, in order: notes (empty
/// when there are none), method, environment.
pub(crate) fn closing_sections(report: &CompareReport) -> [(&'static str, Vec<String>); 3] {
    [
        ("Notes", status_notes(report)),
        ("Method", report.method.clone()),
        ("Environment", environment_lines(report)),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::density::{DensityPoint, StartupTrend};
    use crate::modes::ModeKind;
    use crate::stats::LinearFit;

    fn density() -> DensityReport {
        DensityReport {
            mode: ModeKind::Container,
            budget_bytes: 4 << 30,
            count: 285,
            stop_rule: "startup-degradation".into(),
            stop_detail: "median of startups 266-285 38.30 ms vs 12.41 ms".into(),
            max_instances: 10_000,
            cap_basis: "derived".into(),
            startup_trend: Some(StartupTrend {
                baseline_ms: 12.41,
                window_ms: 38.3,
                window_from: 266,
            }),
            projected_count: Some(6600),
            teardown_ms: 2129.0,
            points: vec![DensityPoint {
                n: 1,
                memory_bytes: 1 << 20,
                ready_ms: 12.0,
                mem_available_drop: 0,
                launch_phases: None,
            }],
            memory_fit: Some(LinearFit {
                slope: 0.62 * 1048576.0,
                intercept: 0.72 * 1048576.0,
                r2: 1.0,
            }),
            startup_fit: None,
        }
    }

    #[test]
    fn density_shows_measured_rule_and_projection_apart() {
        let l = density_lines(&density());
        assert_eq!(l[0], "Density: container");
        assert_eq!(
            l[1],
            "measured: 285 instance(s) running together within a 4096 MiB budget"
        );
        assert_eq!(
            l[2],
            "stopped by: startup-degradation (median of startups 266-285 38.30 ms vs 12.41 ms)"
        );
        assert!(l.contains(
            &"projection (budget / slope, not measured): ~6600 instance(s) would fit".to_string()
        ));
        let mut d = density();
        d.projected_count = None;
        assert!(!density_lines(&d).iter().any(|l| l.contains("projection")));
    }

    #[test]
    fn csv_carries_the_density_summary_beside_its_points() {
        let doc = CompareReport {
            schema: crate::compare::SCHEMA.into(),
            created_unix: 0,
            method: vec![],
            config: crate::compare::CompareConfig::for_tests(crate::Workload::Api),
            environment: crate::env::Environment::capture(),
            modes: vec![],
            density: vec![density()],
            neighbours: vec![],
            surface: vec![],
            kernel_functions: vec![],
            posture: vec![],
            reading: vec![],
        };
        let csv = csv::render(&doc);
        for row in [
            "container,density_measured,,285,instances,",
            "container,density_stop_rule,,startup-degradation,rule,",
            "container,density_startup_baseline_p50,,12.4100,ms,",
            "container,density_startup_window_p50,,38.3000,ms,",
            "container,density_projection,,6600,instances (projection),",
            "container,density_memory,1,1048576,bytes,",
            "container,density_ready,1,12.0000,ms,",
        ] {
            assert!(csv.lines().any(|l| l == row), "{row} in\n{csv}");
        }
    }
}
