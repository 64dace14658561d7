//! `bench provision` as a user runs it: exit codes and messages for bad
//! input, and the cached second call.

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bench"))
}

#[test]
fn unknown_workload_is_a_usage_error_naming_the_choices() {
    let out = bench()
        .args(["provision", "--workload", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'nope'") && err.contains("noop, api"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn missing_kernel_source_is_a_host_error_saying_what_to_install() {
    let cache = tempfile::tempdir().unwrap();
    let out = bench()
        .env("ISOLAB_CACHE", cache.path())
        .args([
            "provision",
            "--quiet",
            "--source",
            "/nonexistent/linux-source-9.9.tar.xz",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Without the binaries next to bench the binary check fails first (exit 1).
    if out.status.code() == Some(1) && err.contains("cargo build -p") {
        isolab_testkit::require(
            "missing_kernel_source_is_a_host_error_saying_what_to_install",
            Some(err.into_owned()),
        );
        return;
    }
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("/nonexistent/linux-source-9.9.tar.xz"),
        "{err}"
    );
    assert!(
        err.contains("apt-get install linux-source-6.1 flex bison bc libelf-dev libssl-dev"),
        "{err}"
    );
    // Nothing was built or left half-done in the cache.
    assert!(!cache.path().join("kernel").join("build").exists());
}

#[test]
fn second_provision_is_served_from_the_cache() {
    let test = "second_provision_is_served_from_the_cache";
    // Probe: a built kernel (a test must not start a minutes-long build).
    let opts = isolab_guest_kernel::BuildOptions::new(isolab_guest_kernel::cache_root().unwrap());
    let missing = isolab_guest_kernel::lookup(&opts)
        .ok()
        .flatten()
        .is_none()
        .then(|| "no guest kernel in the cache: run `bench provision`".to_owned());
    if !isolab_testkit::require(test, missing) {
        return;
    }
    let first = bench()
        .args(["provision", "--quiet", "--guest-only"])
        .output()
        .unwrap();
    if !first.status.success() {
        let err = String::from_utf8_lossy(&first.stderr);
        isolab_testkit::require(test, Some(format!("provisioning failed: {err}")));
        return;
    }
    let second = bench()
        .args(["provision", "--quiet", "--guest-only"])
        .output()
        .unwrap();
    assert!(second.status.success());
    let text = String::from_utf8_lossy(&second.stdout);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
            .to_string()
    };
    assert!(line("guest kernel").contains("(cached, config "), "{text}");
    assert!(line("initramfs").contains("(cached,"), "{text}");
    let vmlinux = line("vmlinux")
        .trim()
        .trim_start_matches("vmlinux")
        .trim()
        .to_string();
    assert!(std::path::Path::new(&vmlinux).is_file(), "{vmlinux}");
    assert!(
        text.contains("guest params  isolab.workload=noop"),
        "{text}"
    );
}
