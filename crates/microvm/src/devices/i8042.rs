//! The i8042 keyboard controller at ports 0x60-0x64, only as far as Linux
//! needs it: with `reboot=k` the kernel reboots by writing 0xFE (pulse the
//! CPU reset line) to the command port 0x64, which ends the VM cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::{BusDevice, DeviceEvent};

/// Data port.
pub const I8042_BASE: u64 = 0x60;
/// Data (0x60) through command/status (0x64).
pub const I8042_LEN: u64 = 5;

/// Sets a flag when vm-superio reports the reset command.
#[derive(Debug, Clone, Default)]
pub struct FlagTrigger(Arc<AtomicBool>);

impl Trigger for FlagTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The reset-only i8042.
#[derive(Debug)]
pub struct I8042 {
    inner: I8042Device<FlagTrigger>,
    reset: FlagTrigger,
}

impl Default for I8042 {
    fn default() -> Self {
        let reset = FlagTrigger::default();
        Self {
            inner: I8042Device::new(reset.clone()),
            reset,
        }
    }
}

impl I8042 {
    /// A controller that has not seen a reset.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The register offset, if `offset` is inside the device (a plain cast
/// would turn offset 0x104 into the command port).
fn register(offset: u64) -> Option<u8> {
    u8::try_from(offset)
        .ok()
        .filter(|&o| u64::from(o) < I8042_LEN)
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Some(reg)) = (data.first_mut(), register(offset)) {
            *b = self.inner.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        if let (Some(&b), Some(reg)) = (data.first(), register(offset)) {
            let Ok(()) = self.inner.write(reg, b);
        }
        if self.reset.0.swap(false, Ordering::SeqCst) {
            DeviceEvent::Reset
        } else {
            DeviceEvent::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_on_port_0x64_ends_the_vm() {
        let mut k = I8042::new();
        assert_eq!(k.write(4, &[0xfe]), DeviceEvent::Reset);
    }

    #[test]
    fn other_writes_do_nothing() {
        let mut k = I8042::new();
        assert_eq!(
            k.write(0, &[0xfe]),
            DeviceEvent::None,
            "0xfe on the data port"
        );
        assert_eq!(k.write(4, &[0xaa]), DeviceEvent::None, "self-test command");
        let mut b = [0xffu8];
        k.read(4, &mut b);
        assert_eq!(b[0], 0, "status: no data, input buffer empty");
    }
}
