//! virtio devices over the virtio-mmio transport (virtio spec 1.x, MMIO
//! register layout version 2): the transport ([`mmio`]), what a device
//! plugs into it ([`device`]), the I/O thread each device serves its
//! queues from ([`worker`]), the network device ([`net`]) backed by
//! a TAP from the workbench network, and the block device ([`block`])
//! backed by a disk image file.
//!
//! Not here: the slot layout and the `virtio_mmio.device=` parameter
//! ([`crate::devices::virtio_mmio`]), PCI, vhost, packed rings, event idx.

pub mod block;
pub mod device;
pub mod mmio;
pub mod net;
pub mod worker;

pub use block::{BlockDevice, BlockError};
pub use device::{Interrupt, VirtioDevice};
pub use mmio::MmioTransport;
pub use net::{NetDevice, NetError};
pub use worker::WorkerError;
