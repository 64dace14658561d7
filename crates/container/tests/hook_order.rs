//! Privileged tests of the hand-off around a network hook: the launcher
//! runs the hook on the network namespace it makes on a thread of its own
//! while the child is cloned and starts building its view, but the child
//! joins that namespace, and the workload starts, only once the hook has
//! returned; a hook that fails ends the launch and leaves no process or
//! instance directory.
//!
//! Without root, namespaces, cgroups or the workload binary a test prints
//! `SKIPPED <test>: <reason>`; with `CI=true` or `ISOLAB_STRICT=1` it fails
//! instead. Needs the workload binary: `cargo build -p isolab-workload`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isolab_container::{ContainerConfig, NetworkHook};

fn require(test: &str) -> Option<PathBuf> {
    let missing = isolab_testkit::first_missing([isolab_testkit::missing_container()]);
    isolab_testkit::require(test, missing).then(|| isolab_testkit::binary("workload"))
}

/// Takes its time, then succeeds or fails; remembers the interfaces of
/// the namespace it was given and when it returned.
#[derive(Debug)]
struct SlowHook {
    delay: Duration,
    fail: bool,
    seen: Mutex<Option<(String, Instant)>>,
}

impl NetworkHook for SlowHook {
    fn attach(
        &self,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let ns = std::fs::read_link(format!("/proc/self/fd/{}", netns.as_raw_fd()))?;
        std::thread::sleep(self.delay);
        *self.seen.lock().unwrap() = Some((ns.display().to_string(), Instant::now()));
        if self.fail {
            return Err("the attachment failed".into());
        }
        Ok(())
    }
}

fn config(bin: &PathBuf, test: &str) -> ContainerConfig {
    let mut c = ContainerConfig::new(bin, "api");
    c.run_dir = PathBuf::from(format!("/run/isolab-test/{test}"));
    c.stop_grace_ms = 2000;
    c
}

/// The pids of this process's children (of all its threads).
fn children() -> Vec<String> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(list.split_whitespace().map(str::to_owned));
    }
    pids
}

fn instance_dirs(c: &ContainerConfig) -> Vec<String> {
    std::fs::read_dir(&c.run_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_workload_starts_only_once_the_network_hook_returned() {
    let test = "the_workload_starts_only_once_the_network_hook_returned";
    let Some(bin) = require(test) else { return };
    let c = config(&bin, test);
    let hook = SlowHook {
        delay: Duration::from_millis(300),
        fail: false,
        seen: Mutex::new(None),
    };
    let running = isolab_container::start_with(&c, Some(&hook)).expect("launches");
    let ready = running
        .wait_ready(Duration::from_secs(30))
        .expect("the workload signalled ready");
    let (ns, returned) = hook.seen.lock().unwrap().clone().expect("the hook ran");
    assert!(
        running.launched_at() + ready > returned,
        "the workload was ready {ready:?} after launch, before the hook returned"
    );
    let container_ns = std::fs::read_link(format!("/proc/{}/ns/net", running.pid())).unwrap();
    assert_eq!(
        ns,
        container_ns.display().to_string(),
        "the hook got the container's network namespace"
    );
    let p = running.phases();
    // The phases stay contiguous: the child's work done while the hook
    // ran is counted in `attach` (each phase rounds down to a µs).
    let sum: u64 = p.named()[..11].iter().map(|(_, v)| v).sum();
    assert!(sum.abs_diff(p.launch_to_exec_us) <= 11, "{sum} vs {p:?}");
    assert!(p.launch_to_exec_us >= 300_000, "{p:?}");
    let out = running.stop().expect("stops");
    assert_eq!(out.exit_code, 0, "the api workload ends on SIGTERM");
    let _ = std::fs::remove_dir(&c.run_dir);
}

#[test]
fn a_failing_hook_ends_the_launch_and_leaves_no_process() {
    let test = "a_failing_hook_ends_the_launch_and_leaves_no_process";
    let Some(bin) = require(test) else { return };
    let c = config(&bin, test);
    let hook = SlowHook {
        delay: Duration::from_millis(200),
        fail: true,
        seen: Mutex::new(None),
    };
    let err = isolab_container::start_with(&c, Some(&hook)).expect_err("the hook failed");
    assert!(
        format!("{err:?}").contains("attachment failed"),
        "the hook's error is reported: {err:?}"
    );
    assert!(hook.seen.lock().unwrap().is_some(), "the hook ran");
    assert_eq!(
        children(),
        Vec::<String>::new(),
        "the child (which had started its view) is gone"
    );
    assert_eq!(instance_dirs(&c), Vec::<String>::new(), "no instance dir");
    let _ = std::fs::remove_dir(&c.run_dir);
}
