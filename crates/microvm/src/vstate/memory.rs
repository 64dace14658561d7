//! Guest RAM: one anonymous, private, demand-paged mapping at guest-physical
//! 0, placed in the monitor's address space at a host address aligned to
//! the largest page that may back it.
//!
//! Why the alignment matters: KVM maps a guest page with a 2 MiB (or 1 GiB)
//! nested-paging entry only where the host page behind it is that large,
//! and a host huge page needs a 2 MiB-aligned host address. Guest RAM
//! starts at guest-physical 0, so a host start that is 2 MiB-aligned makes
//! every 2 MiB guest frame line up with a 2 MiB host frame. An unaligned
//! start (what `GuestMemoryMmap::from_ranges` gives) left KVM with 4 KiB
//! mappings only: 5,842 nested-paging faults and no huge mapping against
//! 811 and 14 for Firecracker in one emulated-host boot (issue 16).
//!
//! The mapping is carved out of a larger `PROT_NONE` reservation, and the
//! reservation stays: guard pages on both sides, so that a monitor bug that
//! runs past guest RAM faults instead of touching the heap. Everything is
//! unmapped once the last clone of the memory is dropped.
//!
//! Guest RAM stays below the 32-bit MMIO gap (3 GiB), so one region is enough.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestMemoryRegionBytes,
    GuestRegionCollection, GuestUsize, MemoryRegionAddress,
};

/// Ordinary page size.
pub const PAGE_4K: u64 = 4 << 10;
/// x86 large page size (one PMD entry).
pub const PAGE_2M: u64 = 2 << 20;
/// x86 huge page size (one PUD entry).
pub const PAGE_1G: u64 = 1 << 30;
/// Smallest guard on either side of guest RAM.
const GUARD: u64 = 64 << 10;

/// The guest memory type used throughout the crate: regions that own their
/// mapping (cheap to clone: clones share it).
pub type GuestMemoryMmap = GuestRegionCollection<GuestRamRegion>;

/// How guest RAM is backed by host pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HugePages {
    /// Ordinary anonymous memory, 2 MiB-aligned; transparent huge pages as
    /// the host's THP setting decides (`always`: used; `madvise`, `never`:
    /// not). Firecracker's default.
    #[default]
    Host,
    /// As `host`, plus `madvise(MADV_HUGEPAGE)`: transparent huge pages also
    /// when the host's THP setting is `madvise` (QEMU's default).
    Thp,
    /// Explicit 2 MiB hugetlb pages from the host's pool (RAM must be a
    /// multiple of 2 MiB; the pool must hold enough free pages).
    #[serde(rename = "hugetlb_2m")]
    Hugetlb2m,
    /// Explicit 1 GiB hugetlb pages, 1 GiB-aligned (RAM must be a multiple
    /// of 1 GiB; the pool must hold enough free pages).
    #[serde(rename = "hugetlb_1g")]
    Hugetlb1g,
}

impl HugePages {
    /// The page size guest RAM must be a multiple of.
    pub fn granule(self) -> u64 {
        match self {
            HugePages::Host | HugePages::Thp => PAGE_4K,
            HugePages::Hugetlb2m => PAGE_2M,
            HugePages::Hugetlb1g => PAGE_1G,
        }
    }

    /// Host alignment of guest RAM: the largest page that may back it.
    pub fn alignment(self) -> u64 {
        match self {
            HugePages::Host | HugePages::Thp | HugePages::Hugetlb2m => PAGE_2M,
            HugePages::Hugetlb1g => PAGE_1G,
        }
    }

    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            HugePages::Host => "host",
            HugePages::Thp => "thp",
            HugePages::Hugetlb2m => "hugetlb_2m",
            HugePages::Hugetlb1g => "hugetlb_1g",
        }
    }

    fn mmap_flags(self) -> libc::c_int {
        let base = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
        match self {
            // Demand-paged: no swap or overcommit reservation for pages the
            // guest never touches.
            HugePages::Host | HugePages::Thp => base | libc::MAP_NORESERVE,
            // Without MAP_NORESERVE the pool pages are reserved at mmap
            // time, so an empty pool fails here and not with SIGBUS later.
            HugePages::Hugetlb2m => base | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            HugePages::Hugetlb1g => base | libc::MAP_HUGETLB | libc::MAP_HUGE_1GB,
        }
    }
}

/// Failures creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Zero bytes, or more than this address space can hold.
    #[error("Guest RAM of {size} bytes cannot be mapped")]
    BadSize { size: u64 },
    /// Reserving the aligned address range failed.
    #[error("Failed to reserve {size} bytes of address space for guest RAM")]
    Reserve {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    /// Mapping guest RAM into the reservation failed.
    #[error("Failed to map {size} bytes of guest RAM ({})", backing.name())]
    Map {
        size: u64,
        backing: HugePages,
        #[source]
        source: std::io::Error,
    },
    /// The hugetlb pool cannot back guest RAM.
    #[error("The host's hugetlb pool has too few free {} pages for {size} bytes of guest RAM: see HugePages_Free in /proc/meminfo, or drop the hugetlb option", if *backing == HugePages::Hugetlb1g { "1 GiB" } else { "2 MiB" })]
    HugetlbPool { size: u64, backing: HugePages },
    /// `madvise(MADV_HUGEPAGE)` failed.
    #[error("madvise(MADV_HUGEPAGE) on guest RAM failed")]
    Madvise(#[source] std::io::Error),
    /// vm-memory refused the mapping.
    #[error("Failed to describe guest RAM to vm-memory: {0}")]
    Region(String),
}

/// An address range this process mapped, unmapped on drop.
#[derive(Debug)]
struct OwnedMapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is process-wide memory, not tied to a thread; only
// its address is stored here and it is only unmapped once, on drop.
unsafe impl Send for OwnedMapping {}
// SAFETY: as above; `&OwnedMapping` gives no access to the memory.
unsafe impl Sync for OwnedMapping {}

impl Drop for OwnedMapping {
    fn drop(&mut self) {
        // SAFETY: [addr, addr + len) is the reservation this value created
        // and owns; the region that borrowed part of it (the field before
        // this one in `GuestRamRegion`) is already gone, and nothing else
        // holds pointers into it.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// One guest RAM region that owns its mapping.
#[derive(Debug)]
pub struct GuestRamRegion {
    // Field order is drop order: the vm-memory view goes before the mapping.
    inner: vm_memory::GuestRegionMmap<()>,
    backing: HugePages,
    _mapping: OwnedMapping,
}

impl GuestRamRegion {
    /// Host address of the region's first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.as_ptr()
    }

    /// How the region is backed.
    pub fn backing(&self) -> HugePages {
        self.backing
    }
}

impl GuestMemoryRegion for GuestRamRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.inner.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.inner.start_addr()
    }

    fn bitmap(&self) -> BS<'_, Self::B> {
        self.inner.bitmap()
    }

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        self.inner.get_host_address(addr)
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<vm_memory::VolatileSlice<'_, BS<'_, ()>>> {
        self.inner.get_slice(offset, count)
    }

    fn is_hugetlbfs(&self) -> Option<bool> {
        Some(matches!(
            self.backing,
            HugePages::Hugetlb2m | HugePages::Hugetlb1g
        ))
    }
}

impl GuestMemoryRegionBytes for GuestRamRegion {}

/// Maps `size` bytes of guest RAM at guest-physical 0, backed as `backing`
/// says, at a host address aligned to [`HugePages::alignment`]. Pages are
/// only backed when the guest (or the loader) touches them, except hugetlb
/// pages, which are reserved from the pool now.
pub fn create_guest_memory(size: u64, backing: HugePages) -> Result<GuestMemoryMmap, MemoryError> {
    let align = backing.alignment();
    if size == 0 || size % backing.granule() != 0 {
        return Err(MemoryError::BadSize { size });
    }
    let reserve_len = size
        .checked_add(align + 2 * GUARD)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(MemoryError::BadSize { size })?;
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel
    // picks; it aliases nothing and is owned by `reservation` from here on.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(MemoryError::Reserve {
            size,
            source: std::io::Error::last_os_error(),
        });
    }
    let reservation = OwnedMapping {
        addr: base,
        len: reserve_len,
    };
    let aligned = (base as u64 + GUARD).next_multiple_of(align);
    // SAFETY: [aligned, aligned + size) lies inside the reservation (at
    // least GUARD bytes from either end, see the reservation length), which
    // this function owns and nothing else uses, so MAP_FIXED replaces only
    // our own PROT_NONE pages.
    let ram = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            backing.mmap_flags(),
            -1,
            0,
        )
    };
    if ram == libc::MAP_FAILED {
        let source = std::io::Error::last_os_error();
        let hugetlb = matches!(backing, HugePages::Hugetlb2m | HugePages::Hugetlb1g);
        return Err(if hugetlb && source.raw_os_error() == Some(libc::ENOMEM) {
            MemoryError::HugetlbPool { size, backing }
        } else {
            MemoryError::Map {
                size,
                backing,
                source,
            }
        });
    }
    if backing == HugePages::Thp {
        // SAFETY: advice on our own mapping, which stays mapped.
        if unsafe { libc::madvise(ram, size as usize, libc::MADV_HUGEPAGE) } != 0 {
            return Err(MemoryError::Madvise(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: [ram, ram + size) is a live read-write mapping that
    // `reservation` keeps until the region (and every clone of the memory)
    // is dropped; vm-memory does not own or unmap it.
    let region = unsafe {
        MmapRegionBuilder::<()>::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(backing.mmap_flags())
            .with_raw_mmap_pointer(ram.cast())
    }
    .build()
    .map_err(|e| MemoryError::Region(e.to_string()))?;
    let inner = vm_memory::GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| MemoryError::Region("guest range overflows".into()))?;
    GuestMemoryMmap::from_arc_regions(vec![Arc::new(GuestRamRegion {
        inner,
        backing,
        _mapping: reservation,
    })])
    .map_err(|e| MemoryError::Region(e.to_string()))
}

/// Host virtual address ranges `(start, len)` of every guest RAM region:
/// how the memory accounting recognises guest mappings in smaps.
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.as_ptr() as u64, r.len())).collect()
}

/// How guest RAM is backed (of its first region; there is one).
pub fn backing(mem: &GuestMemoryMmap) -> HugePages {
    mem.iter().next().map_or(HugePages::Host, |r| r.backing())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn one_region_of_the_requested_size_2mib_aligned() {
        let m = create_guest_memory(32 << 20, HugePages::Host).unwrap();
        let r = host_ranges(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, 32 << 20);
        assert_eq!(r[0].0 % PAGE_2M, 0, "host start {:#x}", r[0].0);
        m.write_slice(b"end", GuestAddress((32 << 20) - 3)).unwrap();
        assert!(m.write_slice(b"x", GuestAddress(32 << 20)).is_err());
    }

    #[test]
    fn thp_advice_is_accepted_and_sizes_are_checked() {
        let m = create_guest_memory(4 << 20, HugePages::Thp).unwrap();
        assert_eq!(backing(&m), HugePages::Thp);
        assert!(matches!(
            create_guest_memory(0, HugePages::Host),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            create_guest_memory(3 << 20, HugePages::Hugetlb2m),
            Err(MemoryError::BadSize { .. })
        ));
    }

    #[test]
    fn guest_ram_has_guard_pages_around_it() {
        let m = create_guest_memory(2 << 20, HugePages::Host).unwrap();
        let (start, len) = host_ranges(&m)[0];
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let prot_of = |addr: u64| {
            maps.lines().find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                );
                (a <= addr && addr < b).then(|| rest[..4].to_string())
            })
        };
        assert_eq!(prot_of(start).as_deref(), Some("rw-p"));
        assert_eq!(prot_of(start - 1).as_deref(), Some("---p"), "guard below");
        assert_eq!(prot_of(start + len).as_deref(), Some("---p"), "guard above");
    }
}
