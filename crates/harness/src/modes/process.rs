//! Process mode: the workload as a plain child process of the harness, with
//! no namespaces and no cgroup of its own — the baseline every ratio uses.
//! It is reaped with `wait4`, so the kernel's peak RSS and CPU time of
//! exactly that process come back with its status.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::image_ready::{self, OutputScan};
use super::spawn::{self, drain, drained, READY_FD};
use super::{
    Binaries, Context, HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind,
};
use crate::image::ImageWorkload;
use crate::memory::process_tree;
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// Launches plain processes.
#[derive(Debug)]
pub struct ProcessLauncher {
    pub bins: Binaries,
}

/// The registry's constructor.
pub(crate) fn launcher(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(ProcessLauncher {
        bins: ctx.bins.clone(),
    })
}

/// Arguments of `workload` for a spec; HTTP workloads get `port` and
/// `bind` (where the mode reaches them).
pub(crate) fn workload_argv(spec: &InstanceSpec, port: u16, bind: &str) -> Vec<String> {
    let mut argv = vec![spec.workload.name().to_owned()];
    if spec.workload.serves_http() {
        argv.extend([
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            bind.into(),
        ]);
    }
    argv.extend(spec.args.iter().cloned());
    argv
}

impl Launcher for ProcessLauncher {
    fn kind(&self) -> ModeKind {
        ModeKind::Process
    }

    fn unavailable(&self) -> Option<String> {
        None
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        if let Some(image) = &spec.image {
            return launch_image(image, spec);
        }
        let port = if spec.workload.serves_http() {
            spawn::free_port()?
        } else {
            0
        };
        let mut ready = ReadyPipe::new()?;
        let mut cmd = Command::new(&self.bins.workload);
        cmd.args(workload_argv(spec, port, "127.0.0.1"))
            .env("ISOLAB_READY_FD", READY_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if spec.keep_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let (mut child, launched) =
            spawn::spawn_with_ready(&mut cmd, &mut ready, &[], &spec.join_cgroups)?;
        Ok(Box::new(ProcessInstance {
            pid: child.id(),
            stdout: Some(drain(child.stdout.take())),
            stderr: Some(drain(child.stderr.take())),
            ready: Some(ready),
            launched,
            port: spec.workload.serves_http().then_some(port),
            image: None,
            layer: None,
        }))
    }
}

/// An image's program, chrooted into its unpacked rootfs with its
/// environment, working directory and user; no namespaces, no cgroup (the
/// baseline). It shares the host's network namespace, so it is reached on
/// host loopback at the port it listens on. Its root is a writable layer
/// of its own over the unpacked rootfs ([`super::image_layer`]), so its
/// writes (a pid file, logs) never reach the cache.
fn launch_image(
    image: &Arc<ImageWorkload>,
    spec: &InstanceSpec,
) -> Result<Box<dyn Instance>, HarnessError> {
    let run = &image.run;
    let program = image_ready::program_in_root(run)?;
    let cstr = |what: &str, s: &[u8]| {
        CString::new(s).map_err(|_| HarnessError::Config(format!("{what} contains a NUL byte")))
    };
    let layer = super::image_layer::ImageLayer::over(&run.rootfs)?;
    let root = cstr("the rootfs path", layer.root().as_os_str().as_bytes())?;
    let cwd = cstr("the working directory", run.cwd.as_bytes())?;
    let (uid, gid, groups) = (run.uid, run.gid, run.additional_gids.clone());
    let procs = super::spawn::open_procs(&spec.join_cgroups)?;
    let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(&program);
    cmd.arg0(&run.args[0])
        .args(&run.args[1..])
        .env_clear()
        .envs(run.env.iter().filter_map(|e| e.split_once('=')))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe system calls
    // run (prctl, write, chroot, chdir, setgroups, setgid, setuid) on
    // memory prepared before the fork (the CStrings and the group list,
    // moved into the closure, and the procs files the parent keeps open
    // until after the spawn).
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            // The program dies with us: nothing of an image outlives bench.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            for &fd in &procs_fds {
                check(libc::write(fd, b"0".as_ptr().cast(), 1) as libc::c_int)?;
            }
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            // Docker creates a missing working directory; a failure here
            // shows at the chdir.
            libc::mkdir(cwd.as_ptr(), 0o755);
            check(libc::chdir(cwd.as_ptr()))?;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        });
    }
    let launched = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| HarnessError::io(format!("start {program} in {}", run.rootfs.display()), e))?;
    drop(procs);
    let scan = OutputScan::new(&image.ready);
    Ok(Box::new(ProcessInstance {
        pid: child.id(),
        stdout: Some(scan.drain(child.stdout.take())),
        stderr: Some(scan.drain(child.stderr.take())),
        ready: None,
        launched,
        port: None,
        image: Some((Arc::clone(image), scan)),
        layer: Some(layer),
    }))
}

/// `waitid(WNOWAIT)`: whether `pid` has exited, without reaping it.
pub(crate) fn has_exited(pid: u32) -> Result<bool, HarnessError> {
    // SAFETY: zeroed siginfo is a valid value of a plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a live local; `pid` is our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(HarnessError::io("wait for the workload", e));
        }
        // SAFETY: waitid filled `info` (si_pid stays 0 while it runs).
        return Ok(unsafe { info.si_pid() } != 0);
    }
}

/// A plain child; reaped by `wait4` here, never by std's `Child`.
struct ProcessInstance {
    pid: u32,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    /// The built-in workload's ready pipe (`None` for an image).
    ready: Option<ReadyPipe>,
    launched: Instant,
    port: Option<u16>,
    /// An image's program and its scanned output.
    image: Option<(Arc<ImageWorkload>, OutputScan)>,
    /// An image's writable layer, unmounted when the instance is dropped
    /// (after its program was reaped).
    layer: Option<super::image_layer::ImageLayer>,
}

/// Status, peak RSS (KiB) and CPU time (µs) of a reaped child.
struct Reaped {
    status: i32,
    maxrss_kib: u64,
    cpu_us: u64,
}

/// `wait4(pid)`; with `block` false, `None` while it still runs.
fn wait4(pid: u32, block: bool) -> Result<Option<Reaped>, HarnessError> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid value of a plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: both out-pointers refer to live locals; `pid` is our own
        // child, not yet reaped (std's Child is never waited on).
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, flags, &mut usage) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(HarnessError::io("wait for the workload", e));
        }
        if rc == 0 {
            return Ok(None);
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let tv = |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64;
        return Ok(Some(Reaped {
            status: code,
            maxrss_kib: usage.ru_maxrss.max(0) as u64,
            cpu_us: tv(usage.ru_utime) + tv(usage.ru_stime),
        }));
    }
}

impl ProcessInstance {
    fn finish(mut self, reaped: Reaped, timed_out: bool) -> InstanceOutcome {
        // Reaped: nothing is left in an image's layer; unmount it now.
        drop(self.layer.take());
        let out = drained(self.stdout.take());
        let err = drained(self.stderr.take());
        InstanceOutcome {
            status: Some(reaped.status),
            result: isolab_workload::result::parse(&out),
            peak_rss_kib: Some(reaped.maxrss_kib),
            cpu_time_us: Some(reaped.cpu_us),
            stderr_tail: spawn::tail_lines(&err, 20),
            timed_out,
            ..InstanceOutcome::default()
        }
    }
}

impl Instance for ProcessInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        if let Some((image, scan)) = &self.image {
            let pid = self.pid;
            let mut exited = image_ready::exit_watch(pid);
            return image_ready::wait_ready(
                &image.ready,
                self.launched,
                image_ready::Observed {
                    reach: Some(image_ready::host_loopback()),
                    output: image_ready::Output::Scan(scan),
                    exited: &mut exited,
                },
                timeout,
            );
        }
        let ready = self.ready.as_mut().expect("a workload has its ready pipe");
        match ready.wait(timeout)? {
            ReadyEvent::Ready(at) => Ok(at),
            ReadyEvent::Closed => Err(HarnessError::NotReady(
                "the workload exited before signalling ready".into(),
            )),
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        self.port.map(|p| HttpTarget {
            target: isolab_net::Target {
                netns: isolab_net::Netns::Current,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
            },
            after_ready: false,
        })
    }

    fn image_reach(&self) -> Option<isolab_net::Target> {
        self.image.as_ref().map(|_| image_ready::host_loopback())
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.pid)
    }

    fn memory(&self) -> InstanceMemory {
        spawn::tree_instance_memory(self.pid, None)
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        spawn::terminate(self.pid, Duration::from_secs(2));
        let reaped = wait4(self.pid, true)?.expect("a blocking wait4 reaps");
        Ok(self.finish(reaped, false))
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(r) = wait4(self.pid, false)? {
                return Ok(self.finish(r, false));
            }
            if Instant::now() > end || crate::interrupted() {
                spawn::terminate(self.pid, Duration::from_millis(500));
                let r = wait4(self.pid, true)?.expect("a blocking wait4 reaps");
                return Ok(self.finish(r, true));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
