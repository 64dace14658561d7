//! A user's own image through the CLI, for real, as root, with the real
//! test images of crates/image (busybox httpd and nginx from Debian's
//! packages, built once by its build-test-images.sh with podman, skopeo
//! and umoci, cached by the script's hash): `bench container run --image`
//! answers, and `bench compare --image` measures process, container,
//! runc and gVisor on nginx and prints the report naming the image and
//! its ready rule. Timings are never asserted.
//!
//! Needs root, cgroups and namespaces, podman/skopeo/umoci/busybox-static
//! (for the images), runc and runsc; without them each test prints
//! `SKIPPED <test>: <reason>` (strict mode: fails).

#[path = "../../image/tests/common/mod.rs"]
mod common;

use std::process::Command;

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bench"));
    c.env("ISOLAB_PROGRESS", "0");
    c
}

/// The image tests' images, once the host can run containers.
fn images(test: &str) -> Option<std::path::PathBuf> {
    if !isolab_testkit::require(test, isolab_testkit::missing_container()) {
        return None;
    }
    common::test_images(test)
}

#[test]
fn container_run_serves_a_busybox_httpd_image() {
    let test = "container_run_serves_a_busybox_httpd_image";
    let Some(dir) = images(test) else { return };
    let out = bench()
        .args(["container", "run", "--image"])
        .arg(dir.join("httpd-oci.tar"))
        .args(["--ready", "http:80/"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/bin/httpd -f"), "{stdout}");
    assert!(
        stdout.contains("launch -> ready") && stdout.contains("ms (http:80/)"),
        "{stdout}"
    );

    // `-- ARGS` replace the command; `--ready exit` is its completion,
    // and its status is ours.
    let out = bench()
        .args(["container", "run", "--image"])
        .arg(dir.join("httpd-docker.tar"))
        .args(["--ready", "exit", "--", "sh", "-c", "exit 4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

#[test]
fn compare_measures_nginx_in_every_container_mode_and_peer() {
    let test = "compare_measures_nginx_in_every_container_mode_and_peer";
    let Some(dir) = images(test) else { return };
    if !isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_command("runc", "runc"),
            isolab_testkit::missing_command("runsc", "runsc"),
        ]),
    ) {
        return;
    }
    let out = bench()
        .args(["compare", "--image"])
        .arg(dir.join("nginx-oci.tar"))
        .args([
            "--ready",
            "http:80/",
            "--modes",
            "process,container,microvm",
            "--peers",
            "runc,gvisor",
            "--runs",
            "2",
            "--warmup",
            "0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("isolab compare: image 'nginx-oci.tar' (--ready http:80/)"),
        "{stdout}"
    );
    for mode in ["process", "container", "runc", "gvisor"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{mode} ")) && l.contains("measured")),
            "{mode} not measured:\n{stdout}"
        );
    }
    // The microVM cannot run an image (yet, or not on this host): listed,
    // not failed.
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("microvm ") && l.contains("not run")),
        "{stdout}"
    );
    assert!(stdout.contains("ready (--ready http:80/)"), "{stdout}");
    assert!(
        stdout.contains("image: ") && stdout.contains("/usr/sbin/nginx"),
        "{stdout}"
    );
}
