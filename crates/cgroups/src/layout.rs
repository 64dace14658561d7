//! Which cgroup layout the host has, decided by filesystem type like runc,
//! crun and youki do (never by guessing from the first mountinfo line), and
//! where each v1 controller is mounted (controllers may be co-mounted, e.g.
//! `cpu,cpuacct`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, FsType, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, TMPFS_MAGIC};

use crate::CgroupError;

/// The default mount point of the cgroup filesystems.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// The mount table read to locate v1 controllers.
pub const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// cgroup2 only, mounted at the root.
    Unified,
    /// v1 controllers plus a cgroup2 hierarchy at `<root>/unified`.
    Hybrid,
    /// v1 controllers only.
    Legacy,
}

/// Classifies a layout from the filesystem types of the root and of
/// `<root>/unified` (`None` when that directory does not exist).
pub fn classify(root: FsType, unified: Option<FsType>) -> Option<Layout> {
    if root == CGROUP2_SUPER_MAGIC {
        Some(Layout::Unified)
    } else if root == TMPFS_MAGIC {
        if unified == Some(CGROUP2_SUPER_MAGIC) {
            Some(Layout::Hybrid)
        } else {
            Some(Layout::Legacy)
        }
    } else if root == CGROUP_SUPER_MAGIC {
        // A single v1 hierarchy mounted directly at the root.
        Some(Layout::Legacy)
    } else {
        None
    }
}

/// Detects the layout of the cgroup filesystems mounted at `root`.
pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
    let st = statfs(root).map_err(|source| CgroupError::Statfs {
        path: root.to_path_buf(),
        source,
    })?;
    let unified = statfs(&root.join("unified"))
        .ok()
        .map(|s| s.filesystem_type());
    classify(st.filesystem_type(), unified).ok_or(CgroupError::NotCgroupFs {
        path: root.to_path_buf(),
        fs_type: st.filesystem_type().0 as i64,
    })
}

/// The hierarchy instances are created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: one directory per controller.
    V1(V1Mounts),
    /// cgroup v2: one tree at `root`.
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// Detects the host's hierarchy: the layout of `root`, then the v1
    /// controller mount points from `mountinfo`. On hybrid hosts the v1
    /// controllers are used (they hold memory, cpu and pids).
    pub fn detect(root: &Path, mountinfo: &Path) -> Result<Self, CgroupError> {
        match detect(root)? {
            Layout::Unified => Ok(Self::V2 {
                root: root.to_path_buf(),
            }),
            Layout::Hybrid | Layout::Legacy => {
                let text = std::fs::read_to_string(mountinfo).map_err(|source| {
                    CgroupError::MountInfo {
                        path: mountinfo.to_path_buf(),
                        source,
                    }
                })?;
                Ok(Self::V1(V1Mounts::from_mountinfo(&text)))
            }
        }
    }

    /// The host's hierarchy at the default paths.
    pub fn detect_host() -> Result<Self, CgroupError> {
        Self::detect(Path::new(DEFAULT_ROOT), Path::new(DEFAULT_MOUNTINFO))
    }

    /// A short name for reports: "v1" or "v2".
    pub fn version(&self) -> &'static str {
        match self {
            Self::V1(_) => "v1",
            Self::V2 { .. } => "v2",
        }
    }
}

/// Every cgroup mount point in `mountinfo` text (v1 controllers, named v1
/// hierarchies such as `name=systemd`, and cgroup2), in order. An OCI
/// runtime creates its `cgroupsPath` in all of them, not only in the
/// controllers the workbench manages.
pub fn cgroup_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vec![];
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        if let Some(mp) = left.split_whitespace().nth(4) {
            let mp = PathBuf::from(unescape_octal(mp));
            if !v.contains(&mp) {
                v.push(mp);
            }
        }
    }
    v
}

/// Mount point of each v1 controller, by controller name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Mounts {
    pub controllers: BTreeMap<String, PathBuf>,
}

impl V1Mounts {
    /// Parses `/proc/self/mountinfo`: every `cgroup` (v1) mount lists its
    /// controllers in the super options (`rw,cpu,cpuacct`).
    pub fn from_mountinfo(text: &str) -> Self {
        let mut controllers = BTreeMap::new();
        for line in text.lines() {
            // "<id> <parent> <maj:min> <root> <mountpoint> <opts> [optional...] - <fstype> <source> <superopts>"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut r = right.split_whitespace();
            if r.next() != Some("cgroup") {
                continue;
            }
            let _source = r.next();
            let superopts = r.next().unwrap_or("");
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_octal(mount_point));
            for opt in superopts.split(',') {
                if is_controller(opt) {
                    controllers
                        .entry(opt.to_string())
                        .or_insert_with(|| mount_point.clone());
                }
            }
        }
        Self { controllers }
    }

    /// The conventional layout `<root>/<controller>` (for fake trees in tests).
    pub fn at(root: &Path, controllers: &[&str]) -> Self {
        Self {
            controllers: controllers
                .iter()
                .map(|c| (c.to_string(), root.join(c)))
                .collect(),
        }
    }

    /// Mount point of `controller`, or a "controller missing" error.
    pub fn get(&self, controller: &str) -> Result<&Path, CgroupError> {
        self.controllers
            .get(controller)
            .map(PathBuf::as_path)
            .ok_or_else(|| CgroupError::ControllerMissing {
                controller: controller.to_string(),
            })
    }
}

fn is_controller(opt: &str) -> bool {
    matches!(
        opt,
        "cpu"
            | "cpuacct"
            | "cpuset"
            | "memory"
            | "pids"
            | "freezer"
            | "devices"
            | "blkio"
            | "hugetlb"
            | "net_cls"
            | "net_prio"
            | "perf_event"
            | "rdma"
            | "misc"
    )
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/odd\\040dir rw - cgroup cgroup rw,freezer
";

    #[test]
    fn comounted_controllers_share_one_mount_point() {
        let m = V1Mounts::from_mountinfo(HYBRID);
        assert_eq!(
            m.get("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            m.get("cpuacct").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(m.get("memory").unwrap(), Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m.get("freezer").unwrap(), Path::new("/mnt/odd dir"));
        // name=systemd is not a controller; cgroup2 is not a v1 mount.
        assert_eq!(m.controllers.len(), 6);
    }

    #[test]
    fn a_missing_controller_is_named() {
        let m = V1Mounts::from_mountinfo(HYBRID);
        let err = m.get("blkio").unwrap_err();
        assert!(err.to_string().contains("'blkio'"), "{err}");
    }

    #[test]
    fn layouts_follow_filesystem_types() {
        assert_eq!(classify(CGROUP2_SUPER_MAGIC, None), Some(Layout::Unified));
        assert_eq!(
            classify(TMPFS_MAGIC, Some(CGROUP2_SUPER_MAGIC)),
            Some(Layout::Hybrid)
        );
        assert_eq!(classify(TMPFS_MAGIC, None), Some(Layout::Legacy));
        assert_eq!(
            classify(TMPFS_MAGIC, Some(TMPFS_MAGIC)),
            Some(Layout::Legacy)
        );
        assert_eq!(classify(nix::sys::statfs::EXT4_SUPER_MAGIC, None), None);
    }

    #[test]
    fn detect_rejects_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        // A temp dir is tmpfs or a disk filesystem; neither with a cgroup2
        // "unified" child, so it is legacy (tmpfs) or refused.
        match detect(dir.path()) {
            Ok(layout) => assert_eq!(layout, Layout::Legacy),
            Err(e) => assert!(matches!(e, CgroupError::NotCgroupFs { .. }), "{e}"),
        }
    }

    #[test]
    fn every_cgroup_mount_is_listed_named_and_unified_included() {
        let text = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
35 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
40 25 0:35 / /proc rw - proc proc rw\n";
        assert_eq!(
            cgroup_mount_points(text),
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/memory"
            ]
            .map(PathBuf::from)
        );
    }
}
