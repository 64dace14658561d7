//! Boot information handed to the kernel: the E820 memory map, and either
//! the Linux "zero page" (`struct boot_params`) or the PVH `hvm_start_info`
//! with its memory map and module list.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use super::layout::{
    BIOS_END, CMDLINE_ADDR, EBDA_START, HIMEM_START, KERNEL_ALIGNMENT, PVH_INFO_ADDR,
    PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved (firmware, MMIO).
pub const E820_RESERVED: u32 = 2;

/// `boot_params.hdr.boot_flag`: the 0xAA55 signature.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `boot_params.hdr.header`: "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `boot_params.hdr.type_of_loader`: 0xff, "undefined" boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `hvm_start_info.magic` ("xEn3" with the 0x80 bit set).
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// One range of the guest-physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// Where the initramfs was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical start (page-aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Failures writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// Guest RAM does not reach past the 1 MiB boundary.
    #[error("Guest RAM of {mem_size} bytes does not reach past 1 MiB")]
    RamTooSmall { mem_size: u64 },
    /// Writing the zero page failed.
    #[error("Failed to write the zero page at {ZERO_PAGE_ADDR:#x}")]
    WriteZeroPage {
        #[source]
        source: linux_loader::configurator::Error,
    },
    /// Writing the PVH start info, memory map or module list failed.
    #[error("Failed to write the PVH start info at {PVH_INFO_ADDR:#x}")]
    WritePvhInfo {
        #[source]
        source: linux_loader::configurator::Error,
    },
}

/// The guest memory map for `mem_size` bytes of RAM starting at 0:
/// low RAM up to the EBDA, the BIOS area reserved, RAM from 1 MiB up.
pub fn e820_map(mem_size: u64) -> Result<Vec<E820Entry>, BootParamsError> {
    if mem_size <= HIMEM_START {
        return Err(BootParamsError::RamTooSmall { mem_size });
    }
    Ok(vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: BIOS_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: mem_size - HIMEM_START,
            kind: E820_RAM,
        },
    ])
}

/// Builds the zero page for the Linux 64-bit boot protocol. `header` is the
/// bzImage setup header when there is one (its fields must be passed back).
pub fn linux_boot_params(
    header: Option<setup_header>,
    cmdline_size: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`].
pub fn write_linux_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    params: &boot_params,
) -> Result<(), BootParamsError> {
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|source| BootParamsError::WriteZeroPage { source })
}

// The PVH structures come from linux-loader without `ByteValued`; these
// wrappers add it so they can be copied into guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);

// SAFETY: hvm_start_info is a repr(C) struct of plain integers with no
// implicit padding holes that matter for reads; any byte pattern is valid.
unsafe impl ByteValued for StartInfo {}
// SAFETY: as above, a repr(C) struct of integers.
unsafe impl ByteValued for MemmapEntry {}
// SAFETY: as above, a repr(C) struct of integers.
unsafe impl ByteValued for ModlistEntry {}

/// Builds and writes the PVH start info, its memory map at
/// [`PVH_MEMMAP_ADDR`] and, with an initrd, a one-entry module list.
pub fn write_pvh_boot_info<M: GuestMemoryBackend>(
    mem: &M,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> Result<hvm_start_info, BootParamsError> {
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<MemmapEntry> = e820
        .iter()
        .map(|e| {
            MemmapEntry(hvm_memmap_table_entry {
                addr: e.addr,
                size: e.size,
                type_: e.kind,
                reserved: 0,
            })
        })
        .collect();
    let modules: Vec<ModlistEntry> = initrd
        .map(|rd| {
            vec![ModlistEntry(hvm_modlist_entry {
                paddr: rd.addr,
                size: rd.size,
                ..Default::default()
            })]
        })
        .unwrap_or_default();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&StartInfo(info), GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)
        .map_err(|source| BootParamsError::WritePvhInfo { source })?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    #[test]
    fn e820_has_low_ram_reserved_bios_and_high_ram() {
        let map = e820_map(128 * MIB).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0xe0000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert!(ram < 128 * MIB);
    }

    #[test]
    fn e820_refuses_ram_below_one_mib() {
        assert!(matches!(
            e820_map(MIB),
            Err(BootParamsError::RamTooSmall { .. })
        ));
    }

    #[test]
    fn zero_page_carries_magic_cmdline_initrd_and_e820() {
        let e820 = e820_map(64 * MIB).unwrap();
        let rd = InitrdPlacement {
            addr: 0x3f0_0000,
            size: 0x1234,
        };
        let p = linux_boot_params(None, 57, Some(rd), &e820);
        let mem =
            crate::vstate::memory::create_guest_memory(0x10_0000, Default::default()).unwrap();
        write_linux_boot_params(&mem, &p).unwrap();
        let back: boot_params = mem.read_obj(GuestAddress(0x7000)).unwrap();
        assert_eq!({ back.hdr.boot_flag }, 0xaa55);
        assert_eq!({ back.hdr.header }, 0x5372_6448);
        assert_eq!(back.hdr.type_of_loader, 0xff);
        assert_eq!({ back.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ back.hdr.cmdline_size }, 57);
        assert_eq!({ back.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ back.hdr.ramdisk_image }, 0x3f0_0000);
        assert_eq!({ back.hdr.ramdisk_size }, 0x1234);
        assert_eq!(back.e820_entries, 3);
        let hi = back.e820_table[2];
        assert_eq!(
            ({ hi.addr }, { hi.size }, { hi.r#type }),
            (0x10_0000, 63 * MIB, 1)
        );
    }

    #[test]
    fn bzimage_setup_header_is_kept() {
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let p = linux_boot_params(Some(hdr), 1, None, &e820_map(64 * MIB).unwrap());
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn pvh_start_info_points_at_memmap_cmdline_and_module() {
        let mem =
            crate::vstate::memory::create_guest_memory(0x10_0000, Default::default()).unwrap();
        let e820 = e820_map(64 * MIB).unwrap();
        let rd = InitrdPlacement {
            addr: 0x3f0_0000,
            size: 0x4000,
        };
        write_pvh_boot_info(&mem, Some(rd), &e820).unwrap();
        let info: StartInfo = mem.read_obj(GuestAddress(0x6000)).unwrap();
        assert_eq!(info.0.magic, PVH_MAGIC);
        assert_eq!(info.0.version, 1);
        assert_eq!(info.0.cmdline_paddr, 0x20000);
        assert_eq!(info.0.memmap_paddr, 0x7000);
        assert_eq!(info.0.memmap_entries, 3);
        assert_eq!(info.0.nr_modules, 1);
        assert_eq!(info.0.modlist_paddr, 0x6040);
        let m: ModlistEntry = mem.read_obj(GuestAddress(0x6040)).unwrap();
        assert_eq!((m.0.paddr, m.0.size), (0x3f0_0000, 0x4000));
        let last: MemmapEntry = mem.read_obj(GuestAddress(0x7000 + 2 * 24)).unwrap();
        assert_eq!((last.0.addr, last.0.type_), (0x10_0000, E820_RAM));
    }
}
