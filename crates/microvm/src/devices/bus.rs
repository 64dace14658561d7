//! Address-range buses that route VM-exit accesses to devices: one for port
//! I/O, one for MMIO. A device sees offsets relative to its base.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// What a device asks of the VM after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Nothing: keep running.
    None,
    /// The guest asked for a CPU reset (i8042 0xFE): end the VM cleanly.
    Reset,
    /// The guest init reported the workload's end (its status is already
    /// in): nothing the guest does afterwards is measured or needed, so
    /// the VM ends now instead of after the guest's own reboot.
    WorkloadExited,
}

/// A device mapped on a bus.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the device base.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent;
}

/// A device shared between the bus and whoever created it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Failures registering devices.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty.
    #[error("Device range at {base:#x} has zero length")]
    EmptyRange { base: u64 },
    /// The range overlaps a registered device.
    #[error("Device range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// One address space (PIO or MMIO).
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        for (&b, e) in &self.devices {
            if base < b + e.len && b < base + len {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other: b,
                });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        (addr < base + entry.len).then_some((addr - base, entry))
    }

    /// Whether a device covers `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr).is_some()
    }

    /// Routes a read; returns false (leaving `data` untouched) when no
    /// device is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, e)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; `None` when no device is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<DeviceEvent> {
        let (offset, e) = self.find(addr)?;
        let event = lock(&e.device).write(offset, data);
        Some(event)
    }
}

fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    // A device whose lock was poisoned by a panicking vCPU thread is still
    // the best state we have; keep serving it.
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// Both buses of a VM, shared read-only by all vCPU threads.
#[derive(Debug, Clone, Default)]
pub struct DeviceBus {
    /// Port I/O space (legacy devices, marker).
    pub pio: Bus,
    /// MMIO space (virtio-mmio devices).
    pub mmio: Bus,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records accesses; used by other modules' tests too.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub writes: Vec<(u64, Vec<u8>)>,
        pub reset_on: Option<u8>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x10);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
            self.writes.push((offset, data.to_vec()));
            if Some(data[0]) == self.reset_on {
                DeviceEvent::Reset
            } else {
                DeviceEvent::None
            }
        }
    }

    #[test]
    fn routes_by_range_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 0x15);
        assert_eq!(bus.write(0x3f8, &[7]), Some(DeviceEvent::None));
        assert_eq!(bus.write(0x400, &[7]), None);
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![7])]);
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(0x60, 5, d()).unwrap();
        assert!(matches!(
            bus.insert(0x64, 1, d()),
            Err(BusError::Overlap { other: 0x60, .. })
        ));
        assert!(matches!(
            bus.insert(0x50, 0x11, d()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x70, 0, d()),
            Err(BusError::EmptyRange { .. })
        ));
        bus.insert(0x65, 1, d()).unwrap();
    }
}
