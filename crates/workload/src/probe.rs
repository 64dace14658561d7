//! `workload probe`: one JSON line of what the workload can observe about
//! where it runs: kernel, identity, processes, network, mounts, privileges,
//! cgroups and CPUs. Used in demos to show side by side what a process, a
//! container and a microVM guest see.
//!
//! Every reader takes the `/proc` and `/sys` roots as parameters so the
//! gathering is unit-tested on a fake tree. A fact that cannot be read is
//! `null`, never a made-up value.

use std::path::Path;

use serde_json::{Map, Value};

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

/// The kernel's identity (`uname(2)`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KernelId {
    pub sysname: String,
    pub release: String,
    pub version: String,
    pub machine: String,
}

/// A capability set, as `/proc/self/status` gives it in hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CapSet {
    /// The hex digits as the kernel printed them.
    pub hex: String,
    /// Capabilities in the set.
    pub count: u32,
}

/// Everything `workload probe` observes, as its result line carries it
/// (after `"workload": "probe", "ok": true`). A fact that could not be read
/// is `null`, never a made-up value.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ProbeReport {
    pub kernel: Option<KernelId>,
    pub hostname: Option<String>,
    pub workload_version: String,
    /// `/proc/sys/kernel/random/boot_id`: one per running kernel.
    pub boot_id: Option<String>,
    pub uptime_s: Option<f64>,
    /// Its own pid, as its pid namespace numbers it.
    pub pid: u32,
    /// `/proc/1/comm`.
    pub pid1_comm: Option<String>,
    /// Processes visible in `/proc`.
    pub processes: Option<u64>,
    /// Network interfaces, sorted.
    pub interfaces: Option<Vec<String>>,
    /// Lines of `/proc/self/mounts`.
    pub mounts: Option<u64>,
    /// Each of [`HOST_PATHS`]: whether it exists here.
    pub host_paths_visible: std::collections::BTreeMap<String, bool>,
    pub cap_eff: Option<CapSet>,
    pub cap_prm: Option<CapSet>,
    pub cap_bnd: Option<CapSet>,
    pub no_new_privs: Option<u64>,
    /// 0 off, 1 strict, 2 filter; `None` where the kernel has no seccomp.
    pub seccomp: Option<u64>,
    /// `/proc/self/cgroup`, one entry per line.
    pub cgroup: Option<Vec<String>>,
    /// CPUs it may run on (affinity).
    pub nproc: Option<u64>,
    /// CPUs online in the kernel it sees.
    pub cpus_online: Option<i64>,
    /// `Seccomp_filters:` of its status (filters attached; Linux 5.9+).
    pub seccomp_filters: Option<u64>,
    /// `/proc/self/uid_map` and `gid_map`, verbatim.
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    /// Device nodes in `/dev` (names, sorted; directories left out).
    pub devices: Option<Vec<String>>,
    /// Each of [`PROC_SYS_CHECKED`]: whether `access(2)` grants it write
    /// access (a read-only mount or missing permission says no). Asked,
    /// never opened: no setting is touched.
    pub proc_sys_writable: std::collections::BTreeMap<String, bool>,
}

/// Kernel settings whose writability the probe asks about.
pub const PROC_SYS_CHECKED: [&str; 4] = [
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/panic",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/net/ipv4/ip_forward",
];

fn devices(fs: &Path) -> Option<Vec<String>> {
    use std::os::unix::fs::FileTypeExt;
    let mut v: Vec<String> = std::fs::read_dir(fs.join("dev"))
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| t.is_char_device() || t.is_block_device())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Some(v)
}

impl ProbeReport {
    /// The report in a result line, if that line is `workload probe`'s.
    pub fn from_result(line: &serde_json::Value) -> Option<Self> {
        (line.get("workload")? == "probe")
            .then(|| serde_json::from_value(line.clone()).ok())
            .flatten()
    }
}

/// Capability set given as hex in status.
fn capset(hex: Option<&str>) -> Option<CapSet> {
    let v = u64::from_str_radix(hex?, 16).ok()?;
    Some(CapSet {
        hex: hex?.to_owned(),
        count: v.count_ones(),
    })
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

/// Gathers the facts.
pub fn facts(roots: Roots<'_>) -> ProbeReport {
    let uts = nix::sys::utsname::uname().ok();
    let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
    let st = status::read_self(roots.proc).ok();
    let f = |name: &str| st.as_deref().and_then(|t| status::field(t, name));
    let num = |name: &str| f(name).and_then(|v| v.parse::<u64>().ok());
    ProbeReport {
        kernel: uts.as_ref().map(|u| KernelId {
            sysname: s(u.sysname()),
            release: s(u.release()),
            version: s(u.version()),
            machine: s(u.machine()),
        }),
        hostname: uts.as_ref().map(|u| s(u.nodename())),
        workload_version: env!("CARGO_PKG_VERSION").into(),
        boot_id: read_trim(&roots.proc.join("sys/kernel/random/boot_id")),
        uptime_s: read_trim(&roots.proc.join("uptime"))
            .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok()),
        pid: std::process::id(),
        pid1_comm: read_trim(&roots.proc.join("1/comm")),
        processes: count_pids(roots.proc),
        interfaces: interfaces(roots.sys),
        mounts: std::fs::read_to_string(roots.proc.join("self/mounts"))
            .ok()
            .map(|t| t.lines().count() as u64),
        host_paths_visible: HOST_PATHS
            .iter()
            .map(|p| {
                let rel = p.trim_start_matches('/');
                ((*p).to_owned(), roots.fs.join(rel).exists())
            })
            .collect(),
        cap_eff: capset(f("CapEff")),
        cap_prm: capset(f("CapPrm")),
        cap_bnd: capset(f("CapBnd")),
        no_new_privs: num("NoNewPrivs"),
        seccomp: num("Seccomp"),
        cgroup: std::fs::read_to_string(roots.proc.join("self/cgroup"))
            .ok()
            .map(|t| t.lines().map(str::to_owned).collect()),
        nproc: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u64),
        cpus_online: nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten(),
        seccomp_filters: num("Seccomp_filters"),
        uid_map: std::fs::read_to_string(roots.proc.join("self/uid_map")).ok(),
        gid_map: std::fs::read_to_string(roots.proc.join("self/gid_map")).ok(),
        devices: devices(roots.fs),
        proc_sys_writable: PROC_SYS_CHECKED
            .iter()
            .map(|p| {
                let rel = p.trim_start_matches("/proc/");
                let ok = nix::unistd::access(&roots.proc.join(rel), nix::unistd::AccessFlags::W_OK)
                    .is_ok();
                ((*p).to_owned(), ok)
            })
            .collect(),
    }
}

/// Runs the probe and returns the result object.
pub fn run() -> Result<Map<String, Value>, crate::WorkloadError> {
    ready::signal()?;
    let mut out = result::object("probe", true);
    if let Value::Object(facts) = serde_json::to_value(facts(Roots::real())).unwrap_or_default() {
        out.extend(facts);
    }
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
        assert_eq!(m.boot_id.as_deref(), Some("abc-123"));
        assert_eq!(m.uptime_s, Some(12.5));
        assert_eq!(m.pid1_comm.as_deref(), Some("isolab-init"));
        assert_eq!(m.processes, Some(2));
        assert_eq!(m.interfaces, Some(vec!["eth0".into(), "lo".into()]));
        assert_eq!(m.mounts, Some(2));
        assert!(m.host_paths_visible["/home"]);
        assert!(!m.host_paths_visible["/etc/passwd"]);
        assert_eq!(m.cap_eff.as_ref().map(|c| c.count), Some(2));
        assert_eq!(m.cap_bnd.as_ref().map(|c| c.count), Some(41));
        assert_eq!(m.no_new_privs, Some(1));
        assert_eq!(m.seccomp, Some(2));
        assert_eq!(m.cgroup, Some(vec!["0::/isolab/x".into()]));
        assert_eq!(m.devices, None, "no /dev in the fake tree");
        assert_eq!(m.proc_sys_writable.len(), PROC_SYS_CHECKED.len());
        assert!(
            !m.proc_sys_writable["/proc/sys/vm/drop_caches"],
            "absent: not writable"
        );
        // The JSON keeps the documented shape, and reads back.
        let mut line = result::object("probe", true);
        if let Value::Object(f) = serde_json::to_value(&m).unwrap() {
            line.extend(f);
        }
        let v = Value::Object(line);
        assert_eq!(v["cap_bnd"]["count"], 41);
        assert_eq!(
            v["kernel"]["release"].as_str(),
            m.kernel.as_ref().map(|k| k.release.as_str())
        );
        assert_eq!(ProbeReport::from_result(&v), Some(m));
    }
}
