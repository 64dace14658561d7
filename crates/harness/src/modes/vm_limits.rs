//! Limits of a VM instance beyond its vCPUs and guest RAM, shared by our
//! microVM and the QEMU peer: the monitor process in a cgroup of its own
//! (CPU bandwidth and pids, as a container gets, so its CPU use is
//! throttled and counted the same way) and the guest kernel's OOM killer
//! read from its console.
//!
//! The monitor's cgroup gets no memory limit: guest RAM is the VM's memory
//! limit, and a cgroup limit on the monitor would kill the monitor (the
//! whole VM) instead of letting the guest kernel choose inside. Its name,
//! `vm-<mode>-<launcher pid>-<n>`, lets the next launcher remove what a
//! killed one left ([`sweep_stale`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use isolab_cgroups::{CgroupManager, Hierarchy, Stats};

use super::{InstanceSpec, ModeKind};
use crate::HarnessError;

/// Kernel log level for a limited VM's console: `quiet` (level 4) prints
/// errors only, which is where the OOM killer's "Killed process" line goes,
/// so the boot log costs no console exits.
pub const QUIET: &str = "quiet";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A VM monitor's own cgroup, removed when this is finished or dropped.
#[derive(Debug)]
pub struct MonitorCgroup {
    cg: Box<dyn CgroupManager>,
}

/// Whether a spec asks for VM limits beyond vCPUs and RAM: CPU bandwidth
/// or pids (the noisy-neighbour scenario sets them; density runs join a
/// budget cgroup of their own instead).
pub fn limited(spec: &InstanceSpec) -> bool {
    (spec.cpus.is_some() || spec.pids.is_some()) && spec.join_cgroups.is_empty()
}

impl MonitorCgroup {
    /// The monitor's cgroup for `spec`, or `None` where the spec sets no
    /// such limit.
    pub fn create(mode: ModeKind, spec: &InstanceSpec) -> Result<Option<Self>, HarnessError> {
        if !limited(spec) {
            return Ok(None);
        }
        let hier = Hierarchy::detect_host()?;
        let pid = std::process::id();
        let name = format!(
            "vm-{}-{pid}-{}",
            mode.name(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let limits = isolab_cgroups::Limits {
            cpus: spec.cpus,
            pids: spec.pids,
            ..isolab_cgroups::Limits::default()
        };
        let cg = isolab_cgroups::create(&hier, &name, &limits)?;
        for parent in cg.paths().iter().filter_map(|p| p.parent()) {
            sweep_stale(&hier, parent, &|p| {
                Path::new(&format!("/proc/{p}")).exists()
            });
        }
        Ok(Some(MonitorCgroup { cg }))
    }

    /// The `cgroup.procs` files the monitor joins before it execs.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.cg
            .paths()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The counters once the monitor ended, then the cgroup removed.
    pub fn finish(self) -> Option<Stats> {
        let stats = self.cg.stats().ok();
        let _ = self.cg.remove();
        stats
    }
}

impl Drop for MonitorCgroup {
    fn drop(&mut self) {
        let _ = self.cg.remove();
    }
}

/// Removes the `vm-*` cgroups under `parent` whose launcher (the pid in
/// the name) is gone; `alive` says whether a pid runs.
pub fn sweep_stale(hier: &Hierarchy, parent: &Path, alive: &dyn Fn(u32) -> bool) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_owner(&name) {
            if !alive(pid) {
                if let Some(cg) = isolab_cgroups::open_existing(hier, &name) {
                    let _ = cg.remove();
                }
            }
        }
    }
}

/// The launcher pid in a monitor cgroup's name `vm-<mode>-<pid>-<n>`.
pub fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("vm-")?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether the guest kernel's OOM killer acted, from its console text (its
/// `pr_err` line "Out of memory: Killed process N (name) ...").
pub fn guest_oom(console: &str) -> bool {
    console
        .lines()
        .any(|l| l.contains("Out of memory") && l.contains("Killed process"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_cgroup_names_carry_their_launcher() {
        assert_eq!(stale_owner("vm-microvm-4242-0"), Some(4242));
        assert_eq!(stale_owner("vm-qemu-microvm-17-3"), Some(17));
        assert_eq!(stale_owner("isolab-runc-17-3"), None);
        assert_eq!(stale_owner("vm-microvm-x-1"), None);
        assert_eq!(stale_owner("density-microvm-12"), None);
    }

    #[test]
    fn the_guest_oom_killer_is_read_from_the_console() {
        let console = "[    0.100] Run /init as init process\n\
            [    2.345] Out of memory: Killed process 61 (workload) total-vm:270000kB, anon-rss:250000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:600kB oom_score_adj:0\n";
        assert!(guest_oom(console));
        assert!(!guest_oom("isolab-init: workload exited with status 0\n"));
    }

    #[test]
    fn only_limited_specs_get_a_monitor_cgroup() {
        let mut s = InstanceSpec::new(crate::Workload::Api, &[]);
        assert!(!limited(&s));
        s.cpus = Some(1.0);
        assert!(limited(&s));
        s.join_cgroups = vec![PathBuf::from("/x/cgroup.procs")];
        assert!(!limited(&s), "density's budget cgroup instead");
    }
}
