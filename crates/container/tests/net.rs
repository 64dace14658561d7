//! Privileged tests: a real container attached to a real workbench network
//! (isolab-net) through the launcher's `NetworkHook`, answering HTTP from
//! inside the workbench namespace, and teardown leaving no interface behind.
//!
//! The test process never changes namespace: the launcher clones the
//! container, isolab-net enters namespaces on its own helper threads, and
//! the target of the attach/detach loop is a spawned child that unshared
//! its network namespace in `pre_exec`. Each test has its own workbench
//! name and subnet, so they run in parallel with each other and with
//! `bench ... --net`. Without root, namespaces, cgroups or the workload
//! binary a test prints `SKIPPED <test>: <reason>`; with `CI=true` or
//! `ISOLAB_STRICT=1` it fails instead.
//!
//! Needs the workload binary: `cargo build -p isolab-workload`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use isolab_container::{ContainerConfig, ExitStatus, NetworkHook};
use isolab_net::probe::ProbeConfig;
use isolab_net::{VethAttachment, Workbench, WorkbenchConfig};
use nix::sched::{unshare, CloneFlags};

/// Probes root, a network namespace, a cgroup and the workload binary.
fn require(test: &str) -> Option<PathBuf> {
    let missing = isolab_testkit::first_missing([
        isolab_testkit::missing_container(),
        isolab_testkit::missing_unshare(nix::sched::CloneFlags::CLONE_NEWNET),
    ]);
    isolab_testkit::require(test, missing).then(|| isolab_testkit::binary("workload"))
}

/// The workbench is gone and the host's own interfaces are as they were.
fn assert_left_clean(wcfg: &WorkbenchConfig, host_before: &[String]) {
    assert_workbench_gone(wcfg);
    assert_eq!(
        isolab_testkit::host_interfaces(),
        host_before,
        "host interfaces changed"
    );
}

fn workbench_config(name: &str, bridge: &str, subnet: &str) -> WorkbenchConfig {
    WorkbenchConfig {
        name: name.into(),
        bridge: bridge.into(),
        subnet: subnet.parse().unwrap(),
        ..WorkbenchConfig::default()
    }
}

/// The hook `bench container run --net` uses, in miniature.
#[derive(Debug)]
struct Hook<'a> {
    wb: &'a Workbench,
    veth: Mutex<Option<VethAttachment>>,
}

impl NetworkHook for Hook<'_> {
    fn attach(
        &self,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        *self.veth.lock().unwrap() = Some(self.wb.attach_veth(netns, "eth0")?);
        Ok(())
    }
}

fn link_names(wb: &Workbench) -> Vec<String> {
    let mut n: Vec<String> = wb.links().unwrap().into_iter().map(|l| l.name).collect();
    n.sort();
    n
}

/// Interface names in the namespace of `pid`, from its /proc view.
fn interfaces_of(pid: u32) -> Vec<String> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let mut names: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

fn assert_workbench_gone(cfg: &WorkbenchConfig) {
    let ns = cfg.run_dir.join(&cfg.name);
    assert!(!ns.exists(), "{} left behind", ns.display());
    let lock = cfg.lock_dir.join(format!("net-{}.lock", cfg.name));
    assert!(!lock.exists(), "{} left behind", lock.display());
    assert!(
        !isolab_testkit::host_interfaces().contains(&cfg.bridge),
        "bridge {} leaked into the host namespace",
        cfg.bridge
    );
}

#[test]
fn container_api_answers_over_its_veth_and_teardown_leaves_nothing() {
    let test = "container_api_answers_over_its_veth_and_teardown_leaves_nothing";
    let Some(bin) = require(test) else { return };
    let wcfg = workbench_config("isoctnet1", "isoctbr1", "10.213.1.0/24");
    let host_before = isolab_testkit::host_interfaces();
    let wb = Workbench::create(wcfg.clone()).unwrap();
    let mut c = ContainerConfig::new(&bin, "api");
    c.run_dir = PathBuf::from(format!("/run/isolab-test/{test}"));
    c.stop_grace_ms = 2000;
    let hook = Hook {
        wb: &wb,
        veth: Mutex::new(None),
    };
    let running = isolab_container::start_with(&c, Some(&hook)).unwrap();
    let addr = hook.veth.lock().unwrap().as_ref().unwrap().addr();
    assert!(wcfg.subnet.contains(addr), "{addr} outside {}", wcfg.subnet);
    assert_ne!(addr, wb.bridge_addr());
    let target = std::net::SocketAddr::from((addr, 8080));
    let first = wb
        .probe_first_response(target, running.launched_at(), &ProbeConfig::default())
        .unwrap()
        .expect("GET /health over the veth");
    assert_eq!(first.status, 200);
    let run = wb
        .probe_run(target, 20, &ProbeConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!(run.requests, 20);
    // The container sees only lo and its eth0.
    assert_eq!(
        interfaces_of(running.pid() as u32),
        vec!["eth0".to_owned(), "lo".to_owned()]
    );
    assert_eq!(link_names(&wb).len(), 3, "lo, bridge, veth host end");

    let outcome = running.stop().unwrap();
    assert_eq!(outcome.status, ExitStatus::Exited(0), "{}", outcome.stdout);
    let result = outcome.result.expect("api result line");
    assert!(result["requests"].as_u64().unwrap() >= 21, "{result}");
    drop(hook);
    assert_eq!(
        link_names(&wb),
        vec!["isoctbr1".to_owned(), "lo".to_owned()],
        "the veth host end outlived the container"
    );
    assert_eq!(wb.leased(), 0, "the address lease was not released");
    wb.destroy().unwrap();
    assert_left_clean(&wcfg, &host_before);
    let _ = std::fs::remove_dir(&c.run_dir);
    let _ = std::fs::remove_dir("/run/isolab-test");
}

/// 200 instances in a row, as attach/detach cycles in-process against one
/// spawned namespace holder (a full container launch each would take
/// minutes on this 2-core host; the launch path itself is covered above).
#[test]
fn two_hundred_sequential_attachments_leave_no_interface_behind() {
    let test = "two_hundred_sequential_attachments_leave_no_interface_behind";
    if require(test).is_none() {
        return;
    }
    let wcfg = workbench_config("isoctnet2", "isoctbr2", "10.213.2.0/24");
    let host_before = isolab_testkit::host_interfaces();
    let wb = Workbench::create(wcfg.clone()).unwrap();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("120");
    // SAFETY: runs in the forked child before exec; unshare is one syscall.
    unsafe {
        cmd.pre_exec(|| unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    let mut holder = cmd.spawn().unwrap();
    let pid = holder.id();
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let veth = wb.attach_veth_pid(pid as i32, "eth0").unwrap();
        seen.insert(veth.addr());
        assert_eq!(interfaces_of(pid), vec!["eth0", "lo"], "instance {i}");
        assert_eq!(wb.leased(), 1, "instance {i}");
        drop(veth);
        assert_eq!(interfaces_of(pid), vec!["lo"], "instance {i} left eth0");
        assert_eq!(
            link_names(&wb),
            vec!["isoctbr2".to_owned(), "lo".to_owned()],
            "instance {i} left its host end"
        );
    }
    assert_eq!(wb.leased(), 0);
    assert!(!seen.is_empty());
    let _ = holder.kill();
    let _ = holder.wait();
    wb.destroy().unwrap();
    assert_left_clean(&wcfg, &host_before);
}
