//! Guest tier, end to end: the busybox httpd image built by podman
//! (build-test-images.sh) is unpacked, written as an erofs root disk and
//! booted with the project's guest kernel on the monitor's virtio-blk
//! device; the guest init mounts it under a tmpfs overlay and runs the
//! image's command from the guest spec appended to the initramfs.
//!
//! Three boots in one run:
//! 1. the command replaced by a shell script (`-- ARGS`), run as the
//!    image's `www` user: its output, its exit status 7 and the workload
//!    markers come back through the marker ports;
//! 2. the image's own command, busybox `httpd`, answers `GET /health`
//!    over virtio-net on a workbench TAP;
//! 3. the nginx image (Debian's nginx and libraries) does the same, its
//!    workers running as `www-data`.
//!
//! Then the user's path, `bench vm run --image <the httpd image> --ready
//! http:80/` (on this host's KVM, or with `--host emulated` where that
//! cannot boot Linux): the CLI unpacks, builds the disk and initramfs
//! (cached), boots and probes; its JSON report must show the answer.
//!
//! Needs hardware virtualisation. On a host without it (PVM KVM, as on the
//! project's machines) it prints `SKIPPED`, except in strict mode
//! (`CI=true` / `ISOLAB_STRICT=1`): then the images, the disk and the
//! initramfs are built here and this test binary reruns inside the
//! emulated host (QEMU TCG + nested KVM) with them, and passes only if the
//! test passes there.

use std::net::SocketAddr;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isolab_image::guest_spec::{root_cmdline, spec_initramfs};
use isolab_image::{ImageRef, ImageStore};
use isolab_microvm::builder::MmioDeviceFactory;
use isolab_microvm::devices::bus::SharedDevice;
use isolab_microvm::devices::virtio::{BlockDevice, MmioTransport, NetDevice};
use isolab_microvm::{host, RunHooks, StopReason, VmConfig};
use isolab_net::probe::ProbeConfig;
use isolab_net::{Workbench, WorkbenchConfig};

mod common;

const TEST: &str = "images_boot_from_virtio_blk_and_serve_http";
/// Environment of the rerun inside the emulated host: where the
/// artifacts built on the real host were copied.
const ENV_KERNEL: &str = "ISOLAB_IMAGE_TEST_KERNEL";
const ENV_DISK: &str = "ISOLAB_IMAGE_TEST_DISK";
const ENV_INITRD_SCRIPT: &str = "ISOLAB_IMAGE_TEST_INITRD_SCRIPT";
const ENV_INITRD_HTTPD: &str = "ISOLAB_IMAGE_TEST_INITRD_HTTPD";
const ENV_NGINX_DISK: &str = "ISOLAB_IMAGE_TEST_NGINX_DISK";
const ENV_INITRD_NGINX: &str = "ISOLAB_IMAGE_TEST_INITRD_NGINX";
/// The script of boot 1.
const SCRIPT: &str = "echo \"$GREETING from $(pwd) as $(id -u):$(id -g)\"; \
    touch /tmp/new && echo overlay-writable; cat /www/health; \
    touch /www/denied 2>/dev/null || echo read-only-for-www; exit 7";

/// Everything a boot needs.
#[derive(Debug, Clone)]
struct Artifacts {
    kernel: PathBuf,
    disk: PathBuf,
    initrd_script: PathBuf,
    initrd_httpd: PathBuf,
    nginx_disk: PathBuf,
    initrd_nginx: PathBuf,
}

/// Builds the disk and the two spec initramfs images on this host.
fn build_artifacts() -> Option<Artifacts> {
    let images = common::test_images(TEST)?;
    let need = isolab_testkit::first_missing([
        isolab_testkit::missing_command("mkfs.erofs", "erofs-utils"),
        isolab_testkit::missing_binary("isolab-init", "isolab-init"),
        isolab_testkit::missing_binary("workload", "isolab-workload"),
    ]);
    if !isolab_testkit::require(TEST, need) {
        return None;
    }
    let cache = common::cache_root();
    let kernel =
        isolab_guest_kernel::lookup(&isolab_guest_kernel::BuildOptions::new(cache.clone()))
            .expect("reading the kernel cache");
    let Some(kernel) = kernel else {
        let why = "the guest kernel for this configuration is not built: run `bench provision`";
        isolab_testkit::require(TEST, Some(why.into()));
        return None;
    };
    let prov = isolab_guest_kernel::provision(&isolab_guest_kernel::ProvisionOptions::new(
        cache.clone(),
        &isolab_testkit::target_profile_dir(),
        "noop".parse().expect("a workload name"),
    ))
    .expect("guest initramfs");
    let store = ImageStore::new(&cache);
    let image = store
        .unpack(&ImageRef::new(images.join("httpd-oci.tar"), None))
        .expect("unpack the httpd image");
    let disk = image.root_disk().expect("erofs root disk");
    eprintln!(
        "{TEST}: image {} ({} KiB of files), disk {} KiB",
        image.key,
        image.meta.rootfs_bytes / 1024,
        disk.bytes / 1024
    );
    // Boot 1: `-- sh -c SCRIPT`, as the image's www user.
    let args = ["/bin/sh".to_string(), "-c".into(), SCRIPT.into()];
    let mut script = image.run_spec(Some(&args)).unwrap().guest_spec();
    script.uid = 33;
    script.gid = 33;
    // Boot 2: the image's own command.
    let httpd = image.run_spec(None).unwrap().guest_spec();
    // Boot 3: nginx.
    let nginx = store
        .unpack(&ImageRef::new(images.join("nginx-oci.tar"), None))
        .expect("unpack the nginx image");
    let nginx_disk = nginx.root_disk().expect("nginx's erofs root disk");
    eprintln!(
        "{TEST}: nginx image ({} KiB of files), disk {} KiB",
        nginx.meta.rootfs_bytes / 1024,
        nginx_disk.bytes / 1024
    );
    let nginx_spec = nginx.run_spec(None).unwrap().guest_spec();
    let dir = cache.join("initramfs");
    Some(Artifacts {
        kernel: kernel.vmlinux,
        disk: disk.path,
        initrd_script: spec_initramfs(&prov.initramfs, &script, &dir).unwrap(),
        initrd_httpd: spec_initramfs(&prov.initramfs, &httpd, &dir).unwrap(),
        nginx_disk: nginx_disk.path,
        initrd_nginx: spec_initramfs(&prov.initramfs, &nginx_spec, &dir).unwrap(),
    })
}

/// The artifacts, or `None` after skipping or rerunning elsewhere.
fn artifacts() -> Option<Artifacts> {
    if std::env::var_os("ISOLAB_EMULATED_HOST").is_some() {
        if let Some(k) = std::env::var_os(ENV_KERNEL) {
            let p = |v: &str| PathBuf::from(std::env::var_os(v).expect(v));
            return Some(Artifacts {
                kernel: k.into(),
                disk: p(ENV_DISK),
                initrd_script: p(ENV_INITRD_SCRIPT),
                initrd_httpd: p(ENV_INITRD_HTTPD),
                nginx_disk: p(ENV_NGINX_DISK),
                initrd_nginx: p(ENV_INITRD_NGINX),
            });
        }
    }
    if !isolab_testkit::require(TEST, isolab_testkit::missing_root()) {
        return None;
    }
    let kind = host::detect(Path::new("/"));
    if let Some(why) = kind.refusal() {
        if isolab_testkit::strict() {
            let a = build_artifacts()?;
            rerun_in_emulated_host(&a);
            bench_vm_run_image("emulated");
        } else {
            isolab_testkit::skipped(TEST, why);
        }
        return None;
    }
    build_artifacts()
}

/// `bench vm run --image httpd-oci.tar --ready http:80/ --host HOST
/// --json`: the image's httpd answers through the user's command.
fn bench_vm_run_image(host: &str) {
    let Some(images) = common::test_images(TEST) else {
        return;
    };
    let bench = isolab_testkit::binary("bench");
    let need = isolab_testkit::missing_binary("bench", "isolab-cli");
    if !isolab_testkit::require(TEST, need) {
        return;
    }
    let image = images.join("httpd-oci.tar");
    let started = Instant::now();
    let out = std::process::Command::new(&bench)
        .args(["vm", "run", "--image"])
        .arg(&image)
        .args([
            "--ready",
            "http:80/",
            "--requests",
            "5",
            "--json",
            "--host",
            host,
        ])
        .env("ISOLAB_PROGRESS", "0")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench vm run --image failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON report in:\n{stdout}\n{stderr}"));
    let ready = report["image"]["launch_to_ready_ms"].as_f64();
    assert!(ready.is_some_and(|ms| ms > 0.0), "{report}");
    assert_eq!(report["image"]["ready_rule"], "http:80/", "{report}");
    assert_eq!(report["net"]["status"], 200, "{report}");
    assert_eq!(report["net"]["requests"], 5, "{report}");
    assert_eq!(report["stop_reason"], "host_request", "{report}");
    assert!(
        report["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("isolab.root=/dev/vda")),
        "{report}"
    );
    eprintln!(
        "{TEST}: bench vm run --image {} --ready http:80/ --host {host}: ready {:.0} ms after launch, \
         whole command {:.1} s{}",
        image.display(),
        ready.unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        if host == "emulated" {
            " (emulated host: timings not comparable to hardware)"
        } else {
            ""
        }
    );
}

/// Runs this test inside the emulated host with `a` copied in; panics
/// unless it passes there.
fn rerun_in_emulated_host(a: &Artifacts) {
    let dir = isolab_testkit::GUEST_TEST_DIR;
    let mut rerun = isolab_testkit::Rerun {
        args: vec!["--exact".into(), TEST.into()],
        passed: 1,
        ..isolab_testkit::Rerun::default()
    };
    for (var, host, name) in [
        (ENV_KERNEL, &a.kernel, "vmlinux"),
        (ENV_DISK, &a.disk, "rootfs.erofs"),
        (ENV_INITRD_SCRIPT, &a.initrd_script, "script.cpio"),
        (ENV_INITRD_HTTPD, &a.initrd_httpd, "httpd.cpio"),
        (ENV_NGINX_DISK, &a.nginx_disk, "nginx.erofs"),
        (ENV_INITRD_NGINX, &a.initrd_nginx, "nginx.cpio"),
    ] {
        rerun.files.push((host.clone(), format!("{dir}/{name}")));
        rerun.env.push((var.to_string(), format!("{dir}/{name}")));
    }
    let out =
        isolab_testkit::rerun_in_emulated_host(TEST, &isolab_testkit::emulated_host(TEST), rerun);
    eprintln!("{TEST}: ran inside the emulated host (this host's KVM cannot boot Linux):");
    for l in out
        .lines()
        .filter(|l| l.contains(TEST) || l.contains("boot "))
    {
        eprintln!("  | {l}");
    }
}

/// A factory for the read-only root disk.
fn block(disk: &Path) -> MmioDeviceFactory {
    let dev = BlockDevice::open(disk, true, "isolab-root").expect("open the root disk");
    Box::new(move |_slot, irq, mem| {
        let d: SharedDevice = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), irq)));
        d
    })
}

fn config(a: &Artifacts, initrd: &Path, extra: &str) -> VmConfig {
    // The workload name is required by the monitor's config; with
    // isolab.root= the guest init runs the spec's command instead.
    let mut c = VmConfig::new(&a.kernel, "image");
    c.initrd = Some(initrd.to_path_buf());
    c.memory_mib = 256;
    c.cmdline_extra = Some(format!("{} {extra}", root_cmdline()));
    c
}

#[test]
fn images_boot_from_virtio_blk_and_serve_http() {
    let Some(a) = artifacts() else {
        return;
    };

    // Boot 1: output and exit status through the markers.
    let c = config(&a, &a.initrd_script, "");
    let hooks = RunHooks {
        on_ready: None,
        mmio_devices: vec![block(&a.disk)],
    };
    let r = isolab_microvm::run(&c, Instant::now(), hooks).expect("boot 1 ran");
    eprintln!(
        "{TEST}: boot 1: status {:?}, kernel {:?} ms, init -> exec {:?} ms, output {:?}",
        r.exit_status, r.phases.kernel_boot_ms, r.phases.init_ms, r.workload_output
    );
    assert_eq!(r.exit_status, Some(7), "{r:?}");
    assert_eq!(r.stop_reason, StopReason::WorkloadExited);
    assert!(
        r.phases.init_ms.is_some(),
        "workload-started marker: {:?}",
        r.phases
    );
    let out = &r.workload_output;
    for want in [
        "hello from /www as 33:33",
        "overlay-writable",
        "ok",
        "read-only-for-www",
    ] {
        assert!(out.contains(want), "output lacks {want:?}: {out:?}");
    }
    assert!(r.cmdline.contains("isolab.root=/dev/vda"), "{}", r.cmdline);

    // Boots 2 and 3: web servers over virtio-net, in one workbench.
    let wcfg = WorkbenchConfig {
        name: "isoimgnet1".into(),
        bridge: "isoimgbr1".into(),
        subnet: "10.213.17.0/24".parse().unwrap(),
        ..WorkbenchConfig::default()
    };
    let wb = Workbench::create(wcfg.clone()).unwrap();
    let report = serve(&wb, &a, &a.disk, &a.initrd_httpd, "boot 2 (busybox httpd)");
    assert!(
        report.workload_output.contains("/health"),
        "httpd's request log (stderr) comes through: {:?}",
        report.workload_output
    );
    let report = serve(&wb, &a, &a.nginx_disk, &a.initrd_nginx, "boot 3 (nginx)");
    assert!(
        report.workload_output.contains("start worker process"),
        "nginx's error log (stderr) comes through: {:?}",
        report.workload_output
    );
    wb.destroy().unwrap();
    assert!(!wcfg.run_dir.join(&wcfg.name).exists(), "namespace left");
    // On hardware, the user's command too (inside the emulated host it
    // runs from the outside, where the images and bench are).
    if std::env::var_os("ISOLAB_EMULATED_HOST").is_none() {
        bench_vm_run_image("native");
    }
}

/// Boots the image on `disk` with a TAP in `wb`, waits for `GET /health`
/// on port 80 to answer 200, runs 10 more requests, stops the VM.
fn serve(
    wb: &Workbench,
    a: &Artifacts,
    disk: &Path,
    initrd: &Path,
    what: &str,
) -> isolab_microvm::VmReport {
    let tap = wb.create_tap(Some("isoimgtap1"), false).unwrap();
    let lease = tap.lease();
    let addr = SocketAddr::from((lease.addr(), 80));
    let c = config(
        a,
        initrd,
        &format!("isolab.ip={} isolab.gw={}", lease.cidr(), lease.gateway()),
    );
    let net = NetDevice::new(tap.try_clone_fd().unwrap(), lease.mac()).unwrap();
    let net: MmioDeviceFactory = Box::new(move |_slot, irq, mem| {
        let d: SharedDevice = Arc::new(Mutex::new(MmioTransport::new(net, mem.clone(), irq)));
        d
    });
    // The VM thread inherits the blocked mask; its monitor reads SIGTERM
    // from a signalfd and stops the VM cleanly.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.thread_block().unwrap();
    let hooks = RunHooks {
        on_ready: None,
        mmio_devices: vec![block(disk), net],
    };
    let started = Instant::now();
    let vm = std::thread::spawn(move || isolab_microvm::run(&c, started, hooks));
    let probe = ProbeConfig {
        deadline: Duration::from_secs(120),
        ..ProbeConfig::default()
    };
    let first = wb.probe_first_response(addr, started, &probe).unwrap();
    let run = first
        .as_ref()
        .ok()
        .map(|_| wb.probe_run(addr, 10, &ProbeConfig::default()).unwrap());
    if !vm.is_finished() {
        // SAFETY: the thread is not joined yet, so its pthread_t is valid.
        unsafe { libc::pthread_kill(vm.as_pthread_t(), libc::SIGTERM) };
    }
    let report = vm.join().unwrap().expect("the VM ran");
    let first = first.unwrap_or_else(|e| {
        panic!(
            "{what}: no HTTP answer ({e}); stop {:?}, status {:?}, output {:?}",
            report.stop_reason, report.exit_status, report.workload_output
        )
    });
    assert_eq!(first.status, 200, "{what}");
    assert_eq!(run.unwrap().unwrap().requests, 10, "{what}");
    assert_eq!(report.stop_reason, StopReason::HostRequest, "{what}");
    eprintln!(
        "{TEST}: {what}: launch -> first HTTP response {:?} (emulated host: timings not comparable to hardware)",
        first.elapsed
    );
    drop(tap);
    report
}
