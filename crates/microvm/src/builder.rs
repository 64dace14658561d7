//! The microVM boot sequence, one function per step, in the order of
//! `docs/design.md` ("MicroVM boot sequence"):
//!
//! 1. [`validate_config`]   2. [`check_host`]        3. [`open_kvm`]
//! 4. [`create_vm`]         5. [`setup_memory`]      6. [`load_kernel`]
//! 7. [`load_initrd`]       8. [`attach_devices`]    9. [`write_cmdline`]
//! 10. [`write_boot_info`]  11. [`write_mptable`]    12. [`create_vcpus`]
//! 13. [`run_vcpus`]        14. [`collect_report`]
//!
//! [`run`] performs them all. Everything a step creates is owned by a value
//! that is dropped on every path, so a failed boot leaves nothing behind
//! (the VM, its memory and its threads are process-local).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::bootparams::{self, InitrdPlacement};
use crate::arch::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE};
use crate::arch::mptable;
use crate::arch::regs::BootProtocol;
use crate::config::{ConfigError, Console, HugePages, Validated, VmConfig};
use crate::devices::bus::{BusError, DeviceBus, SharedDevice};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::marker::{MarkerDevice, MarkerLog, ReadyHook, MARKER_BASE, MARKER_LEN};
use crate::devices::serial::{
    CappedWriter, EventFdTrigger, SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN, MAX_CONSOLE_BYTES,
};
use crate::devices::virtio_mmio::{MmioSlot, VirtioMmioAllocator, VirtioMmioError};
use crate::exits::StopReason;
use crate::host::{self, HostKind};
use crate::loader::{self, KernelFormat, LoadedKernel, LoaderError};
use crate::memory_stats::{MemoryProbe, MemorySample, MemoryStatsError};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::timing::{self, Phases, Timeline};
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::vstate::vcpu::{self, VcpuError};
use crate::vstate::vm::{self, VmError};

/// Kernel parameters every boot gets, each for a reason:
/// - `reboot=k`: reboot through the i8042 (0xFE to port 0x64), which the
///   monitor treats as a clean exit;
/// - `panic=1`: a panicking guest reboots (and so exits) after one second;
/// - `nomodule`: the guest kernel is monolithic;
/// - `pci=off`: there is no PCI bus, skip probing it;
/// - `i8042.noaux i8042.nomux i8042.dumbkbd`: skip the i8042 probing that
///   otherwise costs hundreds of ms;
/// - `swiotlb=noforce`: no bounce buffers;
/// - `rdinit=/init`: the initramfs init is the project's `isolab-init`.
pub const BASE_CMDLINE: &str =
    "reboot=k panic=1 nomodule pci=off i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce rdinit=/init";
/// With the console off: one UART (COM1, output discarded) as the console
/// with `loglevel=0`, so the kernel prints nothing (each byte would be a VM
/// exit) yet `/dev/console` opens. Firecracker's `8250.nr_uarts=0` leaves
/// init without a console: it starts with fds 0-2 closed, and a Rust init
/// aborts when it cannot reopen them on a `/dev/null` the initramfs lacks
/// (seen in the emulated host: no marker ever arrives).
pub const NO_CONSOLE_CMDLINE: &str = "8250.nr_uarts=1 console=ttyS0 loglevel=0";
/// With the console on: kernel messages on COM1, and ask init to copy the
/// workload's output there.
pub const CONSOLE_CMDLINE: &str = "console=ttyS0 isolab.console=1";

/// Builds a virtio-mmio device once its slot, its interrupt (an irqfd on
/// the slot's IRQ) and the guest memory it reads its queues from are known.
pub type MmioDeviceFactory =
    Box<dyn FnOnce(MmioSlot, EventFd, &GuestMemoryMmap) -> SharedDevice + Send>;

/// Callbacks and extra devices for one run.
#[derive(Default)]
pub struct RunHooks {
    /// Called on the vCPU thread when the workload-ready marker arrives.
    pub on_ready: Option<ReadyHook>,
    /// virtio-mmio devices to attach, in order (slot n: 0xc0001000 + n*4K, IRQ 5+n).
    pub mmio_devices: Vec<MmioDeviceFactory>,
}

impl std::fmt::Debug for RunHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHooks")
            .field("on_ready", &self.on_ready.is_some())
            .field("mmio_devices", &self.mmio_devices.len())
            .finish()
    }
}

/// Failures of the boot sequence, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Step 1 (and the KVM vCPU limit in step 3): bad configuration.
    #[error("Invalid VM configuration")]
    Config(#[source] ConfigError),
    /// Step 2: this host cannot boot the guest.
    #[error("{}", .0.refusal().unwrap_or("host cannot run the VM"))]
    Host(HostKind),
    /// Step 3: /dev/kvm unusable.
    #[error("KVM is not usable")]
    Kvm(#[source] KvmError),
    /// Step 4.
    #[error("Failed to create the VM")]
    CreateVm(#[source] VmError),
    /// Step 5.
    #[error("Failed to set up guest memory")]
    Memory(#[source] MemoryError),
    /// Step 5: registering memory slots.
    #[error("Failed to register guest memory with KVM")]
    RegisterMemory(#[source] VmError),
    /// Step 6.
    #[error("Failed to load the kernel")]
    LoadKernel(#[source] LoaderError),
    /// Step 7.
    #[error("Failed to load the initramfs")]
    LoadInitrd(#[source] LoaderError),
    /// Step 8: console file.
    #[error("Cannot create console file {path}")]
    ConsoleFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Step 8: interrupt wiring.
    #[error("Failed to wire a device interrupt")]
    DeviceIrq(#[source] VmError),
    /// Step 8: bus registration.
    #[error("Failed to register a device")]
    DeviceBus(#[source] BusError),
    /// Step 8: virtio-mmio slots.
    #[error("Failed to place a virtio-mmio device")]
    VirtioMmio(#[source] VirtioMmioError),
    /// Step 9.
    #[error("Kernel command line is invalid or longer than {CMDLINE_MAX_SIZE} bytes: {reason}")]
    Cmdline { reason: String },
    /// Step 9: writing it.
    #[error("Failed to write the kernel command line at {CMDLINE_ADDR:#x}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Step 10.
    #[error("Failed to write the boot information")]
    BootInfo(#[source] bootparams::BootParamsError),
    /// Step 11.
    #[error("Failed to write the MP table")]
    Mptable(#[source] mptable::MptableError),
    /// Step 12.
    #[error("Failed to set up vCPUs")]
    Vcpu(#[source] VcpuError),
    /// Step 13: signal plumbing.
    #[error("Failed to set up signal handling for the run")]
    Signals(#[source] nix::Error),
    /// Step 13: thread spawn.
    #[error("Failed to start the vCPU {index} thread")]
    SpawnVcpu {
        index: u8,
        #[source]
        source: std::io::Error,
    },
    /// Step 13: confining this thread (seccomp, capabilities).
    #[error("Failed to confine the monitor")]
    Confine(#[source] SeccompError),
    /// Step 13: the guest or KVM failed.
    #[error("The VM failed")]
    Run(#[source] VcpuError),
    /// Step 13: a vCPU thread panicked.
    #[error("vCPU {index} thread panicked")]
    VcpuPanic { index: u8 },
    /// Step 14.
    #[error("Failed to measure memory")]
    MemoryStats(#[source] MemoryStatsError),
}

impl BuildError {
    /// Whether the caller typed something wrong (nothing was changed).
    pub fn is_usage(&self) -> bool {
        matches!(self, BuildError::Config(_))
    }

    /// Whether the host lacks what the VM needs.
    pub fn is_host(&self) -> bool {
        matches!(self, BuildError::Host(_) | BuildError::Kvm(_))
    }
}

/// Everything a run reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmReport {
    /// The host kind the VM ran on.
    pub host: HostKind,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Kernel image format.
    pub kernel_format: KernelFormat,
    /// Boot protocol used.
    pub boot_protocol: std::borrow::Cow<'static, str>,
    /// The kernel command line as written.
    pub cmdline: String,
    /// Why the VM stopped.
    pub stop_reason: StopReason,
    /// The workload's exit status from the marker device, if it got that far.
    pub exit_status: Option<u8>,
    /// Boot phases.
    pub phases: Phases,
    /// How guest RAM was backed and aligned.
    #[serde(default)]
    pub guest_memory: GuestMemoryFacts,
    /// Memory when the workload became ready.
    pub memory_at_ready: Option<MemorySample>,
    /// Memory at the end, guest fully touched as far as it ever was.
    pub memory_at_end: MemorySample,
    /// The workload's stdout as relayed through the marker port.
    pub workload_output: String,
    /// Marker values outside the ABI, if any (the first 64).
    pub unknown_markers: Vec<u8>,
    /// Unknown marker values past the first 64, counted and dropped.
    #[serde(default)]
    pub unknown_markers_dropped: u64,
    /// Workload output bytes past the 1 MiB kept, counted and dropped.
    #[serde(default)]
    pub workload_output_dropped: u64,
}

/// How guest RAM was mapped (which page sizes then backed it is in the
/// memory samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestMemoryFacts {
    /// The backing asked for: `host`, `thp`, `hugetlb_2m`, `hugetlb_1g`.
    pub backing: HugePages,
    /// Host alignment of guest RAM's start, in KiB (2048: 2 MiB).
    pub host_alignment_kib: u64,
}

/// Step 1: check the config without touching KVM.
pub fn validate_config(config: &VmConfig) -> Result<Validated, BuildError> {
    config.validate().map_err(BuildError::Config)
}

/// Step 2: refuse hosts that cannot boot a stock guest (unless told to try).
pub fn check_host(root: &Path, allow_pvm: bool) -> Result<HostKind, BuildError> {
    let kind = host::detect(root);
    match kind {
        HostKind::Pvm if allow_pvm => Ok(kind),
        ref k if k.refusal().is_some() => Err(BuildError::Host(kind)),
        _ => Ok(kind),
    }
}

/// Step 3: open /dev/kvm, check capabilities and the vCPU limit.
pub fn open_kvm(config: &VmConfig) -> Result<KvmContext, BuildError> {
    let kvm = KvmContext::open().map_err(BuildError::Kvm)?;
    config
        .validate_vcpus(kvm.max_vcpus())
        .map_err(BuildError::Config)?;
    kvm.check_boot_caps().map_err(BuildError::Kvm)?;
    Ok(kvm)
}

/// Step 4: the VM with its in-kernel irqchip and PIT, perf-counter MSRs
/// hidden.
pub fn create_vm(kvm: &KvmContext) -> Result<VmFd, BuildError> {
    let vm = vm::create_vm(kvm).map_err(BuildError::CreateVm)?;
    vm::setup_irqchip_and_pit(&vm).map_err(BuildError::CreateVm)?;
    vm::hide_pmu_msrs(&vm).map_err(BuildError::CreateVm)?;
    Ok(vm)
}

/// Step 5: guest RAM, host-aligned to the largest page that may back it,
/// registered as KVM memory slots.
pub fn setup_memory(
    vm: &VmFd,
    mem_bytes: u64,
    huge_pages: HugePages,
) -> Result<GuestMemoryMmap, BuildError> {
    let mem = memory::create_guest_memory(mem_bytes, huge_pages).map_err(BuildError::Memory)?;
    vm::register_memory(vm, &mem).map_err(BuildError::RegisterMemory)?;
    Ok(mem)
}

/// Step 6: the kernel at 1 MiB.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BuildError> {
    loader::load_kernel(mem, path).map_err(BuildError::LoadKernel)
}

/// Step 7: the initramfs at the top of RAM.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: Option<&Path>,
    mem_bytes: u64,
    kernel: &LoadedKernel,
) -> Result<Option<InitrdPlacement>, BuildError> {
    path.map(|p| loader::load_initrd(mem, p, mem_bytes, kernel.end))
        .transpose()
        .map_err(BuildError::LoadInitrd)
}

/// Devices attached in step 8.
#[derive(Debug)]
pub struct Devices {
    /// Both buses.
    pub bus: DeviceBus,
    /// Marker log shared with the marker device.
    pub markers: Arc<Mutex<MarkerLog>>,
    /// Signalled when the ready marker arrives (for the memory sample).
    pub ready_evt: EventFd,
    /// The virtio-mmio slots taken, for the command line.
    pub mmio_slots: Vec<MmioSlot>,
}

/// Step 8: COM1 (irqfd on GSI 4), i8042, the marker device and any
/// virtio-mmio devices.
pub fn attach_devices(
    vm: &VmFd,
    console: &Console,
    ready_text: Option<&str>,
    hooks: &mut RunHooks,
) -> Result<Devices, BuildError> {
    let mut bus = DeviceBus::default();
    let out: Box<dyn Write + Send> = match console {
        Console::Off => Box::new(std::io::sink()),
        Console::Stdout => Box::new(std::io::stdout()),
        Console::File(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            // O_NOFOLLOW: a symlink at the path is refused (ELOOP), never
            // followed to truncate whatever it points at.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
                .map_err(|source| BuildError::ConsoleFile {
                    path: p.display().to_string(),
                    source,
                })?;
            Box::new(f)
        }
    };
    let com1_irq = vm::irqfd(vm, COM1_IRQ).map_err(BuildError::DeviceIrq)?;
    let serial = SerialDevice::new(
        EventFdTrigger(com1_irq),
        CappedWriter::new(out, MAX_CONSOLE_BYTES),
    );
    bus.pio
        .insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))
        .map_err(BuildError::DeviceBus)?;
    bus.pio
        .insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new())))
        .map_err(BuildError::DeviceBus)?;

    let markers = Arc::new(Mutex::new(MarkerLog::default()));
    let ready_evt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| BuildError::DeviceIrq(VmError::EventFd(e)))?;
    let ready_signal = ready_evt
        .try_clone()
        .map_err(|e| BuildError::DeviceIrq(VmError::EventFd(e)))?;
    let mut user_hook = hooks.on_ready.take();
    // The monitor learns of readiness before the caller does, so a caller
    // that reacts to ready by stopping the VM still gets the ready sample.
    let hook: ReadyHook = Box::new(move || {
        let _ = ready_signal.write(1);
        if let Some(h) = user_hook.as_mut() {
            h();
        }
    });
    let mut marker = MarkerDevice::new(markers.clone(), Some(hook));
    if let Some(t) = ready_text {
        marker = marker.with_ready_text(t);
    }
    bus.pio
        .insert(MARKER_BASE, MARKER_LEN, Arc::new(Mutex::new(marker)))
        .map_err(BuildError::DeviceBus)?;

    Ok(Devices {
        bus,
        markers,
        ready_evt,
        mmio_slots: Vec::new(),
    })
}

/// Step 8, continued: the caller's virtio-mmio devices, each in the next
/// slot (0xc0001000 + n*4K, IRQ 5+n) with an irqfd on its IRQ and access
/// to guest memory for its queues.
pub fn attach_mmio_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    devices: &mut Devices,
    hooks: &mut RunHooks,
) -> Result<(), BuildError> {
    let mut alloc = VirtioMmioAllocator::new();
    for factory in hooks.mmio_devices.drain(..) {
        let slot = alloc.allocate().map_err(BuildError::VirtioMmio)?;
        let irq = vm::irqfd(vm, slot.irq).map_err(BuildError::DeviceIrq)?;
        devices
            .bus
            .mmio
            .insert(slot.addr, slot.len, factory(slot, irq, mem))
            .map_err(BuildError::DeviceBus)?;
        devices.mmio_slots.push(slot);
    }
    Ok(())
}

/// The command line for `config` with these virtio-mmio slots.
pub fn build_cmdline(config: &VmConfig, slots: &[MmioSlot]) -> Result<Cmdline, BuildError> {
    let err = |e: linux_loader::cmdline::Error| BuildError::Cmdline {
        reason: e.to_string(),
    };
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(err)?;
    c.insert_str(BASE_CMDLINE).map_err(err)?;
    c.insert_str(if config.console == Console::Off {
        NO_CONSOLE_CMDLINE
    } else {
        CONSOLE_CMDLINE
    })
    .map_err(err)?;
    for slot in slots {
        c.insert_str(slot.cmdline_entry()).map_err(err)?;
    }
    c.insert("isolab.workload", config.workload.as_str())
        .map_err(err)?;
    for arg in &config.workload_args {
        c.insert("isolab.arg", arg.as_str()).map_err(err)?;
    }
    if let Some(extra) = config
        .cmdline_extra
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        c.insert_str(extra.trim()).map_err(err)?;
    }
    Ok(c)
}

/// Step 9: the command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, BuildError> {
    linux_loader::loader::load_cmdline(mem, vm_memory::GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(BuildError::WriteCmdline)?;
    let s = cmdline.as_cstring().map_err(|e| BuildError::Cmdline {
        reason: e.to_string(),
    })?;
    Ok(s.as_bytes().len())
}

/// Step 10: zero page (Linux 64-bit protocol) or PVH start info.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &LoadedKernel,
    initrd: Option<InitrdPlacement>,
    cmdline_len: usize,
) -> Result<(), BuildError> {
    let e820 = bootparams::e820_map(mem_bytes).map_err(BuildError::BootInfo)?;
    match kernel.entry.protocol {
        BootProtocol::Linux64 => {
            let params =
                bootparams::linux_boot_params(kernel.setup_header, cmdline_len + 1, initrd, &e820);
            bootparams::write_linux_boot_params(mem, &params).map_err(BuildError::BootInfo)
        }
        BootProtocol::Pvh => bootparams::write_pvh_boot_info(mem, initrd, &e820)
            .map(|_| ())
            .map_err(BuildError::BootInfo),
    }
}

/// Step 11: the MP table (also for one vCPU).
pub fn write_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), BuildError> {
    mptable::setup_mptable(mem, vcpus).map_err(BuildError::Mptable)
}

/// Step 12: create every vCPU and load its boot state: CPUID, MSRs,
/// registers, FPU, segments and paging, LAPIC.
pub fn create_vcpus(
    vm: &VmFd,
    kvm: &KvmContext,
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    count: u8,
) -> Result<Vec<VcpuFd>, BuildError> {
    let supported: CpuId = kvm.supported_cpuid().map_err(BuildError::Kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let fd = vcpu::create_vcpu(vm, index).map_err(BuildError::Vcpu)?;
        vcpu::configure_cpuid(&fd, &supported, index, count).map_err(BuildError::Vcpu)?;
        vcpu::configure_msrs(&fd, index).map_err(BuildError::Vcpu)?;
        vcpu::configure_regs_and_fpu(&fd, index, &kernel.entry).map_err(BuildError::Vcpu)?;
        vcpu::configure_sregs(&fd, index, mem, kernel.entry.protocol).map_err(BuildError::Vcpu)?;
        vcpu::configure_lapic(&fd, index).map_err(BuildError::Vcpu)?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// How the run ended, and when the boot vCPU first entered the guest.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why the VM stopped.
    pub stop_reason: StopReason,
    /// First KVM_RUN of vCPU 0.
    pub first_run: Option<Instant>,
    /// Memory sampled when the ready marker arrived.
    pub memory_at_ready: Option<MemorySample>,
}

/// Blocks SIGTERM/SIGINT for the run (vCPU threads inherit the mask) and
/// restores the previous mask on drop, so the signals end the VM through a
/// signalfd instead of killing the process with the guest half done.
struct SignalGuard {
    old: SigSet,
    fd: SignalFd,
}

impl SignalGuard {
    fn new() -> Result<Self, nix::Error> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
        match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Ok(Self { old, fd }),
            Err(e) => {
                let _ =
                    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
                Err(e)
            }
        }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Stack of each vCPU thread: `KVM_RUN` and device emulation are shallow,
/// and a small stack can never be backed by a 2 MiB transparent huge page
/// (which would add 2 MiB to the monitor's own memory).
pub const VCPU_STACK_SIZE: usize = 256 << 10;

/// Holds vCPU threads between confinement and their first `KVM_RUN` until
/// every monitor thread is confined (Firecracker's order: vCPU filters, then
/// the VMM's, then the guest runs).
#[derive(Debug, Default)]
struct StartGate {
    state: Mutex<Option<bool>>,
    cond: std::sync::Condvar,
}

impl StartGate {
    /// Lets the waiting threads go (`run`) or tells them to give up.
    fn open(&self, run: bool) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
        self.cond.notify_all();
    }

    /// Waits for [`StartGate::open`]; true means run the guest.
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(run) = *s {
                return run;
            }
            s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Step 13: one thread per vCPU; wait for the first to stop (guest reset,
/// triple fault, error) or for SIGTERM/SIGINT; then stop and join all.
/// With `confine`, each vCPU thread and then this thread install their
/// seccomp filters and drop their capabilities ([`crate::seccomp`]) before
/// any vCPU enters the guest; this thread stays confined afterwards.
pub fn run_vcpus(
    vcpus: Vec<VcpuFd>,
    devices: &Devices,
    memory: &mut MemoryProbe,
    confine: bool,
) -> Result<RunOutcome, BuildError> {
    vcpu::install_kick_handler().map_err(BuildError::Vcpu)?;
    let signals = SignalGuard::new().map_err(BuildError::Signals)?;
    let stop = Arc::new(AtomicBool::new(false));
    let first_run = Arc::new(OnceLock::new());
    let gate = Arc::new(StartGate::default());
    let done_evt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| BuildError::DeviceIrq(VmError::EventFd(e)))?;

    let mut handles: Vec<JoinHandle<Result<StopReason, VcpuError>>> = Vec::new();
    // Set by each vCPU thread as it leaves its run loop, before `done`.
    let mut leaving: Vec<Arc<AtomicBool>> = Vec::new();
    let mut spawn_error = None;
    for (i, mut fd) in vcpus.into_iter().enumerate() {
        let index = i as u8;
        let bus = devices.bus.clone();
        let stop = stop.clone();
        let first_run = first_run.clone();
        let gate = gate.clone();
        let left = Arc::new(AtomicBool::new(false));
        let left_here = left.clone();
        let done = match done_evt.try_clone() {
            Ok(d) => d,
            Err(e) => {
                spawn_error = Some(BuildError::SpawnVcpu { index, source: e });
                break;
            }
        };
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || {
                let confined = if confine {
                    seccomp::confine_current_thread(ThreadKind::Vcpu)
                } else {
                    Ok(())
                };
                let go = gate.wait();
                let r = match confined {
                    Err(e) => Err(VcpuError::Confine { index, source: e }),
                    Ok(()) if !go => Ok(StopReason::HostRequest),
                    Ok(()) => {
                        let fr = (index == 0).then_some(&*first_run);
                        vcpu::run_loop(&mut fd, index, &bus, &stop, fr)
                    }
                };
                left_here.store(true, Ordering::SeqCst);
                let _ = done.write(1);
                r
            });
        match spawned {
            Ok(h) => {
                handles.push(h);
                leaving.push(left);
            }
            Err(source) => {
                spawn_error = Some(BuildError::SpawnVcpu { index, source });
                break;
            }
        }
    }
    if confine && spawn_error.is_none() && !seccomp::current_thread_confined() {
        if let Err(e) = seccomp::confine_current_thread(ThreadKind::Vmm) {
            spawn_error = Some(BuildError::Confine(e));
        }
    }
    gate.open(spawn_error.is_none());

    let mut memory_at_ready = None;
    let mut host_stop = false;
    if spawn_error.is_none() {
        loop {
            // SAFETY: both eventfds outlive this loop iteration (owned by
            // this function and by `devices`), so the borrowed fds stay open.
            let (done_fd, ready_fd) = unsafe {
                (
                    BorrowedFd::borrow_raw(done_evt.as_raw_fd()),
                    BorrowedFd::borrow_raw(devices.ready_evt.as_raw_fd()),
                )
            };
            let mut fds = [
                PollFd::new(signals.fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(done_fd, PollFlags::POLLIN),
                PollFd::new(ready_fd, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    spawn_error = Some(BuildError::Signals(e));
                    break;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            let (sig, done, rdy) = (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]));
            if rdy {
                let _ = devices.ready_evt.read();
                if memory_at_ready.is_none() {
                    memory_at_ready = memory.sample().ok();
                }
            }
            if sig {
                let _ = signals.fd.read_signal();
                host_stop = true;
                break;
            }
            if done {
                break;
            }
        }
    }

    // A ready marker that raced with the stop still gets its sample.
    if memory_at_ready.is_none() && devices.ready_evt.read().is_ok() {
        memory_at_ready = memory.sample().ok();
    }

    // Stop the others: set the flag, then kick until each thread is out.
    // A thread that left its loop (the one that stopped the VM) is only
    // returning: it is joined without a kick or a sleep, which cost a
    // millisecond or more of every stop.
    stop.store(true, Ordering::SeqCst);
    for (h, left) in handles.iter().zip(&leaving) {
        while !left.load(Ordering::SeqCst) && !h.is_finished() {
            let _ = h.kill(vcpu::kick_signal());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let mut first_stop: Option<StopReason> = None;
    let mut first_error: Option<BuildError> = spawn_error;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(StopReason::HostRequest)) => {}
            Ok(Ok(r)) => {
                first_stop.get_or_insert(r);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(BuildError::Run(e));
            }
            Err(_) => {
                first_error.get_or_insert(BuildError::VcpuPanic { index: i as u8 });
            }
        }
    }
    drop(signals);
    if let Some(e) = first_error {
        return Err(e);
    }
    let stop_reason = if host_stop {
        StopReason::HostRequest
    } else {
        first_stop.unwrap_or(StopReason::HostRequest)
    };
    Ok(RunOutcome {
        stop_reason,
        first_run: first_run.get().copied(),
        memory_at_ready,
    })
}

/// Step 14: timings, exit status, memory.
pub fn collect_report(
    timeline: &Timeline,
    devices: &Devices,
    outcome: RunOutcome,
    facts: ReportFacts,
    memory: &mut MemoryProbe,
) -> Result<VmReport, BuildError> {
    let memory_at_end = memory.sample().map_err(BuildError::MemoryStats)?;
    let log = devices
        .markers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(VmReport {
        host: facts.host,
        vcpus: facts.vcpus,
        memory_mib: facts.memory_mib,
        kernel_format: facts.kernel_format,
        boot_protocol: match facts.protocol {
            BootProtocol::Linux64 => "linux64",
            BootProtocol::Pvh => "pvh",
        }
        .into(),
        cmdline: facts.cmdline,
        stop_reason: outcome.stop_reason,
        exit_status: log.exit_status.filter(|_| log.workload_exited.is_some()),
        phases: timing::phases(timeline, &log),
        guest_memory: facts.guest_memory,
        memory_at_ready: outcome.memory_at_ready,
        memory_at_end,
        workload_output: String::from_utf8_lossy(&log.output).into_owned(),
        unknown_markers: log.unknown_events,
        unknown_markers_dropped: log.unknown_events_dropped,
        workload_output_dropped: log.output_dropped,
    })
}

/// Static facts of a run for the report.
#[derive(Debug, Clone)]
pub struct ReportFacts {
    /// Host kind.
    pub host: HostKind,
    /// vCPUs.
    pub vcpus: u8,
    /// RAM.
    pub memory_mib: u64,
    /// Kernel format.
    pub kernel_format: KernelFormat,
    /// Protocol.
    pub protocol: BootProtocol,
    /// Command line.
    pub cmdline: String,
    /// Guest RAM backing.
    pub guest_memory: GuestMemoryFacts,
}

/// Performs the whole boot sequence and runs the VM to its end.
/// `started` is the caller's earliest timestamp (monitor start).
pub fn run(
    config: &VmConfig,
    started: Instant,
    mut hooks: RunHooks,
) -> Result<VmReport, BuildError> {
    let mut timeline = Timeline::new(started);
    let validated = validate_config(config)?; // 1
    if config.seccomp {
        // Device threads started for this VM confine themselves too.
        seccomp::enable();
    }
    let host = check_host(Path::new("/"), config.allow_pvm)?; // 2
    let kvm = open_kvm(config)?; // 3
    let vm = create_vm(&kvm)?; // 4
    timeline.vm_created = Some(Instant::now());
    let mem = setup_memory(&vm, validated.mem_bytes, config.huge_pages)?; // 5
    let guest_ranges = memory::host_ranges(&mem);
    // Opened now: a confined monitor cannot open files once the guest runs.
    let mut probe = MemoryProbe::open(Path::new("/proc"), guest_ranges.clone())
        .map_err(BuildError::MemoryStats)?;
    timeline.setup.memory = Some(Instant::now());
    let kernel = load_kernel(&mem, &config.kernel)?; // 6
    timeline.setup.kernel = Some(Instant::now());
    let initrd = load_initrd(&mem, config.initrd.as_deref(), validated.mem_bytes, &kernel)?; // 7
    timeline.setup.initrd = Some(Instant::now());
    let mut devices = attach_devices(
        &vm,
        &config.console,
        config.ready_on_output.as_deref(),
        &mut hooks,
    )?; // 8
    attach_mmio_devices(&vm, &mem, &mut devices, &mut hooks)?;
    let cmdline = build_cmdline(config, &devices.mmio_slots)?;
    let cmdline_len = write_cmdline(&mem, &cmdline)?; // 9
    write_boot_info(&mem, validated.mem_bytes, &kernel, initrd, cmdline_len)?; // 10
    write_mptable(&mem, config.vcpus)?; // 11
    timeline.setup.devices = Some(Instant::now());
    let vcpus = create_vcpus(&vm, &kvm, &mem, &kernel, config.vcpus)?; // 12
    timeline.setup.vcpus = Some(Instant::now());
    let outcome = run_vcpus(vcpus, &devices, &mut probe, config.seccomp)?; // 13
    timeline.first_run = outcome.first_run;
    timeline.stopped = Some(Instant::now());
    let facts = ReportFacts {
        host,
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        kernel_format: kernel.format,
        protocol: kernel.entry.protocol,
        cmdline: cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default(),
        guest_memory: GuestMemoryFacts {
            backing: config.huge_pages,
            host_alignment_kib: guest_ranges.first().map_or(0, |&(start, _)| {
                1u64 << start.trailing_zeros().min(30) >> 10
            }),
        },
    };
    let report = collect_report(&timeline, &devices, outcome, facts, &mut probe); // 14

    // Teardown order: vCPU fds are gone (threads joined); the VM goes
    // before the memory it maps.
    drop(vm);
    drop(mem);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cmdline_quiets_probes_and_passes_the_workload() {
        let mut c = VmConfig::new("/k", "api");
        c.workload_args = vec!["--port".into(), "8080".into()];
        c.cmdline_extra = Some("loglevel=8".into());
        let slots = [MmioSlot {
            addr: 0xc000_1000,
            len: 0x1000,
            irq: 5,
        }];
        let s = build_cmdline(&c, &slots)
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        for needle in [
            "reboot=k",
            "panic=1",
            "pci=off",
            "i8042.noaux",
            "i8042.nomux",
            "i8042.dumbkbd",
            "8250.nr_uarts=1 console=ttyS0 loglevel=0",
            "virtio_mmio.device=4K@0xc0001000:5",
            "isolab.workload=api isolab.arg=--port isolab.arg=8080",
        ] {
            assert!(s.contains(needle), "{needle} missing from {s}");
        }
        assert!(s.ends_with("loglevel=8"), "{s}");
        assert!(!s.contains("isolab.console=1"));
    }

    #[test]
    fn console_on_enables_ttys0_and_not_nr_uarts_0() {
        let mut c = VmConfig::new("/k", "noop");
        c.console = Console::Stdout;
        let s = build_cmdline(&c, &[])
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        assert!(s.contains("console=ttyS0"));
        assert!(s.contains("isolab.console=1"));
        assert!(!s.contains("loglevel=0"));
    }

    #[test]
    fn pvm_host_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/kvm"), b"").unwrap();
        std::fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).unwrap();
        let e = check_host(d.path(), false).unwrap_err();
        assert!(e.is_host());
        assert!(e.to_string().contains("PVM"), "{e}");
        assert_eq!(check_host(d.path(), true).unwrap(), HostKind::Pvm);
        let e = check_host(&d.path().join("nothing"), true).unwrap_err();
        assert!(e.to_string().contains("no /dev/kvm"), "{e}");
    }
}
