//! Container mode: the workload behind namespaces and a cgroup of its own,
//! launched in-process by `isolab-container` (no runtime binary exec'd per
//! launch, like crun's library path). An HTTP workload is attached as Docker
//! attaches a container: a veth from its network namespace to the workbench
//! bridge, made on the network namespace the launcher makes while the
//! container is cloned (inside the launch clock; the child joins it once
//! the veth is there), and probed
//! at its bridge address from the workbench namespace; or, with
//! [`InstanceSpec::loopback_http`] (and in density runs), on loopback inside
//! its own namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isolab_container::{ContainerConfig, NetworkHook, Running};
use isolab_net::Workbench;

use super::image_ready;
use super::process::workload_argv;
use super::{
    Binaries, Context, HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind,
};
use crate::image::ImageWorkload;
use crate::memory::{process_tree, tree_memory};
use crate::net::{on_bridge, SharedWorkbench, VethHook};
use crate::HarnessError;

/// Port HTTP workloads listen on inside their own network namespace.
pub const CONTAINER_PORT: u16 = isolab_workload::HTTP_PORT;

/// Launches containers with `isolab-container`.
#[derive(Debug)]
pub struct ContainerLauncher {
    pub bins: Binaries,
    network: Arc<SharedWorkbench>,
}

/// The registry's constructor.
pub(crate) fn launcher(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(ContainerLauncher {
        bins: ctx.bins.clone(),
        network: Arc::clone(&ctx.network),
    })
}

/// Whether an HTTP workload in `spec` goes on the workbench bridge (else
/// loopback in its own namespace): not when asked for loopback, and not in
/// density runs (one veth and lease per instance would be needed).
pub fn on_workbench(spec: &InstanceSpec) -> bool {
    spec.workload.serves_http() && !spec.loopback_http && spec.join_cgroups.is_empty()
}

/// The container config for a spec (shared with the OCI peers, so crun and
/// runc get exactly the same workload, arguments and limits).
pub fn container_config(bins: &Binaries, spec: &InstanceSpec) -> ContainerConfig {
    let mut cfg = ContainerConfig::new(&bins.workload, spec.workload.name());
    let bind = if on_workbench(spec) {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    cfg.args = workload_argv(spec, CONTAINER_PORT, bind).split_off(1);
    cfg.limits.memory_bytes = spec.memory_bytes;
    cfg.limits.cpus = spec.cpus;
    cfg.limits.pids = spec.pids;
    cfg.hostname = spec.hostname.clone();
    cfg.privileged = spec.privileged;
    cfg.stop_grace_ms = 2000;
    cfg.quiet_stderr = !spec.keep_stderr;
    cfg
}

/// The container config for a user's image: its rootfs as the overlay's
/// lower layer, its program with its argv, environment, working directory
/// and user; the same limits and hardening as the built-in workload.
pub fn image_config(
    bins: &Binaries,
    spec: &InstanceSpec,
    image: &ImageWorkload,
) -> Result<ContainerConfig, HarnessError> {
    let run = &image.run;
    let mut cfg = container_config(bins, spec);
    cfg.args.clear();
    cfg.image = Some(isolab_container::ImageProcess {
        rootfs: run.rootfs.clone(),
        program: image_ready::program_in_root(run)?,
        argv: run.args.clone(),
        env: run.env.clone(),
        cwd: run.cwd.clone(),
        uid: run.uid,
        gid: run.gid,
        additional_gids: run.additional_gids.clone(),
    });
    Ok(cfg)
}

/// Why containers cannot run here, if they cannot.
pub(crate) fn not_root() -> Option<String> {
    if nix::unistd::geteuid().is_root() {
        None
    } else {
        Some("needs root (namespaces, cgroups, mounts): run as root".into())
    }
}

impl Launcher for ContainerLauncher {
    fn kind(&self) -> ModeKind {
        ModeKind::Container
    }

    fn unavailable(&self) -> Option<String> {
        not_root()
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let cfg = match &spec.image {
            Some(i) => image_config(&self.bins, spec, i)?,
            None => container_config(&self.bins, spec),
        };
        let hook = if on_workbench(spec) {
            Some(VethHook::new(self.network.get()?))
        } else {
            None
        };
        let running =
            isolab_container::start_with(&cfg, hook.as_ref().map(|h| h as &dyn NetworkHook))?;
        Ok(Box::new(ContainerInstance {
            http: spec.workload.serves_http() && spec.image.is_none(),
            running: Some(running),
            veth: hook,
            image: spec.image.clone(),
        }))
    }
}

struct ContainerInstance {
    running: Option<Running>,
    http: bool,
    /// The veth on the workbench bridge; dropped (and removed) after the
    /// container has stopped.
    veth: Option<VethHook<Arc<Workbench>>>,
    /// A user's image: readiness by its rule, observed from outside.
    image: Option<Arc<ImageWorkload>>,
}

impl ContainerInstance {
    fn r(&self) -> &Running {
        self.running.as_ref().expect("running until stopped")
    }
}

fn outcome(o: isolab_container::Outcome, timed_out: bool) -> InstanceOutcome {
    InstanceOutcome {
        status: Some(o.exit_code),
        result: isolab_workload::result::parse(&o.stdout),
        cpu_time_us: o.stats.cpu_usage_usec,
        launch_phases: Some(o.phases),
        cgroup: Some(o.stats),
        timed_out,
        ..InstanceOutcome::default()
    }
}

impl Instance for ContainerInstance {
    fn launched_at(&self) -> Instant {
        self.r().launched_at()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        let r = self.r();
        if let Some(image) = &self.image {
            let reach = self.image_reach();
            let pid = r.pid() as u32;
            let mut exited = image_ready::exit_watch(pid);
            let text = match &image.ready {
                crate::image::ReadyRule::Log(t) => t.clone(),
                _ => String::new(),
            };
            let seen = || r.output_contains(&text);
            return image_ready::wait_ready(
                &image.ready,
                r.launched_at(),
                image_ready::Observed {
                    reach,
                    output: image_ready::Output::Poll(&seen),
                    exited: &mut exited,
                },
                timeout,
            );
        }
        match r.wait_ready(timeout) {
            Some(d) => Ok(r.launched_at() + d),
            None => Err(HarnessError::NotReady(format!(
                "container {} did not signal ready within {timeout:?}",
                r.id()
            ))),
        }
    }

    fn image_reach(&self) -> Option<isolab_net::Target> {
        self.image.as_ref()?;
        // On the bridge: its address from the workbench namespace; else
        // loopback inside its own namespace.
        match &self.veth {
            Some(h) => h.addr().map(|ip| on_bridge(h.workbench(), ip, 0)),
            None => Some(isolab_net::Target {
                netns: isolab_net::Netns::Path(PathBuf::from(format!(
                    "/proc/{}/ns/net",
                    self.r().pid()
                ))),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            }),
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        // An image's readiness is its first answer (its own rule and path).
        if self.image.is_some() {
            return None;
        }
        if let Some(h) = &self.veth {
            return h.addr().map(|ip| HttpTarget {
                target: on_bridge(h.workbench(), ip, CONTAINER_PORT),
                after_ready: false,
            });
        }
        self.http.then(|| HttpTarget {
            target: isolab_net::Target {
                netns: isolab_net::Netns::Path(PathBuf::from(format!(
                    "/proc/{}/ns/net",
                    self.r().pid()
                ))),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, CONTAINER_PORT)),
            },
            after_ready: false,
        })
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.r().pid() as u32)
    }

    fn memory(&self) -> InstanceMemory {
        // An init that shares the launcher's memory would count the
        // launcher's pages as the container's: its own are its stack,
        // which the cgroup's figure holds.
        let r = self.r();
        let init = r.pid() as u32;
        let pids: Vec<u32> = self
            .host_pids()
            .into_iter()
            .filter(|p| !(r.init_shares_launcher_memory() && *p == init))
            .collect();
        let m = tree_memory(Path::new("/proc"), &pids);
        InstanceMemory {
            pss: m.pss,
            uss: m.uss,
            cgroup_current: self.r().stats().ok().and_then(|s| s.memory_current_bytes),
            ..Default::default()
        }
    }

    fn launch_phases(&self) -> Option<isolab_container::LaunchPhases> {
        Some(self.r().phases())
    }

    fn stop(mut self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        let r = self.running.take().expect("running until stopped");
        let stopped = r.stop();
        drop(self.veth.take());
        Ok(outcome(stopped?, false))
    }

    fn wait_exit(mut self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let r = self.running.take().expect("running until stopped");
        // The workload ends by itself; a watchdog kills it past the timeout
        // (or on Ctrl-C).
        let pid = r.pid();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d2, f2) = (done.clone(), fired.clone());
        let dog = std::thread::spawn(move || {
            let end = Instant::now() + timeout;
            while Instant::now() < end && !crate::interrupted() {
                if d2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let res = r.wait();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = dog.join();
        Ok(outcome(
            res?,
            fired.load(std::sync::atomic::Ordering::SeqCst),
        ))
    }
}
