//! vCPUs: boot-state configuration and the run loop (one thread each).
//!
//! The loop turns each `KVM_RUN` result into an [`Exit`] and hands it to the
//! pure [`handle_exit`]; only that conversion and the ioctls live here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Instant;

use kvm_bindings::{kvm_lapic_state, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::memory::GuestMemoryMmap;
use crate::arch::{cpuid, msr, regs};
use crate::devices::bus::DeviceBus;
use crate::exits::{handle_exit, Action, Exit, ExitError, StopReason};

/// LAPIC register offsets of LINT0 and LINT1 in the LVT.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes (bits 8-10).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Failures creating, configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU.
    #[error("KVM_CREATE_VCPU({index}) failed")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_CPUID2.
    #[error("KVM_SET_CPUID2 on vCPU {index} failed")]
    SetCpuid {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list.
    #[error("Failed to build the boot MSR list for vCPU {index}")]
    BuildMsrs { index: u8 },
    /// KVM_SET_MSRS (also when KVM accepted fewer MSRs than given).
    #[error("KVM_SET_MSRS on vCPU {index} set {set} of {wanted} MSRs")]
    SetMsrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    /// KVM_SET_MSRS ioctl failure.
    #[error("KVM_SET_MSRS on vCPU {index} failed")]
    SetMsrsIoctl {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_REGS.
    #[error("KVM_SET_REGS on vCPU {index} failed")]
    SetRegs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_FPU.
    #[error("KVM_SET_FPU on vCPU {index} failed")]
    SetFpu {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_SREGS.
    #[error("KVM_GET_SREGS on vCPU {index} failed")]
    GetSregs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Writing GDT/page tables.
    #[error("Failed to set up segments and page tables for vCPU {index}")]
    BootTables {
        index: u8,
        #[source]
        source: regs::RegsError,
    },
    /// KVM_SET_SREGS (PVM refuses long-mode state here).
    #[error("KVM_SET_SREGS on vCPU {index} failed")]
    SetSregs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_LAPIC / KVM_SET_LAPIC.
    #[error("Failed to program LINT0/LINT1 of vCPU {index}")]
    Lapic {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Registering the kick signal handler.
    #[error("Failed to install the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
    /// KVM_RUN failed outright.
    #[error("KVM_RUN on vCPU {index} failed")]
    Run {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Confining the vCPU thread failed (it never entered the guest).
    #[error("Failed to confine the vCPU {index} thread")]
    Confine {
        index: u8,
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// The guest exited in a way that ends the VM with an error.
    #[error(transparent)]
    Exit(#[from] ExitError),
}

/// Creates vCPU `index`.
pub fn create_vcpu(vm: &VmFd, index: u8) -> Result<VcpuFd, VcpuError> {
    vm.create_vcpu(u64::from(index))
        .map_err(|source| VcpuError::Create { index, source })
}

/// Per-vCPU CPUID: KVM's supported set, normalised for `index` of `count`.
pub fn configure_cpuid(
    vcpu: &VcpuFd,
    supported: &CpuId,
    index: u8,
    count: u8,
) -> Result<(), VcpuError> {
    let mut cpuid = supported.clone();
    cpuid::normalize(cpuid.as_mut_slice(), index, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|source| VcpuError::SetCpuid { index, source })
}

/// The boot MSRs.
pub fn configure_msrs(vcpu: &VcpuFd, index: u8) -> Result<(), VcpuError> {
    let entries = msr::boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::BuildMsrs { index })?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|source| VcpuError::SetMsrsIoctl { index, source })?;
    if set != entries.len() {
        return Err(VcpuError::SetMsrs {
            index,
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// General registers and FPU of the boot vCPU at the kernel entry.
pub fn configure_regs_and_fpu(
    vcpu: &VcpuFd,
    index: u8,
    entry: &regs::EntryPoint,
) -> Result<(), VcpuError> {
    vcpu.set_regs(&regs::boot_regs(entry))
        .map_err(|source| VcpuError::SetRegs { index, source })?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(|source| VcpuError::SetFpu { index, source })
}

/// Segment and control registers (with the GDT and page tables they need).
pub fn configure_sregs(
    vcpu: &VcpuFd,
    index: u8,
    mem: &GuestMemoryMmap,
    protocol: regs::BootProtocol,
) -> Result<(), VcpuError> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|source| VcpuError::GetSregs { index, source })?;
    let sregs = regs::setup_sregs(mem, protocol, sregs)
        .map_err(|source| VcpuError::BootTables { index, source })?;
    vcpu.set_sregs(&sregs)
        .map_err(|source| VcpuError::SetSregs { index, source })
}

fn lvt_write(state: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = state.regs[offset + i] as u8;
    }
    let v = u32::from_le_bytes(raw);
    let v = (v & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// LINT0 = ExtINT (the PIC's output), LINT1 = NMI, as on a PC.
pub fn configure_lapic(vcpu: &VcpuFd, index: u8) -> Result<(), VcpuError> {
    let mut state = vcpu
        .get_lapic()
        .map_err(|source| VcpuError::Lapic { index, source })?;
    lvt_write(&mut state, APIC_LVT0, APIC_MODE_EXTINT);
    lvt_write(&mut state, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&state)
        .map_err(|source| VcpuError::Lapic { index, source })
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (no-op) kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result =
            register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::SignalHandler);
    });
    result
}

/// Runs `vcpu` until the guest stops it, an error occurs, or `stop` is set
/// (checked after every exit; the caller kicks with [`kick_signal`]).
/// `first_run` receives the time of the first `KVM_RUN`.
pub fn run_loop(
    vcpu: &mut VcpuFd,
    index: u8,
    bus: &DeviceBus,
    stop: &AtomicBool,
    first_run: Option<&OnceLock<Instant>>,
) -> Result<StopReason, VcpuError> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(StopReason::HostRequest);
        }
        if let Some(t) = first_run {
            t.get_or_init(Instant::now);
        }
        let mut internal_error = false;
        let action = match vcpu.run() {
            Ok(exit) => {
                let exit = match exit {
                    VcpuExit::IoIn(port, data) => Exit::IoIn { port, data },
                    VcpuExit::IoOut(port, data) => Exit::IoOut { port, data },
                    VcpuExit::MmioRead(addr, data) => Exit::MmioRead { addr, data },
                    VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite { addr, data },
                    VcpuExit::Hlt => Exit::Hlt,
                    VcpuExit::Shutdown => Exit::Shutdown,
                    VcpuExit::Intr => Exit::Interrupted,
                    VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent { kind },
                    VcpuExit::FailEntry(reason, cpu) => Exit::FailEntry { reason, cpu },
                    VcpuExit::InternalError => {
                        internal_error = true;
                        Exit::Interrupted
                    }
                    other => Exit::Other(format!("{other:?}")),
                };
                if internal_error {
                    Action::Continue
                } else {
                    handle_exit(exit, bus, index)?
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                handle_exit(Exit::Interrupted, bus, index)?
            }
            Err(source) => return Err(VcpuError::Run { index, source }),
        };
        if internal_error {
            let (suberror, data) = internal_error_details(vcpu);
            handle_exit(Exit::InternalError { suberror, data }, bus, index)?;
        }
        if let Action::Stop(reason) = action {
            return Ok(reason);
        }
    }
}

/// Suberror and data words of the last `KVM_EXIT_INTERNAL_ERROR`.
fn internal_error_details(vcpu: &mut VcpuFd) -> (u32, Vec<u64>) {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit reason was KVM_EXIT_INTERNAL_ERROR, so the
    // `internal` member of the kvm_run union is the one KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    (internal.suberror, internal.data[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_write_sets_delivery_mode_and_keeps_other_bits() {
        let mut s = kvm_lapic_state::default();
        s.regs[APIC_LVT0] = 0x30; // vector
        s.regs[APIC_LVT0 + 2] = 0x01; // mask bit 16
        lvt_write(&mut s, APIC_LVT0, APIC_MODE_EXTINT);
        lvt_write(&mut s, APIC_LVT1, APIC_MODE_NMI);
        let get = |o: usize| {
            u32::from_le_bytes([
                s.regs[o] as u8,
                s.regs[o + 1] as u8,
                s.regs[o + 2] as u8,
                s.regs[o + 3] as u8,
            ])
        };
        assert_eq!(get(APIC_LVT0), 0x0001_0730);
        assert_eq!(get(APIC_LVT1), 0x0000_0400);
    }
}
