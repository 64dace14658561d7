//! The namespaces of a container and the one clone that creates them.
//!
//! pid, mount, uts and ipc (plus user, when asked) are created by a single
//! clone with all flags, crun's fast path: no intermediate process. The
//! network namespace is made concurrently by a launcher thread, which also
//! runs the network hook on it, and joined by the child before it mounts
//! `/sys` ([`new_netns`]), unless the container has a user namespace (its
//! network namespace must belong to it): then it is in the clone too. The cgroup namespace is unshared by the
//! child after it joined its cgroup, so the namespace's root is the
//! instance cgroup.
//!
//! Where init has no user namespace, it shares the launcher's memory
//! (`CLONE_VM`) on a stack of its own
//! ([`ChildStack`]), made by a keeper thread that waits in the clone like a
//! `vfork` parent for as long as init lives ([`Keeper`]): no page
//! tables are copied and the launcher's threads take no copy-on-write
//! faults afterwards. On this host, where every new address space is
//! expensive, that copy and its faults were the largest piece of the
//! clone (`docs/design.md`, "Init shares the launcher's memory").

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::child;
use crate::plan::ChildPlan;
use crate::syscall::LinuxSyscall;

/// Stack of the cloned child (init's loop and the setup run on it).
const STACK_SIZE: usize = 256 * 1024;

/// The clone's flags; without `CLONE_NEWNET` when the launcher makes the
/// network namespace concurrently ([`new_netns`]).
pub(crate) fn clone_flags(user_namespace: bool, netns_in_clone: bool) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if netns_in_clone {
        f |= CloneFlags::CLONE_NEWNET;
    }
    if user_namespace {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    f
}

/// A new network namespace with `lo` up, made on the calling thread (a
/// launcher thread of its own, concurrently with the launch: creating one
/// costs 1-3 ms of kernel time here, the largest single piece of a
/// launch): unshare it, bring `lo` up, open `/proc/thread-self/ns/net`.
/// The thread stays in it (and ends); the descriptor is then the
/// namespace's only reference until the child joins it. Each launch gets
/// its own, made during that launch (no pool).
pub(crate) fn new_netns() -> nix::Result<OwnedFd> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
    crate::syscall::Syscall::loopback_up(&LinuxSyscall)?;
    nix::fcntl::open(
        "/proc/thread-self/ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Clones the container's init. The caller has blocked all signals in this
/// thread (the child inherits the mask and waits for signals with sigwait).
/// With `plan.cgroup_dir` (cgroup v2) the child is born in its cgroup:
/// `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7+), as crun does, so nobody
/// has to move it there (a move takes the kernel's global threadgroup
/// lock). With a `keeper` (`plan.shares_memory`: no user namespace) init
/// shares the launcher's memory ([`Keeper`]): `plan` must then stay alive
/// until init closed the sync socket (the workload exec'd) or was reaped.
/// Otherwise init is a copy-on-write copy of the launcher.
pub(crate) fn clone_init(plan: &ChildPlan, keeper: Option<Keeper>) -> nix::Result<Pid> {
    let flags = clone_flags(plan.user_namespace, plan.rootfs.netns_from.is_none());
    match (keeper, plan.cgroup_dir) {
        (Some(keeper), dir) if plan.shares_memory => keeper.clone_init(plan, flags, dir),
        (_, Some(dir)) => clone3_into_cgroup(plan, flags, dir),
        (_, None) => clone_copy(plan, flags),
    }
}

/// A copy-on-write clone (with a user namespace: see `docs/design.md`).
fn clone_copy(plan: &ChildPlan, flags: CloneFlags) -> nix::Result<Pid> {
    let mut stack = ChildStack::map()?;
    let cb = Box::new(|| child::main(plan, &LinuxSyscall));
    // SAFETY: the child gets a copy-on-write copy of this address space
    // (no CLONE_VM), runs `child::main` on its own copy of `stack`, and only
    // makes async-signal-safe, non-allocating calls until execve or _exit
    // (all strings and paths were prepared in `plan` before this call), so
    // locks held by other launcher threads at the time of the clone are
    // never taken in the child. The parent's `stack` is unmapped on return;
    // the child keeps its copy.
    unsafe { nix::sched::clone(cb, stack.as_mut_slice(), flags, Some(libc::SIGCHLD)) }
}

/// The thread that makes an init sharing the launcher's memory, like a
/// `vfork` parent (`CLONE_VM | CLONE_VFORK`): started early in the launch
/// (its start overlaps the instance directory and the cgroup), it maps
/// init's stack and waits for its one job; then it stays blocked in that
/// clone until init ends, unmaps init's stack and ends too. Blocked, it
/// never touches the thread-local storage init runs on (glibc's `errno`,
/// the stack guard), which goes only with the keeper; and the kernel
/// leaves a child in `vfork` out of the OOM killer's choice, which would
/// otherwise see the launcher's memory as init's and kill every process
/// sharing it, the launcher included. The kernel writes init's pid where
/// the launcher waits before init runs (`CLONE_PARENT_SETTID`), and init's
/// first act is to wake it. A keeper dropped without a job just ends.
pub(crate) struct Keeper {
    jobs: mpsc::SyncSender<KeeperJob>,
    started: Arc<Started>,
}

impl Keeper {
    pub(crate) fn spawn() -> nix::Result<Keeper> {
        let (jobs, job) = mpsc::sync_channel::<KeeperJob>(1);
        let started = Arc::new(Started(AtomicI32::new(0)));
        let word = Arc::clone(&started);
        std::thread::Builder::new()
            .name("isolab-keeper".into())
            .stack_size(KEEPER_STACK)
            .spawn(move || {
                let stack = ChildStack::map();
                let Ok(job) = job.recv() else {
                    return;
                };
                if !word.claim() {
                    return;
                }
                match stack {
                    Ok(mut stack) => {
                        if job.clone_init(stack.top()) < 0 {
                            word.fail(nix::Error::last());
                        }
                        // Init has ended (it never execs): its stack goes.
                        drop(stack);
                    }
                    Err(e) => word.fail(e),
                }
            })
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
        Ok(Keeper { jobs, started })
    }

    /// Hands the clone to the keeper and waits until init runs.
    fn clone_init(
        self,
        plan: &ChildPlan,
        flags: CloneFlags,
        cgroup_dir: Option<RawFd>,
    ) -> nix::Result<Pid> {
        let job = KeeperJob {
            plan,
            started: self.started.0.as_ptr(),
            flags: flags.bits() | libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID,
            cgroup_dir,
        };
        self.jobs.send(job).map_err(|_| nix::Error::EAGAIN)?;
        self.started.wait()
    }
}

/// Stack of a keeper thread: it only makes the clone and waits in it.
const KEEPER_STACK: usize = 64 * 1024;

/// Init's pid (the kernel's `CLONE_PARENT_SETTID` store), or `-errno` if
/// the clone failed; `0` until the keeper takes the job ([`CLAIMED`], then
/// the pid), or [`CANCELLED`] by a launcher that gave up waiting first, so
/// that a late keeper never clones with a plan that is gone. A futex word.
struct Started(AtomicI32);

/// The keeper is cloning (the kernel is about to store the pid).
const CLAIMED: i32 = i32::MIN;
/// The launcher gave up before the keeper took the job.
const CANCELLED: i32 = i32::MIN + 1;

impl Started {
    fn wake(&self) {
        Self::wake_word(self.0.as_ptr());
    }

    fn wake_word(word: *mut i32) {
        // SAFETY: FUTEX_WAKE on a live, aligned i32 (a `Started` held by
        // the keeper thread); no memory is written.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word,
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
    }

    /// The keeper takes the job, unless the launcher gave up.
    fn claim(&self) -> bool {
        self.0
            .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn fail(&self, e: nix::Error) {
        self.0.store(-(e as i32), Ordering::Release);
        self.wake();
    }

    /// Waits until init runs (or the clone failed). Gives up after 10 s
    /// only if the keeper has not taken the job by then; once it has, the
    /// clone is under way and is waited for.
    fn wait(&self) -> nix::Result<Pid> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = self.0.load(Ordering::Acquire);
            let mut timeout = None;
            match seen {
                0 => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        if self
                            .0
                            .compare_exchange(0, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            return Err(nix::Error::ETIMEDOUT);
                        }
                        continue;
                    }
                    timeout = Some(libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    });
                }
                CLAIMED => {}
                v if v > 0 => return Ok(Pid::from_raw(v)),
                v => return Err(nix::Error::from_raw(-v)),
            }
            let ts = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: FUTEX_WAIT on a live, aligned i32 while it still holds
            // `seen`, with a relative timeout or none; spurious returns are
            // re-checked.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    seen,
                    ts,
                )
            };
        }
    }
}

/// What a keeper thread needs: the plan (alive while init reads it, see
/// [`clone_init`]) and the word where the kernel stores init's pid.
struct KeeperJob {
    plan: *const ChildPlan,
    started: *mut i32,
    /// Clone flags without the exit signal (always `SIGCHLD`).
    flags: libc::c_int,
    /// cgroup v2: born in this cgroup (`clone3`, `CLONE_INTO_CGROUP`).
    cgroup_dir: Option<RawFd>,
}

// SAFETY: `plan` is only read (by init) and outlives init's use of it;
// `started` points into an `Arc<Started>` the keeper thread also holds.
unsafe impl Send for KeeperJob {}

impl KeeperJob {
    /// Blocks (CLONE_VFORK) until init has ended; returns its pid or -1.
    fn clone_init(&self, top: *mut u8) -> libc::c_int {
        extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
            // SAFETY: `arg` is the keeper's job, whose thread is blocked in
            // the clone below while init runs; `started` is alive as long
            // as that thread.
            let job = unsafe { &*(arg as *const KeeperJob) };
            Started::wake_word(job.started);
            // SAFETY: see `clone_init`.
            let plan = unsafe { &*job.plan };
            child::main(plan, &LinuxSyscall) as libc::c_int
        }
        let _ = crate::process::block_all();
        if let Some(dir) = self.cgroup_dir {
            return self.clone3_into(dir, top, entry);
        }
        // SAFETY: the child runs `entry` on its own stack (`top`, 16-byte
        // aligned, of a mapping this thread unmaps only after the clone
        // returned, i.e. after init ended), in this address space, while
        // this thread waits (CLONE_VFORK). Init makes only async-signal-safe,
        // non-allocating calls on a plan prepared before (and alive during)
        // the clone, and writes nothing but its own stack and this thread's
        // `errno`. The kernel stores the child's pid in `started` before
        // the child runs.
        unsafe {
            libc::clone(
                entry,
                top.cast(),
                self.flags | libc::SIGCHLD,
                self as *const KeeperJob as *mut libc::c_void,
                self.started,
            )
        }
    }

    /// [`Self::clone_init`] with `clone3` into the cgroup `dir` (v2). glibc
    /// has no wrapper for a `clone3` child on a stack of its own: the
    /// child returns from the system call on the new stack, so the call,
    /// and the child's call of `entry` and its `exit`, are one piece of
    /// assembly that the child never leaves.
    fn clone3_into(
        &self,
        dir: RawFd,
        top: *mut u8,
        entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    ) -> libc::c_int {
        let args = CloneArgs {
            flags: self.flags as u32 as u64 | CLONE_INTO_CGROUP,
            parent_tid: self.started as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: top as u64 - STACK_SIZE as u64,
            stack_size: STACK_SIZE as u64,
            cgroup: dir as u64,
            ..CloneArgs::default()
        };
        clone3_with_stack(&args, entry, self as *const KeeperJob as *mut libc::c_void)
    }
}

/// `clone3(args)` whose child runs `entry(arg)` on the stack `args` gives
/// it and exits with its result; returns the child's pid (here, in the
/// parent, once a `CLONE_VFORK` child has ended) or -1 with `errno` set.
#[cfg(target_arch = "x86_64")]
fn clone3_with_stack(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_int {
    let rc: i64;
    // SAFETY: the system call reads `args` (its size given). The parent
    // only gets `rax` back (`rcx`, `r11` clobbered by `syscall`). The
    // child starts after the `syscall` with the same registers but its
    // stack pointer at the top of `args.stack` (16-byte aligned, so the
    // `call` gives `entry` the ABI's alignment), calls `entry(arg)` and
    // ends with `exit(2)` on its result: it never reaches code that
    // assumes the parent's stack. Callers uphold `entry`'s own contract
    // (see `KeeperJob::clone_init`).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => rc,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if rc < 0 {
        // SAFETY: errno is this thread's; set as a glibc wrapper would.
        unsafe { *libc::__errno_location() = -rc as libc::c_int };
        return -1;
    }
    rc as libc::c_int
}

/// Without the trampoline, a keeper on cgroup v2 cannot clone.
#[cfg(not(target_arch = "x86_64"))]
fn clone3_with_stack(
    _args: &CloneArgs,
    _entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

/// Init's stack: fresh anonymous pages, mapped for each launch (never
/// written by the launcher, so init's first touch of a page is a plain
/// zero-fill, not a copy of a page of the launcher's heap). Unmapped on
/// drop: by the keeper thread once init ended when init shares the
/// launcher's memory, else right after the clone (the child has a copy).
#[derive(Debug)]
pub(crate) struct ChildStack {
    base: std::ptr::NonNull<u8>,
}

// SAFETY: a handle to a private mapping, moved to the keeper thread,
// which alone uses it from then on.
unsafe impl Send for ChildStack {}

impl ChildStack {
    fn map() -> nix::Result<Self> {
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(nix::Error::last());
        }
        std::ptr::NonNull::new(p.cast())
            .map(|base| ChildStack { base })
            .ok_or(nix::Error::ENOMEM)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `base` is a live mapping of STACK_SIZE readable and
        // writable bytes, owned by `self` and borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), STACK_SIZE) }
    }

    /// The initial stack pointer (the stack grows down from the end).
    fn top(&mut self) -> *mut u8 {
        // SAFETY: one past the end of the mapping (STACK_SIZE, a multiple of
        // 16, from a page-aligned base).
        unsafe { self.base.as_ptr().add(STACK_SIZE) }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), STACK_SIZE) };
    }
}

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone3_into_cgroup(plan: &ChildPlan, flags: CloneFlags, cgroup_dir: RawFd) -> nix::Result<Pid> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (size given) and, without CLONE_VM and
    // with no stack, creates a copy-on-write child that returns from the
    // syscall here on its copy of this thread's stack, like fork(2) but
    // without glibc's atfork handlers. The child never returns from this
    // function: it runs `child::main` (async-signal-safe, non-allocating
    // calls only, everything prepared in `plan`) and exits with `_exit`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match nix::Error::result(rc)? {
        0 => {
            let code = child::main(plan, &LinuxSyscall);
            crate::process::exit_now(code as i32)
        }
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_namespaces_but_cgroup_are_in_the_one_clone() {
        let f = clone_flags(false, true);
        assert!(f.contains(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS
        ));
        assert!(!f.contains(CloneFlags::CLONE_NEWUSER));
        assert!(!f.contains(CloneFlags::CLONE_NEWCGROUP));
        assert!(clone_flags(true, true).contains(CloneFlags::CLONE_NEWUSER));
        assert!(!clone_flags(false, false).contains(CloneFlags::CLONE_NEWNET));
    }

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }

    #[test]
    fn the_launcher_learns_init_s_pid_or_the_clone_s_error() {
        let started = Arc::new(Started(AtomicI32::new(0)));
        let s = Arc::clone(&started);
        let keeper = std::thread::spawn(move || {
            assert!(s.claim());
            std::thread::sleep(std::time::Duration::from_millis(20));
            // What the kernel and init do: store the pid, then wake.
            s.0.store(4242, Ordering::Release);
            s.wake();
        });
        assert_eq!(started.wait(), Ok(Pid::from_raw(4242)));
        keeper.join().unwrap();
        let failed = Started(AtomicI32::new(0));
        assert!(failed.claim());
        failed.fail(nix::Error::EPERM);
        assert_eq!(failed.wait(), Err(nix::Error::EPERM));
    }

    #[test]
    fn a_keeper_never_takes_a_job_its_launcher_gave_up_on() {
        let cancelled = Started(AtomicI32::new(CANCELLED));
        assert!(!cancelled.claim());
        let claimed = Started(AtomicI32::new(0));
        assert!(claimed.claim());
        assert!(!claimed.claim());
    }

    #[test]
    fn a_keeper_without_a_job_ends_its_thread() {
        // A launch that fails before its clone drops its keeper.
        let before = threads();
        let keepers: Vec<Keeper> = (0..3).map(|_| Keeper::spawn().unwrap()).collect();
        drop(keepers);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads() > before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            threads() <= before,
            "keeper threads left: {}",
            threads() - before
        );
    }
}
