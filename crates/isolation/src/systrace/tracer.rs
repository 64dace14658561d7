//! The tracer itself: ptrace(2) in seize mode over a set of host threads,
//! stopping at every system-call entry and counting it by name.
//!
//! Sequence:
//!
//! 1. **Attach**: [`Tracer::seize`] takes every thread of each given process
//!    (`/proc/PID/task`, listed again until no new thread appears) with
//!    `PTRACE_SEIZE` + `PTRACE_INTERRUPT`; or [`Tracer::spawn`] forks a
//!    command that waits on a pipe until it is seized, then execs (counting
//!    starts at its `execve`).
//! 2. **Follow**: options `TRACESYSGOOD | TRACECLONE | TRACEFORK |
//!    TRACEVFORK | TRACEEXEC` make new threads and children tracees too.
//! 3. **Count**: at each syscall stop, `PTRACE_GET_SYSCALL_INFO` says entry
//!    or exit and under which ABI; entries are counted by name.
//! 4. **Detach**: when every tracee has ended or the caller's stop flag is
//!    set, each remaining tracee is interrupted and `PTRACE_DETACH`ed at its
//!    next stop, with any pending signal passed on. Group-stopped tracees
//!    stay stopped (job control is theirs), every other one runs on.
//!
//! ptrace requests must come from the thread that attached, so a `Tracer`
//! is used on one thread ([`TracerError::WrongThread`] otherwise). Waits
//! use `__WNOTHREAD`, so children of other threads of this process are
//! never reaped here. Do not trace children of your own process from
//! another thread of it: the kernel then lets the parent's `waitpid` see
//! ptrace stops and reap the tracee (kernel/exit.c, `wait_consider_task`);
//! run [`super::TracerProcess`] (a separate tracer process) instead. If the
//! tracer dies, the kernel detaches its tracees and they run on.
//!
//! A tracee stops twice per call, so tracing slows it down many times:
//! never take timing figures from a traced run.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::unistd::Pid;

use super::profile::{syscall_name, Exit, NotTraced, SyscallProfile, ThreadCounts};

/// How long detaching waits for every tracee to reach a stop.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Failures of the tracer.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The threads of a process could not be listed.
    #[error("Cannot list the threads of process {pid}")]
    Threads {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// No thread could be traced at all.
    #[error("None of the {asked} threads asked for could be traced (first: tid {tid}: {reason})")]
    NothingTraced {
        asked: usize,
        tid: u32,
        reason: String,
    },
    /// The command line or environment holds a NUL byte.
    #[error("Cannot run {program:?}: an argument or environment variable holds a NUL byte")]
    NulByte { program: PathBuf },
    /// The pipe that holds the spawned command until it is seized.
    #[error("Cannot create the start pipe")]
    Pipe(#[source] Errno),
    /// fork(2) failed.
    #[error("Cannot fork the command to trace")]
    Fork(#[source] Errno),
    /// The spawned command could not be seized (it was killed and reaped).
    #[error("Cannot seize the spawned command (pid {pid})")]
    SeizeSpawned {
        pid: u32,
        #[source]
        source: Errno,
    },
    /// The spawned command could not be released to exec.
    #[error("Cannot release the spawned command (pid {pid})")]
    Release {
        pid: u32,
        #[source]
        source: Errno,
    },
    /// waitpid(2) failed in a way that is not "interrupted" or "no child".
    #[error("Waiting for the tracees failed")]
    Wait(#[source] Errno),
    /// `run` was called on another thread than the one that attached.
    #[error("The tracer runs on thread {running} but attached on thread {attached}: ptrace requests must come from the attaching thread")]
    WrongThread { attached: i32, running: i32 },
}

/// A command to spawn under the tracer.
#[derive(Debug)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Becomes the command's stdout; `None` inherits this process's.
    pub stdout: Option<OwnedFd>,
    /// Becomes the command's stderr; `None` inherits this process's.
    pub stderr: Option<OwnedFd>,
}

impl SpawnSpec {
    /// `program` with `args`, inheriting stdout and stderr.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdout: None,
            stderr: None,
        }
    }
}

/// The ptrace options of every tracee (auto-attached ones inherit them).
fn options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACEEXEC
}

/// One wait status, decoded (see ptrace(2), "Stopped states").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Exited(i32, i32),
    Signaled(i32, i32),
    /// Syscall-enter or -exit stop (`SIGTRAP | 0x80` with TRACESYSGOOD).
    Syscall(i32),
    /// `PTRACE_EVENT_*` stop: tid, stop signal, event.
    Event(i32, i32, i32),
    /// Signal-delivery stop: tid, signal to pass on.
    Signal(i32, i32),
    /// Anything else (e.g. continued): nothing to do.
    Other(i32),
}

/// Decodes a raw `waitpid` status of `tid`.
pub(crate) fn decode(tid: i32, st: i32) -> Status {
    if libc::WIFEXITED(st) {
        Status::Exited(tid, libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        Status::Signaled(tid, libc::WTERMSIG(st))
    } else if libc::WIFSTOPPED(st) {
        let sig = libc::WSTOPSIG(st);
        let event = (st >> 16) & 0xffff;
        if sig == libc::SIGTRAP | 0x80 {
            Status::Syscall(tid)
        } else if event != 0 {
            Status::Event(tid, sig, event)
        } else {
            Status::Signal(tid, sig)
        }
    } else {
        Status::Other(tid)
    }
}

/// Stop signals: an event stop with one of these is a group-stop.
fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// The numeric ids of a process's threads under `proc_root`.
pub fn list_threads(proc_root: &Path, pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(proc_root.join(pid.to_string()).join("task"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// A numeric field of `/proc/<tid>/status` text (`Tgid`, `TracerPid`).
pub(crate) fn status_number(status: &str, field: &str) -> Option<u32> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().parse().ok())?
    })
}

fn read_status(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/status")).ok()
}

fn read_comm(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// Restarts a stopped tracee with one raw ptrace request. ESRCH (it died
/// meanwhile) is not an error: its exit status is still to come.
fn request(req: libc::c_uint, tid: i32, sig: i32) {
    // SAFETY: PTRACE_SYSCALL / PTRACE_LISTEN / PTRACE_DETACH take no address
    // and a signal number as data; no memory is passed to the kernel.
    unsafe {
        libc::ptrace(
            req,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            sig as libc::c_long,
        );
    }
}

#[derive(Debug, Clone, Copy)]
struct Live {
    /// Attached to a running thread and no syscall entry seen yet: its
    /// first entry may be `restart_syscall`, caused by our interrupt.
    fresh: bool,
}

/// A tracing pass in progress (see the module docs for the sequence).
#[derive(Debug)]
pub struct Tracer {
    live: HashMap<i32, Live>,
    records: BTreeMap<u32, ThreadCounts>,
    not_traced: Vec<NotTraced>,
    root: Option<i32>,
    /// False in spawn mode until the command's `execve`.
    counting: bool,
    exit: Option<Exit>,
    started: Instant,
    owner: i32,
}

impl Tracer {
    fn empty(counting: bool) -> Self {
        Self {
            live: HashMap::new(),
            records: BTreeMap::new(),
            not_traced: Vec::new(),
            root: None,
            counting,
            exit: None,
            started: Instant::now(),
            owner: nix::unistd::gettid().as_raw(),
        }
    }

    /// Seizes every thread of each process in `pids`. Threads that cannot
    /// be traced are recorded in the profile's `not_traced`; it is an error
    /// only when none can.
    pub fn seize(pids: &[u32]) -> Result<Self, TracerError> {
        let mut t = Self::empty(true);
        let mut asked = 0usize;
        for &pid in pids {
            loop {
                let tids = match list_threads(Path::new("/proc"), pid) {
                    Ok(tids) => tids,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        asked += 1;
                        t.not_traced.push(NotTraced {
                            tid: pid,
                            reason: "no such process".into(),
                        });
                        break;
                    }
                    Err(source) => return Err(TracerError::Threads { pid, source }),
                };
                let new: Vec<u32> = tids
                    .into_iter()
                    .filter(|tid| {
                        !t.live.contains_key(&(*tid as i32))
                            && !t.not_traced.iter().any(|n| n.tid == *tid)
                    })
                    .collect();
                if new.is_empty() {
                    break;
                }
                asked += new.len();
                for tid in new {
                    t.attach_running(tid);
                }
            }
        }
        if t.live.is_empty() {
            let first = t.not_traced.first().cloned().unwrap_or(NotTraced {
                tid: 0,
                reason: "no process given".into(),
            });
            return Err(TracerError::NothingTraced {
                asked,
                tid: first.tid,
                reason: first.reason,
            });
        }
        Ok(t)
    }

    fn attach_running(&mut self, tid: u32) {
        let pid = Pid::from_raw(tid as i32);
        let result = ptrace::seize(pid, options()).and_then(|()| ptrace::interrupt(pid));
        match result {
            Ok(()) => {
                self.live.insert(tid as i32, Live { fresh: true });
                self.record(tid as i32);
            }
            Err(e) => {
                let tracer = read_status(tid as i32)
                    .and_then(|s| status_number(&s, "TracerPid"))
                    .filter(|&p| p != 0);
                let reason = match tracer {
                    Some(p) => format!("already traced by {p}"),
                    None => format!("{e}"),
                };
                self.not_traced.push(NotTraced { tid, reason });
            }
        }
    }

    /// Forks `spec`, seizes it before it execs, and lets it exec. Counting
    /// starts at its `execve`. Returns the tracer and the command's pid; the
    /// command is this thread's child and [`Tracer::run`] reaps it.
    pub fn spawn(spec: SpawnSpec) -> Result<(Self, u32), TracerError> {
        let nul = || TracerError::NulByte {
            program: spec.program.clone(),
        };
        let cstr = |b: &[u8]| CString::new(b).map_err(|_| nul());
        let prog = cstr(spec.program.as_os_str().as_bytes())?;
        let mut argv = vec![prog.clone()];
        for a in &spec.args {
            argv.push(cstr(a.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstr(&kv)?);
        }
        let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
        let (go_r, go_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(TracerError::Pipe)?;
        let out_fd = spec.stdout.as_ref().map(AsRawFd::as_raw_fd);
        let err_fd = spec.stderr.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: sigemptyset initialises the set it is given.
        let empty_mask = unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            set
        };
        // SAFETY: the child only makes async-signal-safe calls (dup2,
        // signal, sigprocmask, read, execve, _exit) on memory prepared
        // before the fork, so the other threads' locks cannot bite it.
        match unsafe { nix::unistd::fork() }.map_err(TracerError::Fork)? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: see the fork above; every pointer is to memory
                // owned by this (copied) stack frame.
                unsafe {
                    if let Some(fd) = out_fd {
                        libc::dup2(fd, 1);
                    }
                    if let Some(fd) = err_fd {
                        libc::dup2(fd, 2);
                    }
                    // What std::process::Command does too: Rust ignores
                    // SIGPIPE, and an ignored signal survives exec.
                    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                    libc::sigprocmask(libc::SIG_SETMASK, &empty_mask, std::ptr::null_mut());
                    let mut byte = 0u8;
                    // Returns once the tracer has seized us (or the pipe closed).
                    libc::read(go_r.as_raw_fd(), (&raw mut byte).cast(), 1);
                    libc::execve(prog.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
                    libc::_exit(127)
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(go_r);
                drop(spec);
                let pid = child.as_raw() as u32;
                let abandon = |source| {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(child, None);
                    source
                };
                ptrace::seize(child, options())
                    .and_then(|()| ptrace::interrupt(child))
                    .map_err(|source| abandon(TracerError::SeizeSpawned { pid, source }))?;
                let mut t = Self::empty(false);
                t.root = Some(child.as_raw());
                t.live.insert(child.as_raw(), Live { fresh: false });
                t.record(child.as_raw());
                nix::unistd::write(&go_w, b"g")
                    .map_err(|source| abandon(TracerError::Release { pid, source }))?;
                Ok((t, pid))
            }
        }
    }

    /// Thread ids traced right now.
    pub fn traced(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.live.keys().map(|&t| t as u32).collect();
        v.sort_unstable();
        v
    }

    /// Threads asked for that could not be traced.
    pub fn not_traced(&self) -> &[NotTraced] {
        &self.not_traced
    }

    /// Runs until every tracee has ended or `stop` is set, then detaches
    /// from the rest. To stop a tracer blocked in `waitpid`, set `stop` and
    /// send its thread a signal whose handler is installed without
    /// `SA_RESTART` (the `isolab-trace` binary does this).
    pub fn run(mut self, stop: &AtomicBool) -> Result<SyscallProfile, TracerError> {
        let running = nix::unistd::gettid().as_raw();
        if running != self.owner {
            return Err(TracerError::WrongThread {
                attached: self.owner,
                running,
            });
        }
        while !self.live.is_empty() && !stop.load(Ordering::SeqCst) {
            match wait_any(false) {
                Ok(Some(st)) => self.on_status(st),
                Ok(None) | Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => self.live.clear(),
                Err(e) => {
                    self.detach_all();
                    return Err(TracerError::Wait(e));
                }
            }
        }
        self.detach_all();
        Ok(self.finish())
    }

    fn record(&mut self, tid: i32) {
        let tgid = read_status(tid)
            .and_then(|s| status_number(&s, "Tgid"))
            .unwrap_or(tid as u32);
        let comm = read_comm(tid);
        self.records.entry(tid as u32).or_insert(ThreadCounts {
            tid: tid as u32,
            tgid,
            comm,
            syscalls: BTreeMap::new(),
        });
    }

    /// A tracee reported before we knew of it (a new child's first stop can
    /// beat its parent's fork event).
    fn adopt(&mut self, tid: i32) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.live.entry(tid) {
            e.insert(Live { fresh: false });
            self.record(tid);
        }
    }

    fn ended(&mut self, tid: i32, exit: Exit) {
        self.live.remove(&tid);
        if self.root == Some(tid) {
            self.exit = Some(exit);
        }
    }

    fn on_syscall(&mut self, tid: i32) {
        let Some(info) = syscall_info(tid) else {
            return;
        };
        if info.op != libc::PTRACE_SYSCALL_INFO_ENTRY {
            return;
        }
        // SAFETY: op == ENTRY, so the kernel filled the `entry` member.
        let nr = unsafe { info.u.entry.nr };
        let name = syscall_name(info.arch, nr);
        let fresh = self
            .live
            .get_mut(&tid)
            .map(|l| std::mem::replace(&mut l.fresh, false))
            .unwrap_or(false);
        if fresh && name == "restart_syscall" {
            return;
        }
        if !self.counting && self.root == Some(tid) && (name == "execve" || name == "execveat") {
            self.counting = true;
        }
        if self.counting {
            self.record(tid);
            if let Some(r) = self.records.get_mut(&(tid as u32)) {
                *r.syscalls.entry(name).or_insert(0) += 1;
            }
        }
    }

    fn on_status(&mut self, st: Status) {
        match st {
            Status::Exited(tid, code) => self.ended(tid, Exit::Code(code)),
            Status::Signaled(tid, sig) => self.ended(tid, Exit::Signal(sig)),
            Status::Syscall(tid) => {
                self.adopt(tid);
                self.on_syscall(tid);
                request(libc::PTRACE_SYSCALL, tid, 0);
            }
            Status::Event(tid, sig, event) => {
                self.adopt(tid);
                match event {
                    libc::PTRACE_EVENT_STOP if is_stop_signal(sig) => {
                        // Group-stop: stay stopped until SIGCONT, as untraced.
                        request(libc::PTRACE_LISTEN, tid, 0);
                        return;
                    }
                    libc::PTRACE_EVENT_FORK
                    | libc::PTRACE_EVENT_VFORK
                    | libc::PTRACE_EVENT_CLONE => {
                        if let Ok(new) = ptrace::getevent(Pid::from_raw(tid)) {
                            self.adopt(new as i32);
                        }
                    }
                    libc::PTRACE_EVENT_EXEC => {
                        // A non-leader thread that execs takes the leader's
                        // tid; its old tid never reports again.
                        if let Ok(former) = ptrace::getevent(Pid::from_raw(tid)) {
                            if former as i32 != tid {
                                self.live.remove(&(former as i32));
                            }
                        }
                        if let Some(r) = self.records.get_mut(&(tid as u32)) {
                            r.comm = read_comm(tid);
                        }
                    }
                    _ => {}
                }
                request(libc::PTRACE_SYSCALL, tid, 0);
            }
            Status::Signal(tid, sig) => {
                self.adopt(tid);
                request(libc::PTRACE_SYSCALL, tid, sig);
            }
            Status::Other(_) => {}
        }
    }

    fn on_status_detaching(&mut self, st: Status) {
        let (tid, sig) = match st {
            Status::Exited(tid, code) => return self.ended(tid, Exit::Code(code)),
            Status::Signaled(tid, sig) => return self.ended(tid, Exit::Signal(sig)),
            Status::Other(_) => return,
            Status::Syscall(tid) => {
                self.on_syscall(tid);
                (tid, 0)
            }
            Status::Event(tid, _, event) => {
                if matches!(
                    event,
                    libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE
                ) {
                    // The new tracee reports its first stop later: detach it then.
                    if let Ok(new) = ptrace::getevent(Pid::from_raw(tid)) {
                        self.adopt(new as i32);
                    }
                }
                (tid, 0)
            }
            Status::Signal(tid, sig) => (tid, sig),
        };
        request(libc::PTRACE_DETACH, tid, sig);
        self.live.remove(&tid);
    }

    fn detach_all(&mut self) {
        for &tid in self.live.keys() {
            let _ = ptrace::interrupt(Pid::from_raw(tid));
        }
        let deadline = Instant::now() + DETACH_TIMEOUT;
        while !self.live.is_empty() && Instant::now() < deadline {
            match wait_any(true) {
                Ok(Some(st)) => self.on_status_detaching(st),
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    fn finish(self) -> SyscallProfile {
        let mut left: Vec<u32> = self.live.keys().map(|&t| t as u32).collect();
        left.sort_unstable();
        SyscallProfile {
            threads: self.records.into_values().collect(),
            not_traced: self.not_traced,
            left_attached: left,
            exit: self.exit,
            traced_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// `PTRACE_GET_SYSCALL_INFO` of a tracee in a syscall stop. Not nix's
/// `ptrace::syscall_info`: nix 0.30 passes 0 as the buffer size, so the
/// kernel copies nothing and the struct stays uninitialised.
fn syscall_info(tid: i32) -> Option<libc::ptrace_syscall_info> {
    // SAFETY: all-zero bytes are a valid ptrace_syscall_info (plain integers
    // and a union of them).
    let mut info: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::ptrace_syscall_info>();
    // SAFETY: the kernel writes at most `size` bytes (passed as addr) into
    // `info`, which is that large and lives on this stack.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_SYSCALL_INFO,
            tid,
            size as *mut libc::c_void,
            (&raw mut info).cast::<libc::c_void>(),
        )
    };
    (r > 0).then_some(info)
}

/// `waitpid(-1, __WALL | __WNOTHREAD [| WNOHANG])`, decoded by hand so a
/// stop by a real-time signal (which nix's `WaitStatus` cannot represent)
/// is never lost.
fn wait_any(nohang: bool) -> Result<Option<Status>, Errno> {
    let mut st: libc::c_int = 0;
    let flags = libc::__WALL | libc::__WNOTHREAD | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: waitpid writes only to `st`, a valid c_int on this stack.
    let r = unsafe { libc::waitpid(-1, &mut st, flags) };
    match r {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        tid => Ok(Some(decode(tid, st))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Raw statuses as the kernel builds them (include/uapi/linux/wait.h).
    fn stopped(sig: i32, event: i32) -> i32 {
        (event << 16) | (sig << 8) | 0x7f
    }

    #[test]
    fn wait_statuses_decode_into_the_stops_of_ptrace_2() {
        assert_eq!(decode(5, 3 << 8), Status::Exited(5, 3));
        assert_eq!(decode(5, libc::SIGKILL), Status::Signaled(5, libc::SIGKILL));
        assert_eq!(
            decode(5, stopped(libc::SIGTRAP | 0x80, 0)),
            Status::Syscall(5)
        );
        assert_eq!(
            decode(5, stopped(libc::SIGTRAP, libc::PTRACE_EVENT_CLONE)),
            Status::Event(5, libc::SIGTRAP, libc::PTRACE_EVENT_CLONE)
        );
        assert_eq!(
            decode(5, stopped(libc::SIGSTOP, libc::PTRACE_EVENT_STOP)),
            Status::Event(5, libc::SIGSTOP, libc::PTRACE_EVENT_STOP)
        );
        // A real-time signal stop survives decoding (nix would refuse it).
        assert_eq!(decode(5, stopped(40, 0)), Status::Signal(5, 40));
        assert_eq!(decode(5, 0xffff), Status::Other(5));
        assert!(is_stop_signal(libc::SIGTTOU) && !is_stop_signal(libc::SIGTRAP));
    }

    #[test]
    fn status_fields_and_thread_lists_come_from_a_proc_tree() {
        let text = "Name:\tworkload\nTgid:\t42\nPid:\t43\nTracerPid:\t0\n";
        assert_eq!(status_number(text, "Tgid"), Some(42));
        assert_eq!(status_number(text, "TracerPid"), Some(0));
        assert_eq!(status_number(text, "Ppid"), None);
        let dir = tempfile::tempdir().unwrap();
        for tid in ["42", "43", "100"] {
            std::fs::create_dir_all(dir.path().join("42/task").join(tid)).unwrap();
        }
        assert_eq!(list_threads(dir.path(), 42).unwrap(), [42, 43, 100]);
        assert!(list_threads(dir.path(), 7).is_err());
    }
}
