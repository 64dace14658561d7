//! Process mode: the workload as a plain child process of the harness, with
//! no namespaces and no cgroup of its own — the baseline every ratio uses.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    free_port, shell_status, terminate, Binaries, Instance, InstanceMemory, InstanceOutcome,
    InstanceSpec, Launcher, ModeKind,
};
use crate::memory::process_tree;
use crate::probe::HttpTarget;
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// The fd number the workload inherits the ready pipe on.
pub const READY_FD: i32 = 3;

/// Launches plain processes.
#[derive(Debug)]
pub struct ProcessLauncher {
    pub bins: Binaries,
}

/// Arguments of `workload` for a spec, with the port filled in.
pub(crate) fn workload_argv(spec: &InstanceSpec, port: Option<u16>, bind: &str) -> Vec<String> {
    let mut argv = vec![spec.workload.clone()];
    if let Some(p) = port {
        argv.extend(["--port".into(), p.to_string(), "--bind".into(), bind.into()]);
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
        let port = match spec.port {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let mut ready = ReadyPipe::new()?;
        let mut cmd = Command::new(&self.bins.workload);
        cmd.args(workload_argv(spec, port, "127.0.0.1"))
            .env("ISOLAB_READY_FD", READY_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let (child, launched) = super::spawn_with_ready(&mut cmd, &mut ready, &spec.join_cgroups)?;
        Ok(Box::new(ProcessInstance {
            child,
            ready,
            launched,
            port,
        }))
    }
}

struct ProcessInstance {
    child: Child,
    ready: ReadyPipe,
    launched: Instant,
    port: Option<u16>,
}

impl ProcessInstance {
    fn finish(mut self) -> Result<InstanceOutcome, HarnessError> {
        let mut out = String::new();
        if let Some(mut so) = self.child.stdout.take() {
            let _ = so.read_to_string(&mut out);
        }
        let st = self
            .child
            .wait()
            .map_err(|e| HarnessError::Io("wait for workload".into(), e))?;
        Ok(InstanceOutcome {
            status: shell_status(st),
            result_line: super::result_line(&out),
            oom_killed: false,
            phases: None,
            first_response_ms: None,
        })
    }
}

impl Instance for ProcessInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        match self.ready.wait(timeout)? {
            ReadyEvent::Ready(at) => Ok(at),
            ReadyEvent::Closed => Err(HarnessError::NotReady(
                "the workload exited before signalling ready".into(),
            )),
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        self.port.map(|p| HttpTarget {
            netns: crate::probe::Netns::Ours,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
        })
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.child.id())
    }

    fn memory(&self) -> InstanceMemory {
        super::tree_instance_memory(self.child.id(), None)
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        terminate(self.child.id(), Duration::from_secs(2));
        self.finish()
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let mut me = *self;
        super::wait_or_terminate(&mut me.child, timeout, Duration::from_millis(500))?;
        me.finish()
    }
}
