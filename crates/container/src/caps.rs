//! Linux capabilities of the container.
//!
//! The default set is Docker's and containerd's (moby `oci/caps/defaults.go`,
//! containerd `oci/spec.go`): 14 capabilities. The container's init drops
//! every other capability from its bounding set, sets permitted and
//! effective to the 14, empties the inheritable set (as moby does since
//! CVE-2022-24769) and clears the ambient set, all before the workload is
//! forked (so the workload and init are confined alike).

use serde::Serialize;

/// Capability numbers (`linux/capability.h`); libc does not carry them.
pub const CAP_CHOWN: u8 = 0;
pub const CAP_DAC_OVERRIDE: u8 = 1;
pub const CAP_FOWNER: u8 = 3;
pub const CAP_FSETID: u8 = 4;
pub const CAP_KILL: u8 = 5;
pub const CAP_SETGID: u8 = 6;
pub const CAP_SETUID: u8 = 7;
pub const CAP_SETPCAP: u8 = 8;
pub const CAP_NET_BIND_SERVICE: u8 = 10;
pub const CAP_NET_RAW: u8 = 13;
pub const CAP_SYS_CHROOT: u8 = 18;
pub const CAP_SYS_ADMIN: u8 = 21;
pub const CAP_MKNOD: u8 = 27;
pub const CAP_AUDIT_WRITE: u8 = 29;
pub const CAP_SETFCAP: u8 = 31;

/// Names by number, 0..=40 (CAP_CHECKPOINT_RESTORE, the last in 6.x).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of capabilities as the kernel's 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Docker's/containerd's default: CHOWN, DAC_OVERRIDE, FSETID, FOWNER,
    /// MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE,
    /// SYS_CHROOT, KILL, AUDIT_WRITE.
    pub const DOCKER_DEFAULT: CapSet = CapSet::of(&[
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FSETID,
        CAP_FOWNER,
        CAP_MKNOD,
        CAP_NET_RAW,
        CAP_SETGID,
        CAP_SETUID,
        CAP_SETFCAP,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
        CAP_SYS_CHROOT,
        CAP_KILL,
        CAP_AUDIT_WRITE,
    ]);

    /// Every capability this table knows (what host root has).
    pub const ALL: CapSet = CapSet((1u64 << NAMES.len()) - 1);

    /// This process's bounding set (`CapBnd` of `/proc/self/status`): what
    /// a privileged container can be given, as moby's `--privileged` gives
    /// every capability the host has rather than every one it knows.
    /// `ALL` where it cannot be read.
    pub fn bounding_of_self() -> CapSet {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .map_or(CapSet::ALL, |m| CapSet(m & CapSet::ALL.0))
    }

    pub const fn of(caps: &[u8]) -> CapSet {
        let mut m = 0u64;
        let mut i = 0;
        while i < caps.len() {
            m |= 1 << caps[i];
            i += 1;
        }
        CapSet(m)
    }

    pub fn contains(self, cap: u8) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn count(self) -> u32 {
        self.0.count_ones()
    }

    /// `CAP_*` names in number order (unknown bits as `CAP_<n>`).
    pub fn names(self) -> Vec<String> {
        (0..64u8)
            .filter(|c| self.contains(*c))
            .map(|c| {
                NAMES
                    .get(c as usize)
                    .map_or_else(|| format!("CAP_{c}"), |n| (*n).to_string())
            })
            .collect()
    }

    /// The mask as `/proc/<pid>/status` prints it (`00000000a80425fb`).
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_dockers_fourteen() {
        let d = CapSet::DOCKER_DEFAULT;
        assert_eq!(d.count(), 14);
        // What `docker run busybox grep Cap /proc/self/status` prints.
        assert_eq!(d.hex(), "00000000a80425fb");
        assert!(d.names().contains(&"CAP_NET_BIND_SERVICE".to_string()));
        assert!(!d.contains(CAP_SYS_ADMIN));
        assert_eq!(CapSet::ALL.count(), 41);
        let own = CapSet::bounding_of_self();
        assert!(own.count() <= 41 && own.0 & !CapSet::ALL.0 == 0);
    }
}
