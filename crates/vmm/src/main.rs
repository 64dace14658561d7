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

// The monitor's own `main` (below) instead of std's runtime start-up:
// std would read /proc/self/maps for the main thread's stack guard and set
// up alternate signal stacks for stack-overflow messages, a few ms of every
// start in the emulated host; with `panic = "abort"` the monitor has no use
// for them (a stack overflow is then a plain SIGSEGV).
#![cfg_attr(not(test), no_main)]
// Under `cargo test` std's own `main` runs the tests instead.
#![cfg_attr(test, allow(dead_code))]

use std::fs::File;
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use isolab_microvm::builder::MmioDeviceFactory;
use isolab_microvm::devices::bus::SharedDevice;
use isolab_microvm::devices::virtio::{BlockDevice, MmioTransport, NetDevice};
use isolab_microvm::vstate::memory::HugePages;
use isolab_microvm::{BuildError, Console, RunHooks, StopReason, VmConfig};

/// Exit status for bad arguments.
const USAGE: u8 = 2;
/// Exit status when the host cannot run the VM.
const HOST: u8 = 3;

/// `--help`: what the flags mean (the harness builds the command line; a
/// person reads this).
const HELP: &str = "\
isolab-vmm: boot a guest kernel and run one workload in it; print the report as JSON

Usage: isolab-vmm [OPTIONS] --kernel <KERNEL> --workload <WORKLOAD> [-- <ARGS>...]

Options:
      --kernel <KERNEL>            Guest kernel: vmlinux (ELF) or bzImage
      --initrd <INITRD>            Initramfs with /init and /workload
      --memory-mib <MEMORY_MIB>    Guest RAM in MiB [default: 128]
      --vcpus <VCPUS>              vCPUs [default: 1]
      --workload <WORKLOAD>        Workload name (isolab.workload=)
      --console <off|stdout|PATH>  The guest's serial console [default: off]
      --cmdline-extra <S>          Appended to the kernel command line
      --allow-pvm                  Boot even on PVM KVM (needs a PVM-capable kernel)
      --ready-fd <N>               Write `R` to this inherited fd when the workload is
                                   ready, then close it
      --tap-fd <N>                 An inherited TAP fd (opened without IFF_VNET_HDR) for a
                                   virtio-net device (with --mac)
      --mac <MAC>                  The virtio-net device's MAC address, e.g. 02:49:0a:cb:00:02
      --disk <PATH>                A read-only root disk (an image's erofs) for a virtio-blk
                                   device, the guest's /dev/vda (its init mounts it with
                                   `isolab.root=`)
      --ready-on-output <TEXT>     Count the workload ready when this text appears in its
                                   output (a program that knows nothing of the ready marker)
      --huge-pages <KIND>          What backs guest RAM: `host` (2 MiB-aligned anonymous
                                   memory, THP as the host's setting decides), `thp` (plus
                                   MADV_HUGEPAGE), `hugetlb_2m` or `hugetlb_1g` (explicit
                                   pages from the host's pool); the report says which page
                                   sizes actually backed it [default: host]
      --no-seccomp                 Run the monitor unconfined. By default, as Firecracker
                                   does, every monitor thread gets its own seccomp filter and
                                   the process drops its capabilities just before the guest
                                   runs; a forbidden syscall ends the monitor with status 159
                                   and names the thread and the syscall
  -h, --help                       Print help
  -V, --version                    Print version
  -- <ARGS>...                     Further workload arguments
";

/// The command line. Parsed with `lexopt` rather than clap: the monitor is
/// measured for its start-up and resident size, and a derive parser's
/// command tree (built on every start, help text included) cost it about
/// 19 ms and 280 KiB of text in the emulated host.
#[derive(Debug)]
struct Args {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    memory_mib: u64,
    vcpus: u8,
    workload: String,
    console: String,
    cmdline_extra: Option<String>,
    allow_pvm: bool,
    ready_fd: Option<RawFd>,
    tap_fd: Option<RawFd>,
    disk: Option<PathBuf>,
    ready_on_output: Option<String>,
    mac: Option<String>,
    huge_pages: HugePages,
    no_seccomp: bool,
    /// Further workload arguments (after `--`).
    args: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run(Box<Args>),
    Help,
    Version,
}

/// Parses `argv` (without the program name).
fn parse_args(argv: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(argv);
    let (mut kernel, mut workload) = (None, None);
    let mut a = Args {
        kernel: PathBuf::new(),
        initrd: None,
        memory_mib: isolab_microvm::config::DEFAULT_MEMORY_MIB,
        vcpus: isolab_microvm::config::DEFAULT_VCPUS,
        workload: String::new(),
        console: "off".into(),
        cmdline_extra: None,
        allow_pvm: false,
        ready_fd: None,
        tap_fd: None,
        disk: None,
        ready_on_output: None,
        mac: None,
        huge_pages: HugePages::Host,
        no_seccomp: false,
        args: Vec::new(),
    };
    let e = |e: lexopt::Error| e.to_string();
    let text = |p: &mut lexopt::Parser| -> Result<String, String> {
        p.value().map_err(e)?.string().map_err(e)
    };
    while let Some(arg) = p.next().map_err(e)? {
        match arg {
            Long("kernel") => kernel = Some(PathBuf::from(p.value().map_err(e)?)),
            Long("initrd") => a.initrd = Some(PathBuf::from(p.value().map_err(e)?)),
            Long("memory-mib") => a.memory_mib = p.value().map_err(e)?.parse().map_err(e)?,
            Long("vcpus") => a.vcpus = p.value().map_err(e)?.parse().map_err(e)?,
            Long("workload") => workload = Some(text(&mut p)?),
            Long("console") => a.console = text(&mut p)?,
            Long("cmdline-extra") => a.cmdline_extra = Some(text(&mut p)?),
            Long("allow-pvm") => a.allow_pvm = true,
            Long("ready-fd") => a.ready_fd = Some(p.value().map_err(e)?.parse().map_err(e)?),
            Long("tap-fd") => a.tap_fd = Some(p.value().map_err(e)?.parse().map_err(e)?),
            Long("disk") => a.disk = Some(PathBuf::from(p.value().map_err(e)?)),
            Long("ready-on-output") => a.ready_on_output = Some(text(&mut p)?),
            Long("mac") => a.mac = Some(text(&mut p)?),
            Long("huge-pages") => a.huge_pages = huge_pages(&text(&mut p)?)?,
            Long("no-seccomp") => a.no_seccomp = true,
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(v) => a.args.push(v.string().map_err(e)?),
            _ => return Err(e(arg.unexpected())),
        }
    }
    a.kernel = kernel.ok_or("the argument --kernel <KERNEL> is required")?;
    a.workload = workload.ok_or("the argument --workload <WORKLOAD> is required")?;
    if a.tap_fd.is_some() != a.mac.is_some() {
        return Err("--tap-fd and --mac come together: pass both or neither".into());
    }
    Ok(Command::Run(Box::new(a)))
}

/// A failure with the exit status it maps to.
struct Failure(u8, anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(USAGE, e.into())
}

/// The process entry (`#![no_main]`): what std's start-up would do that
/// the monitor needs (SIGPIPE ignored, so a closed stdout is an error, not
/// a death), then [`monitor_main`], then stdout flushed.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a signal's disposition to SIG_IGN before any other
    // thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = monitor_main();
    let _ = std::io::stdout().flush();
    libc::c_int::from(code)
}

/// Parses the arguments (glibc hands them to std before `main`) and runs
/// the VM; the exit status.
fn monitor_main() -> u8 {
    let started = Instant::now();
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(a)) => *a,
        // A reader that stopped early (`| head`) is not an error.
        Ok(Command::Help) => {
            let _ = write!(std::io::stdout(), "{HELP}");
            return 0;
        }
        Ok(Command::Version) => {
            let _ = writeln!(
                std::io::stdout(),
                "isolab-vmm {}",
                env!("CARGO_PKG_VERSION")
            );
            return 0;
        }
        Err(e) => {
            eprintln!("error: {e}\n\nFor more information, try '--help'.");
            return USAGE;
        }
    };
    match run(args, started) {
        Ok(code) => code,
        Err(Failure(code, err)) => {
            eprintln!("error: {err:#}");
            code
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

fn run(args: Args, started: Instant) -> Result<u8, Failure> {
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
        (Some(status), _) => status,
        // Stopped by SIGTERM/SIGINT before the workload reported: as a
        // shell reports a SIGTERM'd child.
        (None, StopReason::HostRequest) => 128 + libc::SIGTERM as u8,
        (None, _) => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `isolab-vmm --kernel k --workload <workload> <rest>`.
    fn parse(workload: &str, rest: &[&str]) -> Result<Args, String> {
        let head = ["--kernel", "k", "--workload", workload];
        match parse_args(head.iter().chain(rest).map(|s| s.into()))? {
            Command::Run(a) => Ok(*a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn required_flags_and_bad_values_are_named() {
        let e = parse_args(["--workload".into(), "noop".into()]).unwrap_err();
        assert!(e.contains("--kernel"), "{e}");
        let e = parse("noop", &["--vcpus", "many"]).unwrap_err();
        assert!(e.contains("many"), "{e}");
        let e = parse("noop", &["--frobnicate"]).unwrap_err();
        assert!(e.contains("--frobnicate"), "{e}");
        let a = parse(
            "noop",
            &["--cmdline-extra", "-x isolab.ip=1", "--no-seccomp"],
        )
        .unwrap();
        assert_eq!(a.cmdline_extra.as_deref(), Some("-x isolab.ip=1"));
        assert!(a.no_seccomp);
        assert!(matches!(parse_args(["--help".into()]), Ok(Command::Help)));
        assert!(matches!(parse_args(["-V".into()]), Ok(Command::Version)));
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
        assert!(parse("noop", &["--mac", "02:49:0a:cb:00:02"]).is_err());
        let a = parse("api", &["--tap-fd", "4", "--mac", "02:49:0a:cb:00:02"]).unwrap();
        assert_eq!(
            (a.tap_fd, a.mac.as_deref()),
            (Some(4), Some("02:49:0a:cb:00:02"))
        );
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
