//! The 16550A UART at COM1 (I/O 0x3f8, IRQ 4), backed by vm-superio.
//!
//! Output goes to any `W: Write` (a file, stdout, a buffer in tests, or a
//! sink when the console is off). Interrupts are raised through a
//! `Trigger`; the VM uses an eventfd registered as an irqfd for GSI 4.

use std::io::Write;

use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{BusDevice, DeviceEvent};

/// COM1 base port.
pub const COM1_BASE: u64 = 0x3f8;
/// Eight registers.
pub const COM1_LEN: u64 = 8;
/// COM1's legacy IRQ line.
pub const COM1_IRQ: u32 = 4;

/// Most console bytes a guest may write through COM1 in one run (64 MiB):
/// a chatty kernel prints a few hundred KiB; a guest printing without end
/// must not fill the host's disk or the monitor's stdout pipe.
pub const MAX_CONSOLE_BYTES: u64 = 64 << 20;

/// A console sink that takes at most `limit` bytes, then writes one
/// notice and drops the rest (still reporting success, so the UART never
/// stalls the guest).
#[derive(Debug)]
pub struct CappedWriter<W: Write> {
    inner: W,
    left: u64,
    noticed: bool,
}

impl<W: Write> CappedWriter<W> {
    /// `inner`, cut off after `limit` bytes.
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            noticed: false,
        }
    }

    /// The wrapped sink.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if take > 0 {
            let n = self.inner.write(&buf[..take])?;
            self.left -= n as u64;
        } else if !self.noticed {
            self.noticed = true;
            let _ = self
                .inner
                .write_all(b"\n[isolab: guest console output capped; the rest is dropped]\n");
            let _ = self.inner.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An eventfd as a vm-superio interrupt trigger.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// COM1.
pub struct SerialDevice<T: Trigger, W: Write> {
    inner: Serial<T, NoEvents, W>,
}

impl<T: Trigger, W: Write> std::fmt::Debug for SerialDevice<T, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl<T: Trigger, W: Write> SerialDevice<T, W> {
    /// A UART that raises `irq` and writes transmitted bytes to `out`.
    pub fn new(irq: T, out: W) -> Self {
        Self {
            inner: Serial::new(irq, out),
        }
    }

    /// The output sink.
    pub fn output(&self) -> &W {
        self.inner.writer()
    }
}

/// The register offset, if `offset` is one of the UART's eight.
fn register(offset: u64) -> Option<u8> {
    u8::try_from(offset)
        .ok()
        .filter(|&o| u64::from(o) < COM1_LEN)
}

impl<T: Trigger + Send, W: Write + Send> BusDevice for SerialDevice<T, W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Some(reg)) = (data.first_mut(), register(offset)) {
            *b = self.inner.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        if let (Some(&b), Some(offset)) = (data.first(), register(offset)) {
            // A failed interrupt or console write must not kill the guest;
            // the console is best effort.
            let _ = self.inner.write(offset, b);
        }
        DeviceEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Default, Clone)]
    struct Count(Arc<AtomicUsize>);
    impl Trigger for Count {
        type E = std::io::Error;
        fn trigger(&self) -> Result<(), Self::E> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let mut s = SerialDevice::new(Count::default(), Vec::new());
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.output(), b"hi\n");
    }

    #[test]
    fn console_output_past_the_cap_is_dropped_with_one_notice() {
        let mut s = SerialDevice::new(Count::default(), CappedWriter::new(Vec::new(), 4));
        for b in b"abcdefgh" {
            s.write(0, &[*b]);
        }
        let out = s.output().get_ref();
        assert!(out.starts_with(b"abcd"), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out[4..]).matches("capped").count(),
            1,
            "one notice, then silence"
        );
    }

    #[test]
    fn line_status_reports_transmitter_empty() {
        let mut s = SerialDevice::new(Count::default(), Vec::new());
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        // THR empty (bit 5) and transmitter idle (bit 6): the guest may send.
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn enabled_tx_interrupt_fires_the_trigger() {
        let count = Count::default();
        let mut s = SerialDevice::new(count.clone(), Vec::new());
        s.write(1, &[0x02]); // IER: THR empty interrupt
        s.write(0, b"x");
        assert!(count.0.load(Ordering::SeqCst) >= 1);
    }
}
