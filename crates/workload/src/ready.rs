//! The readiness signal: one byte `R` written to the fd named by
//! `ISOLAB_READY_FD`, then that fd is closed (docs/contracts.md).
//!
//! The launcher owns the read end and takes the timestamp; this module only
//! writes. Without the variable it does nothing, so the binary also runs by
//! hand.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable naming the inherited ready file descriptor.
pub const READY_FD_ENV: &str = "ISOLAB_READY_FD";

/// The byte the launcher waits for.
pub const READY_BYTE: u8 = b'R';

static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Errors while signalling readiness.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// The variable is set but is not a file descriptor number.
    #[error("{READY_FD_ENV}={value:?} is not a file descriptor number; set it to the fd of the pipe's write end")]
    BadValue { value: String },
    /// The named descriptor is not open in this process.
    #[error("{READY_FD_ENV}={fd} names a file descriptor that is not open; pass the pipe's write end without O_CLOEXEC")]
    NotOpen { fd: RawFd },
    /// Writing the ready byte failed (for example, the launcher closed the read end).
    #[error("Could not write the ready byte to fd {fd}")]
    Write {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
}

/// Parses the value of `ISOLAB_READY_FD`.
pub fn parse_fd(value: &str) -> Result<RawFd, ReadyError> {
    value
        .trim()
        .parse::<RawFd>()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| ReadyError::BadValue {
            value: value.to_owned(),
        })
}

/// Signals readiness once; later calls do nothing.
pub fn signal() -> Result<(), ReadyError> {
    let Some(value) = std::env::var_os(READY_FD_ENV) else {
        return Ok(());
    };
    if SIGNALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let fd = parse_fd(&value.to_string_lossy())?;
    // Check the descriptor is open before taking ownership of it, so that a
    // wrong number is reported instead of closing some unrelated fd later.
    nix::fcntl::fcntl(
        // SAFETY: the borrowed fd is only used for this F_GETFD query; an fd
        // that is not open makes fcntl fail with EBADF, which we report.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|_| ReadyError::NotOpen { fd })?;
    // SAFETY: the fd is open (checked above) and was handed to this process
    // by the launcher for this one purpose; nothing else in the workload
    // uses it, so taking ownership (and closing it on drop) is sound.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&[READY_BYTE])
        .map_err(|source| ReadyError::Write { fd, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fd_numbers() {
        assert_eq!(parse_fd("3").unwrap(), 3);
        assert_eq!(parse_fd(" 7\n").unwrap(), 7);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(parse_fd("x"), Err(ReadyError::BadValue { .. })));
        assert!(matches!(parse_fd("-1"), Err(ReadyError::BadValue { .. })));
        assert!(matches!(parse_fd(""), Err(ReadyError::BadValue { .. })));
    }
}
