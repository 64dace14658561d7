//! `bench vm run --image REF | --bundle DIR [--ready RULE] [-- ARGS]`: a
//! user's image in our microVM. The image is unpacked into the one cache
//! root, its read-only erofs root disk and the guest spec initramfs are
//! built (both cached), and one `isolab-vmm` boots the provisioned guest
//! kernel with the disk on virtio-blk and a TAP on the workbench bridge
//! ([`isolab_harness::modes::microvm::image`]). Readiness follows the rule;
//! with an http rule a request run follows; then the VM is stopped (or,
//! with `exit`, has ended) and everything is removed.
//!
//! With `--host emulated` the disk and initramfs are built here (the
//! emulated host has no image tools) and travel in with the binaries;
//! inside, `bench vm run --image-disk ... --image-initrd ...` boots them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use isolab_emuhost::FileMap;
use isolab_harness::image::{ImageWorkload, ReadyRule};
use isolab_harness::modes::microvm::image::{self as vmimage, ImageBoot, ImageVm};
use isolab_harness::modes::Instance;
use isolab_harness::net::NetReport;
use isolab_harness::{single, HarnessError, Workload};
use isolab_image::RootDisk;
use isolab_microvm::config::Console;
use isolab_microvm::VmReport;
use isolab_net::{ProbeConfig, Workbench, WorkbenchConfig};

use crate::vm::{HostChoice, RunArgs, DEFAULT_REQUESTS};
use crate::{container, emulated, exit, paths, signals};

/// Where the image's files go inside the emulated host.
const EMU_DISK: &str = "/opt/isolab/image/rootfs.erofs";
const EMU_INITRD: &str = "/opt/isolab/image/spec.cpio";

/// Unpacks `--image` (or reads `--bundle`) into the workload every mode
/// runs, as `container run` and `compare` do ([`crate::image::ImageArgs`]).
pub fn load(args: &RunArgs, cache: &Path) -> anyhow::Result<ImageWorkload> {
    let flags = crate::image::ImageArgs {
        image: args.image.clone(),
        bundle: args.bundle.clone(),
        ready: args.ready.clone(),
        ..Default::default()
    };
    let image = flags
        .load_in(&args.args, Some(cache))?
        .expect("clap requires --workload, --image or --bundle");
    Ok(Arc::unwrap_or_clone(image))
}

/// Usage checks that need nothing from the host.
fn check(args: &RunArgs) -> anyhow::Result<()> {
    if args.kernel.is_some() || args.initrd.is_some() {
        return Err(exit::usage(
            "--image/--bundle boot the provisioned guest kernel with the image's own initramfs: drop --kernel and --initrd",
        ));
    }
    if args.ready_fd.is_some() {
        return Err(exit::usage(
            "--ready-fd is for built-in workloads: an image's readiness is --ready",
        ));
    }
    if args.host == HostChoice::Emulated && args.console_file.is_some() {
        return Err(exit::usage(
            "--host emulated cannot write a console file: use --console",
        ));
    }
    if let Some(c) = &args.console_file {
        paths::output_file("--console-file", c)?;
    }
    for (flag, p) in [
        ("--image-disk", &args.image_disk),
        ("--image-initrd", &args.image_initrd),
    ] {
        if let Some(p) = p {
            paths::input_file(flag, p)?;
        }
    }
    Ok(())
}

/// `bench vm run` for an image or bundle.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    check(&args)?;
    // Inside the emulated host: the disk and initramfs came with us.
    if let (Some(disk), Some(initrd), Some(rule)) =
        (&args.image_disk, &args.image_initrd, &args.ready)
    {
        let bytes = std::fs::metadata(disk).map(|m| m.len()).unwrap_or(0);
        let boot = ImageBoot {
            disk: RootDisk {
                path: disk.clone(),
                bytes,
                cached: true,
                build_ms: 0.0,
            },
            initrd: initrd.clone(),
        };
        let label = args.image_label.clone().unwrap_or_else(|| "image".into());
        return run_native(&args, &boot, rule, &label);
    }
    let cache = isolab_guest_kernel::cache_root().context("the artifact cache")?;
    let image = load(&args, &cache)?;
    // The guest kernel and a base initramfs (any provisioned one has the init).
    if args.host == HostChoice::Native {
        // Refused before provisioning (which may build a kernel).
        single::check_vm_host(args.allow_pvm)?;
    }
    let guest = single::provisioned_guest(Workload::Noop)?;
    let boot = vmimage::prepare(&cache, &guest.initramfs, &image)?;
    eprintln!(
        "bench: {} -> root disk {} ({:.1} MiB{}), command {:?} as {}:{}, --ready {}",
        image.label,
        boot.disk.path.display(),
        boot.disk.bytes as f64 / (1 << 20) as f64,
        if boot.disk.cached { ", cached" } else { "" },
        image.run.args,
        image.run.uid,
        image.run.gid,
        image.ready
    );
    match args.host {
        HostChoice::Native => run_native(&args, &boot, &image.ready, &image.label),
        HostChoice::Emulated => run_emulated(&args, &boot, &image),
    }
}

/// The same command inside the emulated host, the disk and the spec
/// initramfs carried in.
fn run_emulated(
    args: &RunArgs,
    boot: &ImageBoot,
    image: &ImageWorkload,
) -> anyhow::Result<ExitCode> {
    let mut argv: Vec<String> = vec![
        "vm".into(),
        "run".into(),
        format!("--image-disk={EMU_DISK}"),
        format!("--image-initrd={EMU_INITRD}"),
        format!("--image-label={}", image.label),
        format!("--ready={}", image.ready),
        "--vcpus".into(),
        args.vcpus.to_string(),
    ];
    if let Some(m) = args.memory {
        argv.push(format!("--memory={m}M"));
    }
    if let Some(r) = args.requests {
        argv.push(format!("--requests={r}"));
    }
    if args.console {
        argv.push("--console".into());
    }
    if args.json {
        argv.push("--json".into());
    }
    if let Some(extra) = &args.cmdline_extra {
        argv.push(format!("--cmdline-extra={extra}"));
    }
    let files = vec![
        FileMap {
            host: boot.disk.path.clone(),
            guest: EMU_DISK.into(),
        },
        FileMap {
            host: boot.initrd.clone(),
            guest: EMU_INITRD.into(),
        },
    ];
    let status =
        emulated::run_with_files(Workload::Noop, &argv, files, &mut |line| println!("{line}"))?;
    if !args.json {
        println!("({})", isolab_emuhost::EMULATED_HOST_LABEL);
    }
    Ok(ExitCode::from(
        u8::try_from(status).unwrap_or(exit::FAILURE),
    ))
}

/// What one image run observed.
#[derive(Debug, serde::Serialize)]
struct ImageRun {
    label: String,
    ready_rule: String,
    /// Launch -> the rule met.
    launch_to_ready_ms: Option<f64>,
    /// Why it never was.
    not_ready: Option<String>,
    disk: PathBuf,
    disk_bytes: u64,
}

/// Boots `boot` on this host's KVM, waits for `rule`, probes, stops.
fn run_native(
    args: &RunArgs,
    boot: &ImageBoot,
    rule: &ReadyRule,
    label: &str,
) -> anyhow::Result<ExitCode> {
    single::check_vm_host(args.allow_pvm)?;
    let guest = single::provisioned_guest(Workload::Noop)?;
    let mut cfg = vmimage::image_config(&guest.vmlinux, boot, rule, args.memory, Some(args.vcpus));
    cfg.console = match (args.console, &args.console_file) {
        (true, _) => Console::Stdout,
        (false, Some(p)) => Console::File(p.clone()),
        (false, None) => Console::Off,
    };
    if let Some(extra) = &args.cmdline_extra {
        let root = cfg.cmdline_extra.take().unwrap_or_default();
        cfg.cmdline_extra = Some(format!("{root} {extra}"));
    }
    cfg.allow_pvm = args.allow_pvm;
    cfg.validate_shape()
        .map_err(|e| exit::usage(format!("{:#}", anyhow::Error::new(e))))?;
    let vmm = isolab_guest_kernel::monitor_binary(
        &isolab_guest_kernel::binary_dir()
            .context("cannot locate the bench executable's directory")?,
    );
    signals::forward_to_child()?;
    isolab_harness::stale::clean_at_start();
    let wb = Arc::new(Workbench::create(WorkbenchConfig::per_process())?);
    let echo = cfg.console == Console::Stdout;
    let result = boot_and_probe(args, &vmm, cfg, boot, rule, &wb, echo);
    signals::target(0);
    // Every TAP is gone with the VM; the namespace goes now.
    if let Ok(wb) = Arc::try_unwrap(wb) {
        wb.destroy()?;
    }
    let (report, net, ready) = result?;
    let image_run = ImageRun {
        label: label.to_owned(),
        ready_rule: rule.to_string(),
        launch_to_ready_ms: ready.as_ref().ok().copied(),
        not_ready: ready.as_ref().err().cloned(),
        disk: boot.disk.path.clone(),
        disk_bytes: boot.disk.bytes,
    };
    if args.json {
        let mut v = serde_json::to_value(&report).context("serialise the report")?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("image".into(), serde_json::to_value(&image_run)?);
            if let Some(n) = &net {
                obj.insert("net".into(), serde_json::to_value(n)?);
            }
        }
        println!("{v}");
    } else {
        crate::vm::print_report(&report);
        match &ready {
            Ok(ms) => println!("image {label}: ready ({rule}) {ms:.1} ms after launch"),
            Err(why) => println!("image {label}: not ready ({rule}): {why}"),
        }
        if let Some(n) = &net {
            container::print_net(&mut std::io::stdout().lock(), n)?;
        }
    }
    if let Err(why) = ready {
        return Err(anyhow::anyhow!(
            "{label} never became ready by --ready {rule}: {why}"
        ));
    }
    Ok(match (rule, report.exit_status) {
        (ReadyRule::Exit, Some(s)) => ExitCode::from(s),
        (ReadyRule::Exit, None) => ExitCode::from(exit::FAILURE),
        _ => ExitCode::SUCCESS,
    })
}

type Probed = (VmReport, Option<NetReport>, Result<f64, String>);

fn boot_and_probe(
    args: &RunArgs,
    vmm: &Path,
    cfg: isolab_microvm::VmConfig,
    boot: &ImageBoot,
    rule: &ReadyRule,
    wb: &Arc<Workbench>,
    echo: bool,
) -> Result<Probed, HarnessError> {
    let mut vm = ImageVm::spawn(
        vmm,
        cfg,
        &boot.disk.path,
        rule.clone(),
        Some(Arc::clone(wb)),
        &[],
        echo,
    )?;
    signals::target(vm.pid() as i32);
    let launched = vm.launched_at();
    let ready = vm
        .wait_until_ready(single::VM_READY_TIMEOUT)
        .map(|at: Instant| at.saturating_duration_since(launched).as_secs_f64() * 1000.0)
        .map_err(|e| isolab_harness::chain(&e));
    let net = match (rule, &ready) {
        (ReadyRule::Http { port, path }, Ok(ms)) => vm
            .target(*port)
            .map(|t| request_run(&t, path, *ms, args.requests.unwrap_or(DEFAULT_REQUESTS)))
            .transpose()?
            .map(|mut n| {
                n.tap = vm.tap_name().map(str::to_owned);
                (n.attempts, n.status) = vm.first_http().unwrap_or_default();
                n
            }),
        _ => None,
    };
    let (report, _) = vm.stop_report()?;
    Ok((report, net, ready))
}

/// `requests` GETs of `path` on `target` after the first answer.
fn request_run(
    target: &isolab_net::Target,
    path: &str,
    first_ms: f64,
    requests: u32,
) -> Result<NetReport, HarnessError> {
    let cfg = ProbeConfig {
        path: path.to_owned(),
        ..ProbeConfig::default()
    };
    let run = isolab_net::probe::request_run_at(target, requests, &cfg).map_err(|source| {
        HarnessError::NoAnswer {
            what: format!("the image's program at {}", target.addr),
            source,
        }
    })?;
    let lat: Vec<f64> = run
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let s = isolab_harness::stats::summarize(&lat);
    Ok(NetReport {
        addr: target.addr.to_string(),
        tap: None,
        launch_to_first_response_ms: first_ms,
        attempts: 0,
        status: 0,
        requests: run.latencies.len() as u32,
        p50_ms: s.as_ref().map_or(0.0, |s| s.p50),
        p99_ms: s.as_ref().map_or(0.0, |s| s.p99),
        max_ms: s.as_ref().map_or(0.0, |s| s.max),
        throughput_rps: run.throughput_rps(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: RunArgs,
    }

    fn args(argv: &[&str]) -> RunArgs {
        T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn bad_images_and_bundles_are_one_line_usage_errors() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("bad.tar");
        std::fs::write(&bad, b"not a tar archive at all").unwrap();
        let missing = d.path().join("missing");
        for argv in [
            vec!["--image", bad.to_str().unwrap()],
            vec!["--image", missing.to_str().unwrap()],
            vec!["--bundle", missing.to_str().unwrap()],
            vec!["--bundle", d.path().to_str().unwrap()],
        ] {
            let e = load(&args(&argv), d.path()).unwrap_err();
            assert_eq!(exit::code_for(&e), exit::USAGE, "{argv:?}: {e:#}");
            let msg = format!("{e:#}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        // Nothing half-unpacked in the cache.
        let left: Vec<_> = std::fs::read_dir(d.path().join("images"))
            .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn image_flags_that_cannot_apply_are_refused_first() {
        let e = run(args(&["--image", "x.tar", "--kernel", "/k"])).unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE);
        assert!(format!("{e}").contains("drop --kernel"), "{e}");
        let e = run(args(&["--image", "x.tar", "--ready-fd", "3"])).unwrap_err();
        assert!(format!("{e}").contains("--ready"), "{e}");
        // The inner flags come together.
        assert!(T::try_parse_from(["t", "--image-disk", "/d"]).is_err());
    }
}
