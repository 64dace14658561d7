//! The attack-surface and posture passes for real against our container:
//! the traced host calls include what serving HTTP takes (recvfrom, sendto)
//! and every request was answered while traced; the workload talks to the
//! host's kernel with fewer capabilities than the host-side init holds.
//!
//! Needs root, cgroups, namespaces and the `workload` and `isolab-trace`
//! binaries built next to the test binary; otherwise it prints
//! `SKIPPED <test>: <reason>` (a failure with `CI=true` or `ISOLAB_STRICT=1`).

use std::time::Duration;

use isolab_harness::isolation::load::ProbeLoad;
use isolab_harness::isolation::noisy::ScenarioStatus;
use isolab_harness::isolation::surface::{self, SurfaceConfig, TraceProcess};
use isolab_harness::modes::{Context, ModeKind};
use isolab_harness::Workload;
use isolab_isolation::posture::KernelRelation;

fn ready(test: &str) -> bool {
    isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_container(),
            isolab_testkit::missing_binary("workload", "isolab-workload"),
            isolab_testkit::missing_binary("isolab-trace", "isolab-isolation"),
        ]),
    )
}

#[test]
fn the_traced_container_serves_http_through_the_calls_it_must_make() {
    if !ready("the_traced_container_serves_http_through_the_calls_it_must_make") {
        return;
    }
    let ctx = Context::new(Workload::Api).expect("binaries beside the test");
    let launcher = ctx.launcher(ModeKind::Container);
    let tracer = TraceProcess {
        binary: isolab_testkit::binary("isolab-trace"),
    };
    let cfg = SurfaceConfig {
        requests: 30,
        ..SurfaceConfig::default()
    };
    let r = surface::run_mode(launcher.as_ref(), &cfg, &ProbeLoad, &tracer);
    assert!(
        matches!(r.status, ScenarioStatus::Measured),
        "{:?}",
        r.status
    );
    assert_eq!((r.requests, r.errors), (30, 0));
    for call in ["recvfrom", "sendto"] {
        assert!(
            r.syscalls.get(call).is_some_and(|&n| n >= 30),
            "{call} missing: {:?}",
            r.syscalls
        );
    }
    assert!(r.processes >= 1 && r.threads >= r.processes);
}

#[test]
fn the_container_workload_talks_to_the_host_kernel_with_fewer_capabilities() {
    if !ready("the_container_workload_talks_to_the_host_kernel_with_fewer_capabilities") {
        return;
    }
    let ctx = Context::new(Workload::Api).expect("binaries beside the test");
    let timeout = Duration::from_secs(30);
    let c = isolab_harness::isolation::posture::run_mode(
        ctx.launcher(ModeKind::Container).as_ref(),
        timeout,
    );
    let p = isolab_harness::isolation::posture::run_mode(
        ctx.launcher(ModeKind::Process).as_ref(),
        timeout,
    );
    for m in [&c, &p] {
        assert!(
            matches!(m.status, ScenarioStatus::Measured),
            "{:?}",
            m.status
        );
    }
    let (cw, pw) = (c.workload.unwrap(), p.workload.unwrap());
    assert_eq!(cw.kernel, KernelRelation::Host);
    assert_eq!(pw.kernel, KernelRelation::Host);
    let count = |w: &isolab_isolation::posture::WorkloadPosture| w.cap_eff.as_ref().unwrap().count;
    assert!(count(&cw) < count(&pw), "{} vs {}", count(&cw), count(&pw));
    assert_eq!(
        cw.proc_sys_writable.as_ref().map(Vec::len),
        Some(0),
        "the container's /proc/sys is read-only"
    );
    assert!(!c.host.is_empty());
}
