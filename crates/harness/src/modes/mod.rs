//! The ways an instance of the workload is run: the three modes under study
//! (process, container, microVM) and the peers measured beside them (crun,
//! runc, QEMU's microvm). Every mode launches through the same [`Launcher`]
//! trait, so the scenario code measures all of them the same way.

pub mod container;
pub mod microvm;
pub mod peers;
pub mod process;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::probe::HttpTarget;
use crate::HarnessError;

/// Every way of running the workload the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ModeKind {
    Process,
    Container,
    Microvm,
    Crun,
    Runc,
    QemuMicrovm,
}

impl ModeKind {
    pub fn name(self) -> &'static str {
        match self {
            ModeKind::Process => "process",
            ModeKind::Container => "container",
            ModeKind::Microvm => "microvm",
            ModeKind::Crun => "crun",
            ModeKind::Runc => "runc",
            ModeKind::QemuMicrovm => "qemu-microvm",
        }
    }

    /// Parse a mode or peer name as typed on the command line.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "process" => ModeKind::Process,
            "container" => ModeKind::Container,
            "microvm" | "vm" => ModeKind::Microvm,
            "crun" => ModeKind::Crun,
            "runc" => ModeKind::Runc,
            "qemu-microvm" | "qemu" => ModeKind::QemuMicrovm,
            _ => return None,
        })
    }

    /// True for the peers (other tools measured as references).
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            ModeKind::Crun | ModeKind::Runc | ModeKind::QemuMicrovm
        )
    }
}

/// What to run in one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Workload name (`api`, `noop`, ...), the first argument of `workload`.
    pub workload: String,
    /// Further arguments.
    pub args: Vec<String>,
    /// TCP port the workload listens on, for HTTP workloads.
    pub port: Option<u16>,
    /// Memory limit for the instance (container cgroup / VM RAM), bytes.
    pub memory_limit: Option<u64>,
    /// Parent cgroup to place the instance under (density runs).
    pub parent_cgroup: Option<String>,
    /// `cgroup.procs` files a launched process joins before it execs, for
    /// modes without a cgroup of their own (density runs): joining before
    /// exec charges every page the instance touches to the budget.
    pub join_cgroups: Vec<PathBuf>,
}

/// Open `cgroup.procs` files for [`join_before_exec`].
pub(crate) fn open_procs(files: &[PathBuf]) -> Result<Vec<std::fs::File>, HarnessError> {
    files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map_err(|e| HarnessError::Io(format!("open {}", f.display()), e))
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

/// In a forked child before exec: write "0" (= this process) to each fd.
/// Only `write(2)` runs, which is async-signal-safe.
pub(crate) fn join_before_exec(fds: &[i32]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: `fd` is an open file owned by the parent for the duration of
        // the spawn; the buffer is a static byte string.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// VM boot phases in milliseconds, as the monitor reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VmPhases {
    pub vmm_setup_ms: Option<f64>,
    pub kernel_boot_ms: Option<f64>,
    pub init_ms: Option<f64>,
    pub workload_ready_ms: Option<f64>,
}

/// Memory attributed to one instance, three ways (bytes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceMemory {
    /// Sum of PSS over the instance's host processes (launcher/monitor included).
    pub pss: u64,
    /// Sum of USS over the same processes.
    pub uss: u64,
    /// The instance's cgroup usage where it has one of its own.
    pub cgroup_current: Option<u64>,
    /// MicroVM only: monitor RSS outside guest RAM (Firecracker's method).
    pub vmm_overhead: Option<u64>,
    /// MicroVM only: guest RAM the guest has touched.
    pub guest_touched: Option<u64>,
}

/// How an instance ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceOutcome {
    /// Shell-style status: the exit code, or 128+N for signal N.
    pub status: Option<i32>,
    /// The workload's JSON result line, when it printed one.
    pub result_line: Option<String>,
    pub oom_killed: bool,
    /// VM boot phases, for VM modes (from the monitor's report).
    pub phases: Option<VmPhases>,
    /// Launch -> first HTTP response when the instance measured it itself
    /// (the microVM: its monitor probes the guest over virtio-net).
    pub first_response_ms: Option<f64>,
}

/// A running instance.
pub trait Instance: Send {
    /// When the launch began (the start of every timer).
    fn launched_at(&self) -> Instant;
    /// Block until the workload's ready signal; returns when it came.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError>;
    /// Where to reach its HTTP service, if the workload serves one.
    fn http_target(&self) -> Option<HttpTarget>;
    /// Host pids that belong to this instance (launcher/monitor included).
    fn host_pids(&self) -> Vec<u32>;
    /// Memory attributed to this instance now.
    fn memory(&self) -> InstanceMemory;
    /// Stop (SIGTERM, then SIGKILL after a grace period) and clean up.
    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError>;
    /// Wait for a workload that ends by itself (noop, worker), then clean up.
    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError>;
}

/// Starts instances of one mode.
pub trait Launcher {
    fn kind(&self) -> ModeKind;
    /// Why this mode cannot run here, with what to do; `None` when it can.
    fn unavailable(&self) -> Option<String>;
    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError>;
}

/// The static binaries the modes need, found next to the running `bench`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub workload: PathBuf,
    pub bench: PathBuf,
    pub init: PathBuf,
}

impl Binaries {
    /// Locate the binaries beside `current_exe()`.
    pub fn beside_current_exe() -> Result<Self, HarnessError> {
        let exe = std::env::current_exe()
            .map_err(|e| HarnessError::Io("locate the running executable".into(), e))?;
        let dir = exe
            .parent()
            .map(|d| {
                // Test binaries live in target/<triple>/<profile>/deps.
                if d.ends_with("deps") {
                    d.parent().unwrap_or(d).to_path_buf()
                } else {
                    d.to_path_buf()
                }
            })
            .unwrap_or_default();
        let b = Binaries {
            workload: dir.join("workload"),
            bench: dir.join("bench"),
            init: dir.join("isolab-init"),
        };
        if !b.workload.exists() {
            return Err(HarnessError::MissingBinary(b.workload.clone()));
        }
        Ok(b)
    }
}

/// Kill a process group member politely, then firmly.
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

/// Spawn `cmd` with the write end of `ready` as fd [`process::READY_FD`],
/// joining `join_cgroups` before exec; closes the parent's write end.
/// Returns the child and the launch instant (taken just before the spawn).
pub(crate) fn spawn_with_ready(
    cmd: &mut std::process::Command,
    ready: &mut crate::ready::ReadyPipe,
    join_cgroups: &[PathBuf],
) -> Result<(std::process::Child, Instant), HarnessError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let wfd = ready.write_end().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let procs = open_procs(join_cgroups)?;
    let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: only async-signal-safe calls (dup2/fcntl, write) run between
    // fork and exec; `wfd` and the procs files stay open in the parent until
    // after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            dup_to(wfd, process::READY_FD)?;
            join_before_exec(&procs_fds)
        });
    }
    let launched = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        HarnessError::Io(format!("spawn {}", cmd.get_program().to_string_lossy()), e)
    })?;
    drop(procs);
    ready.close_write();
    Ok((child, launched))
}

/// PSS/USS of the process tree under `pid`; with `guest_bytes`, also
/// Firecracker's split of the root's RSS into VMM overhead and guest RAM.
pub(crate) fn tree_instance_memory(pid: u32, guest_bytes: Option<u64>) -> InstanceMemory {
    let proc_root = std::path::Path::new("/proc");
    let m = crate::memory::tree_memory(proc_root, &crate::memory::process_tree(proc_root, pid));
    let split = guest_bytes.and_then(|g| crate::memory::split_guest_memory(proc_root, pid, g).ok());
    InstanceMemory {
        pss: m.pss,
        uss: m.uss,
        cgroup_current: None,
        vmm_overhead: split.map(|s| s.0),
        guest_touched: split.map(|s| s.1),
    }
}

/// The workload's JSON result line: the last output line that opens an object.
pub(crate) fn result_line(out: &str) -> Option<String> {
    out.lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(String::from)
}

/// Wait up to `timeout` for `child` to exit by itself; past it, SIGTERM and
/// after `grace` SIGKILL (the caller reaps). True if it exited on its own.
pub(crate) fn wait_or_terminate(
    child: &mut std::process::Child,
    timeout: Duration,
    grace: Duration,
) -> Result<bool, HarnessError> {
    let end = Instant::now() + timeout;
    loop {
        if child
            .try_wait()
            .map_err(|e| HarnessError::Io("wait".into(), e))?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() > end {
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

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| HarnessError::Io("find a free port".into(), e))?;
    Ok(l.local_addr()
        .map_err(|e| HarnessError::Io("find a free port".into(), e))?
        .port())
}

/// Everything the modes share in one run: the binaries, and the guest
/// artifacts (provisioned once, only when a VM mode can run here).
#[derive(Debug)]
pub struct Context {
    pub bins: Binaries,
    guest: std::sync::OnceLock<Result<microvm::GuestArtifacts, String>>,
    workload: String,
}

impl Context {
    /// Locate the binaries next to the running executable.
    pub fn new(workload: &str) -> Result<Self, HarnessError> {
        Ok(Context {
            bins: Binaries::beside_current_exe()?,
            guest: std::sync::OnceLock::new(),
            workload: workload.to_string(),
        })
    }

    /// The instance spec for a workload as `compare` runs it.
    pub fn spec(&self) -> InstanceSpec {
        InstanceSpec {
            workload: self.workload.clone(),
            args: match self.workload.as_str() {
                "worker" => vec!["--duration-ms".into(), "200".into()],
                "cache" => vec!["--mib".into(), "32".into()],
                _ => vec![],
            },
            port: crate::compare::serves_http(&self.workload).then_some(8080),
            memory_limit: None,
            parent_cgroup: None,
            join_cgroups: vec![],
        }
    }

    /// Guest kernel and initramfs, provisioned on first use (builds the
    /// kernel on the very first run; cached afterwards).
    pub fn guest(&self) -> Result<microvm::GuestArtifacts, String> {
        self.guest
            .get_or_init(|| {
                let cache = isolab_guest_kernel::cache_root().map_err(|e| e.to_string())?;
                let dir = self
                    .bins
                    .workload
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let opts = isolab_guest_kernel::ProvisionOptions::new(cache, &dir, &self.workload);
                let p = isolab_guest_kernel::provision(&opts).map_err(|e| {
                    format!(
                        "guest artifacts could not be provisioned: {}",
                        container::chain(&e)
                    )
                })?;
                Ok(microvm::GuestArtifacts {
                    vmlinux: p.kernel.vmlinux,
                    bz_image: p.kernel.bz_image,
                    initramfs: p.initramfs,
                })
            })
            .clone()
    }

    fn guest_if_bootable(&self) -> Result<microvm::GuestArtifacts, String> {
        match microvm::native_refusal() {
            Some(r) => Err(r),
            None => self.guest(),
        }
    }

    /// The launcher of a mode.
    pub fn launcher(&self, kind: ModeKind) -> Box<dyn Launcher> {
        match kind {
            ModeKind::Process => Box::new(process::ProcessLauncher {
                bins: self.bins.clone(),
            }),
            ModeKind::Container => Box::new(container::ContainerLauncher {
                bins: self.bins.clone(),
            }),
            ModeKind::Microvm => Box::new(microvm::MicrovmLauncher {
                bins: self.bins.clone(),
                guest: self.guest_if_bootable(),
            }),
            ModeKind::Crun | ModeKind::Runc => Box::new(peers::OciPeer {
                kind,
                bins: self.bins.clone(),
            }),
            ModeKind::QemuMicrovm => Box::new(peers::QemuPeer {
                guest: self.guest_if_bootable(),
            }),
        }
    }
}
