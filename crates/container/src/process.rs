//! Process-level calls of the container's init and of the workload before
//! `execve`: raw descriptors, fork, signal state, exec. They run in the
//! cloned child of a possibly multi-threaded launcher, so they only make
//! async-signal-safe calls and never allocate.

use std::ffi::{c_char, CString};
use std::os::fd::RawFd;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// `execve` arguments, built before the clone.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    path: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

impl ExecPlan {
    /// Strings must not contain NUL (checked when the config is validated).
    pub(crate) fn new(path: &str, argv: &[String], envp: &[String]) -> Option<Self> {
        let path = CString::new(path).ok()?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()).ok())
            .collect::<Option<_>>()?;
        let envp: Vec<CString> = envp
            .iter()
            .map(|a| CString::new(a.as_str()).ok())
            .collect::<Option<_>>()?;
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        Some(Self {
            path,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }

    /// Replaces the process image; returns only on failure.
    pub(crate) fn exec(&self) -> nix::Error {
        // SAFETY: `path` is a NUL-terminated string and both pointer arrays
        // are NULL-terminated arrays of pointers to NUL-terminated strings,
        // all owned by `self`, which outlives the call.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        };
        nix::Error::last()
    }
}

/// The working directory and user of an image's program, set just before
/// its `execve` (built before the clone).
#[derive(Debug)]
pub(crate) struct ExecIdentity {
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl ExecIdentity {
    pub(crate) fn new(cwd: &str, uid: u32, gid: u32, groups: &[u32]) -> Option<Self> {
        Some(Self {
            cwd: CString::new(cwd).ok()?,
            uid,
            gid,
            groups: groups.to_vec(),
        })
    }

    /// Enter the working directory (made when missing), then drop to the
    /// user: supplementary groups, group, user, in that order. Raw system
    /// calls: libc's wrappers would signal the threads of a process this
    /// CLONE_VM child only shares memory with.
    pub(crate) fn apply(&self) -> nix::Result<()> {
        // SAFETY: `cwd` is NUL-terminated and `groups` a live slice, both
        // owned by `self`; the calls only change this process's state.
        unsafe {
            libc::mkdir(self.cwd.as_ptr(), 0o755);
            nix::Error::result(libc::chdir(self.cwd.as_ptr()))?;
            nix::Error::result(libc::syscall(
                libc::SYS_setgroups,
                self.groups.len(),
                self.groups.as_ptr(),
            ))?;
            nix::Error::result(libc::syscall(libc::SYS_setgid, self.gid))?;
            nix::Error::result(libc::syscall(libc::SYS_setuid, self.uid))?;
        }
        Ok(())
    }
}

/// Writes all of `buf` (one message) to `fd`.
pub(crate) fn write_msg(fd: RawFd, buf: &[u8]) -> nix::Result<()> {
    // SAFETY: `buf` is a valid readable slice for its length; a stale or
    // closed `fd` only yields an error.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    nix::Error::result(n).map(drop)
}

/// Reads one message from `fd` into `buf`; returns its length (0 at EOF).
pub(crate) fn read_msg(fd: RawFd, buf: &mut [u8]) -> nix::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid writable slice for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match nix::Error::result(n) {
            Err(nix::Error::EINTR) => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

pub(crate) fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this process owns and no longer uses;
    // nothing else in the child refers to it afterwards.
    unsafe { libc::close(fd) };
}

/// Makes `fd` available as `target`, without close-on-exec.
pub(crate) fn dup_to(fd: RawFd, target: RawFd) -> nix::Result<()> {
    if fd == target {
        // SAFETY: F_SETFD with 0 only clears FD_CLOEXEC on an owned fd.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        return nix::Error::result(rc).map(drop);
    }
    // SAFETY: dup2 onto a fixed slot; the old occupant of `target` (if any)
    // is closed by the kernel, as intended.
    let rc = unsafe { libc::dup2(fd, target) };
    nix::Error::result(rc).map(drop)
}

/// Marks every descriptor from `first` up as close-on-exec, so nothing the
/// launcher had open leaks into the workload.
pub(crate) fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors; it takes no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    nix::Error::result(rc).map(drop)
}

/// Blocks all signals in the calling thread; returns the previous mask.
pub(crate) fn block_all() -> nix::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    Ok(old)
}

pub(crate) fn set_mask(mask: &SigSet) -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None)
}

/// Resets every catchable signal to its default action (a launcher may
/// ignore SIGPIPE or SIGCHLD; the container must not inherit that).
pub(crate) fn default_signals() {
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
}

/// Starts `f` in a new process that shares this one's memory on `stack`
/// and blocks the caller until it has exec'd or exited (`CLONE_VM |
/// CLONE_VFORK`, what posix_spawn does). glibc's `clone()` wrapper, not
/// `fork()`: init is a clone of a possibly multi-threaded launcher, and
/// fork's atfork handlers take the malloc and stdio locks; a lock another
/// launcher thread held at the moment of our clone stays locked in this
/// copy forever, and fork would hang (seen: init stuck in `futex_wait`
/// under parallel launches).
pub(crate) fn spawn_vfork<F: FnMut() -> isize>(
    stack: &mut [u8],
    mut f: F,
) -> nix::Result<nix::unistd::Pid> {
    extern "C" fn trampoline<F: FnMut() -> isize>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut F` passed to clone below; the caller
        // is suspended (CLONE_VFORK) while the child uses it.
        let f = unsafe { &mut *(arg as *mut F) };
        f() as libc::c_int
    }
    // The stack grows down: pass its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `f` on `stack`, a buffer of the caller that
    // stays alive and untouched (the caller is suspended) until the child
    // has exec'd or exited; `f` outlives the call for the same reason.
    // No allocation happens here (unlike nix's boxed callback). The child
    // shares this memory, so `f` must only make system calls that write
    // nothing the caller reads afterwards; init documents that of its
    // workload closure.
    let rc = unsafe {
        libc::clone(
            trampoline::<F>,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut f as *mut F as *mut libc::c_void,
        )
    };
    nix::Error::result(rc).map(nix::unistd::Pid::from_raw)
}

/// Ends the process at once: no atexit handlers or stdio flushing, which
/// belong to the launcher whose memory this child copied.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit only terminates the calling process; it is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Polls two descriptors for input or hang-up; returns which are ready.
pub(crate) fn poll2(a: RawFd, b: RawFd) -> nix::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two initialised pollfd structs that
    // outlives the call; the length passed matches.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    nix::Error::result(rc)?;
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

/// Closes every descriptor from 3 up except `keep`: a clone made by
/// another launcher thread at the same moment must not hold on to our
/// pipes (the launcher waits for their EOF). No allocation: `keep` is
/// sorted in place.
pub(crate) fn close_all_except(mut keep: [RawFd; 6]) -> nix::Result<()> {
    keep.sort_unstable();
    let mut next: u32 = 3;
    for fd in keep {
        if fd < 3 {
            continue;
        }
        let fd = fd as u32;
        if fd > next {
            close_range(next, fd - 1)?;
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX)
}

fn close_range(first: u32, last: u32) -> nix::Result<()> {
    // SAFETY: close_range(2) with no flags closes descriptors in the range;
    // the caller keeps everything it still uses out of the range.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    nix::Error::result(rc).map(drop)
}

/// Receives one message of a single byte `tag` carrying one descriptor
/// (`SCM_RIGHTS`) on `sock`; no allocation (the control buffer is on the
/// stack). EOF (the launcher is gone) is `EPIPE`.
pub(crate) fn recv_fd(sock: RawFd, tag: u8) -> nix::Result<RawFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // CMSG_SPACE(sizeof(int)) is 24 on x86_64; u64s keep it aligned.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: `msg` points to `iov` and `control`, live locals sized as
        // declared in it.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match nix::Error::result(n) {
            Err(nix::Error::EINTR) => continue,
            r => break r?,
        }
    };
    if n == 0 {
        return Err(nix::Error::EPIPE);
    }
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR only reads its fields.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if byte[0] != tag || cmsg.is_null() {
        return Err(nix::Error::EBADMSG);
    }
    // SAFETY: `cmsg` is non-null and inside `control`.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Err(nix::Error::EBADMSG);
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int after its
    // header, inside `control`; read unaligned to be safe.
    Ok(unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) })
}
