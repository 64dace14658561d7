//! MicroVM mode: one `isolab-vmm` monitor process per instance (as
//! Firecracker runs one process per VM), booting the provisioned guest
//! kernel and initramfs. The monitor writes `R` to the inherited ready fd
//! when the guest's workload-ready marker arrives, so all modes signal ready
//! the same way; its JSON report on exit carries the boot phases.
//!
//! An HTTP workload gets a virtio-net device: a TAP this launcher creates
//! on the workbench bridge (`isolab-net`) is passed to the monitor as an
//! inherited fd, the guest's address goes on the kernel command line, and
//! the guest is probed from inside the workbench namespace with the same
//! probe as every other mode, once its ready marker arrived (before that
//! the guest has no address, and a probe would only wait on ARP).
//!
//! With [`VmHost::Emulated`] (the demos' `--host emulated`) the same monitor
//! runs inside the emulated hardware-virtualisation host instead, one boot
//! of it per instance; such an instance can only be waited for to its end.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isolab_emuhost::{EmuhostError, EmulatedHost, FileMap, HostConfig, Invocation};
use isolab_guest_kernel::GuestArtifacts;
use isolab_microvm::{Console, VmConfig, VmReport};
use isolab_net::{Tap, Workbench};

pub mod image;

use super::spawn::{self, drain, drained, shell_status, READY_FD};
use super::{
    vm_limits, Context, HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind, VmHost,
};
use crate::memory::process_tree;
use crate::net::SharedWorkbench;
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// Guest RAM when the spec sets no memory.
pub const DEFAULT_GUEST_MIB: u64 = isolab_microvm::config::DEFAULT_MEMORY_MIB;

/// Longest one microVM run in the emulated host may take (it boots in
/// seconds, but everything inside runs under TCG).
pub const EMULATED_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the microVM cannot boot a stock guest kernel here, if it cannot.
pub fn native_refusal() -> Option<String> {
    isolab_microvm::host::detect(Path::new("/"))
        .refusal()
        .map(String::from)
}

/// Launches `isolab-vmm` monitors.
#[derive(Debug)]
pub struct MicrovmLauncher {
    /// The `isolab-vmm` binary.
    pub vmm: PathBuf,
    /// Provisioned artifacts, or why they could not be.
    pub guest: Result<GuestArtifacts, String>,
    pub host: VmHost,
    network: Arc<SharedWorkbench>,
    /// The emulated host, prepared on first use (or why it cannot be).
    emulated: OnceLock<Result<EmulatedHost, String>>,
    /// A user's image's disk and spec initramfs, built on first use.
    image_boot: std::sync::Mutex<Option<image::ImageBoot>>,
}

/// The registry's constructor.
pub(crate) fn launcher(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(MicrovmLauncher {
        vmm: ctx.bins.vmm.clone(),
        guest: ctx.guest_if_bootable(),
        host: ctx.vm_host,
        network: Arc::clone(&ctx.network),
        emulated: OnceLock::new(),
        image_boot: std::sync::Mutex::new(None),
    })
}

/// The monitor's configuration for a spec.
pub fn vm_config(guest: &GuestArtifacts, spec: &InstanceSpec) -> VmConfig {
    let mut cfg = VmConfig::new(&guest.vmlinux, spec.workload.name());
    cfg.initrd = Some(guest.initramfs.clone());
    cfg.memory_mib = spec
        .memory_bytes
        .map(|b| b >> 20)
        .unwrap_or(DEFAULT_GUEST_MIB);
    cfg.vcpus = spec.vcpus.unwrap_or(cfg.vcpus);
    cfg.workload_args = spec.args.clone();
    cfg
}

/// The guest's address on the workbench bridge, as guest init reads it from
/// the kernel command line (docs/contracts.md).
pub fn net_cmdline(tap: &Tap) -> String {
    let lease = tap.lease();
    format!("isolab.ip={} isolab.gw={}", lease.cidr(), lease.gateway())
}

/// A guest's network, as our microVM and the QEMU peer get it: for an HTTP
/// workload, a TAP on the workbench bridge; none otherwise, nor in density
/// runs, where instances join a budget cgroup and count once ready (one
/// TAP and lease each would be needed).
pub fn guest_net(
    network: &SharedWorkbench,
    spec: &InstanceSpec,
) -> Result<Option<(Arc<Workbench>, Tap)>, HarnessError> {
    if !(spec.workload.serves_http() && spec.join_cgroups.is_empty()) {
        return Ok(None);
    }
    let wb = network.get()?;
    let tap = wb.create_tap(None, false)?;
    Ok(Some((wb, tap)))
}

/// Where a guest on `tap` serves HTTP: its leased address, probed from the
/// workbench namespace once it signalled ready.
pub fn guest_http_target(wb: &Workbench, tap: &Tap) -> HttpTarget {
    HttpTarget {
        target: isolab_net::Target {
            netns: isolab_net::Netns::Path(wb.netns_path()),
            addr: (tap.lease().addr(), isolab_workload::HTTP_PORT).into(),
        },
        after_ready: true,
    }
}

/// `isolab-vmm` arguments for `cfg`: the ready fd at [`READY_FD`] and, with
/// `mac`, a TAP at the fd after it.
pub fn vmm_args(cfg: &VmConfig, ready_fd: Option<i32>, tap: Option<(i32, [u8; 6])>) -> Vec<String> {
    let mut v: Vec<String> = vec!["--kernel".into(), cfg.kernel.display().to_string()];
    if let Some(i) = &cfg.initrd {
        v.extend(["--initrd".into(), i.display().to_string()]);
    }
    v.extend([
        "--memory-mib".into(),
        cfg.memory_mib.to_string(),
        "--vcpus".into(),
        cfg.vcpus.to_string(),
        "--workload".into(),
        cfg.workload.clone(),
    ]);
    match &cfg.console {
        Console::Off => {}
        Console::Stdout => v.extend(["--console".into(), "stdout".into()]),
        Console::File(p) => v.extend(["--console".into(), p.display().to_string()]),
    }
    if let Some(extra) = &cfg.cmdline_extra {
        v.push(format!("--cmdline-extra={extra}"));
    }
    if let Some(text) = &cfg.ready_on_output {
        v.push(format!("--ready-on-output={text}"));
    }
    if cfg.allow_pvm {
        v.push("--allow-pvm".into());
    }
    if let Some(fd) = ready_fd {
        v.extend(["--ready-fd".into(), fd.to_string()]);
    }
    if let Some((fd, mac)) = tap {
        let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        v.extend([
            "--tap-fd".into(),
            fd.to_string(),
            "--mac".into(),
            mac.join(":"),
        ]);
    }
    if !cfg.workload_args.is_empty() {
        v.push("--".into());
        v.extend(cfg.workload_args.iter().cloned());
    }
    v
}

/// The monitor's report in its stdout: the last line that parses as one
/// (a guest console on stdout comes before it).
pub fn read_report(stdout: &str) -> Option<VmReport> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

/// Why the last report-looking line of `stdout` (a JSON object with a
/// `stop_reason`) is not a report this build can read: a monitor from
/// another build of the workspace, most likely.
fn unreadable_report(stdout: &str) -> Option<String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{') && l.contains("\"stop_reason\""))?;
    serde_json::from_str::<VmReport>(line).err().map(|e| {
        format!(
            "it printed a report this bench cannot read ({e}): isolab-vmm from another build? rebuild the workspace"
        )
    })
}

/// What a finished monitor observed, as an instance outcome.
pub fn outcome_of(report: VmReport, stderr: &str, label: Option<String>) -> InstanceOutcome {
    InstanceOutcome {
        status: report.exit_status.map(i32::from),
        result: isolab_workload::result::parse(&report.workload_output),
        peak_rss_kib: Some(report.memory_at_end.total_rss_kib),
        stderr_tail: spawn::tail_lines(stderr, 20),
        vm: Some(Box::new(report)),
        label,
        ..InstanceOutcome::default()
    }
}

/// A spawned monitor and what it needs until it ends.
#[derive(Debug)]
pub struct Vmm {
    pub child: Child,
    pub launched: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Vmm {
    /// Spawns `vmm` for `cfg` as an instance: `ready`'s write end at
    /// [`READY_FD`], `tap` (with its MAC) after it, joining `join_cgroups`
    /// before exec. The caller keeps `tap` until the monitor has ended.
    pub fn spawn(
        vmm: &Path,
        cfg: &VmConfig,
        ready: &mut ReadyPipe,
        tap: Option<(&OwnedFd, [u8; 6])>,
        join_cgroups: &[PathBuf],
    ) -> Result<Self, HarnessError> {
        let spawned = Vmm::start(vmm, cfg, None, ready.write_end(), tap, join_cgroups, false);
        ready.close_write();
        spawned
    }

    /// Like [`Vmm::spawn`], with `disk` as the guest's read-only root disk
    /// (`--disk`, an image's) and, with `echo`, the console passed through.
    pub fn spawn_with_disk(
        vmm: &Path,
        cfg: &VmConfig,
        disk: &Path,
        ready: &mut ReadyPipe,
        tap: Option<(&OwnedFd, [u8; 6])>,
        join_cgroups: &[PathBuf],
        echo: bool,
    ) -> Result<Self, HarnessError> {
        let spawned = Vmm::start(
            vmm,
            cfg,
            Some(disk),
            ready.write_end(),
            tap,
            join_cgroups,
            echo,
        );
        ready.close_write();
        spawned
    }

    /// Spawns `vmm` for `cfg` with an optional ready fd and TAP; with
    /// `echo`, the guest console on its stdout is passed to ours as it
    /// comes (the report line is kept back).
    pub fn spawn_with(
        vmm: &Path,
        cfg: &VmConfig,
        ready: Option<&OwnedFd>,
        tap: Option<(&OwnedFd, [u8; 6])>,
        echo: bool,
    ) -> Result<Self, HarnessError> {
        Vmm::start(vmm, cfg, None, ready, tap, &[], echo)
    }

    fn start(
        vmm: &Path,
        cfg: &VmConfig,
        disk: Option<&Path>,
        ready: Option<&OwnedFd>,
        tap: Option<(&OwnedFd, [u8; 6])>,
        join_cgroups: &[PathBuf],
        echo: bool,
    ) -> Result<Self, HarnessError> {
        if !vmm.is_file() {
            return Err(HarnessError::MissingBinary(vmm.to_path_buf()));
        }
        let mut fds: Vec<i32> = ready.iter().map(|fd| fd.as_raw_fd()).collect();
        let ready_at = ready.map(|_| READY_FD);
        let tap_at = tap.map(|(fd, mac)| {
            fds.push(fd.as_raw_fd());
            (READY_FD + fds.len() as i32 - 1, mac)
        });
        let mut cmd = Command::new(vmm);
        if let Some(d) = disk {
            cmd.arg("--disk").arg(d);
        }
        cmd.args(vmm_args(cfg, ready_at, tap_at))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, launched) = spawn::spawn_with_fds(&mut cmd, &fds, join_cgroups)?;
        let stdout = child.stdout.take();
        Ok(Vmm {
            stdout: Some(if echo {
                echo_console(stdout)
            } else {
                drain(stdout)
            }),
            stderr: Some(drain(child.stderr.take())),
            child,
            launched,
        })
    }

    /// Waits for the monitor and reads its report (and its stderr); an
    /// error says why there is none, in the monitor's own words.
    pub fn finish(&mut self) -> Result<(VmReport, String), HarnessError> {
        self.finish_with_console().map(|(r, err, _)| (r, err))
    }

    /// [`Vmm::finish`], also returning its stdout (the guest console, when
    /// it is on, before the report line).
    pub fn finish_with_console(&mut self) -> Result<(VmReport, String, String), HarnessError> {
        let st = self
            .child
            .wait()
            .map_err(|e| HarnessError::io("wait for the monitor", e))?;
        let out = drained(self.stdout.take());
        let err = drained(self.stderr.take());
        match read_report(&out) {
            Some(r) => Ok((r, err, out)),
            None => Err(HarnessError::Monitor {
                status: shell_status(st),
                message: unreadable_report(&out)
                    .or_else(|| spawn::error_line(&err))
                    .unwrap_or_else(|| "(no error output)".into()),
            }),
        }
    }
}

/// Like [`drain`], also printing every line that is not the report to our
/// stdout as it arrives.
fn echo_console(r: Option<impl std::io::Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        let Some(r) = r else { return all };
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if serde_json::from_str::<VmReport>(&line).is_err() {
                println!("{line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    })
}

impl Launcher for MicrovmLauncher {
    fn kind(&self) -> ModeKind {
        ModeKind::Microvm
    }

    fn unavailable(&self) -> Option<String> {
        let refusal = match self.host {
            VmHost::Native => native_refusal(),
            VmHost::Emulated => None,
        };
        refusal.or_else(|| self.guest.as_ref().err().cloned())
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let guest = self
            .guest
            .as_ref()
            .map_err(|e| HarnessError::Unavailable(e.clone()))?;
        if let Some(img) = &spec.image {
            return self.launch_image(guest, img, spec);
        }
        let mut cfg = vm_config(guest, spec);
        if self.host == VmHost::Emulated {
            return self.launch_emulated(cfg, None);
        }
        // HTTP workloads get a virtio-net device on the workbench bridge.
        let (workbench, tap) = guest_net(&self.network, spec)?.unzip();
        if let Some(t) = &tap {
            cfg.cmdline_extra = Some(net_cmdline(t));
        }
        // Limits beyond vCPUs and RAM: the monitor in a cgroup of its own,
        // the guest's console on (quiet) to read its OOM killer.
        let monitor_cg = vm_limits::MonitorCgroup::create(ModeKind::Microvm, spec)?;
        let join = match &monitor_cg {
            Some(cg) => {
                cfg.console = Console::Stdout;
                cfg.cmdline_extra = Some(match cfg.cmdline_extra.take() {
                    Some(e) => format!("{e} {}", vm_limits::QUIET),
                    None => vm_limits::QUIET.to_owned(),
                });
                cg.procs_files()
            }
            None => spec.join_cgroups.clone(),
        };
        let tap_fd = tap
            .as_ref()
            .map(|t| t.try_clone_fd().map(|fd| (fd, t.lease().mac())))
            .transpose()
            .map_err(|e| HarnessError::io("duplicate the TAP fd", e))?;
        let mut ready = ReadyPipe::new()?;
        let vmm = Vmm::spawn(
            &self.vmm,
            &cfg,
            &mut ready,
            tap_fd.as_ref().map(|(fd, mac)| (fd, *mac)),
            &join,
        )?;
        drop(tap_fd);
        let target = workbench
            .as_deref()
            .zip(tap.as_ref())
            .map(|(wb, t)| guest_http_target(wb, t));
        Ok(Box::new(VmInstance {
            vmm,
            ready,
            guest_bytes: cfg.memory_mib << 20,
            target,
            tap,
            _workbench: workbench,
            monitor_cg,
        }))
    }
}

struct VmInstance {
    vmm: Vmm,
    ready: ReadyPipe,
    guest_bytes: u64,
    target: Option<HttpTarget>,
    /// Dropped after the monitor ended, before the workbench it is on.
    tap: Option<Tap>,
    _workbench: Option<Arc<Workbench>>,
    /// The monitor's own cgroup, where the spec set limits.
    monitor_cg: Option<vm_limits::MonitorCgroup>,
}

impl VmInstance {
    fn finish(mut self, timed_out: bool) -> Result<InstanceOutcome, HarnessError> {
        let finished = self.vmm.finish_with_console();
        drop(self.tap.take());
        let limited = self.monitor_cg.is_some();
        let cgroup = self
            .monitor_cg
            .take()
            .and_then(vm_limits::MonitorCgroup::finish);
        let (report, err, console) = finished?;
        Ok(InstanceOutcome {
            timed_out,
            cgroup,
            guest_oom: limited.then(|| vm_limits::guest_oom(&console)),
            ..outcome_of(report, &err, None)
        })
    }
}

impl Instance for VmInstance {
    fn launched_at(&self) -> Instant {
        self.vmm.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        match self.ready.wait(timeout)? {
            ReadyEvent::Ready(at) => Ok(at),
            ReadyEvent::Closed => {
                // The monitor is ending: its last stderr line says why.
                let why = match self.vmm.finish() {
                    Ok((r, _)) => format!(
                        "the guest stopped ({:?}) with status {:?}",
                        r.stop_reason, r.exit_status
                    ),
                    Err(e) => e.to_string(),
                };
                Err(HarnessError::NotReady(format!(
                    "the microVM stopped before its workload signalled ready: {why}"
                )))
            }
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        self.target.clone()
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.vmm.child.id())
    }

    fn memory(&self) -> InstanceMemory {
        spawn::tree_instance_memory(self.vmm.child.id(), Some(self.guest_bytes))
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        spawn::terminate(self.vmm.child.id(), Duration::from_secs(5));
        self.finish(false)
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let mut me = *self;
        let ended = spawn::wait_or_terminate(&mut me.vmm.child, timeout, Duration::from_secs(2))?;
        me.finish(!ended)
    }
}

/// Inside the emulated host: where the monitor and the guest go.
const EMU_VMM: &str = "/opt/isolab/bin/isolab-vmm";
const EMU_KERNEL: &str = "/opt/isolab/guest/vmlinux";
const EMU_INITRD: &str = "/opt/isolab/guest/initramfs.cpio";

/// Where an image's root disk goes inside the emulated host.
const EMU_DISK: &str = "/opt/isolab/guest/rootfs.erofs";

impl MicrovmLauncher {
    /// A user's image: its root disk on virtio-blk, its command from the
    /// spec initramfs, readiness by its rule ([`image`]); on the workbench
    /// bridge unless this is a density run.
    fn launch_image(
        &self,
        guest: &GuestArtifacts,
        img: &crate::image::ImageWorkload,
        spec: &InstanceSpec,
    ) -> Result<Box<dyn Instance>, HarnessError> {
        let boot = {
            let mut slot = self.image_boot.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some(b) => b.clone(),
                None => {
                    let cache = isolab_guest_kernel::cache_root()
                        .map_err(|e| HarnessError::Unavailable(e.to_string()))?;
                    let b = image::prepare(&cache, &guest.initramfs, img)?;
                    slot.insert(b).clone()
                }
            }
        };
        let cfg = image::image_config(
            &guest.vmlinux,
            &boot,
            &img.ready,
            spec.memory_bytes.map(|b| b >> 20),
            spec.vcpus,
        );
        if self.host == VmHost::Emulated {
            return self.launch_emulated(cfg, Some(&boot.disk.path));
        }
        let workbench = if spec.join_cgroups.is_empty() {
            Some(self.network.get()?)
        } else {
            None
        };
        let vm = image::ImageVm::spawn(
            &self.vmm,
            cfg,
            &boot.disk.path,
            img.ready.clone(),
            workbench,
            &spec.join_cgroups,
            false,
        )?;
        Ok(Box::new(vm))
    }

    /// `isolab-vmm` inside the emulated host, on a thread: one boot of the
    /// host per instance; the console lines carry the report. `disk` is an
    /// image's root disk, carried in with the guest.
    fn launch_emulated(
        &self,
        cfg: VmConfig,
        disk: Option<&Path>,
    ) -> Result<Box<dyn Instance>, HarnessError> {
        let prepared = self.emulated.get_or_init(|| {
            let config = HostConfig {
                timeout_s: EMULATED_TIMEOUT.as_secs(),
                ..HostConfig::default()
            };
            EmulatedHost::prepare(config).map_err(|e| crate::chain(&e))
        });
        let mut host = prepared.clone().map_err(|why| {
            HarnessError::Unavailable(format!("the emulated host cannot start: {why}"))
        })?;
        let map = |host: &Path, guest: &str| FileMap {
            host: host.to_path_buf(),
            guest: guest.into(),
        };
        let inner = VmConfig {
            kernel: EMU_KERNEL.into(),
            initrd: Some(EMU_INITRD.into()),
            // Observed: without the guest console the nested guest was
            // reset before its init ran; with it, it boots.
            console: Console::Stdout,
            ..cfg.clone()
        };
        let mut command = vec![EMU_VMM.to_owned()];
        let mut files = vec![
            map(&self.vmm, EMU_VMM),
            map(&cfg.kernel, EMU_KERNEL),
            map(cfg.initrd.as_deref().unwrap_or(Path::new("")), EMU_INITRD),
        ];
        if let Some(d) = disk {
            command.extend(["--disk".to_owned(), EMU_DISK.to_owned()]);
            files.push(map(d, EMU_DISK));
        }
        command.extend(vmm_args(&inner, None, None));
        let inv = Invocation {
            command,
            env: vec![],
            files,
        };
        // Ctrl-C reaches this process only; pass it on to the QEMU run.
        let cancel = Arc::new(AtomicBool::new(false));
        host.set_cancel_flag(cancel.clone());
        let launched = Instant::now();
        let run = std::thread::spawn(move || {
            let mut lines = Vec::new();
            host.run(&inv, &mut |l| {
                lines.push(l.rsplit('\r').next().unwrap_or(l).to_owned())
            })
            .map(|_| lines)
        });
        Ok(Box::new(EmulatedVm {
            run,
            cancel,
            launched,
        }))
    }
}

/// A microVM inside the emulated host (one QEMU boot of it).
struct EmulatedVm {
    run: JoinHandle<Result<Vec<String>, EmuhostError>>,
    cancel: Arc<AtomicBool>,
    launched: Instant,
}

impl EmulatedVm {
    fn finish(self) -> Result<InstanceOutcome, HarnessError> {
        let lines = self
            .run
            .join()
            .map_err(|_| HarnessError::Launch("the emulated host's thread panicked".into()))??;
        if crate::interrupted() {
            return Err(HarnessError::Interrupted);
        }
        let text = lines.join("\n");
        let report = read_report(&text).ok_or_else(|| {
            HarnessError::Launch(
                spawn::error_line(&text)
                    .unwrap_or_else(|| "the emulated host's monitor printed no report".into()),
            )
        })?;
        Ok(outcome_of(
            report,
            &text,
            Some(isolab_emuhost::EMULATED_HOST_LABEL.to_owned()),
        ))
    }
}

impl Instance for EmulatedVm {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, _timeout: Duration) -> Result<Instant, HarnessError> {
        Err(HarnessError::NotReady(
            "a microVM in the emulated host reports only when it has ended".into(),
        ))
    }

    fn http_target(&self) -> Option<HttpTarget> {
        None
    }

    fn host_pids(&self) -> Vec<u32> {
        Vec::new()
    }

    fn memory(&self) -> InstanceMemory {
        InstanceMemory::default()
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        self.cancel.store(true, Ordering::SeqCst);
        self.finish()
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let end = Instant::now() + timeout;
        while !self.run.is_finished() {
            if crate::interrupted() || Instant::now() > end {
                self.cancel.store(true, Ordering::SeqCst);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_arguments_carry_the_config_fds_and_workload_args() {
        let mut c = VmConfig::new("/k/vmlinux", "hog");
        c.initrd = Some("/k/initrd.cpio".into());
        c.memory_mib = 256;
        c.workload_args = vec!["--max-mib".into(), "512".into()];
        c.cmdline_extra = Some("isolab.ip=10.0.0.2/24 isolab.gw=10.0.0.1".into());
        let a = vmm_args(&c, Some(3), Some((4, [2, 0x49, 10, 0, 0, 2])));
        assert_eq!(
            a.join(" "),
            "--kernel /k/vmlinux --initrd /k/initrd.cpio --memory-mib 256 --vcpus 1 --workload hog \
             --cmdline-extra=isolab.ip=10.0.0.2/24 isolab.gw=10.0.0.1 --ready-fd 3 \
             --tap-fd 4 --mac 02:49:0a:00:00:02 -- --max-mib 512"
        );
    }

    #[test]
    fn the_report_is_the_last_line_that_parses_as_one() {
        assert!(read_report("console noise\n{\"not\":\"a report\"}\n").is_none());
        let r = r#"{"host":{"kind":"hardware","module":"kvm_amd"},"vcpus":1,"memory_mib":128,"kernel_format":"elf","boot_protocol":"pvh","cmdline":"x","stop_reason":"guest_reset","exit_status":0,"phases":{"exec_to_monitor_ms":null,"vm_create_ms":1.0,"vmm_setup_ms":2.0,"kernel_boot_ms":30.0,"init_ms":1.0,"workload_ready_ms":0.5,"start_to_ready_ms":33.5,"workload_run_ms":1.0,"shutdown_ms":2.0,"total_ms":40.0},"memory_at_ready":null,"memory_at_end":{"vmm_overhead_kib":3000,"guest_touched_kib":20000,"total_rss_kib":23000,"vmm_overhead_pss_kib":2900},"workload_output":"{\"workload\":\"probe\",\"ok\":true,\"pid\":1}\n","unknown_markers":[]}"#;
        let report = read_report(&format!("[ 0.1] booting\n{r}\n")).expect("a report");
        let o = outcome_of(report, "", Some("label".into()));
        assert_eq!(o.status, Some(0));
        assert_eq!(o.fact("pid"), Some(&serde_json::Value::from(1)));
        assert_eq!(o.peak_rss_kib, Some(23000));
        assert_eq!(o.vm.unwrap().phases.kernel_boot_ms, Some(30.0));
    }

    #[test]
    fn a_report_from_another_build_is_named_as_such() {
        let newer = REPORT.replace("host_request", "stopped_by_magic");
        let why = unreadable_report(&format!("console line\n{newer}\n")).expect("report-like");
        assert!(
            why.contains("cannot read") && why.contains("rebuild"),
            "{why}"
        );
        assert_eq!(unreadable_report(REPORT), None, "a readable report");
        assert_eq!(
            unreadable_report("[ 0.1] console\n"),
            None,
            "no report at all"
        );
    }

    const REPORT: &str = r#"{"host":{"kind":"unknown"},"vcpus":1,"memory_mib":128,"kernel_format":"elf","boot_protocol":"pvh","cmdline":"","stop_reason":"host_request","exit_status":null,"phases":{},"memory_at_ready":null,"memory_at_end":{"vmm_overhead_kib":1,"guest_touched_kib":2,"total_rss_kib":3,"vmm_overhead_pss_kib":1},"workload_output":"","unknown_markers":[]}"#;

    /// A stand-in monitor: a shell script that checks its arguments,
    /// signals ready on fd 3, prints a console line and the report.
    fn fake_vmm(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("isolab-vmm");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_monitor_gets_its_ready_fd_and_its_report_is_read() {
        let d = tempfile::tempdir().unwrap();
        let vmm = fake_vmm(
            d.path(),
            &format!(
                "[ \"$1 $2\" = \"--kernel /k\" ] || exit 9\nprintf R >&3\necho '[ 0.1] console'\necho '{REPORT}'"
            ),
        );
        let cfg = VmConfig::new("/k", "noop");
        let mut ready = ReadyPipe::new().unwrap();
        let mut m = Vmm::spawn(&vmm, &cfg, &mut ready, None, &[]).unwrap();
        assert!(matches!(
            ready.wait(Duration::from_secs(10)).unwrap(),
            ReadyEvent::Ready(_)
        ));
        let (report, _) = m.finish().unwrap();
        assert_eq!(report.memory_at_end.total_rss_kib, 3);
        assert_eq!(report.stop_reason, isolab_microvm::StopReason::HostRequest);
    }

    #[test]
    fn a_monitor_without_a_report_is_explained_by_its_error_line_and_class() {
        let d = tempfile::tempdir().unwrap();
        let vmm = fake_vmm(d.path(), "echo 'error: /dev/kvm here is PVM' >&2\nexit 3");
        let mut ready = ReadyPipe::new().unwrap();
        let mut m = Vmm::spawn(&vmm, &VmConfig::new("/k", "noop"), &mut ready, None, &[]).unwrap();
        assert_eq!(
            ready.wait(Duration::from_secs(10)).unwrap(),
            ReadyEvent::Closed
        );
        let e = m.finish().unwrap_err();
        assert!(e.is_host(), "{e}");
        assert_eq!(
            e.to_string(),
            "The monitor exited (status 3) without a report: /dev/kvm here is PVM"
        );
        let missing = Vmm::spawn(
            &d.path().join("nope"),
            &VmConfig::new("/k", "noop"),
            &mut ReadyPipe::new().unwrap(),
            None,
            &[],
        );
        assert!(matches!(missing, Err(HarnessError::MissingBinary(_))));
    }

    #[test]
    fn pvm_hosts_are_refused_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/kvm"), "").unwrap();
        std::fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).unwrap();
        let why = isolab_microvm::host::detect(d.path()).refusal().unwrap();
        assert!(why.contains("PVM"), "{why}");
        assert!(!why.contains('\n'));
    }
}
