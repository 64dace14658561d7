//! `bench vm`: arguments -> [`VmConfig`] -> [`isolab_harness::single::vm`]
//! (one `isolab-vmm` process; with `--net`, a TAP on the workbench bridge
//! and the one HTTP probe) -> rendering. `--host emulated` runs this same
//! command inside the emulated host ([`crate::emulated`]).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use isolab_harness::single::{self, VmRunConfig};
use isolab_harness::Workload;
use isolab_microvm::config::{Console, VmConfig};
use isolab_microvm::host::{self, HostKind};
use isolab_microvm::memory_stats::MemorySample;
use isolab_microvm::smoke;
use isolab_microvm::{StopReason, VmReport};

use isolab_harness::image::ReadyRule;

use crate::{args, container, emulated, exit, paths, signals, vm_image};

/// Guest RAM of a built-in workload when --memory is not given.
const DEFAULT_MEMORY_MIB: u64 = 128;
/// The request run after the first response, when --requests is not given.
pub(crate) const DEFAULT_REQUESTS: u32 = 200;

/// Run a workload in a KVM microVM with its own guest kernel.
#[derive(Debug, clap::Args)]
pub struct VmCmd {
    #[command(subcommand)]
    command: VmSub,
}

#[derive(Debug, clap::Subcommand)]
enum VmSub {
    /// Boot the guest kernel and run one workload; exits with its status.
    Run(Box<RunArgs>),
    /// Run a few bytes of real-mode code in a VM (works even on PVM KVM).
    #[command(hide = true)]
    Smoke(SmokeArgs),
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HostChoice {
    /// On this host's /dev/kvm.
    Native,
    /// Inside the emulated hardware-virtualisation host (QEMU TCG + nested KVM).
    Emulated,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Workload: noop, api, worker, cache, hog, forkloop, probe, knob.
    #[arg(long, value_parser = args::workload,
          required_unless_present_any = ["image", "bundle", "image_disk"],
          conflicts_with_all = ["image", "bundle", "image_disk"])]
    pub(crate) workload: Option<Workload>,
    /// Run an OCI image instead: an image layout directory, an oci-archive
    /// or a docker-archive tarball, optionally PATH:TAG. Its root
    /// filesystem boots as the guest's read-only disk (virtio-blk) under a
    /// writable overlay; `-- ARGS` replace its command.
    #[arg(long, value_name = "REF", conflicts_with = "bundle")]
    pub(crate) image: Option<String>,
    /// Run an OCI runtime bundle (config.json + rootfs) instead.
    #[arg(long, value_name = "DIR")]
    pub(crate) bundle: Option<PathBuf>,
    /// With --image/--bundle: when the program counts as ready:
    /// http:PORT/PATH, tcp:PORT, exit or log:TEXT (default: HTTP on its
    /// lowest exposed TCP port, else its exit).
    #[arg(long, value_name = "RULE", value_parser = |s: &str| s.parse::<ReadyRule>())]
    pub(crate) ready: Option<ReadyRule>,
    /// Inside the emulated host: the image's root disk, built outside.
    #[arg(long, hide = true, requires_all = ["image_initrd", "ready"])]
    pub(crate) image_disk: Option<PathBuf>,
    /// Inside the emulated host: the image's spec initramfs, built outside.
    #[arg(long, hide = true, requires = "image_disk")]
    pub(crate) image_initrd: Option<PathBuf>,
    /// Inside the emulated host: what the user named.
    #[arg(long, hide = true, requires = "image_disk")]
    pub(crate) image_label: Option<String>,
    /// Guest RAM in whole MiB, e.g. 64M, 256M, 1G (at least 32M; a bare
    /// number is bytes); default 128M, 256M for an image.
    #[arg(long, value_parser = args::mib)]
    pub(crate) memory: Option<u64>,
    /// vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub(crate) vcpus: u8,
    /// Guest kernel (vmlinux or bzImage); default: the provisioned guest kernel.
    #[arg(long)]
    pub(crate) kernel: Option<PathBuf>,
    /// Initramfs with /init and /workload; default: the provisioned one.
    #[arg(long)]
    pub(crate) initrd: Option<PathBuf>,
    /// Show the guest's serial console on stdout (slows the boot).
    #[arg(long, conflicts_with = "console_file")]
    pub(crate) console: bool,
    /// Write the guest's serial console to this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) console_file: Option<PathBuf>,
    /// Appended to the kernel command line.
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    pub(crate) cmdline_extra: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Boot even on PVM KVM (needs a PVM-capable --kernel).
    #[arg(long)]
    pub(crate) allow_pvm: bool,
    /// Write `R` to this inherited fd when the workload is ready, then close it.
    #[arg(long, value_name = "N")]
    pub(crate) ready_fd: Option<RawFd>,
    /// Where to run the VM.
    #[arg(long, value_enum, default_value = "native")]
    pub(crate) host: HostChoice,
    /// Give the guest a virtio-net device on the workbench bridge and probe
    /// the workload over HTTP (api or cache): time to first response and a
    /// short request run.
    #[arg(long)]
    pub(crate) net: bool,
    /// With --net, or an image's http rule: requests in the
    /// request/response run after the first.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) requests: Option<u32>,
    /// Further workload arguments (after `--`); with --image/--bundle, the
    /// command that replaces the image's.
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SmokeArgs {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: VmCmd) -> anyhow::Result<ExitCode> {
    match cmd.command {
        VmSub::Run(args) => run_vm(*args),
        VmSub::Smoke(args) => run_smoke(args),
    }
}

/// Takes ownership of the inherited ready fd after checking it is open.
fn ready_fd(fd: RawFd) -> anyhow::Result<OwnedFd> {
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The monitor's config for the arguments; every error here is usage.
fn config(args: &RunArgs, workload: Workload) -> anyhow::Result<VmConfig> {
    if args.net {
        single::check_net(workload, &args.args)?;
    } else if args.requests.is_some() {
        return Err(exit::usage(
            "--requests sets the request run of --net: add --net",
        ));
    }
    if let Some(k) = &args.kernel {
        paths::input_file("--kernel", k)?;
    }
    if let Some(i) = &args.initrd {
        paths::input_file("--initrd", i)?;
    }
    if let Some(c) = &args.console_file {
        paths::output_file("--console-file", c)?;
    }
    let console = match (args.console, &args.console_file) {
        (true, _) => Console::Stdout,
        (false, Some(p)) => Console::File(p.clone()),
        (false, None) => Console::Off,
    };
    let mut config = VmConfig::new(args.kernel.clone().unwrap_or_default(), workload.name());
    config.initrd = args.initrd.clone();
    config.memory_mib = args.memory.unwrap_or(DEFAULT_MEMORY_MIB);
    config.vcpus = args.vcpus;
    config.workload_args = args.args.clone();
    config.console = console;
    config.cmdline_extra = args.cmdline_extra.clone();
    config.allow_pvm = args.allow_pvm;
    // With an explicit kernel, check the files too; the provisioned ones
    // are checked again by the monitor before the boot.
    let checked = if args.kernel.is_some() {
        config.validate().map(|_| ())
    } else {
        config.validate_shape().map(|_| ())
    };
    checked.map_err(|e| exit::usage(format!("{:#}", anyhow::Error::new(e))))?;
    Ok(config)
}

fn run_vm(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Usage errors first: nothing below has touched the host yet.
    if args.host == HostChoice::Emulated && args.ready_fd.is_some() {
        return Err(exit::usage(
            "--ready-fd cannot cross into the emulated host: drop it with --host emulated",
        ));
    }
    let Some(workload) = args.workload else {
        return vm_image::run(args);
    };
    if args.ready.is_some() {
        return Err(exit::usage(
            "--ready is for --image or --bundle; a built-in workload signals ready itself",
        ));
    }
    let mut config = config(&args, workload)?;
    if args.host == HostChoice::Emulated {
        return run_emulated(&args, &config, workload);
    }
    let ready = args.ready_fd.map(ready_fd).transpose()?;
    // Refuse hosts that cannot boot before provisioning (which may build a kernel).
    single::check_vm_host(args.allow_pvm)?;
    if args.kernel.is_none() {
        let guest = single::provisioned_guest(workload).map_err(|e| {
            anyhow::Error::new(e).context("(or pass --kernel and --initrd explicitly)")
        })?;
        config.kernel = guest.vmlinux;
        config.initrd.get_or_insert(guest.initramfs);
    }
    let vmm = isolab_guest_kernel::monitor_binary(
        &isolab_guest_kernel::binary_dir()
            .context("cannot locate the bench executable's directory")?,
    );
    signals::forward_to_child()?;
    let run = single::vm(
        VmRunConfig {
            vmm,
            config,
            ready_fd: ready,
            net_requests: args
                .net
                .then_some(args.requests.unwrap_or(DEFAULT_REQUESTS)),
        },
        &signals::target,
    )?;
    if args.json {
        // The monitor's report as it printed it, with the probe's figures
        // added under "net".
        let line = match &run.net {
            None => serde_json::to_string(&run.report).context("serialise the report")?,
            Some(net) => {
                let mut v = serde_json::to_value(&run.report).context("serialise the report")?;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("net".into(), serde_json::to_value(net)?);
                }
                v.to_string()
            }
        };
        println!("{line}");
    } else {
        print_report(&run.report);
        if let Some(n) = &run.net {
            container::print_net(&mut std::io::stdout().lock(), n)?;
        }
    }
    if run.net.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    match (run.report.exit_status, run.report.stop_reason) {
        (Some(status), _) => Ok(ExitCode::from(status)),
        (None, StopReason::HostRequest) => {
            // Ended by SIGTERM/SIGINT before the workload reported: exit as
            // a shell would for a SIGTERM'd child.
            Ok(ExitCode::from(128 + libc::SIGTERM as u8))
        }
        (None, reason) => Err(anyhow::anyhow!(
            "the guest stopped ({}) before the workload reported its exit status; rerun with --console to see the guest kernel",
            single::stop_name(reason)
        )),
    }
}

/// `bench vm run` again, inside the emulated hardware-virtualisation host
/// (QEMU TCG with nested KVM), with the guest artifacts provisioned here.
fn run_emulated(args: &RunArgs, config: &VmConfig, workload: Workload) -> anyhow::Result<ExitCode> {
    if args.kernel.is_some() || args.initrd.is_some() {
        return Err(exit::usage(
            "--host emulated boots the provisioned guest kernel and initramfs: drop --kernel and --initrd",
        ));
    }
    if args.console_file.is_some() {
        return Err(exit::usage(
            "--host emulated cannot write a console file: use --console",
        ));
    }
    let mut argv: Vec<String> = vec![
        "vm".into(),
        "run".into(),
        "--workload".into(),
        config.workload.clone(),
        "--memory".into(),
        format!("{}M", config.memory_mib),
        "--vcpus".into(),
        config.vcpus.to_string(),
    ];
    if args.console {
        argv.push("--console".into());
    }
    if args.json {
        argv.push("--json".into());
    }
    if args.net {
        argv.push("--net".into());
        argv.push(format!(
            "--requests={}",
            args.requests.unwrap_or(DEFAULT_REQUESTS)
        ));
    }
    if let Some(extra) = &config.cmdline_extra {
        argv.push(format!("--cmdline-extra={extra}"));
    }
    if !config.workload_args.is_empty() {
        argv.push("--".into());
        argv.extend(config.workload_args.iter().cloned());
    }
    let status = emulated::run(workload, &argv, false, &mut |line| println!("{line}"))?;
    if !args.json {
        println!("({})", isolab_emuhost::EMULATED_HOST_LABEL);
    }
    Ok(ExitCode::from(
        u8::try_from(status).unwrap_or(exit::FAILURE),
    ))
}

pub(crate) fn ms(v: Option<f64>) -> String {
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

pub(crate) fn print_report(r: &VmReport) {
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
            single::stop_name(r.stop_reason)
        ),
        None => println!(
            "workload exit status: none (VM stop: {})",
            single::stop_name(r.stop_reason)
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
    let r = smoke::run_smoke().map_err(|e| match e {
        // Opening /dev/kvm or its capabilities: the host lacks KVM.
        e @ smoke::SmokeError::Kvm(_) => exit::host(format!("{:#}", anyhow::Error::new(e))),
        e => anyhow::Error::new(e),
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
            single::stop_name(r.stop_reason),
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
        let e = run_vm(*args).unwrap_err();
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
    fn the_parser_refuses_what_cannot_run() {
        for argv in [
            &["t", "run", "--workload", "nope"][..],
            &["t", "run"],
            &["t", "run", "--workload", "api", "--image", "x.tar"],
            &["t", "run", "--image", "x.tar", "--bundle", "b"],
            &["t", "run", "--image", "x.tar", "--ready", "udp:53"],
            &["t", "run", "--workload", "noop", "--memory", "128"],
            &["t", "run", "--workload", "noop", "--vcpus", "0"],
            &["t", "run", "--workload", "noop", "--vcpus", "300"],
        ] {
            assert!(T::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn requests_and_ready_belong_to_net_and_images() {
        assert!(usage_msg(&["run", "--workload", "api", "--requests", "5"]).contains("add --net"));
        assert!(usage_msg(&["run", "--workload", "api", "--ready", "exit"])
            .contains("--image or --bundle"));
    }

    #[test]
    fn guest_ram_is_checked_before_the_host() {
        assert!(usage_msg(&["run", "--workload", "noop", "--memory", "16M"]).contains("16"));
        assert!(usage_msg(&[
            "run",
            "--workload",
            "noop",
            "--host",
            "emulated",
            "--ready-fd",
            "3"
        ])
        .contains("--ready-fd cannot cross"));
    }
}
