//! Memory accounting of the monitor process, Firecracker's way: sum the RSS
//! of every mapping in `/proc/self/smaps`, and split it into guest RAM (the
//! mappings that lie inside guest memory's host ranges: pages the guest, or
//! the loader, touched) and everything else (the VMM's own overhead: binary,
//! heap, stacks, KVM's vCPU run areas). For guest RAM it also says which
//! page sizes back it: transparent huge pages (`AnonHugePages`), hugetlb
//! pages (`Private_Hugetlb`/`Shared_Hugetlb`, which smaps does not count in
//! `Rss`) and the mapping's `KernelPageSize`.

use std::path::Path;

/// One smaps sample, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemorySample {
    /// RSS of all mappings that are not guest RAM.
    pub vmm_overhead_kib: u64,
    /// RSS of the guest RAM mappings.
    pub guest_touched_kib: u64,
    /// Sum of both: the process RSS as smaps sees it.
    pub total_rss_kib: u64,
    /// PSS of the non-guest mappings (shared pages split among sharers).
    pub vmm_overhead_pss_kib: u64,
    /// Of `guest_touched_kib`, how much is backed by transparent huge pages
    /// (2 MiB).
    #[serde(default)]
    pub guest_thp_kib: u64,
    /// Of `guest_touched_kib`, how much is backed by hugetlb pages.
    #[serde(default)]
    pub guest_hugetlb_kib: u64,
    /// The base page size of the guest RAM mapping (`KernelPageSize`): 4
    /// for ordinary memory, 2048 or 1048576 for hugetlb.
    #[serde(default)]
    pub guest_page_kib: u64,
}

/// Failures sampling memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryStatsError {
    /// smaps could not be read.
    #[error("Failed to read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A mapping header was not understood.
    #[error("Malformed smaps mapping line: {line:?}")]
    Malformed { line: String },
}

fn overlaps(start: u64, end: u64, guest: &[(u64, u64)]) -> bool {
    guest.iter().any(|&(g, len)| start < g + len && g < end)
}

/// Splits the smaps text into guest and non-guest RSS. `guest` lists the
/// host ranges `(start, len)` of guest RAM.
pub fn parse_smaps(text: &str, guest: &[(u64, u64)]) -> Result<MemorySample, MemoryStatsError> {
    let mut sample = MemorySample::default();
    let mut in_guest = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if !first.ends_with(':') {
                let start = u64::from_str_radix(a, 16);
                let end = u64::from_str_radix(b, 16);
                let (Ok(start), Ok(end)) = (start, end) else {
                    return Err(MemoryStatsError::Malformed {
                        line: line.to_string(),
                    });
                };
                in_guest = overlaps(start, end, guest);
                continue;
            }
        }
        let kib = |l: &str| -> u64 {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let field = line.split(':').next().unwrap_or("");
        match (field, in_guest) {
            ("Rss", true) => sample.guest_touched_kib += kib(line),
            ("Rss", false) => sample.vmm_overhead_kib += kib(line),
            ("Pss", false) => sample.vmm_overhead_pss_kib += kib(line),
            ("AnonHugePages", true) => sample.guest_thp_kib += kib(line),
            // hugetlb pages are not in Rss: count them as touched guest RAM.
            ("Private_Hugetlb" | "Shared_Hugetlb", true) => {
                let v = kib(line);
                sample.guest_hugetlb_kib += v;
                sample.guest_touched_kib += v;
            }
            ("KernelPageSize", true) => {
                sample.guest_page_kib = sample.guest_page_kib.max(kib(line))
            }
            _ => {}
        }
    }
    sample.total_rss_kib = sample.guest_touched_kib + sample.vmm_overhead_kib;
    Ok(sample)
}

/// `/proc/self/smaps` opened once with the guest's host ranges: each
/// sample seeks back and re-reads the same fd (the kernel regenerates the
/// text), so a seccomp-confined VMM thread samples without `open`.
#[derive(Debug)]
pub struct MemoryProbe {
    file: std::fs::File,
    path: String,
    buf: Vec<u8>,
    guest: Vec<(u64, u64)>,
}

impl MemoryProbe {
    /// Opens `<proc_root>/self/smaps` (`proc_root` is `/proc` in production).
    pub fn open(proc_root: &Path, guest: Vec<(u64, u64)>) -> Result<Self, MemoryStatsError> {
        let path = proc_root.join("self/smaps");
        let file = std::fs::File::open(&path).map_err(|source| MemoryStatsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.display().to_string(),
            buf: Vec::new(),
            guest,
        })
    }

    /// The guest's host ranges.
    pub fn guest_ranges(&self) -> &[(u64, u64)] {
        &self.guest
    }

    /// One sample: only `lseek` and `read` on the open fd.
    pub fn sample(&mut self) -> Result<MemorySample, MemoryStatsError> {
        use std::io::{Read, Seek, SeekFrom};
        let err = |source| MemoryStatsError::Read {
            path: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(0)).map_err(err)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 << 10];
        loop {
            // Not read_to_end: that asks fstat/statx for a size hint first.
            match self.file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        parse_smaps(&String::from_utf8_lossy(&self.buf), &self.guest)
    }
}

/// Samples `<proc_root>/self/smaps` (`proc_root` is `/proc` in production).
pub fn sample(proc_root: &Path, guest: &[(u64, u64)]) -> Result<MemorySample, MemoryStatsError> {
    let path = proc_root.join("self/smaps");
    let text = std::fs::read_to_string(&path).map_err(|source| MemoryStatsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_smaps(&text, guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 123 /usr/bin/bench
Size:               2048 kB
Rss:                1500 kB
Pss:                1500 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               20480 kB
Pss:               20480 kB
7f1000000000-7f1000021000 rw-p 00000000 00:00 0 [heap]
Size:                132 kB
Rss:                 100 kB
Pss:                  50 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
Pss:                  12 kB
";

    #[test]
    fn guest_mapping_is_split_from_vmm_overhead() {
        let s = parse_smaps(SMAPS, &[(0x7f00_0000_0000, 128 << 20)]).unwrap();
        assert_eq!(s.guest_touched_kib, 20480);
        assert_eq!(s.vmm_overhead_kib, 1500 + 100 + 12);
        assert_eq!(s.total_rss_kib, 20480 + 1612);
        assert_eq!(s.vmm_overhead_pss_kib, 1500 + 50 + 12);
    }

    #[test]
    fn guest_page_sizes_are_reported() {
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
KernelPageSize:        4 kB
Rss:               20480 kB
AnonHugePages:     18432 kB
Private_Hugetlb:       0 kB
7f4000000000-7f4008000000 rw-p 00000000 00:0f 9 /anon_hugepage (deleted)
Size:             131072 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
AnonHugePages:         0 kB
Private_Hugetlb:    8192 kB
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 123 /usr/bin/bench
KernelPageSize:        4 kB
Rss:                1500 kB
AnonHugePages:      2048 kB
";
        let thp = parse_smaps(smaps, &[(0x7f00_0000_0000, 128 << 20)]).unwrap();
        assert_eq!(
            (thp.guest_touched_kib, thp.guest_thp_kib, thp.guest_page_kib),
            (20480, 18432, 4)
        );
        let hugetlb = parse_smaps(smaps, &[(0x7f40_0000_0000, 128 << 20)]).unwrap();
        assert_eq!(
            (
                hugetlb.guest_touched_kib,
                hugetlb.guest_hugetlb_kib,
                hugetlb.guest_page_kib
            ),
            (8192, 8192, 2048),
            "hugetlb pages count as touched guest RAM"
        );
        assert_eq!(hugetlb.total_rss_kib, 8192 + 20480 + 1500);
    }

    #[test]
    fn without_guest_ranges_everything_is_overhead() {
        let s = parse_smaps(SMAPS, &[]).unwrap();
        assert_eq!(s.guest_touched_kib, 0);
        assert_eq!(s.vmm_overhead_kib, s.total_rss_kib);
    }

    #[test]
    fn own_process_sample_is_plausible() {
        // Unprivileged: reads this test process's own smaps.
        let s = sample(Path::new("/proc"), &[]).unwrap();
        assert!(s.vmm_overhead_kib > 100, "{s:?}");
    }

    #[test]
    fn a_probe_samples_again_through_the_same_fd() {
        let mut p = MemoryProbe::open(Path::new("/proc"), Vec::new()).unwrap();
        let a = p.sample().unwrap();
        let b = p.sample().unwrap();
        assert!(
            a.vmm_overhead_kib > 100 && b.vmm_overhead_kib > 100,
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn garbage_header_is_reported() {
        let e = parse_smaps("zz-yy rw-p 0 0 0\n", &[]).unwrap_err();
        assert!(matches!(e, MemoryStatsError::Malformed { .. }));
    }
}
