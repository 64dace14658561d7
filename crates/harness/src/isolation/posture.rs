//! The security-posture pass, two sides per mode: what the workload holds
//! over the kernel it talks to (from `workload probe` run in the mode), and
//! what the instance's host-side processes hold over the host kernel (from
//! `/proc/PID/status` of an `api` instance's host pids), typed by
//! [`isolab_isolation::posture`].

use std::path::Path;

use isolab_isolation::posture::{HostKernel, ProcessPosture, WorkloadPosture};
use serde::{Deserialize, Serialize};

use super::noisy::ScenarioStatus;
use crate::modes::{InstanceSpec, Launcher, ModeKind};
use crate::{HarnessError, Workload};

/// The pass's result for one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModePosture {
    pub mode: ModeKind,
    pub peer: bool,
    pub status: ScenarioStatus,
    /// The workload side (`None` when its probe gave no result).
    pub workload: Option<WorkloadPosture>,
    /// The host side: one entry per host process of the instance.
    pub host: Vec<ProcessPosture>,
}

/// Runs the pass for the mode of `launcher`; never fails as a whole.
pub fn run_mode(launcher: &dyn Launcher, ready_timeout: std::time::Duration) -> ModePosture {
    let mode = launcher.kind();
    let mut r = ModePosture {
        mode,
        peer: mode.is_peer(),
        status: ScenarioStatus::Measured,
        workload: None,
        host: vec![],
    };
    if let Some(reason) = launcher.unavailable() {
        r.status = ScenarioStatus::Unavailable { reason };
        return r;
    }
    let res = workload_side(launcher, ready_timeout, &mut r)
        .and_then(|()| host_side(launcher, ready_timeout, &mut r));
    if let Err(e) = res {
        r.status = ScenarioStatus::Failed {
            error: crate::chain(&e),
        };
    }
    r
}

fn workload_side(
    launcher: &dyn Launcher,
    timeout: std::time::Duration,
    r: &mut ModePosture,
) -> Result<(), HarnessError> {
    let mut inst = launcher.launch(&InstanceSpec::new(Workload::Probe, &[]))?;
    if let Err(e) = inst.wait_ready(timeout) {
        let _ = inst.stop();
        return Err(e);
    }
    let outcome = inst.wait_exit(timeout)?;
    let Some(result) = outcome.result else {
        return Err(HarnessError::Launch(format!(
            "workload probe printed no result (status {:?})",
            outcome.status
        )));
    };
    let host = HostKernel::read(Path::new("/proc"));
    r.workload = Some(
        WorkloadPosture::from_probe(&serde_json::Value::Object(result), &host)
            .map_err(|e| HarnessError::Launch(crate::chain(&e)))?,
    );
    Ok(())
}

fn host_side(
    launcher: &dyn Launcher,
    timeout: std::time::Duration,
    r: &mut ModePosture,
) -> Result<(), HarnessError> {
    let mut inst = launcher.launch(&InstanceSpec::new(Workload::Api, &[]))?;
    let ready = inst.wait_ready(timeout);
    if ready.is_ok() {
        for pid in inst.host_pids() {
            // A process that ended between listing and reading is skipped.
            if let Ok(p) = ProcessPosture::read(Path::new("/proc"), pid, "host-side") {
                r.host.push(p);
            }
        }
    }
    let stopped = inst.stop();
    ready?;
    stopped.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::fake::{FakeLauncher, FakeRun};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn the_probe_result_is_typed_and_every_instance_ends() {
        let mut probe = FakeRun::ready(1);
        probe.outcome.result = serde_json::json!({
            "workload": "probe", "ok": true, "boot_id": "not-this-host",
            "kernel": {"release": "6.1.0-guest"},
            "cap_eff": {"hex": "0000000000000000", "count": 0},
            "no_new_privs": 1, "seccomp": 2, "seccomp_filters": 1
        })
        .as_object()
        .cloned();
        let l = FakeLauncher::new(ModeKind::Container, vec![probe, FakeRun::ready(1)]);
        let r = run_mode(&l, Duration::from_secs(1));
        assert!(
            matches!(r.status, ScenarioStatus::Measured),
            "{:?}",
            r.status
        );
        let w = r.workload.unwrap();
        assert_eq!(w.no_new_privs, Some(true));
        assert_eq!(w.reaches_host_kernel(), Some(false));
        assert_eq!(l.jobs(), ["probe ", "api "]);
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_probe_without_a_result_fails_the_mode() {
        let l = FakeLauncher::new(ModeKind::Process, vec![FakeRun::ready(1)]);
        let r = run_mode(&l, Duration::from_secs(1));
        assert!(matches!(r.status, ScenarioStatus::Failed { .. }));
        assert_eq!(l.live.load(Ordering::SeqCst), 0);
    }
}
