//! The v1 instance cgroup: creation in each needed controller, limits,
//! statistics, kill and removal.

use std::path::{Path, PathBuf};

use super::{cpu, cpuset, devices, freezer, memory, pids};
use crate::devices::DevicePolicy;
use crate::fs::{self, mkdir, rmdir, rmdir_parent_if_unused};
use crate::layout::V1Mounts;
use crate::{instance_dir, CgroupError, CgroupManager, Limits, Stats, PARENT};

/// Controllers every instance joins; cpuset only when a CPU set is requested.
const REQUIRED: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// One instance's directories in the v1 controllers.
#[derive(Debug)]
pub struct V1Cgroup {
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    cpuset: Option<PathBuf>,
    freezer: Option<PathBuf>,
    /// Only with a device policy: unrestricted instances stay out of it.
    devices: Option<PathBuf>,
    /// Distinct instance directories (co-mounted controllers share one).
    dirs: Vec<PathBuf>,
}

impl V1Cgroup {
    /// Creates `<mount>/isolab/<name>` in every needed controller and writes
    /// `limits`. Everything is checked before the first directory is made;
    /// on a later failure the directories made so far are removed.
    pub fn create(
        mounts: &V1Mounts,
        name: &str,
        limits: &Limits,
        devices: DevicePolicy,
    ) -> Result<Self, CgroupError> {
        for c in REQUIRED {
            mounts.get(c)?;
        }
        let devices_mount = match devices {
            DevicePolicy::Unrestricted => None,
            DevicePolicy::AllowOnly(_) => Some(mounts.get("devices")?),
        };
        let cpuset_mount = match &limits.cpuset {
            Some(set) => {
                let m = mounts.get("cpuset")?;
                cpuset::validate(m, set)?;
                Some(m)
            }
            None => None,
        };
        let cg = Self::layout(mounts, name, cpuset_mount, devices_mount);
        let result = cg
            .make_dirs(cpuset_mount)
            .and_then(|()| cg.apply(limits, devices));
        if let Err(e) = result {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Opens an existing instance (any of its directories present).
    pub fn open(mounts: &V1Mounts, name: &str) -> Option<Self> {
        if REQUIRED.iter().any(|c| mounts.get(c).is_err()) {
            return None;
        }
        let cpuset_mount = mounts
            .get("cpuset")
            .ok()
            .filter(|m| instance_dir(m, name).exists());
        let devices_mount = mounts
            .get("devices")
            .ok()
            .filter(|m| instance_dir(m, name).exists());
        let cg = Self::layout(mounts, name, cpuset_mount, devices_mount);
        cg.dirs.iter().any(|d| d.exists()).then_some(cg)
    }

    fn layout(
        mounts: &V1Mounts,
        name: &str,
        cpuset_mount: Option<&Path>,
        devices_mount: Option<&Path>,
    ) -> Self {
        let at = |c: &str| mounts.get(c).map(|m| instance_dir(m, name));
        // REQUIRED were checked by the callers.
        let memory = at("memory").unwrap_or_default();
        let cpu = at("cpu").unwrap_or_default();
        let cpuacct = at("cpuacct").unwrap_or_default();
        let pids = at("pids").unwrap_or_default();
        let cpuset = cpuset_mount.map(|m| instance_dir(m, name));
        let freezer = at("freezer").ok();
        let devices = devices_mount.map(|m| instance_dir(m, name));
        let mut dirs: Vec<PathBuf> = Vec::new();
        for d in [Some(&memory), Some(&cpu), Some(&cpuacct), Some(&pids)]
            .into_iter()
            .chain([cpuset.as_ref(), freezer.as_ref(), devices.as_ref()])
            .flatten()
        {
            if !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
        Self {
            memory,
            cpu,
            cpuacct,
            pids,
            cpuset,
            freezer,
            devices,
            dirs,
        }
    }

    fn make_dirs(&self, cpuset_mount: Option<&Path>) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let parent = dir.parent().unwrap_or(dir);
            let is_cpuset = Some(dir) == self.cpuset.as_ref();
            // A concurrent launcher may remove an unused parent between our
            // two mkdirs; retry a few times.
            let mut tries = 0;
            loop {
                mkdir(parent)?;
                if is_cpuset {
                    if let Some(m) = cpuset_mount {
                        cpuset::inherit(m, parent)?;
                    }
                }
                match mkdir(dir) {
                    Ok(_) => break,
                    Err(CgroupError::Create { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound && tries < 3 =>
                    {
                        tries += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            if is_cpuset {
                cpuset::inherit(parent, dir)?;
            }
        }
        Ok(())
    }

    fn apply(&self, limits: &Limits, devices: DevicePolicy) -> Result<(), CgroupError> {
        if let (Some(dir), DevicePolicy::AllowOnly(rules)) = (&self.devices, devices) {
            devices::apply(dir, rules)?;
        }
        memory::apply(&self.memory, limits.memory_bytes)?;
        cpu::apply(&self.cpu, limits.cpus)?;
        pids::apply(&self.pids, limits.pids)?;
        if let (Some(dir), Some(set)) = (&self.cpuset, &limits.cpuset) {
            cpuset::apply(dir, set)?;
        }
        Ok(())
    }
}

impl CgroupManager for V1Cgroup {
    fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            fs::add_pid(dir, pid)?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        memory::stats(&self.memory, &mut s)?;
        cpu::stats(&self.cpu, &self.cpuacct, &mut s)?;
        pids::stats(&self.pids, &mut s)?;
        Ok(s)
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fs::procs(&self.pids.join("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        match &self.freezer {
            Some(dir) if dir.join("freezer.state").exists() => freezer::kill_all(dir),
            _ => fs::kill_loop(&self.pids.join("cgroup.procs"), &self.pids),
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        if self.dirs.iter().any(|d| d.exists()) {
            self.kill_all()?;
        }
        let mut first_err = None;
        for dir in &self.dirs {
            if let Err(e) = rmdir(dir) {
                first_err.get_or_insert(e);
            }
            if let Some(parent) = dir.parent().filter(|p| p.ends_with(PARENT)) {
                rmdir_parent_if_unused(parent);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.dirs.clone()
    }

    fn self_join_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("tasks")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::CpuSet;

    fn fake_tree(controllers: &[&str]) -> (tempfile::TempDir, V1Mounts) {
        let root = tempfile::tempdir().unwrap();
        for c in controllers {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        std::fs::write(root.path().join("cpuset/cpuset.cpus"), "0-1\n").ok();
        std::fs::write(root.path().join("cpuset/cpuset.mems"), "0\n").ok();
        let m = V1Mounts::at(root.path(), controllers);
        (root, m)
    }

    const ALL: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "cpuset", "freezer"];

    #[test]
    fn a_device_policy_denies_all_first_and_the_instance_joins_the_devices_hierarchy() {
        let mut with_devices = ALL.to_vec();
        with_devices.push("devices");
        let (root, m) = fake_tree(&with_devices);
        let cg = V1Cgroup::create(
            &m,
            "d1",
            &Limits::default(),
            crate::DevicePolicy::standard(),
        )
        .unwrap();
        let dir = root.path().join("devices/isolab/d1");
        assert_eq!(
            std::fs::read_to_string(dir.join("devices.deny")).unwrap(),
            "a"
        );
        // Every rule, in order, through one open file (a fake file keeps
        // them side by side; the kernel takes each write as one rule).
        let allow = std::fs::read_to_string(dir.join("devices.allow")).unwrap();
        assert!(allow.starts_with("c *:* m"), "{allow}");
        assert!(allow.contains("c 1:3 rwm"), "{allow}");
        assert!(allow.ends_with("c 136:* rwm"), "{allow}");
        assert!(cg.self_join_files().contains(&dir.join("tasks")));
        // Without a policy the devices hierarchy is not touched.
        let cg2 =
            V1Cgroup::create(&m, "d2", &Limits::default(), DevicePolicy::Unrestricted).unwrap();
        assert!(!root.path().join("devices/isolab/d2").exists());
        assert!(cg2
            .paths()
            .iter()
            .all(|p| !p.starts_with(root.path().join("devices"))));
        // A host without the devices controller refuses a policy by name.
        let (_r, no_dev) = fake_tree(&ALL);
        let err = V1Cgroup::create(&no_dev, "d3", &Limits::default(), DevicePolicy::standard())
            .unwrap_err();
        assert!(err.to_string().contains("'devices'"), "{err}");
    }

    #[test]
    fn limits_are_written_in_v1_files_and_units() {
        let (root, m) = fake_tree(&ALL);
        let limits = Limits {
            memory_bytes: Some(32 << 20),
            cpus: Some(0.2),
            pids: Some(32),
            cpuset: Some(CpuSet::parse("1").unwrap()),
        };
        let cg = V1Cgroup::create(&m, "i1", &limits, DevicePolicy::Unrestricted).unwrap();
        let r = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(r("memory/isolab/i1/memory.limit_in_bytes"), "33554432");
        assert_eq!(r("cpu/isolab/i1/cpu.cfs_period_us"), "100000");
        assert_eq!(r("cpu/isolab/i1/cpu.cfs_quota_us"), "20000");
        assert_eq!(r("pids/isolab/i1/pids.max"), "32");
        assert_eq!(r("cpuset/isolab/cpuset.cpus"), "0-1");
        assert_eq!(r("cpuset/isolab/i1/cpuset.cpus"), "1");
        assert_eq!(r("cpuset/isolab/i1/cpuset.mems"), "0");
        assert_eq!(cg.paths().len(), 6);
        let tasks = cg.self_join_files();
        assert_eq!(tasks.len(), 6);
        assert!(tasks.contains(&root.path().join("memory/isolab/i1/tasks")));
        cg.add_pid(4242).unwrap();
        assert_eq!(r("freezer/isolab/i1/cgroup.procs"), "4242");
    }

    #[test]
    fn stats_are_normalised_to_microseconds() {
        let (root, m) = fake_tree(&ALL);
        let cg =
            V1Cgroup::create(&m, "i2", &Limits::default(), DevicePolicy::Unrestricted).unwrap();
        let w = |p: &str, v: &str| std::fs::write(root.path().join(p), v).unwrap();
        w("memory/isolab/i2/memory.usage_in_bytes", "1000\n");
        w("memory/isolab/i2/memory.max_usage_in_bytes", "5000\n");
        w(
            "memory/isolab/i2/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        w(
            "cpu/isolab/i2/cpu.stat",
            "nr_periods 20\nnr_throttled 15\nthrottled_time 1500000000\n",
        );
        w("cpuacct/isolab/i2/cpuacct.usage", "400000000\n");
        w("pids/isolab/i2/pids.current", "3\n");
        w("pids/isolab/i2/pids.peak", "32\n");
        w("pids/isolab/i2/pids.events", "max 7\n");
        let s = cg.stats().unwrap();
        assert_eq!(s.memory_current_bytes, Some(1000));
        assert_eq!(s.memory_peak_bytes, Some(5000));
        assert_eq!(s.oom_kills, 1);
        assert_eq!(s.cpu_periods, Some(20));
        assert_eq!(s.cpu_throttled_periods, Some(15));
        assert_eq!(s.cpu_throttled_usec, Some(1_500_000));
        assert_eq!(s.cpu_usage_usec, Some(400_000));
        assert_eq!(s.pids_peak, Some(32));
        assert_eq!(s.pids_limit_hits, Some(7));
    }

    #[test]
    fn a_missing_controller_changes_nothing() {
        let (root, m) = fake_tree(&["memory", "cpu", "cpuacct"]);
        let err =
            V1Cgroup::create(&m, "i3", &Limits::default(), DevicePolicy::Unrestricted).unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerMissing { ref controller } if controller == "pids")
        );
        assert!(!root.path().join("memory/isolab").exists());
    }

    #[test]
    fn a_cpuset_the_host_lacks_is_refused_before_any_change() {
        let (root, m) = fake_tree(&ALL);
        let limits = Limits {
            cpuset: Some(CpuSet::parse("5").unwrap()),
            ..Limits::default()
        };
        let err = V1Cgroup::create(&m, "i4", &limits, DevicePolicy::Unrestricted).unwrap_err();
        assert!(err.to_string().contains("0-1"), "{err}");
        assert!(!root.path().join("memory/isolab").exists());
    }

    #[test]
    fn a_failed_limit_write_removes_what_was_created() {
        let (root, m) = fake_tree(&ALL);
        // A directory where the limit file should be makes the write fail.
        std::fs::create_dir_all(root.path().join("pids/isolab/i5/pids.max")).unwrap();
        let limits = Limits {
            pids: Some(8),
            ..Limits::default()
        };
        assert!(V1Cgroup::create(&m, "i5", &limits, DevicePolicy::Unrestricted).is_err());
        assert!(!root.path().join("memory/isolab/i5").exists());
        assert!(!root.path().join("cpu/isolab").exists());
    }

    #[test]
    fn remove_deletes_instance_and_unused_parent() {
        let (root, m) = fake_tree(&["memory", "cpu", "cpuacct", "pids"]);
        let cg =
            V1Cgroup::create(&m, "i6", &Limits::default(), DevicePolicy::Unrestricted).unwrap();
        // Fake trees have no kernel files; make the directories removable.
        assert!(V1Cgroup::open(&m, "i6").is_some());
        cg.remove().unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            assert!(!root.path().join(c).join("isolab").exists(), "{c}");
        }
        assert!(V1Cgroup::open(&m, "i6").is_none());
    }
}
