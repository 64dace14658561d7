//! `isolab-vmm`: one microVM per process, as Firecracker runs them. It
//! turns its arguments into an [`isolab_microvm::VmConfig`], boots it with
//! [`isolab_microvm::run`] and prints the [`isolab_microvm::VmReport`] as one
//! JSON line on stdout when the VM has stopped (after the guest console,
//! when that goes to stdout too).
//!
//! It needs `/dev/kvm` and nothing else: the network device is an inherited
//! TAP fd (`--tap-fd N --mac M`), created on the workbench bridge by whoever
//! launches it (the harness, `bench vm run --net`), and the guest's address
//! comes on the kernel command line (`--cmdline-extra "isolab.ip=...
//! isolab.gw=..."`), so the monitor itself holds no network privilege.
//! SIGTERM or SIGINT stop the VM cleanly (`stop_reason: host_request`).
//!
//! Exit status: the workload's (shell convention), 128+15 when stopped by
//! a signal before the workload reported, 2 for bad arguments, 3 when the
//! host cannot run the VM (no KVM, PVM), 1 for any other failure (`error:`
//! line on stderr, no report).
//!
//! It is measured for memory (VMM overhead), so it stays lean: the monitor
//! library, argument parsing and JSON, nothing of the harness.

use std::fs::File;
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use isolab_microvm::builder::MmioDeviceFactory;
use isolab_microvm::devices::bus::SharedDevice;
use isolab_microvm::devices::virtio::{BlockDevice, MmioTransport, NetDevice};
use isolab_microvm::vstate::memory::HugePages;
use isolab_microvm::{BuildError, Console, RunHooks, StopReason, VmConfig};

/// Exit status for bad arguments.
const USAGE: u8 = 2;
/// Exit status when the host cannot run the VM.
const HOST: u8 = 3;

/// Boot a guest kernel and run one workload in it; print the report as JSON.
#[derive(Debug, Parser)]
#[command(name = "isolab-vmm", version, about)]
struct Args {
    /// Guest kernel: vmlinux (ELF) or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs with /init and /workload.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = isolab_microvm::config::DEFAULT_MEMORY_MIB)]
    memory_mib: u64,
    /// vCPUs.
    #[arg(long, default_value_t = isolab_microvm::config::DEFAULT_VCPUS)]
    vcpus: u8,
    /// Workload name (isolab.workload=).
    #[arg(long)]
    workload: String,
    /// The guest's serial console: off, stdout, or a file path.
    #[arg(long, default_value = "off", value_name = "off|stdout|PATH")]
    console: String,
    /// Appended to the kernel command line.
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    cmdline_extra: Option<String>,
    /// Boot even on PVM KVM (needs a PVM-capable kernel).
    #[arg(long)]
    allow_pvm: bool,
    /// Write `R` to this inherited fd when the workload is ready, then close it.
    #[arg(long, value_name = "N")]
    ready_fd: Option<RawFd>,
    /// An inherited TAP fd (opened without IFF_VNET_HDR) for a virtio-net device.
    #[arg(long, value_name = "N", requires = "mac")]
    tap_fd: Option<RawFd>,
    /// A read-only root disk (an image's erofs) for a virtio-blk device,
    /// the guest's /dev/vda (its init mounts it with `isolab.root=`).
    #[arg(long, value_name = "PATH")]
    disk: Option<PathBuf>,
    /// Count the workload ready when this text appears in its output (a
    /// program that knows nothing of the ready marker: `--ready log:TEXT`).
    #[arg(long, value_name = "TEXT")]
    ready_on_output: Option<String>,
    /// The virtio-net device's MAC address, e.g. 02:49:0a:cb:00:02.
    #[arg(long, value_name = "MAC", requires = "tap_fd")]
    mac: Option<String>,
    /// What backs guest RAM: `host` (2 MiB-aligned anonymous memory, THP as
    /// the host's setting decides), `thp` (plus MADV_HUGEPAGE), `hugetlb_2m`
    /// or `hugetlb_1g` (explicit pages from the host's pool). The report's
    /// memory samples say which page sizes actually backed it.
    #[arg(long, value_name = "KIND", default_value = "host", value_parser = huge_pages)]
    huge_pages: HugePages,
    /// Run the monitor unconfined. By default, as Firecracker does, every
    /// monitor thread gets its own seccomp filter and the process drops its
    /// capabilities just before the guest runs; a forbidden syscall ends the
    /// monitor with status 159 and names the thread and the syscall.
    #[arg(long)]
    no_seccomp: bool,
    /// Further workload arguments (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// A failure with the exit status it maps to.
struct Failure(u8, anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(USAGE, e.into())
}

fn main() -> ExitCode {
    let started = Instant::now();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args, started) {
        Ok(code) => code,
        Err(Failure(code, err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(code)
        }
    }
}

/// Takes ownership of an inherited fd after checking that it is open.
fn inherited(fd: RawFd, flag: &str) -> Result<OwnedFd, Failure> {
    // SAFETY: only used for this F_GETFD probe, while `fd` is not closed.
    let probe = (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) });
    if probe.is_none_or(|b| nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD).is_err()) {
        return Err(usage(anyhow::anyhow!(
            "{flag} {fd} is not an open file descriptor: pass an fd this process inherits"
        )));
    }
    // SAFETY: the fd is open (checked above) and, by the flag's contract,
    // handed to this process to own and close.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `02:49:0a:cb:00:02` as six bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `--huge-pages` values, by the names the report uses.
fn huge_pages(s: &str) -> Result<HugePages, String> {
    [
        HugePages::Host,
        HugePages::Thp,
        HugePages::Hugetlb2m,
        HugePages::Hugetlb1g,
    ]
    .into_iter()
    .find(|h| h.name() == s)
    .ok_or_else(|| format!("{s:?} is not a page backing: use host, thp, hugetlb_2m or hugetlb_1g"))
}

fn console(s: &str) -> Console {
    match s {
        "off" => Console::Off,
        "stdout" => Console::Stdout,
        path => Console::File(PathBuf::from(path)),
    }
}

/// The virtio-net device on the inherited TAP, for the monitor to place.
fn net_device(tap: OwnedFd, mac: [u8; 6]) -> Result<MmioDeviceFactory, Failure> {
    let dev = NetDevice::new(tap, mac)
        .context("Cannot set up the virtio-net device on the TAP")
        .map_err(|e| Failure(1, e))?;
    Ok(Box::new(move |_slot, irq, mem| {
        let shared: SharedDevice = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), irq)));
        shared
    }))
}

/// The read-only virtio-blk device on `path`, for the monitor to place.
fn disk_device(path: &std::path::Path) -> Result<MmioDeviceFactory, Failure> {
    let dev = BlockDevice::open(path, true, "isolab-root")
        .with_context(|| format!("Cannot open the root disk {path:?}"))
        .map_err(usage)?;
    Ok(Box::new(move |_slot, irq, mem| {
        let shared: SharedDevice = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), irq)));
        shared
    }))
}

fn classify(err: BuildError) -> Failure {
    let code = if err.is_usage() {
        USAGE
    } else if err.is_host() {
        HOST
    } else {
        1
    };
    Failure(code, err.into())
}

fn run(args: Args, started: Instant) -> Result<ExitCode, Failure> {
    // Before any thread exists: every thread the monitor starts (the
    // virtio-net worker starts with its device, before the run) inherits
    // this mask, so SIGTERM/SIGINT reach the run's signalfd and stop the VM
    // cleanly instead of killing the process through an unblocked thread.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGTERM);
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.thread_block()
        .context("Cannot block SIGTERM/SIGINT")
        .map_err(|e| Failure(1, e))?;
    let mut ready = args
        .ready_fd
        .map(|fd| inherited(fd, "--ready-fd").map(File::from))
        .transpose()?;
    let mut mmio_devices = Vec::new();
    // The disk first: the guest's first virtio-blk device is /dev/vda.
    if let Some(d) = &args.disk {
        mmio_devices.push(disk_device(d)?);
    }
    if let (Some(fd), Some(mac)) = (args.tap_fd, args.mac.as_deref()) {
        let mac = parse_mac(mac).ok_or_else(|| {
            usage(anyhow::anyhow!(
                "--mac {mac:?} is not a MAC address: six hex bytes, e.g. 02:49:0a:cb:00:02"
            ))
        })?;
        mmio_devices.push(net_device(inherited(fd, "--tap-fd")?, mac)?);
    }
    // Fields this binary has no flag for keep VmConfig's defaults.
    let mut config = VmConfig::new(args.kernel, args.workload);
    config.initrd = args.initrd;
    config.memory_mib = args.memory_mib;
    config.vcpus = args.vcpus;
    config.workload_args = args.args;
    config.console = console(&args.console);
    config.cmdline_extra = args.cmdline_extra;
    config.allow_pvm = args.allow_pvm;
    config.huge_pages = args.huge_pages;
    config.seccomp = !args.no_seccomp;
    config.ready_on_output = args.ready_on_output;
    let hooks = RunHooks {
        on_ready: Some(Box::new(move || {
            if let Some(mut f) = ready.take() {
                // The launcher may have gone; a failed signal must not stop the VM.
                let _ = f.write_all(b"R");
            }
        })),
        mmio_devices,
    };
    let report = isolab_microvm::run(&config, started, hooks).map_err(classify)?;
    let line = serde_json::to_string(&report)
        .context("Cannot serialise the report")
        .map_err(|e| Failure(1, e))?;
    let mut out = std::io::stdout().lock();
    // A vanished reader must not turn a finished run into a failure.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    Ok(match (report.exit_status, report.stop_reason) {
        (Some(status), _) => ExitCode::from(status),
        // Stopped by SIGTERM/SIGINT before the workload reported: as a
        // shell reports a SIGTERM'd child.
        (None, StopReason::HostRequest) => ExitCode::from(128 + libc::SIGTERM as u8),
        (None, _) => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `isolab-vmm --kernel k --workload <workload> <rest>`.
    fn parse(workload: &str, rest: &[&str]) -> Result<Args, clap::Error> {
        let head = ["vmm", "--kernel", "k", "--workload", workload];
        Args::try_parse_from(head.iter().chain(rest))
    }

    #[test]
    fn macs_and_consoles_parse() {
        assert_eq!(
            parse_mac("02:49:0a:cb:00:02"),
            Some([2, 0x49, 10, 0xcb, 0, 2])
        );
        assert_eq!(parse_mac("02:49:0a:cb:00"), None);
        assert_eq!(parse_mac("02:49:0a:cb:00:02:03"), None);
        assert_eq!(parse_mac("zz:49:0a:cb:00:02"), None);
        assert_eq!(console("off"), Console::Off);
        assert_eq!(console("/tmp/c"), Console::File("/tmp/c".into()));
    }

    #[test]
    fn a_closed_fd_is_a_usage_error() {
        let Err(Failure(code, e)) = inherited(987_654, "--ready-fd") else {
            panic!("fd 987654 is not open");
        };
        assert_eq!(code, USAGE);
        assert!(e.to_string().contains("--ready-fd 987654"), "{e}");
    }

    #[test]
    fn tap_and_mac_come_together() {
        assert!(parse("noop", &["--tap-fd", "4"]).is_err());
        let a = parse("api", &["--", "--port", "1"]).unwrap();
        assert_eq!(a.args, ["--port", "1"]);
        assert_eq!(a.memory_mib, 128);
        assert_eq!(a.huge_pages, HugePages::Host);
        assert!(!a.no_seccomp, "confined by default");
    }

    #[test]
    fn page_backings_parse_by_their_report_names() {
        assert_eq!(huge_pages("hugetlb_2m"), Ok(HugePages::Hugetlb2m));
        assert_eq!(huge_pages("thp"), Ok(HugePages::Thp));
        let e = huge_pages("2M").unwrap_err();
        assert!(e.contains("hugetlb_2m"), "{e}");
        assert!(parse("noop", &["--huge-pages", "huge"]).is_err());
    }
}
