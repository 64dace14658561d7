//! The I/O thread every virtio device here runs, and the device's handle
//! on it.
//!
//! The thread starts with the device, before the guest runs, and waits
//! for activation: no thread is ever created while the guest runs, so a
//! confined vCPU thread (which activates the device) needs no `clone`. On
//! activation it confines itself ([`crate::seccomp`]) and serves the
//! queues until the device is reset (the stop eventfd), then acknowledges
//! that it let go of them. Dropping the handle stops and joins it.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::ThreadKind;

/// Stack of a worker thread: small, so that it can never be backed by a
/// 2 MiB transparent huge page.
const WORKER_STACK_SIZE: usize = 256 << 10;

/// What a device's worker does with its queues once activated.
pub(crate) trait Serve: Send + 'static {
    /// What it serves between DRIVER_OK and a reset (memory, queues,
    /// interrupt).
    type Active: Send + 'static;
    /// Its seccomp filter; its name names the thread.
    const KIND: ThreadKind;
    /// Serves `active` until [`Wakeups::next`] says to stop.
    fn serve(&mut self, active: &mut Self::Active, wake: &Wakeups);
}

/// Failures starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Creating (or cloning) an eventfd failed.
    #[error("Could not create the {what} eventfd")]
    EventFd {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Starting the thread failed.
    #[error("Could not start the {name} thread")]
    Spawn {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The worker's two eventfds: QueueNotify (kick) and reset (stop).
#[derive(Debug)]
pub(crate) struct Wakeups {
    kick: EventFd,
    stop: EventFd,
}

/// What a [`Wakeups::next`] found ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    /// QueueNotify (the kicks are consumed).
    pub kick: bool,
    /// The caller's extra fd (false when none was given).
    pub extra: bool,
}

impl Wakeups {
    /// Waits until the kick or the stop eventfd, or `extra` (when given),
    /// is readable, and consumes the kicks; `None` when serving must end:
    /// the device was reset (the stop eventfd is left set for the
    /// acknowledgement that follows) or the wait failed (EINTR is
    /// retried).
    pub fn next(&self, extra: Option<BorrowedFd<'_>>) -> Option<Ready> {
        // SAFETY: both eventfds are owned by `self` and outlive this poll
        // set, which is dropped before the function returns.
        let (kick, stop) = unsafe {
            (
                BorrowedFd::borrow_raw(self.kick.as_raw_fd()),
                BorrowedFd::borrow_raw(self.stop.as_raw_fd()),
            )
        };
        loop {
            let mut fds = [
                PollFd::new(kick, PollFlags::POLLIN),
                PollFd::new(stop, PollFlags::POLLIN),
                PollFd::new(extra.unwrap_or(kick), PollFlags::POLLIN),
            ];
            let n = if extra.is_some() { 3 } else { 2 };
            match poll(&mut fds[..n], PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => return None,
            }
            let ready = |i: usize| i < n && fds[i].revents().is_some_and(|r| !r.is_empty());
            if ready(1) {
                return None;
            }
            if ready(0) {
                let _ = self.kick.read();
            }
            return Some(Ready {
                kick: ready(0),
                extra: ready(2),
            });
        }
    }
}

/// Messages to the worker thread.
enum Command<A> {
    /// Serve this; answer once confined and serving (or why not).
    Start(A, mpsc::Sender<Result<(), String>>),
    /// Acknowledge that the last [`Command::Start`] is no longer served.
    Stopped(mpsc::Sender<()>),
}

/// The device's handle on its worker thread.
pub(crate) struct Worker<A> {
    name: &'static str,
    kick: EventFd,
    stop: EventFd,
    commands: Option<mpsc::Sender<Command<A>>>,
    thread: Option<JoinHandle<()>>,
    serving: bool,
}

impl<A> fmt::Debug for Worker<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("kick", &self.kick)
            .field("stop", &self.stop)
            .field("serving", &self.serving)
            .finish_non_exhaustive()
    }
}

impl<A: Send + 'static> Worker<A> {
    /// Starts the (idle) thread that will run `server`.
    pub fn spawn<S: Serve<Active = A>>(mut server: S) -> Result<Worker<A>, WorkerError> {
        let name = S::KIND.name();
        let evt = |what| {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| WorkerError::EventFd { what, source })
        };
        let kick = evt("queue notify")?;
        let stop = evt("stop")?;
        let clone = |e: &EventFd, what| {
            e.try_clone()
                .map_err(|source| WorkerError::EventFd { what, source })
        };
        let wake = Wakeups {
            kick: clone(&kick, "queue notify")?,
            stop: clone(&stop, "stop")?,
        };
        let (commands, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || run(&mut server, &wake, inbox))
            .map_err(|source| WorkerError::Spawn { name, source })?;
        Ok(Worker {
            name,
            kick,
            stop,
            commands: Some(commands),
            thread: Some(thread),
            serving: false,
        })
    }
}

impl<A> Worker<A> {
    /// Hands `active` to the thread and waits until it is confined and
    /// serving (or why not).
    pub fn start(&mut self, active: A) -> Result<(), String> {
        let (reply, replied) = mpsc::channel();
        let gone = || format!("The {} thread is gone", self.name);
        let commands = self.commands.as_ref().ok_or_else(gone)?;
        commands
            .send(Command::Start(active, reply))
            .map_err(|_| gone())?;
        replied.recv().map_err(|_| gone())??;
        self.serving = true;
        Ok(())
    }

    /// QueueNotify: wakes the thread.
    pub fn kick(&self) {
        let _ = self.kick.write(1);
    }

    /// Stops serving and waits until the thread let go of what it served.
    pub fn stop_serving(&mut self) {
        if !std::mem::take(&mut self.serving) {
            return;
        }
        let (ack, acked) = mpsc::channel();
        let _ = self.stop.write(1);
        if let Some(c) = &self.commands {
            if c.send(Command::Stopped(ack)).is_ok() {
                let _ = acked.recv();
            }
        }
    }
}

impl<A> Drop for Worker<A> {
    fn drop(&mut self) {
        self.stop_serving();
        // Closing the channel ends the thread's wait.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's body: waits for activation, confines itself, serves.
fn run<S: Serve>(server: &mut S, wake: &Wakeups, inbox: mpsc::Receiver<Command<S::Active>>) {
    while let Ok(cmd) = inbox.recv() {
        match cmd {
            Command::Start(mut active, reply) => {
                if let Err(e) = crate::seccomp::confine_current_thread_if_enabled(S::KIND) {
                    let _ = reply.send(Err(format!(
                        "Could not confine the {} thread: {e}",
                        S::KIND.name()
                    )));
                    return;
                }
                let _ = reply.send(Ok(()));
                server.serve(&mut active, wake);
            }
            Command::Stopped(ack) => {
                let _ = wake.stop.read();
                let _ = ack.send(());
            }
        }
    }
}
