//! The security-posture pass, two sides per mode: what the workload holds
//! over the kernel it talks to (from `workload probe` run in the mode), and
//! what the instance's host-side processes hold over the host kernel (from
//! `/proc/PID/status` of an `api` instance's host pids), typed by
//! [`isolab_isolation::posture`].

use std::path::Path;
use std::sync::Arc;

use isolab_isolation::posture::{HostKernel, KernelRelation, ProcessPosture, WorkloadPosture};
use serde::{Deserialize, Serialize};

use super::noisy::ScenarioStatus;
use crate::image::ImageWorkload;
use crate::modes::{InstanceSpec, Isolation, Launcher, ModeKind};
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
    /// How the workload side was read when no probe of ours ran in the
    /// instance (a user's image): from the host, and what stays unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_read: Option<String>,
}

/// Runs the pass for the mode of `launcher`; never fails as a whole.
pub fn run_mode(launcher: &dyn Launcher, ready_timeout: std::time::Duration) -> ModePosture {
    one_mode(launcher, |r| {
        workload_side(launcher, ready_timeout, r)
            .and_then(|()| host_side(launcher, ready_timeout, r))
    })
}

/// The pass for a user's image, which runs no probe of ours: one instance
/// of the image, ready by its rule; the host side as for the built-in
/// workload, and the workload side read from the host where the image's
/// program is a host process (process, container, crun, runc:
/// `/proc/PID/status` and the id maps of its process, on the host's
/// kernel by construction). Inside a guest or gVisor's Sentry only the
/// kernel is known. Never fails as a whole.
pub fn run_image_mode(
    launcher: &dyn Launcher,
    ready_timeout: std::time::Duration,
    image: &Arc<ImageWorkload>,
) -> ModePosture {
    one_mode(launcher, |r| image_sides(launcher, ready_timeout, image, r))
}

/// The posture of `launcher`'s mode as `sides` fills it in: unavailable
/// when the launcher or `sides` says so, failed (with the error chain) on
/// any other error.
fn one_mode(
    launcher: &dyn Launcher,
    sides: impl FnOnce(&mut ModePosture) -> Result<(), HarnessError>,
) -> ModePosture {
    let mode = launcher.kind();
    let mut r = ModePosture {
        mode,
        peer: mode.is_peer(),
        status: ScenarioStatus::Measured,
        workload: None,
        host: vec![],
        workload_read: None,
    };
    if let Some(reason) = launcher.unavailable() {
        r.status = ScenarioStatus::Unavailable { reason };
        return r;
    }
    match sides(&mut r) {
        Ok(()) => {}
        Err(HarnessError::Unavailable(reason)) => {
            r.status = ScenarioStatus::Unavailable { reason };
        }
        Err(e) => {
            r.status = ScenarioStatus::Failed {
                error: crate::chain(&e),
            };
        }
    }
    r
}

/// What only a probe inside sees, unknown for an image read from outside.
const INSIDE_ONLY: &str = "/proc/sys writable, devices and host paths need a probe inside";

fn image_sides(
    launcher: &dyn Launcher,
    timeout: std::time::Duration,
    image: &Arc<ImageWorkload>,
    r: &mut ModePosture,
) -> Result<(), HarnessError> {
    let spec = InstanceSpec {
        image: Some(Arc::clone(image)),
        ..InstanceSpec::new(Workload::Api, &[])
    };
    let mut inst = launcher.launch(&spec)?;
    let ready = inst.wait_ready(timeout);
    if ready.is_ok() {
        let pids = inst.host_pids();
        for &pid in &pids {
            if let Ok(p) = ProcessPosture::read(Path::new("/proc"), pid, "host-side") {
                r.host.push(p);
            }
        }
        let (workload, how) = match (r.mode.isolation(), r.mode) {
            (Isolation::Vm, _) => (
                Some(WorkloadPosture::kernel_only(KernelRelation::Own { release: None })),
                format!("the image's program runs on the guest's own kernel, whose processes the host cannot read: only the kernel is known ({INSIDE_ONLY})"),
            ),
            (_, ModeKind::Gvisor) => (
                Some(WorkloadPosture::kernel_only(KernelRelation::Own { release: None })),
                format!("the image's program runs on gVisor's Sentry, whose processes the host cannot read: only the kernel is known ({INSIDE_ONLY})"),
            ),
            _ => match image_process(Path::new("/proc"), &pids, image.run.args.first().map_or("", String::as_str)) {
                Some(p) => (
                    Some(WorkloadPosture::from_host_process(&p)),
                    format!(
                        "read from the host: /proc/{}/status and id maps of the image's process ({}), a host process, so the host's kernel; {INSIDE_ONLY}",
                        p.pid,
                        p.comm.as_deref().unwrap_or("?")
                    ),
                ),
                None => (
                    None,
                    "the image's process was not found among the instance's host processes (ended before it could be read?)".into(),
                ),
            },
        };
        r.workload = workload;
        r.workload_read = Some(how);
    }
    let stopped = inst.stop();
    ready?;
    stopped.map(|_| ())
}

/// The image's program among an instance's host processes (parent first):
/// the first whose root is not ours (chrooted or pivoted into the image)
/// and whose name is its command's, else the first with another root that
/// is not our container's init (a fork of this process that never execs,
/// so it bears our name).
fn image_process(proc_root: &Path, pids: &[u32], argv0: &str) -> Option<ProcessPosture> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let ours = id(&proc_root.join("self/root"));
    let inside: Vec<ProcessPosture> = pids
        .iter()
        .filter(|pid| {
            let theirs = id(&proc_root.join(pid.to_string()).join("root"));
            theirs.is_some() && theirs != ours
        })
        .filter_map(|&pid| ProcessPosture::read(proc_root, pid, "workload").ok())
        .collect();
    // The kernel keeps the first 15 bytes of the executable's name.
    let name: String = argv0
        .rsplit('/')
        .next()
        .unwrap_or(argv0)
        .chars()
        .take(15)
        .collect();
    let named = inside.iter().position(|p| p.comm.as_deref() == Some(&name));
    let me = std::fs::read_to_string(proc_root.join("self/comm")).unwrap_or_default();
    let other = || {
        inside
            .iter()
            .position(|p| p.comm.as_deref() != Some(me.trim_end()))
    };
    named.or_else(other).map(|i| inside[i].clone())
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

    #[test]
    fn the_image_process_is_the_one_in_the_image_root_named_as_its_command() {
        let d = tempfile::tempdir().unwrap();
        let (host_root, image_root) = (d.path().join("host"), d.path().join("image"));
        std::fs::create_dir_all(&host_root).unwrap();
        std::fs::create_dir_all(&image_root).unwrap();
        let proc_root = d.path().join("proc");
        let proc = |pid: &str, comm: &str, root: &Path| {
            let p = proc_root.join(pid);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(
                p.join("status"),
                format!("Name:\t{comm}\nCapEff:\t00000000a80425fb\nNoNewPrivs:\t1\nSeccomp:\t2\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(root, p.join("root")).unwrap();
        };
        proc("self", "bench", &host_root);
        proc("10", "runc", &host_root); // the runtime, in our root
        proc("11", "bench", &image_root); // our container's init, a fork of us
        proc("12", "nginx", &image_root);
        let p = image_process(&proc_root, &[10, 11, 12], "/usr/sbin/nginx").unwrap();
        assert_eq!((p.pid, p.comm.as_deref()), (12, Some("nginx")));
        // A command the kernel names otherwise (a script): the first in the
        // image's root that is not our init.
        let p = image_process(&proc_root, &[10, 11, 12], "docker-entrypoint.sh").unwrap();
        assert_eq!(p.pid, 12);
        assert!(image_process(&proc_root, &[10], "nginx").is_none());
        let w = WorkloadPosture::from_host_process(&p);
        assert_eq!(w.no_new_privs, Some(true));
    }
}
