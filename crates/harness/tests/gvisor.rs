//! gVisor as a peer, for real, as root: `runsc` runs our OCI bundle
//! through the registry's launcher; `noop` exits 0, `api` answers (ready =
//! first response, at its address on the workbench bridge), `probe` sees
//! gVisor's kernel, not the host's; and after every stop no runsc process (run, gofer, sandbox) of this test is left,
//! as `ps` shows, nor its bundle.
//!
//! Needs root, cgroups and namespaces, `runsc` (Debian package `runsc`)
//! and the `workload` binary built next to the test binary; without them
//! each test prints `SKIPPED <test>: <reason>` (strict mode: fails).
//! The tests share this process's runsc root, so they run one at a time.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isolab_harness::modes::{Context, Instance, InstanceSpec, ModeKind};
use isolab_harness::Workload;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn ready(test: &str) -> bool {
    isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_container(),
            isolab_testkit::missing_command("runsc", "runsc"),
            isolab_testkit::missing_binary("workload", "isolab-workload"),
        ]),
    )
}

fn launch(workload: Workload) -> Box<dyn Instance> {
    let ctx = Context::new(workload).expect("binaries beside the test");
    let l = ctx.launcher(ModeKind::Gvisor);
    assert_eq!(l.unavailable(), None);
    l.launch(&InstanceSpec::measured(workload))
        .expect("runsc launches")
}

/// `ps` lines naming this test process's runsc peers (their bundles are
/// `isolab-runsc-<our pid>-<n>`: runsc run, its gofer and sandbox).
fn our_runsc_processes() -> Vec<String> {
    let mine = format!("isolab-runsc-{}-", std::process::id());
    let o = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(&mine))
        .map(str::to_owned)
        .collect()
}

/// Nothing of ours is left: no process (after a short grace: the sandbox's
/// stubs die with it), no bundle.
fn assert_nothing_left(pids: &[u32]) {
    let end = Instant::now() + Duration::from_secs(3);
    while !our_runsc_processes().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(our_runsc_processes(), Vec::<String>::new(), "runsc left");
    for p in pids {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmd).contains("runsc"),
            "host process {p} of the sandbox survived"
        );
    }
    let mine = format!("isolab-runsc-{}-", std::process::id());
    let bundles: Vec<String> = std::fs::read_dir(isolab_harness::stale::BUNDLES_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&mine))
        .collect();
    assert!(bundles.is_empty(), "bundles left: {bundles:?}");
}

#[test]
fn gvisor_runs_noop_to_status_zero_and_leaves_nothing() {
    let test = "gvisor_runs_noop_to_status_zero_and_leaves_nothing";
    if !ready(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut inst = launch(Workload::Noop);
    let launched = inst.launched_at();
    let at = inst
        .wait_ready(Duration::from_secs(60))
        .expect("ready (= exit)");
    assert!(at > launched);
    let out = inst.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(out.status, Some(0), "stderr: {:?}", out.stderr_tail);
    assert!(!out.timed_out);
    assert_eq!(
        out.fact("workload").and_then(|v| v.as_str()),
        Some("noop"),
        "the workload's result line came through runsc"
    );
    assert_nothing_left(&[]);
}

#[test]
fn gvisor_serves_api_on_its_first_response_and_stop_kills_the_sandbox() {
    let test = "gvisor_serves_api_on_its_first_response_and_stop_kills_the_sandbox";
    if !ready(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut inst = launch(Workload::Api);
    let launched = inst.launched_at();
    let at = inst
        .wait_ready(Duration::from_secs(60))
        .expect("the first response came");
    assert!(at > launched);
    let target = inst.http_target().expect("api serves HTTP");
    assert!(
        !target.target.addr.ip().is_loopback(),
        "probed at its address on the workbench bridge, as runc and our container: {}",
        target.target.addr
    );
    // It keeps answering after the first response.
    isolab_harness::net::first_response(
        &target.target,
        Instant::now(),
        Instant::now() + Duration::from_secs(10),
    )
    .expect("a second request is answered");
    let pids = inst.host_pids();
    let cmds: Vec<String> = pids
        .iter()
        .map(|p| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap())
                .replace('\0', " ")
        })
        .collect();
    for part in ["runsc-gofer", "runsc-sandbox"] {
        assert!(
            cmds.iter().any(|c| c.starts_with(part)),
            "{part} counted among the instance's host processes: {cmds:?}"
        );
    }
    assert!(inst.memory().pss > 0, "the sandbox's memory is measured");
    assert!(!our_runsc_processes().is_empty(), "ps sees the sandbox");
    let out = inst.stop().expect("stops");
    assert_eq!(
        out.status,
        Some(0),
        "SIGTERM reached the workload through runsc's control socket \
         (in the sandbox's network namespace): {:?}",
        out.stderr_tail
    );
    assert_eq!(
        out.fact("workload").and_then(|v| v.as_str()),
        Some("api"),
        "it printed its result line on the way out"
    );
    assert!(!out.timed_out);
    assert_nothing_left(&pids);
}

#[test]
fn gvisor_probe_sees_gvisors_kernel_not_the_hosts() {
    let test = "gvisor_probe_sees_gvisors_kernel_not_the_hosts";
    if !ready(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut inst = launch(Workload::Probe);
    inst.wait_ready(Duration::from_secs(60)).expect("ran");
    let out = inst.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(out.status, Some(0), "stderr: {:?}", out.stderr_tail);
    let kernel = out.fact("kernel").expect("the probe read uname");
    let host = nix::sys::utsname::uname().unwrap();
    let host_version = host.version().to_string_lossy().into_owned();
    let host_release = host.release().to_string_lossy().into_owned();
    eprintln!("gvisor kernel: {kernel}; host: {host_release} {host_version}");
    assert_ne!(
        kernel["version"].as_str(),
        Some(host_version.as_str()),
        "uname version inside gVisor is the Sentry's, not the host kernel's"
    );
    let boot = out
        .fact("boot_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(boot, Some(host_boot), "another kernel, another boot id");
    assert_nothing_left(&[]);
}
