//! Capability sets as `/proc/PID/status` shows them (hex bit masks), with
//! the names from the `caps` crate.

use serde::{Deserialize, Serialize};

/// One capability set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSet {
    /// The mask as the kernel prints it (16 hex digits).
    pub hex: String,
    /// Number of capabilities in the set.
    pub count: u32,
    /// Their names (`CAP_SYS_ADMIN`...), lowest bit first; bits the `caps`
    /// crate does not know are `CAP_<bit>`.
    pub names: Vec<String>,
}

impl CapSet {
    /// Parses a hex mask; `None` unless it is one.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bits = u64::from_str_radix(hex.trim(), 16).ok()?;
        Some(Self::from_bits(bits, hex.trim()))
    }

    fn from_bits(bits: u64, hex: &str) -> Self {
        let mut known: Vec<caps::Capability> = caps::all().into_iter().collect();
        known.sort_by_key(|c| c.index());
        let names = (0..64u8)
            .filter(|b| bits & (1u64 << b) != 0)
            .map(|b| match known.iter().find(|c| c.index() == b) {
                Some(c) => c.to_string(),
                None => format!("CAP_{b}"),
            })
            .collect();
        Self {
            hex: hex.to_owned(),
            count: bits.count_ones(),
            names,
        }
    }

    /// Whether `name` (e.g. `CAP_SYS_ADMIN`) is in the set.
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// True for the empty set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_decode_to_capability_names() {
        // gVisor's Sentry on this host: CAP_SYS_PTRACE only.
        let s = CapSet::from_hex("0000000000080000").unwrap();
        assert_eq!(s.names, ["CAP_SYS_PTRACE"]);
        assert_eq!(s.count, 1);
        // runsc-gofer: chown, dac_override, dac_read_search, fowner, fsetid, sys_chroot.
        let g = CapSet::from_hex("000000000004001f").unwrap();
        assert_eq!(g.count, 6);
        assert!(g.has("CAP_CHOWN") && g.has("CAP_SYS_CHROOT") && !g.has("CAP_SYS_ADMIN"));
        let none = CapSet::from_hex("0000000000000000").unwrap();
        assert!(none.is_empty() && none.names.is_empty());
        let high = CapSet::from_hex("8000000000000000").unwrap();
        assert_eq!(high.names, ["CAP_63"]);
        assert!(CapSet::from_hex("zz").is_none());
    }
}
