//! Watches a neighbour's cgroup counters while it runs, for modes whose
//! cgroup is gone by the time the instance is stopped (an OCI runtime
//! removes its container's cgroup when the container's process dies, and
//! an OOM-killed neighbour dies during the run).
//!
//! The cgroup directories come from `/proc/PID/cgroup` of the instance's
//! host pids (only those under the workbench's `isolab` parent); the
//! counters (`cpu.stat`, `memory.events` / `memory.oom_control`,
//! `pids.events`) are read every [`INTERVAL`] and the highest value seen is
//! kept (they only grow). An event in the last interval before the cgroup
//! is removed can be missed; the report's method line says so.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use isolab_isolation::neighbour::{
    parse_cpu_stat, parse_forks_refused, parse_oom_kills, NeighbourObservation,
};

/// Sampling interval of the counters.
pub const INTERVAL: Duration = Duration::from_millis(5);

/// The cgroup directories of one process under the workbench parent, from
/// its `/proc/PID/cgroup` text; `root` is the cgroup filesystem root.
/// v1 lines name their controllers (`4:memory:/isolab/x`, mounted at
/// `root/memory`); the v2 line (`0::/isolab/x`) is mounted at `root`
/// (pure v2) or `root/unified` (hybrid): both are listed, the caller keeps
/// what exists.
pub fn cgroup_dirs(text: &str, root: &Path) -> Vec<PathBuf> {
    let parent = format!("/{}/", isolab_cgroups::PARENT);
    let mut dirs = vec![];
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !path.starts_with(&parent) {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if ctrl.is_empty() {
            dirs.push(root.join(rel));
            dirs.push(root.join("unified").join(rel));
        } else if ["cpu", "memory", "pids"]
            .iter()
            .any(|c| ctrl.split(',').any(|x| x == *c))
        {
            dirs.push(root.join(ctrl).join(rel));
        }
    }
    dirs
}

/// Raises every counter of `into` to what `dir`'s files say now.
pub fn sample(dir: &Path, into: &mut NeighbourObservation) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max = |a: &mut Option<u64>, b: Option<u64>| {
        if let Some(b) = b {
            *a = Some(a.map_or(b, |a| a.max(b)));
        }
    };
    if let Some(t) = read("cpu.stat") {
        let (periods, us) = parse_cpu_stat(&t);
        max(&mut into.throttled_periods, periods);
        max(&mut into.throttled_us, us);
    }
    for f in ["memory.events", "memory.oom_control"] {
        if let Some(t) = read(f) {
            max(&mut into.oom_kills, parse_oom_kills(&t));
        }
    }
    if let Some(t) = read("pids.events") {
        max(&mut into.forks_refused, parse_forks_refused(&t));
    }
}

/// A running watch.
#[derive(Debug)]
pub struct CgroupWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<NeighbourObservation>>,
    handle: JoinHandle<NeighbourObservation>,
}

impl CgroupWatch {
    /// Starts watching the cgroups of `pids`; `None` when none of them is
    /// in a workbench cgroup (a plain process).
    pub fn start(pids: &[u32]) -> Option<Self> {
        let root = Path::new(isolab_cgroups::layout::DEFAULT_ROOT);
        let mut dirs: Vec<PathBuf> = pids
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
            .flat_map(|t| cgroup_dirs(&t, root))
            .filter(|d| d.is_dir())
            .collect();
        dirs.sort();
        dirs.dedup();
        if dirs.is_empty() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(NeighbourObservation::default()));
        let (flag, shared) = (Arc::clone(&stop), Arc::clone(&seen));
        let handle = std::thread::spawn(move || {
            let mut o = NeighbourObservation::default();
            loop {
                for d in &dirs {
                    sample(d, &mut o);
                }
                if let Ok(mut s) = shared.lock() {
                    *s = o.clone();
                }
                if flag.load(Ordering::SeqCst) {
                    return o;
                }
                std::thread::sleep(INTERVAL);
            }
        });
        Some(CgroupWatch { stop, seen, handle })
    }

    /// What has been seen so far.
    pub fn now(&self) -> NeighbourObservation {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops watching; what was seen (one last sample of what still exists
    /// included).
    pub fn finish(self) -> NeighbourObservation {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workbench_cgroups_of_the_watched_controllers_are_taken() {
        let text = "12:pids:/isolab/c1\n7:cpu,cpuacct:/isolab/c1\n4:memory:/isolab/c1\n\
                    3:blkio:/isolab/c1\n2:freezer:/user.slice\n0::/isolab/c1\n";
        let d = cgroup_dirs(text, Path::new("/cg"));
        let s: Vec<_> = d.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            s,
            [
                "/cg/pids/isolab/c1",
                "/cg/cpu,cpuacct/isolab/c1",
                "/cg/memory/isolab/c1",
                "/cg/isolab/c1",
                "/cg/unified/isolab/c1"
            ]
        );
        assert!(cgroup_dirs("0::/user.slice/session-1.scope\n", Path::new("/cg")).is_empty());
    }

    #[test]
    fn samples_keep_the_highest_count_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "nr_throttled 5\nthrottled_usec 70\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        std::fs::write(dir.path().join("pids.events"), "max 9\n").unwrap();
        let mut o = NeighbourObservation::default();
        sample(dir.path(), &mut o);
        std::fs::write(dir.path().join("pids.events"), "max 3\n").unwrap();
        std::fs::remove_file(dir.path().join("memory.events")).unwrap();
        sample(dir.path(), &mut o);
        assert_eq!(
            (
                o.throttled_periods,
                o.throttled_us,
                o.oom_kills,
                o.forks_refused
            ),
            (Some(5), Some(70), Some(1), Some(9))
        );
    }
}
