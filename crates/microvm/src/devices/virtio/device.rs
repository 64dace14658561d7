//! What a virtio device provides to the transport, and the interrupt it
//! raises back through it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemoryMmap;

/// `InterruptStatus` bit: the device used buffers in a queue.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// The device's interrupt: the `InterruptStatus` register the transport
/// exposes, and the irqfd (KVM_IRQFD on the slot's IOAPIC pin) that
/// delivers it.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    /// An interrupt delivered through `irq`.
    pub fn new(irq: EventFd) -> Arc<Interrupt> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            irq,
        })
    }

    /// Sets `bits` in `InterruptStatus` and pulses the IRQ line. A failed
    /// eventfd write (counter overflow) still leaves an interrupt pending.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        let _ = self.irq.write(1);
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: the driver handled `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Fills `data` from the configuration space `cfg` at `offset`; bytes
/// past its end (features not offered) read as zero.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| cfg.get(o).copied())
            .unwrap_or(0);
    }
}

/// A virtio device behind [`crate::devices::virtio::MmioTransport`].
pub trait VirtioDevice: Send {
    /// Device ID (1 = network).
    fn device_type(&self) -> u32;
    /// Features offered (VIRTIO_F_VERSION_1 must be among them).
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// DRIVER_OK: start serving `queues` (all valid) with the negotiated
    /// `features`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String>;
    /// The driver wrote `queue` to `QueueNotify`.
    fn queue_notify(&mut self, queue: u32);
    /// The driver reset the device (status 0): stop serving the queues.
    fn reset(&mut self);
}
