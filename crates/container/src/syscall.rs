//! The seam between the launch sequence and the kernel: every call that
//! changes the host or the container's view (mounts, pivot_root, hostname,
//! namespaces, ids, network) goes through [`Syscall`], so the sequence is
//! unit-tested with a recording double.
//!
//! The real implementation runs in the cloned child of a possibly
//! multi-threaded launcher, so it must not allocate: nix converts paths
//! shorter than 1 KiB on the stack, and every string comes prepared.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

/// Host-changing calls of the launch sequence.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    fn mkdir(&self, path: &Path, mode: Mode) -> nix::Result<()>;
    /// Creates an empty regular file (a bind-mount target).
    fn create_file(&self, path: &Path) -> nix::Result<()>;
    fn symlink(&self, target: &str, link: &Path) -> nix::Result<()>;
    /// Whether `path` is a directory (ENOENT when absent).
    fn is_dir(&self, path: &Path) -> nix::Result<bool>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    /// Becomes uid/gid 0 with no supplementary groups (inside a user namespace).
    fn become_root(&self) -> nix::Result<()>;
    /// Sets IFF_UP on `lo` in the current network namespace.
    fn loopback_up(&self) -> nix::Result<()>;
    /// Writes `data` to an existing file (a cgroup interface file).
    fn write_file(&self, path: &Path, data: &[u8]) -> nix::Result<()>;
    /// Keeps only the capabilities in `keep` (a kernel mask): drops the rest
    /// from the bounding set, sets permitted and effective to `keep`,
    /// empties the inheritable set (as moby does since CVE-2022-24769) and
    /// clears the ambient set.
    fn drop_capabilities(&self, keep: u64) -> nix::Result<()>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> nix::Result<()>;
    /// Installs one seccomp BPF program (`seccomp(SECCOMP_SET_MODE_FILTER)`).
    fn install_seccomp(&self, program: &[seccompiler::sock_filter]) -> nix::Result<()>;
    /// Receives a network namespace descriptor on `sock` (an `N` message
    /// with `SCM_RIGHTS`) and joins it.
    fn join_netns_from(&self, sock: std::os::fd::RawFd) -> nix::Result<()>;
}

/// `struct __user_cap_header_struct` (`linux/capability.h`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 takes two (bits 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn mkdir(&self, path: &Path, mode: Mode) -> nix::Result<()> {
        match nix::unistd::mkdir(path, mode) {
            Err(nix::Error::EEXIST) => Ok(()),
            r => r,
        }
    }

    fn create_file(&self, path: &Path) -> nix::Result<()> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        drop(fd);
        Ok(())
    }

    fn symlink(&self, target: &str, link: &Path) -> nix::Result<()> {
        match nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link) {
            Err(nix::Error::EEXIST) => Ok(()),
            r => r,
        }
    }

    fn is_dir(&self, path: &Path) -> nix::Result<bool> {
        let st = nix::sys::stat::lstat(path)?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn become_root(&self) -> nix::Result<()> {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        setgroups(&[])?;
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
    }

    fn loopback_up(&self) -> nix::Result<()> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        use std::os::fd::AsRawFd;
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // SAFETY: `ifreq` is a plain C struct (a name array and a union of
        // integers and addresses) for which all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one `ifreq` through the pointer, which
        // points to a live, initialised value for the duration of the call;
        // `sock` is an open socket owned by this function.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
        nix::Error::result(rc).map(drop)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> nix::Result<()> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        let n = nix::unistd::write(&fd, data)?;
        if n == data.len() {
            Ok(())
        } else {
            Err(nix::Error::EIO)
        }
    }

    fn drop_capabilities(&self, keep: u64) -> nix::Result<()> {
        for cap in 0..64u64 {
            if keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: PR_CAPBSET_DROP takes a capability number, no pointers.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            match nix::Error::result(rc) {
                Ok(_) => {}
                // Past the kernel's last capability.
                Err(nix::Error::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        nix::Error::result(rc)?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // Inheritable stays empty: a non-empty inheritable set lets a file
        // with inheritable file capabilities gain them across execve, past
        // what the container's root was meant to keep (CVE-2022-24769).
        let half = |bits: u32| CapData {
            effective: bits,
            permitted: bits,
            inheritable: 0,
        };
        let data = [half(keep as u32), half((keep >> 32) as u32)];
        // SAFETY: capset reads one header and two data structs (version 3)
        // through valid pointers to locals that outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        nix::Error::result(rc).map(drop)
    }

    fn set_no_new_privs(&self) -> nix::Result<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        nix::Error::result(rc).map(drop)
    }

    fn join_netns_from(&self, sock: std::os::fd::RawFd) -> nix::Result<()> {
        let fd = crate::process::recv_fd(sock, crate::sync::NETNS)?;
        // SAFETY: setns takes a descriptor and a flag; `fd` was just
        // received and is closed right after.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        crate::process::close(fd);
        nix::Error::result(rc).map(drop)
    }

    fn install_seccomp(&self, program: &[seccompiler::sock_filter]) -> nix::Result<()> {
        let prog = libc::sock_fprog {
            len: u16::try_from(program.len()).map_err(|_| nix::Error::E2BIG)?,
            // seccompiler's sock_filter is `repr(C)` {u16, u8, u8, u32},
            // the layout of the kernel's (and libc's) `struct sock_filter`.
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies `prog.len` instructions from
        // `prog.filter`, which points into `program`, alive for the call;
        // the program is only read.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        nix::Error::result(rc).map(drop)
    }
}

#[cfg(test)]
pub(crate) mod recording {
    //! A test double that records every call and can fail one of them.

    use super::*;
    use std::cell::RefCell;

    #[derive(Debug, Default)]
    pub(crate) struct RecordingSyscall {
        pub calls: RefCell<Vec<String>>,
        /// Fail the first call whose record starts with this prefix.
        pub fail_on: Option<(&'static str, nix::Error)>,
        /// Paths that `is_dir` reports as directories; others are files,
        /// and paths listed in `absent` do not exist.
        pub dirs: Vec<&'static str>,
        pub absent: Vec<&'static str>,
    }

    impl RecordingSyscall {
        fn record(&self, call: String) -> nix::Result<()> {
            let fail = matches!(self.fail_on, Some((p, _)) if call.starts_with(p));
            self.calls.borrow_mut().push(call);
            match (fail, self.fail_on) {
                (true, Some((_, e))) => Err(e),
                _ => Ok(()),
            }
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }

        /// Index of the first call starting with `prefix`.
        pub fn position(&self, prefix: &str) -> Option<usize> {
            self.calls
                .borrow()
                .iter()
                .position(|c| c.starts_with(prefix))
        }
    }

    impl Syscall for RecordingSyscall {
        fn mount(
            &self,
            source: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            let names: Vec<&str> = flags.iter_names().map(|(n, _)| n).collect();
            let flags = if names.is_empty() {
                "-".to_string()
            } else {
                names.join(" | ")
            };
            self.record(format!(
                "mount {} {} {} {} {}",
                source.unwrap_or("-"),
                target.display(),
                fstype.unwrap_or("-"),
                flags,
                data.unwrap_or("-")
            ))
        }
        fn umount2(&self, target: &Path, _flags: MntFlags) -> nix::Result<()> {
            self.record(format!("umount2 {}", target.display()))
        }
        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.record(format!(
                "pivot_root {} {}",
                new_root.display(),
                put_old.display()
            ))
        }
        fn chdir(&self, path: &Path) -> nix::Result<()> {
            self.record(format!("chdir {}", path.display()))
        }
        fn mkdir(&self, path: &Path, _mode: Mode) -> nix::Result<()> {
            self.record(format!("mkdir {}", path.display()))
        }
        fn create_file(&self, path: &Path) -> nix::Result<()> {
            self.record(format!("create {}", path.display()))
        }
        fn symlink(&self, target: &str, link: &Path) -> nix::Result<()> {
            self.record(format!("symlink {} {}", link.display(), target))
        }
        fn is_dir(&self, path: &Path) -> nix::Result<bool> {
            let p = path.to_str().unwrap_or_default();
            if self.absent.contains(&p) {
                return Err(nix::Error::ENOENT);
            }
            Ok(self.dirs.contains(&p))
        }
        fn sethostname(&self, name: &str) -> nix::Result<()> {
            self.record(format!("sethostname {name}"))
        }
        fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
            let names: Vec<&str> = flags.iter_names().map(|(n, _)| n).collect();
            self.record(format!("unshare {}", names.join(" | ")))
        }
        fn become_root(&self) -> nix::Result<()> {
            self.record("become_root".into())
        }
        fn loopback_up(&self) -> nix::Result<()> {
            self.record("loopback_up".into())
        }
        fn write_file(&self, path: &Path, data: &[u8]) -> nix::Result<()> {
            self.record(format!(
                "write {} {}",
                path.display(),
                String::from_utf8_lossy(data)
            ))
        }
        fn drop_capabilities(&self, keep: u64) -> nix::Result<()> {
            self.record(format!("drop_capabilities {keep:016x}"))
        }
        fn set_no_new_privs(&self) -> nix::Result<()> {
            self.record("no_new_privs".into())
        }
        fn install_seccomp(&self, program: &[seccompiler::sock_filter]) -> nix::Result<()> {
            self.record(format!("seccomp {}", program.len()))
        }
        fn join_netns_from(&self, sock: std::os::fd::RawFd) -> nix::Result<()> {
            self.record(format!("join_netns {sock}"))
        }
    }
}
