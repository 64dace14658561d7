//! The virtio-mmio transport, register layout version 2 (virtio 1.x,
//! section 4.2.2): identification, feature negotiation, queue setup, the
//! status state machine, interrupt status/ack and the device's
//! configuration space from offset 0x100.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Interrupt, VirtioDevice};
use crate::devices::bus::{BusDevice, DeviceEvent};
use crate::vstate::memory::GuestMemoryMmap;

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (non-legacy).
pub const VERSION: u32 = 2;
/// Vendor ID reported to the guest ("ISOL", unregistered; the driver
/// ignores it).
pub const VENDOR_ID: u32 = 0x4c4f_5349;
/// Feature bit 32: the device follows virtio 1.x, not the legacy layout.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Register offsets (virtio 1.x, 4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    /// Why activation failed, for the monitor's log (the guest sees
    /// DEVICE_NEEDS_RESET).
    last_error: Option<String>,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` over guest memory `mem`, interrupting through `irq`.
    pub fn new(device: D, mem: GuestMemoryMmap, irq: EventFd) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt: Interrupt::new(irq),
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            last_error: None,
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving its queues (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The features both sides agreed on.
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// Why the last activation failed, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // A driver never clears a status bit except by writing 0 (virtio
        // 1.x, 2.1.2); such a write is ignored, so an activated device can
        // never lose FEATURES_OK or DRIVER_OK behind the transport's back.
        if value & self.status != self.status {
            return;
        }
        let new_bits = value & !self.status;
        // FEATURES_OK sticks only if the driver took a subset of what we
        // offered, VERSION_1 included (4.2.2.2: the driver re-reads it).
        if new_bits & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                self.status = value & !status::FEATURES_OK;
                return;
            }
        }
        if new_bits & status::DRIVER_OK != 0 && !self.activated {
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn activate(&mut self) {
        let result = if self.status & status::FEATURES_OK == 0 {
            Err("DRIVER_OK before FEATURES_OK".to_owned())
        } else if let Some(i) = self
            .queues
            .iter()
            .position(|q| !q.ready() || !q.is_valid(&self.mem))
        {
            Err(format!("queue {i} is not ready or not valid"))
        } else {
            // The device owns the live queues from now on; the transport
            // keeps fresh ones for the next reset.
            let fresh = self
                .device
                .queue_max_sizes()
                .iter()
                .map(|&max| Queue::new(max).expect("queue sizes are powers of two"))
                .collect();
            let queues = std::mem::replace(&mut self.queues, fresh);
            self.device.activate(
                self.mem.clone(),
                self.driver_features,
                queues,
                self.interrupt.clone(),
            )
        };
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.last_error = Some(e);
                self.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt.signal(super::device::INT_CONFIG);
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let setup = self.queue_setup_allowed();
        // Driver features are taken only while negotiating (DRIVER set,
        // FEATURES_OK not yet).
        let negotiating =
            self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY if self.activated => self.device.queue_notify(v),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            _ if setup => {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                match offset {
                    reg::QUEUE_NUM => q.set_size(v as u16),
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
                    reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32-bit; other widths read as zero (4.2.2.2).
        if data.len() == 4 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        // The configuration space of a network device is read-only here.
        if offset < reg::CONFIG {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.write_reg(offset, u32::from_le_bytes(bytes));
            }
        }
        DeviceEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the transport asks of it.
    #[derive(Default)]
    struct Fake {
        activated: Arc<Mutex<Vec<(u64, usize)>>>,
        notified: Arc<Mutex<Vec<u32>>>,
        resets: Arc<Mutex<u32>>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            1
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | (1 << 5)
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            features: u64,
            queues: Vec<Queue>,
            _interrupt: Arc<Interrupt>,
        ) -> Result<(), String> {
            self.activated
                .lock()
                .unwrap()
                .push((features, queues.len()));
            Ok(())
        }
        fn queue_notify(&mut self, queue: u32) {
            self.notified.lock().unwrap().push(queue);
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    type Activations = Arc<Mutex<Vec<(u64, usize)>>>;

    fn transport() -> (MmioTransport<Fake>, Activations) {
        let mem = crate::vstate::memory::create_guest_memory(1 << 20, Default::default()).unwrap();
        let fake = Fake::default();
        let activated = fake.activated.clone();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (MmioTransport::new(fake, mem, irq), activated)
    }

    fn r(t: &mut MmioTransport<Fake>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport<Fake>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// What Linux's virtio_mmio driver does, in order.
    fn negotiate(t: &mut MmioTransport<Fake>, features: u64) {
        w(t, reg::STATUS, 0);
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport<Fake>, index: u32, base: u64) {
        w(t, reg::QUEUE_SEL, index);
        assert_eq!(r(t, reg::QUEUE_NUM_MAX), 16);
        w(t, reg::QUEUE_NUM, 16);
        w(t, reg::QUEUE_DESC_LOW, base as u32);
        w(t, reg::QUEUE_DESC_HIGH, 0);
        w(t, reg::QUEUE_DRIVER_LOW, (base + 0x100) as u32);
        w(t, reg::QUEUE_DRIVER_HIGH, 0);
        w(t, reg::QUEUE_DEVICE_LOW, (base + 0x200) as u32);
        w(t, reg::QUEUE_DEVICE_HIGH, 0);
        w(t, reg::QUEUE_READY, 1);
        assert_eq!(r(t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn identifies_as_a_version_2_device_with_its_features() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 5);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        let mut cfg = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut cfg);
        assert_eq!(cfg, [4, 5], "config space goes to the device");
    }

    #[test]
    fn full_handshake_activates_the_device_with_the_agreed_features() {
        let (mut t, activated) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 5));
        assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(t.is_activated(), "{:?}", t.last_error());
        assert_eq!(
            *activated.lock().unwrap(),
            vec![(VIRTIO_F_VERSION_1 | (1 << 5), 2)]
        );
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(*t.device().notified.lock().unwrap(), vec![1]);
        // A second DRIVER_OK write does not activate twice.
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(activated.lock().unwrap().len(), 1);
    }

    #[test]
    fn features_not_offered_or_without_version_1_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 7));
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 5);
        assert_eq!(
            r(&mut t, reg::STATUS) & status::FEATURES_OK,
            0,
            "a legacy driver is refused"
        );
    }

    #[test]
    fn driver_ok_with_a_queue_missing_asks_for_a_reset() {
        let (mut t, activated) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1000);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(!t.is_activated());
        assert!(activated.lock().unwrap().is_empty());
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(t.last_error().unwrap().contains("queue 1"));
        assert_eq!(
            r(&mut t, reg::INTERRUPT_STATUS),
            super::super::device::INT_CONFIG
        );
        w(&mut t, reg::INTERRUPT_ACK, super::super::device::INT_CONFIG);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn a_status_write_that_clears_bits_is_ignored() {
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        w(&mut t, reg::STATUS, all);
        assert!(t.is_activated());
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
        assert_eq!(r(&mut t, reg::STATUS), all, "FEATURES_OK stays");
        assert!(t.is_activated());
    }

    #[test]
    fn writing_status_zero_resets_device_and_queues() {
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(t.is_activated());
        w(&mut t, reg::STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(*t.device().resets.lock().unwrap(), 1);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        // Notifies before activation go nowhere.
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(t.device().notified.lock().unwrap().is_empty());
    }
}
