//! Privileged tests of the container's confinement on this host: the
//! default profile (Docker's capabilities, seccomp profile, devices cgroup),
//! the no_new_privileges option and the privileged profile, observed from
//! inside by `examples/confinement_probe.rs` run as the workload. Also the
//! launch phases. Without the abilities each test prints
//! `SKIPPED <test>: <reason>`; in strict mode it fails.
//!
//! Needs `cargo build -p isolab-workload` and the container crate's examples
//! (`cargo test` builds them).

use std::path::{Path, PathBuf};

use isolab_container::{ContainerConfig, Outcome};
use serde_json::Value;

fn probe_bin() -> PathBuf {
    isolab_testkit::target_profile_dir().join("examples/confinement_probe")
}

fn require(test: &str) -> bool {
    isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_root(),
            (!probe_bin().is_file()).then(|| {
                format!(
                    "{} missing: cargo build -p isolab-container --examples",
                    probe_bin().display()
                )
            }),
            isolab_testkit::missing_binary("workload", "isolab-workload"),
            isolab_cgroups::Hierarchy::detect_host()
                .err()
                .map(|e| format!("no cgroups: {e}")),
        ]),
    )
}

fn config(bin: &Path, test: &str) -> ContainerConfig {
    let mut c = ContainerConfig::new(bin, "probe");
    c.run_dir = PathBuf::from(format!("/run/isolab-test/{test}"));
    c.stop_grace_ms = 2000;
    c
}

fn run(c: &ContainerConfig) -> (Outcome, Value) {
    let o = isolab_container::run(c).unwrap_or_else(|e| panic!("run failed: {e:?}"));
    let _ = std::fs::remove_dir(&c.run_dir);
    assert_eq!(o.exit_code, 0, "stdout: {} stderr: {}", o.stdout, o.stderr);
    let r = o.result.clone().expect("the probe prints a JSON line");
    (o, r)
}

fn host_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap()
}

#[test]
fn a_default_container_runs_with_dockers_capabilities_seccomp_and_devices() {
    let test = "a_default_container_runs_with_dockers_capabilities_seccomp_and_devices";
    if !require(test) {
        return;
    }
    let (o, r) = run(&config(&probe_bin(), "hardening-default"));
    let st = &r["status"];
    // Docker's 14: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
    // SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(st[set], "00000000a80425fb", "{set}: {r}");
    }
    // Inheritable empty, as moby since CVE-2022-24769.
    assert_eq!(st["CapInh"], "0000000000000000", "CapInh: {r}");
    assert_eq!(st["CapAmb"], "0000000000000000");
    assert_eq!(st["Seccomp"], "2", "filter mode");
    assert!(
        st["Seccomp_filters"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert_eq!(st["NoNewPrivs"], "0", "off by default, as in Docker");
    // What each attempt got: EPERM from the filter (or the missing
    // capability), ENOSYS for clone3 (libc must fall back to clone), ok for
    // what Docker's default profile allows.
    let expected = [
        ("unshare_user", "EPERM"),
        ("mount_tmpfs", "EPERM"),
        ("keyctl", "EPERM"),
        ("remount_proc_sys_rw", "EPERM"),
        ("remount_sys_rw", "EPERM"),
        ("umount_proc_sys", "EPERM"),
        ("personality_no_randomize", "EPERM"),
        ("clone3", "ENOSYS"),
        ("socket_inet", "ok"),
        ("personality_query", "ok"),
        ("open_dev_null", "ok"),
        ("mknod_block", "ok"),
    ];
    for (attempt, result) in expected {
        assert_eq!(r[attempt], result, "{attempt}: {r}");
    }
    // The node can be made (CAP_MKNOD, as in Docker) but not opened: the
    // devices cgroup denies block device access.
    assert_eq!(r["open_block"], "EPERM", "{r}");
    assert_eq!(r["stdin"], "/dev/null");
    assert_eq!(o.security.name, "default");
    assert_eq!(o.security.capabilities, Some(14));
}

#[test]
fn no_new_privileges_is_set_when_asked() {
    if !require("no_new_privileges_is_set_when_asked") {
        return;
    }
    let mut c = config(&probe_bin(), "hardening-nnp");
    c.no_new_privileges = true;
    let (_, r) = run(&c);
    assert_eq!(r["status"]["NoNewPrivs"], "1");
    assert_eq!(r["status"]["CapEff"], "00000000a80425fb");
    assert_eq!(r["status"]["Seccomp"], "2");
    assert_eq!(r["mount_tmpfs"], "EPERM");
}

#[test]
fn a_privileged_container_keeps_every_capability_and_has_no_filter() {
    if !require("a_privileged_container_keeps_every_capability_and_has_no_filter") {
        return;
    }
    let mut c = config(&probe_bin(), "hardening-privileged");
    c.privileged = true;
    let (o, r) = run(&c);
    let st = &r["status"];
    // Exactly what the launcher has (here root lacks CAP_SYS_RESOURCE).
    assert_eq!(st["CapEff"], host_status("CapEff").as_str(), "{r}");
    assert_eq!(st["CapBnd"], host_status("CapBnd").as_str());
    assert_eq!(st["Seccomp"], "0");
    for allowed in [
        "mount_tmpfs",
        "keyctl",
        "personality_no_randomize",
        "unshare_user",
    ] {
        assert_eq!(r[allowed], "ok", "unconfined on purpose: {allowed}: {r}");
    }
    assert_eq!(r["clone3"], "EINVAL", "the kernel's own answer");
    assert_eq!(o.security.name, "privileged");
}

#[test]
fn launch_phases_are_present_ordered_and_add_up() {
    if !require("launch_phases_are_present_ordered_and_add_up") {
        return;
    }
    let mut c = config(&isolab_testkit::binary("workload"), "phases");
    c.workload = "noop".into();
    let o = isolab_container::run(&c).unwrap();
    let _ = std::fs::remove_dir(&c.run_dir);
    let p = o.phases;
    let steps: u64 = p.named()[..11].iter().map(|(_, v)| v).sum();
    // Each phase is rounded down to a microsecond.
    assert!(p.launch_to_exec_us.abs_diff(steps) <= 10, "{p:?}");
    // On the launcher's path every step takes time; the child's steps may
    // partly overlap the launcher's attach (they are then counted there).
    for (name, v) in [
        ("cgroup", p.cgroup_us),
        ("clone", p.clone_us),
        ("exec", p.exec_us),
    ] {
        assert!(v > 0, "{name} took no time at all: {p:?}");
    }
    let child = p.cgroup_join_us + p.rootfs_us + p.pivot_us + p.paths_us + p.hardening_us;
    assert!(child + p.attach_us > 0, "{p:?}");
    let ready = p.launch_to_ready_us.expect("noop signals ready");
    assert!(ready >= p.launch_to_exec_us);
    // The same clock as the launcher's own launch -> ready figure.
    assert!(
        ready.abs_diff(o.launch_to_ready_us.unwrap()) <= 100,
        "{p:?} {o:?}"
    );
}
