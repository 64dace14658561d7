//! Memory readers: per-process PSS/USS/RSS from `smaps_rollup`, host
//! `MemAvailable`, and process trees. Every reader takes the proc root as a
//! parameter so it is unit-tested on fake trees.

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

/// Memory of one or more processes, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ProcMemory {
    pub rss: u64,
    pub pss: u64,
    /// Unique set size: private clean + private dirty.
    pub uss: u64,
}

impl std::ops::AddAssign for ProcMemory {
    fn add_assign(&mut self, o: Self) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.uss += o.uss;
    }
}

/// Parse the text of `/proc/PID/smaps_rollup` (values in kB).
pub fn parse_smaps_rollup(text: &str) -> ProcMemory {
    let mut m = ProcMemory::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(kb) = val.parse::<u64>() else { continue };
        let bytes = kb * 1024;
        match key {
            "Rss:" => m.rss = bytes,
            "Pss:" => m.pss = bytes,
            "Private_Clean:" | "Private_Dirty:" => m.uss += bytes,
            _ => {}
        }
    }
    m
}

/// Memory of `pid` read from `<proc_root>/<pid>/smaps_rollup`.
pub fn read_proc_memory(proc_root: &Path, pid: u32) -> io::Result<ProcMemory> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("smaps_rollup"))?;
    Ok(parse_smaps_rollup(&text))
}

/// `pid` and all its descendants, found through `/proc/PID/task/*/children`.
pub fn process_tree(proc_root: &Path, pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = fs::read_dir(proc_root.join(p.to_string()).join("task")) {
            for t in tasks.flatten() {
                if let Ok(children) = fs::read_to_string(t.path().join("children")) {
                    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                        if !out.contains(&c) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// Summed memory of a set of pids; processes that vanished are skipped.
pub fn tree_memory(proc_root: &Path, pids: &[u32]) -> ProcMemory {
    let mut total = ProcMemory::default();
    for &p in pids {
        if let Ok(m) = read_proc_memory(proc_root, p) {
            total += m;
        }
    }
    total
}

/// `MemAvailable` from `<proc_root>/meminfo`, in bytes.
pub fn mem_available(proc_root: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(proc_root.join("meminfo"))?;
    meminfo_field(&text, "MemAvailable:")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemAvailable in meminfo"))
}

/// A `kB` field of meminfo-like text, in bytes.
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55d0-7ffd ---p 00000000 00:00 0    [rollup]
Rss:                4200 kB
Pss:                3100 kB
Pss_Anon:           1000 kB
Shared_Clean:       1000 kB
Private_Clean:       900 kB
Private_Dirty:      1300 kB
Swap:                  0 kB
";

    #[test]
    fn rollup_parses_rss_pss_uss() {
        let m = parse_smaps_rollup(ROLLUP);
        assert_eq!(m.rss, 4200 * 1024);
        assert_eq!(m.pss, 3100 * 1024);
        assert_eq!(m.uss, 2200 * 1024);
    }

    #[test]
    fn tree_walks_children_on_fake_proc() {
        let d = tempfile::tempdir().unwrap();
        let mk = |pid: u32, children: &str| {
            let t = d.path().join(format!("{pid}/task/{pid}"));
            fs::create_dir_all(&t).unwrap();
            fs::write(t.join("children"), children).unwrap();
            fs::write(d.path().join(format!("{pid}/smaps_rollup")), ROLLUP).unwrap();
        };
        mk(10, "11 12 ");
        mk(11, "13");
        mk(12, "");
        mk(13, "");
        let mut pids = process_tree(d.path(), 10);
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12, 13]);
        assert_eq!(tree_memory(d.path(), &pids).pss, 4 * 3100 * 1024);
    }

    #[test]
    fn meminfo_available() {
        let t = "MemTotal: 100 kB\nMemFree: 50 kB\nMemAvailable:   70 kB\n";
        assert_eq!(meminfo_field(t, "MemAvailable:"), Some(70 * 1024));
    }
}

/// A monitor's resident memory split Firecracker's way (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestSplit {
    /// RSS outside guest RAM: the VMM's own overhead.
    pub overhead: u64,
    /// RSS of guest RAM (hugetlb pages included, which smaps leaves out of
    /// `Rss`).
    pub guest: u64,
    /// Of `guest`, what huge pages back: transparent (`AnonHugePages`) or
    /// hugetlb (`Private_Hugetlb` + `Shared_Hugetlb`). The rest is 4 KiB
    /// pages.
    pub guest_huge: u64,
}

/// Firecracker's split of a monitor's resident memory: mappings at least as
/// large as guest RAM are guest memory; everything else is VMM overhead.
/// The same method for every monitor (ours, QEMU's), from `/proc/PID/smaps`.
pub fn split_guest_memory(proc_root: &Path, pid: u32, guest_bytes: u64) -> io::Result<GuestSplit> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("smaps"))?;
    Ok(split_smaps(&text, guest_bytes))
}

/// [`split_guest_memory`] on smaps text.
pub fn split_smaps(text: &str, guest_bytes: u64) -> GuestSplit {
    let mut split = GuestSplit::default();
    let mut is_guest = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                is_guest = b.saturating_sub(a) >= guest_bytes;
                continue;
            }
        }
        let bytes = || -> u64 {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        match (first, is_guest) {
            ("Rss:", true) => split.guest += bytes(),
            ("Rss:", false) => split.overhead += bytes(),
            ("AnonHugePages:", true) => split.guest_huge += bytes(),
            ("Private_Hugetlb:" | "Shared_Hugetlb:", true) => {
                split.guest += bytes();
                split.guest_huge += bytes();
            }
            _ => {}
        }
    }
    split
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn guest_sized_mapping_is_guest_memory() {
        let t = "7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               20480 kB
55550000-55560000 r-xp 00000000 08:01 123 /usr/bin/bench
Size:                 64 kB
Rss:                  60 kB
7ffd0000-7ffd2000 rw-p 00000000 00:00 0 [stack]
Rss:                   8 kB
";
        let split = split_smaps(t, 128 << 20);
        assert_eq!(split.guest, 20480 * 1024);
        assert_eq!(split.overhead, 68 * 1024);
        assert_eq!(split.guest_huge, 0);
    }

    #[test]
    fn huge_pages_backing_guest_ram_are_counted() {
        let thp = "7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Rss:               20480 kB
AnonHugePages:     18432 kB
55550000-55560000 r-xp 00000000 08:01 123 /usr/bin/qemu
Rss:                  60 kB
AnonHugePages:         0 kB
";
        let split = split_smaps(thp, 128 << 20);
        assert_eq!((split.guest, split.guest_huge), (20480 << 10, 18432 << 10));
        // hugetlb pages are not in Rss: they count as touched guest RAM.
        let hugetlb = "7f0000000000-7f0008000000 rw-p 00000000 00:0f 1 /anon_hugepage (deleted)
Rss:                   0 kB
Private_Hugetlb:   32768 kB
Shared_Hugetlb:        0 kB
";
        let split = split_smaps(hugetlb, 128 << 20);
        assert_eq!((split.guest, split.guest_huge), (32768 << 10, 32768 << 10));
    }
}
