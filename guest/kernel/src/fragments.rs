//! The guest kernel configuration: `make tinyconfig` as the base, plus the
//! fragments in `guest/kernel/config/` (embedded at compile time), and the
//! check that every option they ask for really is in the final `.config`.
//!
//! `olddefconfig`/`allnoconfig` drop an option silently when its
//! dependencies are missing; [`verify`] turns that into a list of names.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// One configuration fragment: file name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub name: String,
    pub text: String,
}

/// The fragments shipped with the workbench, in merge order.
pub fn default_fragments() -> Vec<Fragment> {
    [
        (
            "10-platform.config",
            include_str!("../config/10-platform.config"),
        ),
        (
            "20-console.config",
            include_str!("../config/20-console.config"),
        ),
        (
            "30-initramfs.config",
            include_str!("../config/30-initramfs.config"),
        ),
        (
            "40-userspace.config",
            include_str!("../config/40-userspace.config"),
        ),
        ("50-net.config", include_str!("../config/50-net.config")),
        ("60-image.config", include_str!("../config/60-image.config")),
    ]
    .into_iter()
    .map(|(name, text)| Fragment {
        name: name.to_string(),
        text: text.to_string(),
    })
    .collect()
}

/// Bumped whenever the build recipe changes in a way that changes the
/// output for the same fragments (base target, make targets, ARCH).
const RECIPE: &str =
    "isolab-guest-kernel recipe 1: tinyconfig + merge_config -n; ARCH=x86_64; vmlinux bzImage";

/// The cache key: a hash of the recipe, the source package's name and every
/// fragment (name and text). Computing it reads nothing from disk, so a
/// cached kernel is found at once.
pub fn config_hash(source_name: &str, fragments: &[Fragment]) -> String {
    let mut h = Sha256::new();
    h.update(RECIPE.as_bytes());
    h.update([0]);
    h.update(source_name.as_bytes());
    for f in fragments {
        h.update([0]);
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Requested or actual value of one option; `None` means "is not set".
pub type Value = Option<String>;

/// Parses `.config` syntax: `CONFIG_X=v` and `# CONFIG_X is not set`;
/// comments and blank lines are skipped. Later lines win.
pub fn parse_config(text: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if name.starts_with("CONFIG_") && !name.contains(' ') {
                    out.insert(name.to_string(), None);
                }
            }
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                out.insert(name.to_string(), Some(value.to_string()));
            }
        }
    }
    out
}

/// An option the final `.config` does not have as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub option: String,
    pub fragment: String,
    pub wanted: Value,
    pub got: Value,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Value| v.clone().unwrap_or_else(|| "not set".into());
        write!(
            f,
            "{} (from {}: wanted {}, got {})",
            self.option,
            self.fragment,
            show(&self.wanted),
            show(&self.got)
        )
    }
}

/// Every option a fragment asks for, compared with the final `.config`.
/// "is not set" is satisfied by absence or `=n`.
pub fn verify(fragments: &[Fragment], final_config: &str) -> Vec<Dropped> {
    let actual = parse_config(final_config);
    let mut dropped = Vec::new();
    for frag in fragments {
        for (option, wanted) in parse_config(&frag.text) {
            let got = actual.get(&option).cloned().flatten();
            let ok = match &wanted {
                None => got.is_none() || got.as_deref() == Some("n"),
                Some(w) => got.as_deref() == Some(w.as_str()),
            };
            if !ok {
                dropped.push(Dropped {
                    option,
                    fragment: frag.name.clone(),
                    wanted,
                    got,
                });
            }
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(text: &str) -> Vec<Fragment> {
        vec![Fragment {
            name: "t.config".into(),
            text: text.into(),
        }]
    }

    #[test]
    fn parses_set_unset_and_skips_comments() {
        let c = parse_config(
            "# a comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x y\"\n\nCONFIG_A=n\n",
        );
        assert_eq!(c["CONFIG_A"].as_deref(), Some("n"));
        assert_eq!(c["CONFIG_B"], None);
        assert_eq!(c["CONFIG_S"].as_deref(), Some("\"x y\""));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn verify_reports_exactly_the_dropped_options() {
        let f = frag("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_PCI is not set\n# CONFIG_ACPI is not set\nCONFIG_N=4\n");
        let fin = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_ACPI=y\nCONFIG_N=4\n";
        let d = verify(&f, fin);
        let names: Vec<_> = d.iter().map(|d| d.option.as_str()).collect();
        assert_eq!(names, ["CONFIG_ACPI", "CONFIG_B"]);
        assert_eq!(
            d[1].to_string(),
            "CONFIG_B (from t.config: wanted y, got not set)"
        );
    }

    #[test]
    fn shipped_fragments_ask_for_what_init_and_the_workload_need() {
        let all: BTreeMap<_, _> = default_fragments()
            .iter()
            .flat_map(|f| parse_config(&f.text))
            .collect();
        for need in [
            "CONFIG_64BIT",
            "CONFIG_PVH",
            "CONFIG_KVM_GUEST",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_BLK_DEV_INITRD",
            "CONFIG_DEVTMPFS",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_VIRTIO_NET",
            "CONFIG_INET",
            "CONFIG_EPOLL",
            "CONFIG_FUTEX",
            "CONFIG_X86_IOPL_IOPERM",
            "CONFIG_MEMCG",
            "CONFIG_SMP",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_EROFS_FS",
            "CONFIG_OVERLAY_FS",
            "CONFIG_TMPFS_XATTR",
        ] {
            assert_eq!(
                all.get(need).cloned().flatten().as_deref(),
                Some("y"),
                "{need}"
            );
        }
        for off in ["CONFIG_MODULES", "CONFIG_PCI", "CONFIG_ACPI"] {
            assert_eq!(all.get(off), Some(&None), "{off}");
        }
    }

    #[test]
    fn hash_changes_with_any_fragment_byte_and_is_stable() {
        let a = config_hash("linux-source-6.1", &default_fragments());
        assert_eq!(a, config_hash("linux-source-6.1", &default_fragments()));
        assert_eq!(a.len(), 16);
        let mut f = default_fragments();
        f[0].text.push('\n');
        assert_ne!(a, config_hash("linux-source-6.1", &f));
        assert_ne!(a, config_hash("linux-source-6.2", &default_fragments()));
    }
}
