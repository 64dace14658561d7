//! Privileged tests: real containers on this host (root, cgroups, overlayfs,
//! namespaces). The launcher clones the container; the test process itself
//! never unshares or mounts. Without the ability each test prints
//! `SKIPPED <test>: <reason>`; with `CI=true` or `ISOLAB_STRICT=1` it fails.
//!
//! Needs the workload binary: `cargo build -p isolab-workload`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use isolab_container::{ChildStep, ContainerConfig, ContainerError, ExitStatus, Outcome};

/// Probes the real abilities a container needs; `None` means skip.
fn require(test: &str) -> Option<PathBuf> {
    isolab_testkit::require(test, isolab_testkit::missing_container())
        .then(|| isolab_testkit::binary("workload"))
}

/// A config with a private run dir, so concurrent tests and other users of
/// /run/isolab do not see each other's instances. The run dir goes away
/// with the returned value.
fn config(bin: &Path, test: &str, workload: &str, args: &[&str]) -> TestConfig {
    let mut c = ContainerConfig::new(bin, workload);
    c.args = args.iter().map(|s| s.to_string()).collect();
    c.run_dir = PathBuf::from(format!("/run/isolab-test/{test}"));
    c.stop_grace_ms = 2000;
    TestConfig(c)
}

struct TestConfig(ContainerConfig);

impl std::ops::Deref for TestConfig {
    type Target = ContainerConfig;
    fn deref(&self) -> &ContainerConfig {
        &self.0
    }
}

impl std::ops::DerefMut for TestConfig {
    fn deref_mut(&mut self) -> &mut ContainerConfig {
        &mut self.0
    }
}

impl Drop for TestConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0.run_dir);
        if let Some(parent) = self.0.run_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Nothing of instance `id` is left: cgroup dirs, instance dir, mounts.
fn assert_clean(c: &ContainerConfig, id: &str) {
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = ctrl.path().join("isolab").join(id);
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    let unified = Path::new("/sys/fs/cgroup/isolab").join(id);
    assert!(
        !unified.exists(),
        "cgroup {} left behind",
        unified.display()
    );
    assert!(
        !c.run_dir.join(id).exists(),
        "instance dir of {id} left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(id), "a mount of {id} is left behind");
    // A process still inside the container would keep its cgroup alive,
    // so the cgroup checks above also cover processes.
}

fn run(c: &ContainerConfig) -> Outcome {
    let o = isolab_container::run(c).unwrap_or_else(|e| panic!("run failed: {e:?}"));
    assert_clean(c, &o.id);
    o
}

#[test]
fn noop_exits_zero_and_reports_ready() {
    let Some(bin) = require("noop_exits_zero_and_reports_ready") else {
        return;
    };
    let c = config(&bin, "noop", "noop", &[]);
    let o = run(&c);
    assert_eq!(o.status, ExitStatus::Exited(0));
    assert!(o.launch_to_ready_us.is_some(), "noop signals ready at once");
    assert!(o.launch_to_ready_us.unwrap() <= o.launch_to_exit_us);
    assert_eq!(o.result.as_ref().unwrap()["workload"], "noop");
}

#[test]
fn the_workload_sees_its_own_pid_namespace_hostname_and_only_lo() {
    let test = "the_workload_sees_its_own_pid_namespace_hostname_and_only_lo";
    let Some(bin) = require(test) else {
        return;
    };
    let mut c = config(&bin, "probe", "probe", &[]);
    c.hostname = Some("box-7".into());
    let o = run(&c);
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    let r = o.result.expect("probe prints a JSON line");
    assert!(
        r["pid"].as_u64().unwrap() <= 2,
        "pid in its namespace: {}",
        r["pid"]
    );
    assert_eq!(r["pid1_comm"], "isolab-init");
    assert_eq!(r["hostname"], "box-7");
    assert_eq!(r["interfaces"], serde_json::json!(["lo"]));
    let host = nix::sys::utsname::uname().unwrap();
    assert_eq!(r["kernel"]["release"], host.release().to_str().unwrap());
    assert_eq!(r["host_paths_visible"]["/etc/passwd"], false);
    // Only init and the workload exist in the container.
    assert_eq!(r["processes"], 2);
}

#[test]
fn a_memory_hog_is_oom_killed_and_counted() {
    let Some(bin) = require("a_memory_hog_is_oom_killed_and_counted") else {
        return;
    };
    let mut c = config(&bin, "hog", "hog", &["--max-mib", "256"]);
    c.limits.memory_bytes = Some(32 << 20);
    // The OOM killer must pick the workload. Init shares this process's
    // memory (cgroup v1), so picking init would kill this test process
    // too: getting past `run` at all is part of the check.
    let o = run(&c);
    assert_eq!(o.status, ExitStatus::Signaled(9), "{o:?}");
    assert_eq!(o.exit_code, 137);
    assert!(o.oom_killed);
    assert!(o.stats.oom_kills >= 1);
    assert!(o.stats.memory_peak_bytes.unwrap() <= 32 << 20);
}

#[test]
fn a_fork_loop_stays_within_the_pids_limit() {
    let Some(bin) = require("a_fork_loop_stays_within_the_pids_limit") else {
        return;
    };
    let mut c = config(&bin, "forkloop", "forkloop", &["--max", "500"]);
    c.limits.pids = Some(32);
    let o = run(&c);
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    let r = o.result.unwrap();
    // init + the workload + its children fill the 32 slots.
    assert_eq!(r["forked"], 30, "{r}");
    assert_eq!(r["errno"], "EAGAIN");
    let peak = o.stats.pids_peak.expect("this kernel has pids.peak");
    assert!(peak <= 32, "pids peak {peak}");
    assert!(o.stats.pids_limit_hits.unwrap() >= 1);
}

#[test]
fn a_cpu_spinner_is_throttled_to_its_quota() {
    let Some(bin) = require("a_cpu_spinner_is_throttled_to_its_quota") else {
        return;
    };
    let mut c = config(&bin, "spinner", "worker", &["--duration-ms", "2000"]);
    c.limits.cpus = Some(0.2);
    let o = run(&c);
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    let s = &o.stats;
    assert!(s.cpu_throttled_periods.unwrap() > 0, "{s:?}");
    assert!(s.cpu_throttled_usec.unwrap() > 0);
    let share = s.cpu_usage_usec.unwrap() as f64 / o.launch_to_exit_us as f64;
    // About 20%: a little less on a contended host, never the ~100% of an
    // unlimited spinner.
    assert!(
        (0.10..=0.28).contains(&share),
        "used {:.0}% of one CPU",
        share * 100.0
    );
}

#[test]
fn a_failed_exec_names_the_step_and_leaves_nothing() {
    let Some(_) = require("a_failed_exec_names_the_step_and_leaves_nothing") else {
        return;
    };
    // An ELF header without program headers passes the config check, is
    // copied into the image as /workload, and execve refuses it.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-a-program");
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16] = 2; // ET_EXEC
    elf[18] = 62; // x86_64
    std::fs::write(&bogus, elf).unwrap();
    let mut c = config(&bogus, "execfail", "noop", &[]);
    c.state_dir = dir.path().join("state");
    let err = isolab_container::run(&c).unwrap_err();
    match err {
        ContainerError::Child { step, source } => {
            assert_eq!(step, ChildStep::Exec);
            assert_eq!(source, nix::Error::ENOEXEC);
        }
        other => panic!("expected an exec failure, got {other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(&c.run_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_workload_that_is_not_an_elf_executable_is_a_config_error() {
    let Some(_) = require("a_workload_that_is_not_an_elf_executable_is_a_config_error") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mut c = config(&script, "notelf", "noop", &[]);
    c.state_dir = dir.path().join("state");
    let err = isolab_container::run(&c).unwrap_err();
    assert!(
        matches!(err, ContainerError::WorkloadNotElf { .. }),
        "{err:?}"
    );
    assert!(err.is_usage());
    assert!(err.to_string().contains("script.sh"), "{err}");
    assert!(!c.state_dir.join("images").exists(), "nothing was built");
    assert!(!c.run_dir.exists(), "nothing was created");
}

#[test]
fn the_workload_gets_dev_null_as_stdin_and_its_stderr_is_captured() {
    let Some(bin) = require("the_workload_gets_dev_null_as_stdin_and_its_stderr_is_captured")
    else {
        return;
    };
    // An unknown option: the workload prints its usage error on stderr.
    let c = config(&bin, "stdio", "noop", &["--no-such-option"]);
    let o = run(&c);
    assert_ne!(o.exit_code, 0);
    assert!(!o.stderr.is_empty(), "stderr captured: {o:?}");
    // Instance dirs are private while they exist.
    let running = isolab_container::start(&config(
        &bin,
        "stdio2",
        "worker",
        &["--duration-ms", "60000"],
    ))
    .unwrap();
    let init = running.pid();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let workload: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let stdin = std::fs::read_link(format!("/proc/{workload}/fd/0")).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    let stderr = std::fs::read_link(format!("/proc/{workload}/fd/2")).unwrap();
    assert!(
        stderr.to_string_lossy().starts_with("pipe:"),
        "{}",
        stderr.display()
    );
    let dir = Path::new("/run/isolab-test/stdio2").join(running.id());
    use std::os::unix::fs::PermissionsExt;
    for d in [dir.clone(), dir.join("upper"), dir.join("work")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", d.display());
    }
    let o = running.stop().unwrap();
    let _ = std::fs::remove_dir("/run/isolab-test/stdio2");
    assert_eq!(o.security.name, "default");
}

#[test]
fn a_long_running_workload_is_probed_then_stopped() {
    let Some(bin) = require("a_long_running_workload_is_probed_then_stopped") else {
        return;
    };
    let c = config(&bin, "stop", "worker", &["--duration-ms", "60000"]);
    let running = isolab_container::start(&c).unwrap();
    let ready = running.wait_ready(Duration::from_secs(10));
    assert!(ready.is_some(), "worker signals ready before working");
    let s = running.stats().unwrap();
    assert!(s.memory_current_bytes.unwrap() > 0);
    assert_eq!(s.pids_current, Some(2), "init and the workload");
    let o = running.stop().unwrap();
    // Stopped long before the 60 s of work: by SIGTERM (or SIGKILL after grace).
    assert!(o.launch_to_exit_us < 30_000_000);
    assert!(
        matches!(
            o.status,
            ExitStatus::Signaled(15) | ExitStatus::Signaled(9) | ExitStatus::Exited(_)
        ),
        "{o:?}"
    );
    assert_clean(&c, &o.id);
}

#[test]
fn dropping_a_running_container_cleans_up() {
    let Some(bin) = require("dropping_a_running_container_cleans_up") else {
        return;
    };
    let c = config(&bin, "drop", "worker", &["--duration-ms", "60000"]);
    let running = isolab_container::start(&c).unwrap();
    let id = running.id().to_string();
    let pid = running.pid();
    drop(running);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "init {pid} still alive"
    );
    assert_clean(&c, &id);
}

#[test]
fn a_sigkilled_launcher_leaves_a_stale_instance_the_next_run_removes() {
    let test = "a_sigkilled_launcher_leaves_a_stale_instance_the_next_run_removes";
    let Some(bin) = require(test) else {
        return;
    };
    let c = config(&bin, "sigkill", "noop", &[]);
    let _ = std::fs::remove_dir_all(&c.run_dir);
    let loop_bin = isolab_testkit::target_profile_dir().join("examples/launch_loop");
    let mut helper = std::process::Command::new(loop_bin)
        .arg(&bin)
        .arg(&c.run_dir)
        .arg("--hold")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the helper's container runs: its cgroup holds init and the workload.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (id, procs) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the helper's container never started"
        );
        let found = std::fs::read_dir(&c.run_dir).ok().and_then(|d| {
            d.flatten()
                .find(|e| e.path().join("owner").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
        });
        if let Some(id) = found {
            // v1: the pids hierarchy; v2: the unified tree.
            let procs = ["/sys/fs/cgroup/pids/isolab", "/sys/fs/cgroup/isolab"]
                .iter()
                .map(|d| Path::new(d).join(&id).join("cgroup.procs"))
                .find(|p| p.exists())
                .unwrap_or_default();
            let n = std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .count();
            if n == 2 {
                break (id, procs);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    helper.wait().unwrap();
    // The container died with its launcher (lifeline) ...
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let alive = || {
        !std::fs::read_to_string(&procs)
            .unwrap_or_default()
            .trim()
            .is_empty()
    };
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(), "container processes survived their launcher");
    // ... but its instance dir and cgroup are still there ...
    assert!(c.run_dir.join(&id).exists());
    assert!(
        Path::new("/sys/fs/cgroup/memory/isolab").join(&id).exists()
            || !Path::new("/sys/fs/cgroup/memory").exists()
    );
    // ... until the next run removes them.
    let o = run(&c);
    assert_eq!(o.exit_code, 0);
    assert_clean(&c, &id);
}

#[test]
fn a_user_namespace_maps_container_root_to_an_unprivileged_host_uid() {
    let test = "a_user_namespace_maps_container_root_to_an_unprivileged_host_uid";
    let Some(bin) = require(test) else {
        return;
    };
    let mut c = config(&bin, "userns", "worker", &["--duration-ms", "60000"]);
    c.user_namespace = true;
    let running = isolab_container::start(&c).unwrap();
    assert!(running.wait_ready(Duration::from_secs(10)).is_some());
    let init = running.pid();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let workload: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{workload}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "100000", "100000", "100000", "100000"]
    );
    let map = std::fs::read_to_string(format!("/proc/{workload}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    let o = running.stop().unwrap();
    assert_clean(&c, &o.id);
}

#[test]
fn a_container_outlives_the_thread_that_started_it() {
    let test = "a_container_outlives_the_thread_that_started_it";
    let Some(bin) = require(test) else {
        return;
    };
    let c = config(&bin, "thread", "worker", &["--duration-ms", "60000"]);
    let cfg = c.0.clone();
    let running = std::thread::spawn(move || isolab_container::start(&cfg).unwrap())
        .join()
        .unwrap();
    // The starting thread is gone; the container must still be there.
    // Init shares this process's memory (cgroup v1) and runs on the
    // thread-local storage of the thread that cloned it: new threads that
    // reuse the ended thread's stack and fail system calls (writing their
    // errno) must not disturb it.
    for _ in 0..8 {
        std::thread::spawn(|| {
            let mut buf = [0u8; 256 * 1024];
            std::hint::black_box(&mut buf);
            let _ = std::fs::metadata("/nonexistent/isolab");
        })
        .join()
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(running.wait_ready(Duration::from_secs(10)).is_some());
    assert_eq!(
        running.stats().unwrap().pids_current,
        Some(2),
        "init and workload alive"
    );
    let o = running.stop().unwrap();
    // Init forwarded the SIGTERM and reported the workload's end; an init
    // that crashed would be the container's end (SIGSEGV) instead.
    assert!(
        matches!(o.status, ExitStatus::Signaled(15) | ExitStatus::Exited(_)),
        "{o:?}"
    );
    assert_clean(&c, &o.id);
}
