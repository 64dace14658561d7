//! Allocating memory that is really resident: every page written once.

/// Bytes in a MiB.
pub const MIB: u64 = 1024 * 1024;

/// Page size assumed for touching; writing once per 4 KiB also covers any
/// larger page size.
const PAGE: usize = 4096;

/// Allocates `bytes` and writes to every page so the kernel must back it.
///
/// A zeroed allocation of this size is an untouched anonymous mapping; only
/// the writes make it count in RSS and in the memory cgroup.
pub fn touched(bytes: u64) -> Vec<u8> {
    let mut buf = vec![0u8; bytes as usize];
    touch(&mut buf);
    buf
}

/// Like [`touched`], but reports an allocation failure instead of aborting.
pub fn try_touched(bytes: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(bytes as usize).ok()?;
    buf.resize(bytes as usize, 0);
    touch(&mut buf);
    Some(buf)
}

fn touch(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(PAGE) {
        buf[i] = 1;
    }
    // Keep the writes from being optimised away as dead stores.
    std::hint::black_box(&buf);
}

/// How many pages of `buf` were touched (and hold the mark).
pub fn pages(buf: &[u8]) -> u64 {
    buf.iter().step_by(PAGE).filter(|b| **b == 1).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_every_page() {
        let b = touched(3 * PAGE as u64 + 10);
        assert_eq!(pages(&b), 4);
        assert_eq!(try_touched(0).unwrap().len(), 0);
    }
}
