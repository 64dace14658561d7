//! The guest artifacts on their own, independently of our monitor: boot the
//! cached guest kernel + a fresh guest initramfs under
//! `qemu-system-x86_64 -M microvm -accel tcg` (software emulation, no KVM
//! needed) and read the console.
//!
//! Probes: the built kernel in the cache (`bench provision` builds it), the
//! static `isolab-init` and `workload` next to the test binary's target dir,
//! and `qemu-system-x86_64`. Without one the test prints `SKIPPED` and
//! returns; with `CI=true` or `ISOLAB_STRICT=1` it fails instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use isolab_guest_kernel::{lookup, BuildOptions, INIT_BIN, WORKLOAD_BIN};
use isolab_initramfs::guest_initramfs;

/// TCG boots this kernel in a few seconds; this only stops a hung guest.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

struct Artifacts {
    bz_image: PathBuf,
    vmlinux: PathBuf,
    init: PathBuf,
    workload: PathBuf,
    /// The test's scratch directory (initramfs, console, traces).
    dir: tempfile::TempDir,
}

fn probe(test: &str) -> Option<Artifacts> {
    let kernel = isolab_testkit::cache_root().map(|root| lookup(&BuildOptions::new(root)));
    let missing_kernel = match &kernel {
        None => Some("no cache directory: set ISOLAB_CACHE or HOME".to_owned()),
        Some(Ok(Some(_))) => None,
        Some(Ok(None)) => {
            Some("no guest kernel in the cache for this config: run `bench provision`".to_owned())
        }
        Some(Err(e)) => Some(format!("cannot read the kernel cache: {e}")),
    };
    let missing = isolab_testkit::first_missing([
        missing_kernel,
        isolab_testkit::missing_command("qemu-system-x86_64", "qemu-system-x86"),
        isolab_testkit::missing_binary(INIT_BIN, "isolab-init"),
        isolab_testkit::missing_binary(WORKLOAD_BIN, "isolab-workload"),
    ]);
    if !isolab_testkit::require(test, missing) {
        return None;
    }
    let kernel = kernel?.ok()??;
    Some(Artifacts {
        bz_image: kernel.bz_image,
        vmlinux: kernel.vmlinux,
        init: isolab_testkit::binary(INIT_BIN),
        workload: isolab_testkit::binary(WORKLOAD_BIN),
        dir: tempfile::tempdir().expect("a scratch directory"),
    })
}

/// Boots with the given `isolab.*` parameters; returns the serial console
/// text once QEMU exited successfully (fails the test otherwise).
fn boot(a: &Artifacts, params: &str) -> String {
    boot_with(a, params, &[])
}

/// As [`boot`], with extra QEMU arguments (devices).
fn boot_with(a: &Artifacts, params: &str, qemu_args: &[&str]) -> String {
    boot_kernel(a, &a.bz_image, params, qemu_args)
}

/// QEMU microvm (TCG, 256 MiB, one CPU, serial console on stdout)
/// booting `kernel` with a fresh guest initramfs and the `isolab.*`
/// parameters `params`.
fn qemu(a: &Artifacts, kernel: &Path, params: &str) -> Command {
    let initrd = a.dir.path().join("initramfs.cpio");
    guest_initramfs(a.init.as_path(), a.workload.as_path(), &[])
        .write_file(&initrd)
        .expect("write the guest initramfs");
    // Kernel parameters for this boot:
    // console=ttyS0  kernel messages and init's lines on the microvm's COM1;
    // reboot=t       reset by triple fault: microvm has no i8042 for reboot=k,
    //                and -no-reboot turns the reset into QEMU's exit;
    // panic=-1       a panic resets at once instead of hanging the test;
    // nomodule       nothing to load (CONFIG_MODULES is off anyway).
    // microvm,acpi=off: the kernel has no ACPI; without ACPI QEMU describes
    // its virtio-mmio devices on the command line (virtio_mmio.device=).
    let append = format!("console=ttyS0 reboot=t panic=-1 nomodule {params}");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-m",
        "256",
        "-smp",
        "1",
    ])
    .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
    .args(["-serial", "stdio", "-display", "none"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(&initrd)
    .arg("-append")
    .arg(&append)
    .stdin(Stdio::null());
    qemu
}

/// Boots `kernel` (bzImage, or vmlinux through its PVH note).
fn boot_kernel(a: &Artifacts, kernel: &Path, params: &str, qemu_args: &[&str]) -> String {
    let mut child = qemu(a, kernel, params)
        .args(qemu_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = match rx.recv_timeout(BOOT_TIMEOUT) {
        Ok(out) => out,
        Err(_) => {
            // Kill only the QEMU we started; the reader then sees EOF.
            let _ = child.kill();
            let _ = child.wait();
            let out = rx.recv().unwrap_or_default();
            panic!(
                "guest did not power off within {BOOT_TIMEOUT:?}; console:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
    };
    let status = child.wait().expect("wait for qemu");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let console = String::from_utf8_lossy(&out).into_owned();
    assert!(
        status.success(),
        "qemu exited with an error ({err}); console:\n{console}"
    );
    console
}

/// The result line of `workload` on the console (fails the test without
/// one).
fn expect_result(console: &str, workload: &str) -> serde_json::Value {
    console
        .lines()
        .map(|l| l.trim())
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["workload"] == workload)
        .unwrap_or_else(|| panic!("no {workload} result line; console:\n{console}"))
}

/// Fails the test, showing the console, unless `line` is on it.
fn assert_logged(console: &str, line: &str) {
    assert!(console.contains(line), "{console}");
}

#[test]
fn qemu_microvm_boots_guest_to_init_and_workload_ready_and_exit() {
    let Some(a) = probe("qemu_microvm_boots_guest_to_init_and_workload_ready_and_exit") else {
        return;
    };
    let console = boot(
        &a,
        "isolab.workload=noop isolab.console=1 isolab.hostname=qemu-guest",
    );
    let ctx = || format!("console:\n{console}");
    let pos = |needle: &str| {
        console
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing; {}", ctx()))
    };
    // The order a monitor would see as markers 123, 0x01, 0x02, 0x03.
    let reached = pos("isolab-init: init reached");
    let started = pos("isolab-init: started /workload noop");
    let ready = pos("isolab-init: ready");
    let exited = pos("isolab-init: workload exited with status 0");
    assert!(
        reached < started && started < ready && ready < exited,
        "{}",
        ctx()
    );
    let result = expect_result(&console, "noop");
    assert_eq!(result["ok"], true, "{}", ctx());
    assert!(!console.contains("isolab-init: error"), "{}", ctx());
    assert!(
        !console.contains("isolab-init: warning"),
        "marker ports must be available; {}",
        ctx()
    );
}

#[test]
fn qemu_guest_runs_its_own_kernel() {
    let Some(a) = probe("qemu_guest_runs_its_own_kernel") else {
        return;
    };
    let console = boot(
        &a,
        "isolab.workload=probe isolab.console=1 isolab.hostname=qemu-guest",
    );
    let probe = expect_result(&console, "probe");
    let guest_release = probe["kernel"]["release"]
        .as_str()
        .expect("kernel.release in the probe")
        .to_string();
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_ne!(
        guest_release, host_release,
        "the guest must run its own kernel"
    );
    assert!(
        guest_release.starts_with("6.1."),
        "guest kernel {guest_release} is not the 6.1 build"
    );
    assert_eq!(
        probe["hostname"], "qemu-guest",
        "isolab.hostname= was not applied"
    );
    assert_eq!(
        probe["pid1_comm"], "init",
        "PID 1 in the guest is our /init"
    );
}

#[test]
fn qemu_guest_reports_a_missing_workload_name_as_status_255() {
    let Some(a) = probe("qemu_guest_reports_a_missing_workload_name_as_status_255") else {
        return;
    };
    // No isolab.workload=: init must say so, report 255 and still power off.
    let console = boot(&a, "isolab.console=1");
    assert_logged(
        &console,
        "isolab-init: error: bad kernel command line: no isolab.workload=",
    );
    assert_logged(&console, "isolab-init: reporting status 255");
}

#[test]
fn qemu_guest_configures_eth0_from_the_command_line() {
    let Some(a) = probe("qemu_guest_configures_eth0_from_the_command_line") else {
        return;
    };
    // One virtio-mmio net device; microvm appends its virtio_mmio.device=
    // parameter itself. User-mode networking with restrict=on: the guest's
    // addresses live inside QEMU only and nothing reaches the host network.
    let console = boot_with(
        &a,
        "isolab.workload=probe isolab.console=1 isolab.ip=10.0.2.15/24 isolab.gw=10.0.2.2",
        &[
            "-netdev",
            "user,id=n0,restrict=on",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
    );
    assert_logged(&console, "isolab-init: eth0 10.0.2.15/24 up");
    let probe = expect_result(&console, "probe");
    let ifaces: Vec<&str> = probe["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        ifaces.contains(&"eth0") && ifaces.contains(&"lo"),
        "interfaces {ifaces:?}"
    );
}

/// Port writes to 0x3f0..=0x3f2 in QEMU's `memory_region_ops_write` trace
/// (QEMU has no device there, so every write lands on the `io` root region).
fn marker_writes(trace: &str) -> Vec<(u16, u8)> {
    trace
        .lines()
        .filter(|l| l.starts_with("memory_region_ops_write") && l.ends_with("name 'io'"))
        .filter_map(|l| {
            let field = |key: &str| {
                let rest = &l[l.find(key)? + key.len()..];
                let v = rest.split_whitespace().next()?;
                u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
            };
            let port = u16::try_from(field(" addr ")?).ok()?;
            let value = u8::try_from(field(" value ")?).ok()?;
            (0x3f0..=0x3f2).contains(&port).then_some((port, value))
        })
        .collect()
}

#[test]
fn qemu_sees_the_marker_abi_port_writes() {
    let test = "qemu_sees_the_marker_abi_port_writes";
    let Some(a) = probe(test) else { return };
    let trace_path = a.dir.path().join("trace.log");
    let trace_arg = trace_path.to_str().unwrap().to_string();
    // No isolab.console=1: the result must arrive on port 0x3f2 alone.
    let console = boot_with(
        &a,
        "isolab.workload=noop quiet",
        &["-trace", "memory_region_ops_write", "-D", &trace_arg],
    );
    let trace = std::fs::read_to_string(&trace_path).unwrap_or_default();
    if !trace.contains("memory_region_ops_write") {
        isolab_testkit::require(
            test,
            Some("this QEMU build writes no trace events (no `log` trace backend)".into()),
        );
        return;
    }
    let writes = marker_writes(&trace);
    let events: Vec<u8> = writes
        .iter()
        .filter(|(p, _)| *p == 0x3f0)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        events,
        [123, 0x01, 0x02, 0x03],
        "init, started, ready, exited; writes {writes:?}"
    );
    // The status byte (0 for noop) is written right before MARK_EXITED.
    assert_eq!(&writes[writes.len() - 2..], &[(0x3f1, 0), (0x3f0, 0x03)]);
    let stdout: Vec<u8> = writes
        .iter()
        .filter(|(p, _)| *p == 0x3f2)
        .map(|(_, v)| *v)
        .collect();
    let line = String::from_utf8(stdout).expect("utf-8 result");
    let v: serde_json::Value =
        serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["workload"], "noop");
    assert_eq!(v["ok"], true);
    assert!(
        !console.contains("{\"workload\""),
        "without isolab.console=1 the result stays off the console"
    );
}

#[test]
fn qemu_guest_oom_kill_is_reported_as_status_137() {
    let Some(a) = probe("qemu_guest_oom_kill_is_reported_as_status_137") else {
        return;
    };
    // `hog` grows until stopped; the guest's own OOM killer stops it (the
    // guest has 128 MiB, below hog's hard cap) and init reports 128+SIGKILL.
    // The later -m overrides the default 256 MiB.
    let console = boot_with(
        &a,
        "isolab.workload=hog isolab.console=1 quiet",
        &["-m", "128"],
    );
    assert_logged(&console, "Out of memory: Killed process");
    assert_logged(&console, "isolab-init: workload exited with status 137");
}

/// Kills the QEMU this test started when dropped, so a failed assertion
/// leaves no process behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemu_guest_api_answers_http_through_virtio_net() {
    use std::io::Write;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    let Some(a) = probe("qemu_guest_api_answers_http_through_virtio_net") else {
        return;
    };
    // A free loopback port for QEMU's forward (host side: 127.0.0.1 only).
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let console_path = a.dir.path().join("console.txt");
    let console_file = std::fs::File::create(&console_path).unwrap();
    let netdev = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:8080");
    let _qemu = KillOnDrop(
        qemu(
            &a,
            &a.bz_image,
            "quiet isolab.workload=api isolab.console=1 isolab.ip=10.0.2.15/24 isolab.gw=10.0.2.2",
        )
        .args(["-netdev", &netdev, "-device", "virtio-net-device,netdev=n0"])
        .stdout(Stdio::from(console_file))
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64"),
    );
    let console = || std::fs::read_to_string(&console_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    while !console().contains("isolab-init: ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "api never became ready; console:\n{}",
            console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("{\"status\":\"ok\"}"), "{reply}");
}

#[test]
fn qemu_boots_vmlinux_through_pvh_with_two_vcpus() {
    let Some(a) = probe("qemu_boots_vmlinux_through_pvh_with_two_vcpus") else {
        return;
    };
    // vmlinux (what our monitor loads) enters through the PVH note; the two
    // CPUs are found through the MP table (no ACPI in this kernel).
    let console = boot_kernel(
        &a,
        &a.vmlinux,
        "isolab.workload=probe isolab.console=1",
        &["-smp", "2"],
    );
    let probe = expect_result(&console, "probe");
    assert_eq!(probe["cpus_online"], 2, "{console}");
    assert_logged(&console, "isolab-init: workload exited with status 0");
}
