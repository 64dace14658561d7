//! Real boots of the emulated host (QEMU TCG with emulated SVM). Each test
//! boots once and checks several things from that boot: a boot costs
//! seconds under TCG.
//!
//! Probe: QEMU, a static busybox and the cloud kernel (cached, or fetched
//! with apt) must be available; without them the test prints `SKIPPED` and
//! returns, or fails when `CI=true` / `ISOLAB_STRICT=1`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use isolab_emuhost::{EmuhostError, EmulatedHost, FileMap, HostConfig, Invocation, RunError};

/// The prepared host, or `None` after printing why the test is skipped.
fn host(test: &str, config: HostConfig) -> Option<EmulatedHost> {
    match EmulatedHost::prepare(config) {
        Ok(h) => Some(h),
        Err(e) => {
            isolab_testkit::require(test, Some(format!("emulated host unavailable: {e}")));
            None
        }
    }
}

/// A tag on the emulated host's kernel command line, so this test can find
/// its own QEMU among parallel ones.
fn tagged(test: &str) -> HostConfig {
    HostConfig {
        extra_append: vec![format!("isolab.test={test}-{}", std::process::id())],
        ..HostConfig::default()
    }
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

fn run(
    host: &EmulatedHost,
    inv: &Invocation,
) -> (Result<isolab_emuhost::Outcome, EmuhostError>, Vec<String>) {
    let mut lines = Vec::new();
    let r = host.run(inv, &mut |l| {
        println!("inner: {l}");
        lines.push(l.to_string());
    });
    (r, lines)
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[test]
fn boots_with_nested_kvm_and_pure_cgroup2_and_reports_status_0() {
    let test = "boots_with_nested_kvm_and_pure_cgroup2_and_reports_status_0";
    let Some(host) = host(test, tagged(test)) else {
        return;
    };
    let script = "\
        echo release=$(uname -r); \
        test -c /dev/kvm && echo kvm=char-device; \
        grep -q '^kvm_amd ' /proc/modules && echo kvm_amd=loaded; \
        echo fstype=$(awk '$2 == \"/sys/fs/cgroup\" {print $3}' /proc/mounts); \
        echo controllers=$(cat /sys/fs/cgroup/cgroup.controllers); \
        echo subtree=$(cat /sys/fs/cgroup/cgroup.subtree_control); \
        cat /data/hello.txt";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "payload-arrived\n").unwrap();
    let inv = Invocation {
        command: sh(script),
        files: vec![FileMap {
            host: dir.path().join("hello.txt"),
            guest: "/data/hello.txt".into(),
        }],
        ..Invocation::default()
    };
    let (outcome, lines) = run(&host, &inv);
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, 0, "{lines:?}");
    let value = |key: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= line in {lines:?}"))
            .to_string()
    };
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(value("release"), host.kernel().meta.release);
    assert_ne!(value("release"), host_release.trim());
    assert_eq!(value("kvm"), "char-device");
    assert_eq!(value("kvm_amd"), "loaded");
    assert_eq!(value("fstype"), "cgroup2");
    let controllers = value("controllers");
    for c in ["cpu", "memory", "pids"] {
        assert!(
            controllers.split(' ').any(|x| x == c),
            "{c} missing: {controllers}"
        );
        assert!(
            value("subtree").split(' ').any(|x| x == c),
            "{c} not enabled for children"
        );
    }
    assert!(lines.iter().any(|l| l == "payload-arrived"), "{lines:?}");
    let to_command = outcome.to_command.expect("RUN marker seen");
    println!(
        "emulated host start to command: {:.2} s",
        to_command.as_secs_f64()
    );
    assert!(processes_with(&host.config().extra_append[0]).is_empty());
}

#[test]
fn nonzero_and_signal_statuses_pass_through() {
    let test = "nonzero_and_signal_statuses_pass_through";
    let Some(host) = host(test, tagged(test)) else {
        return;
    };
    let inv = Invocation {
        command: sh("echo before; (kill -TERM $$); echo not-reached; exit 3"),
        ..Invocation::default()
    };
    let (outcome, lines) = run(&host, &inv);
    // The shell killed by SIGTERM (15) reports 128+15, as a shell does.
    assert_eq!(outcome.unwrap().status, 143, "{lines:?}");
    assert!(lines.iter().any(|l| l == "before"));
    assert!(!lines.iter().any(|l| l == "not-reached"));
}

#[test]
fn timeout_kills_qemu_and_leaves_no_process() {
    let test = "timeout_kills_qemu_and_leaves_no_process";
    let config = HostConfig {
        timeout_s: 25,
        ..tagged(test)
    };
    let Some(host) = host(test, config) else {
        return;
    };
    let tag = host.config().extra_append[0].clone();
    let inv = Invocation {
        command: sh("echo sleeping; sleep 600"),
        ..Invocation::default()
    };
    let started = std::time::Instant::now();
    let (outcome, _) = run(&host, &inv);
    let err = outcome.unwrap_err();
    assert!(
        matches!(err, EmuhostError::Run(RunError::Timeout { secs: 25, .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("did not finish within 25 s"),
        "{err}"
    );
    // Killed promptly, not after the command's 600 s.
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(processes_with(&tag).is_empty(), "QEMU left running");
}

#[test]
fn cancelling_a_run_kills_qemu_and_leaves_no_process() {
    let test = "cancelling_a_run_kills_qemu_and_leaves_no_process";
    let Some(mut host) = host(test, tagged(test)) else {
        return;
    };
    let tag = host.config().extra_append[0].clone();
    let flag = Arc::new(AtomicBool::new(false));
    host.set_cancel_flag(flag.clone());
    let setter = std::thread::spawn({
        let tag = tag.clone();
        move || {
            // Cancel once QEMU is seen running (or after 30 s regardless).
            for _ in 0..300 {
                if !processes_with(&tag).is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(2));
            flag.store(true, Ordering::SeqCst);
        }
    });
    let inv = Invocation {
        command: sh("sleep 600"),
        ..Invocation::default()
    };
    let (outcome, _) = run(&host, &inv);
    setter.join().unwrap();
    let err = outcome.unwrap_err();
    assert!(
        matches!(err, EmuhostError::Run(RunError::Interrupted)),
        "{err}"
    );
    assert!(processes_with(&tag).is_empty(), "QEMU left running");
}
