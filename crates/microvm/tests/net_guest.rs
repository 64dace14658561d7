//! Guest tier: the api workload in the guest answers HTTP through the
//! virtio-net device, over a TAP on a workbench bridge (isolab-net), probed
//! from inside the workbench namespace; teardown leaves no namespace,
//! bridge or TAP behind.
//!
//! Needs hardware virtualisation and the provisioned guest kernel and
//! initramfs (`bench provision`). On a host without it (PVM KVM, as on the
//! project's CI machines) it prints `SKIPPED` — except in strict mode
//! (`CI=true` / `ISOLAB_STRICT=1`), where it reruns this test binary inside
//! the emulated host (QEMU TCG + nested KVM, which loads tun, veth and
//! bridge) and passes only if the test passes there.

use std::net::SocketAddr;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use isolab_microvm::builder::MmioDeviceFactory;
use isolab_microvm::devices::bus::SharedDevice;
use isolab_microvm::devices::virtio::{MmioTransport, NetDevice};
use isolab_microvm::{RunHooks, StopReason, VmConfig};
use isolab_net::probe::ProbeConfig;
use isolab_net::{Workbench, WorkbenchConfig};

mod common;

/// The artifacts, or `None` after skipping (or rerunning in the emulated
/// host in strict mode).
fn artifacts(test: &str) -> Option<(PathBuf, PathBuf)> {
    let tun = (!Path::new("/dev/net/tun").exists()).then(|| "/dev/net/tun is missing".to_owned());
    let missing = isolab_testkit::first_missing([isolab_testkit::missing_root(), tun]);
    if !isolab_testkit::require(test, missing) {
        return None;
    }
    common::guest("net_guest", test)
}

#[test]
fn guest_api_answers_http_over_virtio_net_and_teardown_leaves_nothing() {
    let test = "guest_api_answers_http_over_virtio_net_and_teardown_leaves_nothing";
    let Some((kernel, initrd)) = artifacts(test) else {
        return;
    };
    let wcfg = WorkbenchConfig {
        name: "isovmnet1".into(),
        bridge: "isovmbr1".into(),
        subnet: "10.213.9.0/24".parse().unwrap(),
        ..WorkbenchConfig::default()
    };
    let host_before = isolab_testkit::host_interfaces();
    let wb = Workbench::create(wcfg.clone()).unwrap();
    let tap = wb.create_tap(Some("isovmtap1"), false).unwrap();
    let lease = tap.lease();
    let addr = SocketAddr::from((lease.addr(), 8080));
    let mut cfg = VmConfig::new(&kernel, "api");
    cfg.initrd = Some(initrd);
    cfg.cmdline_extra = Some(format!(
        "isolab.ip={} isolab.gw={}",
        lease.cidr(),
        lease.gateway()
    ));
    let dev = NetDevice::new(tap.try_clone_fd().unwrap(), lease.mac()).unwrap();
    let factory: MmioDeviceFactory = Box::new(move |_slot, irq, mem| {
        let d: SharedDevice = Arc::new(Mutex::new(MmioTransport::new(dev, mem.clone(), irq)));
        d
    });
    // The VM thread inherits the blocked mask; its monitor reads SIGTERM
    // from a signalfd and stops the VM cleanly.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.thread_block().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let hooks = RunHooks {
        on_ready: Some(Box::new(move || {
            let _ = ready_tx.send(());
        })),
        mmio_devices: vec![factory],
    };
    let started = Instant::now();
    let vm = std::thread::spawn(move || isolab_microvm::run(&cfg, started, hooks));
    let ready = ready_rx.recv_timeout(Duration::from_secs(180));
    let probed = ready.map(|()| {
        let first = wb
            .probe_first_response(addr, started, &ProbeConfig::default())
            .unwrap();
        let run = wb.probe_run(addr, 20, &ProbeConfig::default()).unwrap();
        (first, run)
    });
    if !vm.is_finished() {
        // SAFETY: the thread is not joined yet, so its pthread_t is valid.
        unsafe { libc::pthread_kill(vm.as_pthread_t(), libc::SIGTERM) };
    }
    let report = vm.join().unwrap().expect("the VM ran");
    let (first, run) = probed.unwrap_or_else(|_| {
        panic!(
            "the guest never reported ready ({:?}); its output: {}",
            report.stop_reason, report.workload_output
        )
    });
    let first = first.expect("GET /health answered from inside the guest");
    assert_eq!(first.status, 200);
    let run = run.expect("request run");
    assert_eq!(run.requests, 20);
    assert_eq!(report.stop_reason, StopReason::HostRequest);
    assert!(report
        .cmdline
        .contains("virtio_mmio.device=4K@0xc0001000:5"));
    eprintln!(
        "{test}: launch -> first response {:?}, {:.0} req/s",
        first.elapsed,
        run.throughput_rps()
    );

    drop(tap);
    wb.destroy().unwrap();
    assert!(!wcfg.run_dir.join(&wcfg.name).exists(), "namespace left");
    assert_eq!(
        isolab_testkit::host_interfaces(),
        host_before,
        "host interfaces changed"
    );
}
