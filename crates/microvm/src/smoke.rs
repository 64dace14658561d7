//! The KVM smoke test: a few bytes of 16-bit real-mode code that print "OK"
//! on COM1, report status 42 on the marker port and halt. It exercises
//! `/dev/kvm`, guest memory, a vCPU, the run loop, exit handling and two
//! devices, and it runs even where a Linux guest cannot boot (PVM KVM).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::bus::DeviceBus;
use crate::devices::marker::{MarkerDevice, MarkerLog, MARKER_BASE, MARKER_LEN};
use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_LEN};
use crate::exits::StopReason;
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{self, VcpuError};
use crate::vstate::vm::{self, VmError};

/// Where the payload is loaded and entered (CS base 0, IP 0x1000).
pub const PAYLOAD_ADDR: u64 = 0x1000;
/// Guest RAM for the smoke VM.
pub const SMOKE_MEM: u64 = 0x10000;
/// Status the payload reports on port 0x3f1.
pub const SMOKE_STATUS: u8 = 42;

/// The payload.
pub const PAYLOAD: [u8; 17] = [
    0xba,
    0xf8,
    0x03, // mov dx, 0x3f8   (COM1 data)
    0xb0,
    b'O', //       mov al, 'O'
    0xee, //             out dx, al
    0xb0,
    b'K', //       mov al, 'K'
    0xee, //             out dx, al
    0xba,
    0xf1,
    0x03, // mov dx, 0x3f1   (marker: exit status)
    0xb0,
    SMOKE_STATUS, // mov al, 42
    0xee,         //             out dx, al
    0xf4,         //             hlt
    0xf4,         //             (never reached)
];

/// Failures of the smoke run.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// /dev/kvm.
    #[error("KVM is not usable")]
    Kvm(#[source] KvmError),
    /// VM creation or memory registration.
    #[error("Failed to create the smoke VM")]
    Vm(#[source] VmError),
    /// Guest memory.
    #[error("Failed to map smoke guest memory")]
    Memory(#[source] MemoryError),
    /// Writing the payload.
    #[error("Failed to write the payload at {PAYLOAD_ADDR:#x}")]
    WritePayload(#[source] vm_memory::GuestMemoryError),
    /// vCPU setup or run.
    #[error("The smoke vCPU failed")]
    Vcpu(#[source] VcpuError),
    /// Registering a device.
    #[error("Failed to register a smoke device")]
    Bus(#[source] crate::devices::bus::BusError),
}

/// What the payload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SmokeReport {
    /// Bytes the guest wrote to COM1.
    pub serial: String,
    /// Status byte from the marker port.
    pub exit_status: Option<u8>,
    /// Why the vCPU stopped (HLT without an irqchip).
    pub stop_reason: StopReason,
    /// Host time from KVM_CREATE_VM to the stop, in microseconds.
    pub elapsed_us: u64,
}

/// A `Write` into a shared buffer.
#[derive(Debug, Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);
impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// No interrupt line: the smoke VM has no irqchip.
#[derive(Debug, Clone, Copy)]
struct NoIrq;
impl vm_superio::Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Runs the payload in a fresh VM and reports what it did.
pub fn run_smoke() -> Result<SmokeReport, SmokeError> {
    let kvm = KvmContext::open().map_err(SmokeError::Kvm)?;
    let t0 = Instant::now();
    let vm = vm::create_vm(&kvm).map_err(SmokeError::Vm)?;
    let mem =
        memory::create_guest_memory(SMOKE_MEM, Default::default()).map_err(SmokeError::Memory)?;
    vm::register_memory(&vm, &mem).map_err(SmokeError::Vm)?;
    mem.write_slice(&PAYLOAD, GuestAddress(PAYLOAD_ADDR))
        .map_err(SmokeError::WritePayload)?;

    let serial_out = SharedBuf::default();
    let log = Arc::new(Mutex::new(MarkerLog::default()));
    let mut bus = DeviceBus::default();
    bus.pio
        .insert(
            COM1_BASE,
            COM1_LEN,
            Arc::new(Mutex::new(SerialDevice::new(NoIrq, serial_out.clone()))),
        )
        .map_err(SmokeError::Bus)?;
    bus.pio
        .insert(
            MARKER_BASE,
            MARKER_LEN,
            Arc::new(Mutex::new(MarkerDevice::new(log.clone(), None))),
        )
        .map_err(SmokeError::Bus)?;

    let mut fd = vcpu::create_vcpu(&vm, 0).map_err(SmokeError::Vcpu)?;
    let mut sregs = fd
        .get_sregs()
        .map_err(|source| SmokeError::Vcpu(VcpuError::GetSregs { index: 0, source }))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs)
        .map_err(|source| SmokeError::Vcpu(VcpuError::SetSregs { index: 0, source }))?;
    let regs = kvm_regs {
        rip: PAYLOAD_ADDR,
        rflags: crate::arch::regs::RFLAGS_RESERVED,
        ..Default::default()
    };
    fd.set_regs(&regs)
        .map_err(|source| SmokeError::Vcpu(VcpuError::SetRegs { index: 0, source }))?;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop_reason = vcpu::run_loop(&mut fd, 0, &bus, &stop, None).map_err(SmokeError::Vcpu)?;
    let elapsed_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
    let serial = String::from_utf8_lossy(&serial_out.0.lock().unwrap_or_else(|p| p.into_inner()))
        .into_owned();
    let exit_status = log.lock().unwrap_or_else(|p| p.into_inner()).exit_status;
    Ok(SmokeReport {
        serial,
        exit_status,
        stop_reason,
        elapsed_us,
    })
}
