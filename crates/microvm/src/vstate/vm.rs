//! The VM file descriptor: VM-wide state set up before any vCPU exists.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
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
