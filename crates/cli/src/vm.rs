//! `bench vm`: argument parsing and presentation only; the monitor is
//! `isolab-microvm`, the guest artifacts come from `isolab-guest-kernel`.
//!
//! With `--net` (api or cache) this invocation creates the workbench
//! network for its own lifetime, gives the VM a virtio-net device on a TAP
//! on the workbench bridge (`isolab.ip=`/`isolab.gw=` from the TAP's lease
//! on the command line, the lease's MAC in the device), waits for the
//! ready marker, probes `GET /health` from inside the workbench namespace
//! (launch -> first response, then a request run), stops the VM with
//! SIGTERM to its thread and removes the TAP and the namespace.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use isolab_microvm::builder::{BuildError, MmioDeviceFactory, RunHooks, VmReport};
use isolab_microvm::config::{parse_memory_mib, Console, VmConfig};
use isolab_microvm::devices::bus::SharedDevice;
use isolab_microvm::devices::virtio::{MmioTransport, NetDevice};
use isolab_microvm::host::{self, HostKind};
use isolab_microvm::memory_stats::MemorySample;
use isolab_microvm::smoke;
use isolab_microvm::StopReason;
use isolab_net::{ProbeConfig, Tap, Workbench, WorkbenchConfig, WorkbenchError};

use crate::exit;

/// Run a workload in a KVM microVM with its own guest kernel.
#[derive(Debug, clap::Args)]
pub struct VmCmd {
    #[command(subcommand)]
    command: VmSub,
}

#[derive(Debug, clap::Subcommand)]
enum VmSub {
    /// Boot the guest kernel and run one workload; exits with its status.
    Run(RunArgs),
    /// Run a few bytes of real-mode code in a VM (works even on PVM KVM).
    #[command(hide = true)]
    Smoke(SmokeArgs),
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HostChoice {
    /// On this host's /dev/kvm.
    Native,
    /// Inside the emulated hardware-virtualisation host (QEMU TCG + nested KVM).
    Emulated,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Workload to run (noop, api, worker, cache, hog, forkloop).
    #[arg(long)]
    workload: String,
    /// Guest RAM, e.g. 64M, 256M, 1G (at least 32M).
    #[arg(long, default_value = "128M")]
    memory: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest kernel (vmlinux or bzImage); default: the provisioned guest kernel.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs with /init and /workload; default: the provisioned one.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Show the guest's serial console on stdout (slows the boot).
    #[arg(long, conflicts_with = "console_file")]
    console: bool,
    /// Write the guest's serial console to this file.
    #[arg(long, value_name = "PATH")]
    console_file: Option<PathBuf>,
    /// Appended to the kernel command line.
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    cmdline_extra: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Boot even on PVM KVM (needs a PVM-capable --kernel).
    #[arg(long)]
    allow_pvm: bool,
    /// Write `R` to this inherited fd when the workload is ready, then close it.
    #[arg(long, value_name = "N")]
    ready_fd: Option<RawFd>,
    /// Where to run the VM.
    #[arg(long, value_enum, default_value = "native")]
    host: HostChoice,
    /// Give the guest a virtio-net device on the workbench bridge and probe
    /// the workload over HTTP (api or cache): time to first response and a
    /// short request run.
    #[arg(long)]
    net: bool,
    /// With --net: requests in the request/response run after the first.
    #[arg(long, default_value_t = 200, requires = "net")]
    requests: u32,
    /// Further workload arguments (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SmokeArgs {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: VmCmd) -> anyhow::Result<ExitCode> {
    match cmd.command {
        VmSub::Run(args) => run_vm(args),
        VmSub::Smoke(args) => run_smoke(args),
    }
}

/// Takes ownership of the inherited ready fd after checking it is open.
fn ready_file(fd: RawFd) -> anyhow::Result<File> {
    if fd < 0
        || nix::fcntl::fcntl(
            // SAFETY: only used for this F_GETFD probe, while `fd` is not closed.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_err()
    {
        return Err(exit::usage(format!(
            "--ready-fd {fd} is not an open file descriptor: pass an fd the monitor inherits"
        )));
    }
    // SAFETY: the fd is open (checked above) and, by the --ready-fd
    // contract, handed to this process to own and close.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Maps a library error to the CLI's exit classes.
fn classify(err: BuildError) -> anyhow::Error {
    if err.is_usage() {
        exit::usage(format!("{:#}", anyhow::Error::new(err)))
    } else if err.is_host() {
        exit::host(format!("{:#}", anyhow::Error::new(err)))
    } else {
        anyhow::Error::new(err)
    }
}

fn default_artifacts(workload: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cache = isolab_guest_kernel::cache_root().map_err(|e| exit::host(e.to_string()))?;
    let bin_dir = isolab_guest_kernel::binary_dir()
        .ok_or_else(|| exit::host("cannot locate the bench executable's directory"))?;
    let opts = isolab_guest_kernel::ProvisionOptions::new(cache, &bin_dir, workload);
    let p = isolab_guest_kernel::provision(&opts).map_err(|e| {
        let msg = format!("{:#}", anyhow::Error::new(e));
        if msg.contains("Unknown workload") {
            exit::usage(msg)
        } else {
            exit::host(format!("{msg} (or pass --kernel and --initrd explicitly)"))
        }
    })?;
    Ok((p.kernel.vmlinux, p.initramfs))
}

fn run_vm(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Usage errors first: nothing below has touched the host yet.
    let memory_mib = parse_memory_mib(&args.memory).map_err(|e| exit::usage(e.to_string()))?;
    if args.host == HostChoice::Emulated && args.ready_fd.is_some() {
        return Err(exit::usage(
            "--ready-fd cannot cross into the emulated host: drop it with --host emulated",
        ));
    }
    if args.net && !NET_WORKLOADS.contains(&args.workload.as_str()) {
        return Err(exit::usage(format!(
            "--net probes HTTP on port {NET_PORT}: use --workload {}, not '{}'",
            NET_WORKLOADS.join(" or "),
            args.workload
        )));
    }
    if args.net && args.args.iter().any(|a| a == "--port" || a == "--bind") {
        return Err(exit::usage(format!(
            "--net needs the workload on 0.0.0.0:{NET_PORT}: drop --port/--bind from its arguments"
        )));
    }
    let ready = args.ready_fd.map(ready_file).transpose()?;
    let console = match (args.console, args.console_file) {
        (true, _) => Console::Stdout,
        (false, Some(p)) => Console::File(p),
        (false, None) => Console::Off,
    };
    let explicit_kernel = args.kernel.is_some();
    let mut config = VmConfig {
        kernel: args.kernel.unwrap_or_default(),
        initrd: args.initrd,
        memory_mib,
        vcpus: args.vcpus,
        workload: args.workload,
        workload_args: args.args,
        console,
        cmdline_extra: args.cmdline_extra,
        allow_pvm: args.allow_pvm,
        // Options `bench vm run` does not expose keep the library's defaults.
        ..VmConfig::new("", "")
    };
    // With an explicit kernel, check the files too; the provisioned ones
    // are checked again by the library before the boot.
    let checked = if explicit_kernel {
        config.validate().map(|_| ())
    } else {
        config.validate_shape().map(|_| ())
    };
    checked.map_err(|e| exit::usage(format!("{:#}", anyhow::Error::new(e))))?;

    if args.host == HostChoice::Emulated {
        let net = args.net.then_some(args.requests);
        return run_emulated(&config, &args.memory, args.json, net);
    }
    // Refuse hosts that cannot boot before provisioning (which may build a kernel).
    let kind = host::detect(Path::new("/"));
    if let Some(why) = kind.refusal() {
        if !(kind == HostKind::Pvm && args.allow_pvm) {
            return Err(exit::host(why));
        }
    }
    if !explicit_kernel {
        let (kernel, initrd) = default_artifacts(&config.workload)?;
        config.kernel = kernel;
        config.initrd.get_or_insert(initrd);
    }
    if args.net {
        return run_with_net(config, started, args.requests, args.json, ready);
    }
    let mut ready = ready;
    let hooks = RunHooks {
        on_ready: Some(Box::new(move || {
            if let Some(mut f) = ready.take() {
                // The harness may have gone; a failed signal must not stop the VM.
                let _ = f.write_all(b"R");
            }
        })),
        mmio_devices: Vec::new(),
    };
    let report = isolab_microvm::run(&config, started, hooks).map_err(classify)?;

    if args.json {
        let s = serde_json::to_string(&report).context("serialise the report")?;
        println!("{s}");
    } else {
        print_report(&report);
    }
    match (report.exit_status, report.stop_reason) {
        (Some(status), _) => Ok(ExitCode::from(status)),
        (None, StopReason::HostRequest) => {
            // Ended by SIGTERM/SIGINT before the workload reported: exit as
            // a shell would for a SIGTERM'd child.
            Ok(ExitCode::from(128 + libc::SIGTERM as u8))
        }
        (None, reason) => Err(anyhow::anyhow!(
            "the guest stopped ({}) before the workload reported its exit status; rerun with --console to see the guest kernel",
            stop_name(reason)
        )),
    }
}

/// `bench vm run` again, inside the emulated hardware-virtualisation host
/// (QEMU TCG with nested KVM), with the provisioned guest artifacts.
fn run_emulated(
    config: &VmConfig,
    memory: &str,
    json: bool,
    net: Option<u32>,
) -> anyhow::Result<ExitCode> {
    if !config.kernel.as_os_str().is_empty() || config.initrd.is_some() {
        return Err(exit::usage(
            "--host emulated boots the provisioned guest kernel and initramfs: drop --kernel and --initrd",
        ));
    }
    if config.console != Console::Off && config.console != Console::Stdout {
        return Err(exit::usage(
            "--host emulated cannot write a console file: use --console",
        ));
    }
    // Provision on this host first: the emulated host gets the cached kernel.
    default_artifacts(&config.workload)?;
    let mut argv: Vec<String> = vec![
        "vm".into(),
        "run".into(),
        "--workload".into(),
        config.workload.clone(),
        "--memory".into(),
        memory.to_string(),
        "--vcpus".into(),
        config.vcpus.to_string(),
    ];
    if config.console == Console::Stdout {
        argv.push("--console".into());
    }
    if json {
        argv.push("--json".into());
    }
    if let Some(requests) = net {
        argv.push("--net".into());
        argv.push(format!("--requests={requests}"));
    }
    if let Some(extra) = &config.cmdline_extra {
        argv.push(format!("--cmdline-extra={extra}"));
    }
    if !config.workload_args.is_empty() {
        argv.push("--".into());
        argv.extend(config.workload_args.iter().cloned());
    }
    // SIGINT/SIGTERM stop QEMU through the runner instead of killing us.
    isolab_emuhost::interrupt::install_handlers()
        .context("install the signal handlers for the emulated host")?;
    let host = isolab_emuhost::EmulatedHost::prepare(isolab_emuhost::HostConfig::default())
        .map_err(|e| {
            let msg = format!(
                "the emulated host cannot start: {:#}",
                anyhow::Error::new(e)
            );
            exit::host(msg)
        })?;
    let outcome = isolab_emuhost::run_bench_inside(&host, &argv, &mut |line| {
        println!("{}", line.rsplit('\r').next().unwrap_or(line));
    })
    .map_err(|e| anyhow::anyhow!("the emulated host failed: {:#}", anyhow::Error::new(e)))?;
    if !json {
        println!("({})", isolab_emuhost::EMULATED_HOST_LABEL);
    }
    Ok(ExitCode::from(u8::try_from(outcome.status).unwrap_or(1)))
}

/// Workloads that answer HTTP, the only ones `--net` can probe.
const NET_WORKLOADS: &[&str] = &["api", "cache"];
/// The port api and cache listen on by default (on 0.0.0.0).
const NET_PORT: u16 = 8080;
/// How long the guest may take from launch to the ready marker (the
/// emulated host boots slowly).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What the probe saw (`"net"` in `--json`).
#[derive(Debug, Clone, serde::Serialize)]
struct NetReport {
    /// The guest's address on the bridge, with the port.
    addr: String,
    /// The TAP on the bridge.
    tap: String,
    /// Monitor start -> first successful HTTP response.
    launch_to_first_response_ms: f64,
    /// Connection attempts until the first response (after the ready
    /// marker; 1 ms apart).
    attempts: u32,
    /// HTTP status of the first response.
    status: u16,
    /// The request/response run after the first response.
    requests: u32,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    throughput_rps: f64,
}

fn dur_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Maps a workbench failure to an exit code: host capability (3) or a
/// failed run (1).
fn net_error(err: WorkbenchError) -> anyhow::Error {
    let msg = format!(
        "workbench network: {:#}",
        anyhow::Error::new(err_chain(&err))
    );
    if err.is_host_problem() {
        exit::host(msg)
    } else {
        anyhow::anyhow!(msg)
    }
}

/// The error and its sources as one message (anyhow needs 'static errors).
fn err_chain(err: &dyn std::error::Error) -> ChainMsg {
    let mut parts = vec![err.to_string()];
    let mut src = err.source();
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    ChainMsg(parts.join(": "))
}

#[derive(Debug)]
struct ChainMsg(String);
impl std::fmt::Display for ChainMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ChainMsg {}

/// The virtio-net device for `tap`, ready for the monitor to place.
fn net_device(tap: &Tap) -> anyhow::Result<MmioDeviceFactory> {
    let fd = tap
        .try_clone_fd()
        .with_context(|| format!("cannot duplicate the fd of TAP {}", tap.name()))?;
    let dev = NetDevice::new(fd, tap.lease().mac())
        .map_err(|e| anyhow::anyhow!("{}", err_chain(&e)))
        .context("cannot set up the virtio-net device")?;
    Ok(Box::new(move |_slot, irq, mem| {
        let shared: SharedDevice = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), irq)));
        shared
    }))
}

/// Boots the VM on a thread with a virtio-net device on the workbench
/// bridge, probes it once ready, then stops it.
fn run_with_net(
    mut config: VmConfig,
    started: Instant,
    requests: u32,
    json: bool,
    mut ready: Option<File>,
) -> anyhow::Result<ExitCode> {
    let workbench = Workbench::create(WorkbenchConfig::default()).map_err(net_error)?;
    let tap = workbench.create_tap(None, false).map_err(net_error)?;
    let lease = tap.lease();
    let extra = format!("isolab.ip={} isolab.gw={}", lease.cidr(), lease.gateway());
    config.cmdline_extra = Some(match config.cmdline_extra.take() {
        Some(user) => format!("{user} {extra}"),
        None => extra,
    });
    let addr = std::net::SocketAddr::from((lease.addr(), NET_PORT));
    let device = net_device(&tap)?;

    // SIGINT/SIGTERM stay blocked here so they reach the monitor's signalfd
    // (the VM thread inherits the mask); the VM is stopped by a SIGTERM
    // directed at its thread.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGINT);
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.thread_block().context("cannot block SIGINT/SIGTERM")?;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let hooks = RunHooks {
        on_ready: Some(Box::new(move || {
            // The harness's ready byte first, as without --net.
            if let Some(mut f) = ready.take() {
                let _ = f.write_all(b"R");
            }
            let _ = ready_tx.send(());
        })),
        mmio_devices: vec![device],
    };
    let vm = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || isolab_microvm::run(&config, started, hooks))
        .context("cannot start the VM thread")?;
    let probed = match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(()) => probe(&workbench, addr, started, requests, tap.name()),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow::anyhow!(
            "the guest did not report ready within {} s; rerun with --console to see its boot",
            READY_TIMEOUT.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(anyhow::anyhow!(
            "the VM ended before its workload was ready"
        )),
    };
    if !vm.is_finished() {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the thread has not been joined, so its pthread_t is
        // valid; SIGTERM is blocked there and read by the monitor's signalfd.
        unsafe { libc::pthread_kill(vm.as_pthread_t(), libc::SIGTERM) };
    }
    let report = vm
        .join()
        .map_err(|_| anyhow::anyhow!("the VM thread panicked"))?
        .map_err(classify);
    drop(tap);
    workbench.destroy().map_err(net_error)?;
    let report = report?;
    let net = match probed {
        Ok(n) => n,
        Err(e) => {
            let out = report.workload_output.trim_end();
            let last = out.lines().last().unwrap_or("(no output)");
            return Err(e.context(format!(
                "VM stopped ({}); the workload's last output: {last}",
                stop_name(report.stop_reason)
            )));
        }
    };
    if json {
        let mut v = serde_json::to_value(&report).context("serialise the report")?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("net".into(), serde_json::to_value(&net)?);
        }
        println!("{v}");
    } else {
        print_report(&report);
        println!(
            "launch -> first HTTP response {:.2} ms ({} attempts after ready, status {}, {} via {})",
            net.launch_to_first_response_ms, net.attempts, net.status, net.addr, net.tap
        );
        println!(
            "{} requests: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {:.0} req/s",
            net.requests, net.p50_ms, net.p99_ms, net.max_ms, net.throughput_rps
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Probes the guest from inside the workbench namespace.
fn probe(
    workbench: &Workbench,
    addr: std::net::SocketAddr,
    launched: Instant,
    requests: u32,
    tap: &str,
) -> anyhow::Result<NetReport> {
    let cfg = ProbeConfig::default();
    let first = workbench
        .probe_first_response(addr, launched, &cfg)
        .map_err(net_error)?
        .map_err(|e| anyhow::anyhow!("{}", err_chain(&e)))
        .with_context(|| format!("the guest at {addr} never answered GET {}", cfg.path))?;
    let run = workbench
        .probe_run(addr, requests, &cfg)
        .map_err(net_error)?
        .map_err(|e| anyhow::anyhow!("{}", err_chain(&e)))
        .with_context(|| format!("the request run against {addr} failed"))?;
    Ok(NetReport {
        addr: addr.to_string(),
        tap: tap.to_owned(),
        launch_to_first_response_ms: dur_ms(first.elapsed),
        attempts: first.attempts,
        status: first.status,
        requests: run.requests,
        p50_ms: dur_ms(run.p50),
        p99_ms: dur_ms(run.p99),
        max_ms: dur_ms(run.max),
        throughput_rps: run.throughput_rps,
    })
}

fn stop_name(r: StopReason) -> &'static str {
    match r {
        StopReason::GuestReset => "guest reset",
        StopReason::GuestPowerOff => "guest power-off",
        StopReason::TripleFault => "triple fault",
        StopReason::Halted => "halted",
        StopReason::HostRequest => "host signal",
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mem_line(label: &str, m: &MemorySample) -> String {
    format!(
        "{label}: VMM overhead {} RSS ({} PSS), guest-touched {}",
        mib(m.vmm_overhead_kib),
        mib(m.vmm_overhead_pss_kib),
        mib(m.guest_touched_kib)
    )
}

fn print_report(r: &VmReport) {
    let host = match &r.host {
        HostKind::Hardware(m) => m.clone(),
        other => format!("{other:?}").to_lowercase(),
    };
    println!(
        "vm: {} vCPU, {} MiB, {:?} kernel via {} entry, host {}",
        r.vcpus, r.memory_mib, r.kernel_format, r.boot_protocol, host
    );
    let p = &r.phases;
    println!(
        "phases (ms): vmm setup {} | kernel boot {} | init {} | workload ready {} | start->ready {} | run {} | shutdown {} | total {}",
        ms(p.vmm_setup_ms),
        ms(p.kernel_boot_ms),
        ms(p.init_ms),
        ms(p.workload_ready_ms),
        ms(p.start_to_ready_ms),
        ms(p.workload_run_ms),
        ms(p.shutdown_ms),
        ms(p.total_ms)
    );
    if let Some(m) = &r.memory_at_ready {
        println!("{}", mem_line("memory at ready", m));
    }
    println!("{}", mem_line("memory at end", &r.memory_at_end));
    if !r.unknown_markers.is_empty() {
        println!("unknown markers from the guest: {:?}", r.unknown_markers);
    }
    match r.exit_status {
        Some(s) => println!(
            "workload exit status: {s} (VM stop: {})",
            stop_name(r.stop_reason)
        ),
        None => println!(
            "workload exit status: none (VM stop: {})",
            stop_name(r.stop_reason)
        ),
    }
    let out = r.workload_output.trim_end();
    if !out.is_empty() {
        println!("{out}");
    }
}

fn run_smoke(args: SmokeArgs) -> anyhow::Result<ExitCode> {
    let kind = host::detect(Path::new("/"));
    if kind == HostKind::NoKvm {
        return Err(exit::host(kind.refusal().unwrap_or("no /dev/kvm")));
    }
    let r = smoke::run_smoke().map_err(|e| {
        let msg = format!("{:#}", anyhow::Error::new(e));
        if msg.contains("/dev/kvm") {
            exit::host(msg)
        } else {
            anyhow::anyhow!(msg)
        }
    })?;
    let ok = r.serial == "OK" && r.exit_status == Some(smoke::SMOKE_STATUS);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).context("serialise the report")?
        );
    } else {
        println!(
            "smoke: COM1 said {:?}, marker status {:?}, stopped: {}, {} us from KVM_CREATE_VM (host {kind:?})",
            r.serial,
            r.exit_status,
            stop_name(r.stop_reason),
            r.elapsed_us
        );
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow::anyhow!(
            "the real-mode payload did not behave: expected \"OK\" and status {}",
            smoke::SMOKE_STATUS
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: VmSub,
    }

    /// Runs `bench vm <argv>` up to its first usage check; these inputs
    /// never reach the host.
    fn usage_msg(argv: &[&str]) -> String {
        let t = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied())).unwrap();
        let VmSub::Run(args) = t.c else {
            panic!("not a run")
        };
        let e = run_vm(args).unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE, "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn net_needs_an_http_workload_on_its_default_port() {
        assert!(usage_msg(&["run", "--workload", "noop", "--net"])
            .contains("use --workload api or cache, not 'noop'"));
        assert!(
            usage_msg(&["run", "--workload", "api", "--net", "--", "--port", "9"])
                .contains("drop --port")
        );
    }

    #[test]
    fn requests_without_net_is_refused_by_the_parser() {
        let r = T::try_parse_from(["t", "run", "--workload", "api", "--requests", "5"]);
        assert!(r.is_err());
    }
}
