//! Host-side posture read from the real /proc of a running process.

use isolab_isolation::posture::{HostKernel, ProcessPosture, Seccomp};

#[test]
fn the_posture_of_a_real_process_matches_what_it_is() {
    let me = std::process::id();
    let p = ProcessPosture::read(std::path::Path::new("/proc"), me, "test").unwrap();
    assert_eq!(p.pid, me);
    assert_eq!(p.uids.unwrap()[1], nix::unistd::geteuid().as_raw());
    assert_eq!(
        p.host_user_ns,
        Some(true),
        "a test runs in the host's user namespace"
    );
    assert!(p.threads.unwrap() >= 1);
    assert!(p.cap_bnd.is_some() && p.seccomp.is_some());
    // A fresh child under a seccomp filter would say Filter; this test
    // process runs without one unless the harness itself is filtered.
    assert!(matches!(
        p.seccomp,
        Some(Seccomp::Disabled | Seccomp::Filter)
    ));
    let k = HostKernel::read(std::path::Path::new("/proc"));
    assert!(!k.release.is_empty() && k.boot_id.is_some());
}
