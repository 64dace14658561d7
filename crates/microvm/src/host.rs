//! What kind of KVM this host has, decided before any boot so that a host
//! that cannot boot a stock guest says so in one line instead of failing
//! deep inside the guest.
//!
//! Every probe takes the filesystem root as a parameter so that the logic is
//! unit-tested on fake trees.

use std::path::Path;

/// The host's virtualisation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "module")]
pub enum HostKind {
    /// No `/dev/kvm`.
    NoKvm,
    /// `/dev/kvm` is backed by `kvm_pvm`: a software hypervisor that runs
    /// only PVM-enabled guest kernels.
    Pvm,
    /// Hardware virtualisation: `kvm_intel` or `kvm_amd`.
    Hardware(String),
    /// `/dev/kvm` exists but no known vendor module is visible (built-in
    /// without parameters, or an unusual kernel); treated as usable.
    Unknown,
}

impl HostKind {
    /// Whether a stock Linux guest (the project's guest kernel) can boot.
    pub fn boots_stock_kernels(&self) -> bool {
        matches!(self, HostKind::Hardware(_) | HostKind::Unknown)
    }

    /// One line saying why this host cannot boot the guest and what to do;
    /// `None` when it can.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            HostKind::NoKvm => Some(
                "this host has no /dev/kvm: run on a host with VT-x/AMD-V and the kvm_intel or kvm_amd module loaded, or use `--host emulated`",
            ),
            HostKind::Pvm => Some(
                "/dev/kvm here is PVM (kvm_pvm), which cannot boot a stock guest kernel: run on a host with VT-x/AMD-V, pass a PVM-capable --kernel with --allow-pvm, or use `--host emulated`",
            ),
            HostKind::Hardware(_) | HostKind::Unknown => None,
        }
    }
}

/// Detects the host kind under `root` (`/` in production).
pub fn detect(root: &Path) -> HostKind {
    if !root.join("dev/kvm").exists() {
        return HostKind::NoKvm;
    }
    let module = |name: &str| root.join("sys/module").join(name).exists();
    if module("kvm_pvm") {
        return HostKind::Pvm;
    }
    for name in ["kvm_intel", "kvm_amd"] {
        if module(name) {
            return HostKind::Hardware(name.to_string());
        }
    }
    HostKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(entries: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for e in entries {
            let p = d.path().join(e);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            if e.starts_with("dev/") {
                fs::write(&p, b"").unwrap();
            } else {
                fs::create_dir_all(&p).unwrap();
            }
        }
        d
    }

    #[test]
    fn no_dev_kvm_is_refused_with_advice() {
        let t = tree(&["sys/module/kvm_intel"]);
        let k = detect(t.path());
        assert_eq!(k, HostKind::NoKvm);
        assert!(k.refusal().unwrap().contains("VT-x/AMD-V"));
    }

    #[test]
    fn pvm_wins_over_other_modules() {
        let t = tree(&[
            "dev/kvm",
            "sys/module/kvm",
            "sys/module/kvm_pvm",
            "sys/module/kvm_amd",
        ]);
        let k = detect(t.path());
        assert_eq!(k, HostKind::Pvm);
        assert!(!k.boots_stock_kernels());
        let msg = k.refusal().unwrap();
        assert!(
            msg.contains("--allow-pvm") && msg.contains("--host emulated"),
            "{msg}"
        );
    }

    #[test]
    fn vendor_module_means_hardware() {
        let t = tree(&["dev/kvm", "sys/module/kvm_amd"]);
        assert_eq!(detect(t.path()), HostKind::Hardware("kvm_amd".into()));
        let t = tree(&["dev/kvm", "sys/module/kvm_intel"]);
        assert!(detect(t.path()).boots_stock_kernels());
    }

    #[test]
    fn kvm_without_known_module_is_unknown_but_usable() {
        let t = tree(&["dev/kvm"]);
        assert_eq!(detect(t.path()), HostKind::Unknown);
        assert!(HostKind::Unknown.refusal().is_none());
    }
}
