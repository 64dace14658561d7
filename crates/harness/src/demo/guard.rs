//! The host's own settings, read before a demo and again after it: the
//! proof, printed under every demo, that nothing the demo ran changed the
//! host. A setting that moved fails the demo loudly and is reported, never
//! touched: host settings are read, not written, not even to restore them
//! (a write-back could undo a change someone else made meanwhile).
//!
//! Interfaces are deliberately not compared: other software on the host
//! (a container engine, a VPN) adds and removes them at any time, and a
//! false alarm would teach the wrong lesson; cleanup of the workbench's own
//! devices is the container and network crates' job, tested there.
//!
//! Every read takes the `/proc` root as a parameter, so the check
//! is unit-tested on a fake tree.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// sysctls checked around every demo: the ones the knob demo tries to move,
/// and the global limits a fork loop or a hog could be tempted to touch.
pub const WATCHED_SYSCTLS: &[&str] = &[
    "kernel.hostname",
    "kernel.domainname",
    "net.ipv4.ip_default_ttl",
    "vm.swappiness",
    "vm.overcommit_memory",
    "kernel.pid_max",
    "kernel.threads-max",
];

/// One host setting and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSetting {
    pub name: String,
    pub value: Option<String>,
}

/// A setting that differs after the demo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A snapshot of the host's settings.
#[derive(Debug, Clone, Serialize)]
pub struct HostGuard {
    #[serde(skip)]
    proc_root: PathBuf,
    pub settings: Vec<HostSetting>,
}

fn sysctl_path(proc_root: &Path, name: &str) -> PathBuf {
    proc_root.join("sys").join(name.replace('.', "/"))
}

fn read(proc_root: &Path) -> Vec<HostSetting> {
    WATCHED_SYSCTLS
        .iter()
        .map(|n| HostSetting {
            name: (*n).to_owned(),
            value: std::fs::read_to_string(sysctl_path(proc_root, n))
                .ok()
                .map(|s| s.trim().to_owned()),
        })
        .collect()
}

impl HostGuard {
    /// Reads the host's settings now (real `/proc` and `/sys`).
    pub fn snapshot() -> Self {
        Self::snapshot_at(Path::new("/proc"))
    }

    /// Reads the settings under the given `/proc` root.
    pub fn snapshot_at(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            settings: read(proc_root),
        }
    }

    /// The value of a setting in the snapshot.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|s| s.name == name)?
            .value
            .as_deref()
    }

    /// Reads the settings again and returns those that moved (empty: the
    /// host is unchanged). Reads only.
    pub fn verify(&self) -> Vec<Change> {
        let now = read(&self.proc_root);
        self.settings
            .iter()
            .zip(&now)
            .filter(|(before, after)| before.value != after.value)
            .map(|(before, after)| Change {
                name: before.name.clone(),
                before: before.value.clone(),
                after: after.value.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, v) in [("vm.swappiness", "60"), ("kernel.hostname", "host")] {
            let p = sysctl_path(&d.path().join("proc"), name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        d
    }

    #[test]
    fn an_untouched_host_verifies_clean() {
        let d = tree();
        let g = HostGuard::snapshot_at(&d.path().join("proc"));
        assert_eq!(g.value("vm.swappiness"), Some("60"));
        assert_eq!(g.value("kernel.pid_max"), None);
        assert!(g.verify().is_empty());
    }

    #[test]
    fn a_moved_sysctl_is_reported_and_left_alone() {
        let d = tree();
        let proc = d.path().join("proc");
        let g = HostGuard::snapshot_at(&proc);
        std::fs::write(sysctl_path(&proc, "vm.swappiness"), "61\n").unwrap();
        let changes = g.verify();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].name, "vm.swappiness");
        assert_eq!(changes[0].after.as_deref(), Some("61"));
        let now = std::fs::read_to_string(sysctl_path(&proc, "vm.swappiness")).unwrap();
        assert_eq!(now.trim(), "61", "the guard never writes a setting");
    }
}
