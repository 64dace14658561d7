//! Starting `/workload` and relaying what it says: the ready byte becomes
//! `MARK_READY`, every stdout byte goes to `PORT_STDOUT` (and to the console
//! when asked), and its end becomes the status byte plus `MARK_EXITED`.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe, read, Pid};

use crate::error::InitError;
use crate::markers::{
    Ports, MARK_EXITED, MARK_READY, MARK_STARTED, PORT_EVENT, PORT_STATUS, PORT_STDOUT,
};

/// Environment variable naming the ready fd (docs/contracts.md).
pub const READY_ENV: &str = "ISOLAB_READY_FD";
/// The byte a workload writes when it is ready.
const READY_BYTE: u8 = b'R';
/// How often the loop looks for the workload's end while its pipes are quiet.
const POLL_MS: u16 = 20;

/// A started workload and the read ends of its pipes.
#[derive(Debug)]
pub struct Workload {
    pid: Pid,
    stdout: OwnedFd,
    ready: OwnedFd,
}

/// Starts `program args...` with stdout piped and the write end of the ready
/// pipe inherited under `ISOLAB_READY_FD`; stderr goes where init's goes.
/// Writes `MARK_STARTED` once the exec succeeded (std reports exec failures
/// through its own pipe, so a returned child has exec'd).
pub fn start<P: Ports>(
    program: &'static str,
    args: &[String],
    ports: &mut P,
) -> Result<Workload, InitError> {
    let (ready_r, ready_w) = pipe().map_err(InitError::ReadyPipe)?;
    // Only the write end is inherited.
    fcntl(&ready_r, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(InitError::ReadyPipe)?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/")
        .env("HOME", "/")
        .env(READY_ENV, ready_w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            path: program,
            source,
        })?;
    drop(ready_w);
    ports.outb(PORT_EVENT, MARK_STARTED);
    let stdout = child
        .stdout
        .take()
        .map(OwnedFd::from)
        .ok_or(InitError::Spawn {
            path: program,
            source: std::io::Error::other("no stdout pipe"),
        })?;
    let pid = Pid::from_raw(child.id() as i32);
    Ok(Workload {
        pid,
        stdout,
        ready: ready_r,
    })
}

/// Shell convention: the exit code, or 128+N for signal N.
pub fn status_byte(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, code) => Some((code & 0xff) as u8),
        WaitStatus::Signaled(_, sig, _) => Some((128 + sig as i32).min(255) as u8),
        _ => None,
    }
}

/// Relays until the workload has exited and its stdout is drained, reaping
/// every child along the way when `reap_all` (init is PID 1 and inherits
/// orphans). Returns the status byte after writing it and `MARK_EXITED`.
pub fn supervise<P: Ports, W: Write>(
    w: Workload,
    ports: &mut P,
    mut console: Option<&mut W>,
    mut on_ready: impl FnMut(),
    reap_all: bool,
) -> Result<u8, InitError> {
    let mut stdout = Some(w.stdout);
    let mut ready = Some(w.ready);
    let mut status = None;
    let mut buf = [0u8; 4096];
    loop {
        // Once the workload is gone, only drain what is already buffered.
        let timeout = if status.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::from(POLL_MS)
        };
        let (ready_ev, stdout_ev) = {
            let mut fds = Vec::with_capacity(2);
            if let Some(fd) = &ready {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            if let Some(fd) = &stdout {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            if !fds.is_empty() {
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(source) => {
                        return Err(InitError::Relay {
                            what: "poll the workload's pipes",
                            source,
                        })
                    }
                }
            }
            let ev =
                |fd: Option<&PollFd>| fd.and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
            let mut it = fds.iter();
            let r = if ready.is_some() {
                ev(it.next())
            } else {
                false
            };
            let s = if stdout.is_some() {
                ev(it.next())
            } else {
                false
            };
            (r, s)
        };
        let mut idle = true;
        // Ready first: a workload that signals and exits at once must show
        // ready before exited.
        if ready_ev {
            idle = false;
            if let Some(fd) = &ready {
                match read(fd, &mut buf) {
                    Ok(0) => ready = None,
                    Ok(n) => {
                        if buf[..n].contains(&READY_BYTE) {
                            ports.outb(PORT_EVENT, MARK_READY);
                            on_ready();
                        }
                    }
                    Err(nix::Error::EINTR) => {}
                    Err(source) => {
                        return Err(InitError::Relay {
                            what: "read the ready pipe",
                            source,
                        })
                    }
                }
            }
        }
        if stdout_ev {
            idle = false;
            if let Some(fd) = &stdout {
                match read(fd, &mut buf) {
                    Ok(0) => stdout = None,
                    Ok(n) => {
                        for &b in &buf[..n] {
                            ports.outb(PORT_STDOUT, b);
                        }
                        if let Some(c) = console.as_mut() {
                            // The console is best effort; the ports are the result channel.
                            let _ = c.write_all(&buf[..n]);
                            let _ = c.flush();
                        }
                    }
                    Err(nix::Error::EINTR) => {}
                    Err(source) => {
                        return Err(InitError::Relay {
                            what: "read the workload's stdout",
                            source,
                        })
                    }
                }
            }
        }
        if status.is_none() {
            // With both pipes closed there is nothing to poll: wait in the
            // kernel rather than spin (a busy init would steal guest CPU).
            let block = stdout.is_none() && ready.is_none();
            status = reap(w.pid, reap_all, block)?;
        }
        if let Some(s) = status {
            if idle || (stdout.is_none() && ready.is_none()) {
                ports.outb(PORT_STATUS, s);
                ports.outb(PORT_EVENT, MARK_EXITED);
                return Ok(s);
            }
        }
    }
}

/// Reaps (waiting for a child to end when `block`); returns the workload's
/// status once it ended.
fn reap(pid: Pid, reap_all: bool, block: bool) -> Result<Option<u8>, InitError> {
    let target = if reap_all { None } else { Some(pid) };
    let flags = if block {
        None
    } else {
        Some(WaitPidFlag::WNOHANG)
    };
    loop {
        match waitpid(target, flags) {
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(s) if s.pid() == Some(pid) => {
                if let Some(b) = status_byte(s) {
                    return Ok(Some(b));
                }
            }
            // An orphan was reaped; look again.
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::ECHILD) => return Err(InitError::Wait(nix::Error::ECHILD)),
            Err(e) => return Err(InitError::Wait(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markers::Recorder;

    fn run_sh(script: &str) -> (u8, Recorder, Vec<u8>, usize) {
        let mut ports = Recorder::default();
        // `sh -c script` stands in for /workload: same pipes, same env.
        let args = vec!["-c".to_string(), script.to_string()];
        let w = start("/bin/sh", &args, &mut ports).unwrap();
        let mut console = Vec::new();
        let mut readies = 0;
        let status = supervise(w, &mut ports, Some(&mut console), || readies += 1, false).unwrap();
        (status, ports, console, readies)
    }

    fn events(r: &Recorder) -> Vec<u8> {
        r.0.iter()
            .filter(|(p, _)| *p == PORT_EVENT)
            .map(|(_, v)| *v)
            .collect()
    }

    #[test]
    fn ready_output_and_exit_are_relayed_in_order() {
        let (status, ports, console, readies) =
            run_sh("printf R >&$ISOLAB_READY_FD; echo '{\"workload\":\"x\",\"ok\":true}'; exit 7");
        assert_eq!(status, 7);
        assert_eq!(readies, 1);
        assert_eq!(events(&ports), [MARK_STARTED, MARK_READY, MARK_EXITED]);
        let out: Vec<u8> = ports
            .0
            .iter()
            .filter(|(p, _)| *p == PORT_STDOUT)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(out, b"{\"workload\":\"x\",\"ok\":true}\n");
        assert_eq!(console, out);
        // The status byte comes right before MARK_EXITED.
        let n = ports.0.len();
        assert_eq!(ports.0[n - 2], (PORT_STATUS, 7));
        assert_eq!(ports.0[n - 1], (PORT_EVENT, MARK_EXITED));
    }

    #[test]
    fn no_ready_byte_means_no_ready_marker_and_signals_map_to_128_plus_n() {
        let (status, ports, _, readies) = run_sh("kill -9 $$");
        assert_eq!(status, 128 + 9);
        assert_eq!(readies, 0);
        assert_eq!(events(&ports), [MARK_STARTED, MARK_EXITED]);
    }

    #[test]
    fn workload_that_closes_its_pipes_early_is_still_waited_for() {
        let (status, ports, console, readies) = run_sh(
            "printf R >&$ISOLAB_READY_FD; eval \"exec $ISOLAB_READY_FD>&-\"; exec >&-; sleep 0.2; exit 4",
        );
        assert_eq!(status, 4);
        assert_eq!(readies, 1);
        assert!(console.is_empty());
        assert_eq!(events(&ports), [MARK_STARTED, MARK_READY, MARK_EXITED]);
    }

    #[test]
    fn missing_program_is_a_spawn_error_naming_it() {
        let mut ports = Recorder::default();
        let e = start("/nonexistent/workload", &[], &mut ports).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/workload"), "{e}");
        assert!(ports.0.is_empty(), "no MARK_STARTED without an exec");
    }
}
