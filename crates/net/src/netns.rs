//! Network namespaces: a named one bind-mounted under `/run/netns` (the
//! layout `ip netns` uses, so `ip -n NAME ...` can inspect it), running
//! code inside one, and entering one from a child before exec.
//!
//! The caller's threads never change namespace: creating and entering
//! happen on short-lived threads spawned here. A netlink socket or a
//! `/dev/net/tun` fd opened on such a thread stays bound to that
//! namespace after the thread is gone, which is all the rest of the crate
//! needs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where `ip netns` keeps its names.
pub const RUN_NETNS: &str = "/run/netns";

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The directory for namespace names could not be created.
    #[error("Could not create {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The mount-point file for the name could not be created.
    #[error("Could not create namespace file {path}")]
    NameFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// unshare(CLONE_NEWNET) failed.
    #[error(
        "Could not create a network namespace (unshare CLONE_NEWNET; needs root/CAP_SYS_ADMIN)"
    )]
    Unshare(#[source] nix::Error),
    /// Bind-mounting the namespace onto its name failed.
    #[error("Could not bind-mount the new network namespace onto {path}")]
    BindMount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// Opening a namespace file failed.
    #[error("Could not open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Unmounting a namespace name failed.
    #[error("Could not unmount network namespace {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// Removing the name's file failed.
    #[error("Could not remove namespace file {path}")]
    Unlink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// setns(CLONE_NEWNET) failed.
    #[error("Could not enter network namespace (setns)")]
    Setns(#[source] nix::Error),
    /// The helper thread could not be spawned or panicked.
    #[error("Namespace helper thread failed")]
    Thread(#[source] io::Error),
}

/// A network namespace kept alive by a bind mount at `<run_dir>/<name>`.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
    fd: OwnedFd,
}

impl NamedNetns {
    /// Creates a fresh namespace named `name` under `run_dir`. Fails if the
    /// name exists (remove stale ones first with [`remove_name`]).
    pub fn create(run_dir: &Path, name: &str) -> Result<NamedNetns, NetnsError> {
        let path = run_dir.join(name);
        // Another workbench may remove the (then empty) directory between
        // our mkdir and create; try again a few times.
        let mut attempt = 0;
        loop {
            fs::create_dir_all(run_dir).map_err(|source| NetnsError::RunDir {
                path: run_dir.to_owned(),
                source,
            })?;
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&path)
            {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
                Err(source) => {
                    return Err(NetnsError::NameFile {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        let made = spawn_scoped(|| -> Result<(), NetnsError> {
            // Only this helper thread moves into the new namespace; it ends
            // right after the bind mount, which keeps the namespace alive.
            unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::BindMount {
                path: path.clone(),
                source,
            })
        })
        .and_then(|r| r);
        if let Err(err) = made {
            let _ = fs::remove_file(&path);
            return Err(err);
        }
        match open(&path) {
            Ok(fd) => Ok(NamedNetns {
                name: name.to_owned(),
                path,
                fd,
            }),
            Err(err) => {
                let _ = remove_name(&path);
                Err(err)
            }
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted file (`/run/netns/<name>`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the name, and the names directory when that leaves it
    /// empty. The namespace itself, with every interface in it, is freed by
    /// the kernel once no process, socket or fd refers to it.
    pub fn remove(self) -> Result<(), NetnsError> {
        let NamedNetns { path, fd, .. } = self;
        drop(fd);
        remove_name(&path)?;
        if let Some(dir) = path.parent() {
            // Fails harmlessly (ENOTEMPTY) while other names live there.
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}

impl AsFd for NamedNetns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Unmounts and unlinks a namespace name; a missing name is not an error.
/// Returns whether something was removed.
pub fn remove_name(path: &Path) -> Result<bool, NetnsError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: exists but is not a mount point (a half-made name).
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(source) => {
            return Err(NetnsError::Unmount {
                path: path.to_owned(),
                source,
            })
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(NetnsError::Unlink {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens a namespace file (`/run/netns/x`, `/proc/<pid>/ns/net`).
pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Opens the network namespace of process `pid`.
pub fn open_pid(pid: i32) -> Result<OwnedFd, NetnsError> {
    open(&PathBuf::from(format!("/proc/{pid}/ns/net")))
}

fn spawn_scoped<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("isolab-netns".into())
            .spawn_scoped(s, f)
            .map_err(NetnsError::Thread)?;
        handle
            .join()
            .map_err(|_| NetnsError::Thread(io::Error::other("helper thread panicked")))
    })
}

/// Runs `f` on a helper thread inside the namespace `ns`, and returns its
/// result. Sockets and fds opened by `f` stay bound to `ns`.
pub fn run_in<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    spawn_scoped(move || {
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Setns)?;
        Ok(f())
    })
    .and_then(|r| r)
}

/// Whether the calling thread is in the network namespace `ns` (same
/// namespace inode; false when either cannot be read).
pub fn is_current(ns: BorrowedFd<'_>) -> bool {
    let here = match std::fs::metadata("/proc/thread-self/ns/net") {
        Ok(m) => m,
        Err(_) => return false,
    };
    match nix::sys::stat::fstat(ns) {
        Ok(st) => {
            use std::os::unix::fs::MetadataExt;
            st.st_ino == here.ino() && st.st_dev == here.dev()
        }
        Err(_) => false,
    }
}

/// Moves the calling thread into the namespace `fd`. Async-signal-safe (one
/// syscall), for `CommandExt::pre_exec` in a child: run a plain process in
/// the workbench namespace.
pub fn enter_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads its two integer arguments; an invalid fd
    // makes it fail with EBADF, which is returned.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The raw fd of a namespace, for [`enter_raw`] in `pre_exec`.
pub fn raw(ns: &impl AsFd) -> RawFd {
    ns.as_fd().as_raw_fd()
}
