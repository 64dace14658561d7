//! The noisy-neighbour scenario for real, against our container: the
//! memory neighbour is OOM-killed inside its own cgroup, the fork neighbour
//! is refused at pids.max, the CPU neighbour spins until stopped (whether
//! its quota throttles it depends on the host's other load), and the tenant
//! keeps answering through all of it.
//!
//! Needs root, cgroups, namespaces and the `workload` binary built next to
//! the test binary; without them it prints `SKIPPED <test>: <reason>` (a
//! failure with `CI=true` or `ISOLAB_STRICT=1`). Speed is never asserted.
//! The microVM's neighbours need the emulated host (not run here).

use isolab_harness::isolation::load::ProbeLoad;
use isolab_harness::isolation::noisy::{run_mode, ScenarioStatus};
use isolab_harness::isolation::{HostFacts, NeighbourConfig};
use isolab_harness::modes::{Context, ModeKind};
use isolab_harness::Workload;
use isolab_isolation::neighbour::NeighbourFate;

#[test]
fn container_neighbours_meet_their_limits_and_the_tenant_keeps_answering() {
    let test = "container_neighbours_meet_their_limits_and_the_tenant_keeps_answering";
    if !isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_container(),
            isolab_testkit::missing_binary("workload", "isolab-workload"),
        ]),
    ) {
        return;
    }
    let ctx = Context::new(Workload::Api).expect("binaries beside the test");
    let launcher = ctx.launcher(ModeKind::Container);
    let cfg = NeighbourConfig {
        sequential_requests: 100,
        concurrent_requests: 100,
        connections: 2,
        window_ms: 1000,
        // A debug-built hog needs seconds to reach the limit on a busy host.
        window_max_ms: 20_000,
        ..NeighbourConfig::default()
    };
    let r = run_mode(
        launcher.as_ref(),
        &cfg,
        &ProbeLoad,
        &HostFacts::capture(),
        &mut |_, _| {},
    );
    for n in &r.neighbours {
        eprintln!(
            "{}: {:?}, {} rounds, {:?}",
            n.kind,
            n.fate,
            n.rounds_with,
            n.interference
                .iter()
                .map(|i| i.p99_ratio.ratio)
                .collect::<Vec<_>>()
        );
    }
    assert!(
        matches!(r.status, ScenarioStatus::Measured),
        "{:?}",
        r.status
    );
    assert_eq!(r.neighbours.len(), 3);
    for n in &r.neighbours {
        assert_eq!(n.error, None, "{}", n.kind);
        assert_eq!(n.interference.len(), 2, "{}", n.kind);
        assert_eq!(
            n.tenant_errors, 0,
            "the tenant kept answering beside {}",
            n.kind
        );
        for i in &n.interference {
            assert!(i.with_neighbour.n > 0 && i.p99_ratio.ratio.is_finite());
        }
    }
    let fate = |k: &str| {
        r.neighbours
            .iter()
            .find(|n| n.kind.name() == k)
            .map(|n| n.fate)
            .unwrap()
    };
    assert!(
        matches!(fate("memory"), NeighbourFate::OomKilled { kills } if kills >= 1),
        "{:?}",
        fate("memory")
    );
    assert!(
        matches!(fate("fork"), NeighbourFate::ForksRefused { refused } if refused >= 1),
        "{:?}",
        fate("fork")
    );
    // The CPU neighbour's throttling depends on what else this host runs
    // (two spinners against a 1-CPU quota get less than a CPU on a busy
    // 2-core host): it must have run until stopped, whatever its fate.
    let cpu = r
        .neighbours
        .iter()
        .find(|n| n.kind.name() == "cpu")
        .unwrap();
    // It spins for minutes unless stopped: it ended on the harness's
    // SIGTERM, by the signal or (the worker ends on SIGTERM with its result
    // line) with status 0.
    use isolab_isolation::neighbour::NeighbourExit;
    assert!(
        matches!(
            cpu.observation.exit,
            Some(NeighbourExit::Signal(15) | NeighbourExit::Code(0))
        ),
        "stopped by the harness, not dead by itself: {:?}",
        cpu.observation.exit
    );
}

/// gVisor's neighbours: it has no ready byte, so each neighbour counts as
/// running once its sandbox has a stub; each must be measured (not "never
/// became ready") and the tenant must keep answering.
#[test]
fn gvisor_neighbours_run_beside_the_tenant() {
    let test = "gvisor_neighbours_run_beside_the_tenant";
    if !isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_container(),
            isolab_testkit::missing_binary("workload", "isolab-workload"),
            isolab_testkit::missing_command("runsc", "runsc"),
        ]),
    ) {
        return;
    }
    let ctx = Context::new(Workload::Api).expect("binaries beside the test");
    let launcher = ctx.launcher(ModeKind::Gvisor);
    let cfg = NeighbourConfig {
        sequential_requests: 50,
        concurrent_requests: 50,
        connections: 2,
        window_ms: 250,
        window_max_ms: 5_000,
        ..NeighbourConfig::default()
    };
    let r = run_mode(
        launcher.as_ref(),
        &cfg,
        &ProbeLoad,
        &HostFacts::capture(),
        &mut |_, _| {},
    );
    for n in &r.neighbours {
        eprintln!("{}: {:?} {:?} {:?}", n.kind, n.fate, n.observation, n.error);
    }
    assert!(
        matches!(r.status, ScenarioStatus::Measured),
        "{:?}",
        r.status
    );
    assert_eq!(r.neighbours.len(), 3);
    for n in &r.neighbours {
        assert_eq!(n.error, None, "{}", n.kind);
        assert_eq!(n.interference.len(), 2, "{}", n.kind);
        assert_eq!(
            n.tenant_errors, 0,
            "the tenant kept answering beside {}",
            n.kind
        );
    }
}
