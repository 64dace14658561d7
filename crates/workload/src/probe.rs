//! `workload probe`: one JSON line of what the workload can observe about
//! where it runs: kernel, identity, processes, network, mounts, privileges,
//! cgroups and CPUs. Used in demos to show side by side what a process, a
//! container and a microVM guest see.
//!
//! Every reader takes the `/proc` and `/sys` roots as parameters so the
//! gathering is unit-tested on a fake tree. A fact that cannot be read is
//! `null`, never a made-up value.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{ready, result, status};

/// Paths that, when visible, suggest the host's filesystem is visible.
pub const HOST_PATHS: &[&str] = &[
    "/etc/passwd",
    "/home",
    "/root",
    "/usr/bin",
    "/var/log",
    "/boot",
];

/// Where the probe looks (real roots in production, a temp tree in tests).
#[derive(Debug, Clone, Copy)]
pub struct Roots<'a> {
    pub proc: &'a Path,
    pub sys: &'a Path,
    pub fs: &'a Path,
}

impl Roots<'static> {
    /// The real `/proc`, `/sys` and `/`.
    pub fn real() -> Self {
        Self {
            proc: Path::new("/proc"),
            sys: Path::new("/sys"),
            fs: Path::new("/"),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// Capability set given as hex in status: the hex and the number of caps.
fn capset(hex: Option<&str>) -> Value {
    match hex.and_then(|h| u64::from_str_radix(h, 16).ok().map(|v| (h, v))) {
        Some((h, v)) => json!({ "hex": h, "count": v.count_ones() }),
        None => Value::Null,
    }
}

fn count_pids(proc_root: &Path) -> Option<u64> {
    let rd = std::fs::read_dir(proc_root).ok()?;
    Some(
        rd.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .count() as u64,
    )
}

fn interfaces(sys_root: &Path) -> Option<Vec<String>> {
    let rd = std::fs::read_dir(sys_root.join("class/net")).ok()?;
    let mut v: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Some(v)
}

/// Gathers the facts (without the `workload`/`ok` header).
pub fn facts(roots: Roots<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    let uts = nix::sys::utsname::uname().ok();
    let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
    m.insert(
        "kernel".into(),
        match &uts {
            Some(u) => json!({
                "sysname": s(u.sysname()),
                "release": s(u.release()),
                "version": s(u.version()),
                "machine": s(u.machine()),
            }),
            None => Value::Null,
        },
    );
    m.insert(
        "hostname".into(),
        uts.as_ref().map(|u| s(u.nodename())).into(),
    );
    m.insert("workload_version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert(
        "boot_id".into(),
        read_trim(&roots.proc.join("sys/kernel/random/boot_id")).into(),
    );
    m.insert(
        "uptime_s".into(),
        read_trim(&roots.proc.join("uptime"))
            .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
            .into(),
    );
    m.insert("pid".into(), std::process::id().into());
    m.insert(
        "pid1_comm".into(),
        read_trim(&roots.proc.join("1/comm")).into(),
    );
    m.insert("processes".into(), count_pids(roots.proc).into());
    m.insert("interfaces".into(), interfaces(roots.sys).into());
    m.insert(
        "mounts".into(),
        std::fs::read_to_string(roots.proc.join("self/mounts"))
            .ok()
            .map(|t| t.lines().count() as u64)
            .into(),
    );
    let visible: Map<String, Value> = HOST_PATHS
        .iter()
        .map(|p| {
            let rel = p.trim_start_matches('/');
            ((*p).to_owned(), Value::from(roots.fs.join(rel).exists()))
        })
        .collect();
    m.insert("host_paths_visible".into(), Value::Object(visible));
    let st = status::read_self(roots.proc).ok();
    let f = |name: &str| st.as_deref().and_then(|t| status::field(t, name));
    m.insert("cap_eff".into(), capset(f("CapEff")));
    m.insert("cap_prm".into(), capset(f("CapPrm")));
    m.insert("cap_bnd".into(), capset(f("CapBnd")));
    let num = |name: &str| f(name).and_then(|v| v.parse::<u64>().ok());
    m.insert("no_new_privs".into(), num("NoNewPrivs").into());
    m.insert("seccomp".into(), num("Seccomp").into());
    m.insert(
        "cgroup".into(),
        std::fs::read_to_string(roots.proc.join("self/cgroup"))
            .ok()
            .map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .into(),
    );
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u64)
            .into(),
    );
    m.insert(
        "cpus_online".into(),
        nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .into(),
    );
    m
}

/// Runs the probe and returns the result object.
pub fn run() -> Result<Map<String, Value>, crate::WorkloadError> {
    ready::signal()?;
    let mut out = result::object("probe", true);
    out.extend(facts(Roots::real()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_tree() {
        let dir = std::env::temp_dir().join(format!("isolab-probe-test-{}", std::process::id()));
        let proc = dir.join("proc");
        let sys = dir.join("sys");
        let fs = dir.join("fs");
        for d in [
            proc.join("sys/kernel/random"),
            proc.join("self"),
            proc.join("1"),
            proc.join("42"),
            sys.join("class/net/lo"),
            sys.join("class/net/eth0"),
            fs.join("home"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(proc.join("sys/kernel/random/boot_id"), "abc-123\n").unwrap();
        std::fs::write(proc.join("uptime"), "12.50 20.00\n").unwrap();
        std::fs::write(proc.join("1/comm"), "isolab-init\n").unwrap();
        std::fs::write(proc.join("self/mounts"), "a / x\nb /proc y\n").unwrap();
        std::fs::write(proc.join("self/cgroup"), "0::/isolab/x\n").unwrap();
        std::fs::write(
            proc.join("self/status"),
            "CapEff:\t0000000000000005\nCapPrm:\t0000000000000005\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t1\nSeccomp:\t2\n",
        )
        .unwrap();
        let m = facts(Roots {
            proc: &proc,
            sys: &sys,
            fs: &fs,
        });
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m["boot_id"], "abc-123");
        assert_eq!(m["uptime_s"], 12.5);
        assert_eq!(m["pid1_comm"], "isolab-init");
        assert_eq!(m["processes"], 2);
        assert_eq!(m["interfaces"], json!(["eth0", "lo"]));
        assert_eq!(m["mounts"], 2);
        assert_eq!(m["host_paths_visible"]["/home"], true);
        assert_eq!(m["host_paths_visible"]["/etc/passwd"], false);
        assert_eq!(m["cap_eff"]["count"], 2);
        assert_eq!(m["cap_bnd"]["count"], 41);
        assert_eq!(m["no_new_privs"], 1);
        assert_eq!(m["seccomp"], 2);
        assert_eq!(m["cgroup"], json!(["0::/isolab/x"]));
    }
}
