//! The OCI runtimes measured beside our container, the same way, in the
//! same run: `crun run` and `runc run` on an OCI bundle equivalent to our
//! container (same image, namespaces, limits and ready fd, passed with
//! `--preserve-fds 1`).
//!
//! A runtime that is missing is reported with how to install it; one that
//! refuses to run is reported with its own error line.
//!
//! An HTTP workload is attached as our container is: its network
//! namespace is made by the launcher with a veth onto the workbench bridge
//! ([`super::peer_net`]) and given to the runtime by path; it is probed at
//! its bridge address, its launch clock started before the namespace was
//! made.
//!
//! Each launcher keeps its runtimes' state under its own `--root`
//! ([`crate::stale::oci_root`]), watched so the peers die with the
//! launcher and are deleted at the next start if it was killed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::container::{container_config, image_config, not_root, CONTAINER_PORT};
use super::image_ready::{self, OutputScan};
use super::peer_net::{self, PeerNet};
use super::spawn::{self, drained, shell_status, terminate, which};
use super::{
    Binaries, Context, HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind,
};
use crate::image::ImageWorkload;
use crate::memory::process_tree;
use crate::net::SharedWorkbench;
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// `crun` or `runc` on an equivalent OCI bundle.
#[derive(Debug)]
pub struct OciPeer {
    pub kind: ModeKind,
    pub bins: Binaries,
    network: Arc<SharedWorkbench>,
}

/// The registry's constructors.
pub(crate) fn crun(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(OciPeer {
        kind: ModeKind::Crun,
        bins: ctx.bins.clone(),
        network: Arc::clone(&ctx.network),
    })
}

pub(crate) fn runc(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(OciPeer {
        kind: ModeKind::Runc,
        bins: ctx.bins.clone(),
        network: Arc::clone(&ctx.network),
    })
}

impl OciPeer {
    fn runtime(&self) -> &'static str {
        if self.kind == ModeKind::Crun {
            "crun"
        } else {
            "runc"
        }
    }
}

impl Launcher for OciPeer {
    fn kind(&self) -> ModeKind {
        self.kind
    }

    fn unavailable(&self) -> Option<String> {
        let rt = self.runtime();
        if which(rt).is_none() {
            return Some(format!("{rt} is not installed: apt-get install {rt}"));
        }
        not_root()
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let rt = self.runtime();
        let runtime =
            which(rt).ok_or_else(|| HarnessError::Launch(format!("{rt} is not installed")))?;
        // The launch clock starts before the network namespace is made
        // (our container's includes its veth).
        let launched = Instant::now();
        let cfg = match &spec.image {
            Some(i) => image_config(&self.bins, spec, i)?,
            None => container_config(&self.bins, spec),
        };
        let PeerBundle { root, id, bundle } = peer_bundle(rt, cfg)?;
        let dir = bundle.dir.clone();
        let net = match peer_net::for_spec(spec, &self.network, &dir, true) {
            Ok(n) => n,
            Err(e) => {
                remove_bundle(&dir);
                return Err(e);
            }
        };
        let mut ready = ReadyPipe::new()?;
        let mut cmd = Command::new(&runtime);
        cmd.arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .args(["--preserve-fds", "1"])
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_launcher(&mut cmd);
        let mut child = match spawn::spawn_with_ready(&mut cmd, &mut ready, &[], &[]) {
            Ok((c, _)) => c,
            Err(e) => {
                drop(net);
                remove_bundle(&dir);
                return Err(e);
            }
        };
        let (image, stdout, stderr) = image_ready::drain_child(spec, &mut child);
        Ok(Box::new(OciInstance {
            runtime,
            root,
            id,
            bundle_dir: dir,
            stdout: Some(stdout),
            stderr: Some(stderr),
            child: Some(child),
            ready,
            launched,
            http: spec.workload.serves_http() && spec.image.is_none(),
            image,
            net,
        }))
    }
}

/// A peer's bundle, written under [`crate::stale::BUNDLES_DIR`], and the
/// runtime's state root, this launcher's own (watched: [`crate::stale`]).
pub(crate) struct PeerBundle {
    pub root: PathBuf,
    pub id: String,
    pub bundle: isolab_container::oci::Bundle,
}

/// Removes what killed launchers left, creates this launcher's state root
/// for `rt` and writes the bundle of `cfg` as `isolab-<rt>-<pid>-<n>`.
pub(crate) fn peer_bundle(
    rt: &str,
    cfg: isolab_container::ContainerConfig,
) -> Result<PeerBundle, HarnessError> {
    crate::stale::clean_at_start();
    let root = crate::stale::oci_root(rt)
        .map_err(|e| HarnessError::io(format!("create the {rt} state root"), e))?;
    let id = format!("{}{}", crate::stale::bundle_prefix(rt), next_id());
    let dir = PathBuf::from(crate::stale::BUNDLES_DIR).join(&id);
    let mut cfg = cfg;
    // A user's image: the bundle's root is a writable layer of its own
    // over the cached rootfs, which stays as unpacked.
    if let Some(img) = cfg.image.as_mut() {
        match super::image_layer::mount_in(&img.rootfs, &dir) {
            Ok(merged) => img.rootfs = merged,
            Err(e) => {
                remove_bundle(&dir);
                return Err(e);
            }
        }
    }
    let bundle = match isolab_container::oci::write_bundle(&dir, &cfg, &id) {
        Ok(b) => b,
        Err(e) => {
            remove_bundle(&dir);
            return Err(HarnessError::Launch(crate::chain(&e)));
        }
    };
    Ok(PeerBundle { root, id, bundle })
}

/// The runtime dies with this launcher (SIGKILL included), so a `run`
/// caught mid-create never finishes creating a container that nobody will
/// delete; one already created is deleted by the launcher's watchdog or
/// the next start (crate::stale).
pub(crate) fn die_with_launcher(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: prctl and getppid are async-signal-safe syscalls; the
    // closure touches no memory of the parent but a copied pid.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died before the prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// `<runtime> --root <root> <args>`, quietly: best effort (its status is
/// not needed: what it could not remove the watchdog or the next start
/// does).
pub(crate) fn runtime_do(runtime: &Path, root: &Path, args: &[&str]) {
    let _ = runtime_cmd(runtime, root, args).status();
}

/// The command of [`runtime_do`], to adjust before running it.
pub(crate) fn runtime_cmd(runtime: &Path, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(runtime);
    c.arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Remove a bundle (its network namespace name unmounted first), then its
/// parent directories while they are empty, so nothing of ours stays under
/// /run.
pub(crate) fn remove_bundle(dir: &Path) {
    peer_net::release_in(dir);
    super::image_layer::release_in(dir);
    let _ = std::fs::remove_dir_all(dir);
    // The runtime left `/isolab` in the hierarchies we do not manage.
    isolab_cgroups::remove_unused_parents();
    let mut p = dir.parent();
    while let Some(d) = p.filter(|d| d.starts_with("/run/isolab")) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        p = d.parent();
    }
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

struct OciInstance {
    runtime: PathBuf,
    /// The runtime's state root (`--root`), this launcher's own.
    root: PathBuf,
    id: String,
    bundle_dir: PathBuf,
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    ready: ReadyPipe,
    launched: Instant,
    http: bool,
    /// A user's image and its scanned output: ready by its rule (its
    /// program never writes our ready fd).
    image: Option<(Arc<ImageWorkload>, OutputScan)>,
    /// Its network namespace on the workbench bridge (HTTP workloads not
    /// on loopback); released before the bundle is removed.
    net: Option<PeerNet>,
}

impl OciInstance {
    /// `<runtime> kill <id> <signal>` (the id comes first).
    fn kill(&self, signal: &str) {
        runtime_do(&self.runtime, &self.root, &["kill", &self.id, signal]);
    }

    /// `<runtime> delete --force <id>`.
    fn delete(&self) {
        runtime_do(&self.runtime, &self.root, &["delete", "--force", &self.id]);
    }

    fn finish(&mut self, timed_out: bool) -> Result<InstanceOutcome, HarnessError> {
        let mut child = self.child.take().expect("finished once");
        let st = child
            .wait()
            .map_err(|e| HarnessError::io("wait for the runtime", e))?;
        let out = drained(self.stdout.take());
        let err = drained(self.stderr.take());
        self.delete();
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
}

impl Drop for OciInstance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.kill("KILL");
            let _ = c.kill();
            let _ = c.wait();
            self.delete();
            drop(self.net.take());
            remove_bundle(&self.bundle_dir);
        }
    }
}

impl Instance for OciInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        if let Some((image, scan)) = &self.image {
            let pid = self.child.as_ref().map_or(0, |c| c.id());
            let reach = self.image_reach();
            let r = wait_image_ready(image, scan, pid, reach, self.launched, timeout);
            if r.is_err() && super::process::has_exited(pid).unwrap_or(false) {
                // Why the runtime or the program ended: its last line.
                let err = drained(self.stderr.take());
                if let Some(line) = spawn::error_line(&err) {
                    return Err(HarnessError::NotReady(format!(
                        "{} ended before the image was ready: {line}",
                        self.runtime.display()
                    )));
                }
            }
            return r;
        }
        match self.ready.wait(timeout)? {
            ReadyEvent::Ready(at) => Ok(at),
            ReadyEvent::Closed => {
                let child = self.child.as_mut().expect("running");
                let _ = child.wait();
                let err = drained(self.stderr.take());
                let line = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(no error output)")
                    .trim();
                Err(HarnessError::Launch(format!(
                    "{} refused to run the bundle: {line}",
                    self.runtime.display()
                )))
            }
        }
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
        let pid = self.child.as_ref()?.id();
        self.http.then(|| HttpTarget {
            target: isolab_net::Target {
                netns: isolab_net::Netns::Find(Arc::new(move || first_other_netns(pid))),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, CONTAINER_PORT)),
            },
            after_ready: false,
        })
    }

    fn image_reach(&self) -> Option<isolab_net::Target> {
        self.image.as_ref()?;
        // On the bridge, as the built-in api: its address from the
        // workbench namespace; else loopback in the container's own
        // namespace, found under the runtime once it made it.
        if let Some(net) = &self.net {
            return Some(net.target(0));
        }
        let pid = self.child.as_ref()?.id();
        Some(isolab_net::Target {
            netns: isolab_net::Netns::Find(Arc::new(move || first_other_netns(pid))),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        })
    }

    fn host_pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map(|c| process_tree(Path::new("/proc"), c.id()))
            .unwrap_or_default()
    }

    fn memory(&self) -> InstanceMemory {
        self.child
            .as_ref()
            .map(|c| spawn::tree_instance_memory(c.id(), None))
            .unwrap_or_default()
    }

    fn stop(mut self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        self.kill("TERM");
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill("KILL");
        terminate(pid, Duration::from_millis(500));
        self.finish(false)
    }

    fn wait_exit(mut self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    return self.finish(false);
                }
            }
            if Instant::now() > end || crate::interrupted() {
                self.kill("KILL");
                return self.finish(true);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Readiness of an image run by a runtime whose process is `pid` (runc,
/// crun): reached at `reach` (its instance's [`Instance::image_reach`]).
pub(crate) fn wait_image_ready(
    image: &ImageWorkload,
    scan: &OutputScan,
    pid: u32,
    reach: Option<isolab_net::Target>,
    launched: Instant,
    timeout: Duration,
) -> Result<Instant, HarnessError> {
    let mut exited = image_ready::exit_watch(pid);
    image_ready::wait_ready(
        &image.ready,
        launched,
        image_ready::Observed {
            reach,
            output: image_ready::Output::Scan(scan),
            exited: &mut exited,
        },
        timeout,
    )
}

/// The network namespace of the first process under `root` (itself
/// included) that differs from ours: the container a runtime (runc, crun)
/// creates after the launch, found while the probe already runs.
fn first_other_netns(root: u32) -> Option<PathBuf> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    process_tree(Path::new("/proc"), root)
        .into_iter()
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .find(|p| std::fs::read_link(p).is_ok_and(|l| l != ours))
}
