//! The isolation sections of the compare report (table and Markdown): the
//! noisy-neighbour scenario per mode, one row per neighbour and load
//! pattern, then what did not run and why. Kept apart from the cost
//! sections' renderers; `table.rs` and `markdown.rs` call in here.

use std::fmt::Write;

use isolab_isolation::interference::Interference;
use isolab_isolation::neighbour::{NeighbourExit, NeighbourFate};

use crate::compare::CompareReport;
use crate::isolation::noisy::{ModeNeighbours, NeighbourResult, ScenarioStatus};
use crate::isolation::{ModeKernelFunctions, ModePosture, ModeSurface};

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

/// The noisy-neighbour title, naming the tenant (the built-in api or the
/// user's image).
fn title(r: &CompareReport) -> String {
    let tenant = r.config.image.as_ref().map_or("api", |i| i.short_name());
    format!("Noisy neighbour (tenant {tenant}, latency us; ratio = p99 with / p99 alone)")
}

/// The terminal sections (noisy neighbour, host system calls); empty when
/// neither ran.
pub fn table(r: &CompareReport) -> String {
    let mut out = neighbours_table(r);
    if !r.surface.is_empty() {
        let _ = writeln!(out, "\n{}", surface_title(r));
        let mut rows = vec![SURFACE_HEADER.iter().map(|s| s.to_string()).collect()];
        rows.extend(r.surface.iter().filter(measured).map(surface_cells));
        if rows.len() > 1 {
            out.push_str(&super::table::grid(&rows));
        }
        for l in surface_notes(r) {
            let _ = writeln!(out, "  - {l}");
        }
    }
    if !r.kernel_functions.is_empty() {
        let _ = writeln!(out, "\n{}", kernel_title(r));
        let mut rows = vec![KERNEL_HEADER.iter().map(|s| s.to_string()).collect()];
        rows.extend(r.kernel_functions.iter().filter_map(kernel_cells));
        if rows.len() > 1 {
            out.push_str(&super::table::grid(&rows));
        }
        for l in kernel_notes(r) {
            let _ = writeln!(out, "  - {l}");
        }
    }
    if !r.posture.is_empty() {
        let _ = writeln!(out, "\n{POSTURE_TITLE}");
        let mut rows = vec![POSTURE_HEADER.iter().map(|s| s.to_string()).collect()];
        rows.extend(r.posture.iter().filter_map(posture_cells));
        if rows.len() > 1 {
            out.push_str(&super::table::grid(&rows));
        }
        for l in posture_notes(r) {
            let _ = writeln!(out, "  - {l}");
        }
    }
    out
}

fn neighbours_table(r: &CompareReport) -> String {
    if r.neighbours.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{}\n", title(r));
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

/// The Markdown sections; empty when neither ran.
pub fn markdown(r: &CompareReport) -> String {
    let mut o = neighbours_markdown(r);
    if !r.surface.is_empty() {
        let _ = writeln!(
            o,
            "\n## {}\n\n| {} |\n|---|{}---|",
            surface_title(r),
            SURFACE_HEADER.join(" | "),
            "---:|".repeat(SURFACE_HEADER.len() - 2)
        );
        for m in r.surface.iter().filter(measured) {
            let _ = writeln!(o, "| {} |", surface_cells(m).join(" | "));
        }
        let notes = surface_notes(r);
        if !notes.is_empty() {
            o.push('\n');
            for l in notes {
                let _ = writeln!(o, "- {l}");
            }
        }
    }
    if !r.kernel_functions.is_empty() {
        let _ = writeln!(o, "\n## {}", kernel_title(r));
        let rows: Vec<Vec<String>> = r.kernel_functions.iter().filter_map(kernel_cells).collect();
        if !rows.is_empty() {
            let _ = writeln!(
                o,
                "\n| {} |\n|---|{}---|",
                KERNEL_HEADER.join(" | "),
                "---:|".repeat(KERNEL_HEADER.len() - 2)
            );
            for c in rows {
                let _ = writeln!(o, "| {} |", c.join(" | "));
            }
        }
        let notes = kernel_notes(r);
        if !notes.is_empty() {
            o.push('\n');
            for l in notes {
                let _ = writeln!(o, "- {l}");
            }
        }
    }
    if !r.posture.is_empty() {
        let _ = writeln!(
            o,
            "\n## {POSTURE_TITLE}\n\n| {} |\n|---|---|{}",
            POSTURE_HEADER.join(" | "),
            "---:|".repeat(POSTURE_HEADER.len() - 2)
        );
        for c in r.posture.iter().filter_map(posture_cells) {
            let _ = writeln!(o, "| {} |", c.join(" | "));
        }
        let notes = posture_notes(r);
        if !notes.is_empty() {
            o.push('\n');
            for l in notes {
                let _ = writeln!(o, "- {l}");
            }
        }
    }
    o
}

const POSTURE_TITLE: &str = "Security posture (workload over the kernel it talks to; host-side processes over the host kernel)";

const POSTURE_HEADER: [&str; 13] = [
    "mode",
    "kernel",
    "caps eff",
    "bounding",
    "no_new_privs",
    "seccomp",
    "ids",
    "/proc/sys writable",
    "devices",
    "host paths",
    "host procs",
    "host root",
    "host caps",
];

fn posture_cells(m: &ModePosture) -> Option<Vec<String>> {
    use isolab_isolation::posture::{KernelRelation, Seccomp};
    let w = m.workload.as_ref()?;
    let q = || "?".to_owned();
    let yes = |b: Option<bool>| b.map_or_else(q, |b| if b { "yes" } else { "no" }.into());
    let len = |v: &Option<Vec<String>>| v.as_ref().map_or_else(q, |v| v.len().to_string());
    let kernel = match &w.kernel {
        KernelRelation::Host => "host's".to_owned(),
        KernelRelation::Own { release } => {
            format!("own ({})", release.as_deref().unwrap_or("?"))
        }
        KernelRelation::Unknown => q(),
    };
    let seccomp = match w.seccomp {
        Some(Seccomp::Disabled) => "off".to_owned(),
        Some(Seccomp::Strict) => "strict".into(),
        Some(Seccomp::Filter) => w
            .seccomp_filters
            .map_or_else(|| "filter".into(), |n| format!("filter x{n}")),
        None => q(),
    };
    let ids = match w.ids_are_kernel_ids {
        Some(true) => "kernel's".to_owned(),
        Some(false) => "mapped".into(),
        None => q(),
    };
    let roots = m
        .host
        .iter()
        .filter(|p| p.is_host_root() == Some(true))
        .count();
    let caps = m.host.iter().filter_map(|p| p.host_capabilities()).max();
    Some(vec![
        m.mode.name().into(),
        kernel,
        w.cap_eff.as_ref().map_or_else(q, |c| c.count.to_string()),
        w.cap_bnd.as_ref().map_or_else(q, |c| c.count.to_string()),
        yes(w.no_new_privs),
        seccomp,
        ids,
        len(&w.proc_sys_writable),
        len(&w.devices),
        len(&w.host_paths_visible),
        m.host.len().to_string(),
        format!("{roots} of {}", m.host.len()),
        caps.map_or_else(q, |c| c.to_string()),
    ])
}

fn posture_notes(r: &CompareReport) -> Vec<String> {
    let mut v = vec![];
    for m in &r.posture {
        if let Some(how) = &m.workload_read {
            // A user's image runs no probe of ours: say where its side
            // came from and that its ? are not readable from outside.
            v.push(format!(
                "{}: workload side: {how}; ? = not readable from outside",
                m.mode.name()
            ));
        } else if let Some(w) = &m.workload {
            // "?" is a fact the workload's own /proc did not expose (gVisor's
            // has no boot id and no NoNewPrivs line): say which, never guess.
            let mut unknown = vec![];
            if matches!(w.kernel, isolab_isolation::posture::KernelRelation::Unknown) {
                unknown.push("kernel (no boot id, and the same release as the host)");
            }
            if w.no_new_privs.is_none() {
                unknown.push("no_new_privs (no NoNewPrivs line in its /proc/self/status)");
            }
            if w.seccomp.is_none() {
                unknown.push("seccomp (no Seccomp line in its /proc/self/status)");
            }
            if w.cap_eff.is_none() {
                unknown.push("capabilities (no CapEff line)");
            }
            if !unknown.is_empty() {
                v.push(format!(
                    "{}: ? = not readable inside it: {}",
                    m.mode.name(),
                    unknown.join("; ")
                ));
            }
        }
        match &m.status {
            ScenarioStatus::Measured => {}
            ScenarioStatus::Unavailable { reason } => {
                v.push(format!("{}: not run: {reason}", m.mode.name()))
            }
            ScenarioStatus::Failed { error } => {
                v.push(format!("{}: failed: {error}", m.mode.name()))
            }
        }
    }
    v
}

fn neighbours_markdown(r: &CompareReport) -> String {
    if r.neighbours.is_empty() {
        return String::new();
    }
    let mut o = format!("\n## {}\n\n| {} |\n", title(r), HEADER.join(" | "));
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

const SURFACE_HEADER: [&str; 7] = [
    "mode",
    "processes",
    "threads",
    "distinct syscalls",
    "calls",
    "calls/request",
    "most used",
];

fn surface_title(r: &CompareReport) -> String {
    let n = r.config.surface.as_ref().map_or(0, |s| s.requests);
    format!("Host system calls serving the instance ({n} requests; ptrace pass, not timed)")
}

fn measured(m: &&ModeSurface) -> bool {
    matches!(m.status, ScenarioStatus::Measured)
}

fn surface_cells(m: &ModeSurface) -> Vec<String> {
    let mut top: Vec<(&String, &u64)> = m.syscalls.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = top
        .iter()
        .take(5)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    vec![
        m.mode.name().into(),
        m.processes.to_string(),
        m.threads.to_string(),
        m.distinct().to_string(),
        m.calls().to_string(),
        if m.requests > 0 {
            format!("{:.1}", m.calls() as f64 / m.requests as f64)
        } else {
            "-".into()
        },
        top.join(", "),
    ]
}

const KERNEL_HEADER: [&str; 7] = [
    "mode",
    "threads",
    "distinct kernel functions",
    "entries",
    "entries/request",
    "lost",
    "most functions in",
];

/// Where the kernel functions were counted: a measured row exists only
/// where the kernel is ours, the emulated host's.
fn kernel_title(r: &CompareReport) -> String {
    let n = r.config.surface.as_ref().map_or(0, |s| s.requests);
    let any = r
        .kernel_functions
        .iter()
        .any(|m| matches!(m.status, ScenarioStatus::Measured));
    let where_ = if any {
        "emulated host's kernel"
    } else {
        "not measured here"
    };
    format!("Host kernel functions serving the instance ({n} requests; ftrace HAP pass, not timed; {where_})")
}

fn kernel_cells(m: &ModeKernelFunctions) -> Option<Vec<String>> {
    if !matches!(m.status, ScenarioStatus::Measured) {
        return None;
    }
    let top: Vec<String> = m
        .prefixes
        .iter()
        .take(4)
        .map(|(p, n)| format!("{p}_* {n}"))
        .collect();
    Some(vec![
        m.mode.name().into(),
        m.threads.to_string(),
        if m.lost_events > 0 {
            format!(">= {}", m.distinct)
        } else {
            m.distinct.to_string()
        },
        m.entries.to_string(),
        if m.requests > 0 {
            format!("{:.0}", m.entries as f64 / m.requests as f64)
        } else {
            "-".into()
        },
        m.lost_events.to_string(),
        top.join(", "),
    ])
}

/// Why modes were not measured: one line when every mode shares the
/// reason (this host's kernel is not ours), else one per mode.
fn kernel_notes(r: &CompareReport) -> Vec<String> {
    let here = |reason: &str| {
        format!(
            "not measured here: {}",
            reason.strip_prefix("not measured: ").unwrap_or(reason)
        )
    };
    let reasons: Vec<&str> = r
        .kernel_functions
        .iter()
        .filter_map(|m| match &m.status {
            ScenarioStatus::Unavailable { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    if reasons.len() == r.kernel_functions.len()
        && reasons.windows(2).all(|w| w[0] == w[1])
        && !reasons.is_empty()
    {
        return vec![format!("every mode: {}", here(reasons[0]))];
    }
    let mut v = vec![];
    for m in &r.kernel_functions {
        let name = m.mode.name();
        match &m.status {
            ScenarioStatus::Measured => {}
            ScenarioStatus::Unavailable { reason } => v.push(format!("{name}: {}", here(reason))),
            ScenarioStatus::Failed { error } => v.push(format!("{name}: failed: {error}")),
        }
        if m.lost_events > 0 {
            v.push(format!(
                "{name}: the ring buffer dropped {} entries: the count is a lower bound",
                m.lost_events
            ));
        }
        if m.errors > 0 {
            v.push(format!(
                "{name}: {} request(s) failed while traced",
                m.errors
            ));
        }
    }
    v
}

fn surface_notes(r: &CompareReport) -> Vec<String> {
    let mut v = vec![];
    for m in &r.surface {
        let name = m.mode.name();
        match &m.status {
            ScenarioStatus::Measured => {}
            ScenarioStatus::Unavailable { reason } => {
                v.push(format!("{name}: not traced: {reason}"))
            }
            ScenarioStatus::Failed { error } => v.push(format!("{name}: failed: {error}")),
        }
        if m.errors > 0 {
            v.push(format!(
                "{name}: {} request(s) failed while traced",
                m.errors
            ));
        }
        if !m.not_traced.is_empty() {
            v.push(format!("{name}: not traced: {}", m.not_traced.join("; ")));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
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
            config: crate::compare::CompareConfig::for_tests(Workload::Api),
            environment: crate::env::Environment::capture(),
            method: vec![],
            modes: vec![],
            density: vec![],
            surface: vec![],
            kernel_functions: vec![],
            posture: vec![],
            reading: vec![],
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
    fn the_surface_section_lists_distinct_calls_and_the_most_used() {
        let mut m = ModeSurface {
            mode: ModeKind::Runc,
            peer: true,
            status: ScenarioStatus::Measured,
            processes: 2,
            threads: 3,
            not_traced: vec!["77: ESRCH".into()],
            requests: 10,
            errors: 0,
            syscalls: [
                ("read", 30u64),
                ("write", 20),
                ("epoll_wait", 40),
                ("close", 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        };
        let mut r = report();
        r.config.surface = Some(crate::isolation::SurfaceConfig {
            requests: 10,
            ..Default::default()
        });
        r.surface = vec![m.clone()];
        m.mode = ModeKind::Microvm;
        m.status = ScenarioStatus::Unavailable {
            reason: "no hardware KVM".into(),
        };
        r.surface.push(m);
        let t = table(&r);
        let row = t
            .lines()
            .find(|l| l.trim_start().starts_with("runc"))
            .unwrap();
        for want in [
            " 2 ",
            " 3 ",
            " 4 ",
            " 91 ",
            "9.1",
            "epoll_wait 40, read 30, write 20, close 1",
        ] {
            assert!(row.contains(want), "{want} missing in {row}");
        }
        assert!(t.contains("Host system calls serving the instance (10 requests"));
        assert!(t.contains("runc: not traced: 77: ESRCH"), "{t}");
        assert!(t.contains("microvm: not traced: no hardware KVM"), "{t}");
        let md = markdown(&r);
        assert!(md.contains("| runc | 2 | 3 | 4 | 91 | 9.1 |"), "{md}");
    }

    #[test]
    fn csv_and_plots_carry_the_isolation_half() {
        let mut r = report();
        r.surface = vec![ModeSurface {
            mode: ModeKind::Runc,
            peer: true,
            status: ScenarioStatus::Measured,
            processes: 2,
            threads: 3,
            not_traced: vec![],
            requests: 10,
            errors: 0,
            syscalls: [("read", 30u64), ("write", 20)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }];
        let csv = crate::report::csv::render(&r);
        for row in [
            "container,interference_p99_ratio,memory/sequential,2.5000,ratio,",
            "container,tenant_p99_alone,memory/sequential,",
            "container,tenant_errors_with,memory/sequential,0,requests,",
            "runc,host_syscalls_distinct,,2,syscalls,",
            "runc,host_syscalls_per_request,,5.0000,calls,",
            "runc,host_syscall,read,30,calls,",
        ] {
            assert!(csv.lines().any(|l| l.starts_with(row)), "{row} in\n{csv}");
        }
        assert!(!csv.contains("microvm"), "an unmeasured mode has no rows");
        let dir = tempfile::tempdir().unwrap();
        let written = crate::report::plots::write_all(&r, dir.path()).unwrap();
        for (f, names) in [
            ("interference.svg", "memory/sequential"),
            ("syscalls.svg", "runc"),
        ] {
            assert!(written.contains(&f.to_string()), "{f} in {written:?}");
            let svg = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains(names), "{f}");
        }
    }

    #[test]
    fn posture_question_marks_are_explained() {
        use isolab_isolation::posture::{HostKernel, WorkloadPosture};
        let probe = serde_json::json!({
            "workload": "probe", "ok": true,
            "kernel": {"release": "6.18.44", "sysname": "Linux"},
            "seccomp": 0, "uid_map": "0 0 4294967295",
            "cap_eff": {"hex": "0000000000000001", "count": 1},
        });
        let host = HostKernel {
            release: "6.18.44".into(),
            boot_id: Some("b".into()),
        };
        let mut r = report();
        r.posture = vec![ModePosture {
            mode: ModeKind::Gvisor,
            peer: true,
            status: ScenarioStatus::Measured,
            workload: Some(WorkloadPosture::from_probe(&probe, &host).unwrap()),
            host: vec![],
            workload_read: None,
        }];
        let t = table(&r);
        assert!(
            t.contains("gvisor: ? = not readable inside it: kernel (no boot id, and the same release as the host); no_new_privs (no NoNewPrivs line"),
            "{t}"
        );
        // A user's image runs no probe: where its side came from is said.
        r.posture[0].workload_read = Some("read from the host: /proc/9/status".into());
        let t = table(&r);
        assert!(
            t.contains("gvisor: workload side: read from the host: /proc/9/status; ? = not readable from outside"),
            "{t}"
        );
    }

    #[test]
    fn kernel_functions_show_where_measured_and_say_why_not_elsewhere() {
        use crate::isolation::ModeKernelFunctions;
        let measured = ModeKernelFunctions {
            mode: ModeKind::Microvm,
            peer: false,
            status: ScenarioStatus::Measured,
            threads: 3,
            distinct: 1234,
            entries: 50_000,
            lost_events: 0,
            requests: 30,
            errors: 0,
            prefixes: vec![("kvm".into(), 120), ("tcp".into(), 80)],
        };
        let why = isolab_isolation::hap::NotMeasured::HostKernel.to_string();
        let not = |mode| ModeKernelFunctions {
            mode,
            status: ScenarioStatus::Unavailable {
                reason: why.clone(),
            },
            distinct: 0,
            prefixes: vec![],
            ..measured.clone()
        };
        let mut r = CompareReport {
            kernel_functions: vec![not(ModeKind::Process), not(ModeKind::Container)],
            ..report()
        };
        r.config.surface = Some(crate::isolation::SurfaceConfig {
            requests: 30,
            ..Default::default()
        });
        let t = table(&r);
        assert!(
            t.contains("ftrace HAP pass, not timed; not measured here)"),
            "{t}"
        );
        assert!(
            t.contains("every mode: not measured here: the host kernel is not ours"),
            "{t}"
        );
        assert!(
            !t.contains("distinct kernel functions"),
            "no empty grid: {t}"
        );
        r.kernel_functions = vec![not(ModeKind::Process), measured];
        let t = table(&r);
        assert!(t.contains("emulated host's kernel)"), "{t}");
        assert!(t.contains("1234") && t.contains("kvm_* 120"), "{t}");
        assert!(
            t.contains("process: not measured here: the host kernel is not ours"),
            "{t}"
        );
        let md = markdown(&r);
        assert!(
            md.contains("| microvm | 3 | 1234 | 50000 | 1667 | 0 | kvm_* 120, tcp_* 80 |"),
            "{md}"
        );
        let csv = crate::report::csv::render(&r);
        assert!(
            csv.contains("microvm,host_kernel_functions_distinct,,1234,functions,"),
            "{csv}"
        );
        assert!(!csv.contains("process,host_kernel_functions_distinct"));
        let json = crate::report::json(&r);
        assert!(json.contains("\"kernel_functions\""), "{json}");
        let dir = tempfile::tempdir().unwrap();
        let written = crate::report::plots::write_all(&r, dir.path()).unwrap();
        assert!(
            written.contains(&"kernel-functions.svg".to_string()),
            "{written:?}"
        );
        let svg = std::fs::read_to_string(dir.path().join("kernel-functions.svg")).unwrap();
        assert!(
            svg.contains("microvm") && !svg.contains(">process<"),
            "measured modes only"
        );
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
