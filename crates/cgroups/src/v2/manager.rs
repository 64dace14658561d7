//! The v2 instance cgroup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{cpu, cpuset, devices, memory, pids};
use crate::devices::DevicePolicy;
use crate::fs::{self, mkdir, read, rmdir, rmdir_parent_if_unused, write};
use crate::{instance_dir, CgroupError, CgroupManager, Limits, Stats, PARENT};

/// One instance's directory in the unified tree.
#[derive(Debug)]
pub struct V2Cgroup {
    dir: PathBuf,
}

impl V2Cgroup {
    /// Enables the needed controllers in `<root>` and `<root>/isolab`, creates
    /// `<root>/isolab/<name>` and writes `limits`.
    pub fn create(
        root: &Path,
        name: &str,
        limits: &Limits,
        device_policy: DevicePolicy,
    ) -> Result<Self, CgroupError> {
        let mut controllers = vec!["memory", "cpu", "pids"];
        if let Some(set) = &limits.cpuset {
            controllers.push("cpuset");
            cpuset::validate(root, set)?;
        }
        let available = read(&root.join("cgroup.controllers"))?;
        for c in &controllers {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(CgroupError::ControllerMissing {
                    controller: (*c).to_string(),
                });
            }
        }
        let enable: String = controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let parent = root.join(PARENT);
        let cg = Self {
            dir: instance_dir(root, name),
        };
        let result = (|| {
            let mut tries = 0;
            loop {
                enable_controllers(root, &enable)?;
                mkdir(&parent)?;
                enable_controllers(&parent, &enable)?;
                match mkdir(&cg.dir) {
                    Ok(_) => break,
                    Err(CgroupError::Create { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound && tries < 3 =>
                    {
                        tries += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            memory::apply(&cg.dir, limits.memory_bytes)?;
            cpu::apply(&cg.dir, limits.cpus)?;
            pids::apply(&cg.dir, limits.pids)?;
            if let Some(set) = &limits.cpuset {
                cpuset::apply(&cg.dir, set)?;
            }
            if let DevicePolicy::AllowOnly(rules) = device_policy {
                devices::apply(&cg.dir, rules)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    pub fn open(root: &Path, name: &str) -> Option<Self> {
        let dir = instance_dir(root, name);
        dir.exists().then_some(Self { dir })
    }
}

/// Writes `+ctrl ...` to `dir/cgroup.subtree_control` unless already enabled.
fn enable_controllers(dir: &Path, enable: &str) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    let missing = enable
        .split_whitespace()
        .any(|c| !current.split_whitespace().any(|e| e == &c[1..]));
    if missing {
        write(&file, enable)?;
    }
    Ok(())
}

impl CgroupManager for V2Cgroup {
    fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        fs::add_pid(&self.dir, pid)
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        memory::stats(&self.dir, &mut s)?;
        cpu::stats(&self.dir, &mut s)?;
        pids::stats(&self.dir, &mut s)?;
        Ok(s)
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fs::procs(&self.dir.join("cgroup.procs"))
    }

    /// `cgroup.kill` (5.14+) kills every task, including ones forking
    /// concurrently; older kernels get freeze + kill loop + thaw.
    fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            write(&kill, "1")?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !fs::procs(&procs)?.is_empty() {
                if Instant::now() > deadline {
                    return Err(CgroupError::NotEmpty {
                        path: self.dir.clone(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        } else {
            let freeze = self.dir.join("cgroup.freeze");
            let frozen = freeze.exists() && write(&freeze, "1").is_ok();
            let listed = fs::procs(&procs);
            for pid in listed.iter().flatten() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // Thawed on every path: a frozen cgroup would never empty.
            if frozen {
                write(&freeze, "0")?;
            }
            listed?;
            fs::kill_loop(&procs, &self.dir)
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.kill_all()?;
        rmdir(&self.dir)?;
        if let Some(parent) = self.dir.parent() {
            rmdir_parent_if_unused(parent);
        }
        Ok(())
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::CpuSet;

    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(root.path().join("cpuset.cpus.effective"), "0-3\n").unwrap();
        root
    }

    #[test]
    fn limits_use_v2_files_and_controllers_are_enabled_top_down() {
        let root = fake_root("cpuset cpu io memory hugetlb pids rdma misc\n");
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(64),
            cpuset: Some(CpuSet::parse("2-3").unwrap()),
        };
        let cg = V2Cgroup::create(root.path(), "c1", &limits, DevicePolicy::Unrestricted).unwrap();
        let r = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(r("cgroup.subtree_control"), "+memory +cpu +pids +cpuset");
        assert_eq!(
            r("isolab/cgroup.subtree_control"),
            "+memory +cpu +pids +cpuset"
        );
        assert_eq!(r("isolab/c1/memory.max"), "67108864");
        assert_eq!(r("isolab/c1/cpu.max"), "50000 100000");
        assert_eq!(r("isolab/c1/pids.max"), "64");
        assert_eq!(r("isolab/c1/cpuset.cpus"), "2-3");
        assert_eq!(cg.paths(), vec![root.path().join("isolab/c1")]);
        assert!(cg.self_join_files().is_empty(), "v2 moves by pid");
        cg.add_pid(77).unwrap();
        assert_eq!(r("isolab/c1/cgroup.procs"), "77");
    }

    #[test]
    fn stats_come_from_v2_files() {
        let root = fake_root("cpu memory pids");
        let cg = V2Cgroup::create(
            root.path(),
            "c2",
            &Limits::default(),
            DevicePolicy::Unrestricted,
        )
        .unwrap();
        let w =
            |p: &str, v: &str| std::fs::write(root.path().join("isolab/c2").join(p), v).unwrap();
        w("memory.current", "4096\n");
        w("memory.peak", "8192\n");
        w(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        w(
            "cpu.stat",
            "usage_usec 200000\nuser_usec 150000\nsystem_usec 50000\nnr_periods 20\nnr_throttled 18\nthrottled_usec 1600000\nnr_bursts 0\nburst_usec 0\n",
        );
        w("pids.current", "1\n");
        w("pids.peak", "32\n");
        w("pids.events", "max 3\n");
        let s = cg.stats().unwrap();
        assert_eq!(s.memory_current_bytes, Some(4096));
        assert_eq!(s.memory_peak_bytes, Some(8192));
        assert_eq!(s.oom_kills, 1);
        assert_eq!(s.cpu_usage_usec, Some(200_000));
        assert_eq!(s.cpu_periods, Some(20));
        assert_eq!(s.cpu_throttled_periods, Some(18));
        assert_eq!(s.cpu_throttled_usec, Some(1_600_000));
        assert_eq!(s.pids_peak, Some(32));
        assert_eq!(s.pids_limit_hits, Some(3));
    }

    #[test]
    fn a_controller_not_delegated_is_named_and_nothing_is_created() {
        let root = fake_root("cpu memory");
        let err = V2Cgroup::create(
            root.path(),
            "c3",
            &Limits::default(),
            DevicePolicy::Unrestricted,
        )
        .unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerMissing { ref controller } if controller == "pids")
        );
        assert!(!root.path().join("isolab").exists());
        assert_eq!(
            std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            ""
        );
    }

    #[test]
    fn kill_uses_cgroup_kill_and_remove_cleans_up() {
        let root = fake_root("cpu memory pids");
        let cg = V2Cgroup::create(
            root.path(),
            "c4",
            &Limits::default(),
            DevicePolicy::Unrestricted,
        )
        .unwrap();
        let dir = root.path().join("isolab/c4");
        // The kernel would provide cgroup.kill; a fake tree gets a stand-in.
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
        cg.kill_all().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(),
            "1"
        );
        std::fs::remove_file(dir.join("cgroup.kill")).unwrap();
        cg.remove().unwrap();
        assert!(!dir.exists());
    }
}
