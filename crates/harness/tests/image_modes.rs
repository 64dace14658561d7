//! A user's image run by the modes, for real, as root, over a busybox
//! rootfs built here (the host's static busybox, the same as the image
//! tests' busybox httpd image; crates/image/tests covers unpacking real
//! archives): process mode chroots into it, container mode runs it over
//! an overlay on it; readiness is observed from outside (`--ready`).
//!
//! Needs root, cgroups and namespaces, a static `busybox` (Debian package
//! `busybox-static`) and the binaries built beside the test; without them
//! each test prints `SKIPPED <test>: <reason>` (strict mode: fails).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isolab_harness::image::{ImageWorkload, ReadyRule};
use isolab_harness::modes::{Context, InstanceSpec, ModeKind};
use isolab_harness::Workload;
use isolab_image::{ExposedPort, RunSpec};

fn ready(test: &str, container: bool) -> bool {
    isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            if container {
                isolab_testkit::missing_container()
            } else {
                isolab_testkit::missing_root()
            },
            isolab_testkit::which("busybox")
                .is_none()
                .then(|| "busybox is not installed (Debian package busybox-static)".into()),
            isolab_testkit::missing_binary("workload", "isolab-workload"),
        ]),
    )
}

/// A busybox rootfs serving `/www`, like the tests' busybox httpd image
/// but without `/proc`, `/sys` and `/dev` (the runtimes make their mount
/// points) and with a non-root user.
fn rootfs(dir: &Path) {
    // An image's root is 0755 (a temp dir is 0700).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["bin", "etc", "www", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(
        isolab_testkit::which("busybox").unwrap(),
        dir.join("bin/busybox"),
    )
    .unwrap();
    for a in ["sh", "httpd", "id", "pwd", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nwww:x:33:33::/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("www/index.html"), "<h1>image</h1>\n").unwrap();
}

fn image(root: &Path, args: &[&str], ready: &str, uid: u32) -> Arc<ImageWorkload> {
    Arc::new(ImageWorkload {
        label: "busybox-test".into(),
        key: None,
        run: RunSpec {
            rootfs: root.to_path_buf(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            cwd: "/www".into(),
            uid,
            gid: uid,
            additional_gids: vec![],
            exposed_ports: ExposedPort::parse("80/tcp").into_iter().collect(),
        },
        ready: ready.parse::<ReadyRule>().unwrap(),
    })
}

fn spec(img: Arc<ImageWorkload>) -> InstanceSpec {
    let workload = if img.ready == ReadyRule::Exit {
        Workload::Noop
    } else {
        Workload::Api
    };
    let mut s = InstanceSpec::new(workload, &[]);
    s.image = Some(img);
    s
}

/// An HTTP server answers (ready = its first response), then a command's
/// output, user and working directory are the image's.
fn runs_in(kind: ModeKind, test: &str) {
    let dir = tempfile::tempdir().unwrap();
    rootfs(dir.path());
    let ctx = Context::new(Workload::Api).expect("binaries beside the test");
    let l = ctx.launcher(kind);
    assert_eq!(l.unavailable(), None);
    // Process mode shares the host's network namespace: a free port there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = port.to_string();
    let httpd = image(
        dir.path(),
        &["httpd", "-f", "-p", &p, "-h", "/www"],
        &format!("http:{port}/"),
        0,
    );
    let mut inst = l.launch(&spec(httpd)).expect("the image launches");
    let at = inst
        .wait_ready(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    assert!(at >= inst.launched_at());
    let out = inst.stop().unwrap();
    assert!(!out.timed_out);

    let cmd = image(
        dir.path(),
        &["sh", "-c", "echo \"$GREETING $(id -u) $(pwd) done\" >&2"],
        "log:done",
        33,
    );
    let mut inst = l.launch(&spec(cmd)).expect("the image launches");
    inst.wait_ready(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let out = inst.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(out.status, Some(0), "{out:?}");
    if kind == ModeKind::Process {
        assert_eq!(out.stderr_tail, ["hello 33 /www done"]);
    }

    let exit = image(dir.path(), &["sh", "-c", "exit 3"], "exit", 0);
    let mut inst = l.launch(&spec(exit)).expect("the image launches");
    inst.wait_ready(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let out = inst.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(out.status, Some(3), "{out:?}");

    let missing = image(dir.path(), &["nginx"], "exit", 0);
    let e = l.launch(&spec(missing)).err().expect("no such program");
    assert!(e.is_usage() && e.to_string().contains("nginx"), "{e}");
}

#[test]
fn process_mode_runs_an_image_chrooted() {
    let test = "process_mode_runs_an_image_chrooted";
    if ready(test, false) {
        runs_in(ModeKind::Process, test);
    }
}

#[test]
fn container_mode_runs_an_image_over_an_overlay() {
    let test = "container_mode_runs_an_image_over_an_overlay";
    if ready(test, true) {
        runs_in(ModeKind::Container, test);
    }
}

#[test]
fn runc_runs_an_image() {
    let test = "runc_runs_an_image";
    if ready(test, true)
        && isolab_testkit::require(test, isolab_testkit::missing_command("runc", "runc"))
    {
        runs_in(ModeKind::Runc, test);
    }
}

#[test]
fn crun_runs_an_image() {
    let test = "crun_runs_an_image";
    if ready(test, true)
        && isolab_testkit::require(test, isolab_testkit::missing_command("crun", "crun"))
    {
        // crun runs the image, or its own refusal is surfaced (Debian 12's
        // crun refuses a hybrid cgroup host).
        let dir = tempfile::tempdir().unwrap();
        rootfs(dir.path());
        let ctx = Context::new(Workload::Noop).expect("binaries beside the test");
        // A log rule, not exit: a refusal also ends the runtime.
        let img = image(
            dir.path(),
            &["sh", "-c", "echo isolab-ready; sleep 5"],
            "log:isolab-ready",
            0,
        );
        let mut inst = ctx.launcher(ModeKind::Crun).launch(&spec(img)).unwrap();
        match inst.wait_ready(Duration::from_secs(30)) {
            Err(e)
                if e.to_string()
                    .contains("crun ended before the image was ready: ") =>
            {
                eprintln!("{test}: crun refused, with its reason: {e}");
                let _ = inst.wait_exit(Duration::from_secs(5));
            }
            Err(e) => panic!("{test}: {e}"),
            Ok(_) => {
                let _ = inst.stop();
                runs_in(ModeKind::Crun, test);
            }
        }
    }
}

#[test]
fn gvisor_runs_an_image() {
    let test = "gvisor_runs_an_image";
    if ready(test, true)
        && isolab_testkit::require(test, isolab_testkit::missing_command("runsc", "runsc"))
    {
        runs_in(ModeKind::Gvisor, test);
    }
}
