//! Confinement of the monitor's threads, Firecracker's way: each thread
//! gets its own seccomp filter (an allowlist of exactly what that thread
//! does once the guest runs) and loses every capability.
//!
//! | thread | what it does while the guest runs | filter |
//! |---|---|---|
//! | VMM (the caller of [`crate::run`]) | waits on the signalfd and eventfds, samples `/proc/self/smaps` through an fd opened before, kicks and joins vCPU threads, then returns the report | [`ThreadKind::Vmm`] |
//! | vCPU | `KVM_RUN`, device emulation: eventfd and console writes | [`ThreadKind::Vcpu`] |
//! | virtio-net worker | polls and reads/writes the TAP and eventfds | [`ThreadKind::NetWorker`] |
//! | virtio-blk worker | polls eventfds, seeks, reads, writes and flushes the disk | [`ThreadKind::BlockWorker`] |
//!
//! Every thread confines itself ([`confine_current_thread`]) before it
//! touches anything the guest controls: vCPU threads before their first
//! `KVM_RUN`, the VMM thread after spawning them and before letting them
//! run, the net worker before it serves its first queue. No thread is
//! created once the guest runs, so no filter allows `clone`, `execve`,
//! `open` or `socket`.
//!
//! A forbidden syscall is not executed: the filter answers
//! `SECCOMP_RET_TRAP`, and the SIGSYS handler writes one line naming the
//! thread and the syscall to stderr, then ends the whole monitor with exit
//! status [`EXIT_FORBIDDEN_SYSCALL`] (128 + SIGSYS, what a shell shows for
//! a process killed by SIGSYS). Why trap and exit rather than
//! `SECCOMP_RET_KILL_PROCESS`: the kill leaves the parent only "killed by
//! SIGSYS", without the syscall or thread; the trap lets the monitor say
//! which. Why not carry on (returning ENOSYS): a monitor thread making a
//! syscall it never makes is compromised or broken, and its VM must end at
//! once. Nothing is left on the host by the abrupt exit: guest memory, KVM
//! objects and eventfds are process-local, and the TAP belongs to the
//! parent. This is Firecracker's choice too (it traps, logs, and exits
//! with its own code).
//!
//! Confinement is process-wide in effect (filters cannot be removed), so
//! it is for a process that runs one VM: `isolab-vmm`. Once a run in a
//! process was confined ([`enable`]), monitor threads started later in it
//! confine themselves too.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Exit status of a monitor stopped by a forbidden syscall (128 + SIGSYS).
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 128 + libc::SIGSYS;

/// `KVM_RUN`: `_IO(KVMIO = 0xAE, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `futex` operations (without the private and clock flags) threads use:
/// WAIT, WAKE (std locks, glibc's pthread_join on the child tid),
/// WAIT_BITSET and WAKE_BITSET (std's timed waits).
const FUTEX_OPS: [u64; 4] = [0, 1, 9, 10];
/// `futex` op mask without FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256).
const FUTEX_CMD_MASK: u64 = 0x7f;

/// The monitor's kinds of threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that calls [`crate::run`] and drives the VM.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The virtio-net I/O thread.
    NetWorker,
    /// The virtio-blk I/O thread.
    BlockWorker,
}

impl ThreadKind {
    /// Short name, as in the SIGSYS report.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::NetWorker => "virtio-net",
            ThreadKind::BlockWorker => "virtio-blk",
        }
    }

    fn code(self) -> u8 {
        match self {
            ThreadKind::Vmm => 1,
            ThreadKind::Vcpu => 2,
            ThreadKind::NetWorker => 3,
            ThreadKind::BlockWorker => 4,
        }
    }
}

/// Failures confining a thread.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allowlist could not be compiled (a bug in the rules).
    #[error("Failed to compile the {kind} seccomp filter: {reason}")]
    Compile { kind: &'static str, reason: String },
    /// Installing the SIGSYS handler failed.
    #[error("Failed to install the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
    /// Dropping capabilities failed.
    #[error("Failed to drop the capabilities of the {kind} thread")]
    Capabilities {
        kind: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` (or no_new_privs) failed.
    #[error("Failed to install the {kind} seccomp filter")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's kind once confined (0: not confined), read by the
    /// SIGSYS handler: a const-initialised, destructor-free thread local
    /// is plain TLS, safe to read in a signal handler.
    static CONFINED_AS: Cell<u8> = const { Cell::new(0) };
}

/// Turns confinement on for this process: from now on monitor threads
/// confine themselves when they start serving the guest. Irreversible.
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Whether [`enable`] was called in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Whether this thread is confined already.
pub fn current_thread_confined() -> bool {
    CONFINED_AS.with(Cell::get) != 0
}

/// [`confine_current_thread`] if confinement is enabled and this thread is
/// not confined yet; otherwise nothing.
pub fn confine_current_thread_if_enabled(kind: ThreadKind) -> Result<(), SeccompError> {
    if enabled() && !current_thread_confined() {
        confine_current_thread(kind)
    } else {
        Ok(())
    }
}

/// Drops every capability of the calling thread (effective, permitted,
/// inheritable, ambient and the bounding set), sets no_new_privs and
/// installs the filter of `kind`. Other threads are not affected (threads
/// the caller creates afterwards inherit both).
pub fn confine_current_thread(kind: ThreadKind) -> Result<(), SeccompError> {
    install_sigsys_handler()?;
    let program = filter(kind)?;
    drop_capabilities(kind)?;
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })?;
    CONFINED_AS.with(|c| c.set(kind.code()));
    Ok(())
}

fn drop_capabilities(kind: ThreadKind) -> Result<(), SeccompError> {
    let err = |source| SeccompError::Capabilities {
        kind: kind.name(),
        source,
    };
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // clearing the effective set would take away.
    // One prctl per capability: dropping one already gone succeeds; only
    // one this kernel does not know fails, and that one it cannot hold.
    for cap in caps::all() {
        if let Err(e) = caps::drop(None, caps::CapSet::Bounding, cap) {
            if caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false) {
                return Err(err(e));
            }
        }
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(err)?;
    }
    Ok(())
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
            .map_err(SeccompError::Handler);
    });
    result
}

/// Offset of `si_syscall` in `siginfo_t` on x86_64, in 32-bit words:
/// signo, errno, code, padding, then `_sigsys { void *call_addr; int syscall; }`.
const SI_SYSCALL_WORD: usize = 6;
/// `si_code` of a seccomp trap.
const SYS_SECCOMP: i32 = 1;

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work below: plain loads, a stack buffer,
    // write(2) and _exit(2), both of which every filter allows.
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // for a seccomp SIGSYS, si_syscall is filled in at this offset.
    let (code, nr) = unsafe { ((*info).si_code, *(info as *const i32).add(SI_SYSCALL_WORD)) };
    let kind = CONFINED_AS.with(Cell::get);
    let mut line = LineBuf::default();
    line.push(b"isolab-microvm: seccomp stopped the ");
    line.push(match kind {
        1 => b"vmm".as_slice(),
        2 => b"vcpu",
        3 => b"virtio-net",
        4 => b"virtio-blk",
        _ => b"unconfined",
    });
    line.push(b" thread at a forbidden syscall ");
    if code == SYS_SECCOMP {
        line.push_num(i64::from(nr));
        line.push(b" (");
        line.push(syscall_name(i64::from(nr)).as_bytes());
        line.push(b")");
    } else {
        line.push(b"(SIGSYS not from seccomp)");
    }
    line.push(b"; the monitor exits with status 159\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // valid for its length.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_FORBIDDEN_SYSCALL);
    }
}

/// A fixed buffer for the handler's one line (no allocation).
struct LineBuf {
    buf: [u8; 192],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self {
            buf: [0; 192],
            len: 0,
        }
    }
}

impl LineBuf {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = v.saturating_neg();
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Names of syscalls a compromised monitor would reach for first.
pub fn syscall_name(nr: i64) -> &'static str {
    match nr {
        libc::SYS_open => "open",
        libc::SYS_openat => "openat",
        libc::SYS_execve => "execve",
        libc::SYS_execveat => "execveat",
        libc::SYS_fork => "fork",
        libc::SYS_vfork => "vfork",
        libc::SYS_clone => "clone",
        libc::SYS_clone3 => "clone3",
        libc::SYS_socket => "socket",
        libc::SYS_connect => "connect",
        libc::SYS_ptrace => "ptrace",
        libc::SYS_mount => "mount",
        libc::SYS_kill => "kill",
        libc::SYS_unlink | libc::SYS_unlinkat => "unlink",
        libc::SYS_mprotect => "mprotect (executable)",
        libc::SYS_getuid => "getuid",
        libc::SYS_ioctl => "ioctl (a request this thread never makes)",
        libc::SYS_mmap => "mmap (executable or shared)",
        libc::SYS_fcntl => "fcntl",
        libc::SYS_dup | libc::SYS_dup2 | libc::SYS_dup3 => "dup",
        _ => "see ausyscall or /usr/include/asm/unistd_64.h",
    }
}

fn rule(conditions: Vec<SeccompCondition>, kind: ThreadKind) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|e| SeccompError::Compile {
        kind: kind.name(),
        reason: e.to_string(),
    })
}

fn dword(arg: u8, op: Op, value: u64, kind: ThreadKind) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(|e| SeccompError::Compile {
        kind: kind.name(),
        reason: e.to_string(),
    })
}

/// The allowlist of `kind`: syscall -> rules (an empty list allows it with
/// any arguments; otherwise one rule must match).
pub fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let any = |m: &mut BTreeMap<i64, Vec<SeccompRule>>, nrs: &[i64]| {
        for &nr in nrs {
            m.insert(nr, Vec::new());
        }
    };
    // Every thread: memory (anonymous only, never executable), locks,
    // signals it handles, time, its own end, and what a Rust panic needs
    // to print and abort.
    any(
        &mut m,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_sched_yield,
            libc::SYS_restart_syscall,
            libc::SYS_clock_gettime,
            libc::SYS_getrandom,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_write,
        ],
    );
    let anon_private = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    m.insert(
        libc::SYS_mmap,
        vec![rule(
            vec![
                dword(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0, kind)?,
                dword(
                    3,
                    Op::MaskedEq(anon_private | libc::MAP_SHARED as u64),
                    anon_private,
                    kind,
                )?,
            ],
            kind,
        )?],
    );
    // glibc grows a thread's malloc arena with mprotect.
    m.insert(
        libc::SYS_mprotect,
        vec![rule(
            vec![dword(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0, kind)?],
            kind,
        )?],
    );
    let futex = FUTEX_OPS
        .iter()
        .map(|&op| {
            rule(
                vec![dword(1, Op::MaskedEq(FUTEX_CMD_MASK), op, kind)?],
                kind,
            )
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    m.insert(libc::SYS_futex, futex);
    // Rust's debug builds check that an fd is open before closing it.
    m.insert(
        libc::SYS_fcntl,
        vec![rule(
            vec![dword(1, Op::Eq, libc::F_GETFD as u64, kind)?],
            kind,
        )?],
    );
    // A panic that aborts: install SIGABRT's default action and raise it.
    m.insert(
        libc::SYS_rt_sigaction,
        vec![rule(
            vec![dword(0, Op::Eq, libc::SIGABRT as u64, kind)?],
            kind,
        )?],
    );
    let mut tgkill = vec![rule(
        vec![dword(2, Op::Eq, libc::SIGABRT as u64, kind)?],
        kind,
    )?];

    match kind {
        ThreadKind::Vmm => {
            any(
                &mut m,
                &[
                    // The wait: signalfd and eventfds.
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_read,
                    // Re-reading smaps through the fd opened before.
                    libc::SYS_lseek,
                    // Dropping the VM, its vCPU fds, eventfds, devices.
                    libc::SYS_close,
                    // Waiting for vCPU threads to leave KVM_RUN.
                    libc::SYS_nanosleep,
                    libc::SYS_clock_nanosleep,
                ],
            );
            // Kicking vCPU threads out of KVM_RUN.
            tgkill.push(rule(
                vec![dword(
                    2,
                    Op::Eq,
                    crate::vstate::vcpu::kick_signal() as u64,
                    kind,
                )?],
                kind,
            )?);
        }
        ThreadKind::Vcpu => {
            any(
                &mut m,
                &[
                    // The caller's ready hook may close the fd it wrote to.
                    libc::SYS_close,
                ],
            );
            m.insert(
                libc::SYS_ioctl,
                vec![rule(vec![dword(1, Op::Eq, KVM_RUN, kind)?], kind)?],
            );
        }
        ThreadKind::NetWorker | ThreadKind::BlockWorker => {
            // The virtio worker's wait (devices::virtio::worker): poll and
            // read its eventfds (and the TAP); close on the way out.
            any(
                &mut m,
                &[
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_read,
                    libc::SYS_close,
                ],
            );
            if kind == ThreadKind::BlockWorker {
                // The disk: seek, read, write, flush (its fd was opened
                // before).
                any(&mut m, &[libc::SYS_lseek, libc::SYS_fdatasync]);
            }
        }
    }
    m.insert(libc::SYS_tgkill, tgkill);
    Ok(m)
}

/// The compiled filter of `kind`: allow what [`rules`] lists, trap the rest.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let compile_err = |reason: String| SeccompError::Compile {
        kind: kind.name(),
        reason,
    };
    let f = SeccompFilter::new(
        rules(kind)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| compile_err(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| compile_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_and_forbids_process_creation() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::NetWorker,
            ThreadKind::BlockWorker,
        ] {
            let r = rules(kind).unwrap();
            for nr in [
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_execve,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_socket,
                libc::SYS_ptrace,
            ] {
                assert!(!r.contains_key(&nr), "{}: {nr} allowed", kind.name());
            }
            assert!(filter(kind).unwrap().len() > 10);
        }
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        assert!(vcpu.contains_key(&libc::SYS_ioctl), "KVM_RUN");
        assert!(!rules(ThreadKind::Vmm)
            .unwrap()
            .contains_key(&libc::SYS_ioctl));
    }

    #[test]
    fn the_report_line_names_the_syscall_without_allocating() {
        let mut l = LineBuf::default();
        l.push(b"syscall ");
        l.push_num(41);
        l.push(b" ");
        l.push_num(-7);
        assert_eq!(&l.buf[..l.len], b"syscall 41 -7");
        assert_eq!(syscall_name(libc::SYS_socket), "socket");
        let mut full = LineBuf::default();
        full.push(&[b'x'; 300]);
        assert_eq!(full.len, 192, "a long line is cut, not overrun");
    }
}
