//! The ways an instance of the workload is run: the three modes under study
//! (process, container, microVM) and the peers measured beside them (crun,
//! runc, QEMU's microvm, gVisor). Every one is a [`Launcher`] that yields an
//! [`Instance`]; compare, density, the demos and `bench ... run` all go
//! through this one abstraction, so a new peer is one file here plus its
//! line in [`MODES`] (and its name in docs/schema/compare.v2.json).

pub mod container;
#[cfg(test)]
pub(crate) mod fake;
pub mod gvisor;
pub(crate) mod image_layer;
pub(crate) mod image_ready;
pub mod microvm;
pub mod oci;
pub(crate) mod peer_net;
pub mod process;
pub mod qemu;
pub(crate) mod spawn;
pub mod vm_limits;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use isolab_cgroups::Stats;
use isolab_guest_kernel::GuestArtifacts;
use isolab_microvm::VmReport;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::image::ImageWorkload;
use crate::net::SharedWorkbench;
use crate::{HarnessError, Workload};

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
    Gvisor,
}

/// What isolates a mode's instance from the host: decides which limits a
/// demo gives it and how its column reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A plain process: nothing.
    None,
    /// Namespaces and cgroups on the host kernel.
    Container,
    /// A guest kernel of its own.
    Vm,
}

/// One registered mode: its names, its kind of isolation, and how its
/// launcher is made.
#[derive(Debug)]
pub struct ModeInfo {
    pub kind: ModeKind,
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// Another tool measured as a reference (not one of ours).
    pub peer: bool,
    pub isolation: Isolation,
    /// The launcher of this mode in a context.
    pub launcher: fn(&Context) -> Box<dyn Launcher>,
    /// How this mode is measured where it differs from the common method
    /// (a report's method section lists them for the modes it ran).
    pub notes: &'static [&'static str],
}

/// The registry: every mode and peer, in the order reports list them.
pub const MODES: &[ModeInfo] = &[
    ModeInfo {
        kind: ModeKind::Process,
        name: "process",
        aliases: &[],
        peer: false,
        isolation: Isolation::None,
        launcher: process::launcher,
        notes: &[],
    },
    ModeInfo {
        kind: ModeKind::Container,
        name: "container",
        aliases: &[],
        peer: false,
        isolation: Isolation::Container,
        launcher: container::launcher,
        notes: &[],
    },
    ModeInfo {
        kind: ModeKind::Microvm,
        name: "microvm",
        aliases: &["vm"],
        peer: false,
        isolation: Isolation::Vm,
        launcher: microvm::launcher,
        notes: &[],
    },
    ModeInfo {
        kind: ModeKind::Crun,
        name: "crun",
        aliases: &[],
        peer: true,
        isolation: Isolation::Container,
        launcher: oci::crun,
        notes: &[],
    },
    ModeInfo {
        kind: ModeKind::Runc,
        name: "runc",
        aliases: &[],
        peer: true,
        isolation: Isolation::Container,
        launcher: oci::runc,
        notes: &[],
    },
    ModeInfo {
        kind: ModeKind::QemuMicrovm,
        name: "qemu-microvm",
        aliases: &["qemu"],
        peer: true,
        isolation: Isolation::Vm,
        launcher: qemu::launcher,
        notes: &[],
    },
    ModeInfo {
        kind: ModeKind::Gvisor,
        name: "gvisor",
        aliases: &["runsc"],
        peer: true,
        // Limits as a container's (cgroups); its kernel is gVisor's Sentry.
        isolation: Isolation::Container,
        launcher: gvisor::launcher,
        notes: gvisor::NOTES,
    },
];

impl ModeKind {
    /// Its registry entry.
    pub fn info(self) -> &'static ModeInfo {
        MODES
            .iter()
            .find(|m| m.kind == self)
            .expect("every ModeKind is registered in MODES")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Parse a mode or peer name as typed on the command line.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        MODES
            .iter()
            .find(|m| m.name == s || m.aliases.contains(&s))
            .map(|m| m.kind)
    }

    /// True for the peers (other tools measured as references).
    pub fn is_peer(self) -> bool {
        self.info().peer
    }

    pub fn isolation(self) -> Isolation {
        self.info().isolation
    }

    /// The names of our modes (`peer == false`) or of the peers, joined
    /// with ", ", for help texts and errors.
    pub fn names(peers: bool) -> String {
        MODES
            .iter()
            .filter(|m| m.peer == peers)
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What to run in one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    /// The workload (its first argument).
    pub workload: Workload,
    /// Further arguments, including the workload's own safety caps.
    pub args: Vec<String>,
    /// The instance's memory: its cgroup limit (containers) or guest RAM
    /// (VMs), bytes; `None` for the mode's default.
    pub memory_bytes: Option<u64>,
    /// Containers: CPU bandwidth in CPUs. VMs: the same limit on the
    /// monitor's own cgroup ([`vm_limits`]).
    pub cpus: Option<f64>,
    /// Containers: pids.max. VMs: the monitor cgroup's.
    pub pids: Option<u64>,
    /// VMs: vCPUs.
    pub vcpus: Option<u8>,
    /// Containers: the hostname in its UTS namespace.
    pub hostname: Option<String>,
    /// Containers and their OCI peers: the `privileged` security profile
    /// (every capability, no seccomp filter, no device rules) instead of
    /// the default, Docker's (`isolab_container::security`).
    pub privileged: bool,
    /// Keep the workload's stderr (a process's is captured into
    /// [`InstanceOutcome::stderr_tail`], a container's goes to ours);
    /// otherwise it is discarded, so a table is not buried in logs.
    pub keep_stderr: bool,
    /// `cgroup.procs` files a launched process joins before it execs, for
    /// modes without a cgroup of their own (density runs): joining before
    /// exec charges every page the instance touches to the budget.
    pub join_cgroups: Vec<PathBuf>,
    /// Containers serving HTTP: listen on loopback inside the container's
    /// own network namespace and be probed there, instead of over a veth
    /// on the workbench bridge (the default, as Docker attaches
    /// containers). Density runs always use loopback.
    pub loopback_http: bool,
    /// A user's image or bundle to run instead of the built-in workload
    /// (`--image`, `--bundle`); `workload` then only names the kind of
    /// run. Modes that cannot run one yet refuse it with
    /// [`refuse_image`].
    pub image: Option<Arc<ImageWorkload>>,
}

impl InstanceSpec {
    /// A spec with the mode defaults for everything but the workload.
    pub fn new(workload: Workload, args: &[&str]) -> Self {
        InstanceSpec {
            workload,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            memory_bytes: None,
            cpus: None,
            pids: None,
            vcpus: None,
            hostname: None,
            privileged: false,
            keep_stderr: false,
            join_cgroups: vec![],
            loopback_http: false,
            image: None,
        }
    }

    /// The spec `compare` and `density` measure a workload with: a
    /// bounded worker and a small cache, so a run takes a moment.
    pub fn measured(workload: Workload) -> Self {
        let args: &[&str] = match workload {
            Workload::Worker => &["--duration-ms", "200"],
            Workload::Cache => &["--mib", "32"],
            _ => &[],
        };
        InstanceSpec::new(workload, args)
    }
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
    /// MicroVM only: of the touched guest RAM, what huge pages (THP or
    /// hugetlb) back; the rest is 4 KiB pages.
    #[serde(default)]
    pub guest_huge: Option<u64>,
}

/// How an instance ended, and what its mode observed about it.
#[derive(Debug, Clone, Default)]
pub struct InstanceOutcome {
    /// Shell-style status: the exit code, or 128+N for signal N; `None`
    /// when the workload never reported one (a guest that stopped early).
    pub status: Option<i32>,
    /// The workload's JSON result line ([`isolab_workload::result::parse`]),
    /// when it printed one (a killed workload prints none).
    pub result: Option<Map<String, Value>>,
    /// The instance's cgroup counters, read before the cgroup went
    /// (containers).
    pub cgroup: Option<Stats>,
    /// Peak resident memory of the host process that held the workload,
    /// KiB (process: the kernel's figure for the child, which also counts
    /// pages it shared with us before exec; microVM: the monitor's RSS at
    /// the end).
    pub peak_rss_kib: Option<u64>,
    /// CPU time the workload used (user + system), where the mode measures
    /// it: the process's rusage, the container's cgroup.
    pub cpu_time_us: Option<u64>,
    /// The last lines of the workload's (or monitor's) stderr, where kept.
    pub stderr_tail: Vec<String>,
    /// The monitor's report (our microVM): boot phases, memory, stop reason.
    pub vm: Option<Box<VmReport>>,
    /// Where the launch's time went (our container), from the launcher's
    /// own timestamps.
    pub launch_phases: Option<isolab_container::LaunchPhases>,
    /// A caveat every figure of this instance carries (the emulated host's).
    pub label: Option<String>,
    /// It did not end by itself within `wait_exit`'s timeout and was killed.
    pub timed_out: bool,
    /// VMs with limits ([`vm_limits`]): whether the guest kernel's OOM
    /// killer acted, read from the guest's console; `None` where not read.
    pub guest_oom: Option<bool>,
}

impl InstanceOutcome {
    /// The cgroup's OOM kill counter moved.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|s| s.oom_kills > 0)
    }

    /// A field of the result line (non-null).
    pub fn fact(&self, key: &str) -> Option<&Value> {
        self.result.as_ref()?.get(key).filter(|v| !v.is_null())
    }

    /// The highest `hog: N MiB` progress line on stderr.
    pub fn hog_progress_mib(&self) -> Option<u64> {
        self.stderr_tail
            .iter()
            .filter_map(|l| l.strip_prefix("hog: ")?.strip_suffix(" MiB")?.parse().ok())
            .max()
    }
}

/// Where and when an instance's HTTP service is probed.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub target: isolab_net::Target,
    /// Probe only once the instance signalled ready (a guest has no
    /// address before its init configured it; probing earlier would wait
    /// on ARP instead of measuring the workload).
    pub after_ready: bool,
}

/// A running instance.
pub trait Instance: Send {
    /// When the launch began (the start of every timer).
    fn launched_at(&self) -> Instant;
    /// Block until the workload's ready signal; returns when it came.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, HarnessError>;
    /// Where to reach its HTTP service, if the workload serves one.
    fn http_target(&self) -> Option<HttpTarget>;
    /// Where a user's image's program is reached, at any port (the caller
    /// sets its rule's): the same place its readiness is probed, for the
    /// request runs of the isolation passes. `None` for the built-in
    /// workload and where it cannot be reached from here.
    fn image_reach(&self) -> Option<isolab_net::Target> {
        None
    }
    /// Host pids that belong to this instance (launcher/monitor included).
    fn host_pids(&self) -> Vec<u32>;
    /// Memory attributed to this instance now.
    fn memory(&self) -> InstanceMemory;
    /// Where its launch's time went so far (our container; `None` for the
    /// other modes, whose launchers keep no such marks).
    fn launch_phases(&self) -> Option<isolab_container::LaunchPhases> {
        None
    }
    /// Stop (SIGTERM, then SIGKILL after a grace period) and clean up.
    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError>;
    /// Wait for a workload that ends by itself (noop, worker, probe...);
    /// past `timeout` it is killed; then clean up.
    fn wait_exit(self: Box<Self>, timeout: Duration) -> Result<InstanceOutcome, HarnessError>;
}

/// The error of a mode that cannot run a user's image yet, or `Ok` when
/// the spec holds none: `Unavailable`, so `compare` lists the mode as
/// skipped with this reason instead of failing the run.
pub fn refuse_image(kind: ModeKind, spec: &InstanceSpec) -> Result<(), HarnessError> {
    match &spec.image {
        None => Ok(()),
        Some(i) => Err(HarnessError::Unavailable(format!(
            "{} cannot run an image ({}) yet; leave it out with --modes/--peers",
            kind.name(),
            i.label
        ))),
    }
}

/// Starts instances of one mode.
pub trait Launcher {
    fn kind(&self) -> ModeKind;
    /// Why this mode cannot run here, with what to do; `None` when it can.
    fn unavailable(&self) -> Option<String>;
    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError>;
}

/// The static binaries the modes need, found next to the running `bench`
/// ([`isolab_guest_kernel::binary_dir`]).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub workload: PathBuf,
    pub init: PathBuf,
    /// The monitor, one process per microVM.
    pub vmm: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        Binaries {
            workload: dir.join(isolab_guest_kernel::WORKLOAD_BIN),
            init: dir.join(isolab_guest_kernel::INIT_BIN),
            vmm: isolab_guest_kernel::monitor_binary(dir),
        }
    }

    /// Locate the binaries beside the running executable.
    pub fn beside_current_exe() -> Result<Self, HarnessError> {
        let dir = isolab_guest_kernel::binary_dir()
            .ok_or_else(|| HarnessError::Launch("cannot locate the running executable".into()))?;
        let b = Binaries::in_dir(&dir);
        if !b.workload.exists() {
            return Err(HarnessError::MissingBinary(b.workload.clone()));
        }
        Ok(b)
    }
}

/// Where microVMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmHost {
    /// This host's `/dev/kvm`.
    Native,
    /// Inside the emulated hardware-virtualisation host (QEMU TCG + nested
    /// KVM); every figure carries its label.
    Emulated,
}

/// Everything the modes share in one run: the binaries, the guest
/// artifacts (provisioned once, only when a VM mode can run here) and the
/// workbench network (created once, only when a networked VM needs it).
#[derive(Debug)]
pub struct Context {
    pub bins: Binaries,
    pub workload: Workload,
    pub vm_host: VmHost,
    guest: OnceLock<Result<GuestArtifacts, String>>,
    pub(crate) network: Arc<SharedWorkbench>,
}

impl Context {
    /// Locate the binaries next to the running executable.
    pub fn new(workload: Workload) -> Result<Self, HarnessError> {
        // Every run that launches through the registry starts here: remove
        // what killed launchers left (peers, the workbench namespace).
        crate::stale::clean_at_start();
        Ok(Context::with_binaries(
            Binaries::beside_current_exe()?,
            workload,
        ))
    }

    /// A context over the given binaries.
    pub fn with_binaries(bins: Binaries, workload: Workload) -> Self {
        Context {
            bins,
            workload,
            vm_host: VmHost::Native,
            guest: OnceLock::new(),
            network: Arc::new(SharedWorkbench::default()),
        }
    }

    /// Guest kernel and initramfs, provisioned on first use (builds the
    /// kernel on the very first run; cached afterwards).
    pub fn guest(&self) -> Result<GuestArtifacts, String> {
        self.guest
            .get_or_init(|| {
                let cache = isolab_guest_kernel::cache_root().map_err(|e| e.to_string())?;
                let dir = self
                    .bins
                    .workload
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let opts = isolab_guest_kernel::ProvisionOptions::new(cache, &dir, self.workload);
                isolab_guest_kernel::provision(&opts)
                    .map(|p| p.artifacts())
                    .map_err(|e| crate::chain(&HarnessError::from(e)))
            })
            .clone()
    }

    /// The guest artifacts when this host can boot them (natively: only
    /// with hardware KVM; in the emulated host: always).
    pub(crate) fn guest_if_bootable(&self) -> Result<GuestArtifacts, String> {
        match (self.vm_host, microvm::native_refusal()) {
            (VmHost::Native, Some(r)) => Err(r),
            _ => self.guest(),
        }
    }

    /// The launcher of a mode.
    pub fn launcher(&self, kind: ModeKind) -> Box<dyn Launcher> {
        (kind.info().launcher)(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_once_with_unique_names() {
        let kinds = [
            ModeKind::Process,
            ModeKind::Container,
            ModeKind::Microvm,
            ModeKind::Crun,
            ModeKind::Runc,
            ModeKind::QemuMicrovm,
            ModeKind::Gvisor,
        ];
        assert_eq!(MODES.len(), kinds.len());
        for k in kinds {
            assert_eq!(ModeKind::parse(k.name()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                Value::from(k.name()),
                "the report spells it as the command line does"
            );
        }
        assert_eq!(ModeKind::parse("vm"), Some(ModeKind::Microvm));
        assert_eq!(ModeKind::parse("docker"), None);
        assert_eq!(ModeKind::names(false), "process, container, microvm");
        assert_eq!(ModeKind::names(true), "crun, runc, qemu-microvm, gvisor");
    }

    #[test]
    fn measured_specs_bound_the_workloads_that_end_by_themselves() {
        assert_eq!(
            InstanceSpec::measured(Workload::Worker).args,
            ["--duration-ms", "200"]
        );
        assert_eq!(
            InstanceSpec::measured(Workload::Cache).args,
            ["--mib", "32"]
        );
        assert!(InstanceSpec::measured(Workload::Api).args.is_empty());
    }
}
