//! Guest RAM: one anonymous, private, demand-paged mapping per region.
//!
//! Guest RAM stays below the 32-bit MMIO gap (3 GiB), so one region starting
//! at guest-physical 0 is enough and the memory map stays simple.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The guest memory type used throughout the crate.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Failures creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The anonymous mapping could not be created.
    #[error("Failed to map {size} bytes of guest RAM")]
    Map {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `size` bytes of guest RAM at guest-physical 0. Pages are only
/// backed when the guest (or the loader) touches them.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| MemoryError::Map { size, source })
}

/// Host virtual address ranges `(start, len)` of every guest RAM region:
/// how the memory accounting recognises guest mappings in smaps.
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter()
        .map(|r| {
            let host = r.as_ptr() as u64;
            (host, r.len())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_region_of_the_requested_size() {
        let m = create_guest_memory(32 << 20).unwrap();
        let r = host_ranges(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, 32 << 20);
        assert_ne!(r[0].0, 0);
    }
}
