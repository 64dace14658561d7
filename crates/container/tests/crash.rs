//! Crash paths: a launcher SIGKILLed at random points of its launches
//! (`examples/launch_loop.rs`), then one ordinary start with the same run
//! dir. Nothing of the killed launcher may be left: no instance dir, no
//! cgroup in any hierarchy, no process, no mount. Assertions are on the
//! killed launcher's own instance ids (`c<pid>-...`), never on global
//! emptiness: other users of the host may have live instances.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isolab_container::ContainerConfig;

fn loop_bin() -> PathBuf {
    isolab_testkit::target_profile_dir().join("examples/launch_loop")
}

/// Everything under the host's cgroup mounts named like `prefix*`.
fn cgroups_of(prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(e.path());
            } else if name == "isolab" || d == Path::new("/sys/fs/cgroup") {
                dirs.push(e.path());
            }
        }
    }
    found
}

#[test]
fn launchers_killed_at_random_points_leave_nothing_after_the_next_start() {
    let test = "launchers_killed_at_random_points_leave_nothing_after_the_next_start";
    let missing = isolab_testkit::first_missing([
        isolab_testkit::missing_root(),
        isolab_testkit::missing_binary("workload", "isolab-workload"),
        (!loop_bin().is_file()).then(|| format!("{} missing", loop_bin().display())),
    ]);
    if !isolab_testkit::require(test, missing) {
        return;
    }
    let workload = isolab_testkit::binary("workload");
    let run_dir = PathBuf::from("/run/isolab-test/crash");
    let mut killed = Vec::new();
    let mut interrupted = 0;
    for round in 0..12u64 {
        let mut child = Command::new(loop_bin())
            .arg(&workload)
            .arg(&run_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Wait for its first instance (an emulated host is slow to get
        // there), then kill at a random point of the next few launches.
        let prefix = format!("c{}-", child.id());
        let started = Instant::now() + Duration::from_secs(20);
        while Instant::now() < started
            && !std::fs::read_dir(&run_dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(
            fastrand::u64(0..20_000) + round * 500,
        ));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        // Evidence that the kill hit a launch in flight: something of it is
        // there (the next launcher's start cleans it up).
        if !cgroups_of(&prefix).is_empty()
            || std::fs::read_dir(&run_dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
        {
            interrupted += 1;
        }
        killed.push(child.id());
    }
    assert!(interrupted > 0, "no kill landed inside a launch");
    // Containers die with their launcher (lifeline); start one ordinary
    // container: its stale cleanup runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = ContainerConfig::new(&workload, "noop");
    c.run_dir = run_dir.clone();
    let o = isolab_container::run(&c).unwrap();
    assert_eq!(o.exit_code, 0);
    eprintln!(
        "{interrupted} of {} launchers were killed inside a launch",
        killed.len()
    );
    for pid in killed {
        let prefix = format!("c{pid}-");
        // A container still dying may hold its cgroup a moment longer than
        // its launcher: the cleanup waits for it; re-run it if needed.
        loop {
            let left_dirs: Vec<_> = std::fs::read_dir(&run_dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            let left_cgroups = cgroups_of(&prefix);
            if left_dirs.is_empty() && left_cgroups.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind by launcher {pid}: {left_dirs:?} {left_cgroups:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
            isolab_container::run(&c).unwrap();
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&prefix),
            "a mount of launcher {pid} is left"
        );
    }
    let _ = std::fs::remove_dir(&run_dir);
}
