//! Privileged tests of the workbench network: real namespaces, a real
//! bridge, veth pairs and TAPs, and `workload api` answering real HTTP over
//! the bridge.
//!
//! Namespace changes happen only in spawned children (`unshare` in
//! `pre_exec`) and on the library's helper threads; the test harness's own
//! threads never change namespace. Each test uses its own namespace name
//! and subnet so they can run in parallel.
//!
//! Needs root, network namespaces, and the `workload` binary built next to
//! the test binary (`cargo build -p isolab-workload`). Without them a test
//! prints `SKIPPED <test>: <reason>`; with `CI=true` or `ISOLAB_STRICT=1` it
//! fails instead.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use isolab_net::netlink::Netlink;
use isolab_net::netns::{self, NamedNetns};
use isolab_net::probe::ProbeConfig;
use isolab_net::workbench::WorkbenchError;
use isolab_net::{Workbench, WorkbenchConfig};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const API_PORT: u16 = 8080;

/// Probes the real abilities; prints SKIPPED (or fails in strict mode).
fn require(test: &str, need_tun: bool) -> Option<PathBuf> {
    let tun = (need_tun && !Path::new("/dev/net/tun").exists())
        .then(|| "/dev/net/tun is missing".to_owned());
    let missing = isolab_testkit::first_missing([
        isolab_testkit::missing_root(),
        isolab_testkit::missing_unshare(CloneFlags::CLONE_NEWNET),
        tun,
        isolab_testkit::missing_binary("workload", "isolab-workload"),
    ]);
    isolab_testkit::require(test, missing).then(|| isolab_testkit::binary("workload"))
}

fn config(name: &str, third_octet: u8) -> WorkbenchConfig {
    WorkbenchConfig {
        name: name.to_owned(),
        bridge: format!("br{name}"),
        subnet: format!("10.203.{third_octet}.0/24").parse().unwrap(),
        ..WorkbenchConfig::default()
    }
}

/// A running `workload api` with its stdout, killed if the test panics.
struct Api {
    child: Child,
}

impl Api {
    /// Spawns `workload api` (in a fresh network namespace when `new_netns`,
    /// else via `enter`) and waits for its ready byte.
    fn spawn(
        bin: &Path,
        new_netns: bool,
        enter: Option<Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>>,
    ) -> (Api, Instant) {
        let (api, launched, ready) = Api::launch(bin, new_netns, enter);
        wait_ready(ready);
        (api, launched)
    }

    /// Spawns `workload api` without waiting; returns the ready pipe's read end.
    fn launch(
        bin: &Path,
        new_netns: bool,
        enter: Option<Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>>,
    ) -> (Api, Instant, OwnedFd) {
        let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["api", "--port", &API_PORT.to_string(), "--bind", "0.0.0.0"])
            .env("ISOLAB_READY_FD", write_end.as_raw_fd().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if new_netns {
            // SAFETY: runs in the forked child before exec; one syscall.
            unsafe {
                cmd.pre_exec(|| unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
            }
        }
        if let Some(hook) = enter {
            // SAFETY: the hook is netns::enter_raw, one setns syscall.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
        let launched = Instant::now();
        let child = cmd.spawn().expect("spawn workload api");
        drop(write_end);
        (Api { child }, launched, read_end)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then the JSON result line.
    fn stop(mut self) -> serde_json::Value {
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).unwrap();
        let stdout = self.child.stdout.take().unwrap();
        let line = BufReader::new(stdout).lines().next().unwrap().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "workload api exited with {status}");
        serde_json::from_str(&line).expect("result line is JSON")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (10 s at most) for the ready byte `R` on the pipe.
fn wait_ready(read_end: OwnedFd) {
    let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
    assert_eq!(n, 1, "workload api did not become ready within 10 s");
    let mut byte = [0u8; 1];
    let got = fs::File::from(read_end).read(&mut byte).unwrap();
    assert_eq!((got, byte[0]), (1, b'R'), "ready byte");
}

fn host_interfaces() -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of workbench `cfg` is left on the host.
fn assert_no_leftovers(cfg: &WorkbenchConfig) {
    let ns = cfg.run_dir.join(&cfg.name);
    assert!(!ns.exists(), "{} left behind", ns.display());
    // The directory itself is removed once empty (other tests may still
    // hold names in it, so only check it holds none of ours).
    if let Ok(entries) = fs::read_dir(&cfg.run_dir) {
        for e in entries.flatten() {
            assert_ne!(e.file_name().to_string_lossy(), cfg.name.as_str());
        }
    }
    let lock = cfg.lock_dir.join(format!("net-{}.lock", cfg.name));
    assert!(!lock.exists(), "{} left behind", lock.display());
    let ifaces = host_interfaces();
    assert!(
        !ifaces.contains(&cfg.bridge),
        "bridge {} leaked into the host namespace: {ifaces:?}",
        cfg.bridge
    );
    // Field 5 of mountinfo is the mount point.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = ns.display().to_string();
    assert!(
        !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(target.as_str())),
        "mount of {target} left behind"
    );
}

fn names(wb: &Workbench) -> Vec<String> {
    let mut n: Vec<String> = wb.links().unwrap().into_iter().map(|l| l.name).collect();
    n.sort();
    n
}

#[test]
fn veth_attached_api_answers_over_the_bridge_and_teardown_leaves_nothing() {
    let test = "veth_attached_api_answers_over_the_bridge_and_teardown_leaves_nothing";
    let Some(bin) = require(test, false) else {
        return;
    };
    let cfg = config("isolabt1", 101);
    let wb = Workbench::create(cfg.clone()).expect("create workbench");
    assert!(
        cfg.run_dir.join(&cfg.name).exists(),
        "namespace name is inspectable"
    );
    let bridge = wb
        .links()
        .unwrap()
        .into_iter()
        .find(|l| l.name == cfg.bridge)
        .expect("bridge exists in the namespace");
    assert!(bridge.up);
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert!(
        !host_interfaces().contains(&cfg.bridge),
        "bridge must exist only inside the workbench namespace"
    );

    let (api, launched) = Api::spawn(&bin, true, None);
    let target = netns::open_pid(api.pid()).unwrap();
    let att = wb.attach_veth(target.as_fd(), "eth0").expect("attach veth");
    assert_eq!(att.addr().to_string(), "10.203.101.2");
    let host_end = wb
        .links()
        .unwrap()
        .into_iter()
        .find(|l| l.name == att.host_name())
        .expect("host end is in the workbench namespace");
    assert_eq!(
        host_end.master,
        Some(wb.bridge_index()),
        "host end is on the bridge"
    );
    // The instance's side: eth0 with the leased address.
    let mut inside = Netlink::open_in(target.as_fd()).unwrap();
    let eth0 = inside
        .link("eth0")
        .unwrap()
        .expect("eth0 inside the instance");
    assert!(eth0.up);
    assert!(inside
        .addresses()
        .unwrap()
        .iter()
        .any(|a| a.addr == att.addr() && a.prefix == 24));

    let addr = SocketAddr::V4(SocketAddrV4::new(att.addr(), API_PORT));
    let pcfg = ProbeConfig::default();
    let first = wb
        .probe_first_response(addr, launched, &pcfg)
        .unwrap()
        .expect("first response over the bridge");
    assert_eq!(first.status, 200);
    let run = wb
        .probe_run(addr, 100, &pcfg)
        .unwrap()
        .expect("request run");
    assert_eq!(
        (run.requests, run.errors),
        (100, 0),
        "{:?}",
        run.first_error
    );
    assert_eq!(run.latencies.len(), 100);
    assert!(run.throughput_rps() > 0.0);
    println!(
        "first response after {:?} ({} attempts); 100 requests: {:.0} req/s",
        first.elapsed,
        first.attempts,
        run.throughput_rps()
    );
    // The address exists only in the namespaces: the host's own namespace
    // has no address in the subnet (read-only check; never send traffic
    // from the host namespace to it).
    let host_addrs = Netlink::open().unwrap().addresses().unwrap();
    assert!(
        !host_addrs.iter().any(|a| cfg.subnet.contains(a.addr)),
        "workbench subnet leaked into the host namespace: {host_addrs:?}"
    );

    let host_name = att.host_name().to_owned();
    drop(att);
    assert!(!names(&wb).contains(&host_name), "host end removed");
    assert!(
        inside.link("eth0").unwrap().is_none(),
        "peer removed with the pair"
    );
    assert_eq!(wb.leased(), 0, "address released");

    let result = api.stop();
    assert_eq!(result["workload"], "api");
    assert_eq!(result["ok"], true);
    assert!(result["requests"].as_u64().unwrap() >= 101, "{result}");

    drop(inside);
    drop(target);
    wb.destroy().expect("destroy workbench");
    assert_no_leftovers(&cfg);
}

#[test]
fn fifty_attach_detach_cycles_leave_nothing_behind() {
    let test = "fifty_attach_detach_cycles_leave_nothing_behind";
    let Some(bin) = require(test, false) else {
        return;
    };
    let cfg = config("isolabt2", 102);
    let wb = Workbench::create(cfg.clone()).expect("create workbench");
    let baseline = names(&wb);
    assert_eq!(baseline, vec![cfg.bridge.clone(), "lo".to_owned()]);
    let (api, _) = Api::spawn(&bin, true, None);
    let target = netns::open_pid(api.pid()).unwrap();
    let pcfg = ProbeConfig::default();
    let started = Instant::now();
    for cycle in 0..50 {
        let att = wb
            .attach_veth(target.as_fd(), "eth0")
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let addr = SocketAddr::V4(SocketAddrV4::new(att.addr(), API_PORT));
        let first = wb
            .probe_first_response(addr, Instant::now(), &pcfg)
            .unwrap()
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert_eq!(first.status, 200, "cycle {cycle}");
        drop(att);
        assert_eq!(
            names(&wb),
            baseline,
            "cycle {cycle}: interfaces left behind"
        );
        assert_eq!(wb.leased(), 0, "cycle {cycle}: lease not released");
    }
    println!(
        "50 attach/probe/detach cycles: {:?} per cycle",
        started.elapsed() / 50
    );
    let mut inside = Netlink::open_in(target.as_fd()).unwrap();
    assert_eq!(
        inside.links().unwrap().len(),
        1,
        "only lo remains in the instance"
    );
    let result = api.stop();
    assert!(result["requests"].as_u64().unwrap() >= 50, "{result}");
    drop(inside);
    drop(target);
    wb.destroy().unwrap();
    assert_no_leftovers(&cfg);
}

#[test]
fn process_in_the_workbench_namespace_answers_on_the_bridge_address() {
    let test = "process_in_the_workbench_namespace_answers_on_the_bridge_address";
    let Some(bin) = require(test, false) else {
        return;
    };
    let cfg = config("isolabt3", 103);
    let wb = Workbench::create(cfg.clone()).unwrap();
    // Probe right after launch, without waiting for ready: the probe must
    // ride out "connection refused" until the server listens.
    let (api, launched, ready) = Api::launch(&bin, false, Some(Box::new(wb.pre_exec_enter())));
    let addr = SocketAddr::V4(SocketAddrV4::new(wb.bridge_addr(), API_PORT));
    let first = wb
        .probe_first_response(addr, launched, &ProbeConfig::default())
        .unwrap()
        .expect("process answers inside the workbench namespace");
    assert_eq!(first.status, 200);
    wait_ready(ready);
    println!(
        "process mode: launch -> first response {:?} after {} attempts",
        first.elapsed, first.attempts
    );
    assert_eq!(api.stop()["ok"], true);
    wb.destroy().unwrap();
    assert_no_leftovers(&cfg);
}

#[test]
fn tap_is_created_on_the_bridge_and_removed_on_drop() {
    let test = "tap_is_created_on_the_bridge_and_removed_on_drop";
    if require(test, true).is_none() {
        return;
    }
    let cfg = config("isolabt4", 104);
    let wb = Workbench::create(cfg.clone()).unwrap();
    let tap = wb.create_tap(None, true).expect("create TAP");
    let link = wb
        .links()
        .unwrap()
        .into_iter()
        .find(|l| l.name == tap.name())
        .expect("TAP is in the workbench namespace");
    assert_eq!(link.master, Some(wb.bridge_index()));
    assert_eq!(link.kind.as_deref(), Some("tun"));
    assert_eq!(tap.lease().cidr(), "10.203.104.2/24");
    assert!(!host_interfaces().contains(&tap.name().to_owned()));
    let name = tap.name().to_owned();
    drop(tap);
    assert!(!names(&wb).contains(&name), "TAP removed");
    assert_eq!(wb.leased(), 0);

    let err = wb
        .create_tap(Some("much-too-long-name"), false)
        .unwrap_err();
    assert!(err.to_string().contains("much-too-long-name"), "{err}");
    wb.destroy().unwrap();
    assert_no_leftovers(&cfg);
}

#[test]
fn stale_namespace_of_a_killed_run_is_replaced() {
    let test = "stale_namespace_of_a_killed_run_is_replaced";
    if require(test, false).is_none() {
        return;
    }
    let cfg = config("isolabt5", 105);
    // A "killed run": the name stays mounted, with an interface inside,
    // and no lock is held.
    let stale = NamedNetns::create(&cfg.run_dir, &cfg.name).unwrap();
    Netlink::open_in(stale.as_fd())
        .unwrap()
        .add_bridge("stalebr")
        .unwrap();
    drop(stale);
    assert!(cfg.run_dir.join(&cfg.name).exists());

    let wb = Workbench::create(cfg.clone()).expect("stale leftovers do not block a new run");
    assert!(wb.removed_stale());
    assert_eq!(names(&wb), vec![cfg.bridge.clone(), "lo".to_owned()]);
    wb.destroy().unwrap();
    assert_no_leftovers(&cfg);
}

#[test]
fn a_second_live_workbench_of_the_same_name_is_refused() {
    let test = "a_second_live_workbench_of_the_same_name_is_refused";
    if require(test, false).is_none() {
        return;
    }
    let cfg = config("isolabt6", 106);
    let wb = Workbench::create(cfg.clone()).unwrap();
    let err = Workbench::create(cfg.clone()).unwrap_err();
    assert!(matches!(err, WorkbenchError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("already in use"), "{err}");
    // The live one is untouched.
    assert!(names(&wb).contains(&cfg.bridge));
    drop(wb);
    assert_no_leftovers(&cfg);
}

#[test]
fn a_killed_run_leaves_a_name_that_the_next_run_removes() {
    let test = "a_killed_run_leaves_a_name_that_the_next_run_removes";
    if require(test, false).is_none() {
        return;
    }
    let hold = isolab_testkit::target_profile_dir().join("examples/hold");
    let missing = (!hold.exists())
        .then(|| format!("{} not built (cargo test builds examples)", hold.display()));
    if !isolab_testkit::require(test, missing) {
        return;
    }
    let cfg = config("isolabt7", 107);
    let mut child = Command::new(&hold)
        .args([cfg.name.as_str(), "10.203.107.0/24"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready /run/netns/isolabt7"), "{line:?}");
    // While it lives, the name is taken.
    let err = Workbench::create(cfg.clone()).unwrap_err();
    assert!(matches!(err, WorkbenchError::InUse { .. }), "{err:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        cfg.run_dir.join(&cfg.name).exists(),
        "a killed run leaves its name"
    );

    let wb = Workbench::create(cfg.clone()).expect("next run starts despite the leftovers");
    assert!(wb.removed_stale());
    assert_eq!(names(&wb), vec![cfg.bridge.clone(), "lo".to_owned()]);
    wb.destroy().unwrap();
    assert_no_leftovers(&cfg);
}

#[test]
fn a_subnet_already_used_where_the_workbench_is_made_is_refused() {
    let test = "a_subnet_already_used_where_the_workbench_is_made_is_refused";
    if require(test, false).is_none() {
        return;
    }
    // Stand-in for "the host": a scratch namespace of our own holding an
    // address in the subnet (the real host's network is never touched).
    let scratch_cfg = config("isolabt8s", 108);
    // A scratch name left by an aborted earlier run of this test.
    netns::remove_name(&scratch_cfg.run_dir.join(&scratch_cfg.name)).unwrap();
    let scratch = NamedNetns::create(&scratch_cfg.run_dir, &scratch_cfg.name).unwrap();
    {
        let mut nl = Netlink::open_in(scratch.as_fd()).unwrap();
        nl.add_bridge("scr0").unwrap();
        let idx = nl.link("scr0").unwrap().unwrap().index;
        nl.add_address(idx, "10.203.108.5".parse().unwrap(), 24)
            .unwrap();
    }
    let cfg = config("isolabt8", 108);
    let result = netns::run_in(scratch.as_fd(), || Workbench::create(cfg.clone())).unwrap();
    let err = result.expect_err("subnet in use must be refused");
    assert!(
        matches!(err, WorkbenchError::AddressRangeInUse { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("10.203.108.5"), "{err}");
    assert_no_leftovers(&cfg);
    scratch.remove().unwrap();
    assert_no_leftovers(&scratch_cfg);
}

#[test]
fn a_refused_request_of_a_batch_is_named_and_the_socket_stays_usable() {
    let test = "a_refused_request_of_a_batch_is_named_and_the_socket_stays_usable";
    if require(test, false).is_none() {
        return;
    }
    let ns = tempfile::tempdir().unwrap();
    let named = NamedNetns::create(ns.path(), "isolabt9").expect("namespace");
    let mut nl = Netlink::open_in(named.as_fd()).unwrap();
    let gw = std::net::Ipv4Addr::new(10, 203, 109, 1);
    // No interface 4242: the address is refused first, then the rest.
    let err = nl
        .configure_interface(4242, std::net::Ipv4Addr::new(10, 203, 109, 2), 24, gw)
        .expect_err("no such interface");
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(err.to_string().contains("add address"), "{err}");
    // Every ack was read: the next request gets its own answer.
    let lo = nl.link("lo").unwrap().expect("lo");
    nl.configure_interface(lo.index, std::net::Ipv4Addr::new(127, 0, 0, 9), 8, gw)
        .expect_err("the gateway is not on lo's subnet");
    let addrs = nl.addresses().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.addr == std::net::Ipv4Addr::new(127, 0, 0, 9)),
        "the address of the second batch went on: {addrs:?}"
    );
    drop(nl);
    named.remove().unwrap();
}
