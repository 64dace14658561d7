//! VM-exit handling as a pure function: an exit (built from `KVM_RUN`'s
//! result, or by hand in tests) plus the device bus gives an action.
//! No ioctl happens here.

use crate::devices::bus::{DeviceBus, DeviceEvent};

/// A VM exit, reduced to what the monitor acts on.
#[derive(Debug)]
pub enum Exit<'a> {
    /// `in` from a port; the handler fills `data`.
    IoIn { port: u16, data: &'a mut [u8] },
    /// `out` to a port.
    IoOut { port: u16, data: &'a [u8] },
    /// MMIO read; the handler fills `data`.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// MMIO write.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// HLT with no in-kernel irqchip to wait for interrupts.
    Hlt,
    /// Triple fault (or `reboot=t`).
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT` (PSCI-style shutdown/reset/crash).
    SystemEvent { kind: u32 },
    /// KVM could not enter the guest.
    FailEntry { reason: u64, cpu: u32 },
    /// KVM failed internally (emulation failure and friends).
    InternalError { suberror: u32, data: Vec<u64> },
    /// `KVM_RUN` returned EINTR/EAGAIN, or an `Intr` exit: a kick.
    Interrupted,
    /// Anything else, by name.
    Other(String),
}

/// `KVM_SYSTEM_EVENT_SHUTDOWN`.
pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET`.
pub const SYSTEM_EVENT_RESET: u32 = 2;
/// `KVM_SYSTEM_EVENT_CRASH`.
pub const SYSTEM_EVENT_CRASH: u32 = 3;

/// Why a VM stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The guest init reported the workload's end (marker 0x03, status
    /// on 0x3f1): the VM stops there, without waiting for the guest's
    /// reboot.
    WorkloadExited,
    /// The guest asked for a reset (i8042 0xFE, or a reset system event):
    /// with `reboot=k` this is how a Linux guest powers off.
    GuestReset,
    /// The guest powered off through a system event.
    GuestPowerOff,
    /// Triple fault.
    TripleFault,
    /// HLT with nothing to wake the vCPU (real-mode payloads).
    Halted,
    /// The host asked the VM to stop (SIGTERM/SIGINT, or another vCPU ended).
    HostRequest,
}

/// What the vCPU loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Continue,
    /// Stop the VM.
    Stop(StopReason),
}

/// Exits that end the VM with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitError {
    /// KVM_EXIT_FAIL_ENTRY.
    #[error("vCPU {vcpu}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})")]
    FailEntry { vcpu: u8, reason: u64, cpu: u32 },
    /// KVM_EXIT_INTERNAL_ERROR.
    #[error("vCPU {vcpu}: KVM internal error, suberror {suberror} ({}), data {data:x?}", suberror_name(*.suberror))]
    InternalError {
        vcpu: u8,
        suberror: u32,
        data: Vec<u64>,
    },
    /// The guest reported a crash.
    #[error("vCPU {vcpu}: the guest reported a crash (system event {kind})")]
    GuestCrash { vcpu: u8, kind: u32 },
    /// An exit the monitor has no handler for.
    #[error("vCPU {vcpu}: unexpected VM exit {exit}")]
    Unexpected { vcpu: u8, exit: String },
}

/// Names of `KVM_INTERNAL_ERROR_*` suberrors.
pub fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event failure",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// Value returned for reads of ports and MMIO nobody owns: an open bus
/// reads as all ones on PC hardware, which is what probing drivers expect.
const OPEN_BUS: u8 = 0xff;

/// Maps one exit to an action, routing I/O to `bus`. `vcpu` only labels errors.
pub fn handle_exit(exit: Exit<'_>, bus: &DeviceBus, vcpu: u8) -> Result<Action, ExitError> {
    let event = match exit {
        Exit::IoIn { port, data } => {
            if !bus.pio.read(u64::from(port), data) {
                data.fill(OPEN_BUS);
            }
            DeviceEvent::None
        }
        // Unclaimed ports (POST code 0x80, CMOS, PCI config, COM2-4) are
        // ignored, as absent hardware would.
        Exit::IoOut { port, data } => bus
            .pio
            .write(u64::from(port), data)
            .unwrap_or(DeviceEvent::None),
        Exit::MmioRead { addr, data } => {
            if !bus.mmio.read(addr, data) {
                data.fill(OPEN_BUS);
            }
            DeviceEvent::None
        }
        Exit::MmioWrite { addr, data } => bus.mmio.write(addr, data).unwrap_or(DeviceEvent::None),
        Exit::Interrupted => DeviceEvent::None,
        Exit::Hlt => return Ok(Action::Stop(StopReason::Halted)),
        Exit::Shutdown => return Ok(Action::Stop(StopReason::TripleFault)),
        Exit::SystemEvent { kind } => {
            return match kind {
                SYSTEM_EVENT_SHUTDOWN => Ok(Action::Stop(StopReason::GuestPowerOff)),
                SYSTEM_EVENT_RESET => Ok(Action::Stop(StopReason::GuestReset)),
                SYSTEM_EVENT_CRASH => Err(ExitError::GuestCrash { vcpu, kind }),
                _ => Err(ExitError::Unexpected {
                    vcpu,
                    exit: format!("SystemEvent({kind})"),
                }),
            }
        }
        Exit::FailEntry { reason, cpu } => return Err(ExitError::FailEntry { vcpu, reason, cpu }),
        Exit::InternalError { suberror, data } => {
            return Err(ExitError::InternalError {
                vcpu,
                suberror,
                data,
            })
        }
        Exit::Other(exit) => return Err(ExitError::Unexpected { vcpu, exit }),
    };
    Ok(match event {
        DeviceEvent::None => Action::Continue,
        DeviceEvent::Reset => Action::Stop(StopReason::GuestReset),
        DeviceEvent::WorkloadExited => Action::Stop(StopReason::WorkloadExited),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::tests::Recorder;
    use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
    use crate::devices::marker::{MarkerDevice, MarkerLog, MARKER_BASE, MARKER_LEN};
    use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_LEN};
    use std::sync::{Arc, Mutex};

    struct NoIrq;
    impl vm_superio::Trigger for NoIrq {
        type E = std::io::Error;
        fn trigger(&self) -> Result<(), Self::E> {
            Ok(())
        }
    }

    type Console = Arc<Mutex<SerialDevice<NoIrq, Vec<u8>>>>;

    fn legacy_bus() -> (DeviceBus, Arc<Mutex<MarkerLog>>, Console) {
        let mut bus = DeviceBus::default();
        let serial = Arc::new(Mutex::new(SerialDevice::new(NoIrq, Vec::new())));
        let log = Arc::new(Mutex::new(MarkerLog::default()));
        bus.pio.insert(COM1_BASE, COM1_LEN, serial.clone()).unwrap();
        bus.pio
            .insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new())))
            .unwrap();
        bus.pio
            .insert(
                MARKER_BASE,
                MARKER_LEN,
                Arc::new(Mutex::new(MarkerDevice::new(log.clone(), None))),
            )
            .unwrap();
        (bus, log, serial)
    }

    #[test]
    fn i8042_reset_write_stops_the_vm_cleanly() {
        let (bus, _, _) = legacy_bus();
        let a = handle_exit(
            Exit::IoOut {
                port: 0x64,
                data: &[0xfe],
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(a, Action::Stop(StopReason::GuestReset));
    }

    #[test]
    fn serial_output_reaches_the_console() {
        let (bus, _, serial) = legacy_bus();
        for b in b"ok" {
            let a = handle_exit(
                Exit::IoOut {
                    port: 0x3f8,
                    data: &[*b],
                },
                &bus,
                0,
            )
            .unwrap();
            assert_eq!(a, Action::Continue);
        }
        assert_eq!(serial.lock().unwrap().output(), b"ok");
    }

    #[test]
    fn marker_writes_record_status_and_output() {
        let (bus, log, _) = legacy_bus();
        handle_exit(
            Exit::IoOut {
                port: 0x3f0,
                data: &[123],
            },
            &bus,
            0,
        )
        .unwrap();
        handle_exit(
            Exit::IoOut {
                port: 0x3f2,
                data: b"{",
            },
            &bus,
            0,
        )
        .unwrap();
        handle_exit(
            Exit::IoOut {
                port: 0x3f1,
                data: &[3],
            },
            &bus,
            1,
        )
        .unwrap();
        let l = log.lock().unwrap();
        assert!(l.init_reached.is_some());
        assert_eq!(l.exit_status, Some(3));
        assert_eq!(l.output, b"{");
    }

    #[test]
    fn unclaimed_ports_read_as_open_bus_and_writes_are_ignored() {
        let (bus, _, _) = legacy_bus();
        let mut d = [0u8; 2];
        let a = handle_exit(
            Exit::IoIn {
                port: 0x2f8,
                data: &mut d,
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(a, Action::Continue);
        assert_eq!(d, [0xff, 0xff]);
        let a = handle_exit(
            Exit::IoOut {
                port: 0x80,
                data: &[0x12],
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(a, Action::Continue);
    }

    #[test]
    fn mmio_goes_to_the_mmio_bus() {
        let mut bus = DeviceBus::default();
        let dev = Arc::new(Mutex::new(Recorder {
            reset_on: Some(9),
            ..Default::default()
        }));
        bus.mmio.insert(0xc000_1000, 0x1000, dev.clone()).unwrap();
        let mut d = [0u8; 4];
        handle_exit(
            Exit::MmioRead {
                addr: 0xc000_1004,
                data: &mut d,
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(d, [0x14; 4]);
        handle_exit(
            Exit::MmioWrite {
                addr: 0xc000_1070,
                data: &[1, 0, 0, 0],
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(dev.lock().unwrap().writes, vec![(0x70, vec![1, 0, 0, 0])]);
        let a = handle_exit(
            Exit::MmioWrite {
                addr: 0xc000_1000,
                data: &[9],
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(a, Action::Stop(StopReason::GuestReset));
        let mut d = [0u8; 4];
        handle_exit(
            Exit::MmioRead {
                addr: 0xd000_0000,
                data: &mut d,
            },
            &bus,
            0,
        )
        .unwrap();
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn triple_fault_and_hlt_stop_cleanly() {
        let bus = DeviceBus::default();
        assert_eq!(
            handle_exit(Exit::Shutdown, &bus, 0).unwrap(),
            Action::Stop(StopReason::TripleFault)
        );
        assert_eq!(
            handle_exit(Exit::Hlt, &bus, 0).unwrap(),
            Action::Stop(StopReason::Halted)
        );
        assert_eq!(
            handle_exit(Exit::Interrupted, &bus, 0).unwrap(),
            Action::Continue
        );
        assert_eq!(
            handle_exit(
                Exit::SystemEvent {
                    kind: SYSTEM_EVENT_RESET
                },
                &bus,
                0
            )
            .unwrap(),
            Action::Stop(StopReason::GuestReset)
        );
    }

    #[test]
    fn failures_become_typed_errors_with_details() {
        let bus = DeviceBus::default();
        let e = handle_exit(
            Exit::FailEntry {
                reason: 0x21,
                cpu: 3,
            },
            &bus,
            1,
        )
        .unwrap_err();
        assert_eq!(
            e,
            ExitError::FailEntry {
                vcpu: 1,
                reason: 0x21,
                cpu: 3
            }
        );
        assert!(e.to_string().contains("0x21"));
        let e = handle_exit(
            Exit::InternalError {
                suberror: 1,
                data: vec![0xdead],
            },
            &bus,
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("emulation failure"), "{e}");
        assert!(e.to_string().contains("dead"), "{e}");
        let e = handle_exit(Exit::Other("Debug".into()), &bus, 2).unwrap_err();
        assert_eq!(e.to_string(), "vCPU 2: unexpected VM exit Debug");
        let e = handle_exit(
            Exit::SystemEvent {
                kind: SYSTEM_EVENT_CRASH,
            },
            &bus,
            0,
        )
        .unwrap_err();
        assert!(matches!(e, ExitError::GuestCrash { .. }));
    }
}
