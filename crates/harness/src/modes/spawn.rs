//! What the launchers that exec a program share: placing inherited fds,
//! joining a cgroup before exec, the ready pipe, reading a child's output
//! without blocking it, stopping it politely then firmly, and the memory
//! of its process tree.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::InstanceMemory;
use crate::ready::ReadyPipe;
use crate::HarnessError;

/// The fd number a launched program inherits the ready pipe on (the
/// workload's `ISOLAB_READY_FD`, the monitor's `--ready-fd`).
pub const READY_FD: i32 = 3;

/// Open `cgroup.procs` files for [`join_before_exec`].
pub(crate) fn open_procs(files: &[PathBuf]) -> Result<Vec<std::fs::File>, HarnessError> {
    files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map_err(|e| HarnessError::io(format!("open {}", f.display()), e))
        })
        .collect()
}

/// In a forked child before exec: make `fd` available as `target` in the
/// exec'd program. `dup2` onto itself is a no-op that would leave the
/// close-on-exec flag set, so that case clears the flag instead.
/// Only async-signal-safe calls (`dup2`, `fcntl`).
pub(crate) fn dup_to(fd: i32, target: i32) -> std::io::Result<()> {
    // SAFETY: plain fd syscalls on descriptors the parent keeps open for the
    // duration of the spawn.
    let rc = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In a forked child before exec: place `fds` at 3, 4, ... in order. They
/// are first moved above the targets, so a source already sitting at a
/// later target is not overwritten before it is placed.
pub(crate) fn place_fds(fds: &[i32]) -> std::io::Result<()> {
    const ABOVE: i32 = 10;
    let mut moved = [0i32; 8];
    for (i, &fd) in fds.iter().enumerate().take(moved.len()) {
        // SAFETY: F_DUPFD on an fd the parent keeps open during the spawn.
        let m = unsafe { libc::fcntl(fd, libc::F_DUPFD, ABOVE) };
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        moved[i] = m;
    }
    for (i, &m) in moved.iter().enumerate().take(fds.len()) {
        dup_to(m, READY_FD + i as i32)?;
    }
    Ok(())
}

/// In a forked child before exec: write "0" (= this process) to each fd.
/// Only `write(2)` runs, which is async-signal-safe.
fn join_before_exec(fds: &[i32]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: `fd` is an open file owned by the parent for the duration of
        // the spawn; the buffer is a static byte string.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Spawn `cmd` with the write end of `ready` as fd [`READY_FD`] and then
/// `extra` at 4, 5, ...; joining `join_cgroups` before exec; closes the
/// parent's write end. Returns the child and the launch instant (taken
/// just before the spawn).
pub(crate) fn spawn_with_ready(
    cmd: &mut Command,
    ready: &mut ReadyPipe,
    extra: &[i32],
    join_cgroups: &[PathBuf],
) -> Result<(Child, Instant), HarnessError> {
    let mut fds = vec![ready.write_end().map(|f| f.as_raw_fd()).unwrap_or(-1)];
    fds.extend_from_slice(extra);
    let spawned = spawn_with_fds(cmd, &fds, join_cgroups);
    ready.close_write();
    spawned
}

/// Spawn `cmd` with `fds` placed at [`READY_FD`], 4, ... in order, joining
/// `join_cgroups` before exec. Returns the child and the launch instant
/// (taken just before the spawn).
pub(crate) fn spawn_with_fds(
    cmd: &mut Command,
    fds: &[i32],
    join_cgroups: &[PathBuf],
) -> Result<(Child, Instant), HarnessError> {
    let fds = fds.to_vec();
    let procs = open_procs(join_cgroups)?;
    let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: only async-signal-safe calls (fcntl/dup2, write) run between
    // fork and exec; the fds and the procs files stay open in the parent
    // until after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&fds)?;
            join_before_exec(&procs_fds)
        });
    }
    let launched = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        HarnessError::io(format!("spawn {}", cmd.get_program().to_string_lossy()), e)
    })?;
    drop(procs);
    Ok((child, launched))
}

/// Reads a child's pipe to its end on a thread of its own, so a chatty
/// child never blocks on a full pipe.
pub(crate) fn drain(r: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

/// What a [`drain`] thread read (empty if it panicked).
pub(crate) fn drained(h: Option<JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Kill a process politely, then firmly.
pub(crate) fn terminate(pid: u32, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if kill(p, None).is_err() {
            return;
        }
        // A zombie still answers kill(0); the caller reaps it.
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
                == Some(true)
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// Wait up to `timeout` for `child` to exit by itself (or until Ctrl-C);
/// past it, SIGTERM and after `grace` SIGKILL (the caller reaps). True if
/// it exited on its own.
pub(crate) fn wait_or_terminate(
    child: &mut Child,
    timeout: Duration,
    grace: Duration,
) -> Result<bool, HarnessError> {
    let end = Instant::now() + timeout;
    loop {
        if child
            .try_wait()
            .map_err(|e| HarnessError::io("wait", e))?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() > end || crate::interrupted() {
            terminate(child.id(), grace);
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Shell-style status from a std exit status.
pub(crate) fn shell_status(s: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.code().or_else(|| s.signal().map(|n| 128 + n))
}

/// PSS/USS of the process tree under `pid`; with `guest_bytes`, also
/// Firecracker's split of the root's RSS into VMM overhead and guest RAM,
/// and how much of guest RAM huge pages back.
pub(crate) fn tree_instance_memory(pid: u32, guest_bytes: Option<u64>) -> InstanceMemory {
    let proc_root = Path::new("/proc");
    let m = crate::memory::tree_memory(proc_root, &crate::memory::process_tree(proc_root, pid));
    let split = guest_bytes.and_then(|g| crate::memory::split_guest_memory(proc_root, pid, g).ok());
    InstanceMemory {
        pss: m.pss,
        uss: m.uss,
        cgroup_current: None,
        vmm_overhead: split.map(|s| s.overhead),
        guest_touched: split.map(|s| s.guest),
        guest_huge: split.map(|s| s.guest_huge),
    }
}

/// The last `n` lines of a text.
pub(crate) fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// The line of a program's stderr that says why it failed: the last
/// `error: ...` line (without the prefix), else the last non-empty one.
pub(crate) fn error_line(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .or(lines.last().copied())
        .map(str::to_owned)
}

/// Full path of `cmd` on PATH.
pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// A free TCP port on loopback (bound then released).
pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| HarnessError::io("find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| HarnessError::io("find a free port", e))?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_line_is_the_last_error_else_the_last_line() {
        assert_eq!(
            error_line("noise\nerror: /dev/kvm here is PVM\nemuhost: status 3\n").as_deref(),
            Some("/dev/kvm here is PVM")
        );
        assert_eq!(error_line("a\n\nb \n").as_deref(), Some("b"));
        assert_eq!(error_line(""), None);
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(tail_lines("a", 5), ["a"]);
    }

    #[test]
    fn fds_are_placed_in_order_even_when_they_sit_on_a_target() {
        use std::os::unix::process::ExitStatusExt;
        // Two pipes whose write ends are handed to `sh` as 3 and 4; the
        // shell writes to both and each reader sees its own byte.
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let fds = [w1.as_raw_fd(), w2.as_raw_fd()];
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "printf a >&3; printf b >&4"]);
        // SAFETY: only fcntl/dup2 run between fork and exec.
        unsafe {
            cmd.pre_exec(move || place_fds(&fds));
        }
        let st = cmd.status().unwrap();
        assert!(st.success(), "{:?}", st.signal());
        drop((w1, w2));
        let mut a = String::new();
        std::fs::File::from(r1).read_to_string(&mut a).unwrap();
        let mut b = String::new();
        std::fs::File::from(r2).read_to_string(&mut b).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("a", "b"));
    }
}
