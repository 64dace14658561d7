//! Privileged: the multi-threaded run path (`run_vcpus`) with the in-kernel
//! irqchip, driven by a real-mode payload so that it runs on any KVM,
//! including this project's PVM hosts. Skips without `/dev/kvm` unless
//! `CI=true` / `ISOLAB_STRICT=1`.

use std::sync::mpsc;
use std::time::Duration;

use isolab_microvm::builder::{self, RunHooks};
use isolab_microvm::devices::bus::{BusDevice, DeviceEvent};
use isolab_microvm::memory_stats::MemoryProbe;
use isolab_microvm::vstate::kvm::KvmContext;
use isolab_microvm::vstate::{memory, vcpu};
use isolab_microvm::{Console, StopReason};
use kvm_bindings::kvm_regs;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};

fn require_kvm(test: &str) -> Option<KvmContext> {
    match KvmContext::open() {
        Ok(k) => Some(k),
        Err(e) => {
            isolab_testkit::require(test, Some(format!("cannot use /dev/kvm: {e}")));
            None
        }
    }
}

/// Real mode at 0x1000: `out 0x3f0, 0x02` (workload ready), then `body`.
fn payload(body: &[u8]) -> Vec<u8> {
    let mut p = vec![0xba, 0xf0, 0x03, 0xb0, 0x02, 0xee]; // mov dx,0x3f0; mov al,2; out dx,al
    p.extend_from_slice(body);
    p
}

/// Boots `code` on `vcpus` real-mode vCPUs through the builder's steps 4, 5,
/// 8, 12 (partly) and 13; returns the run outcome and whether the ready hook fired.
fn run_payload(
    kvm: &KvmContext,
    code: &[u8],
    vcpus: u8,
    on_start: impl FnOnce(mpsc::Receiver<()>, libc::pthread_t) + Send + 'static,
) -> (Result<builder::RunOutcome, builder::BuildError>, bool) {
    run_payload_with(kvm, code, vcpus, false, |_| {}, on_start)
}

/// [`run_payload`] with confinement on or off and extra devices.
fn run_payload_with(
    kvm: &KvmContext,
    code: &[u8],
    vcpus: u8,
    confine: bool,
    add_devices: impl FnOnce(&mut builder::Devices),
    on_start: impl FnOnce(mpsc::Receiver<()>, libc::pthread_t) + Send + 'static,
) -> (Result<builder::RunOutcome, builder::BuildError>, bool) {
    let vm = builder::create_vm(kvm).expect("VM with irqchip and PIT");
    let mem = builder::setup_memory(&vm, 1 << 20, Default::default()).expect("guest memory");
    mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut hooks = RunHooks {
        on_ready: Some(Box::new(move || {
            let _ = tx.send(());
        })),
        mmio_devices: Vec::new(),
    };
    let mut devices =
        builder::attach_devices(&vm, &Console::Off, None, &mut hooks).expect("devices");
    add_devices(&mut devices);
    let mut fds = Vec::new();
    for i in 0..vcpus {
        let fd = vcpu::create_vcpu(&vm, i).unwrap();
        let mut sregs = fd.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        fd.set_sregs(&sregs).unwrap();
        fd.set_regs(&kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        })
        .unwrap();
        fds.push(fd);
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let watcher = std::thread::spawn(move || on_start(rx, me));
    let mut probe =
        MemoryProbe::open(std::path::Path::new("/proc"), memory::host_ranges(&mem)).expect("smaps");
    let out = builder::run_vcpus(fds, &devices, &mut probe, confine);
    watcher.join().unwrap();
    let fired = devices.markers.lock().unwrap().workload_ready.is_some();
    (out, fired)
}

#[test]
fn sigterm_to_the_monitor_ends_a_spinning_vm_cleanly() {
    let Some(kvm) = require_kvm("sigterm_to_the_monitor_ends_a_spinning_vm_cleanly") else {
        return;
    };
    // After the ready marker the guest spins forever (jmp $).
    let code = payload(&[0xeb, 0xfe]);
    let (out, fired) = run_payload(&kvm, &code, 1, |ready, monitor| {
        ready
            .recv_timeout(Duration::from_secs(30))
            .expect("guest reached the ready marker");
        // Thread-directed, so only the monitor thread (which blocks SIGTERM
        // and reads it from its signalfd) can receive it; the test harness
        // process is not at risk.
        // SAFETY: `monitor` is alive: it is blocked in run_vcpus until this
        // signal arrives.
        let rc = unsafe { libc::pthread_kill(monitor, libc::SIGTERM) };
        assert_eq!(rc, 0);
    });
    let out = out.expect("a host stop is not an error");
    assert_eq!(out.stop_reason, StopReason::HostRequest);
    assert!(fired, "ready marker recorded");
    assert!(out.first_run.is_some());
    assert!(out.memory_at_ready.is_some(), "memory sampled at ready");
}

#[test]
fn guest_reset_on_one_vcpu_stops_all_vcpus() {
    let Some(kvm) = require_kvm("guest_reset_on_one_vcpu_stops_all_vcpus") else {
        return;
    };
    // Every vCPU writes ready, then 0xfe to port 0x64 (i8042 reset).
    // Only the first to get there matters; the others are kicked out.
    let code = payload(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]); // mov al,0xfe; out 0x64,al; jmp $
    let (out, fired) = run_payload(&kvm, &code, 2, |_, _| {});
    let out = out.expect("a guest reset is a clean stop");
    assert_eq!(out.stop_reason, StopReason::GuestReset);
    assert!(fired);
}

/// The child side of the confinement tests: which role this process plays.
fn child_role() -> Option<String> {
    std::env::var("ISOLAB_CONFINE_CHILD").ok()
}

/// Runs `test` of this binary alone in a child process with `role`.
fn in_child(test: &str, role: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("ISOLAB_CONFINE_CHILD", role)
        .output()
        .expect("spawn the test binary")
}

/// A device whose emulation has been subverted: a port write makes it
/// open a socket, which no monitor thread ever does.
struct Hostile;
impl BusDevice for Hostile {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) -> DeviceEvent {
        // SAFETY: a plain syscall with constant arguments; the filter
        // stops it before the kernel runs it.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        DeviceEvent::None
    }
}

/// Port of the hostile device in the payload below.
const HOSTILE_PORT: u64 = 0x510;

/// Confined (seccomp on every thread, no capabilities): a real-mode guest
/// runs to its reset with the ready sample taken by the confined VMM
/// thread; and a guest that drives a subverted device into a forbidden
/// syscall on its vCPU thread ends the monitor, which names the syscall.
/// Each VM runs in a child process, since confinement cannot be undone.
#[test]
fn confined_monitor_runs_and_stops_at_a_forbidden_syscall() {
    const TEST: &str = "confined_monitor_runs_and_stops_at_a_forbidden_syscall";
    if let Some(role) = child_role() {
        let kvm = KvmContext::open().expect("/dev/kvm in the child");
        let code = match role.as_str() {
            // ready; mov al,0xfe; out 0x64,al (i8042 reset); jmp $
            "clean" => payload(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]),
            // ready; mov dx,0x510; out dx,al (the hostile device); jmp $
            _ => payload(&[0xba, 0x10, 0x05, 0xee, 0xeb, 0xfe]),
        };
        let (out, fired) = run_payload_with(
            &kvm,
            &code,
            1,
            true,
            |d| {
                d.bus
                    .pio
                    .insert(HOSTILE_PORT, 1, Arc::new(Mutex::new(Hostile)))
                    .unwrap();
            },
            |_, _| {},
        );
        let out = out.expect("a confined run");
        // Only write(2) and exit_group(2) from here: this thread is confined.
        let ok = out.stop_reason == StopReason::GuestReset
            && fired
            && out.memory_at_ready.is_some_and(|m| m.guest_touched_kib > 0);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let Some(_) = require_kvm(TEST) else {
        return;
    };
    let clean = in_child(TEST, "clean");
    assert!(
        clean.status.success(),
        "a confined VM runs to its reset: {clean:?}"
    );
    let hostile = in_child(TEST, "hostile");
    let stderr = String::from_utf8_lossy(&hostile.stderr);
    assert_eq!(
        hostile.status.code(),
        Some(isolab_microvm::seccomp::EXIT_FORBIDDEN_SYSCALL),
        "{hostile:?}"
    );
    assert!(
        stderr.contains(&format!(
            "seccomp stopped the vcpu thread at a forbidden syscall {} (socket)",
            libc::SYS_socket
        )),
        "{stderr}"
    );
}
