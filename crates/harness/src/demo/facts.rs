//! From records to teaching material: the rows of each demo's table, and
//! findings — statements checked against the host's own facts (read here,
//! outside any namespace) that say in words what the table proves.

use isolab_workload::probe::{CapSet, ProbeReport};
use serde::Serialize;
use serde_json::Value;

use crate::modes::{InstanceOutcome, InstanceSpec, Isolation, ModeKind};

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

/// What one column contributes: its mode, what it ran, and the outcome
/// (`None` when the mode could not run).
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    pub mode: ModeKind,
    pub spec: &'a InstanceSpec,
    pub outcome: Option<&'a InstanceOutcome>,
    /// The companion probe's outcome (demos that also ask where they ran).
    pub probe: Option<&'a InstanceOutcome>,
}

impl Column<'_> {
    fn isolation(&self) -> Isolation {
        self.mode.isolation()
    }
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

/// A field of the result line by JSON pointer (`/knobs`, `/a/b`), non-null.
fn pointer<'a>(r: &'a InstanceOutcome, p: &str) -> Option<&'a Value> {
    let p = p.strip_prefix('/')?;
    let (first, rest) = p.split_once('/').map_or((p, None), |(a, b)| (a, Some(b)));
    let v = r.result.as_ref()?.get(first)?;
    match rest {
        None => Some(v),
        Some(rest) => v.pointer(&format!("/{rest}")),
    }
    .filter(|v| !v.is_null())
}

/// The `workload probe` report in an outcome, typed.
fn probe_of(r: &InstanceOutcome) -> Option<ProbeReport> {
    ProbeReport::from_result(&Value::Object(r.result.clone()?))
}

/// A probe fact as cell text (`n/a` where it could not be read).
fn probe_cell(r: &InstanceOutcome, f: impl Fn(&ProbeReport) -> Option<String>) -> String {
    probe_of(r)
        .as_ref()
        .and_then(f)
        .unwrap_or_else(|| "n/a".into())
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

fn uptime(v: Option<f64>) -> String {
    match v {
        None => "?".into(),
        Some(s) if s < 120.0 => format!("{s:.1} s"),
        Some(s) if s < 7200.0 => format!("{:.0} min", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        Some(s) => format!("{:.1} days", s / 86_400.0),
    }
}

/// A row from one function per column.
fn row(
    label: &str,
    cols: &[Column<'_>],
    f: impl Fn(&Column<'_>, &InstanceOutcome) -> String,
) -> Row {
    Row {
        label: label.to_owned(),
        cells: cols
            .iter()
            .map(|c| c.outcome.map(|r| f(c, r)).unwrap_or_else(|| NOT_RUN.into()))
            .collect(),
    }
}

fn fact_row(label: &str, cols: &[Column<'_>], p: &'static str) -> Row {
    row(label, cols, |_, r| text(pointer(r, p)))
}

fn probe_row(label: &str, cols: &[Column<'_>], f: impl Fn(&ProbeReport) -> Option<String>) -> Row {
    row(label, cols, |_, r| probe_cell(r, &f))
}

/// The arguments' value after `flag`, as a number.
fn arg_u64(spec: &InstanceSpec, flag: &str) -> Option<u64> {
    let i = spec.args.iter().position(|a| a == flag)?;
    spec.args.get(i + 1)?.parse().ok()
}

/// The rows of a demo's table.
pub fn rows(demo: &str, cols: &[Column<'_>], host: &HostTruth) -> Vec<Row> {
    let kernel = |f: fn(&isolab_workload::probe::KernelId) -> &String| {
        move |p: &ProbeReport| p.kernel.as_ref().map(|k| f(k).clone())
    };
    match demo {
        "kernel" => vec![
            probe_row("kernel release", cols, kernel(|k| &k.release)),
            probe_row("kernel version", cols, kernel(|k| &k.version)),
            probe_row("boot id", cols, |p| p.boot_id.clone()),
            row("uptime", cols, |_, r| {
                uptime(probe_of(r).and_then(|p| p.uptime_s))
            }),
            row("same kernel as the host", cols, |_, r| {
                yes_no(probe_of(r).is_some_and(|p| same_kernel(&p, host)))
            }),
        ],
        "pids" => vec![
            probe_row("own PID", cols, |p| Some(p.pid.to_string())),
            probe_row("PID 1 is", cols, |p| p.pid1_comm.clone()),
            probe_row("processes visible", cols, |p| {
                p.processes.map(|n| n.to_string())
            }),
        ],
        "filesystem" => vec![
            probe_row("mounts visible", cols, |p| p.mounts.map(|n| n.to_string())),
            probe_row("host paths reachable", cols, |p| {
                let visible: Vec<&str> = p
                    .host_paths_visible
                    .iter()
                    .filter(|(_, v)| **v)
                    .map(|(k, _)| k.as_str())
                    .collect();
                Some(if visible.is_empty() {
                    "none".into()
                } else {
                    visible.join(" ")
                })
            }),
        ],
        "network" => vec![
            probe_row("hostname", cols, |p| p.hostname.clone()),
            probe_row("interfaces", cols, |p| {
                p.interfaces.as_ref().map(|i| i.join(", "))
            }),
        ],
        "memory" => memory_rows(cols),
        "cpu" => cpu_rows(cols),
        "forkbomb" => fork_rows(cols),
        "knobs" => knob_rows(cols),
        "capabilities" => vec![
            probe_row("effective capabilities", cols, |p| capset(&p.cap_eff)),
            probe_row("permitted capabilities", cols, |p| capset(&p.cap_prm)),
            probe_row("bounding set", cols, |p| capset(&p.cap_bnd)),
            row("no_new_privs", cols, |_, r| {
                match probe_of(r).and_then(|p| p.no_new_privs) {
                    Some(1) => "1 (set)".into(),
                    Some(0) => "0 (not set)".into(),
                    _ => "?".into(),
                }
            }),
            row("seccomp", cols, |_, r| {
                match probe_of(r).and_then(|p| p.seccomp) {
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
fn same_kernel(p: &ProbeReport, host: &HostTruth) -> bool {
    match (p.boot_id.as_deref(), host.boot_id.as_deref()) {
        (Some(a), Some(b)) => a == b,
        _ => {
            let uts = nix::sys::utsname::uname().ok();
            let hv = uts
                .as_ref()
                .map(|u| u.version().to_string_lossy().into_owned());
            let k = p.kernel.as_ref();
            k.map(|k| k.release.as_str()) == host.kernel_release.as_deref()
                && k.map(|k| k.version.as_str()) == hv.as_deref()
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn capset(c: &Option<CapSet>) -> Option<String> {
    Some(match c {
        Some(c) => format!("{} (0x{})", c.count, c.hex),
        None => "?".into(),
    })
}

fn memory_rows(cols: &[Column<'_>]) -> Vec<Row> {
    vec![
        row("limit", cols, |c, _| match c.isolation() {
            Isolation::None => "none".into(),
            Isolation::Container => c
                .spec
                .memory_bytes
                .map(|b| format!("memory cgroup {}", mib(b)))
                .unwrap_or_else(|| "none".into()),
            Isolation::Vm => c
                .spec
                .memory_bytes
                .map(|b| format!("guest RAM {} MiB", b >> 20))
                .unwrap_or_else(|| "guest RAM (default)".into()),
        }),
        row("safety cap", cols, |c, _| {
            arg_u64(c.spec, "--max-mib")
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
            let why = match (r.status, c.isolation()) {
                (Some(0), _) if capped => "hit its safety cap",
                (Some(137), Isolation::Container) if oom > 0 => "cgroup OOM kill",
                (Some(137), Isolation::Vm) => "guest OOM killer",
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
        row("host-side peak memory", cols, |c, r| match c.isolation() {
            Isolation::Container => r
                .cgroup
                .as_ref()
                .and_then(|s| s.memory_peak_bytes)
                .map(|b| format!("{} (cgroup peak)", mib(b)))
                .unwrap_or_else(|| "?".into()),
            // The hog's own resident size at its end: the kernel's peak for
            // the child also counts the launcher's pages it started with.
            Isolation::None => pointer(r, "/rss_kib")
                .and_then(Value::as_u64)
                .map(|k| format!("{} (its RSS)", mib(k << 10)))
                .unwrap_or_else(|| "?".into()),
            Isolation::Vm => r
                .peak_rss_kib
                .map(|k| format!("{} (VMM RSS)", mib(k << 10)))
                .unwrap_or_else(|| "?".into()),
        }),
    ]
}

fn cpu_rows(cols: &[Column<'_>]) -> Vec<Row> {
    vec![
        row("CPU limit", cols, |c, _| match c.isolation() {
            Isolation::None => "none".into(),
            Isolation::Container => c
                .spec
                .cpus
                .map(|n| format!("{n} CPU (CFS quota)"))
                .unwrap_or_else(|| "none".into()),
            Isolation::Vm => format!("{} vCPU", c.spec.vcpus.unwrap_or(1)),
        }),
        row("CPUs it sees", cols, |c, _| {
            c.probe
                .map(|p| probe_cell(p, |p| p.cpus_online.map(|n| n.to_string())))
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
        row("limit", cols, |c, _| match (c.isolation(), c.spec.pids) {
            (Isolation::Container, Some(p)) => format!("pids.max {p}"),
            (Isolation::Vm, _) => "the guest kernel's".into(),
            _ => "none".into(),
        }),
        row("safety cap", cols, |c, _| {
            arg_u64(c.spec, "--max")
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
    // A mode's column under its default profile; the capabilities demo's
    // `--privileged` twin is looked up on its own.
    let col = |m: ModeKind| cols.iter().find(|c| c.mode == m && !c.spec.privileged);
    let rec = |m: ModeKind| col(m).and_then(|c| c.outcome);
    let probe = |m: ModeKind| rec(m).and_then(probe_of);
    let privileged = cols
        .iter()
        .find(|c| c.mode == ModeKind::Container && c.spec.privileged)
        .and_then(|c| c.outcome)
        .and_then(probe_of);
    let host_rel = host.kernel_release.clone().unwrap_or_default();
    match demo {
        "kernel" => {
            if let Some(p) = probe(ModeKind::Container) {
                let rel = p.kernel.as_ref().map(|k| k.release.clone());
                claim(
                    rel.as_deref() == Some(host_rel.as_str()),
                    format!(
                        "The container's kernel release ({}) is the host's ({host_rel}).",
                        rel.unwrap_or_default()
                    ),
                );
                claim(
                    p.boot_id == host.boot_id,
                    "The container reports the host's boot id: the same running kernel.".into(),
                );
            }
            if let Some(p) = probe(ModeKind::Microvm) {
                let rel = p.kernel.as_ref().map(|k| k.release.clone());
                claim(
                    rel.is_some() && !same_kernel(&p, host),
                    format!(
                        "The microVM runs a kernel of its own (release {}, up {}).",
                        rel.unwrap_or_default(),
                        uptime(p.uptime_s)
                    ),
                );
            }
        }
        "pids" => {
            if let Some(p) = probe(ModeKind::Container) {
                let n = p.processes.unwrap_or(u64::MAX);
                claim(
                    n < host.processes.unwrap_or(0),
                    format!(
                        "The container sees {n} processes; the host has {}.",
                        host.processes.unwrap_or(0)
                    ),
                );
                claim(
                    p.pid1_comm != host.pid1_comm,
                    format!(
                        "The container's PID 1 is {}, not the host's {}.",
                        p.pid1_comm.clone().unwrap_or_default(),
                        host.pid1_comm.clone().unwrap_or_default()
                    ),
                );
            }
        }
        "filesystem" => {
            if let Some(p) = probe(ModeKind::Container) {
                claim(
                    !p.host_paths_visible.is_empty() && p.host_paths_visible.values().all(|v| !v),
                    "None of the host paths probed is reachable from the container.".into(),
                );
            }
        }
        "network" => {
            if let Some(p) = probe(ModeKind::Container) {
                claim(
                    p.hostname != host.hostname,
                    format!(
                        "The container's hostname ({}) differs from the host's ({}).",
                        p.hostname.clone().unwrap_or_default(),
                        host.hostname.clone().unwrap_or_default()
                    ),
                );
                claim(
                    p.interfaces == Some(vec!["lo".to_owned()]),
                    format!(
                        "The container sees only `lo`; the host has {}.",
                        host.interfaces.join(", ")
                    ),
                );
            }
        }
        "memory" => {
            if let Some(r) = rec(ModeKind::Container) {
                let oom = r.cgroup.as_ref().map(|s| s.oom_kills).unwrap_or(0);
                claim(oom > 0 && r.status == Some(137),
                    format!("The container's hog was OOM-killed in its cgroup (oom_kill counter {oom}, status {}).", status_text(r.status)));
            }
            if let Some(r) = rec(ModeKind::Process) {
                claim(
                    pointer(r, "/capped").and_then(Value::as_bool) == Some(true),
                    "Nothing limited the plain process: it stopped only at its own safety cap."
                        .into(),
                );
            }
            if let Some(r) = rec(ModeKind::Microvm) {
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
            if let Some(r) = rec(ModeKind::Container) {
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
            if let Some(c) = col(ModeKind::Container) {
                if let Some(r) = c.outcome {
                    let forked = pointer(r, "/forked")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX);
                    let max = c.spec.pids.unwrap_or(0);
                    let errno = pointer(r, "/errno").and_then(Value::as_str);
                    claim(forked < max && errno == Some("EAGAIN"),
                        format!("pids.max {max} stopped the container's fork loop after {forked} children (EAGAIN)."));
                }
            }
        }
        "knobs" => {
            if let Some(r) = rec(ModeKind::Container) {
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
            if let (Some(p), Some(c)) = (probe(ModeKind::Process), probe(ModeKind::Container)) {
                let n = |r: &ProbeReport| r.cap_bnd.as_ref().map(|c| c.count);
                let t = |v: Option<u32>| v.map_or("n/a".into(), |v| v.to_string());
                claim(n(&c) <= n(&p) && n(&c).is_some(),
                    format!("The container's bounding set holds {} capabilities; the host process's {}.",
                        t(n(&c)), t(n(&p))));
            }
            if let Some(c) = probe(ModeKind::Container) {
                let n = c.cap_bnd.as_ref().map(|c| c.count);
                claim(
                    n == Some(14) && c.seccomp == Some(2),
                    format!(
                        "The default container keeps Docker's 14 capabilities (bounding set: {}) under a seccomp filter (Seccomp: {}, 2 = filter).",
                        n.map_or("n/a".into(), |v| v.to_string()),
                        c.seccomp.map_or("n/a".into(), |v| v.to_string())
                    ),
                );
            }
            if let Some(v) = &privileged {
                let n = v.cap_bnd.as_ref().map(|c| c.count);
                let host = probe(ModeKind::Process).and_then(|p| p.cap_bnd.map(|c| c.count));
                claim(
                    n.is_some() && n > Some(14) && host.is_none_or(|h| n == Some(h)) && v.seccomp == Some(0),
                    format!(
                        "The --privileged container keeps {} capabilities{} and has no seccomp filter (Seccomp: {}).",
                        n.map_or("n/a".into(), |v| v.to_string()),
                        host.map_or(String::new(), |h| format!(" (the host process: {h})")),
                        v.seccomp.map_or("n/a".into(), |v| v.to_string())
                    ),
                );
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Workload;
    use serde_json::json;

    fn rec(v: Value) -> InstanceOutcome {
        InstanceOutcome {
            status: Some(0),
            result: v.as_object().cloned(),
            ..InstanceOutcome::default()
        }
    }

    #[test]
    fn kernel_rows_and_findings_compare_with_the_host() {
        let host = HostTruth {
            kernel_release: Some("6.18.0".into()),
            boot_id: Some("b-host".into()),
            ..HostTruth::default()
        };
        let job = InstanceSpec::new(Workload::Probe, &[]);
        let kernel = |release: &str| json!({"sysname": "Linux", "release": release, "version": "#1", "machine": "x86_64"});
        let c = rec(
            json!({"workload": "probe", "pid": 2, "kernel": kernel("6.18.0"), "boot_id": "b-host", "uptime_s": 180000.0}),
        );
        let v = rec(
            json!({"workload": "probe", "pid": 2, "kernel": kernel("6.1.0"), "boot_id": "b-guest", "uptime_s": 0.4}),
        );
        let cols = [
            Column {
                mode: ModeKind::Process,
                spec: &job,
                outcome: None,
                probe: None,
            },
            Column {
                mode: ModeKind::Container,
                spec: &job,
                outcome: Some(&c),
                probe: None,
            },
            Column {
                mode: ModeKind::Microvm,
                spec: &job,
                outcome: Some(&v),
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
        let job = InstanceSpec {
            memory_bytes: Some(32 << 20),
            ..InstanceSpec::new(Workload::Hog, &["--max-mib", "256"])
        };
        let r = InstanceOutcome {
            status: Some(137),
            cgroup: Some(isolab_cgroups::Stats {
                oom_kills: 1,
                memory_peak_bytes: Some(32 << 20),
                ..Default::default()
            }),
            stderr_tail: vec!["hog: 28 MiB".into()],
            ..InstanceOutcome::default()
        };
        let cols = [Column {
            mode: ModeKind::Container,
            spec: &job,
            outcome: Some(&r),
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
        let job = InstanceSpec::new(Workload::Knob, &[]);
        let r = rec(json!({"knobs": [
            {"name": "kernel.domainname", "before": "(none)", "attempted": "isolab-demo", "accepted": true, "after": "isolab-demo"},
            {"name": "net.ipv4.ip_default_ttl", "before": "64", "attempted": "64", "accepted": true, "after": "64"},
            {"name": "vm.swappiness", "before": "60", "attempted": "61", "accepted": false, "error": "EROFS: Read-only file system", "after": "60"}
        ]}));
        let cols = [Column {
            mode: ModeKind::Container,
            spec: &job,
            outcome: Some(&r),
            probe: None,
        }];
        let rows = rows("knobs", &cols, &HostTruth::default());
        assert_eq!(rows[0].cells[0], "changed (none) -> isolab-demo");
        assert_eq!(rows[1].cells[0], "accepted (wrote back 64)");
        assert_eq!(rows[2].cells[0], "refused: EROFS (stays 60)");
    }

    #[test]
    fn the_capabilities_demo_contrasts_default_and_privileged_containers() {
        let job = InstanceSpec::new(Workload::Probe, &[]);
        let twin = InstanceSpec {
            privileged: true,
            ..job.clone()
        };
        let probe = |hex: &str, count: u32, seccomp: u64| {
            rec(json!({"workload": "probe", "pid": 2,
                "cap_bnd": {"hex": hex, "count": count},
                "cap_eff": {"hex": hex, "count": count},
                "no_new_privs": 0, "seccomp": seccomp}))
        };
        let host = probe("000001ffffffffff", 41, 0);
        let default = probe("00000000a80425fb", 14, 2);
        let privileged = probe("000001ffffffffff", 41, 0);
        let cols = [
            Column {
                mode: ModeKind::Process,
                spec: &job,
                outcome: Some(&host),
                probe: None,
            },
            Column {
                mode: ModeKind::Container,
                spec: &job,
                outcome: Some(&default),
                probe: None,
            },
            Column {
                mode: ModeKind::Container,
                spec: &twin,
                outcome: Some(&privileged),
                probe: None,
            },
        ];
        let rows = rows("capabilities", &cols, &HostTruth::default());
        let get = |l: &str| rows.iter().find(|r| r.label == l).unwrap().cells.clone();
        assert_eq!(
            get("bounding set"),
            [
                "41 (0x000001ffffffffff)",
                "14 (0x00000000a80425fb)",
                "41 (0x000001ffffffffff)"
            ]
        );
        assert_eq!(get("seccomp"), ["0 (off)", "2 (filter)", "0 (off)"]);
        let f = findings("capabilities", &cols, &HostTruth::default());
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f.iter().all(|f| f.holds), "{f:?}");
        assert!(f[1].text.contains("Docker's 14"), "{}", f[1].text);
        assert!(f[2].text.starts_with("The --privileged container keeps 41"));

        // A privileged twin that kept a filter is not what the table claims.
        let wrong = probe("000001ffffffffff", 41, 2);
        let cols = [
            cols[0],
            cols[1],
            Column {
                outcome: Some(&wrong),
                ..cols[2]
            },
        ];
        assert!(!findings("capabilities", &cols, &HostTruth::default())[2].holds);
    }
}
