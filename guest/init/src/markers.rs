//! The marker ABI (docs/contracts.md): single-byte `outb` writes to I/O
//! ports 0x3f0..=0x3f2 that the monitor timestamps as VM exits.
//!
//! This module is init's only architecture-specific code. Under QEMU or any
//! monitor without a handler, writes to these ports are ignored, so markers
//! are always safe to write.

/// Event port: one of the `MARK_*` values.
pub const PORT_EVENT: u16 = 0x3f0;
/// Exit status port: written just before `MARK_EXITED`.
pub const PORT_STATUS: u16 = 0x3f1;
/// Result channel: one byte of the workload's stdout per write.
pub const PORT_STDOUT: u16 = 0x3f2;

/// Init reached (Firecracker's boot-timer value, so boot times compare).
pub const MARK_INIT: u8 = 123;
/// The workload was exec'd.
pub const MARK_STARTED: u8 = 0x01;
/// The workload wrote its ready byte.
pub const MARK_READY: u8 = 0x02;
/// The workload exited; its status is on `PORT_STATUS`.
pub const MARK_EXITED: u8 = 0x03;

/// Where marker bytes go: the real ports, or a recorder in tests.
pub trait Ports {
    fn outb(&mut self, port: u16, value: u8);
}

/// The real I/O ports, after `ioperm` granted them.
#[derive(Debug)]
pub struct IoPorts {
    enabled: bool,
}

impl IoPorts {
    /// Asks the kernel for access to ports 0x3f0..=0x3f2. Without it
    /// (kernel built without X86_IOPL_IOPERM, not root) markers are dropped
    /// and the reason is returned so init can print it once.
    pub fn open() -> (Self, Option<std::io::Error>) {
        // SAFETY: ioperm only changes this process's I/O permission bitmap;
        // it takes no pointers.
        let rc = unsafe { libc::ioperm(libc::c_ulong::from(PORT_EVENT), 3, 1) };
        if rc == 0 {
            (Self { enabled: true }, None)
        } else {
            (
                Self { enabled: false },
                Some(std::io::Error::last_os_error()),
            )
        }
    }
}

impl Ports for IoPorts {
    fn outb(&mut self, port: u16, value: u8) {
        if !self.enabled {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: ioperm granted this process ports 0x3f0..=0x3f2 and callers
        // only pass the PORT_* constants; `out` touches no memory.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") port, in("al") value,
                options(nomem, nostack, preserves_flags));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (port, value);
    }
}

/// Records every write; a test double.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Recorder(pub Vec<(u16, u8)>);

#[cfg(test)]
impl Ports for Recorder {
    fn outb(&mut self, port: u16, value: u8) {
        self.0.push((port, value));
    }
}
