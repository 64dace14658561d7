//! Device access rules of an instance cgroup: which device nodes the
//! container may create (`m`), read (`r`) and write (`w`).
//!
//! The default is runc's/Docker's: deny everything, then allow creating any
//! node (`mknod` is harmless without access) and using the standard nodes
//! `/dev/{null,zero,full,random,urandom,tty,console,ptmx}` and the private
//! devpts' `/dev/pts/*`. So a block device node made inside (with
//! `CAP_MKNOD`) cannot be opened.
//!
//! cgroup v1 writes the rules to `devices.deny`/`devices.allow`
//! ([`crate::v1`]); cgroup v2 has no devices files: the same rules become a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the instance cgroup
//! ([`crate::v2`]), as runc and crun do.

use serde::Serialize;

/// Which nodes a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Both kinds (`a` in v1).
    All,
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

impl DeviceKind {
    /// The v1 / OCI letter.
    pub fn letter(self) -> char {
        match self {
            Self::All => 'a',
            Self::Char => 'c',
            Self::Block => 'b',
        }
    }
}

/// One allow rule (`None` = any major or minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Any of `r`, `w`, `m`.
    pub access: &'static str,
}

const fn allow(
    kind: DeviceKind,
    major: Option<u32>,
    minor: Option<u32>,
    access: &'static str,
) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access,
    }
}

/// The standard allow list (everything else is denied).
pub const DEFAULT_ALLOWED: [DeviceRule; 11] = [
    allow(DeviceKind::Char, None, None, "m"),
    allow(DeviceKind::Block, None, None, "m"),
    allow(DeviceKind::Char, Some(1), Some(3), "rwm"), // null
    allow(DeviceKind::Char, Some(1), Some(5), "rwm"), // zero
    allow(DeviceKind::Char, Some(1), Some(7), "rwm"), // full
    allow(DeviceKind::Char, Some(1), Some(8), "rwm"), // random
    allow(DeviceKind::Char, Some(1), Some(9), "rwm"), // urandom
    allow(DeviceKind::Char, Some(5), Some(0), "rwm"), // tty
    allow(DeviceKind::Char, Some(5), Some(1), "rwm"), // console
    allow(DeviceKind::Char, Some(5), Some(2), "rwm"), // ptmx
    allow(DeviceKind::Char, Some(136), None, "rwm"),  // pts/*
];

/// Device access of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// No devices controller: whatever the parent allows (privileged).
    #[default]
    Unrestricted,
    /// Deny all, then allow exactly these.
    AllowOnly(&'static [DeviceRule]),
}

impl DevicePolicy {
    /// Deny all but [`DEFAULT_ALLOWED`].
    pub const fn standard() -> Self {
        Self::AllowOnly(&DEFAULT_ALLOWED)
    }
}

impl DeviceRule {
    /// The rule as written to v1 `devices.allow`: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.letter(),
            n(self.major),
            n(self.minor),
            self.access
        )
    }

    /// Whether this rule allows `access` (one of `r`, `w`, `m`) to the node.
    pub fn allows(&self, kind: DeviceKind, major: u32, minor: u32, access: char) -> bool {
        (self.kind == DeviceKind::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && self.access.contains(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_list_allows_null_and_pts_but_no_block_device_access() {
        let any = |k, ma, mi, a| DEFAULT_ALLOWED.iter().any(|r| r.allows(k, ma, mi, a));
        assert!(any(DeviceKind::Char, 1, 3, 'w'));
        assert!(any(DeviceKind::Char, 136, 7, 'r'));
        assert!(any(DeviceKind::Block, 8, 0, 'm'), "mknod is allowed");
        assert!(!any(DeviceKind::Block, 8, 0, 'r'), "reading a disk is not");
        assert!(!any(DeviceKind::Char, 1, 1, 'r'), "/dev/mem is not");
        assert!(!any(DeviceKind::Char, 10, 200, 'w'), "/dev/net/tun is not");
        assert_eq!(DEFAULT_ALLOWED[0].v1_line(), "c *:* m");
        assert_eq!(DEFAULT_ALLOWED[10].v1_line(), "c 136:* rwm");
    }
}
