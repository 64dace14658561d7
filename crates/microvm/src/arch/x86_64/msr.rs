//! Model-specific registers set before the first instruction.

use kvm_bindings::kvm_msr_entry;

/// SYSENTER code segment.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// SYSENTER stack pointer.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// SYSENTER instruction pointer.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// SYSCALL target segments.
pub const MSR_STAR: u32 = 0xc000_0081;
/// SYSCALL 64-bit target.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// SYSCALL compat-mode target.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL RFLAGS mask.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// SWAPGS shadow.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Time-stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// Miscellaneous enables.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MISC_ENABLE` bit 0: fast string operations (REP MOVS/STOS).
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRR default type.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `MTRRdefType`: MTRRs enabled (bit 11), default memory type write-back (6).
pub const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The boot MSR list: syscall/sysenter state and TSC zeroed, fast strings on,
/// MTRRs on with write-back as the default memory type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_fast_strings_and_writeback_mtrrs() {
        let m = boot_msr_entries();
        let get = |i| m.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(m.len(), 11);
    }
}
