//! From records to teaching material: the rows of each demo's table, and
//! findings — statements checked against the host's own facts (read here,
//! outside any namespace) that say in words what the table proves.

use serde::Serialize;
use serde_json::Value;

use super::runner::{DemoMode, Job, RunRecord};

/// The host's own answers to the probe's questions, read by `bench` itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostTruth {
    pub kernel_release: Option<String>,
    pub boot_id: Option<String>,
    pub hostname: Option<String>,
    pub pid1_comm: Option<String>,
    pub processes: Option<u64>,
    pub interfaces: Vec<String>,
}

impl HostTruth {
    /// Reads the host's facts under `proc_root` and `sys_root`.
    pub fn read(proc_root: &std::path::Path, sys_root: &std::path::Path) -> Self {
        let rd =
            |p: std::path::PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        let uts = nix::sys::utsname::uname().ok();
        let processes = std::fs::read_dir(proc_root).ok().map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        });
        let mut interfaces: Vec<String> = std::fs::read_dir(sys_root.join("class/net"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        interfaces.sort();
        Self {
            kernel_release: uts
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned()),
            hostname: uts
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned()),
            boot_id: rd(proc_root.join("sys/kernel/random/boot_id")),
            pid1_comm: rd(proc_root.join("1/comm")),
            processes,
            interfaces,
        }
    }
}

/// One row of a demo's table: a label and one cell per column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub label: String,
    pub cells: Vec<String>,
}

/// A statement checked against the evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub holds: bool,
    pub text: String,
}

/// What one column contributes: its mode, its job, and its record (`None`
/// when the mode could not run).
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    pub mode: DemoMode,
    pub job: &'a Job,
    pub record: Option<&'a RunRecord>,
    /// The companion probe's record (demos that also ask where they ran).
    pub probe: Option<&'a RunRecord>,
}

/// Cell text for a missing column.
pub const NOT_RUN: &str = "—";

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "n/a".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| text(Some(x)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

fn pointer<'a>(r: &'a RunRecord, p: &str) -> Option<&'a Value> {
    r.result.as_ref()?.pointer(p).filter(|v| !v.is_null())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn status_text(s: Option<i32>) -> String {
    match s {
        None => "?".into(),
        Some(0) => "exit 0".into(),
        Some(c) if c > 128 => {
            let name = nix::sys::signal::Signal::try_from(c - 128)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {}", c - 128));
            format!("{name} ({c})")
        }
        Some(c) => format!("exit {c}"),
    }
}

fn uptime(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        None => "?".into(),
        Some(s) if s < 120.0 => format!("{s:.1} s"),
        Some(s) if s < 7200.0 => format!("{:.0} min", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        Some(s) => format!("{:.1} days", s / 86_400.0),
    }
}

/// A row from one function per column.
fn row(label: &str, cols: &[Column<'_>], f: impl Fn(&Column<'_>, &RunRecord) -> String) -> Row {
    Row {
        label: label.to_owned(),
        cells: cols
            .iter()
            .map(|c| c.record.map(|r| f(c, r)).unwrap_or_else(|| NOT_RUN.into()))
            .collect(),
    }
}

fn fact_row(label: &str, cols: &[Column<'_>], p: &'static str) -> Row {
    row(label, cols, |_, r| text(pointer(r, p)))
}

/// The arguments' value after `flag`, as a number.
fn arg_u64(job: &Job, flag: &str) -> Option<u64> {
    let i = job.args.iter().position(|a| a == flag)?;
    job.args.get(i + 1)?.parse().ok()
}

/// The rows of a demo's table.
pub fn rows(demo: &str, cols: &[Column<'_>], host: &HostTruth) -> Vec<Row> {
    match demo {
        "kernel" => vec![
            fact_row("kernel release", cols, "/kernel/release"),
            fact_row("kernel version", cols, "/kernel/version"),
            fact_row("boot id", cols, "/boot_id"),
            row("uptime", cols, |_, r| uptime(pointer(r, "/uptime_s"))),
            row("same kernel as the host", cols, |_, r| {
                yes_no(same_kernel(r, host))
            }),
        ],
        "pids" => vec![
            fact_row("own PID", cols, "/pid"),
            fact_row("PID 1 is", cols, "/pid1_comm"),
            fact_row("processes visible", cols, "/processes"),
        ],
        "filesystem" => vec![
            fact_row("mounts visible", cols, "/mounts"),
            row("host paths reachable", cols, |_, r| {
                let visible: Vec<&str> = pointer(r, "/host_paths_visible")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter(|(_, v)| v.as_bool() == Some(true))
                            .map(|(k, _)| k.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if visible.is_empty() {
                    "none".into()
                } else {
                    visible.join(" ")
                }
            }),
        ],
        "network" => vec![
            fact_row("hostname", cols, "/hostname"),
            fact_row("interfaces", cols, "/interfaces"),
        ],
        "memory" => memory_rows(cols),
        "cpu" => cpu_rows(cols),
        "forkbomb" => fork_rows(cols),
        "knobs" => knob_rows(cols),
        "capabilities" => vec![
            row("effective capabilities", cols, |_, r| capset(r, "cap_eff")),
            row("permitted capabilities", cols, |_, r| capset(r, "cap_prm")),
            row("bounding set", cols, |_, r| capset(r, "cap_bnd")),
            row("no_new_privs", cols, |_, r| {
                match pointer(r, "/no_new_privs").and_then(Value::as_u64) {
                    Some(1) => "1 (set)".into(),
                    Some(0) => "0 (not set)".into(),
                    _ => "?".into(),
                }
            }),
            row("seccomp", cols, |_, r| {
                match pointer(r, "/seccomp").and_then(Value::as_u64) {
                    Some(0) => "0 (off)".into(),
                    Some(1) => "1 (strict)".into(),
                    Some(2) => "2 (filter)".into(),
                    _ => "n/a (not in this kernel)".into(),
                }
            }),
        ],
        _ => Vec::new(),
    }
}

/// `EROFS` from nix's `EROFS: Read-only file system`.
fn errno_name(e: &str) -> String {
    match e.split_once(':') {
        Some((name, _)) if name.starts_with('E') && !name.contains(' ') => name.to_owned(),
        _ => e.to_owned(),
    }
}

/// The same running kernel: equal boot ids where both are known (a guest
/// kernel without sysctl support has none), else equal release and version.
fn same_kernel(r: &RunRecord, host: &HostTruth) -> bool {
    match (
        pointer(r, "/boot_id").and_then(Value::as_str),
        host.boot_id.as_deref(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => {
            let uts = nix::sys::utsname::uname().ok();
            let hv = uts
                .as_ref()
                .map(|u| u.version().to_string_lossy().into_owned());
            pointer(r, "/kernel/release").and_then(Value::as_str) == host.kernel_release.as_deref()
                && pointer(r, "/kernel/version").and_then(Value::as_str) == hv.as_deref()
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn capset(r: &RunRecord, key: &str) -> String {
    match (
        pointer(r, &format!("/{key}/count")),
        pointer(r, &format!("/{key}/hex")),
    ) {
        (Some(n), Some(h)) => format!("{n} (0x{})", text(Some(h))),
        _ => "?".into(),
    }
}

fn memory_rows(cols: &[Column<'_>]) -> Vec<Row> {
    vec![
        row("limit", cols, |c, _| match c.mode {
            DemoMode::Process => "none".into(),
            DemoMode::Container => c
                .job
                .memory_bytes
                .map(|b| format!("memory cgroup {}", mib(b)))
                .unwrap_or_else(|| "none".into()),
            DemoMode::Microvm => c
                .job
                .vm_memory_mib
                .map(|m| format!("guest RAM {m} MiB"))
                .unwrap_or_else(|| "guest RAM (default)".into()),
        }),
        row("safety cap", cols, |c, _| {
            arg_u64(c.job, "--max-mib")
                .map(|m| format!("{m} MiB"))
                .unwrap_or_else(|| "?".into())
        }),
        row("hog reached", cols, |_, r| {
            match (
                pointer(r, "/mib").and_then(Value::as_u64),
                r.hog_progress_mib(),
            ) {
                (Some(m), _) => format!("{m} MiB"),
                (None, Some(m)) => format!("{m} MiB, then died"),
                (None, None) => "died before reporting".into(),
            }
        }),
        row("how it ended", cols, |c, r| {
            let capped = pointer(r, "/capped").and_then(Value::as_bool) == Some(true);
            let oom = r.cgroup.as_ref().map(|s| s.oom_kills).unwrap_or(0);
            let why = match (r.status, c.mode) {
                (Some(0), _) if capped => "hit its safety cap",
                (Some(137), DemoMode::Container) if oom > 0 => "cgroup OOM kill",
                (Some(137), DemoMode::Microvm) => "guest OOM killer",
                (Some(137), _) => "SIGKILL",
                _ => "",
            };
            if why.is_empty() {
                status_text(r.status)
            } else {
                format!("{}: {why}", status_text(r.status))
            }
        }),
        row("OOM kill counter", cols, |_, r| match &r.cgroup {
            Some(s) => s.oom_kills.to_string(),
            None => "n/a (no cgroup)".into(),
        }),
        row("host-side peak memory", cols, |c, r| match c.mode {
            DemoMode::Container => r
                .cgroup
                .as_ref()
                .and_then(|s| s.memory_peak_bytes)
                .map(|b| format!("{} (cgroup peak)", mib(b)))
                .unwrap_or_else(|| "?".into()),
            // The hog's own resident size at its end: the kernel's peak for
            // the child also counts the launcher's pages it started with.
            DemoMode::Process => pointer(r, "/rss_kib")
                .and_then(Value::as_u64)
                .map(|k| format!("{} (its RSS)", mib(k << 10)))
                .unwrap_or_else(|| "?".into()),
            DemoMode::Microvm => r
                .host_peak_rss_kib
                .map(|k| format!("{} (VMM RSS)", mib(k << 10)))
                .unwrap_or_else(|| "?".into()),
        }),
    ]
}

fn cpu_rows(cols: &[Column<'_>]) -> Vec<Row> {
    vec![
        row("CPU limit", cols, |c, _| match c.mode {
            DemoMode::Process => "none".into(),
            DemoMode::Container => c
                .job
                .cpus
                .map(|n| format!("{n} CPU (CFS quota)"))
                .unwrap_or_else(|| "none".into()),
            DemoMode::Microvm => format!("{} vCPU", c.job.vm_vcpus.unwrap_or(1)),
        }),
        row("CPUs it sees", cols, |c, _| {
            c.probe
                .map(|p| text(pointer(p, "/cpus_online")))
                .unwrap_or_else(|| "?".into())
        }),
        row("hashes per second", cols, |_, r| {
            pointer(r, "/ops_per_sec")
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "?".into())
        }),
        row("CPU time used", cols, |_, r| match r.cpu_time_us {
            Some(us) => format!("{:.2} s", us as f64 / 1e6),
            None => "n/a (not measured)".into(),
        }),
        row("share of one CPU", cols, |_, r| {
            match (
                r.cpu_time_us,
                pointer(r, "/elapsed_ms").and_then(Value::as_f64),
            ) {
                (Some(us), Some(ms)) if ms > 0.0 => format!("{:.0}%", us as f64 / 10.0 / ms),
                _ => "?".into(),
            }
        }),
        row("throttled periods", cols, |_, r| match &r.cgroup {
            Some(s) => match (s.cpu_throttled_periods, s.cpu_periods) {
                (Some(t), Some(p)) => format!("{t} of {p}"),
                _ => "?".into(),
            },
            None => "n/a (no cgroup)".into(),
        }),
        row("time throttled", cols, |_, r| {
            match r.cgroup.as_ref().and_then(|s| s.cpu_throttled_usec) {
                Some(us) => format!("{:.2} s", us as f64 / 1e6),
                None => "n/a (no cgroup)".into(),
            }
        }),
    ]
}

fn fork_rows(cols: &[Column<'_>]) -> Vec<Row> {
    vec![
        row("limit", cols, |c, _| match (c.mode, c.job.pids) {
            (DemoMode::Container, Some(p)) => format!("pids.max {p}"),
            (DemoMode::Microvm, _) => "the guest kernel's".into(),
            _ => "none".into(),
        }),
        row("safety cap", cols, |c, _| {
            arg_u64(c.job, "--max")
                .map(|m| format!("{m} children"))
                .unwrap_or_else(|| "?".into())
        }),
        fact_row("children forked", cols, "/forked"),
        row("stopped because", cols, |_, r| {
            match (
                pointer(r, "/capped").and_then(Value::as_bool),
                pointer(r, "/errno"),
            ) {
                (Some(true), _) => "reached its own safety cap".into(),
                (Some(false), Some(e)) => format!("fork failed: {}", text(Some(e))),
                _ => status_text(r.status),
            }
        }),
        row("fork refusals counted", cols, |_, r| {
            match r.cgroup.as_ref().and_then(|s| s.pids_limit_hits) {
                Some(n) => format!("{n} (pids.events max)"),
                None => "n/a (no cgroup)".into(),
            }
        }),
        fact_row("children reaped", cols, "/reaped"),
    ]
}

fn knob_rows(cols: &[Column<'_>]) -> Vec<Row> {
    let names = [
        "kernel.domainname",
        "net.ipv4.ip_default_ttl",
        "vm.swappiness",
    ];
    names
        .iter()
        .map(|name| {
            row(name, cols, |_, r| {
                let k = r
                    .fact("knobs")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|k| k["name"] == *name));
                let Some(k) = k else { return "?".into() };
                let before = text(k.get("before"));
                let after = text(k.get("after"));
                let tried = text(k.get("attempted"));
                if k["accepted"].as_bool() == Some(true) {
                    if k.get("attempted").is_none_or(Value::is_null) {
                        format!("writable (open for write; stays {before})")
                    } else if before == tried {
                        format!("accepted (wrote back {before})")
                    } else {
                        format!("changed {before} -> {after}")
                    }
                } else if k.get("before").is_none_or(Value::is_null) {
                    "absent in this kernel".into()
                } else {
                    format!(
                        "refused: {} (stays {before})",
                        errno_name(&text(k.get("error")))
                    )
                }
            })
        })
        .collect()
}

/// Findings for a demo: the claims the table supports, each checked.
pub fn findings(demo: &str, cols: &[Column<'_>], host: &HostTruth) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut claim = |holds: bool, text: String| out.push(Finding { holds, text });
    let rec = |m: DemoMode| cols.iter().find(|c| c.mode == m).and_then(|c| c.record);
    let s = |r: &RunRecord, p: &str| pointer(r, p).and_then(Value::as_str).map(str::to_owned);
    let host_rel = host.kernel_release.clone().unwrap_or_default();
    match demo {
        "kernel" => {
            if let Some(r) = rec(DemoMode::Container) {
                let rel = s(r, "/kernel/release");
                claim(
                    rel.as_deref() == Some(host_rel.as_str()),
                    format!(
                        "The container's kernel release ({}) is the host's ({host_rel}).",
                        rel.unwrap_or_default()
                    ),
                );
                claim(
                    s(r, "/boot_id") == host.boot_id,
                    "The container reports the host's boot id: the same running kernel.".into(),
                );
            }
            if let Some(r) = rec(DemoMode::Microvm) {
                let rel = s(r, "/kernel/release");
                claim(
                    rel.is_some() && !same_kernel(r, host),
                    format!(
                        "The microVM runs a kernel of its own (release {}, up {}).",
                        rel.unwrap_or_default(),
                        uptime(pointer(r, "/uptime_s"))
                    ),
                );
            }
        }
        "pids" => {
            if let Some(r) = rec(DemoMode::Container) {
                let n = pointer(r, "/processes")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX);
                claim(
                    n < host.processes.unwrap_or(0),
                    format!(
                        "The container sees {n} processes; the host has {}.",
                        host.processes.unwrap_or(0)
                    ),
                );
                claim(
                    s(r, "/pid1_comm") != host.pid1_comm,
                    format!(
                        "The container's PID 1 is {}, not the host's {}.",
                        s(r, "/pid1_comm").unwrap_or_default(),
                        host.pid1_comm.clone().unwrap_or_default()
                    ),
                );
            }
        }
        "filesystem" => {
            if let Some(r) = rec(DemoMode::Container) {
                let none = pointer(r, "/host_paths_visible")
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.values().all(|v| v.as_bool() == Some(false)));
                claim(
                    none,
                    "None of the host paths probed is reachable from the container.".into(),
                );
            }
        }
        "network" => {
            if let Some(r) = rec(DemoMode::Container) {
                claim(
                    s(r, "/hostname") != host.hostname,
                    format!(
                        "The container's hostname ({}) differs from the host's ({}).",
                        s(r, "/hostname").unwrap_or_default(),
                        host.hostname.clone().unwrap_or_default()
                    ),
                );
                let ifs = pointer(r, "/interfaces").cloned();
                claim(
                    ifs == Some(serde_json::json!(["lo"])),
                    format!(
                        "The container sees only `lo`; the host has {}.",
                        host.interfaces.join(", ")
                    ),
                );
            }
        }
        "memory" => {
            if let Some(r) = rec(DemoMode::Container) {
                let oom = r.cgroup.as_ref().map(|s| s.oom_kills).unwrap_or(0);
                claim(oom > 0 && r.status == Some(137),
                    format!("The container's hog was OOM-killed in its cgroup (oom_kill counter {oom}, status {}).", status_text(r.status)));
            }
            if let Some(r) = rec(DemoMode::Process) {
                claim(
                    pointer(r, "/capped").and_then(Value::as_bool) == Some(true),
                    "Nothing limited the plain process: it stopped only at its own safety cap."
                        .into(),
                );
            }
            if let Some(r) = rec(DemoMode::Microvm) {
                claim(
                    r.status == Some(137),
                    format!(
                        "The guest's own OOM killer ended the hog inside the microVM ({}).",
                        status_text(r.status)
                    ),
                );
            }
        }
        "cpu" => {
            if let Some(r) = rec(DemoMode::Container) {
                let t = r
                    .cgroup
                    .as_ref()
                    .and_then(|s| s.cpu_throttled_periods)
                    .unwrap_or(0);
                claim(
                    t > 0,
                    format!("The container's cgroup was throttled in {t} CFS periods."),
                );
            }
        }
        "forkbomb" => {
            if let Some(c) = cols.iter().find(|c| c.mode == DemoMode::Container) {
                if let Some(r) = c.record {
                    let forked = pointer(r, "/forked")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX);
                    let max = c.job.pids.unwrap_or(0);
                    claim(forked < max && s(r, "/errno").as_deref() == Some("EAGAIN"),
                        format!("pids.max {max} stopped the container's fork loop after {forked} children (EAGAIN)."));
                }
            }
        }
        "knobs" => {
            if let Some(r) = rec(DemoMode::Container) {
                let refused = r
                    .fact("knobs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|k| k["name"] == "vm.swappiness")
                            .all(|k| k["accepted"] == false)
                    })
                    .unwrap_or(false);
                claim(
                    refused,
                    "The container could not write the global vm.swappiness.".into(),
                );
            }
        }
        "capabilities" => {
            if let (Some(p), Some(c)) = (rec(DemoMode::Process), rec(DemoMode::Container)) {
                let n = |r: &RunRecord| pointer(r, "/cap_bnd/count").and_then(Value::as_u64);
                claim(n(c) <= n(p) && n(c).is_some(),
                    format!("The container's bounding set holds {} capabilities; the host process's {}.",
                        text(pointer(c, "/cap_bnd/count")), text(pointer(p, "/cap_bnd/count"))));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> RunRecord {
        RunRecord {
            status: Some(0),
            result: Some(v),
            ..RunRecord::default()
        }
    }

    #[test]
    fn kernel_rows_and_findings_compare_with_the_host() {
        let host = HostTruth {
            kernel_release: Some("6.18.0".into()),
            boot_id: Some("b-host".into()),
            ..HostTruth::default()
        };
        let job = Job::new("probe", &[]);
        let c = rec(
            json!({"kernel": {"release": "6.18.0"}, "boot_id": "b-host", "uptime_s": 180000.0}),
        );
        let v = rec(json!({"kernel": {"release": "6.1.0"}, "boot_id": "b-guest", "uptime_s": 0.4}));
        let cols = [
            Column {
                mode: DemoMode::Process,
                job: &job,
                record: None,
                probe: None,
            },
            Column {
                mode: DemoMode::Container,
                job: &job,
                record: Some(&c),
                probe: None,
            },
            Column {
                mode: DemoMode::Microvm,
                job: &job,
                record: Some(&v),
                probe: None,
            },
        ];
        let rows = rows("kernel", &cols, &host);
        assert_eq!(rows[0].cells, vec![NOT_RUN, "6.18.0", "6.1.0"]);
        assert_eq!(rows[3].cells[1], "2.1 days");
        assert_eq!(rows[3].cells[2], "0.4 s");
        assert_eq!(rows[4].cells[1..], ["yes", "no"]);
        let f = findings("kernel", &cols, &host);
        assert!(f.iter().all(|f| f.holds), "{f:?}");
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn an_oom_killed_container_reads_as_such() {
        let job = Job {
            memory_bytes: Some(32 << 20),
            ..Job::new("hog", &["--max-mib", "256"])
        };
        let r = RunRecord {
            status: Some(137),
            cgroup: Some(isolab_cgroups::Stats {
                oom_kills: 1,
                memory_peak_bytes: Some(32 << 20),
                ..Default::default()
            }),
            stderr_tail: vec!["hog: 28 MiB".into()],
            ..RunRecord::default()
        };
        let cols = [Column {
            mode: DemoMode::Container,
            job: &job,
            record: Some(&r),
            probe: None,
        }];
        let rows = rows("memory", &cols, &HostTruth::default());
        let get = |l: &str| rows.iter().find(|r| r.label == l).unwrap().cells[0].clone();
        assert_eq!(get("limit"), "memory cgroup 32.0 MiB");
        assert_eq!(get("safety cap"), "256 MiB");
        assert_eq!(get("hog reached"), "28 MiB, then died");
        assert_eq!(get("how it ended"), "SIGKILL (137): cgroup OOM kill");
        assert_eq!(get("OOM kill counter"), "1");
        assert!(findings("memory", &cols, &HostTruth::default())[0].holds);
    }

    #[test]
    fn knob_cells_say_refused_changed_or_unchanged() {
        let job = Job::new("knob", &[]);
        let r = rec(json!({"knobs": [
            {"name": "kernel.domainname", "before": "(none)", "attempted": "isolab-demo", "accepted": true, "after": "isolab-demo"},
            {"name": "net.ipv4.ip_default_ttl", "before": "64", "attempted": "64", "accepted": true, "after": "64"},
            {"name": "vm.swappiness", "before": "60", "attempted": "61", "accepted": false, "error": "EROFS: Read-only file system", "after": "60"}
        ]}));
        let cols = [Column {
            mode: DemoMode::Container,
            job: &job,
            record: Some(&r),
            probe: None,
        }];
        let rows = rows("knobs", &cols, &HostTruth::default());
        assert_eq!(rows[0].cells[0], "changed (none) -> isolab-demo");
        assert_eq!(rows[1].cells[0], "accepted (wrote back 64)");
        assert_eq!(rows[2].cells[0], "refused: EROFS (stays 60)");
    }
}
