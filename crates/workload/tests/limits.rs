//! Privileged: `hog` and `forkloop` meeting real cgroup limits, which is
//! what they exist to demonstrate. A test cgroup is created directly in
//! cgroupfs (v1 `pids`/`memory` hierarchies, or cgroup v2 with the
//! controller delegated at the root), the workload joins it between fork and
//! exec, and the cgroup is removed afterwards, also on failure.
//!
//! Without root or the controller each test prints `SKIPPED <test>: <reason>`;
//! with `CI=true` or `ISOLAB_STRICT=1` a missing ability fails instead.

use std::ffi::CString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_workload");

/// Skips (or fails, in strict mode) when an ability is missing.
macro_rules! require {
    ($test:expr, $probe:expr) => {
        match $probe {
            Ok(v) => v,
            Err(reason) => {
                isolab_testkit::require($test, Some(reason));
                return;
            }
        }
    };
}

/// A cgroup made for one test; removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    /// Creates a cgroup with `controller` and writes `(file, value)` limits.
    /// `v1_file`/`v2_file` name the limit file in each layout.
    fn create(controller: &str, limits: &[(&str, &str, String)]) -> Result<Self, String> {
        let name = format!("isolab-workload-test-{}-{controller}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup").join(controller);
        let v2 = Path::new("/sys/fs/cgroup");
        let (parent, v2_layout) = if v1.join("cgroup.procs").exists() {
            (v1, false)
        } else if std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|c| c == controller))
        {
            (v2.to_path_buf(), true)
        } else {
            return Err(format!(
                "no {controller} cgroup controller (neither v1 nor delegated in v2)"
            ));
        };
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        let cg = Self { dir };
        for (v1_file, v2_file, value) in limits {
            let file = cg.dir.join(if v2_layout { v2_file } else { v1_file });
            std::fs::write(&file, value)
                .map_err(|e| format!("cannot write {value} to {}: {e}", file.display()))?;
        }
        Ok(cg)
    }

    /// A `Command` for the workload that joins this cgroup before exec.
    fn command(&self, args: &[&str]) -> Command {
        let procs = CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls open/write/close on a path allocated before the fork: no
        // allocation, no locks, all async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means "the writing process" in cgroup.procs.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The workload has been waited for; a killed process can take a
        // moment to leave the cgroup, so retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.dir.display()
        );
    }
}

#[test]
fn forkloop_reports_eagain_under_a_pids_limit() {
    const T: &str = "forkloop_reports_eagain_under_a_pids_limit";
    let cg = require!(
        T,
        TestCgroup::create("pids", &[("pids.max", "pids.max", "10".into())])
    );
    let out = cg.command(&["forkloop", "--max", "100"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["workload"], "forkloop");
    assert_eq!(v["ok"], true);
    // pids.max 10 counts the forkloop itself: 9 children fit.
    assert_eq!(v["forked"], 9, "{v}");
    assert_eq!(v["errno"], "EAGAIN");
    assert_eq!(v["capped"], false);
    assert_eq!(v["reaped"], 9);
    let left = std::fs::read_to_string(cg.dir.join("cgroup.procs")).unwrap();
    assert!(
        left.trim().is_empty(),
        "processes left in the cgroup: {left}"
    );
}

#[test]
fn hog_is_killed_by_a_memory_limit_before_its_cap() {
    const T: &str = "hog_is_killed_by_a_memory_limit_before_its_cap";
    let limit = (48u64 << 20).to_string();
    let cg = require!(
        T,
        TestCgroup::create(
            "memory",
            &[("memory.limit_in_bytes", "memory.max", limit.clone())]
        )
    );
    // No swap on these hosts, but a v2 host might have some: forbid it so
    // the limit is a hard one.
    let swap = cg.dir.join("memory.swap.max");
    if swap.exists() {
        std::fs::write(&swap, "0").unwrap();
    }
    let out = cg
        .command(&["hog", "--step-mib", "4", "--max-mib", "256"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the OOM killer should end the hog; status {:?}",
        out.status
    );
    assert!(out.stdout.is_empty(), "a killed hog prints no result line");
    let err = String::from_utf8_lossy(&out.stderr);
    let last: u64 = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("hog: ")?.strip_suffix(" MiB")?.parse().ok())
        .unwrap_or(0);
    assert!(last < 48, "grew to {last} MiB under a 48 MiB limit");
    assert!(last >= 16, "was killed early, at {last} MiB: {err}");
}
