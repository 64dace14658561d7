//! Small helpers to read and write cgroup interface files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::CgroupError;

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file if it exists; `Ok(None)` when the kernel does not have it.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn parse_u64(path: &Path, content: &str) -> Result<u64, CgroupError> {
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.trim().to_string(),
    })
}

/// Reads a single-number file; `None` if absent.
pub(crate) fn read_u64_opt(path: &Path) -> Result<Option<u64>, CgroupError> {
    read_opt(path)?.map(|s| parse_u64(path, &s)).transpose()
}

/// Value of `key` in a flat-keyed file (`key value` per line), e.g. `cpu.stat`.
pub(crate) fn keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// Pids listed in a `cgroup.procs` file; a missing file is an empty cgroup.
pub(crate) fn procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read_opt(path)?
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Creates `dir`; an existing directory is fine.
pub(crate) fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes an (empty) cgroup directory, retrying while the kernel still
/// counts exiting tasks in it (EBUSY). Absent is success.
pub(crate) fn rmdir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Removes the shared parent if no instance uses it any more. Another
/// launcher may be creating a child concurrently, so "busy" is not an error.
pub(crate) fn rmdir_parent_if_unused(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

/// Kills every pid listed in `procs_file` until the file stays empty.
pub(crate) fn kill_loop(procs_file: &Path, dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = procs(procs_file)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::NotEmpty {
                path: dir.to_path_buf(),
            });
        }
        for pid in pids {
            match nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Kill {
                        pid,
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn add_pid(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    let path: PathBuf = dir.join("cgroup.procs");
    std::fs::write(&path, pid.to_string()).map_err(|source| CgroupError::AddPid {
        pid,
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_parsed_by_key_not_position() {
        let s = "nr_periods 12\nnr_throttled 3\nthrottled_time 4500000\n";
        assert_eq!(keyed(s, "nr_throttled"), Some(3));
        assert_eq!(keyed(s, "throttled_time"), Some(4_500_000));
        assert_eq!(keyed(s, "nr_bursts"), None);
        assert_eq!(keyed(s, "nr_period"), None);
    }
}
