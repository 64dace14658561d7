//! Runs the built `workload` binary the way a launcher does: a pipe's write
//! end as `ISOLAB_READY_FD`, real HTTP requests, SIGTERM/SIGINT, and the one
//! JSON result line on stdout. Unprivileged; binds only 127.0.0.1.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_workload");

/// A running workload with the read end of its ready pipe.
struct Running {
    child: Child,
    ready_rx: OwnedFd,
}

/// Spawns `workload args...` with a ready pipe on a non-CLOEXEC fd.
fn spawn(args: &[&str]) -> Running {
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    // Only the write end is inherited; the read end stays close-on-exec.
    fcntl(&tx, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let child = Command::new(BIN)
        .args(args)
        .env("ISOLAB_READY_FD", tx.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(tx);
    Running {
        child,
        ready_rx: rx,
    }
}

impl Running {
    /// Waits (at most 30 s, a hang guard, not a timing assertion) for the
    /// ready byte.
    fn ready_byte(&self) -> Option<u8> {
        let mut fds = [PollFd::new(self.ready_rx.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(30_000u16)).unwrap();
        assert_eq!(n, 1, "no ready event within 30 s");
        let mut b = [0u8; 1];
        match nix::unistd::read(&self.ready_rx, &mut b).unwrap() {
            0 => None,
            _ => Some(b[0]),
        }
    }

    /// Reads stderr up to the `listening on ADDR` line; returns the port.
    fn port(&mut self) -> u16 {
        let err = self.child.stderr.take().unwrap();
        let mut lines = BufReader::new(err).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(addr) = line.split("listening on ").nth(1) {
                let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                // Keep draining stderr so the child never blocks on it.
                std::thread::spawn(move || lines.for_each(drop));
                return port;
            }
        }
        panic!("the workload ended without a `listening on` line");
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the exit; returns (status code, result line parsed, stderr).
    fn finish(mut self) -> (i32, Value, String) {
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one result line, got {stdout:?}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        (out.status.code().unwrap_or(-1), v, stderr)
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// Status and body of a request; error statuses are answers too.
fn call(req: ureq::Request, body: Option<&str>) -> (u16, String) {
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("request failed: {e}"),
    }
}

#[test]
fn noop_signals_ready_and_exits_zero() {
    let w = spawn(&["noop"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "noop");
    assert_eq!(v["ok"], true);
}

#[test]
fn bad_name_and_bad_size_are_usage_errors() {
    for args in [
        &["nosuch"][..],
        &["cache", "--mib", "12q"],
        &["hog", "--max-mib", "9999"],
        &[],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "args {args:?}");
        assert!(out.stdout.is_empty(), "no result line for a usage error");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    }
    let err = Command::new(BIN).arg("nosuch").output().unwrap().stderr;
    assert!(String::from_utf8(err)
        .unwrap()
        .contains("unknown workload 'nosuch'"));
}

#[test]
fn a_wrong_ready_fd_fails_with_a_result_line() {
    let out = Command::new(BIN)
        .arg("noop")
        .env("ISOLAB_READY_FD", "987")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("987"));
}

#[test]
fn api_serves_items_and_reports_requests_on_sigterm() {
    let mut w = spawn(&["api", "--port", "0", "--bind", "127.0.0.1"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let port = w.port();
    let base = format!("http://127.0.0.1:{port}");
    let a = agent();

    let (st, body) = call(a.get(&format!("{base}/health")), None);
    assert_eq!((st, body.as_str()), (200, r#"{"status":"ok"}"#));

    let (st, body) = call(a.get(&format!("{base}/items")), None);
    assert_eq!(st, 200);
    let before = serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .len();

    let (st, body) = call(
        a.post(&format!("{base}/items"))
            .set("Content-Type", "application/json"),
        Some(r#"{"name":"spring","qty":7}"#),
    );
    assert_eq!(st, 201);
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["name"], "spring");
    let id = created["id"].as_u64().unwrap();

    let (st, body) = call(a.get(&format!("{base}/items/{id}")), None);
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), created);

    let (st, body) = call(a.get(&format!("{base}/items")), None);
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        before + 1
    );

    assert_eq!(call(a.get(&format!("{base}/items/999999")), None).0, 404);
    assert_eq!(call(a.get(&format!("{base}/items/abc")), None).0, 400);
    assert_eq!(call(a.get(&format!("{base}/nowhere")), None).0, 404);
    assert_eq!(
        call(a.post(&format!("{base}/items")), Some("{not json")).0,
        400
    );
    assert_eq!(
        call(a.post(&format!("{base}/items")), Some(r#"{"qty":1}"#)).0,
        400
    );

    w.signal(Signal::SIGTERM);
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "api");
    assert_eq!(v["ok"], true);
    assert_eq!(v["requests"], 10);
    assert_eq!(v["port"], port);
}

#[test]
fn cache_touches_its_working_set_and_serves_kv_until_sigint() {
    let mut w = spawn(&["cache", "--mib", "16", "--port", "0", "--bind", "127.0.0.1"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let port = w.port();
    let base = format!("http://127.0.0.1:{port}/kv");
    let a = agent();

    assert_eq!(call(a.get(&format!("{base}/colour")), None).0, 404);
    assert_eq!(call(a.put(&format!("{base}/colour")), Some("blue")).0, 201);
    assert_eq!(
        call(a.get(&format!("{base}/colour")), None),
        (200, "blue".into())
    );
    assert_eq!(call(a.put(&format!("{base}/colour")), Some("red")).0, 200);
    assert_eq!(
        call(a.get(&format!("{base}/colour")), None),
        (200, "red".into())
    );
    assert_eq!(
        call(a.get(&format!("http://127.0.0.1:{port}/other")), None).0,
        404
    );

    w.signal(Signal::SIGINT);
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "cache");
    assert_eq!(v["ok"], true);
    assert_eq!(v["requests"], 6);
    assert_eq!(v["keys"], 1);
    assert_eq!(v["touched_pages"], 16 * 256);
    // Ready came after touching: 16 MiB were already resident then.
    assert!(v["rss_kib_ready"].as_u64().unwrap() >= 16 * 1024, "{v}");
}

#[test]
fn worker_counts_operations() {
    let w = spawn(&["worker", "--count", "5000"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "worker");
    assert_eq!(v["ops"], 5000);
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(v["digest"].as_str().unwrap().len(), 16);

    let w = spawn(&["worker", "--duration-ms", "50"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert!(v["ops"].as_u64().unwrap() > 0);
    assert!(v["elapsed_ms"].as_f64().unwrap() >= 50.0);
}

#[test]
fn worker_ends_early_on_sigterm_with_its_result() {
    // As PID 1 of runc's container SIGTERM has no default action: the
    // worker must end on it by itself or be stopped only by SIGKILL.
    let w = spawn(&["worker", "--duration-ms", "600000", "--threads", "2"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    w.signal(Signal::SIGTERM);
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["stopped"], "SIGTERM", "{v}");
    assert!(v["ops"].as_u64().is_some(), "{v}");
}

#[test]
fn hog_grows_in_steps_up_to_its_cap() {
    let w = spawn(&["hog", "--step-mib", "4", "--max-mib", "12"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let (code, v, err) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "hog");
    assert_eq!(v["mib"], 12);
    assert_eq!(v["capped"], true);
    assert!(v["rss_kib"].as_u64().unwrap() >= 12 * 1024, "{v}");
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("hog: ")).collect();
    assert_eq!(progress, ["hog: 4 MiB", "hog: 8 MiB", "hog: 12 MiB"]);
}

#[test]
fn forkloop_forks_to_its_cap_and_reaps_every_child() {
    let w = spawn(&["forkloop", "--max", "40"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let pid = w.child.id();
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "forkloop");
    assert_eq!(v["forked"], 40);
    assert_eq!(v["reaped"], 40);
    assert_eq!(v["capped"], true);
    assert_eq!(v["errno"], Value::Null);
    // No process is left whose parent was the forkloop.
    let orphans = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let after = stat.rsplit(')').next().unwrap_or("");
            after.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .count();
    assert_eq!(orphans, 0);
}

#[test]
fn probe_reports_what_it_sees() {
    let w = spawn(&["probe"]);
    assert_eq!(w.ready_byte(), Some(b'R'));
    let pid = w.child.id();
    let (code, v, _) = w.finish();
    assert_eq!(code, 0);
    assert_eq!(v["workload"], "probe");
    assert_eq!(v["pid"], pid);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v["kernel"]["release"], release.trim());
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(v["boot_id"], boot_id.trim());
    assert!(v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i == "lo"));
    assert!(v["processes"].as_u64().unwrap() >= 1);
    assert!(v["mounts"].as_u64().unwrap() >= 1);
    assert!(v["cap_bnd"]["hex"].is_string());
    assert!(!v["cgroup"].as_array().unwrap().is_empty());
    assert!(v["nproc"].as_u64().unwrap() >= 1);
    assert!(v["host_paths_visible"]["/usr/bin"].is_boolean());
}

#[test]
fn a_port_in_use_fails_with_a_result_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args(["api", "--port", &port, "--bind", "127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["workload"], "api");
    assert_eq!(v["ok"], false);
    let error = v["error"].as_str().unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
}
