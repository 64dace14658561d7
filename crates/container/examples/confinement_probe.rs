//! A workload for the confinement tests (`tests/hardening.rs`): run as the
//! container's workload, it tries what a default container must not be able
//! to do and a few things it must, and prints one JSON line with each
//! attempt's errno (`"ok"` when it worked) and its own capability, seccomp
//! and no_new_privs state from `/proc/self/status`.
//!
//! Not useful outside a throwaway container: it mounts, creates device
//! nodes and changes namespaces where it can.

use std::ffi::CString;

use serde_json::{json, Map, Value};

fn outcome(rc: libc::c_long) -> Value {
    if rc >= 0 {
        json!("ok")
    } else {
        json!(nix::Error::last()
            .to_string()
            .split(':')
            .next()
            .unwrap_or("?")
            .to_string())
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn mount(src: Option<&str>, target: &str, fstype: Option<&str>, flags: libc::c_ulong) -> Value {
    let (src, fstype) = (src.map(c), fstype.map(c));
    let target = c(target);
    // SAFETY: every pointer is a NUL-terminated string alive for the call,
    // or NULL where mount(2) accepts NULL.
    let rc = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    outcome(rc as libc::c_long)
}

fn main() {
    let mut r = Map::new();
    // First: the state the container gave us.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut st = Map::new();
    for line in status.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.starts_with("Cap") || k.starts_with("Seccomp") || k == "NoNewPrivs" {
                st.insert(k.to_string(), json!(v.trim()));
            }
        }
    }
    r.insert("status".into(), Value::Object(st));
    r.insert(
        "mount_tmpfs".into(),
        mount(Some("tmpfs"), "/tmp", Some("tmpfs"), 0),
    );
    r.insert(
        "remount_proc_sys_rw".into(),
        mount(None, "/proc/sys", None, libc::MS_REMOUNT | libc::MS_BIND),
    );
    r.insert(
        "remount_sys_rw".into(),
        mount(None, "/sys", None, libc::MS_REMOUNT),
    );
    let proc_sys = c("/proc/sys");
    // SAFETY: a NUL-terminated path alive for the call.
    r.insert(
        "umount_proc_sys".into(),
        outcome(unsafe { libc::umount2(proc_sys.as_ptr(), libc::MNT_DETACH) } as _),
    );
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) with integer arguments only.
    r.insert(
        "keyctl".into(),
        outcome(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 0) }),
    );
    // clone3 with no arguments: EINVAL from the kernel, ENOSYS from the filter.
    // SAFETY: a NULL argument of size 0 is rejected without being read.
    r.insert(
        "clone3".into(),
        outcome(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) }),
    );
    // SAFETY: personality takes an integer.
    r.insert(
        "personality_query".into(),
        outcome(unsafe { libc::personality(0xffff_ffff) } as _),
    );
    // SAFETY: as above; ADDR_NO_RANDOMIZE is not among the allowed personas.
    r.insert(
        "personality_no_randomize".into(),
        outcome(unsafe { libc::personality(0x0040000) } as _),
    );
    // SAFETY: socket takes integers.
    r.insert(
        "socket_inet".into(),
        outcome(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) } as _),
    );
    let node = c("/tmp/blockdev");
    // SAFETY: a NUL-terminated path; makedev(8, 0) is a disk's number.
    let mk = unsafe { libc::mknod(node.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(8, 0)) };
    r.insert("mknod_block".into(), outcome(mk as _));
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(node.as_ptr(), libc::O_RDONLY) };
    r.insert("open_block".into(), outcome(fd as _));
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
    }
    let null = c("/dev/null");
    // SAFETY: a NUL-terminated path; closed at once.
    let fd = unsafe { libc::open(null.as_ptr(), libc::O_WRONLY) };
    r.insert("open_dev_null".into(), outcome(fd as _));
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
    }
    r.insert(
        "stdin".into(),
        json!(std::fs::read_link("/proc/self/fd/0")
            .map(|p| p.display().to_string())
            .ok()),
    );
    // Last: if it works (privileged), the process is in a new user
    // namespace and has no power over the container any more.
    // SAFETY: unshare takes flags only.
    r.insert(
        "unshare_user".into(),
        outcome(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as _),
    );
    println!("{}", Value::Object(r));
}
