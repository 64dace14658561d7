//! Initial register state of a vCPU: general registers, FPU, and the
//! segment/control registers together with the GDT, IDT and identity page
//! tables they point at.
//!
//! Everything here is pure (values and guest-memory writes); the ioctls that
//! load them live in `vstate::vcpu`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{self, segment_from_gdt};
use super::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDE_ADDR, PDPTE_ADDR, PML4_ADDR, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 0x1;
/// CR0: extension type (387 present); PVH requires it set.
pub const X86_CR0_ET: u64 = 0x10;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 0x8000_0000;
/// CR4: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 0x20;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 0x100;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always reads as one.
pub const RFLAGS_RESERVED: u64 = 0x2;

/// Page-table entry bits: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry bits: present, writable, 2 MiB page (PS).
const PDE_2M_PAGE: u64 = 0x83;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, RBX = `hvm_start_info`.
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// Guest-physical address of the first instruction.
    pub addr: GuestAddress,
    /// The protocol the kernel is entered with.
    pub protocol: BootProtocol,
}

/// Failures writing the boot tables into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The GDT could not be written.
    #[error("Failed to write the GDT at {addr:#x}")]
    WriteGdt {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The IDT could not be written.
    #[error("Failed to write the IDT at {addr:#x}")]
    WriteIdt {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A page-table page could not be written.
    #[error("Failed to write the page table at {addr:#x}")]
    WritePageTables {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// General registers of the boot vCPU at the kernel entry.
pub fn boot_regs(entry: &EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.addr.raw_value(),
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_ADDR,
    }
    regs
}

/// FPU state at reset: x87 control word with all exceptions masked and the
/// default MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The 4 KiB of identity page tables that map guest-physical 0..1 GiB with
/// 2 MiB pages: PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = i * 2 MiB.
pub fn identity_page_tables() -> ([u64; 1], [u64; 1], [u64; 512]) {
    let pml4 = [PDPTE_ADDR | PTE_PRESENT_RW];
    let pdpt = [PDE_ADDR | PTE_PRESENT_RW];
    let mut pd = [0u64; 512];
    for (i, e) in pd.iter_mut().enumerate() {
        *e = ((i as u64) << 21) | PDE_2M_PAGE;
    }
    (pml4, pdpt, pd)
}

fn write_u64s<M: GuestMemoryBackend>(
    mem: &M,
    addr: u64,
    values: &[u64],
) -> Result<(), vm_memory::GuestMemoryError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
}

/// Writes the GDT (and, for the 64-bit protocol, the page tables) into guest
/// memory and returns the special registers that point at them.
pub fn setup_sregs<M: GuestMemoryBackend>(
    mem: &M,
    protocol: BootProtocol,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let table = match protocol {
        BootProtocol::Linux64 => gdt::long_mode_gdt(),
        BootProtocol::Pvh => gdt::pvh_gdt(),
    };
    write_u64s(mem, GDT_ADDR, &table).map_err(|source| RegsError::WriteGdt {
        addr: GDT_ADDR,
        source,
    })?;
    write_u64s(mem, IDT_ADDR, &[0]).map_err(|source| RegsError::WriteIdt {
        addr: IDT_ADDR,
        source,
    })?;

    let code = segment_from_gdt(table[usize::from(gdt::CODE_INDEX)], gdt::CODE_INDEX);
    let data = segment_from_gdt(table[usize::from(gdt::DATA_INDEX)], gdt::DATA_INDEX);
    let tss = segment_from_gdt(table[usize::from(gdt::TSS_INDEX)], gdt::TSS_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Linux64 => {
            let (pml4, pdpt, pd) = identity_page_tables();
            for (addr, vals) in [
                (PML4_ADDR, &pml4[..]),
                (PDPTE_ADDR, &pdpt[..]),
                (PDE_ADDR, &pd[..]),
            ] {
                write_u64s(mem, addr, vals)
                    .map_err(|source| RegsError::WritePageTables { addr, source })?;
            }
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
        }
    }
    Ok(sregs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::GuestMemoryMmap;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        crate::vstate::memory::create_guest_memory(0x10_0000, Default::default()).unwrap()
    }

    #[test]
    fn linux_entry_points_rsi_at_zero_page_and_stack() {
        let r = boot_regs(&EntryPoint {
            addr: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
        });
        let expected = kvm_regs {
            rip: 0x100_0000,
            rsi: 0x7000,
            rsp: 0x8ff0,
            rbp: 0x8ff0,
            rflags: 2,
            ..Default::default()
        };
        assert_eq!(r, expected, "and every other register zero");
    }

    #[test]
    fn pvh_entry_points_rbx_at_start_info() {
        let r = boot_regs(&EntryPoint {
            addr: GuestAddress(0x1000),
            protocol: BootProtocol::Pvh,
        });
        let expected = kvm_regs {
            rip: 0x1000,
            rbx: 0x6000,
            rflags: 2,
            ..Default::default()
        };
        assert_eq!(r, expected, "and every other register zero");
    }

    #[test]
    fn page_tables_identity_map_first_gib_with_2m_pages() {
        let m = mem();
        let s = setup_sregs(&m, BootProtocol::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, 0x9000);
        let pml4: u64 = m.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpt: u64 = m.read_obj(GuestAddress(0xa000)).unwrap();
        assert_eq!(pdpt, 0xb003);
        for i in [0u64, 1, 255, 511] {
            let pde: u64 = m.read_obj(GuestAddress(0xb000 + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "PD entry {i}");
        }
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    }

    #[test]
    fn gdt_in_memory_matches_loaded_segments() {
        let m = mem();
        let s = setup_sregs(&m, BootProtocol::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.gdt.base, 0x500);
        assert_eq!(s.gdt.limit, 31);
        assert_eq!(s.idt.base, 0x520);
        assert_eq!(s.idt.limit, 7);
        for (i, seg) in [(1u64, s.cs), (2, s.ds), (3, s.tr)] {
            let e: u64 = m.read_obj(GuestAddress(0x500 + i * 8)).unwrap();
            assert_eq!(segment_from_gdt(e, i as u8), seg);
        }
        assert_eq!(s.cs.l, 1);
    }

    #[test]
    fn pvh_sregs_are_32_bit_protected_mode_without_paging() {
        let m = mem();
        let s = setup_sregs(&m, BootProtocol::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(s.cr4, 0);
        assert_eq!(s.efer, 0);
        assert_eq!(s.cs.db, 1);
        assert_eq!(s.cs.l, 0);
        let pml4: u64 = m.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0, "PVH must not install page tables");
    }

    #[test]
    fn fpu_has_reset_control_words() {
        let f = boot_fpu();
        assert_eq!(f.fcw, 0x37f);
        assert_eq!(f.mxcsr, 0x1f80);
    }
}
