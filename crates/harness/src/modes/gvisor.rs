//! gVisor (`runsc`) as a peer: the same OCI bundle as runc and crun
//! ([`super::oci::peer_bundle`]), run by a user-space kernel (the Sentry)
//! that stands between the workload and the host kernel.
//!
//! How it runs here, and what that means for its figures:
//! - `--platform=ptrace`: the Sentry intercepts the workload's system
//!   calls with ptrace (the kvm platform does not run on this PVM host).
//! - No `--oci-seccomp`: runsc 20221219 applies the bundle's profile
//!   without its per-rule errno (clone3 gets EPERM, not ENOSYS, and the
//!   workload cannot start a thread); the Sentry runs under runsc's own
//!   host filter instead.
//! - `--network=host` inside a network namespace this launcher creates,
//!   from which the bundle's own network namespace is dropped: the
//!   sandbox's sockets are host sockets of the host kernel's network stack
//!   in that namespace, not gVisor's netstack (`--network=sandbox` does not
//!   work on this host kernel). For an HTTP workload it is the namespace
//!   runc and crun get ([`super::peer_net`]: a veth onto the workbench
//!   bridge, probed at its bridge address, the launch clock started before
//!   it was made); otherwise one unshared before `runsc` execs, loopback
//!   up, that goes when its last process does.
//! - No ready fd: `runsc run` has no `--preserve-fds`, so the bundle drops
//!   `ISOLAB_READY_FD` and readiness is timed by the first HTTP response
//!   (`api`) or by the exit (`noop`, `worker`, `probe`...): gVisor's
//!   "ready" includes one HTTP round trip, or the whole run.
//! - pids: the Sentry's threads and the ptrace stubs count in the
//!   container's `pids` limit, so a limit below [`MIN_PIDS`] is raised to
//!   it (below ~64 the Sentry fails to start its first thread).
//! - A Sentry panic is written only to `--panic-log` (in the bundle dir);
//!   its last lines join the outcome's stderr tail.
//!
//! State lives under this launcher's own `--root`
//! ([`crate::stale::oci_root`]`("runsc")`), so a killed launcher's
//! sandboxes are deleted by its watchdog or the next start; `stop` kills
//! the container, `runsc delete --force`s it (sandbox and gofer go with
//! it) and SIGKILLs any of its host processes still left.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::container::{container_config, not_root, CONTAINER_PORT};
use super::image_ready::{self, OutputScan};
use super::oci::{die_with_launcher, peer_bundle, remove_bundle, runtime_cmd, PeerBundle};
use super::peer_net::{self, PeerNet};
use super::spawn::{self, drained, shell_status, terminate, which};
use super::{
    Context, HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec, Launcher,
    ModeKind,
};
use crate::image::ImageWorkload;
use crate::memory::process_tree;
use crate::net::SharedWorkbench;
use crate::HarnessError;

/// How its figures differ from the other modes' (the report's method).
pub(crate) const NOTES: &[&str] = &[
    "runsc --platform=ptrace (the kvm platform does not run on this host), on the same OCI bundle as runc minus its network namespace and ISOLAB_READY_FD",
    "seccomp: the bundle's profile is not applied inside the sandbox (runsc 20221219's --oci-seccomp answers clone3 with EPERM instead of the profile's ENOSYS, and the workload cannot start threads); the workload's system calls go to gVisor's Sentry, which runs under runsc's own host seccomp filter (so the container profile line's seccomp does not hold for gvisor; its capabilities do)",
    "ready: runsc has no --preserve-fds, so there is no ready byte: ready is the first HTTP response (api; so first response = ready) or the exit of runsc run (workloads that end by themselves: ready includes the whole run)",
    "network: --network=host inside a network namespace the launcher creates (api and an image served over HTTP: a veth on the workbench bridge, as runc's and crun's; otherwise loopback only): the sandbox's sockets are the host kernel's network stack in that namespace, not gVisor's netstack (--network=sandbox does not work on this host kernel)",
    "pids: a pids limit below 64 is raised to 64 (the Sentry's threads and ptrace stubs count in it); memory: PSS/USS over runsc run, its gofer and sandbox (the Sentry) and their stubs",
];

/// The runtime's name on `PATH` (Debian package `runsc`).
const RUNSC: &str = "runsc";

/// The lowest `pids` limit the sandbox starts under.
pub const MIN_PIDS: u64 = 64;

/// The registry's constructor.
pub(crate) fn launcher(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(Gvisor {
        bins: ctx.bins.clone(),
        network: std::sync::Arc::clone(&ctx.network),
    })
}

#[derive(Debug)]
pub struct Gvisor {
    bins: super::Binaries,
    network: std::sync::Arc<SharedWorkbench>,
}

impl Launcher for Gvisor {
    fn kind(&self) -> ModeKind {
        ModeKind::Gvisor
    }

    fn unavailable(&self) -> Option<String> {
        if which(RUNSC).is_none() {
            return Some("gVisor's runsc is not installed: apt-get install runsc".into());
        }
        not_root()
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let runsc = which(RUNSC)
            .ok_or_else(|| HarnessError::Launch("gVisor's runsc is not installed".into()))?;
        // The launch clock starts before the network namespace is made.
        let launched = Instant::now();
        let mut cfg = match &spec.image {
            Some(i) => super::container::image_config(&self.bins, spec, i)?,
            None => container_config(&self.bins, spec),
        };
        cfg.limits.pids = cfg.limits.pids.map(|p| p.max(MIN_PIDS));
        let PeerBundle { root, id, bundle } = peer_bundle(RUNSC, cfg)?;
        let dir = bundle.dir.clone();
        if let Err(e) = adapt_bundle(&dir.join("config.json")) {
            remove_bundle(&dir);
            return Err(e);
        }
        let net = match peer_net::for_spec(spec, &self.network, &dir, false) {
            Ok(n) => n,
            Err(e) => {
                remove_bundle(&dir);
                return Err(e);
            }
        };
        let panic_log = dir.join("panic.log");
        let mut cmd = Command::new(&runsc);
        cmd.arg("--root")
            .arg(&root)
            .args(["--platform=ptrace", "--network=host"])
            .arg(format!("--panic-log={}", panic_log.display()))
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .env("TMPDIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_launcher(&mut cmd);
        match &net {
            Some(n) => enter_network_namespace(&mut cmd, n),
            None => own_network_namespace(&mut cmd),
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                drop(net);
                remove_bundle(&dir);
                return Err(HarnessError::io("spawn runsc", e));
            }
        };
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", child.id())).ok();
        let (image, stdout, stderr) = image_ready::drain_child(spec, &mut child);
        Ok(Box::new(GvisorInstance {
            runsc,
            root,
            id,
            bundle_dir: dir,
            panic_log,
            image,
            stdout: Some(stdout),
            stderr: Some(stderr),
            child: Some(child),
            launched,
            http: spec.workload.serves_http() && spec.image.is_none(),
            exited_at: None,
            out: None,
            netns,
            net,
        }))
    }
}

/// The bundle as gVisor runs it here: no network namespace of its own (the
/// sandbox runs in the one [`own_network_namespace`] made) and no
/// `ISOLAB_READY_FD` (no fd to pass it on; the workload refuses one that
/// is not open).
fn adapt_bundle(config: &Path) -> Result<(), HarnessError> {
    peer_net::edit_bundle(config, |spec: &mut Value| {
        spec["linux"]["namespaces"]
            .as_array_mut()?
            .retain(|ns| ns["type"] != "network");
        spec["process"]["env"].as_array_mut()?.retain(|v| {
            !v.as_str()
                .is_some_and(|s| s.starts_with("ISOLAB_READY_FD="))
        });
        Some(())
    })
}

/// `runsc` starts inside the peer's network namespace on the bridge.
fn enter_network_namespace(cmd: &mut Command, net: &PeerNet) {
    let fd = net.fd().as_raw_fd();
    // SAFETY: setns is an async-signal-safe syscall on an fd the launcher
    // keeps open (in `net`) for the duration of the spawn.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || isolab_net::netns::enter_raw(fd));
    }
}

/// `runsc` starts in a network namespace of its own, loopback up: with
/// `--network=host` the sandbox uses the host kernel's stack there.
fn own_network_namespace(cmd: &mut Command) {
    // SAFETY: unshare, socket, ioctl and close are async-signal-safe
    // syscalls; the ifreq is a zeroed local on the child's stack.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, c) in ifr.ifr_name.iter_mut().zip(b"lo") {
                *d = *c as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as _;
            let rc = libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
            let err = std::io::Error::last_os_error();
            libc::close(s);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
}

struct GvisorInstance {
    runsc: PathBuf,
    /// The state root (`--root`), this launcher's own.
    root: PathBuf,
    id: String,
    bundle_dir: PathBuf,
    panic_log: PathBuf,
    /// A user's image and its scanned output: ready by its rule.
    image: Option<(Arc<ImageWorkload>, OutputScan)>,
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    launched: Instant,
    http: bool,
    /// When `runsc run` was seen to exit (the ready mark of a workload that
    /// ends by itself).
    exited_at: Option<Instant>,
    /// Its stdout, once read to the end at the exit.
    out: Option<String>,
    /// The network namespace made for it (runsc's control socket is there).
    netns: Option<std::fs::File>,
    /// Its namespace on the workbench bridge (HTTP workloads not on
    /// loopback); released before the bundle is removed.
    net: Option<PeerNet>,
}

impl GvisorInstance {
    /// `runsc kill <id> <signal>` (the id comes first).
    fn kill(&self, signal: &str) {
        self.control(&["kill", &self.id, signal]);
    }

    /// `runsc delete --force <id>`.
    fn delete(&self) {
        self.control(&["delete", "--force", &self.id]);
    }

    /// Runs a runsc command in the sandbox's network namespace: its control
    /// server listens on an abstract unix socket, which exists only there
    /// (from outside, `kill` gets "connection refused"; `delete --force`
    /// still kills the sandbox by pid, which the watchdog relies on).
    fn control(&self, args: &[&str]) {
        let mut cmd = runtime_cmd(&self.runsc, &self.root, args);
        if let Some(ns) = &self.netns {
            let fd = ns.as_raw_fd();
            // SAFETY: setns is an async-signal-safe syscall on an fd this
            // process keeps open for the duration of the spawn.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let _ = cmd.status();
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn exited(&mut self) -> bool {
        let done = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if done && self.exited_at.is_none() {
            self.exited_at = Some(Instant::now());
        }
        done
    }

    /// Kill, delete, and SIGKILL whatever of the sandbox's host processes
    /// (`host` from before the kill) still runs under our root.
    fn tear_down(&mut self, host: &[u32]) {
        self.kill("KILL");
        if let Some(pid) = self.pid() {
            terminate(pid, Duration::from_millis(500));
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.wait();
        }
        self.delete();
        let root = self.root.as_os_str().as_encoded_bytes().to_vec();
        for &p in host {
            let ours = std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(root.len()).any(|w| w == root));
            if ours {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    fn finish(&mut self, timed_out: bool) -> Result<InstanceOutcome, HarnessError> {
        let host = self.host_pids();
        self.tear_down(&host);
        let st = self
            .child
            .take()
            .expect("finished once")
            .wait()
            .map_err(|e| HarnessError::io("wait for runsc", e))?;
        let out = self
            .out
            .take()
            .unwrap_or_else(|| drained(self.stdout.take()));
        let err = self.stderr_and_panic();
        drop(self.net.take());
        remove_bundle(&self.bundle_dir);
        Ok(InstanceOutcome {
            status: shell_status(st),
            result: isolab_workload::result::parse(&out),
            stderr_tail: spawn::tail_lines(&err, 20),
            timed_out,
            ..InstanceOutcome::default()
        })
    }

    /// runsc's stderr, then the Sentry's panic log if it wrote one.
    fn stderr_and_panic(&mut self) -> String {
        let mut err = drained(self.stderr.take());
        if let Ok(p) = std::fs::read_to_string(&self.panic_log) {
            err.push_str(&p);
        }
        err
    }

    /// The error of a run that never got the workload going.
    fn refused(&mut self) -> HarnessError {
        let err = self.stderr_and_panic();
        let line = spawn::error_line(&err).unwrap_or_else(|| "(no error output)".into());
        HarnessError::Launch(format!("runsc refused to run the bundle: {line}"))
    }
}

impl Drop for GvisorInstance {
    fn drop(&mut self) {
        if self.child.is_some() {
            let host = self.host_pids();
            self.tear_down(&host);
            drop(self.net.take());
            remove_bundle(&self.bundle_dir);
        }
    }
}

impl Instance for GvisorInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    /// No ready fd: the first HTTP response for a server, the exit for a
    /// workload that ends by itself.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        if let Some((image, scan)) = &self.image {
            let pid = self.pid().unwrap_or(0);
            let mut exited = image_ready::exit_watch(pid);
            return image_ready::wait_ready(
                &image.ready,
                self.launched,
                image_ready::Observed {
                    reach: self.image_reach(),
                    output: image_ready::Output::Scan(scan),
                    exited: &mut exited,
                },
                timeout,
            );
        }
        let deadline = self.launched + timeout;
        let probe = self.http_target().map(|t| {
            let launched = self.launched;
            std::thread::spawn(move || crate::net::first_response(&t.target, launched, deadline))
        });
        loop {
            if probe.as_ref().is_some_and(JoinHandle::is_finished) {
                let answered = probe.expect("checked").join();
                return match answered {
                    Ok(Ok(at)) => Ok(at),
                    Ok(Err(_)) if self.exited() => Err(self.refused()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(HarnessError::Launch("the probe thread panicked".into())),
                };
            }
            if self.exited() && probe.is_none() {
                // Ready when it ended, unless runsc ended without the
                // workload's result line (it refused the bundle).
                let out = drained(self.stdout.take());
                let ran = isolab_workload::result::parse(&out).is_some();
                self.out = Some(out);
                let ok = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .is_some_and(|s| s.success());
                return if ran || ok {
                    Ok(self.exited_at.expect("just seen"))
                } else {
                    Err(self.refused())
                };
            }
            if Instant::now() > deadline || crate::interrupted() {
                return Err(HarnessError::Launch(format!(
                    "gVisor did not get ready within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn image_reach(&self) -> Option<isolab_net::Target> {
        self.image.as_ref()?;
        // On the bridge, as the built-in api; else runsc runs in a network
        // namespace made for it, where the sandbox uses the host kernel's
        // stack: loopback there.
        if let Some(net) = &self.net {
            return Some(net.target(0));
        }
        let pid = self.pid().unwrap_or(0);
        Some(isolab_net::Target {
            netns: isolab_net::Netns::Path(PathBuf::from(format!("/proc/{pid}/ns/net"))),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        })
    }

    fn http_target(&self) -> Option<HttpTarget> {
        // An image's readiness is its first answer (its own rule and path).
        if self.image.is_some() {
            return None;
        }
        if let Some(net) = &self.net {
            return Some(HttpTarget {
                target: net.target(CONTAINER_PORT),
                after_ready: false,
            });
        }
        let pid = self.pid()?;
        self.http.then(|| HttpTarget {
            target: isolab_net::Target {
                netns: isolab_net::Netns::Path(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, CONTAINER_PORT)),
            },
            after_ready: false,
        })
    }

    fn host_pids(&self) -> Vec<u32> {
        self.pid()
            .map(|p| process_tree(Path::new("/proc"), p))
            .unwrap_or_default()
    }

    fn memory(&self) -> InstanceMemory {
        self.pid()
            .map(|p| spawn::tree_instance_memory(p, None))
            .unwrap_or_default()
    }

    fn stop(mut self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        self.kill("TERM");
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && !self.exited() {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.finish(false)
    }

    fn wait_exit(mut self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            if self.exited() {
                return self.finish(false);
            }
            if Instant::now() > end || crate::interrupted() {
                return self.finish(true);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
