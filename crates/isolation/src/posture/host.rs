//! What one host-side process of an instance holds over the host kernel,
//! from `<proc>/PID/status`, `uid_map`/`gid_map` and the user-namespace
//! link. Nothing is written; a fact that cannot be read is `None`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::caps::CapSet;
use super::PostureError;

/// `Seccomp:` of `/proc/PID/status` (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    Disabled,
    Strict,
    Filter,
}

impl Seccomp {
    fn from_status(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Disabled),
            1 => Some(Self::Strict),
            2 => Some(Self::Filter),
            _ => None,
        }
    }
}

/// One line of `uid_map` / `gid_map`: ids `inside..inside+count` of the
/// process's user namespace are `outside..` in its parent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// Parses `uid_map` text; `None` on a malformed line.
pub fn parse_id_map(text: &str) -> Option<Vec<IdMapping>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some(IdMapping {
                inside: f.next()??,
                outside: f.next()??,
                count: f.next()??,
            })
        })
        .collect()
}

/// True for the initial namespace's map (`0 0 4294967295`): ids are host ids.
pub fn is_identity(map: &[IdMapping]) -> bool {
    matches!(map, [m] if m.inside == 0 && m.outside == 0 && m.count == u32::MAX)
}

/// The posture of one host process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPosture {
    pub pid: u32,
    /// What it is for the instance (`workload`, `monitor`, `runtime`,
    /// `sandbox`, `gofer`...), given by the caller.
    pub role: String,
    pub comm: Option<String>,
    pub threads: Option<u32>,
    /// Real, effective, saved and filesystem uid.
    pub uids: Option<[u32; 4]>,
    pub gids: Option<[u32; 4]>,
    pub cap_eff: Option<CapSet>,
    pub cap_prm: Option<CapSet>,
    pub cap_bnd: Option<CapSet>,
    pub cap_amb: Option<CapSet>,
    pub no_new_privs: Option<bool>,
    pub seccomp: Option<Seccomp>,
    /// Filters attached (`Seccomp_filters:`, Linux 5.9+).
    pub seccomp_filters: Option<u32>,
    pub uid_map: Option<Vec<IdMapping>>,
    pub gid_map: Option<Vec<IdMapping>>,
    /// Whether it lives in the host's user namespace: the same `ns/user`
    /// link as pid 1, or, where pid 1's link cannot be read (a sandboxed
    /// bench), as the reading process's own.
    pub host_user_ns: Option<bool>,
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim())
    })
}

fn four(v: Option<&str>) -> Option<[u32; 4]> {
    let n: Vec<u32> = v?
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    n.try_into().ok()
}

impl ProcessPosture {
    /// Reads the posture of `pid` under `proc_root` (`/proc` in production).
    pub fn read(proc_root: &Path, pid: u32, role: &str) -> Result<Self, PostureError> {
        let dir = proc_root.join(pid.to_string());
        let status =
            std::fs::read_to_string(dir.join("status")).map_err(|source| PostureError::Status {
                pid,
                proc_root: proc_root.to_path_buf(),
                source,
            })?;
        let num = |name: &str| field(&status, name).and_then(|v| v.parse::<u32>().ok());
        let cap = |name: &str| field(&status, name).and_then(CapSet::from_hex);
        let map = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| parse_id_map(&t))
        };
        let link = |p: &Path| std::fs::read_link(p).ok();
        let reference =
            link(&proc_root.join("1/ns/user")).or_else(|| link(&proc_root.join("self/ns/user")));
        let host_user_ns = match (link(&dir.join("ns/user")), reference) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        Ok(Self {
            pid,
            role: role.to_owned(),
            comm: field(&status, "Name").map(str::to_owned),
            threads: num("Threads"),
            uids: four(field(&status, "Uid")),
            gids: four(field(&status, "Gid")),
            cap_eff: cap("CapEff"),
            cap_prm: cap("CapPrm"),
            cap_bnd: cap("CapBnd"),
            cap_amb: cap("CapAmb"),
            no_new_privs: num("NoNewPrivs").map(|v| v != 0),
            seccomp: num("Seccomp").and_then(Seccomp::from_status),
            seccomp_filters: num("Seccomp_filters"),
            uid_map: map("uid_map"),
            gid_map: map("gid_map"),
            host_user_ns,
        })
    }

    /// Root of the host: effective uid 0 in the initial user namespace.
    /// `None` when either fact is unknown.
    pub fn is_host_root(&self) -> Option<bool> {
        let euid = self.uids?[1];
        Some(euid == 0 && self.host_user_ns?)
    }

    /// Effective capabilities that count over the host kernel: those of a
    /// process in the initial user namespace (elsewhere they only reach
    /// what that namespace owns).
    pub fn host_capabilities(&self) -> Option<u32> {
        match self.host_user_ns? {
            true => self.cap_eff.as_ref().map(|c| c.count),
            false => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, pid: u32, status: &str, uid_map: &str, userns: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(d.join("ns")).unwrap();
        std::fs::write(d.join("status"), status).unwrap();
        std::fs::write(d.join("uid_map"), uid_map).unwrap();
        std::fs::write(d.join("gid_map"), uid_map).unwrap();
        std::os::unix::fs::symlink(userns, d.join("ns/user")).unwrap();
    }

    const SENTRY: &str = "Name:\texe\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nThreads:\t14\n\
CapInh:\t0000000000000000\nCapPrm:\t0000000000080000\nCapEff:\t0000000000080000\n\
CapBnd:\t0000000000080000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n\
Seccomp_filters:\t1\n";

    #[test]
    fn a_sandbox_process_in_the_host_user_namespace() {
        let dir = tempfile::tempdir().unwrap();
        fake(
            dir.path(),
            1,
            SENTRY,
            "0 0 4294967295\n",
            "user:[4026531837]",
        );
        fake(
            dir.path(),
            4294,
            SENTRY,
            "         0          0 4294967295\n",
            "user:[4026531837]",
        );
        let p = ProcessPosture::read(dir.path(), 4294, "sandbox").unwrap();
        assert_eq!(p.comm.as_deref(), Some("exe"));
        assert_eq!(p.threads, Some(14));
        assert_eq!(p.cap_eff.as_ref().unwrap().names, ["CAP_SYS_PTRACE"]);
        assert_eq!(p.no_new_privs, Some(true));
        assert_eq!(p.seccomp, Some(Seccomp::Filter));
        assert_eq!(p.seccomp_filters, Some(1));
        assert!(is_identity(p.uid_map.as_ref().unwrap()));
        assert_eq!(p.host_user_ns, Some(true));
        assert_eq!(p.is_host_root(), Some(true));
        assert_eq!(p.host_capabilities(), Some(1));
    }

    #[test]
    fn a_process_in_its_own_user_namespace_holds_nothing_over_the_host() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1's link unreadable here: the reader's own is the reference.
        std::fs::create_dir_all(dir.path().join("self/ns")).unwrap();
        std::os::unix::fs::symlink("user:[1]", dir.path().join("self/ns/user")).unwrap();
        let status = "Name:\tworkload\nUid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t0\n";
        fake(dir.path(), 77, status, "0 100000 65536\n", "user:[2]");
        let p = ProcessPosture::read(dir.path(), 77, "workload").unwrap();
        assert_eq!(
            p.uid_map.as_deref(),
            Some(
                &[IdMapping {
                    inside: 0,
                    outside: 100_000,
                    count: 65_536
                }][..]
            )
        );
        assert_eq!(p.cap_eff.as_ref().unwrap().count, 41);
        assert_eq!(p.seccomp, Some(Seccomp::Disabled));
        assert_eq!(p.seccomp_filters, None, "an older kernel without the field");
        assert_eq!(p.host_user_ns, Some(false));
        assert_eq!(p.is_host_root(), Some(false));
        assert_eq!(p.host_capabilities(), Some(0));
    }

    #[test]
    fn a_gone_process_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = ProcessPosture::read(dir.path(), 9, "monitor").unwrap_err();
        assert!(e.to_string().contains("process 9"), "{e}");
        assert_eq!(parse_id_map("0 x 1\n"), None);
    }
}
