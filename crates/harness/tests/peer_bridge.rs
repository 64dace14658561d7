//! runc as a peer on the workbench bridge, for real, as root: its `api`
//! container gets the network namespace the launcher made (a veth on the
//! workbench bridge, as our container's) and answers at its bridge
//! address, probed from the workbench namespace by the probe every mode
//! uses; after the stop its veth, namespace name and bundle are gone.
//!
//! Needs root, cgroups and namespaces, `runc` (Debian package `runc`) and
//! the `workload` binary built next to the test binary; without them it
//! prints `SKIPPED <test>: <reason>` (strict mode: fails).

use std::time::Duration;

use isolab_harness::modes::{Context, InstanceSpec, ModeKind};
use isolab_harness::Workload;

#[test]
fn a_runc_instance_answers_at_its_bridge_address_and_leaves_nothing() {
    let test = "a_runc_instance_answers_at_its_bridge_address_and_leaves_nothing";
    let missing = isolab_testkit::first_missing([
        isolab_testkit::missing_container(),
        isolab_testkit::missing_command("runc", "runc"),
        isolab_testkit::missing_binary("workload", "isolab-workload"),
    ]);
    if !isolab_testkit::require(test, missing) {
        return;
    }
    let ctx = Context::new(Workload::Api).expect("binaries beside the test");
    let l = ctx.launcher(ModeKind::Runc);
    assert_eq!(l.unavailable(), None);
    let mut inst = l
        .launch(&InstanceSpec::measured(Workload::Api))
        .expect("runc launches");
    let launched = inst.launched_at();
    inst.wait_ready(Duration::from_secs(30))
        .expect("the workload signalled ready through runc");
    let target = inst.http_target().expect("api serves HTTP").target;
    let ip = match target.addr.ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("an IPv4 bridge address, not {other}"),
    };
    let subnet: isolab_net::Subnet = isolab_net::workbench::DEFAULT_SUBNET.parse().unwrap();
    assert!(
        subnet.contains(ip) && ip != subnet.gateway(),
        "probed at an address on the workbench bridge, not {ip}"
    );
    let isolab_net::Netns::Path(ns) = &target.netns else {
        panic!("probed from the workbench namespace: {:?}", target.netns);
    };
    let ns_name = ns.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        isolab_net::workbench::is_workbench_name(&ns_name),
        "probed from a workbench namespace, not {}",
        ns.display()
    );
    let report = isolab_harness::net::probe(&target, launched, 5, "runc").expect("it answers");
    assert_eq!(report.status, 200);
    assert_eq!(report.requests, 5);
    assert!(report.launch_to_first_response_ms > 0.0);
    // The workload inside is in the namespace the launcher made: its
    // `eth0` carries the bridge address.
    let pids = inst.host_pids();
    let workload_ns = pids
        .iter()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/ns/net")).ok())
        .find(|l| Some(l) != std::fs::read_link("/proc/self/ns/net").ok().as_ref())
        .expect("a process of the instance in its own network namespace");
    let mine = format!("isolab-runc-{}-", std::process::id());
    let bundle = std::fs::read_dir(isolab_harness::stale::BUNDLES_DIR)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&mine))
        .expect("the bundle of the instance")
        .path();
    let named = std::fs::metadata(bundle.join("netns")).expect("the bundle's namespace name");
    let workload_ino: u64 = workload_ns
        .to_string_lossy()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&named),
        workload_ino,
        "runc joined the namespace the launcher made (OCI namespace path)"
    );
    let out = inst.stop().expect("stops");
    assert!(!out.timed_out);
    assert!(!bundle.exists(), "the bundle and its namespace name went");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|m| m.contains(&mine)),
        "no namespace mount of ours is left"
    );
    // runc made `/isolab/<id>` in every cgroup hierarchy (named ones and
    // the hybrid host's cgroup2 too): no empty parent of ours is left.
    for mp in isolab_cgroups::layout::cgroup_mount_points(&mounts) {
        assert!(
            !mp.join(isolab_cgroups::PARENT).exists(),
            "no {} left in {}",
            isolab_cgroups::PARENT,
            mp.display()
        );
    }
    // The run's workbench is still up (the context holds it): its veth
    // end went with the stop.
    let wb = isolab_net::netns::open(ns).expect("the workbench namespace");
    let veths: Vec<String> = isolab_net::Netlink::open_in(std::os::fd::AsFd::as_fd(&wb))
        .and_then(|mut nl| nl.links())
        .expect("links in the workbench")
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .map(|l| l.name)
        .collect();
    assert_eq!(veths, Vec::<String>::new(), "the veth on the bridge went");
}
