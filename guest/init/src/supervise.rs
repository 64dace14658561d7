//! Starting `/workload` and relaying what it says: the ready byte becomes
//! `MARK_READY`, every stdout byte goes to `PORT_STDOUT` (and to the console
//! when asked), and its end becomes the status byte plus `MARK_EXITED`.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe, pipe2, read, Pid};

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
    /// Its stdout (and stderr, for an image's command).
    stdout: OwnedFd,
    /// The ready pipe, when the workload was given one.
    ready: Option<OwnedFd>,
}

/// How to start a workload.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// argv; `argv[0]` is the program, looked up in `PATH` of `env` (inside
    /// `root`) when it has no `/`.
    pub argv: &'a [String],
    /// `NAME=VALUE` entries: the whole environment.
    pub env: &'a [String],
    /// chroot into this directory first.
    pub root: Option<&'static str>,
    /// Working directory (inside `root`), created when missing.
    pub cwd: &'a str,
    /// Switch to (uid, gid, supplementary groups) before exec.
    pub ids: Option<(u32, u32, &'a [u32])>,
    /// Hand the workload the ready pipe (`ISOLAB_READY_FD`).
    pub ready_fd: bool,
    /// Send stderr into the output pipe too (what `podman logs` shows);
    /// otherwise it goes where init's goes (the console).
    pub merge_stderr: bool,
}

/// Environment of the built-in `/workload`.
fn workload_env() -> Vec<String> {
    vec!["PATH=/".into(), "HOME=/".into()]
}

/// Starts the built-in workload `program args...` with stdout piped and
/// the write end of the ready pipe inherited under `ISOLAB_READY_FD`;
/// stderr goes where init's goes.
pub fn start<P: Ports>(
    program: &'static str,
    args: &[String],
    ports: &mut P,
) -> Result<Workload, InitError> {
    let mut argv = vec![program.to_string()];
    argv.extend(args.iter().cloned());
    let env = workload_env();
    launch(
        &Launch {
            argv: &argv,
            env: &env,
            root: None,
            cwd: "/",
            ids: None,
            ready_fd: true,
            merge_stderr: false,
        },
        ports,
    )
}

/// mkdir -p for the working directory, inside the (new) root.
fn make_dirs(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::create_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Starts a workload as `l` says. Writes `MARK_STARTED` once the exec
/// succeeded (std reports exec failures through its own pipe, so a
/// returned child has exec'd).
pub fn launch<P: Ports>(l: &Launch<'_>, ports: &mut P) -> Result<Workload, InitError> {
    let program = l.argv.first().cloned().unwrap_or_default();
    let spawn_err = |source| InitError::Spawn {
        path: program.clone(),
        source,
    };
    // Close-on-exec: the child gets the write end only as fd 1 (and 2).
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(InitError::OutputPipe)?;
    let ready = if l.ready_fd {
        let (r, w) = pipe().map_err(InitError::ReadyPipe)?;
        // Only the write end is inherited.
        fcntl(&r, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(InitError::ReadyPipe)?;
        Some((r, w))
    } else {
        None
    };
    let mut cmd = Command::new(&program);
    cmd.args(l.argv.iter().skip(1))
        .env_clear()
        .stdin(Stdio::null());
    for e in l.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    if let Some((_, w)) = &ready {
        cmd.env(READY_ENV, w.as_raw_fd().to_string());
    }
    if l.merge_stderr {
        let err_w = out_w.try_clone().map_err(|e| {
            InitError::OutputPipe(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        cmd.stderr(Stdio::from(err_w));
    }
    cmd.stdout(Stdio::from(out_w));
    let root = l.root;
    let cwd = std::path::PathBuf::from(l.cwd);
    let ids = l.ids.map(|(u, g, groups)| (u, g, groups.to_vec()));
    // SAFETY: init is single-threaded, so the forked child may allocate;
    // the hook only makes syscalls on its own process (chroot, chdir,
    // mkdir, setgroups, setgid, setuid) before exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(r) = root {
                nix::unistd::chroot(r)?;
                nix::unistd::chdir("/")?;
            }
            make_dirs(&cwd)?;
            nix::unistd::chdir(&cwd)?;
            if let Some((uid, gid, groups)) = &ids {
                let groups: Vec<nix::unistd::Gid> = groups
                    .iter()
                    .map(|&g| nix::unistd::Gid::from_raw(g))
                    .collect();
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(*gid))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(*uid))?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    drop(cmd);
    ports.outb(PORT_EVENT, MARK_STARTED);
    Ok(Workload {
        pid: Pid::from_raw(child.id() as i32),
        stdout: out_r,
        ready: ready.map(|(r, _)| r),
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
    console: Option<&mut W>,
    on_ready: impl FnMut(),
    reap_all: bool,
) -> Result<u8, InitError> {
    relay(w, ports, console, on_ready, reap_all, || {})
}

/// The loop behind [`supervise`]; `after_poll` runs right after each poll
/// (a test seam: it lets a test end the workload at the worst moment).
fn relay<P: Ports, W: Write>(
    w: Workload,
    ports: &mut P,
    mut console: Option<&mut W>,
    mut on_ready: impl FnMut(),
    reap_all: bool,
    mut after_poll: impl FnMut(),
) -> Result<u8, InitError> {
    let mut stdout = Some(w.stdout);
    let mut ready = w.ready;
    let mut status = None;
    let mut buf = [0u8; 4096];
    loop {
        // Reap before polling: once the workload's end is known here, every
        // byte it wrote is already in the pipes, so a quiet poll afterwards
        // proves they are drained. (Reaping after the poll lost a workload
        // that wrote and exited between the two: its ready byte and output
        // never reached the ports.)
        if status.is_none() {
            // With both pipes closed there is nothing to poll: wait in the
            // kernel rather than spin (a busy init would steal guest CPU).
            let block = stdout.is_none() && ready.is_none();
            status = reap(w.pid, reap_all, block)?;
        }
        let ended = status;
        // Once the workload is gone, only drain what is already buffered.
        let timeout = if ended.is_some() {
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
        after_poll();
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
        if let Some(s) = ended {
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
    fn a_workload_that_writes_and_exits_right_after_a_quiet_poll_is_still_relayed() {
        // The workload waits for a gate file, so the first poll is quiet;
        // right after it, the test opens the gate and waits (without
        // reaping) until the workload wrote and exited. That is the moment
        // that once lost the ready byte and the output.
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let script = format!(
            "while [ ! -e {} ]; do /bin/sleep 0.01; done; printf R >&$ISOLAB_READY_FD; echo late; exit 5",
            gate.display()
        );
        let mut ports = Recorder::default();
        let w = start("/bin/sh", &["-c".to_string(), script], &mut ports).unwrap();
        let pid = w.pid;
        let mut opened = false;
        let mut console = Vec::new();
        let mut readies = 0;
        let status = relay(
            w,
            &mut ports,
            Some(&mut console),
            || readies += 1,
            false,
            || {
                if !opened {
                    opened = true;
                    std::fs::write(&gate, b"").unwrap();
                    nix::sys::wait::waitid(
                        nix::sys::wait::Id::Pid(pid),
                        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
                    )
                    .unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(status, 5);
        assert_eq!(readies, 1, "the ready byte was relayed");
        assert_eq!(events(&ports), [MARK_STARTED, MARK_READY, MARK_EXITED]);
        assert_eq!(console, b"late\n", "the output was relayed");
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
    fn image_launch_merges_stderr_and_sets_env_and_cwd_without_a_ready_fd() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("made/here");
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo out; echo err >&2; pwd; echo \"$FOO ${ISOLAB_READY_FD:-none}\"; exit 3"
                .to_string(),
        ];
        let env = vec!["PATH=/usr/bin:/bin".to_string(), "FOO=bar baz".to_string()];
        let mut ports = Recorder::default();
        let w = launch(
            &Launch {
                argv: &argv,
                env: &env,
                root: None,
                cwd: cwd.to_str().unwrap(),
                ids: None,
                ready_fd: false,
                merge_stderr: true,
            },
            &mut ports,
        )
        .unwrap();
        let mut out = Vec::new();
        let status = supervise(w, &mut ports, Some(&mut out), || {}, false).unwrap();
        assert_eq!(status, 3);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!("out\nerr\n{}\nbar baz none\n", cwd.display()),
            "stderr merged, cwd created, env exact, no ready fd"
        );
        assert_eq!(events(&ports), [MARK_STARTED, MARK_EXITED]);
    }

    #[test]
    fn missing_program_is_a_spawn_error_naming_it() {
        let mut ports = Recorder::default();
        let e = start("/nonexistent/workload", &[], &mut ports).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/workload"), "{e}");
        assert!(ports.0.is_empty(), "no MARK_STARTED without an exec");
    }
}
