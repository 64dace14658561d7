//! The launcher's reader: one thread per process, not one per container,
//! that watches every running container's ready, stdout and stderr pipes
//! with epoll: it timestamps the ready byte as it arrives and collects
//! stdout and stderr (copying stderr to the launcher's unless `quiet`),
//! until everything in the container has closed all three.
//!
//! Why one thread: a container's init is cloned from the launcher
//! process, so every clone copies the launcher's mappings and page
//! tables. A reader thread per running container (each with its own
//! stack) made that copy, and so every launch, grow with the number of
//! containers already running: `clone` took 0.6 ms with one running and
//! 4.6 ms with two hundred in a density run.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use crate::phases;

/// Most of the workload's stdout kept (its result line is short).
const STDOUT_CAP: usize = 4 << 20;
/// Most of the workload's stderr kept (it is also copied to the launcher's
/// stderr unless `quiet_stderr`).
const STDERR_CAP: usize = 64 << 10;

/// What the reader has seen of one container, and a condvar notified on
/// every change.
pub(crate) type Shared = (Mutex<Monitor>, Condvar);

#[derive(Debug, Default)]
pub(crate) struct Monitor {
    pub ready_at: Option<Instant>,
    /// The same moment on the phases' clock.
    pub ready_ns: Option<u64>,
    /// The ready pipe was closed (with or without the ready byte).
    pub ready_closed: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// All three pipes are closed: nothing more will arrive.
    pub done: bool,
}

/// One container's pipes: ready, stdout, stderr (`None` once closed).
struct Watch {
    files: [Option<File>; 3],
    quiet: bool,
    shared: Arc<Shared>,
}

struct Reader {
    epoll: OwnedFd,
    watched: Mutex<HashMap<u64, Watch>>,
    next: AtomicU64,
}

static READER: OnceLock<Result<Arc<Reader>, i32>> = OnceLock::new();

fn reader() -> nix::Result<Arc<Reader>> {
    READER
        .get_or_init(|| {
            // SAFETY: epoll_create1 takes a flag and returns a new fd or -1.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(nix::errno::Errno::last_raw());
            }
            // SAFETY: `fd` was just returned by the kernel and is owned by
            // nothing else.
            let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
            let r = Arc::new(Reader {
                epoll,
                watched: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            });
            let looped = Arc::clone(&r);
            std::thread::Builder::new()
                .name("isolab-reader".into())
                .spawn(move || looped.run())
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EAGAIN))?;
            Ok(r)
        })
        .clone()
        .map_err(nix::Error::from_raw)
}

/// Starts watching one container's pipes; `shared` is updated (and its
/// condvar notified) as data arrives, and `done` set once all are closed.
pub(crate) fn watch(
    ready: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    quiet: bool,
    shared: Arc<Shared>,
) -> nix::Result<()> {
    let r = reader()?;
    let token = r.next.fetch_add(1, Ordering::Relaxed);
    let raw = [ready.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
    let mut watched = r.watched.lock().unwrap_or_else(|e| e.into_inner());
    watched.insert(
        token,
        Watch {
            files: [
                Some(File::from(ready)),
                Some(File::from(stdout)),
                Some(File::from(stderr)),
            ],
            quiet,
            shared,
        },
    );
    for (i, fd) in raw.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token << 2 | i as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the call; `fd` is open
        // (owned by the entry just inserted, under the lock).
        let rc = unsafe { libc::epoll_ctl(r.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, *fd, &mut ev) };
        if rc != 0 {
            let e = nix::Error::last();
            if let Some(w) = watched.remove(&token) {
                for f in w.files.iter().flatten() {
                    r.forget(f);
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

impl Reader {
    fn forget(&self, f: &File) {
        // SAFETY: removing an fd from the epoll set; a null event is
        // allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                f.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
    }

    fn run(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: the kernel writes at most `events.len()` entries into
            // `events`, which outlives the call.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            if n < 0 {
                // EINTR; nothing else is expected of a valid epoll fd.
                continue;
            }
            for ev in &events[..n as usize] {
                let (token, i) = (ev.u64 >> 2, (ev.u64 & 3) as usize);
                self.on_event(token, i, &mut buf);
            }
        }
    }

    fn on_event(&self, token: u64, i: usize, buf: &mut [u8]) {
        let (now, now_ns) = (Instant::now(), phases::now_ns());
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = watched.get_mut(&token) else {
            return;
        };
        let n = match w.files[i].as_mut().map(|f| f.read(buf)) {
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => return,
            _ => 0,
        };
        let (lock, cvar) = &*w.shared;
        let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
        if n == 0 {
            if let Some(f) = w.files[i].take() {
                self.forget(&f);
            }
            if i == 0 {
                m.ready_closed = true;
            }
            if w.files.iter().all(Option::is_none) {
                m.ready_closed = true;
                m.done = true;
                cvar.notify_all();
                drop(m);
                watched.remove(&token);
                return;
            }
            cvar.notify_all();
            return;
        }
        let data = &buf[..n];
        match i {
            0 => {
                if m.ready_at.is_none() && data.contains(&b'R') {
                    m.ready_at = Some(now);
                    m.ready_ns = Some(now_ns);
                }
                cvar.notify_all();
            }
            1 => {
                let room = STDOUT_CAP.saturating_sub(m.stdout.len());
                m.stdout.extend_from_slice(&data[..n.min(room)]);
            }
            _ => {
                let room = STDERR_CAP.saturating_sub(m.stderr.len());
                m.stderr.extend_from_slice(&data[..n.min(room)]);
                drop(m);
                if !w.quiet {
                    let _ = std::io::stderr().write_all(data);
                }
            }
        }
    }
}
