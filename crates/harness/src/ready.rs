//! The launcher's end of the ready protocol (docs/contracts.md): a pipe whose
//! write end the workload inherits as `ISOLAB_READY_FD`; the first byte read
//! is the ready event, timestamped here with the monotonic clock.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::HarnessError;

/// The pipe of one instance.
#[derive(Debug)]
pub struct ReadyPipe {
    read: OwnedFd,
    write: Option<OwnedFd>,
}

/// What the read end saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyEvent {
    /// The workload wrote its ready byte at this instant.
    Ready(Instant),
    /// Every writer closed the pipe without a byte: the workload ended first.
    Closed,
}

impl ReadyPipe {
    /// A close-on-exec pipe; the launcher decides how the write end is passed.
    pub fn new() -> Result<Self, HarnessError> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| HarnessError::io("create ready pipe", e))?;
        Ok(ReadyPipe {
            read,
            write: Some(write),
        })
    }

    /// The write end, to hand to the child (dup it onto a fixed number).
    pub fn write_end(&self) -> Option<&OwnedFd> {
        self.write.as_ref()
    }

    /// Close the parent's copy of the write end (after the child has its own),
    /// so that a child exiting without writing shows up as `Closed`.
    pub fn close_write(&mut self) {
        self.write = None;
    }

    /// Wait for the ready byte.
    pub fn wait(&self, timeout: Duration) -> Result<ReadyEvent, HarnessError> {
        if !readable(self.read.as_fd(), Instant::now() + timeout)? {
            return Err(HarnessError::Timeout(timeout));
        }
        let at = Instant::now();
        let mut b = [0u8; 1];
        match nix::unistd::read(&self.read, &mut b) {
            Ok(0) => Ok(ReadyEvent::Closed),
            Ok(_) => Ok(ReadyEvent::Ready(at)),
            Err(e) => Err(HarnessError::io("read the ready pipe", e)),
        }
    }
}

/// Waits until `fd` is readable (data or EOF): true, or false at `deadline`.
pub(crate) fn readable(fd: BorrowedFd<'_>, deadline: Instant) -> Result<bool, HarnessError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(HarnessError::io("poll a pipe", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_is_ready_and_close_is_closed() {
        let mut p = ReadyPipe::new().unwrap();
        nix::unistd::write(p.write_end().unwrap(), b"R").unwrap();
        assert!(matches!(
            p.wait(Duration::from_secs(1)).unwrap(),
            ReadyEvent::Ready(_)
        ));
        p.close_write();
        assert_eq!(p.wait(Duration::from_secs(1)).unwrap(), ReadyEvent::Closed);
    }

    #[test]
    fn silence_times_out() {
        let p = ReadyPipe::new().unwrap();
        assert!(matches!(
            p.wait(Duration::from_millis(20)),
            Err(HarnessError::Timeout(_))
        ));
    }
}
