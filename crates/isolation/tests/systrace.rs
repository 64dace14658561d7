//! The host system-call tracer on real programs: the workspace's `workload`
//! binary (noop, api), checked against strace as an independent oracle,
//! and the traced process's health after detach and after the tracer dies.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use isolab_isolation::systrace::{Exit, SpawnSpec, SyscallProfile, Tracer, TracerProcess};
use isolab_testkit::{first_missing, missing_binary, missing_command, missing_root, require};

fn workload() -> PathBuf {
    isolab_testkit::binary("workload")
}

/// Whether `test` can run (it prints why not otherwise): root, `also`
/// (another probe, if any) and the workload binary.
fn can_trace(test: &str, also: Option<String>) -> bool {
    require(
        test,
        first_missing([
            missing_root(),
            also,
            missing_binary("workload", "isolab-workload"),
        ]),
    )
}

/// One `GET path` on its own connection; the status line.
fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Reads `<name>: listening on ADDR:PORT` from a workload's stderr.
fn listening_port(stderr: impl Read) -> u16 {
    let mut r = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "workload ended before listening"
        );
        if let Some(addr) = line.trim().split("listening on ").nth(1) {
            return addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
}

/// The state letter of `/proc/PID/status` (`S`, `R`, `t`, `T`...).
fn state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|v| v.trim().chars().next())
        .unwrap()
}

/// Names strace -c counted (its summary table, written with -o).
fn strace_names(table: &str) -> BTreeSet<String> {
    table
        .lines()
        .filter(|l| !l.starts_with('%') && !l.starts_with('-') && !l.contains("total"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .collect()
}

struct Api(Child);

impl Api {
    fn start() -> (Self, u16) {
        let mut child = Command::new(workload())
            .args(["api", "--port", "0", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let port = listening_port(child.stderr.take().unwrap());
        (Self(child), port)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn noop_makes_exactly_the_calls_strace_sees() {
    if !can_trace(
        "noop_makes_exactly_the_calls_strace_sees",
        missing_command("strace", "strace"),
    ) {
        return;
    }
    let devnull = || std::fs::File::create("/dev/null").unwrap().into();
    let mut spec = SpawnSpec::new(workload(), ["noop"]);
    spec.stdout = Some(devnull());
    let (tracer, _pid) = Tracer::spawn(spec).unwrap();
    let profile = tracer.run(&AtomicBool::new(false)).unwrap();
    assert_eq!(profile.exit, Some(Exit::Code(0)));
    assert_eq!(
        profile.processes().len(),
        1,
        "noop forks nothing: {profile:?}"
    );
    assert_eq!(
        profile.totals()["execve"],
        1,
        "counting starts at the one execve"
    );

    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("strace.txt");
    let st = Command::new("strace")
        .arg("-f")
        .arg("-c")
        .arg("-o")
        .arg(&table)
        .arg(workload())
        .arg("noop")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let oracle = strace_names(&std::fs::read_to_string(&table).unwrap());
    assert!(oracle.contains("execve") && oracle.len() > 5, "{oracle:?}");
    // strace -c leaves out calls that never return.
    let ours: BTreeSet<String> = profile
        .distinct()
        .into_iter()
        .filter(|n| n != "exit_group" && n != "exit")
        .collect();
    assert_eq!(
        ours, oracle,
        "our tracer and strace disagree on what `workload noop` calls"
    );
    assert!(profile.distinct().contains("exit_group"));
}

#[test]
fn threads_of_a_spawned_server_are_followed() {
    if !can_trace("threads_of_a_spawned_server_are_followed", None) {
        return;
    }
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let mut spec = SpawnSpec::new(workload(), ["api", "--port", "0", "--bind", "127.0.0.1"]);
    spec.stdout = Some(std::fs::File::create("/dev/null").unwrap().into());
    spec.stderr = Some(err_w);
    let (tracer, pid) = Tracer::spawn(spec).unwrap();
    // The load comes from another thread; this one is the tracer.
    let client = std::thread::spawn(move || {
        let port = listening_port(std::fs::File::from(err_r));
        let answers: Vec<String> = (0..3).map(|_| get(port, "/health").unwrap()).collect();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        answers
    });
    let profile = tracer.run(&AtomicBool::new(false)).unwrap();
    let answers = client.join().unwrap();
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 200")),
        "{answers:?}"
    );
    assert_eq!(
        profile.exit,
        Some(Exit::Code(0)),
        "api ends cleanly on SIGTERM"
    );
    let threads: Vec<_> = profile.threads.iter().filter(|t| t.tgid == pid).collect();
    assert!(threads.len() >= 3, "api runs several threads: {threads:?}");
    let main = threads.iter().find(|t| t.tid == pid).unwrap();
    assert!(
        main.syscalls.contains_key("clone3") || main.syscalls.contains_key("clone"),
        "the main thread's thread creation is seen: {main:?}"
    );
    let served_elsewhere = threads
        .iter()
        .filter(|t| t.tid != pid)
        .any(|t| t.syscalls.keys().any(|k| k.starts_with("accept")));
    assert!(
        served_elsewhere,
        "connections are accepted on a thread the tracer followed: {threads:?}"
    );
    assert!(profile
        .totals()
        .keys()
        .any(|k| k == "recvfrom" || k == "read"));
    assert!(profile.left_attached.is_empty());
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn seized_server_runs_on_after_detach_and_after_the_tracer_dies() {
    if !can_trace(
        "seized_server_runs_on_after_detach_and_after_the_tracer_dies",
        None,
    ) {
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_isolab-trace"));
    let (mut api, port) = Api::start();
    let pid = api.0.id();

    // A clean pass: attach, load, detach.
    let tracer = TracerProcess::attach(&bin, &[pid]).unwrap();
    assert!(
        tracer.traced().len() >= 3,
        "every thread is seized: {:?}",
        tracer.traced()
    );
    assert!(tracer.not_traced().is_empty());
    for _ in 0..3 {
        assert!(get(port, "/health").unwrap().starts_with("HTTP/1.1 200"));
    }
    let profile: SyscallProfile = tracer.finish().unwrap();
    assert!(profile.left_attached.is_empty());
    assert!(
        profile.exit.is_none(),
        "a seized process is not ended by the tracer"
    );
    let totals = profile.totals();
    assert!(totals.keys().any(|k| k.starts_with("accept")), "{totals:?}");
    assert!(
        profile
            .threads
            .iter()
            .filter(|t| !t.syscalls.is_empty())
            .count()
            >= 2
    );
    assert!(
        !matches!(state(pid), 't' | 'T'),
        "not left stopped after detach"
    );
    assert!(get(port, "/health").unwrap().starts_with("HTTP/1.1 200"));

    // The tracer killed mid-pass: the kernel detaches, the server runs on.
    let tracer = TracerProcess::attach(&bin, &[pid]).unwrap();
    assert!(get(port, "/health").unwrap().starts_with("HTTP/1.1 200"));
    let tracer_pid = tracer.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tracer_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(tracer);
    wait_until("the server has no tracer", || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .contains("TracerPid:\t0")
    });
    assert!(
        !matches!(state(pid), 't' | 'T'),
        "not left stopped when the tracer dies"
    );
    assert!(get(port, "/health").unwrap().starts_with("HTTP/1.1 200"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = api.0.wait().unwrap();
    assert!(status.success(), "the server still ends cleanly: {status}");
}

#[test]
fn a_process_that_is_gone_is_reported_not_traced() {
    let test = "a_process_that_is_gone_is_reported_not_traced";
    if !require(test, missing_root()) {
        return;
    }
    let mut c = Command::new("/bin/true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    let e = Tracer::seize(&[pid]).unwrap_err();
    assert!(e.to_string().contains("could be traced"), "{e}");
}
