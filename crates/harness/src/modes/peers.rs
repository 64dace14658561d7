//! Peers measured beside our modes, the same way, in the same run:
//! `crun run` and `runc run` on an OCI bundle equivalent to our container
//! (same image, namespaces, limits and ready fd), and QEMU's `microvm`
//! machine booting the same guest kernel and initramfs, its ready marker
//! captured through an `isa-debugcon` device on the marker port.
//!
//! A peer that is missing is reported with how to install it; a peer that
//! refuses to run is reported with its own error line.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::container::{container_config, CONTAINER_PORT};
use super::microvm::{native_refusal, GuestArtifacts, DEFAULT_GUEST_MIB};
use super::{
    shell_status, terminate, Binaries, Instance, InstanceMemory, InstanceOutcome, InstanceSpec,
    Launcher, ModeKind,
};
use crate::memory::process_tree;
use crate::probe::{HttpTarget, Netns};
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// Full path of `cmd` on PATH.
pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// `crun` or `runc` on an equivalent OCI bundle.
#[derive(Debug)]
pub struct OciPeer {
    pub kind: ModeKind,
    pub bins: Binaries,
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
        if !nix::unistd::geteuid().is_root() {
            return Some("needs root: run as root".into());
        }
        None
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let rt = self.runtime();
        let runtime =
            which(rt).ok_or_else(|| HarnessError::Launch(format!("{rt} is not installed")))?;
        let cfg = container_config(&self.bins, spec);
        let id = format!("isolab-{rt}-{}-{}", std::process::id(), next_id());
        let dir = PathBuf::from("/run/isolab/bundles").join(&id);
        let bundle = isolab_container::oci::write_bundle(&dir, &cfg, &id)
            .map_err(|e| HarnessError::Launch(super::container::chain(&e)))?;
        let mut ready = ReadyPipe::new()?;
        let mut cmd = Command::new(&runtime);
        cmd.args(["run", "--bundle"])
            .arg(&bundle.dir)
            .args(["--preserve-fds", "1"])
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, launched) = match super::spawn_with_ready(&mut cmd, &mut ready, &[]) {
            Ok(c) => c,
            Err(e) => {
                let _ = bundle.remove();
                return Err(e);
            }
        };
        Ok(Box::new(OciInstance {
            runtime,
            id,
            bundle_dir: dir,
            child: Some(child),
            ready,
            launched,
            port: spec.port.map(|_| CONTAINER_PORT),
        }))
    }
}

/// Remove a bundle, then its parent directories while they are empty, so
/// nothing of ours stays under /run.
fn remove_bundle(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
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
    id: String,
    bundle_dir: PathBuf,
    child: Option<Child>,
    ready: ReadyPipe,
    launched: Instant,
    port: Option<u16>,
}

impl OciInstance {
    fn rt(&self, args: &[&str]) {
        let _ = Command::new(&self.runtime)
            .args(args)
            .arg(&self.id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn stderr_line(child: &mut Child) -> String {
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        err.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no error output)")
            .trim()
            .to_string()
    }

    fn finish(&mut self) -> Result<InstanceOutcome, HarnessError> {
        let mut child = self.child.take().expect("finished once");
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let st = child
            .wait()
            .map_err(|e| HarnessError::Io("wait for the runtime".into(), e))?;
        self.rt(&["delete", "--force"]);
        remove_bundle(&self.bundle_dir);
        Ok(InstanceOutcome {
            status: shell_status(st),
            result_line: super::result_line(&out),
            oom_killed: false,
            phases: None,
            first_response_ms: None,
        })
    }
}

impl Drop for OciInstance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.rt(&["kill", "KILL"]);
            let _ = c.kill();
            let _ = c.wait();
            self.rt(&["delete", "--force"]);
            remove_bundle(&self.bundle_dir);
        }
    }
}

impl Instance for OciInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        match self.ready.wait(timeout)? {
            ReadyEvent::Ready(at) => Ok(at),
            ReadyEvent::Closed => {
                let child = self.child.as_mut().expect("running");
                let _ = child.wait();
                let line = Self::stderr_line(child);
                Err(HarnessError::Launch(format!(
                    "{} refused to run the bundle: {line}",
                    self.runtime.display()
                )))
            }
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        let pid = self.child.as_ref()?.id();
        self.port.map(|p| HttpTarget {
            netns: Netns::FirstOtherUnder(pid),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
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
            .map(|c| super::tree_instance_memory(c.id(), None))
            .unwrap_or_default()
    }

    fn stop(mut self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        self.rt(&["kill", "TERM"]);
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
        self.rt(&["kill", "KILL"]);
        terminate(pid, Duration::from_millis(500));
        self.finish()
    }

    fn wait_exit(mut self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    return self.finish();
                }
            }
            if Instant::now() > end {
                self.rt(&["kill", "KILL"]);
                return self.finish();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// QEMU's `microvm` machine with KVM, booting the same guest kernel and
/// initramfs. The marker port (0x3f0) is an `isa-debugcon` whose bytes go to
/// a pipe we read; the workload's output port (0x3f2) to another.
#[derive(Debug)]
pub struct QemuPeer {
    pub guest: Result<GuestArtifacts, String>,
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
        let mib = spec
            .memory_limit
            .map(|b| b >> 20)
            .unwrap_or(DEFAULT_GUEST_MIB);
        let (marker_r, marker_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| HarnessError::Io("marker pipe".into(), e.into()))?;
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| HarnessError::Io("output pipe".into(), e.into()))?;
        let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| HarnessError::Io("status pipe".into(), e.into()))?;
        // Our monitor's command line, except `reboot=t`: QEMU's microvm has
        // no i8042, so the guest ends through a triple fault and -no-reboot.
        // `8250.nr_uarts=1 console=ttyS0 loglevel=0` keeps /dev/console
        // openable for init without printing (as our monitor does).
        let mut cmdline = String::from(
            "reboot=t panic=1 nomodule pci=off i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce rdinit=/init 8250.nr_uarts=1 console=ttyS0 loglevel=0",
        );
        cmdline.push_str(&format!(" isolab.workload={}", spec.workload));
        for a in &spec.args {
            cmdline.push_str(&format!(" isolab.arg={a}"));
        }
        let (mw, ow, sw) = (
            marker_w.as_raw_fd(),
            out_w.as_raw_fd(),
            status_w.as_raw_fd(),
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,rtc=off",
            "-enable-kvm",
            "-cpu",
            "host",
        ])
        .args([
            "-m",
            &format!("{mib}M"),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        // A COM1 whose output is discarded, as in our monitor: without a
        // UART behind ttyS0 the guest's console writes fail and a workload
        // that logs to stderr dies.
        .args(["-serial", "null"])
        .args(["-chardev", "file,id=marker,path=/proc/self/fd/3"])
        .args(["-device", "isa-debugcon,iobase=0x3f0,chardev=marker"])
        .args(["-chardev", "file,id=out,path=/proc/self/fd/4"])
        .args(["-device", "isa-debugcon,iobase=0x3f2,chardev=out"])
        .args(["-chardev", "file,id=status,path=/proc/self/fd/5"])
        .args(["-device", "isa-debugcon,iobase=0x3f1,chardev=status"])
        .arg("-kernel")
        .arg(&guest.bz_image)
        .arg("-initrd")
        .arg(&guest.initramfs)
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // SAFETY: only dup2 (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Targets 3..5 are taken in order; a source already at a
                // later target would be overwritten first, so move all three
                // above 5 before placing them.
                let (mw, ow, sw) = (
                    libc::fcntl(mw, libc::F_DUPFD, 10),
                    libc::fcntl(ow, libc::F_DUPFD, 10),
                    libc::fcntl(sw, libc::F_DUPFD, 10),
                );
                if mw < 0 || ow < 0 || sw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                super::dup_to(mw, 3)?;
                super::dup_to(ow, 4)?;
                super::dup_to(sw, 5)
            });
        }
        let argv = format!("{cmd:?}");
        let launched = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::Io("spawn qemu-system-x86_64".into(), e))?;
        drop(marker_w);
        drop(out_w);
        drop(status_w);
        Ok(Box::new(QemuInstance {
            child,
            marker: marker_r,
            output: out_r,
            status: status_r,
            seen: vec![],
            argv,
            launched,
            guest_bytes: mib << 20,
        }))
    }
}

struct QemuInstance {
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
}

impl QemuInstance {
    fn finish(mut self) -> Result<InstanceOutcome, HarnessError> {
        let st = self
            .child
            .wait()
            .map_err(|e| HarnessError::Io("wait for qemu".into(), e))?;
        let mut out = String::new();
        let _ = std::fs::File::from(self.output).read_to_string(&mut out);
        let mut status = vec![];
        let _ = std::fs::File::from(self.status).read_to_end(&mut status);
        Ok(InstanceOutcome {
            // The workload's status byte from the marker ABI; QEMU's own
            // status only when the guest never reported one.
            status: status.last().map(|b| i32::from(*b)).or(shell_status(st)),
            result_line: super::result_line(&out),
            oom_killed: false,
            phases: None,
            first_response_ms: None,
        })
    }
}

impl Instance for QemuInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(
                    "QEMU's guest did not reach ready".into(),
                ));
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.marker.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(HarnessError::Io("poll markers".into(), e.into())),
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
                Err(e) => return Err(HarnessError::Io("read markers".into(), e.into())),
            }
        }
    }

    fn http_target(&self) -> Option<HttpTarget> {
        None
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.child.id())
    }

    fn memory(&self) -> InstanceMemory {
        super::tree_instance_memory(self.child.id(), Some(self.guest_bytes))
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        terminate(self.child.id(), Duration::from_secs(3));
        self.finish()
    }

    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let mut me = *self;
        super::wait_or_terminate(&mut me.child, timeout, Duration::from_secs(1))?;
        me.finish()
    }
}
