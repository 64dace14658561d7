//! Per-instance state on the host: `<run_dir>/<id>/` holding `owner`
//! (launcher pid and its start time), the overlay's `upper/` and `work/`,
//! and the `rootfs/` mount point (mounted only inside the container's mount
//! namespace). Also finds and removes instances whose launcher is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use isolab_cgroups::Hierarchy;

use crate::error::ContainerError;

/// Host uid/gid that root of a user-namespaced container maps to.
pub const USERNS_BASE_ID: u32 = 100_000;
/// Number of ids mapped.
pub const USERNS_ID_COUNT: u32 = 65_536;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh instance id: unique among live launchers (pid + counter) and
/// across pid reuse (low bits of the clock).
pub fn new_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("c{}-{}-{:05x}", std::process::id(), n, t & 0xfffff)
}

/// Whether `name` has the shape [`new_id`] gives (`c<pid>-<n>-<hex>`):
/// stale cleanup never touches anything else.
pub fn is_instance_id(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('c') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && !parts[1].is_empty()
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && !parts[2].is_empty()
        && parts[2].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The instance directory and what it contains.
#[derive(Debug)]
pub struct InstanceDir {
    pub id: String,
    pub dir: PathBuf,
}

impl InstanceDir {
    /// Creates `<run_dir>/<id>/{owner,upper,work,rootfs}`.
    pub fn create(run_dir: &Path, id: &str, user_namespace: bool) -> Result<Self, ContainerError> {
        let dir = run_dir.join(id);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContainerError::InstanceDir { path, source }
        };
        // Another launcher may remove the (empty) run dir between the two
        // calls; try again then.
        let mut tries = 0;
        loop {
            std::fs::create_dir_all(run_dir).map_err(err(run_dir))?;
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                r => break r.map_err(err(&dir))?,
            }
        }
        let me = Self {
            id: id.to_string(),
            dir,
        };
        let owner = me.dir.join("owner");
        // Without a readable start time other launchers would take this
        // live instance for a stale one, so that is an error too.
        owner_line(std::process::id() as i32)
            .ok_or_else(|| {
                std::io::Error::other("cannot read this process's start time from /proc")
            })
            .and_then(|line| std::fs::write(&owner, line))
            .map_err(err(&owner))?;
        // Private to root (0700): the container's writable layer is no one
        // else's business. In a user namespace the container's root (host
        // uid 100000) mounts the overlay, so it owns the instance dir and
        // the layers instead.
        let mut dirs = vec![me.dir.clone()];
        for sub in ["upper", "work", "rootfs"] {
            let p = me.dir.join(sub);
            std::fs::create_dir(&p).map_err(err(&p))?;
            if sub != "rootfs" {
                dirs.push(p);
            }
        }
        for p in dirs {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(err(&p))?;
            if user_namespace {
                nix::unistd::chown(
                    &p,
                    Some(nix::unistd::Uid::from_raw(USERNS_BASE_ID)),
                    Some(nix::unistd::Gid::from_raw(USERNS_BASE_ID)),
                )
                .map_err(|e| ContainerError::InstanceDir {
                    path: p.clone(),
                    source: e.into(),
                })?;
            }
        }
        Ok(me)
    }

    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Removes the directory tree. The overlay lives only in the container's
    /// mount namespace, so a lazy unmount here is a no-op in the normal case
    /// and a safety net otherwise.
    pub fn remove(&self) -> std::io::Result<()> {
        let _ = nix::mount::umount2(&self.rootfs(), nix::mount::MntFlags::MNT_DETACH);
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // The run dir itself goes when its last instance does (busy otherwise),
        // and so does the default's parent, `/run/isolab`, once nothing of
        // ours (a workbench's lock, an OCI peer's root) is left in it.
        if let Some(run_dir) = self.dir.parent() {
            if std::fs::remove_dir(run_dir).is_ok() {
                if let Some(ours) = run_dir.parent().filter(|p| p.ends_with("isolab")) {
                    let _ = std::fs::remove_dir(ours);
                }
            }
        }
        Ok(())
    }
}

/// "<pid> <start time in clock ticks since boot>" of `pid`.
fn owner_line(pid: i32) -> Option<String> {
    Some(format!("{pid} {}\n", start_time(Path::new("/proc"), pid)?))
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name,
/// which may itself contain spaces and parentheses).
pub(crate) fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the launcher recorded in an owner file is still the same process.
pub(crate) fn owner_alive(proc_root: &Path, owner: &str) -> bool {
    let mut it = owner.split_whitespace();
    let (Some(pid), Some(start)) = (
        it.next().and_then(|p| p.parse::<i32>().ok()),
        it.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    start_time(proc_root, pid) == Some(start)
}

/// The launcher pid an id was made by (`c<pid>-...`).
fn id_pid(id: &str) -> Option<i32> {
    id.strip_prefix('c')?.split('-').next()?.parse().ok()
}

/// Instances under `run_dir` whose launcher is gone: a dead owner; or, with
/// no owner file yet (a launcher killed between mkdir and writing it), a
/// dead pid in the id, or a directory older than a few seconds (the pid was
/// reused).
pub fn stale_instances(run_dir: &Path, proc_root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            if !is_instance_id(&id) {
                return None;
            }
            let stale = match std::fs::read_to_string(e.path().join("owner")) {
                Ok(owner) => !owner_alive(proc_root, &owner),
                Err(_) if id_pid(&id).is_some_and(|p| !proc_root.join(p.to_string()).exists()) => {
                    true
                }
                Err(_) => e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(10)),
            };
            stale.then_some(id)
        })
        .collect()
}

/// Removes stale instances: kills what is left in their cgroups, removes
/// the cgroups and the directories. Returns the ids removed.
pub fn clean_stale(run_dir: &Path, hierarchy: &Hierarchy) -> Vec<String> {
    let mut removed = Vec::new();
    for id in stale_instances(run_dir, Path::new("/proc")) {
        if let Some(cg) = isolab_cgroups::open_existing(hierarchy, &id) {
            if cg.remove().is_err() {
                continue;
            }
        }
        let inst = InstanceDir {
            id: id.clone(),
            dir: run_dir.join(&id),
        };
        if inst.remove().is_ok() {
            removed.push(id);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_cgroup_safe() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_instance_id(&a), "{a}");
        for other in [
            "bundles",
            "net-isolab0.lock",
            "c1-2",
            "c-1-2-3",
            "cx-1-ab",
            "c1-2-zz",
        ] {
            assert!(!is_instance_id(other), "{other}");
        }
        assert!(!a.contains('/') && a.len() < 40);
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let proc_ = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc_.path().join("42")).unwrap();
        let fields: Vec<String> = (3..=22).map(|i| i.to_string()).collect();
        std::fs::write(
            proc_.path().join("42/stat"),
            format!("42 (a) b (c) {} 23 24\n", fields.join(" ")),
        )
        .unwrap();
        assert_eq!(start_time(proc_.path(), 42), Some(22));
        assert!(owner_alive(proc_.path(), "42 22\n"));
        // Same pid, different start time: the pid was reused.
        assert!(!owner_alive(proc_.path(), "42 21\n"));
        assert!(!owner_alive(proc_.path(), "43 22\n"));
        assert!(!owner_alive(proc_.path(), "garbage"));
    }

    #[test]
    fn only_instances_of_dead_launchers_are_stale() {
        let run = tempfile::tempdir().unwrap();
        let me = InstanceDir::create(run.path(), "c1-0-aa", false).unwrap();
        std::fs::create_dir(run.path().join("c999999999-0-bb")).unwrap();
        std::fs::write(run.path().join("c999999999-0-bb/owner"), "999999999 1\n").unwrap();
        // A directory without an owner, just created by a live pid, is not
        // stale yet; one by a dead pid is.
        std::fs::create_dir(run.path().join("c1-0-cc")).unwrap();
        std::fs::create_dir(run.path().join("c999999998-0-dd")).unwrap();
        // Somebody else's directory is never a candidate.
        std::fs::create_dir(run.path().join("bundles")).unwrap();
        let mut stale = stale_instances(run.path(), Path::new("/proc"));
        stale.sort();
        assert_eq!(stale, vec!["c999999998-0-dd", "c999999999-0-bb"]);
        assert!(me.rootfs().is_dir() && me.upper().is_dir() && me.work().is_dir());
        for d in [&me.dir, &me.upper(), &me.work()] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        me.remove().unwrap();
        assert!(!run.path().join("c1-0-aa").exists());
    }
}
