//! Launch phases of a container, symmetric to the microVM's boot phases:
//! where the time between the launch clock's start and the workload's ready
//! byte goes. Host-side marks are taken by the launcher; the child stamps
//! its own steps with the same clock (`CLOCK_MONOTONIC`, no allocation) and
//! sends them over the sync socket just before it forks the workload.
//!
//! The phases are contiguous: they add up to launch -> exec'd, and with
//! `workload_ready_us` to launch -> ready.

use serde::{Deserialize, Serialize};

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of `std::time::Instant`).
/// Async-signal-safe (vDSO), so the child may call it.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to
    // a local; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The child's stamps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Stamp {
    /// `GO` received from the launcher.
    Go = 0,
    /// Joined its cgroup (v1), became root (user ns), cgroup ns unshared.
    Joined,
    /// Overlay, `/proc`, `/sys`, `/dev` mounted.
    Rootfs,
    /// pivot_root done, old root detached.
    Pivoted,
    /// Masked and read-only paths, hostname, `lo`.
    Paths,
    /// Capabilities dropped, no_new_privs, seccomp installed.
    Hardened,
}

pub(crate) const STAMPS: usize = 6;

/// Stamps kept by the child on its own stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChildStamps(pub [u64; STAMPS]);

impl ChildStamps {
    pub(crate) fn mark(&mut self, s: Stamp) {
        self.0[s as usize] = now_ns();
    }
}

/// Host-side marks of one launch (ns on the monotonic clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    pub t0: u64,
    pub prepared: u64,
    pub instance_dir: u64,
    pub cgroup: u64,
    pub cloned: u64,
    pub go_sent: u64,
    pub child: ChildStamps,
    /// EOF on the sync socket: the workload exec'd.
    pub execd: u64,
}

/// Where one launch's time went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchPhases {
    /// Launch -> config validated, cgroup layout detected, stale instances
    /// removed, image leased, seccomp filter ready.
    pub prepare_us: u64,
    /// -> instance directory (overlay upper/work) created.
    pub instance_dir_us: u64,
    /// -> cgroup created with its limits and device rules.
    pub cgroup_us: u64,
    /// -> channels opened and `clone` with all namespaces returned.
    pub clone_us: u64,
    /// -> (user namespace) id maps and network hook done, `GO` sent;
    /// otherwise the network thread's namespace, veth attached, sent to
    /// the child (the child's work meanwhile is counted here).
    pub attach_us: u64,
    /// -> the child joined its cgroup and unshared the cgroup namespace.
    pub cgroup_join_us: u64,
    /// -> overlay, `/proc`, `/sys`, `/dev` mounted.
    pub rootfs_us: u64,
    /// -> pivot_root done.
    pub pivot_us: u64,
    /// -> masked and read-only paths, hostname, `lo`.
    pub paths_us: u64,
    /// -> capabilities dropped, no_new_privs, seccomp installed.
    pub hardening_us: u64,
    /// -> workload forked and exec'd (the launcher sees the sync socket close).
    pub exec_us: u64,
    /// Launch -> exec'd (the sum of the above).
    pub launch_to_exec_us: u64,
    /// Exec'd -> the workload's ready byte (its own start-up).
    pub workload_ready_us: Option<u64>,
    /// Launch -> ready.
    pub launch_to_ready_us: Option<u64>,
}

fn us(a: u64, b: u64) -> u64 {
    b.saturating_sub(a) / 1000
}

impl LaunchPhases {
    pub(crate) fn from_marks(m: &Marks, ready_ns: Option<u64>) -> Self {
        // The launcher stamps the exec when it reads EOF on the sync
        // socket; a fast workload's ready byte can be read (by the other
        // thread) before that: the exec was then certainly done.
        let mut m = *m;
        if let Some(r) = ready_ns.filter(|r| *r < m.execd && *r > 0) {
            m.execd = r;
        }
        let c = &m.child.0;
        // A child stamp of 0 (never sent) collapses its phase into the next.
        // Each boundary is at least the one before: when the child does not
        // wait for GO it works while the launcher attaches, and that part
        // of its work is counted in `attach_us`.
        let at = |i: Stamp, fallback: u64| match c[i as usize] {
            0 => fallback,
            t => t,
        };
        let joined = at(Stamp::Joined, m.execd).max(m.go_sent);
        let rootfs = at(Stamp::Rootfs, m.execd).max(joined);
        let pivoted = at(Stamp::Pivoted, m.execd).max(rootfs);
        let paths = at(Stamp::Paths, m.execd).max(pivoted);
        let hardened = at(Stamp::Hardened, m.execd).max(paths);
        m.execd = m.execd.max(hardened);
        Self {
            prepare_us: us(m.t0, m.prepared),
            instance_dir_us: us(m.prepared, m.instance_dir),
            cgroup_us: us(m.instance_dir, m.cgroup),
            clone_us: us(m.cgroup, m.cloned),
            attach_us: us(m.cloned, m.go_sent),
            cgroup_join_us: us(m.go_sent, joined),
            rootfs_us: us(joined, rootfs),
            pivot_us: us(rootfs, pivoted),
            paths_us: us(pivoted, paths),
            hardening_us: us(paths, hardened),
            exec_us: us(hardened, m.execd),
            launch_to_exec_us: us(m.t0, m.execd),
            workload_ready_us: ready_ns.map(|r| us(m.execd, r)),
            launch_to_ready_us: ready_ns.map(|r| us(m.t0, r)),
        }
    }

    /// The phases in order with their names (for tables and plots).
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("prepare", self.prepare_us),
            ("instance dir", self.instance_dir_us),
            ("cgroup", self.cgroup_us),
            ("clone", self.clone_us),
            ("attach", self.attach_us),
            ("cgroup join", self.cgroup_join_us),
            ("rootfs", self.rootfs_us),
            ("pivot", self.pivot_us),
            ("paths", self.paths_us),
            ("hardening", self.hardening_us),
            ("exec", self.exec_us),
            ("workload ready", self.workload_ready_us.unwrap_or(0)),
        ]
    }
}

/// The stamps message: `T`, 7 bytes of padding, then the stamps (LE).
pub(crate) const STAMPS_MSG_LEN: usize = 8 + 8 * STAMPS;
const STAMPS_TAG: u8 = b'T';

pub(crate) fn encode(s: &ChildStamps) -> [u8; STAMPS_MSG_LEN] {
    let mut m = [0u8; STAMPS_MSG_LEN];
    m[0] = STAMPS_TAG;
    for (i, v) in s.0.iter().enumerate() {
        m[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    m
}

pub(crate) fn decode(msg: &[u8]) -> Option<ChildStamps> {
    if msg.len() != STAMPS_MSG_LEN || msg[0] != STAMPS_TAG {
        return None;
    }
    let mut s = ChildStamps::default();
    for (i, v) in s.0.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg[8 + 8 * i..16 + 8 * i]);
        *v = u64::from_le_bytes(b);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_contiguous_and_add_up() {
        let ms = 1_000_000;
        let m = Marks {
            t0: 99 * ms,
            prepared: 100 * ms,
            instance_dir: 101 * ms,
            cgroup: 103 * ms,
            cloned: 104 * ms,
            go_sent: 105 * ms,
            child: ChildStamps([105 * ms, 106 * ms, 108 * ms, 109 * ms, 110 * ms, 111 * ms]),
            execd: 112 * ms,
        };
        let p = LaunchPhases::from_marks(&m, Some(115 * ms));
        assert_eq!(p.cgroup_us, 2000);
        assert_eq!(p.rootfs_us, 2000);
        assert_eq!(p.hardening_us, 1000);
        assert_eq!(p.launch_to_exec_us, 13_000);
        let sum: u64 = p.named()[..11].iter().map(|(_, v)| v).sum();
        assert_eq!(sum, p.launch_to_exec_us);
        assert_eq!(p.workload_ready_us, Some(3000));
        assert_eq!(p.launch_to_ready_us, Some(16_000));
    }

    #[test]
    fn a_child_ahead_of_the_launcher_keeps_the_phases_contiguous() {
        // No GO: the child joined and mounted before the launcher's mark.
        let m = Marks {
            t0: 0,
            prepared: 1000,
            instance_dir: 2000,
            cgroup: 3000,
            cloned: 4000,
            go_sent: 9000,
            child: ChildStamps([0, 5000, 7000, 10_000, 11_000, 12_000]),
            execd: 13_000,
        };
        let p = LaunchPhases::from_marks(&m, None);
        let sum: u64 = p.named()[..11].iter().map(|(_, v)| v).sum();
        assert_eq!(sum, p.launch_to_exec_us);
        assert_eq!((p.cgroup_join_us, p.rootfs_us, p.pivot_us), (0, 0, 1));
    }

    #[test]
    fn stamps_round_trip_and_missing_ones_collapse() {
        let s = ChildStamps([1, 2, 3, 4, 5, 6]);
        assert_eq!(decode(&encode(&s)), Some(s));
        assert_eq!(decode(&[b'T'; 8]), None);
        let m = Marks {
            go_sent: 10_000,
            execd: 20_000,
            ..Default::default()
        };
        let p = LaunchPhases::from_marks(&m, None);
        assert_eq!(p.cgroup_join_us, 10);
        assert_eq!(p.hardening_us + p.rootfs_us + p.exec_us, 0);
    }
}
