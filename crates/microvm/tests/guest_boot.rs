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

use isolab_microvm::host;
use isolab_microvm::{RunHooks, StopReason, VmConfig, VmReport};

fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ISOLAB_STRICT").is_ok_and(|v| v == "1")
}

/// Prints the skip line straight to stderr in one write: libtest captures
/// `println!` of passing tests, and a skip must be visible.
fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn cache_root() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("ISOLAB_CACHE") {
        return Some(c.into());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(Path::new(&x).join("isolab"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/isolab"))
}

/// Newest file matching `pick` under `dir`'s entries.
fn newest(dir: &Path, pick: impl Fn(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| pick(&e.path()))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The provisioned kernel and initramfs, or why the test cannot run.
fn artifacts(test: &str) -> Option<(PathBuf, PathBuf)> {
    let kind = host::detect(Path::new("/"));
    if let Some(why) = kind.refusal() {
        if strict() && std::env::var_os("ISOLAB_EMULATED_HOST").is_none() {
            rerun_in_emulated_host(test);
        } else {
            skipped(test, why);
        }
        return None;
    }
    let found = find_artifacts();
    if found.is_none() {
        let reason = "no provisioned guest kernel/initramfs in the cache: run `bench provision`";
        if strict() {
            panic!("{test}: {reason} (strict mode)");
        }
        skipped(test, reason);
    }
    found
}

/// Runs `test` of this binary inside the emulated host, with the provisioned
/// guest kernel and initramfs copied in; panics unless it passes there.
fn rerun_in_emulated_host(test: &str) {
    use isolab_emuhost::{EmulatedHost, FileMap, HostConfig, Invocation};
    let (kernel, initrd) = find_artifacts().unwrap_or_else(|| {
        panic!("{test}: no provisioned guest kernel/initramfs: run `bench provision` (strict mode)")
    });
    let kernel_dir = kernel.parent().expect("kernel in its cache dir");
    let guest_cache = "/var/cache/isolab";
    let map = |host: &Path, guest: String| FileMap {
        host: host.to_path_buf(),
        guest,
    };
    let exe = std::env::current_exe().expect("test binary path");
    let inv = Invocation {
        command: vec![
            "/opt/isolab/test/guest_boot".into(),
            "--exact".into(),
            test.into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
        ],
        env: vec![
            ("ISOLAB_CACHE".into(), guest_cache.into()),
            ("CI".into(), "true".into()),
        ],
        files: vec![
            map(&exe, "/opt/isolab/test/guest_boot".into()),
            map(
                kernel_dir,
                format!(
                    "{guest_cache}/kernel/{}",
                    kernel_dir.file_name().unwrap().to_string_lossy()
                ),
            ),
            map(
                &initrd,
                format!(
                    "{guest_cache}/initramfs/{}",
                    initrd.file_name().unwrap().to_string_lossy()
                ),
            ),
        ],
    };
    let host = EmulatedHost::prepare(HostConfig::default())
        .unwrap_or_else(|e| panic!("{test}: cannot prepare the emulated host (strict mode): {e}"));
    let mut out = String::new();
    let outcome = host
        .run(&inv, &mut |l| {
            out.push_str(l);
            out.push('\n');
        })
        .unwrap_or_else(|e| panic!("{test}: the emulated host failed: {e}"));
    eprintln!("{test}: ran inside the emulated host (this host's KVM cannot boot Linux)");
    assert!(
        outcome.status == 0 && out.contains("test result: ok. 1 passed"),
        "{test} failed inside the emulated host (status {}):\n{out}",
        outcome.status
    );
}

fn find_artifacts() -> Option<(PathBuf, PathBuf)> {
    cache_root().and_then(|root| {
        let kernel = newest(&root.join("kernel"), |d| {
            let v = d.join("vmlinux");
            (d.join("meta.json").is_file() && v.is_file()).then_some(v)
        })?;
        let initrd = newest(&root.join("initramfs"), |p| {
            let name = p.file_name()?.to_str()?;
            (name.starts_with("guest-") && name.ends_with(".cpio")).then(|| p.to_path_buf())
        })?;
        Some((kernel, initrd))
    })
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
    for (vcpus, mib) in [(1, 64), (1, 256), (2, 64), (2, 256)] {
        let r = boot(&k, &i, "noop", vcpus, mib);
        let label = format!("{vcpus} vCPU / {mib} MiB");
        assert_eq!(r.exit_status, Some(0), "{label}: {r:?}");
        assert_eq!(r.stop_reason, StopReason::GuestReset, "{label}");
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
        let m = r.memory_at_ready.expect("sampled at ready");
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
