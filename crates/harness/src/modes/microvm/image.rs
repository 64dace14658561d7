//! A user's image in our microVM: the image's root filesystem as a
//! read-only erofs disk on the monitor's virtio-blk device (`--disk`), the
//! image's command, env, user and working directory in a guest spec
//! appended to the guest initramfs, and `isolab.root=` on the kernel
//! command line so the guest init mounts the disk under a tmpfs overlay and
//! runs the command there (docs/design.md, "Images in a microVM").
//!
//! The program knows nothing of the ready marker, so readiness follows the
//! image's [`ReadyRule`], observed from outside the guest: `http` polls
//! with the one HTTP probe from the workbench namespace, `tcp` connects
//! from there, `exit` waits for the monitor to end, and `log:TEXT` has the
//! monitor write the ready fd when TEXT appears in the program's output
//! (`--ready-on-output`). The guest is on the workbench bridge through a
//! TAP, as the built-in api is.

use std::hash::{Hash as _, Hasher as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isolab_image::guest_spec::{root_cmdline, spec_initramfs};
use isolab_image::{build_erofs, DiskError, ImageStore, RootDisk};
use isolab_microvm::{VmConfig, VmReport};
use isolab_net::{ProbeConfig, ProbeError, Tap, Target, Workbench};

use super::{net_cmdline, outcome_of, Vmm};
use crate::image::{ImageWorkload, ReadyRule};
use crate::memory::process_tree;
use crate::modes::spawn;
use crate::modes::{HttpTarget, Instance, InstanceMemory, InstanceOutcome};
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::HarnessError;

/// The workload name in the monitor's config for an image (with
/// `isolab.root=` the guest init runs the spec's command instead).
pub const IMAGE_WORKLOAD: &str = "image";
/// Guest RAM for an image when none is asked for: the initramfs, the
/// overlay's tmpfs and a real server (nginx with its libraries) need more
/// than the built-in workload's default.
pub const DEFAULT_IMAGE_MIB: u64 = 256;
/// How often readiness is looked at while polling.
const POLL: Duration = Duration::from_millis(20);

/// What the guest boots an image from, built on this host.
#[derive(Debug, Clone)]
pub struct ImageBoot {
    /// The read-only root disk.
    pub disk: RootDisk,
    /// The guest initramfs with the image's spec appended.
    pub initrd: PathBuf,
}

fn disk_error(e: DiskError) -> HarnessError {
    if e.is_host() {
        HarnessError::Unavailable(e.to_string())
    } else {
        HarnessError::Launch(crate::chain(&e))
    }
}

/// Builds (or finds cached) the root disk and the spec initramfs for
/// `image` over the guest initramfs `base`: an image's disk is cached
/// beside its unpacked rootfs (by manifest digest); a bundle's is rebuilt
/// on every run (its rootfs is the user's directory and may have changed)
/// at one path per bundle under `<cache>/images/bundles`.
pub fn prepare(
    cache_root: &Path,
    base: &Path,
    image: &ImageWorkload,
) -> Result<ImageBoot, HarnessError> {
    let disk = match &image.key {
        Some(key) => ImageStore::new(cache_root)
            .lookup(key)
            .ok_or_else(|| {
                HarnessError::Launch(format!(
                    "image {} ({key}) is not in the image cache any more: run again to unpack it",
                    image.label
                ))
            })?
            .root_disk()
            .map_err(disk_error)?,
        None => {
            let dir = cache_root.join("images").join("bundles");
            std::fs::create_dir_all(&dir)
                .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            image.run.rootfs.hash(&mut h);
            let out = dir.join(format!("{:016x}.erofs", h.finish()));
            build_erofs(&image.run.rootfs, &out).map_err(disk_error)?
        }
    };
    let initrd = spec_initramfs(base, &image.run.guest_spec(), &cache_root.join("initramfs"))
        .map_err(|e| {
            if e.is_usage() {
                HarnessError::Config(format!("{}: {}", image.label, crate::chain(&e)))
            } else {
                HarnessError::Launch(crate::chain(&e))
            }
        })?;
    Ok(ImageBoot { disk, initrd })
}

/// The monitor's configuration for an image booted from `boot` with the
/// guest kernel `kernel`.
pub fn image_config(
    kernel: &Path,
    boot: &ImageBoot,
    rule: &ReadyRule,
    memory_mib: Option<u64>,
    vcpus: Option<u8>,
) -> VmConfig {
    let mut c = VmConfig::new(kernel, IMAGE_WORKLOAD);
    c.initrd = Some(boot.initrd.clone());
    c.memory_mib = memory_mib.unwrap_or(DEFAULT_IMAGE_MIB);
    c.vcpus = vcpus.unwrap_or(c.vcpus);
    c.cmdline_extra = Some(root_cmdline());
    if let ReadyRule::Log(text) = rule {
        c.ready_on_output = Some(text.clone());
    }
    c
}

/// Checks that `rule` can be observed: a port needs the network.
pub fn check_rule(rule: &ReadyRule, networked: bool) -> Result<(), HarnessError> {
    match rule.port() {
        Some(_) if !networked => Err(HarnessError::Config(format!(
            "--ready {rule} needs the guest on the network, which this run does not give it: use --ready exit or log:TEXT"
        ))),
        _ => Ok(()),
    }
}

/// How a wait for a rule ended, when not in error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited<T> {
    Met(T),
    /// The guest's monitor ended first.
    Ended,
}

/// Polls `GET path` on `target` (in its namespace) with the one probe
/// until any HTTP answer, in one-second slices between which `ended` is
/// asked; returns when it came (on `launched`'s clock), the attempts and
/// the status.
pub fn wait_http(
    target: &Target,
    path: &str,
    launched: Instant,
    timeout: Duration,
    ended: &mut dyn FnMut() -> Result<bool, HarnessError>,
) -> Result<Waited<(Instant, u32, u16)>, HarnessError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        let cfg = ProbeConfig {
            path: path.to_owned(),
            deadline: deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
            ..ProbeConfig::default()
        };
        match isolab_net::probe::first_response_at(target, launched, &cfg) {
            Ok(f) => {
                return Ok(Waited::Met((
                    launched + f.elapsed,
                    attempts + f.attempts,
                    f.status,
                )))
            }
            // Any status is an answer: the program is up.
            Err(ProbeError::Status { status, .. }) => {
                return Ok(Waited::Met((Instant::now(), attempts + 1, status)))
            }
            Err(ProbeError::Deadline { attempts: n, .. }) => attempts += n,
            Err(source) => {
                return Err(HarnessError::NoAnswer {
                    what: format!("the image's program at {}", target.addr),
                    source,
                })
            }
        }
        if ended()? {
            return Ok(Waited::Ended);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout(timeout));
        }
    }
}

/// Connects to `addr` from `wb`'s namespace until one is accepted, in
/// one-second slices between which `ended` is asked.
pub fn wait_tcp(
    wb: &Workbench,
    addr: SocketAddr,
    timeout: Duration,
    ended: &mut dyn FnMut() -> Result<bool, HarnessError>,
) -> Result<Waited<Instant>, HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let slice = Instant::now() + Duration::from_secs(1);
        let connected = wb.run_in(move || loop {
            if TcpStream::connect_timeout(&addr, isolab_net::probe::CONNECT_TIMEOUT).is_ok() {
                return Some(Instant::now());
            }
            if Instant::now() >= slice {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        })?;
        if let Some(at) = connected {
            return Ok(Waited::Met(at));
        }
        if ended()? {
            return Ok(Waited::Ended);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout(timeout));
        }
    }
}

/// An image's microVM: one `isolab-vmm` with the root disk and, when
/// networked, a TAP on the workbench bridge.
pub struct ImageVm {
    vmm: Vmm,
    ready: ReadyPipe,
    rule: ReadyRule,
    guest_bytes: u64,
    /// Dropped after the monitor ended, before the workbench it is on.
    tap: Option<Tap>,
    workbench: Option<Arc<Workbench>>,
    /// When it exited, once seen (the `exit` rule).
    exited_at: Option<Instant>,
    /// The `http` rule's first answer: attempts, HTTP status.
    first_http: Option<(u32, u16)>,
}

impl std::fmt::Debug for ImageVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageVm")
            .field("pid", &self.vmm.child.id())
            .field("rule", &self.rule)
            .finish()
    }
}

impl ImageVm {
    /// Spawns the monitor for `cfg` with `disk`; with `workbench`, on a TAP
    /// there. `echo` passes a console on stdout through to ours.
    pub fn spawn(
        vmm: &Path,
        mut cfg: VmConfig,
        disk: &Path,
        rule: ReadyRule,
        workbench: Option<Arc<Workbench>>,
        join_cgroups: &[PathBuf],
        echo: bool,
    ) -> Result<Self, HarnessError> {
        check_rule(&rule, workbench.is_some())?;
        let tap = workbench
            .as_ref()
            .map(|wb| wb.create_tap(None, false))
            .transpose()?;
        if let Some(t) = &tap {
            let net = net_cmdline(t);
            cfg.cmdline_extra = Some(match cfg.cmdline_extra.take() {
                Some(c) => format!("{c} {net}"),
                None => net,
            });
        }
        let tap_fd = tap
            .as_ref()
            .map(|t| t.try_clone_fd().map(|fd| (fd, t.lease().mac())))
            .transpose()
            .map_err(|e| HarnessError::io("duplicate the TAP fd", e))?;
        let mut ready = ReadyPipe::new()?;
        let vmm = Vmm::spawn_with_disk(
            vmm,
            &cfg,
            disk,
            &mut ready,
            tap_fd.as_ref().map(|(fd, mac)| (fd, *mac)),
            join_cgroups,
            echo,
        )?;
        drop(tap_fd);
        Ok(ImageVm {
            vmm,
            ready,
            rule,
            guest_bytes: cfg.memory_mib << 20,
            tap,
            workbench,
            exited_at: None,
            first_http: None,
        })
    }

    /// The monitor's pid.
    pub fn pid(&self) -> u32 {
        self.vmm.child.id()
    }

    /// The `http` rule's first answer, once ready: (attempts, HTTP status).
    pub fn first_http(&self) -> Option<(u32, u16)> {
        self.first_http
    }

    /// The TAP's name, when networked.
    pub fn tap_name(&self) -> Option<&str> {
        self.tap.as_ref().map(Tap::name)
    }

    /// The guest's address on the bridge, when networked.
    pub fn guest_addr(&self) -> Option<Ipv4Addr> {
        self.tap.as_ref().map(|t| t.lease().addr())
    }

    /// `port` on the guest, reached from the workbench namespace.
    pub fn target(&self, port: u16) -> Option<Target> {
        let wb = self.workbench.as_ref()?;
        Some(Target {
            netns: isolab_net::Netns::Path(wb.netns_path()),
            addr: SocketAddr::from((self.guest_addr()?, port)),
        })
    }

    /// True once the monitor has ended (its time noted).
    fn ended(&mut self) -> Result<bool, HarnessError> {
        if self.exited_at.is_some() {
            return Ok(true);
        }
        let done = self
            .vmm
            .child
            .try_wait()
            .map_err(|e| HarnessError::io("wait for the monitor", e))?
            .is_some();
        if done {
            self.exited_at = Some(Instant::now());
        }
        Ok(done)
    }

    /// The error for a guest that ended before its rule was met, in the
    /// monitor's words.
    fn ended_early(&mut self) -> HarnessError {
        let why = match self.vmm.finish() {
            Ok((r, _)) => {
                let last = r.workload_output.trim_end();
                format!(
                    "the guest stopped ({:?}) with status {:?}; the program's last output: {}",
                    r.stop_reason,
                    r.exit_status,
                    last.lines().last().unwrap_or("(none)")
                )
            }
            Err(e) => e.to_string(),
        };
        HarnessError::NotReady(format!(
            "the microVM ended before --ready {} was met: {why}",
            self.rule
        ))
    }

    /// Waits until the rule is met; returns when.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || HarnessError::Timeout(timeout);
        match self.rule.clone() {
            ReadyRule::Log(_) => match self.ready.wait(timeout)? {
                ReadyEvent::Ready(at) => Ok(at),
                ReadyEvent::Closed => Err(self.ended_early()),
            },
            ReadyRule::Exit => loop {
                if self.ended()? {
                    return Ok(self.exited_at.unwrap_or_else(Instant::now));
                }
                if Instant::now() >= deadline {
                    return Err(timed_out());
                }
                std::thread::sleep(POLL);
            },
            ReadyRule::Http { port, path } => {
                let target = self.target(port).ok_or_else(|| {
                    HarnessError::Config("--ready http needs the guest on the network".into())
                })?;
                let launched = self.vmm.launched;
                match wait_http(&target, &path, launched, timeout, &mut || self.ended())? {
                    Waited::Met((at, attempts, status)) => {
                        self.first_http = Some((attempts, status));
                        Ok(at)
                    }
                    Waited::Ended => Err(self.ended_early()),
                }
            }
            ReadyRule::Tcp { port } => {
                let wb = self.workbench.clone().ok_or_else(|| {
                    HarnessError::Config("--ready tcp needs the guest on the network".into())
                })?;
                let addr = self
                    .target(port)
                    .map(|t| t.addr)
                    .ok_or_else(|| HarnessError::Launch("the guest has no address".into()))?;
                match wait_tcp(&wb, addr, timeout, &mut || self.ended())? {
                    Waited::Met(at) => Ok(at),
                    Waited::Ended => Err(self.ended_early()),
                }
            }
        }
    }

    /// Waits for the monitor and reads its report; the TAP goes after it.
    pub fn finish_report(&mut self) -> Result<(VmReport, String), HarnessError> {
        let finished = self.vmm.finish();
        drop(self.tap.take());
        finished
    }

    /// Stops the VM (SIGTERM, SIGKILL after a grace period) unless it has
    /// ended, and reads its report.
    pub fn stop_report(&mut self) -> Result<(VmReport, String), HarnessError> {
        if !self.ended()? {
            spawn::terminate(self.vmm.child.id(), Duration::from_secs(5));
        }
        self.finish_report()
    }

    fn outcome(&mut self, timed_out: bool) -> Result<InstanceOutcome, HarnessError> {
        let (report, err) = self.finish_report()?;
        Ok(InstanceOutcome {
            timed_out,
            ..outcome_of(report, &err, None)
        })
    }
}

impl Instance for ImageVm {
    fn launched_at(&self) -> Instant {
        self.vmm.launched
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError> {
        self.wait_until_ready(timeout)
    }

    fn http_target(&self) -> Option<HttpTarget> {
        match &self.rule {
            ReadyRule::Http { port, .. } => self.target(*port).map(|target| HttpTarget {
                target,
                after_ready: true,
            }),
            _ => None,
        }
    }

    fn image_reach(&self) -> Option<Target> {
        self.target(0)
    }

    fn host_pids(&self) -> Vec<u32> {
        process_tree(Path::new("/proc"), self.vmm.child.id())
    }

    fn memory(&self) -> InstanceMemory {
        spawn::tree_instance_memory(self.vmm.child.id(), Some(self.guest_bytes))
    }

    fn stop(mut self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        if !self.ended()? {
            spawn::terminate(self.vmm.child.id(), Duration::from_secs(5));
        }
        self.outcome(false)
    }

    fn wait_exit(mut self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        let ended = spawn::wait_or_terminate(&mut self.vmm.child, timeout, Duration::from_secs(2))?;
        self.outcome(!ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_boots_from_the_disk_and_carries_the_log_rule() {
        let boot = ImageBoot {
            disk: RootDisk {
                path: "/c/rootfs.erofs".into(),
                bytes: 4096,
                cached: true,
                build_ms: 0.0,
            },
            initrd: "/c/image-1.cpio".into(),
        };
        let c = image_config(
            Path::new("/k"),
            &boot,
            &ReadyRule::Log("ready".into()),
            None,
            None,
        );
        assert_eq!(c.workload, IMAGE_WORKLOAD);
        assert_eq!(c.memory_mib, DEFAULT_IMAGE_MIB);
        assert_eq!(c.initrd.as_deref(), Some(Path::new("/c/image-1.cpio")));
        assert_eq!(
            c.cmdline_extra.as_deref(),
            Some("isolab.root=/dev/vda isolab.rootfstype=erofs")
        );
        assert_eq!(c.ready_on_output.as_deref(), Some("ready"));
        let args = super::super::vmm_args(&c, None, None).join(" ");
        assert!(args.contains("--ready-on-output=ready"), "{args}");
        let c = image_config(Path::new("/k"), &boot, &ReadyRule::Exit, Some(64), Some(2));
        assert_eq!((c.memory_mib, c.vcpus, c.ready_on_output), (64, 2, None));
    }

    #[test]
    fn a_port_rule_without_the_network_is_a_usage_error() {
        let e = check_rule(&ReadyRule::Tcp { port: 80 }, false).unwrap_err();
        assert!(e.is_usage(), "{e}");
        assert!(
            e.to_string().contains("use --ready exit or log:TEXT"),
            "{e}"
        );
        assert!(check_rule(&ReadyRule::Exit, false).is_ok());
        assert!(check_rule(&ReadyRule::Tcp { port: 80 }, true).is_ok());
    }
}
