//! QEMU's `microvm` machine, the reference monitor measured beside ours:
//! it boots the same guest kernel and initramfs with our monitor's command
//! line (except `reboot=t`), its marker, status and output ports captured
//! through `isa-debugcon` devices into pipes we read. An HTTP workload gets
//! what our microVM gets: a virtio-net device on a TAP on the workbench
//! bridge (created here, handed to QEMU as an fd), its address on the
//! kernel command line, probed from the workbench namespace.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isolab_guest_kernel::GuestArtifacts;
use isolab_net::{Tap, Workbench};

use super::microvm::image::{self as vmimage, wait_http, wait_tcp, ImageBoot, Waited};
use super::microvm::{
    guest_http_target, guest_net, native_refusal, net_cmdline, DEFAULT_GUEST_MIB,
};
use super::spawn::{self, shell_status, terminate, which};
use super::{
    vm_limits, Context, HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind,
};
use crate::image::ReadyRule;
use crate::memory::process_tree;
use crate::net::SharedWorkbench;
use crate::HarnessError;

/// QEMU's `microvm` machine with KVM, booting the same guest kernel and
/// initramfs. The marker port (0x3f0) is an `isa-debugcon` whose bytes go to
/// a pipe we read; the workload's output port (0x3f2) to another.
#[derive(Debug)]
pub struct QemuPeer {
    pub guest: Result<GuestArtifacts, String>,
    network: Arc<SharedWorkbench>,
    /// A user's image's disk and spec initramfs (the same files our
    /// microVM boots), built on first use.
    image_boot: std::sync::Mutex<Option<ImageBoot>>,
}

/// The registry's constructor.
pub(crate) fn launcher(ctx: &Context) -> Box<dyn Launcher> {
    Box::new(QemuPeer {
        guest: ctx.guest_if_bootable(),
        network: Arc::clone(&ctx.network),
        image_boot: std::sync::Mutex::new(None),
    })
}

/// QEMU's arguments for an image's read-only root disk: a raw drive
/// behind a `virtio-blk-device` (virtio-mmio), the guest's `/dev/vda` as
/// in our monitor.
fn disk_args(disk: &Path) -> [String; 4] {
    // QEMU's option syntax doubles a comma inside a value.
    let file = disk.display().to_string().replace(',', ",,");
    [
        "-drive".into(),
        format!("file={file},if=none,format=raw,readonly=on,id=root"),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
    ]
}

/// `02:49:0a:cb:00:02`.
fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Marker byte for "workload ready" (docs/contracts.md).
const MARKER_READY: u8 = 0x02;

impl Launcher for QemuPeer {
    fn kind(&self) -> ModeKind {
        ModeKind::QemuMicrovm
    }

    fn unavailable(&self) -> Option<String> {
        if which("qemu-system-x86_64").is_none() {
            return Some(
                "qemu-system-x86_64 is not installed: apt-get install qemu-system-x86".into(),
            );
        }
        native_refusal().or_else(|| self.guest.as_ref().err().cloned())
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let guest = self
            .guest
            .as_ref()
            .map_err(|e| HarnessError::Launch(e.clone()))?;
        // A user's image: the root disk and spec initramfs our microVM
        // boots, the same readiness rule.
        let image = match &spec.image {
            Some(img) => {
                let mut slot = self.image_boot.lock().unwrap_or_else(|e| e.into_inner());
                let boot = match slot.as_ref() {
                    Some(b) => b.clone(),
                    None => {
                        let cache = isolab_guest_kernel::cache_root()
                            .map_err(|e| HarnessError::Unavailable(e.to_string()))?;
                        let b = vmimage::prepare(&cache, &guest.initramfs, img)?;
                        slot.insert(b).clone()
                    }
                };
                Some((boot, img.ready.clone()))
            }
            None => None,
        };
        let default_mib = match image {
            Some(_) => vmimage::DEFAULT_IMAGE_MIB,
            None => DEFAULT_GUEST_MIB,
        };
        let mib = spec.memory_bytes.map(|b| b >> 20).unwrap_or(default_mib);
        let pipe = |what: &str| {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| HarnessError::io(format!("create the {what} pipe"), e))
        };
        let (marker_r, marker_w) = pipe("marker")?;
        let (out_r, out_w) = pipe("output")?;
        let (status_r, status_w) = pipe("status")?;
        // Limits beyond vCPUs and RAM: QEMU in a cgroup of its own, the
        // guest's console on a pipe (errors only) to read its OOM killer.
        let monitor_cg = vm_limits::MonitorCgroup::create(ModeKind::QemuMicrovm, spec)?;
        let console = monitor_cg.as_ref().map(|_| pipe("console")).transpose()?;
        // Our monitor's command line, except `reboot=t`: QEMU's microvm has
        // no i8042, so the guest ends through a triple fault and -no-reboot.
        // `8250.nr_uarts=1 console=ttyS0 loglevel=0` keeps /dev/console
        // openable for init without printing (as our monitor does).
        let mut cmdline = String::from(
            "reboot=t panic=1 nomodule pci=off i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce rdinit=/init 8250.nr_uarts=1 console=ttyS0 loglevel=0",
        );
        let vcpus = spec.vcpus.unwrap_or(1).to_string();
        if image.is_some() {
            cmdline.push_str(&format!(
                " isolab.workload={} {}",
                vmimage::IMAGE_WORKLOAD,
                isolab_image::guest_spec::root_cmdline()
            ));
        } else {
            cmdline.push_str(&format!(" isolab.workload={}", spec.workload));
            for a in &spec.args {
                cmdline.push_str(&format!(" isolab.arg={a}"));
            }
        }
        // As for our microVM: HTTP workloads and images get virtio-net on
        // the workbench bridge, except in density runs.
        let (workbench, tap) = match &image {
            Some((_, rule)) => {
                let net = if spec.join_cgroups.is_empty() {
                    let wb = self.network.get()?;
                    let tap = wb.create_tap(None, false)?;
                    Some((wb, tap))
                } else {
                    None
                };
                vmimage::check_rule(rule, net.is_some())?;
                net
            }
            None => guest_net(&self.network, spec)?,
        }
        .unzip();
        if let Some(t) = &tap {
            cmdline.push(' ');
            cmdline.push_str(&net_cmdline(t));
        }
        if console.is_some() {
            // After `loglevel=0`, so it wins: the OOM killer's line is an error.
            cmdline.push_str(" loglevel=4");
        }
        let tap_fd = tap
            .as_ref()
            .map(Tap::try_clone_fd)
            .transpose()
            .map_err(|e| HarnessError::io("duplicate the TAP fd", e))?;
        let (mw, ow, sw) = (
            marker_w.as_raw_fd(),
            out_w.as_raw_fd(),
            status_w.as_raw_fd(),
        );
        let mut fds = vec![mw, ow, sw];
        fds.extend(tap_fd.as_ref().map(|f| f.as_raw_fd()));
        let console_at = console.as_ref().map(|(_, w)| {
            fds.push(w.as_raw_fd());
            spawn::READY_FD + fds.len() as i32 - 1
        });
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            // acpi=off: the guest kernel has no ACPI; without it QEMU
            // declares its virtio-mmio devices on the command line.
            "-M",
            "microvm,x-option-roms=off,rtc=off,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host",
        ])
        .args([
            "-m",
            &format!("{mib}M"),
            "-smp",
            &vcpus,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        // A COM1 whose output is discarded, as in our monitor (without a
        // UART behind ttyS0 the guest's console writes fail and a workload
        // that logs to stderr dies); read, for a limited VM.
        .args(match console_at {
            Some(fd) => vec![
                "-chardev".to_owned(),
                format!("file,id=con,path=/proc/self/fd/{fd}"),
                "-serial".to_owned(),
                "chardev:con".to_owned(),
            ],
            None => vec!["-serial".to_owned(), "null".to_owned()],
        })
        .args(["-chardev", "file,id=marker,path=/proc/self/fd/3"])
        .args(["-device", "isa-debugcon,iobase=0x3f0,chardev=marker"])
        .args(["-chardev", "file,id=out,path=/proc/self/fd/4"])
        .args(["-device", "isa-debugcon,iobase=0x3f2,chardev=out"])
        .args(["-chardev", "file,id=status,path=/proc/self/fd/5"])
        .args(["-device", "isa-debugcon,iobase=0x3f1,chardev=status"]);
        if let Some(t) = &tap {
            // The TAP at fd 6 (after the three pipes), without a vnet
            // header, as our monitor gets it; no vhost, as ours has none.
            cmd.args(["-netdev", "tap,id=n0,fd=6,vhost=off"]).args([
                "-device",
                &format!(
                    "virtio-net-device,netdev=n0,mac={}",
                    mac_text(t.lease().mac())
                ),
            ]);
        }
        if let Some((boot, _)) = &image {
            cmd.args(disk_args(&boot.disk.path));
        }
        let initrd = image
            .as_ref()
            .map_or(&guest.initramfs, |(boot, _)| &boot.initrd);
        cmd.arg("-kernel")
            .arg(&guest.bz_image)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &cmdline])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let argv = format!("{cmd:?}");
        let join = match &monitor_cg {
            Some(cg) => cg.procs_files(),
            None => spec.join_cgroups.clone(),
        };
        let (child, launched) = spawn::spawn_with_fds(&mut cmd, &fds, &join)?;
        drop(marker_w);
        drop(out_w);
        drop(status_w);
        drop(tap_fd);
        let console = console.map(|(r, w)| {
            drop(w);
            spawn::drain(Some(std::fs::File::from(r)))
        });
        let rule = image.map(|(_, r)| r);
        let target = match &rule {
            Some(ReadyRule::Http { port, .. }) => {
                workbench
                    .as_deref()
                    .zip(tap.as_ref())
                    .map(|(wb, t)| HttpTarget {
                        target: isolab_net::Target {
                            netns: isolab_net::Netns::Path(wb.netns_path()),
                            addr: (t.lease().addr(), *port).into(),
                        },
                        after_ready: true,
                    })
            }
            Some(_) => None,
            None => workbench
                .as_deref()
                .zip(tap.as_ref())
                .map(|(wb, t)| guest_http_target(wb, t)),
        };
        Ok(Box::new(QemuInstance {
            rule,
            output_seen: vec![],
            child,
            marker: marker_r,
            output: out_r,
            status: status_r,
            seen: vec![],
            argv,
            launched,
            guest_bytes: mib << 20,
            target,
            tap,
            _workbench: workbench,
            monitor_cg,
            console,
        }))
    }
}

struct QemuInstance {
    /// A user's image's readiness rule (the built-in workload writes the
    /// ready marker instead).
    rule: Option<ReadyRule>,
    /// Output read while waiting for a `log:` rule, kept for the outcome.
    output_seen: Vec<u8>,
    child: Child,
    marker: OwnedFd,
    output: OwnedFd,
    status: OwnedFd,
    /// Marker bytes read before ready (for the error message).
    seen: Vec<u8>,
    /// The command line, for error messages.
    argv: String,
    launched: Instant,
    guest_bytes: u64,
    target: Option<HttpTarget>,
    /// Dropped after QEMU ended, before the workbench it is on.
    tap: Option<Tap>,
    _workbench: Option<Arc<Workbench>>,
    /// QEMU's own cgroup, where the spec set limits.
    monitor_cg: Option<vm_limits::MonitorCgroup>,
    /// The guest console's reader, where the spec set limits.
    console: Option<std::thread::JoinHandle<String>>,
}

impl QemuInstance {
    fn finish(mut self, timed_out: bool) -> Result<InstanceOutcome, HarnessError> {
        let st = self
            .child
            .wait()
            .map_err(|e| HarnessError::io("wait for qemu", e))?;
        drop(self.tap.take());
        let mut rest = Vec::new();
        let _ = std::fs::File::from(self.output).read_to_end(&mut rest);
        let mut bytes = std::mem::take(&mut self.output_seen);
        bytes.extend(rest);
        let out = String::from_utf8_lossy(&bytes).into_owned();
        let mut status = vec![];
        let _ = std::fs::File::from(self.status).read_to_end(&mut status);
        let console = self.console.take().map(|h| spawn::drained(Some(h)));
        Ok(InstanceOutcome {
            // The workload's status byte from the marker ABI; QEMU's own
            // status only when the guest never reported one.
            status: status.last().map(|b| i32::from(*b)).or(shell_status(st)),
            result: isolab_workload::result::parse(&out),
            timed_out,
            cgroup: self
                .monitor_cg
                .take()
                .and_then(vm_limits::MonitorCgroup::finish),
            guest_oom: console.as_deref().map(vm_limits::guest_oom),
            ..InstanceOutcome::default()
        })
    }
}

impl QemuInstance {
    /// True once QEMU has ended.
    fn ended(&mut self) -> Result<bool, HarnessError> {
        Ok(self
            .child
            .try_wait()
            .map_err(|e| HarnessError::io("wait for qemu", e))?
            .is_some())
    }

    fn ended_early(&mut self, rule: &ReadyRule) -> HarnessError {
        let mut err = String::new();
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let status = self.child.wait().ok().and_then(shell_status);
        HarnessError::NotReady(format!(
            "QEMU ended (status {status:?}) before --ready {rule} was met; command {}: {}",
            self.argv,
            err.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no error output)")
                .trim(),
        ))
    }

    /// An image's readiness, as our microVM's ([`vmimage::ImageVm`]).
    fn wait_rule(&mut self, rule: &ReadyRule, timeout: Duration) -> Result<Instant, HarnessError> {
        let end = Instant::now() + timeout;
        let target = |port: u16| self.target_for(port);
        match rule {
            ReadyRule::Http { port, path } => {
                let t = target(*port).ok_or_else(|| {
                    HarnessError::Config("--ready http needs the guest on the network".into())
                })?;
                match wait_http(&t, path, self.launched, timeout, &mut || self.ended())? {
                    Waited::Met((at, _, _)) => Ok(at),
                    Waited::Ended => Err(self.ended_early(rule)),
                }
            }
            ReadyRule::Tcp { port } => {
                let t = target(*port).ok_or_else(|| {
                    HarnessError::Config("--ready tcp needs the guest on the network".into())
                })?;
                let wb = self._workbench.clone().ok_or_else(|| {
                    HarnessError::Config("--ready tcp needs the guest on the network".into())
                })?;
                match wait_tcp(&wb, t.addr, timeout, &mut || self.ended())? {
                    Waited::Met(at) => Ok(at),
                    Waited::Ended => Err(self.ended_early(rule)),
                }
            }
            ReadyRule::Exit => loop {
                if self.ended()? {
                    return Ok(Instant::now());
                }
                if Instant::now() >= end {
                    return Err(HarnessError::Timeout(timeout));
                }
                std::thread::sleep(Duration::from_millis(20));
            },
            ReadyRule::Log(text) => {
                // The output port's pipe, read as it comes.
                let want = text.as_bytes();
                loop {
                    if !crate::ready::readable(self.output.as_fd(), end)? {
                        return Err(HarnessError::Timeout(timeout));
                    }
                    let mut buf = [0u8; 4096];
                    match nix::unistd::read(&self.output, &mut buf) {
                        Ok(0) => return Err(self.ended_early(rule)),
                        Ok(n) => {
                            let from = self.output_seen.len().saturating_sub(want.len());
                            self.output_seen.extend_from_slice(&buf[..n]);
                            if self.output_seen[from..]
                                .windows(want.len())
                                .any(|w| w == want)
                            {
                                return Ok(Instant::now());
                            }
                        }
                        Err(e) => return Err(HarnessError::io("read the output pipe", e)),
                    }
                }
            }
        }
    }

    /// `port` on the guest, from the workbench namespace.
    fn target_for(&self, port: u16) -> Option<isolab_net::Target> {
        let wb = self._workbench.as_ref()?;
        let t = self.tap.as_ref()?;
        Some(isolab_net::Target {
            netns: isolab_net::Netns::Path(wb.netns_path()),
            addr: (t.lease().addr(), port).into(),
        })
    }
}

impl Instance for QemuInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        if let Some(rule) = self.rule.clone() {
            return self.wait_rule(&rule, timeout);
        }
        let end = Instant::now() + timeout;
        loop {
            if !crate::ready::readable(self.marker.as_fd(), end)? {
                return Err(HarnessError::Timeout(timeout));
            }
            let mut buf = [0u8; 64];
            match nix::unistd::read(&self.marker, &mut buf) {
                Ok(0) => {
                    let mut err = String::new();
                    if let Some(mut s) = self.child.stderr.take() {
                        let _ = s.read_to_string(&mut err);
                    }
                    let status = self.child.wait().ok().and_then(shell_status);
                    let mut guest = [0u8; 4];
                    let n = nix::unistd::read(&self.status, &mut guest).unwrap_or(0);
                    let mut out = [0u8; 512];
                    let m = nix::unistd::read(&self.output, &mut out).unwrap_or(0);
                    return Err(HarnessError::NotReady(format!(
                        "QEMU ended (status {status:?}) before the ready marker; markers seen {seen:02x?}, workload status {:?}, output {:?}, command {}: {}",
                        &guest[..n],
                        String::from_utf8_lossy(&out[..m]),
                        self.argv,
                        err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no error output)").trim(),
                        seen = self.seen,
                    )));
                }
                Ok(n) if buf[..n].contains(&MARKER_READY) => return Ok(Instant::now()),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) => return Err(HarnessError::io("read the marker pipe", e)),
            }
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        self.target.clone()
    }

    fn image_reach(&self) -> Option<isolab_net::Target> {
        // An image's target is its HTTP rule's port on the guest.
        self.rule.as_ref()?;
        self.target.as_ref().map(|t| t.target.clone())
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.child.id())
    }

    fn memory(&self) -> InstanceMemory {
        spawn::tree_instance_memory(self.child.id(), Some(self.guest_bytes))
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        terminate(self.child.id(), Duration::from_secs(3));
        self.finish(false)
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let mut me = *self;
        let ended = spawn::wait_or_terminate(&mut me.child, timeout, Duration::from_secs(1))?;
        me.finish(!ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_disk_is_a_read_only_virtio_blk_device_with_commas_escaped() {
        assert_eq!(
            disk_args(Path::new("/c/a,b/rootfs.erofs")).join(" "),
            "-drive file=/c/a,,b/rootfs.erofs,if=none,format=raw,readonly=on,id=root \
             -device virtio-blk-device,drive=root"
        );
    }
}
