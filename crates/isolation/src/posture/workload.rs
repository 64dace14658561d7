//! What the workload holds over the kernel it talks to, from the JSON
//! result line of `workload probe` run inside the instance.
//!
//! The probe reports facts; this module types them and relates them to the
//! host ([`KernelRelation`]). A fact the probe did not report stays `None`
//! ("not reported"), never a guess, so reports from an older workload
//! binary still parse.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::caps::CapSet;
use super::host::{is_identity, parse_id_map, IdMapping, Seccomp};
use super::PostureError;

/// The probe's keys this module reads, and what each must hold. Those
/// marked "new" are not reported by the workload yet (round two adds them
/// to crates/workload/src/probe.rs).
pub const PROBE_FACTS: &[(&str, &str)] = &[
    ("kernel.release", "uname release of the kernel it talks to"),
    ("boot_id", "/proc/sys/kernel/random/boot_id: equal to the host's means the same kernel"),
    ("cap_eff", "{hex, count} from CapEff of /proc/self/status"),
    ("cap_bnd", "{hex, count} from CapBnd"),
    ("no_new_privs", "NoNewPrivs (0/1)"),
    ("seccomp", "Seccomp mode (0 disabled, 1 strict, 2 filter)"),
    ("seccomp_filters", "new: Seccomp_filters of /proc/self/status (null before Linux 5.9)"),
    ("uid_map", "new: text of /proc/self/uid_map"),
    ("gid_map", "new: text of /proc/self/gid_map"),
    (
        "proc_sys_writable",
        "new: {path: bool} for a fixed list of /proc/sys files, true when open(O_WRONLY) succeeds; closed at once, never written",
    ),
    ("devices", "new: sorted paths of the character and block device nodes under /dev (one level of subdirectories)"),
    ("host_paths_visible", "{path: bool} for the probe's HOST_PATHS"),
];

/// The `/proc/sys` files the probe tries to open for writing (never
/// writes): each one, if writable, changes the whole kernel.
pub const PROC_SYS_CHECKED: &[&str] = &[
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/modprobe",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/net/ipv4/ip_forward",
];

#[derive(Debug, Clone, Default, Deserialize)]
struct ProbeKernel {
    release: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ProbeCaps {
    hex: String,
}

/// The probe's facts as it reports them (unknown keys ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProbeFacts {
    kernel: Option<ProbeKernel>,
    boot_id: Option<String>,
    cap_eff: Option<ProbeCaps>,
    cap_bnd: Option<ProbeCaps>,
    no_new_privs: Option<u32>,
    seccomp: Option<u32>,
    seccomp_filters: Option<u32>,
    uid_map: Option<String>,
    gid_map: Option<String>,
    proc_sys_writable: Option<BTreeMap<String, bool>>,
    devices: Option<Vec<String>>,
    host_paths_visible: Option<BTreeMap<String, bool>>,
}

/// The host's kernel, to compare the workload's against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKernel {
    pub release: String,
    pub boot_id: Option<String>,
}

impl HostKernel {
    /// This host's release (uname) and boot id (under `proc_root`).
    pub fn read(proc_root: &Path) -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let boot_id = std::fs::read_to_string(proc_root.join("sys/kernel/random/boot_id"))
            .ok()
            .map(|s| s.trim().to_owned());
        Self { release, boot_id }
    }
}

/// Which kernel the workload's calls land in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum KernelRelation {
    /// The host's own kernel (same boot id): every call reaches it.
    Host,
    /// Another kernel: a guest's, or gVisor's Sentry (release as reported).
    Own { release: Option<String> },
    /// The probe or the host did not report enough to tell.
    Unknown,
}

/// The workload side of the posture, typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadPosture {
    pub kernel: KernelRelation,
    pub cap_eff: Option<CapSet>,
    pub cap_bnd: Option<CapSet>,
    pub no_new_privs: Option<bool>,
    pub seccomp: Option<Seccomp>,
    pub seccomp_filters: Option<u32>,
    pub uid_map: Option<Vec<IdMapping>>,
    pub gid_map: Option<Vec<IdMapping>>,
    /// True when its ids are those of the kernel it talks to (identity map:
    /// no user namespace between them).
    pub ids_are_kernel_ids: Option<bool>,
    /// The checked `/proc/sys` files it could open for writing.
    pub proc_sys_writable: Option<Vec<String>>,
    /// Device nodes it sees.
    pub devices: Option<Vec<String>>,
    /// Host-looking paths it sees.
    pub host_paths_visible: Option<Vec<String>>,
}

impl WorkloadPosture {
    /// Types a probe result line and relates it to `host`.
    pub fn from_probe(probe: &serde_json::Value, host: &HostKernel) -> Result<Self, PostureError> {
        let f: ProbeFacts = serde_json::from_value(probe.clone()).map_err(PostureError::Probe)?;
        let release = f.kernel.and_then(|k| k.release);
        let kernel = match (&f.boot_id, &host.boot_id) {
            (Some(w), Some(h)) if w == h => KernelRelation::Host,
            (Some(_), Some(_)) => KernelRelation::Own { release },
            // Without a boot id (gVisor's /proc has none), a release other
            // than the host's still proves another kernel; the same release
            // proves nothing.
            _ => match &release {
                Some(r) if !host.release.is_empty() && *r != host.release => {
                    KernelRelation::Own { release }
                }
                _ => KernelRelation::Unknown,
            },
        };
        let uid_map = f.uid_map.as_deref().and_then(parse_id_map);
        let trues = |m: Option<BTreeMap<String, bool>>| {
            m.map(|m| m.into_iter().filter(|(_, v)| *v).map(|(k, _)| k).collect())
        };
        Ok(Self {
            kernel,
            cap_eff: f.cap_eff.and_then(|c| CapSet::from_hex(&c.hex)),
            cap_bnd: f.cap_bnd.and_then(|c| CapSet::from_hex(&c.hex)),
            no_new_privs: f.no_new_privs.map(|v| v != 0),
            seccomp: f.seccomp.and_then(|v| match v {
                0 => Some(Seccomp::Disabled),
                1 => Some(Seccomp::Strict),
                2 => Some(Seccomp::Filter),
                _ => None,
            }),
            seccomp_filters: f.seccomp_filters,
            ids_are_kernel_ids: uid_map.as_deref().map(is_identity),
            uid_map,
            gid_map: f.gid_map.as_deref().and_then(parse_id_map),
            proc_sys_writable: trues(f.proc_sys_writable),
            devices: f.devices,
            host_paths_visible: trues(f.host_paths_visible),
        })
    }

    /// The workload side of a program that runs no probe of ours (a user's
    /// image), read from the host: `p` is its process as the host's `/proc`
    /// shows it, so it talks to the host's kernel. What only a probe inside
    /// can see (`/proc/sys` it could write, devices, host paths) stays
    /// `None`.
    pub fn from_host_process(p: &super::ProcessPosture) -> Self {
        Self {
            kernel: KernelRelation::Host,
            cap_eff: p.cap_eff.clone(),
            cap_bnd: p.cap_bnd.clone(),
            no_new_privs: p.no_new_privs,
            seccomp: p.seccomp,
            seccomp_filters: p.seccomp_filters,
            ids_are_kernel_ids: p.uid_map.as_deref().map(is_identity),
            uid_map: p.uid_map.clone(),
            gid_map: p.gid_map.clone(),
            proc_sys_writable: None,
            devices: None,
            host_paths_visible: None,
        }
    }

    /// Only the kernel it talks to is known (a program inside a guest or
    /// gVisor's Sentry, whose processes the host's `/proc` does not show).
    pub fn kernel_only(kernel: KernelRelation) -> Self {
        Self {
            kernel,
            cap_eff: None,
            cap_bnd: None,
            no_new_privs: None,
            seccomp: None,
            seccomp_filters: None,
            uid_map: None,
            gid_map: None,
            ids_are_kernel_ids: None,
            proc_sys_writable: None,
            devices: None,
            host_paths_visible: None,
        }
    }

    /// Whether its effective capabilities and writable `/proc/sys` reach
    /// the host kernel itself (only when it talks to the host's kernel with
    /// the host's ids). `None` when a needed fact is missing.
    pub fn reaches_host_kernel(&self) -> Option<bool> {
        match self.kernel {
            KernelRelation::Own { .. } => Some(false),
            KernelRelation::Unknown => None,
            KernelRelation::Host => Some(self.ids_are_kernel_ids?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> HostKernel {
        HostKernel {
            release: "6.18.44".into(),
            boot_id: Some("host-boot".into()),
        }
    }

    #[test]
    fn without_a_boot_id_only_another_release_tells_the_kernel_apart() {
        let probe = |release: &str| {
            json!({
                "workload": "probe", "ok": true,
                "kernel": {"release": release, "sysname": "Linux"},
                "uid_map": "0 0 4294967295",
            })
        };
        let p = WorkloadPosture::from_probe(&probe("4.4.0"), &host()).unwrap();
        assert_eq!(
            p.kernel,
            KernelRelation::Own {
                release: Some("4.4.0".into())
            }
        );
        let p = WorkloadPosture::from_probe(&probe("6.18.44"), &host()).unwrap();
        assert_eq!(
            p.kernel,
            KernelRelation::Unknown,
            "same release proves nothing"
        );
    }

    #[test]
    fn a_plain_process_talks_to_the_host_kernel_with_host_ids() {
        let probe = json!({
            "workload": "probe", "ok": true,
            "kernel": {"release": "6.18.44", "sysname": "Linux"},
            "boot_id": "host-boot",
            "cap_eff": {"hex": "000001ffffffffff", "count": 41},
            "cap_bnd": {"hex": "000001ffffffffff", "count": 41},
            "no_new_privs": 0, "seccomp": 0, "seccomp_filters": 0,
            "uid_map": "         0          0 4294967295\n",
            "proc_sys_writable": {"/proc/sys/kernel/hostname": true, "/proc/sys/vm/drop_caches": true},
            "devices": ["/dev/kvm", "/dev/null", "/dev/sda"],
            "host_paths_visible": {"/home": true, "/boot": true, "/root": false},
        });
        let p = WorkloadPosture::from_probe(&probe, &host()).unwrap();
        assert_eq!(p.kernel, KernelRelation::Host);
        assert_eq!(p.cap_eff.as_ref().unwrap().count, 41);
        assert!(p.cap_eff.as_ref().unwrap().has("CAP_SYS_ADMIN"));
        assert_eq!(p.ids_are_kernel_ids, Some(true));
        assert_eq!(p.reaches_host_kernel(), Some(true));
        assert_eq!(p.proc_sys_writable.as_ref().unwrap().len(), 2);
        assert_eq!(
            p.host_paths_visible.as_deref(),
            Some(&["/boot".to_owned(), "/home".to_owned()][..])
        );
    }

    #[test]
    fn a_guest_talks_to_its_own_kernel() {
        let probe = json!({
            "kernel": {"release": "6.1.0-isolab"}, "boot_id": "guest-boot",
            "cap_eff": {"hex": "000001ffffffffff", "count": 41},
            "uid_map": "0 0 4294967295", "no_new_privs": 0, "seccomp": 0,
        });
        let p = WorkloadPosture::from_probe(&probe, &host()).unwrap();
        assert_eq!(
            p.kernel,
            KernelRelation::Own {
                release: Some("6.1.0-isolab".into())
            }
        );
        assert_eq!(p.reaches_host_kernel(), Some(false));
    }

    #[test]
    fn a_container_in_a_user_namespace_with_facts_not_yet_reported() {
        // Today's probe: no uid_map, no seccomp_filters, no devices.
        let probe = json!({
            "kernel": {"release": "6.18.44"}, "boot_id": "host-boot",
            "cap_eff": {"hex": "00000000a80425fb", "count": 14},
            "cap_bnd": null, "no_new_privs": 1, "seccomp": 2,
        });
        let p = WorkloadPosture::from_probe(&probe, &host()).unwrap();
        assert_eq!(p.kernel, KernelRelation::Host);
        assert_eq!(p.seccomp, Some(Seccomp::Filter));
        assert_eq!(p.no_new_privs, Some(true));
        assert_eq!(p.cap_bnd, None);
        assert_eq!(p.uid_map, None);
        assert_eq!(p.devices, None);
        assert_eq!(p.reaches_host_kernel(), None, "unknown without uid_map");
        let mapped = json!({"boot_id": "host-boot", "uid_map": "0 100000 65536\n"});
        let p = WorkloadPosture::from_probe(&mapped, &host()).unwrap();
        assert_eq!(p.ids_are_kernel_ids, Some(false));
        assert_eq!(p.reaches_host_kernel(), Some(false));
    }

    #[test]
    fn a_host_process_talks_to_the_host_kernel_and_leaves_the_inside_facts_unknown() {
        let p = super::super::ProcessPosture {
            pid: 7,
            role: "workload".into(),
            comm: Some("nginx".into()),
            threads: Some(1),
            uids: Some([0; 4]),
            gids: Some([0; 4]),
            cap_eff: CapSet::from_hex("00000000a80425fb"),
            cap_prm: None,
            cap_bnd: CapSet::from_hex("00000000a80425fb"),
            cap_amb: None,
            no_new_privs: Some(true),
            seccomp: Some(Seccomp::Filter),
            seccomp_filters: Some(1),
            uid_map: parse_id_map("0 0 4294967295\n"),
            gid_map: parse_id_map("0 0 4294967295\n"),
            host_user_ns: Some(true),
        };
        let w = WorkloadPosture::from_host_process(&p);
        assert_eq!(w.kernel, KernelRelation::Host);
        assert_eq!(w.cap_eff.as_ref().map(|c| c.count), Some(14));
        assert_eq!(w.ids_are_kernel_ids, Some(true));
        assert_eq!(w.reaches_host_kernel(), Some(true));
        assert_eq!((w.proc_sys_writable, w.devices), (None, None));
        let g = WorkloadPosture::kernel_only(KernelRelation::Own { release: None });
        assert_eq!(g.reaches_host_kernel(), Some(false));
        assert_eq!(g.cap_eff, None);
    }

    #[test]
    fn a_line_that_is_not_a_probe_report_is_an_error() {
        assert!(WorkloadPosture::from_probe(&json!(["x"]), &host()).is_err());
        assert!(WorkloadPosture::from_probe(&json!({"seccomp": "two"}), &host()).is_err());
        let missing_host = HostKernel {
            release: String::new(),
            boot_id: None,
        };
        let p = WorkloadPosture::from_probe(&json!({"boot_id": "x"}), &missing_host).unwrap();
        assert_eq!(p.kernel, KernelRelation::Unknown);
        assert!(PROBE_FACTS.iter().any(|(k, _)| *k == "proc_sys_writable"));
    }
}
