//! Emulated devices: the legacy PC devices a Linux guest needs (COM1,
//! i8042 reset), the boot-marker device, and the bus they hang on.

pub mod bus;
pub mod i8042;
pub mod marker;
pub mod serial;
pub mod virtio;
pub mod virtio_mmio;
