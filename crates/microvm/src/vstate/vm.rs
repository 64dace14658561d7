//! The VM file descriptor: VM-wide state set up before any vCPU exists.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use super::memory::GuestMemoryMmap;
use crate::arch::layout::KVM_TSS_ADDR;

/// Failures creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM.
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR.
    #[error("KVM_SET_TSS_ADDR({KVM_TSS_ADDR:#x}) failed")]
    SetTssAddr(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP.
    #[error("KVM_CREATE_IRQCHIP failed")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2.
    #[error("KVM_CREATE_PIT2 failed")]
    CreatePit(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {guest_addr:#x} ({size} bytes) failed")]
    SetMemoryRegion {
        slot: u32,
        guest_addr: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_X86_SET_MSR_FILTER.
    #[error("KVM_X86_SET_MSR_FILTER (hiding the perf counters) failed")]
    MsrFilter(#[source] kvm_ioctls::Error),
    /// KVM_IRQFD.
    #[error("KVM_IRQFD for GSI {gsi} failed")]
    RegisterIrqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// eventfd(2).
    #[error("Failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Creates a bare VM (no irqchip): enough for real-mode payloads.
pub fn create_vm(kvm: &KvmContext) -> Result<VmFd, VmError> {
    kvm.kvm().create_vm().map_err(VmError::Create)
}

/// VM-wide x86 setup, in the order KVM requires (all before vCPUs):
/// TSS address, in-kernel IOAPIC/PIC/LAPIC, PIT with a dummy speaker port so
/// that port 0x61 does not exit to userspace.
pub fn setup_irqchip_and_pit(vm: &VmFd) -> Result<(), VmError> {
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(VmError::SetTssAddr)?;
    vm.create_irq_chip().map_err(VmError::CreateIrqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(VmError::CreatePit)
}

/// The perf-counter MSRs the guest must not reach, `(first, count)`: AMD's
/// legacy counters (PERF_CTL0-3 0xc0010000.., PERF_CTR0-3 0xc0010004..),
/// AMD's core counters (PERF_CTL/CTR 0-5, 0xc0010200..), Intel's P6
/// counters (PERFCTR0-1 0xc1, EVNTSEL0-1 0x186).
pub const PMU_MSRS: [(u32, u32); 4] = [(0xc001_0000, 8), (0xc001_0200, 12), (0xc1, 2), (0x186, 2)];

/// The guest has no PMU: CPUID hides perfmon (see `arch::x86_64::cpuid`),
/// and this makes every access to the perf-counter MSRs fault (#GP), as on
/// a CPU without them. Why: a Linux guest on AMD probes the legacy counters
/// whatever CPUID says (they have no CPUID bit); with no vPMU in the host,
/// KVM ignores the write but logs `Unhandled WRMSR(0xc0010007)` in the
/// host's kernel log for every boot. A filtered MSR faults without a log
/// line, and the guest's perf init falls back to software events, as it
/// did before. Skipped where KVM lacks MSR filtering.
pub fn hide_pmu_msrs(vm: &VmFd) -> Result<(), VmError> {
    if !vm.check_extension(Cap::X86MsrFilter) {
        return Ok(());
    }
    // One bit per MSR, 0 = denied; two bytes cover the longest range.
    let deny = [0u8; 2];
    let ranges: Vec<MsrFilterRange<'_>> = PMU_MSRS
        .iter()
        .map(|&(base, msr_count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count,
            bitmap: &deny,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(VmError::MsrFilter)
}

/// Registers every guest RAM region as a KVM memory slot.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let guest_addr = region.start_addr().0;
        let size = region.len();
        let r = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range [as_ptr, as_ptr + len) is a live mapping
        // owned by `mem`, and the caller keeps `mem` alive for as long as
        // the VM (and so the slot) exists; the builder drops the VM first.
        unsafe { vm.set_user_memory_region(r) }.map_err(|source| VmError::SetMemoryRegion {
            slot,
            guest_addr,
            size,
            source,
        })?;
    }
    Ok(())
}

/// An eventfd that raises `gsi` on the in-kernel irqchip when written.
pub fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, VmError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|source| VmError::RegisterIrqfd { gsi, source })?;
    Ok(fd)
}
