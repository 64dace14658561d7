//! Container mode: the workload behind namespaces and a cgroup of its own,
//! launched in-process by `isolab-container` (no runtime binary exec'd per
//! launch, like crun's library path).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolab_container::{ContainerConfig, Running};

use super::process::workload_argv;
use super::{
    Binaries, Instance, InstanceMemory, InstanceOutcome, InstanceSpec, Launcher, ModeKind,
};
use crate::memory::{process_tree, tree_memory};
use crate::probe::{HttpTarget, Netns};
use crate::HarnessError;

/// Port HTTP workloads listen on inside their own network namespace.
pub const CONTAINER_PORT: u16 = 8080;

/// Launches containers with `isolab-container`.
#[derive(Debug)]
pub struct ContainerLauncher {
    pub bins: Binaries,
}

/// The container config for a spec (shared with the OCI peers, so crun and
/// runc get exactly the same workload, arguments and limits).
pub fn container_config(bins: &Binaries, spec: &InstanceSpec) -> ContainerConfig {
    let mut cfg = ContainerConfig::new(&bins.workload, spec.workload.clone());
    let port = spec.port.map(|_| CONTAINER_PORT);
    cfg.args = workload_argv(spec, port, "127.0.0.1").split_off(1);
    cfg.limits.memory_bytes = spec.memory_limit;
    cfg.stop_grace_ms = 2000;
    cfg.quiet_stderr = true;
    cfg
}

fn not_root() -> Option<String> {
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
        let cfg = container_config(&self.bins, spec);
        let running = isolab_container::start(&cfg).map_err(|e| HarnessError::Launch(chain(&e)))?;
        Ok(Box::new(ContainerInstance {
            port: spec.port.map(|_| CONTAINER_PORT),
            running: Some(running),
        }))
    }
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct ContainerInstance {
    running: Option<Running>,
    port: Option<u16>,
}

impl ContainerInstance {
    fn r(&self) -> &Running {
        self.running.as_ref().expect("running until stopped")
    }
}

fn outcome(o: isolab_container::Outcome) -> InstanceOutcome {
    InstanceOutcome {
        status: Some(o.exit_code),
        result_line: o.result.map(|v| v.to_string()),
        oom_killed: o.oom_killed,
        phases: None,
        first_response_ms: None,
    }
}

impl Instance for ContainerInstance {
    fn launched_at(&self) -> Instant {
        self.r().launched_at()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        let r = self.r();
        match r.wait_ready(timeout) {
            Some(d) => Ok(r.launched_at() + d),
            None => Err(HarnessError::NotReady(format!(
                "container {} did not signal ready within {timeout:?}",
                r.id()
            ))),
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        self.port.map(|p| HttpTarget {
            netns: Netns::Path(PathBuf::from(format!("/proc/{}/ns/net", self.r().pid()))),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
        })
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.r().pid() as u32)
    }

    fn memory(&self) -> InstanceMemory {
        let m = tree_memory(Path::new("/proc"), &self.host_pids());
        InstanceMemory {
            pss: m.pss,
            uss: m.uss,
            cgroup_current: self.r().stats().ok().and_then(|s| s.memory_current_bytes),
            ..Default::default()
        }
    }

    fn stop(mut self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        let r = self.running.take().expect("running until stopped");
        r.stop()
            .map(outcome)
            .map_err(|e| HarnessError::Launch(chain(&e)))
    }

    fn wait_exit(mut self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let r = self.running.take().expect("running until stopped");
        // The workload ends by itself; a watchdog stops it past the timeout.
        let pid = r.pid();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        let dog = std::thread::spawn(move || {
            let end = Instant::now() + timeout;
            while Instant::now() < end {
                if d2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let res = r
            .wait()
            .map(outcome)
            .map_err(|e| HarnessError::Launch(chain(&e)));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = dog.join();
        res
    }
}
