//! v1 freezer: freeze the cgroup so nothing can fork while its tasks are
//! killed one by one, then thaw so the SIGKILLs are delivered.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fs::{kill_loop, write};
use crate::CgroupError;

pub(super) fn kill_all(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    write(&state, "FROZEN")?;
    // Thawed on every path below: a cgroup left frozen would hold its
    // tasks (and the cgroup itself) forever.
    let killed = kill_frozen(dir, &state);
    let thawed = write(&state, "THAWED");
    killed?;
    thawed?;
    kill_loop(&dir.join("cgroup.procs"), dir)
}

fn kill_frozen(dir: &Path, state: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match std::fs::read_to_string(state) {
            Ok(s) if s.trim() == "FROZEN" => break,
            Ok(_) => std::thread::sleep(Duration::from_micros(200)),
            Err(_) => break,
        }
    }
    // Signals queue while frozen; the tasks die once thawed.
    for pid in crate::fs::procs(&dir.join("cgroup.procs"))? {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(())
}
