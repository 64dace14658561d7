//! Guest tier: boots the project's guest kernel and initramfs (built by
//! `bench provision`, found in the artifact cache of docs/contracts.md) and
//! runs workloads in it.
//!
//! These need hardware virtualisation. On a host without it (no `/dev/kvm`,
//! or PVM KVM as on the project's CI machines) they print `SKIPPED` — except
//! in strict mode (`CI=true` / `ISOLAB_STRICT=1`), where each test runs this
//! very test binary (a static executable) inside the emulated host
//! (`isolab-emuhost`: QEMU TCG with emulated AMD SVM and nested KVM) and
//! passes only if the test passes there. Missing artifacts skip, or fail in
//! strict mode.

use std::path::{Path, PathBuf};
use std::time::Instant;

use isolab_microvm::{RunHooks, StopReason, VmConfig, VmReport};

mod common;

/// The provisioned kernel and initramfs, or why the test cannot run.
fn artifacts(test: &str) -> Option<(PathBuf, PathBuf)> {
    common::guest("guest_boot", test)
}

fn boot(kernel: &Path, initrd: &Path, workload: &str, vcpus: u8, mib: u64) -> VmReport {
    let mut c = VmConfig::new(kernel, workload);
    c.initrd = Some(initrd.to_path_buf());
    c.vcpus = vcpus;
    c.memory_mib = mib;
    isolab_microvm::run(&c, Instant::now(), RunHooks::default())
        .unwrap_or_else(|e| panic!("{workload} on {vcpus} vCPU / {mib} MiB: {e:#?}"))
}

#[test]
fn noop_boots_and_exits_zero_with_every_phase() {
    let Some((k, i)) = artifacts("noop_boots_and_exits_zero_with_every_phase") else {
        return;
    };
    // The smallest guest: 64 MiB, or more when the initramfs is large (the
    // debug binaries tests carry are ~27 MiB: the kernel keeps the initrd
    // and its unpacked copy at once, and a second vCPU's per-CPU memory
    // then leaves the workload no page: SIGBUS at exec).
    let initrd_mib = std::fs::metadata(&i).map(|m| m.len() >> 20).unwrap_or(0);
    let small = 64.max(2 * initrd_mib + 24);
    for (vcpus, mib) in [(1, small), (1, 256), (2, small), (2, 256)] {
        let r = boot(&k, &i, "noop", vcpus, mib);
        let label = format!("{vcpus} vCPU / {mib} MiB");
        assert_eq!(r.exit_status, Some(0), "{label}: {r:?}");
        assert_eq!(r.stop_reason, StopReason::WorkloadExited, "{label}");
        let p = &r.phases;
        for (name, v) in [
            ("vmm setup", p.vmm_setup_ms),
            ("kernel boot", p.kernel_boot_ms),
            ("init", p.init_ms),
            ("workload ready", p.workload_ready_ms),
        ] {
            assert!(v.is_some(), "{label}: phase {name} missing: {p:?}");
        }
        assert!(
            r.workload_output.contains("\"workload\":\"noop\""),
            "{label}: {}",
            r.workload_output
        );
        assert!(
            r.guest_memory.host_alignment_kib >= 2048,
            "{label}: guest RAM 2 MiB-aligned: {:?}",
            r.guest_memory
        );
        let m = r.memory_at_ready.expect("sampled at ready");
        eprintln!(
            "{label}: guest touched {} KiB, of it THP {} KiB, page {} KiB; VMM overhead {} KiB",
            m.guest_touched_kib, m.guest_thp_kib, m.guest_page_kib, m.vmm_overhead_kib
        );
        assert!(
            m.guest_touched_kib > 0 && m.vmm_overhead_kib > 0,
            "{label}: {m:?}"
        );
        assert!(
            m.guest_touched_kib <= mib * 1024,
            "{label}: guest RSS within guest RAM"
        );
    }
}

#[test]
fn guest_runs_its_own_kernel() {
    let Some((k, i)) = artifacts("guest_runs_its_own_kernel") else {
        return;
    };
    let r = boot(&k, &i, "probe", 1, 128);
    assert_eq!(r.exit_status, Some(0), "{r:?}");
    let line = r
        .workload_output
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("probe JSON");
    let v: serde_json::Value = serde_json::from_str(line).expect("probe output is JSON");
    let guest = v["kernel"]["release"]
        .as_str()
        .expect("kernel.release")
        .to_string();
    let host = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_ne!(guest, host, "guest and host kernels must differ");
}

/// The production configuration of `isolab-vmm`: the monitor confined
/// (seccomp on every thread, no capabilities) boots Linux to its workload
/// and back. Runs in a child process: confinement cannot be undone.
#[test]
fn noop_boots_confined() {
    const TEST: &str = "noop_boots_confined";
    if std::env::var_os("ISOLAB_CONFINE_CHILD").is_some() {
        let g = isolab_testkit::cached_guest().expect("artifacts in the child");
        let mut c = VmConfig::new(&g.vmlinux, "noop");
        c.initrd = Some(g.initramfs);
        c.seccomp = true;
        let r = isolab_microvm::run(&c, Instant::now(), RunHooks::default());
        // This thread is confined now: only write(2) and exit_group(2).
        let ok = matches!(&r, Ok(r) if r.exit_status == Some(0)
            && r.stop_reason == StopReason::WorkloadExited
            && r.memory_at_ready.is_some());
        println!("confined boot: {}", if ok { "ok" } else { "FAILED" });
        if let Err(e) = &r {
            println!("error: {e}");
        }
        std::process::exit(if ok { 0 } else { 1 });
    }
    if artifacts(TEST).is_none() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env("ISOLAB_CONFINE_CHILD", "1")
        .output()
        .expect("spawn the test binary");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("confined boot: ok"),
        "{out:?}"
    );
}
