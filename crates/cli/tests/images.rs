//! A user's own image through the CLI, for real, as root, with the real
//! test images of crates/image (busybox httpd and nginx from Debian's
//! packages, built once by its build-test-images.sh with podman, skopeo
//! and umoci, cached by the script's hash): `bench container run --image`
//! answers, and `bench compare --image` measures process, container,
//! runc and gVisor on nginx and prints the full report (cost and
//! isolation) naming the image and its ready rule, leaving the unpacked
//! image in the cache as it was; with a rule that is not HTTP it says why
//! the request-driven scenarios did not run, and `--density` runs where N
//! copies can coexist. The microVM and QEMU's microvm boot the busybox
//! httpd image (in the emulated host on a PVM host, strict mode). Timings
//! are never asserted.
//!
//! Needs root, cgroups and namespaces, podman/skopeo/umoci/busybox-static
//! (for the images), runc and runsc; without them each test prints
//! `SKIPPED <test>: <reason>` (strict mode: fails).

#[path = "../../image/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// Every path under the unpacked images of the cache, with its size and
/// modification time.
fn cached_rootfs() -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, (u64, std::time::SystemTime)>) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        out.insert(p.to_path_buf(), (m.len(), m.modified().unwrap()));
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let images = common::cache_root().join("images");
    for e in std::fs::read_dir(&images).into_iter().flatten().flatten() {
        walk(&e.path().join("rootfs"), &mut out);
    }
    out
}

/// The lines of the section titled `title` (up to the next blank line).
fn section<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(title))
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

fn row_of<'a>(lines: &[&'a str], mode: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.trim_start().starts_with(&format!("{mode} ")))
        .copied()
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
    // Unpacked (and run once in process mode): the cache as it is now.
    let out = bench()
        .args(["compare", "--image"])
        .arg(dir.join("nginx-oci.tar"))
        .args(["--modes", "process", "--peers", "none", "--runs", "1"])
        .args(["--warmup", "0", "--isolation", "off"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cache_before = cached_rootfs();
    assert!(
        cache_before.keys().any(|p| p.ends_with("usr/sbin/nginx")),
        "the nginx image is unpacked in the cache"
    );
    // The default run: cost and the isolation half (short budget). crun
    // may refuse on this host (hybrid cgroups): reported with its error.
    let out = bench()
        .args(["compare", "--image"])
        .arg(dir.join("nginx-oci.tar"))
        .args([
            "--ready",
            "http:80/",
            "--modes",
            "process,container,microvm",
            "--peers",
            "runc,crun,gvisor",
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

    // The isolation half, on the image: nginx is the tenant beside our
    // storms, the traced instance, and its posture is read from the host.
    let noisy = section(&stdout, "Noisy neighbour (tenant nginx-oci.tar");
    let surface = section(&stdout, "Host system calls serving the instance");
    let posture = section(&stdout, "Security posture");
    for mode in ["process", "container", "runc", "gvisor"] {
        for kind in ["cpu", "memory", "fork"] {
            assert!(
                noisy.iter().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 2 && f[0] == mode && f[1] == kind
                }),
                "{mode} {kind} neighbour row:\n{stdout}"
            );
        }
        assert!(row_of(&surface, mode).is_some(), "{mode} traced:\n{stdout}");
        assert!(
            row_of(&posture, mode).is_some(),
            "{mode} posture:\n{stdout}"
        );
    }
    for mode in ["process", "container", "runc"] {
        let row = row_of(&posture, mode).unwrap();
        assert!(row.contains("host's"), "{row}");
        assert!(
            posture.iter().any(|l| l
                .contains(&format!("{mode}: workload side: read from the host"))
                && l.contains("(nginx)")),
            "{mode}:\n{stdout}"
        );
    }
    assert!(row_of(&posture, "gvisor").unwrap().contains("own"));
    // crun: measured or refused with its own error, never silently absent.
    assert!(
        noisy.iter().any(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with("crun ") || t.starts_with("crun: ")
        }),
        "{stdout}"
    );
    assert!(stdout.contains("GET / on port 80"), "{stdout}");
    assert!(!stdout.contains("GET /health"), "{stdout}");

    // Every instance wrote into a layer of its own: the cache is as it was
    // (nginx writes /run/nginx.pid and its logs), and no layer is left.
    assert_eq!(cached_rootfs(), cache_before, "the unpacked image changed");
    assert!(!Path::new("/run/isolab/layers").exists());
}

#[test]
fn compare_without_an_http_rule_says_why_and_density_runs_where_copies_coexist() {
    let test = "compare_without_an_http_rule_says_why_and_density_runs_where_copies_coexist";
    let Some(dir) = images(test) else { return };
    let out = bench()
        .args(["compare", "--image"])
        .arg(dir.join("nginx-oci.tar"))
        .args(["--ready", "tcp:80", "--modes", "process,container"])
        .args(["--peers", "none", "--runs", "1", "--warmup", "0"])
        .args(["--density", "--max-instances", "2", "--format", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("noisy neighbour and host system calls: not run: the request-driven scenarios need an HTTP ready rule (--ready http:PORT/PATH); nginx-oci.tar is ready by --ready tcp:80"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/compare.v2.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The image in the config: what was named, its key, command and rule.
    let image = &doc["config"]["image"];
    assert!(image["label"].as_str().unwrap().ends_with("nginx-oci.tar"));
    assert!(image["key"].as_str().unwrap().starts_with("sha256-"));
    assert_eq!(image["command"][0], "/usr/sbin/nginx");
    assert_eq!(image["ready"], "tcp:80");
    // The request-driven scenarios say why they did not run, per mode.
    for pass in ["neighbours", "surface"] {
        for m in doc[pass].as_array().unwrap() {
            assert_eq!(m["status"]["state"], "unavailable", "{pass}: {m}");
            assert!(
                m["status"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("need an HTTP ready rule"),
                "{m}"
            );
        }
    }
    // Posture needs no requests: the image's process read from the host.
    let posture = doc["posture"].as_array().unwrap();
    let container = posture.iter().find(|m| m["mode"] == "container").unwrap();
    assert_eq!(container["workload"]["kernel"]["kind"], "host");
    assert!(container["workload_read"]
        .as_str()
        .unwrap()
        .contains("read from the host"));
    // Density: copies on the host's network cannot share port 80; each
    // container has its own namespace.
    let density = doc["density"].as_array().unwrap();
    let of = |m: &str| density.iter().find(|d| d["mode"] == m).unwrap();
    assert_eq!(of("process")["stop_rule"], "unavailable");
    assert!(of("process")["stop_detail"]
        .as_str()
        .unwrap()
        .contains("fixed port 80 cannot run together"));
    assert_eq!(of("container")["count"], 2, "{}", of("container"));
}

/// `bench compare --image <busybox httpd> --ready http:80/` in our
/// microVM, QEMU's microvm (the image's erofs disk and spec initramfs on
/// both) and our container: on this host's KVM where it boots Linux, else
/// (strict mode, PVM host) with `--host emulated`, the image's cache entry
/// carried into ONE emulated-host boot. Every row has ready times and the
/// report names the image and, from the emulated host, says so.
#[test]
fn compare_runs_an_image_in_the_microvm_and_qemu() {
    let test = "compare_runs_an_image_in_the_microvm_and_qemu";
    let need = isolab_testkit::first_missing([
        isolab_testkit::missing_kvm(),
        isolab_testkit::missing_command("qemu-system-x86_64", "qemu-system-x86"),
    ]);
    if !isolab_testkit::require(test, need) {
        return;
    }
    let host = match isolab_microvm::host::detect(Path::new("/")).refusal() {
        None => "native",
        Some(_) if isolab_testkit::strict() => "emulated",
        Some(why) => return isolab_testkit::skipped(test, why),
    };
    let Some(dir) = images(test) else { return };
    let out = bench()
        .args(["compare", "--image"])
        .arg(dir.join("httpd-oci.tar"))
        .args(["--ready", "http:80/", "--modes", "microvm,container"])
        .args(["--peers", "qemu-microvm", "--runs", "2", "--warmup", "0"])
        .args(["--isolation", "off", "--format", "json", "--host", host])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert!(doc["config"]["image"]["label"]
        .as_str()
        .unwrap()
        .ends_with("httpd-oci.tar"));
    assert_eq!(doc["config"]["image"]["ready"], "http:80/");
    if host == "emulated" {
        assert_eq!(
            doc["environment"]["label"],
            "emulated host: timings not comparable to hardware"
        );
    }
    for mode in ["microvm", "qemu-microvm", "container"] {
        let m = doc["modes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mode"] == mode)
            .unwrap_or_else(|| panic!("no {mode} row: {stdout}"));
        assert_eq!(m["status"]["state"], "measured", "{mode}: {m}\n{stderr}");
        let ready: Vec<f64> = m["raw_ready_ms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
        assert_eq!(ready.len(), 2, "{mode}: {m}");
        eprintln!("{test}: {mode} ready {ready:?} ms (--host {host})");
    }
}
