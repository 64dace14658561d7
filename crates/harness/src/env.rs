//! Host fingerprint recorded with every result: kernel, CPU, cgroup layout,
//! KVM kind, THP, KSM, swap, tool and peer versions, git revision.
//!
//! Readers take the proc/sys roots as parameters so they are unit-tested on
//! fake trees.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Which kind of KVM the measurements ran on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// No usable `/dev/kvm`.
    None,
    /// `kvm_pvm`: software shadow paging; boots only PVM-enabled guests.
    Pvm,
    /// VT-x / AMD-V.
    Hardware,
    /// Nested KVM inside the QEMU-TCG emulated host.
    Emulated,
}

/// Everything a reader needs to judge where a number came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    pub hostname: String,
    pub kernel_release: String,
    pub kernel_cmdline: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_bytes: u64,
    pub cgroup_layout: String,
    pub kvm: KvmKind,
    pub transparent_hugepage: String,
    pub ksm_run: String,
    pub swap_total_bytes: u64,
    pub isolab_version: String,
    pub git_revision: String,
    /// `name -> version line` of every peer and tool consulted; "not installed" when absent.
    pub tools: Vec<(String, String)>,
    /// Set when the figures come from the emulated host.
    pub label: Option<String>,
}

fn read_trim(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// CPU model name from cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The selected value of a sysfs "[always] madvise never" style file.
pub fn selected_choice(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with('[') && w.ends_with(']'))
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .unwrap_or_else(|| text.trim().to_string())
}

/// KVM kind from `/dev/kvm` presence and loaded modules under `sys_root`.
pub fn kvm_kind(dev_kvm: &Path, sys_root: &Path) -> KvmKind {
    if !dev_kvm.exists() {
        return KvmKind::None;
    }
    let module = |m: &str| sys_root.join("module").join(m).exists();
    if module("kvm_pvm") {
        KvmKind::Pvm
    } else if module("kvm_intel") || module("kvm_amd") {
        KvmKind::Hardware
    } else {
        // Built-in kvm without a visible vendor module: assume hardware.
        KvmKind::Hardware
    }
}

/// cgroup layout as the cgroups crate detects it.
fn cgroup_layout() -> String {
    match isolab_cgroups::layout::detect(Path::new("/sys/fs/cgroup")) {
        Ok(l) => format!("{l:?}").to_lowercase(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// First line of `cmd --version` (or the given args), or "not installed".
pub fn tool_version(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not installed".into(),
    }
}

impl Environment {
    /// Fingerprint this host.
    pub fn capture() -> Self {
        let proc_root = Path::new("/proc");
        let sys = Path::new("/sys");
        let meminfo = read_trim(proc_root.join("meminfo"));
        let field = |k| crate::memory::meminfo_field(&meminfo, k).unwrap_or(0);
        let tools = [
            ("crun", vec!["--version"]),
            ("runc", vec!["--version"]),
            ("runsc", vec!["--version"]),
            ("qemu-system-x86_64", vec!["--version"]),
        ]
        .into_iter()
        .map(|(c, a)| (c.to_string(), tool_version(c, &a)))
        .collect();
        Environment {
            hostname: read_trim(proc_root.join("sys/kernel/hostname")),
            kernel_release: read_trim(proc_root.join("sys/kernel/osrelease")),
            kernel_cmdline: read_trim(proc_root.join("cmdline")),
            cpu_model: cpu_model(&read_trim(proc_root.join("cpuinfo"))),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mem_total_bytes: field("MemTotal:"),
            cgroup_layout: cgroup_layout(),
            kvm: kvm_kind(Path::new("/dev/kvm"), sys),
            transparent_hugepage: selected_choice(&read_trim(
                sys.join("kernel/mm/transparent_hugepage/enabled"),
            )),
            ksm_run: match read_trim(sys.join("kernel/mm/ksm/run")).as_str() {
                "" => "unavailable".into(),
                "0" => "off".into(),
                v => format!("on ({v})"),
            },
            swap_total_bytes: field("SwapTotal:"),
            isolab_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: option_env!("ISOLAB_GIT_REV").unwrap_or("unknown").into(),
            tools,
            label: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_choice() {
        assert_eq!(selected_choice("always [madvise] never"), "madvise");
        assert_eq!(selected_choice("[never]"), "never");
    }

    #[test]
    fn cpu_model_from_cpuinfo() {
        let t = "processor : 0\nmodel name\t: AMD EPYC 9B14\nflags : fpu\n";
        assert_eq!(cpu_model(t), "AMD EPYC 9B14");
    }

    #[test]
    fn kvm_kind_on_fake_sys() {
        let d = tempfile::tempdir().unwrap();
        let kvm = d.path().join("kvm");
        assert_eq!(kvm_kind(&kvm, d.path()), KvmKind::None);
        fs::write(&kvm, "").unwrap();
        fs::create_dir_all(d.path().join("module/kvm_pvm")).unwrap();
        assert_eq!(kvm_kind(&kvm, d.path()), KvmKind::Pvm);
        fs::remove_dir(d.path().join("module/kvm_pvm")).unwrap();
        fs::create_dir_all(d.path().join("module/kvm_amd")).unwrap();
        assert_eq!(kvm_kind(&kvm, d.path()), KvmKind::Hardware);
    }
}
