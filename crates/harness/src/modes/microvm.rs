//! MicroVM mode: one `bench vm run` monitor process per instance (as
//! Firecracker runs one process per VM), booting the provisioned guest
//! kernel and initramfs. The monitor writes `R` to the inherited ready fd
//! when the guest's workload-ready marker arrives, so all modes signal ready
//! the same way; its JSON report on exit carries the boot phases.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::READY_FD;
use super::{
    shell_status, terminate, Binaries, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind, VmPhases,
};
use crate::memory::process_tree;
use crate::probe::HttpTarget;
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// Guest RAM when the spec sets no memory limit.
pub const DEFAULT_GUEST_MIB: u64 = 128;

/// Guest kernel + initramfs for one workload.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    pub vmlinux: PathBuf,
    pub bz_image: PathBuf,
    pub initramfs: PathBuf,
}

/// Why the microVM cannot boot a stock guest kernel here, if it cannot.
pub fn native_refusal() -> Option<String> {
    let kind = isolab_microvm::host::detect(Path::new("/"));
    kind.refusal().map(String::from)
}

/// Launches `bench vm run` monitors.
#[derive(Debug)]
pub struct MicrovmLauncher {
    pub bins: Binaries,
    /// Provisioned artifacts, or why they could not be.
    pub guest: Result<GuestArtifacts, String>,
}

impl Launcher for MicrovmLauncher {
    fn kind(&self) -> ModeKind {
        ModeKind::Microvm
    }

    fn unavailable(&self) -> Option<String> {
        native_refusal().or_else(|| self.guest.as_ref().err().cloned())
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let guest = self
            .guest
            .as_ref()
            .map_err(|e| HarnessError::Launch(e.clone()))?;
        let mib = spec
            .memory_limit
            .map(|b| b >> 20)
            .unwrap_or(DEFAULT_GUEST_MIB);
        let mut ready = ReadyPipe::new()?;
        let mut cmd = Command::new(&self.bins.bench);
        cmd.args(["vm", "run", "--json", "--workload", &spec.workload]);
        // HTTP workloads get a virtio-net device on the workbench bridge; the
        // monitor probes the guest after its ready marker and stops the VM.
        // Not in density runs, where instances must stay up (and one bench
        // process owns the workbench network at a time).
        let net = spec.port.is_some() && spec.join_cgroups.is_empty();
        if net {
            cmd.args(["--net", "--requests", "1"]);
        }
        cmd.arg("--memory")
            .arg(format!("{mib}M"))
            .arg("--kernel")
            .arg(&guest.vmlinux)
            .arg("--initrd")
            .arg(&guest.initramfs)
            .arg("--ready-fd")
            .arg(READY_FD.to_string());
        if !spec.args.is_empty() {
            cmd.arg("--").args(&spec.args);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, launched) = super::spawn_with_ready(&mut cmd, &mut ready, &spec.join_cgroups)?;
        Ok(Box::new(VmInstance {
            child,
            ready,
            launched,
            guest_bytes: mib << 20,
            net,
        }))
    }
}

struct VmInstance {
    child: Child,
    ready: ReadyPipe,
    launched: Instant,
    guest_bytes: u64,
    /// The monitor probes over virtio-net and then stops the VM itself.
    net: bool,
}

fn ms(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get("phases")
        .and_then(|p| p.get(key))
        .and_then(|x| x.as_f64())
}

impl VmInstance {
    fn finish(mut self) -> Result<InstanceOutcome, HarnessError> {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let st = self
            .child
            .wait()
            .map_err(|e| HarnessError::Io("wait for the monitor".into(), e))?;
        let report: Option<serde_json::Value> =
            out.lines().rev().find_map(|l| serde_json::from_str(l).ok());
        let Some(report) = report else {
            return Err(HarnessError::Launch(format!(
                "the monitor exited ({:?}) without a report: {}",
                shell_status(st),
                err.lines().last().unwrap_or("")
            )));
        };
        let phases = VmPhases {
            vmm_setup_ms: ms(&report, "vmm_setup_ms"),
            kernel_boot_ms: ms(&report, "kernel_boot_ms"),
            init_ms: ms(&report, "init_ms"),
            workload_ready_ms: ms(&report, "workload_ready_ms"),
        };
        Ok(InstanceOutcome {
            status: report
                .get("exit_status")
                .and_then(|s| s.as_i64())
                .map(|s| s as i32),
            result_line: report
                .get("workload_output")
                .and_then(|o| o.as_str())
                .and_then(|o| {
                    o.lines()
                        .rev()
                        .find(|l| l.starts_with('{'))
                        .map(String::from)
                }),
            oom_killed: false,
            phases: Some(phases),
            first_response_ms: report
                .get("net")
                .and_then(|n| n.get("launch_to_first_response_ms"))
                .and_then(|v| v.as_f64()),
        })
    }
}

impl Instance for VmInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        match self.ready.wait(timeout)? {
            ReadyEvent::Ready(at) => Ok(at),
            ReadyEvent::Closed => {
                // The monitor is ending: its last stderr line says why.
                let _ = self.child.wait();
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                Err(HarnessError::NotReady(format!(
                    "the microVM stopped before its workload signalled ready: {}",
                    err.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("(no output)")
                        .trim()
                )))
            }
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        // The monitor probes the guest itself over virtio-net (--net) and
        // reports the first response in its JSON; nothing to probe from here.
        None
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.child.id())
    }

    fn memory(&self) -> InstanceMemory {
        super::tree_instance_memory(self.child.id(), Some(self.guest_bytes))
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        // With --net the monitor stops the VM itself once its probe answered;
        // give it that long before asking.
        let wait = if self.net {
            Duration::from_secs(30)
        } else {
            Duration::ZERO
        };
        let end = Instant::now() + wait;
        let mut me = *self;
        while Instant::now() < end {
            if me
                .child
                .try_wait()
                .map_err(|e| HarnessError::Io("wait".into(), e))?
                .is_some()
            {
                return me.finish();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        terminate(me.child.id(), Duration::from_secs(5));
        me.finish()
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let mut me = *self;
        super::wait_or_terminate(&mut me.child, timeout, Duration::from_secs(2))?;
        me.finish()
    }
}
