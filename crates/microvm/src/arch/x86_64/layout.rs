//! The guest-physical memory map of an x86_64 microVM: every fixed address
//! the boot path writes to, in one place.
//!
//! The values follow the conventional PC layout that Linux expects from a
//! direct-kernel-boot VMM (the same map Firecracker and rust-vmm's
//! vmm-reference use), so that a stock `vmlinux` finds its boot data where it
//! looks for it.

/// GDT: four 8-byte entries (null, code, data, TSS) at a low, otherwise
/// unused address.
pub const GDT_ADDR: u64 = 0x500;
/// IDT: an empty table (limit 7) right after the GDT; Linux installs its own.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` (pointed to by RBX at the PVH entry).
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initramfs as module 0).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map; shares the page with the zero page because the two boot
/// protocols are mutually exclusive.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Linux "zero page" (`struct boot_params`), pointed to by RSI at the 64-bit entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU (RSP and RBP).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, one PD of 512 x 2 MiB pages (1 GiB).
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_ADDR: u64 = 0xa000;
/// Page directory.
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line we write, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area: the end of low conventional RAM.
/// The MP table lives here, where Linux scans for `_MP_`.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer structure and the configuration table after it.
pub const MPTABLE_START: u64 = EBDA_START;
/// End of the reserved BIOS area (EBDA, VGA hole, option ROMs) below 1 MiB.
pub const BIOS_END: u64 = 0xe0000;
/// Where high memory starts and where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; guest RAM must end below it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// First virtio-mmio device slot (Firecracker's value; the first page of the
/// gap is kept for a boot timer).
pub const VIRTIO_MMIO_BASE: u64 = 0xc000_1000;
/// Size of one virtio-mmio device window (`4K` on the command line).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy IRQ handed to virtio-mmio devices (0-4 are PIT, keyboard,
/// cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IOAPIC pin (24 pins on the in-kernel IOAPIC).
pub const IRQ_MAX: u32 = 23;
/// IOAPIC MMIO base, as the in-kernel irqchip emulates it.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for the real-mode TSS on Intel; placed just below
/// the 4 GiB boundary, inside the MMIO gap, where no RAM is.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Kernel `boot_params.hdr.kernel_alignment` when the image has no setup header.
pub const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Largest guest RAM we accept: everything must fit below the MMIO gap.
pub const MAX_GUEST_RAM: u64 = MMIO_GAP_START;
/// Smallest guest RAM we accept: a 6.x kernel plus an initramfs does not
/// boot reliably in less.
pub const MIN_GUEST_RAM: u64 = 32 << 20;
/// Page size used to align the initramfs.
pub const PAGE_SIZE: u64 = 0x1000;
