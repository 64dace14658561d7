//! Privileged tests on the host's real cgroup hierarchy (root required).
//! Without the ability they print `SKIPPED`; with `CI=true` or
//! `ISOLAB_STRICT=1` a missing ability fails.

use std::process::Command;

use isolab_cgroups::{create, Hierarchy, Limits};

/// Probes the real ability (creating a cgroup); the hierarchy, or `None`
/// after the skip line.
fn require(test: &str) -> Option<Hierarchy> {
    isolab_testkit::require(test, isolab_testkit::missing_cgroup())
        .then(|| Hierarchy::detect_host().expect("detected by the probe"))
}

#[test]
fn a_process_is_limited_counted_killed_and_nothing_is_left() {
    let Some(h) = require("a_process_is_limited_counted_killed_and_nothing_is_left") else {
        return;
    };
    let name = format!("t-{}", std::process::id());
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(16),
        cpuset: None,
    };
    let cg = create(&h, &name, &limits).unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    cg.add_pid(child.id() as i32).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![child.id() as i32]);
    let s = cg.stats().unwrap();
    assert_eq!(s.pids_current, Some(1));
    // v1 does not move charges on migration, so usage may be 0 here.
    assert!(s.memory_current_bytes.is_some());
    assert_eq!(s.oom_kills, 0);
    cg.kill_all().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    let paths = cg.paths();
    cg.remove().unwrap();
    for p in paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}
