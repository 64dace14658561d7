//! The ftrace attack-surface measurement on a real kernel of our own: the
//! emulated host (this host's kernel is never traced: its tracefs is a host
//! setting, and it has none). In strict mode the test binary reruns itself
//! inside the emulated host; every test of this file runs in that one boot.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use isolab_isolation::hap::{
    HapConfig, HapSession, NotMeasured, EMULATED_HOST_ENV, INSTANCE_PREFIX,
};
use isolab_testkit::{missing_binary, require, strict};

fn in_emulated_host() -> bool {
    std::env::var(EMULATED_HOST_ENV).is_ok_and(|v| v == "1")
}

#[test]
fn on_this_hosts_kernel_it_is_not_measured_and_says_why() {
    if in_emulated_host() {
        return; // there the kernel is ours; the other test measures
    }
    let r = HapSession::start(&HapConfig::detect(), &[std::process::id()]).unwrap();
    let why = r.unwrap_err();
    assert_eq!(why, NotMeasured::HostKernel);
    assert!(why.to_string().contains("--host emulated"));
}

fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    t.lines().next().unwrap_or_default().to_owned()
}

fn our_instances(tracefs: &Path) -> Vec<String> {
    std::fs::read_dir(tracefs.join("instances"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(INSTANCE_PREFIX))
        .collect()
}

#[test]
fn kernel_functions_of_a_serving_workload_are_counted_in_the_emulated_host() {
    let test = "kernel_functions_of_a_serving_workload_are_counted_in_the_emulated_host";
    if !in_emulated_host() {
        if strict() {
            rerun_in_emulated_host(test);
        } else {
            isolab_testkit::skipped(
                test,
                "this host's kernel is not ours (and has no ftrace); strict mode reruns it in the emulated host",
            );
        }
        return;
    }
    if !require(test, missing_binary("workload", "isolab-workload")) {
        return;
    }
    let mut api = Command::new(isolab_testkit::binary("workload"))
        .args(["api", "--port", "0", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(api.stderr.take().unwrap());
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "api ended before listening"
        );
        if let Some(a) = line.trim().split("listening on ").nth(1) {
            break a.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", api.id()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let cfg = HapConfig::detect();
    let session = HapSession::start(&cfg, &tids)
        .unwrap()
        .unwrap_or_else(|why| panic!("inside the emulated host: {why}"));
    assert!(session.instance().is_dir());
    let answers: Vec<String> = (0..10).map(|_| get(port)).collect();
    let found = session.finish().unwrap();
    let _ = api.kill();
    let _ = api.wait();
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 200")),
        "{answers:?}"
    );
    eprintln!(
        "HAP of workload api, 10 requests: {} distinct kernel functions, {} entries, {} lost",
        found.distinct, found.entries, found.lost_events
    );
    assert!(
        found.distinct > 100,
        "an HTTP server runs many kernel functions: {}",
        found.distinct
    );
    assert_eq!(found.distinct, found.functions.len());
    assert!(
        found.functions.iter().any(|f| f.starts_with("tcp_")),
        "serving TCP runs tcp_* functions"
    );
    assert!(found.functions.iter().any(|f| f.contains("accept")));
    assert!(
        our_instances(&cfg.tracefs).is_empty(),
        "the tracing instance is removed"
    );
    let top = std::fs::read_to_string(cfg.tracefs.join("current_tracer")).unwrap_or_default();
    assert!(
        matches!(top.trim(), "" | "nop"),
        "the top-level tracer is untouched: {top}"
    );
}

/// Runs this test binary (all its tests, one boot) inside the emulated
/// host with the workload binary copied in; panics unless they pass there.
fn rerun_in_emulated_host(test: &str) {
    let workload = isolab_testkit::binary("workload");
    assert!(
        workload.is_file(),
        "{test}: {} missing: cargo build -p isolab-workload",
        workload.display()
    );
    let rerun = isolab_testkit::Rerun {
        env: vec![(
            "ISOLAB_WORKLOAD_BIN".into(),
            "/opt/isolab/bin/workload".into(),
        )],
        files: vec![(workload, "/opt/isolab/bin/workload".into())],
        passed: 2,
        ..isolab_testkit::Rerun::default()
    };
    let out =
        isolab_testkit::rerun_in_emulated_host(test, &isolab_testkit::emulated_host(test), rerun);
    eprintln!("{test}: ran inside the emulated host:\n{out}");
}
