//! Layout of the virtio-mmio transport: where each device window goes, which
//! IRQ it raises, and the `virtio_mmio.device=` kernel parameter that tells a
//! guest without ACPI/DT about it (needs `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
//!
//! Devices themselves (virtio-net, ...) plug into [`crate::devices::bus::Bus`]
//! at the slot this allocator hands out.

use crate::arch::layout::{IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};

/// One allocated device window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest-physical base of the 4 KiB register window.
    pub addr: u64,
    /// Window size.
    pub len: u64,
    /// Legacy IRQ (IOAPIC pin) the device raises.
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel parameter announcing this device, e.g.
    /// `virtio_mmio.device=4K@0xc0001000:5`.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len / 1024,
            self.addr,
            self.irq
        )
    }
}

/// Failures allocating slots.
#[derive(Debug, thiserror::Error)]
pub enum VirtioMmioError {
    /// All IRQ lines from 5 to 23 are taken.
    #[error("No IRQ left for virtio-mmio device {index} (lines {VIRTIO_IRQ_BASE}..={IRQ_MAX})")]
    OutOfIrqs { index: u32 },
}

/// Hands out consecutive slots: 0xc0001000 + n * 0x1000, IRQ 5 + n.
#[derive(Debug, Clone, Default)]
pub struct VirtioMmioAllocator {
    next: u32,
}

impl VirtioMmioAllocator {
    /// An allocator with no slot taken.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot, VirtioMmioError> {
        let irq = VIRTIO_IRQ_BASE + self.next;
        if irq > IRQ_MAX {
            return Err(VirtioMmioError::OutOfIrqs { index: self.next });
        }
        let slot = MmioSlot {
            addr: VIRTIO_MMIO_BASE + u64::from(self.next) * VIRTIO_MMIO_SIZE,
            len: VIRTIO_MMIO_SIZE,
            irq,
        };
        self.next += 1;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_firecracker_layout_and_cmdline_syntax() {
        let mut a = VirtioMmioAllocator::new();
        let s0 = a.allocate().unwrap();
        let s1 = a.allocate().unwrap();
        assert_eq!((s0.addr, s0.irq), (0xc000_1000, 5));
        assert_eq!((s1.addr, s1.irq), (0xc000_2000, 6));
        assert_eq!(s0.cmdline_entry(), "virtio_mmio.device=4K@0xc0001000:5");
    }

    #[test]
    fn runs_out_after_irq_23() {
        let mut a = VirtioMmioAllocator::new();
        for _ in 5..=23 {
            a.allocate().unwrap();
        }
        assert!(matches!(
            a.allocate(),
            Err(VirtioMmioError::OutOfIrqs { index: 19 })
        ));
    }
}
