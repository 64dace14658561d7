//! Running one demo: the host's settings are read, the demo's job runs in
//! every requested mode, the host is read again, and the evidence becomes a
//! [`DemoReport`]. A host setting that moved fails the demo loudly, whatever
//! else happened.

use std::path::Path;
use std::time::Duration;

use super::catalog::Demo;
use super::facts::{self, Column, Finding, HostTruth, Row};
use super::guard::{Change, HostGuard, HostSetting};
use super::passes::{self, DemoSetup, Pass, PassRun};
use crate::modes::{InstanceOutcome, InstanceSpec, Isolation, Launcher, ModeKind};
use crate::{HarnessError, Workload};

/// Longest a demo workload may run as a process or container before it is
/// killed (they end in seconds; this is the net).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a demo may take in a microVM (the emulated host boots in
/// seconds, but everything inside it runs under TCG).
pub const VM_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of a demo run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("The {mode} column running `workload {workload}` failed")]
    Run {
        mode: &'static str,
        workload: Workload,
        #[source]
        source: Box<HarnessError>,
    },
    #[error(
        "`workload {workload}` in the {mode} column did not finish within {secs} s and was killed"
    )]
    Timeout {
        mode: &'static str,
        workload: Workload,
        secs: u64,
    },
    #[error("`workload {workload}` printed no result line in the {mode} column (status {status:?}): {stderr}")]
    NoResult {
        mode: &'static str,
        workload: Workload,
        status: Option<i32>,
        stderr: String,
    },
    #[error("The {mode} column failed: {error}")]
    Pass { mode: &'static str, error: String },
    #[error("Interrupted; the runs already started were stopped and cleaned up")]
    Interrupted,
    #[error("HOST CHANGED during demo {demo}: {changes} — this is a bug in the isolation under test; report it")]
    HostChanged { demo: &'static str, changes: String },
}

/// The outcome of one column.
#[derive(Debug, Clone)]
pub enum ModeRun {
    /// It ran; this is what its mode observed.
    Ran(Box<InstanceOutcome>),
    /// An isolation pass ran (the noisy-neighbour and attack-surface
    /// demos); this is its result.
    Measured(Box<PassRun>),
    /// It could not run here; one line saying why and what to do.
    Unavailable { reason: String },
}

impl ColumnReport {
    /// The column's heading: the mode, and `--privileged` for a container
    /// run under the privileged profile.
    pub fn label(&self) -> String {
        if self.spec.privileged {
            format!("{} --privileged", self.mode.name())
        } else {
            self.mode.name().to_owned()
        }
    }
}

impl ModeRun {
    pub fn outcome(&self) -> Option<&InstanceOutcome> {
        match self {
            ModeRun::Ran(r) => Some(r.as_ref()),
            ModeRun::Measured(_) | ModeRun::Unavailable { .. } => None,
        }
    }
}

/// One column of a finished demo.
#[derive(Debug, Clone)]
pub struct ColumnReport {
    pub mode: ModeKind,
    pub spec: InstanceSpec,
    pub run: ModeRun,
    /// The probe run beside the demo's own, for demos whose table also
    /// shows where it ran (the CPUs the cpu demo's spinner sees).
    pub probe: Option<ModeRun>,
}

/// The evidence of one demo.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub demo: &'static Demo,
    pub name: &'static str,
    pub columns: Vec<ColumnReport>,
    /// The host's own facts, read by `bench` outside any namespace.
    pub host: HostTruth,
    pub rows: Vec<Row>,
    pub findings: Vec<Finding>,
    /// How it was measured (the pass demos: compare's method text).
    pub method: Vec<String>,
    /// Sentences generated from the numbers (the pass demos).
    pub conclusion: Vec<String>,
    /// The host settings read before the demo and verified unchanged after.
    pub host_settings: Vec<HostSetting>,
}

impl DemoReport {
    /// The column of `mode`, if it was requested.
    pub fn column(&self, mode: ModeKind) -> Option<&ColumnReport> {
        self.columns.iter().find(|c| c.mode == mode)
    }
}

/// Runs `demo` with each launcher (one column each, in the order given),
/// the pass demos with [`DemoSetup::default`].
pub fn run_demo(demo: &'static Demo, launchers: &[&dyn Launcher]) -> Result<DemoReport, DemoError> {
    run_demo_with(demo, launchers, &DemoSetup::default())
}

/// [`run_demo`] with the pass demos' setup given.
pub fn run_demo_with(
    demo: &'static Demo,
    launchers: &[&dyn Launcher],
    setup: &DemoSetup,
) -> Result<DemoReport, DemoError> {
    run_demo_at(
        demo,
        launchers,
        setup,
        Path::new("/proc"),
        Path::new("/sys"),
    )
}

/// [`run_demo_with`] with the host's `/proc` and `/sys` roots given.
pub fn run_demo_at(
    demo: &'static Demo,
    launchers: &[&dyn Launcher],
    setup: &DemoSetup,
    proc_root: &Path,
    sys_root: &Path,
) -> Result<DemoReport, DemoError> {
    let guard = HostGuard::snapshot_at(proc_root);
    let host = HostTruth::read(proc_root, sys_root);
    let columns = match demo.pass() {
        Some(pass) => pass_columns(pass, launchers, setup),
        None => run_columns(demo, launchers),
    };
    // The host check comes first: a moved setting outranks any other error.
    let changes = guard.verify();
    if !changes.is_empty() {
        return Err(DemoError::HostChanged {
            demo: demo.name,
            changes: describe(&changes),
        });
    }
    let columns = columns?;
    if let Some(pass) = demo.pass() {
        return Ok(DemoReport {
            demo,
            name: demo.name,
            rows: passes::rows(pass, &columns),
            findings: passes::findings(pass, &columns),
            method: passes::method(pass, setup),
            conclusion: passes::conclusion(pass, &columns),
            host,
            host_settings: guard.settings.clone(),
            columns,
        });
    }
    let cols: Vec<Column<'_>> = columns
        .iter()
        .map(|c| Column {
            mode: c.mode,
            spec: &c.spec,
            outcome: c.run.outcome(),
            probe: c.probe.as_ref().and_then(ModeRun::outcome),
        })
        .collect();
    let rows = facts::rows(demo.name, &cols, &host);
    let findings = facts::findings(demo.name, &cols, &host);
    Ok(DemoReport {
        demo,
        name: demo.name,
        rows,
        findings,
        method: vec![],
        conclusion: vec![],
        host,
        host_settings: guard.settings.clone(),
        columns,
    })
}

/// One column per launcher, each the pass's run in that mode.
fn pass_columns(
    pass: Pass,
    launchers: &[&dyn Launcher],
    setup: &DemoSetup,
) -> Result<Vec<ColumnReport>, DemoError> {
    let mut out = Vec::new();
    for l in launchers {
        if crate::interrupted() {
            return Err(DemoError::Interrupted);
        }
        out.push(ColumnReport {
            mode: l.kind(),
            spec: passes::column_spec(pass, l.kind().isolation(), setup),
            run: passes::run(pass, *l, setup)?,
            probe: None,
        });
    }
    Ok(out)
}

fn run_columns(demo: &Demo, launchers: &[&dyn Launcher]) -> Result<Vec<ColumnReport>, DemoError> {
    let mut out = Vec::new();
    for l in launchers {
        if crate::interrupted() {
            return Err(DemoError::Interrupted);
        }
        let isolation = l.kind().isolation();
        let spec = demo.spec(isolation);
        let run = run_one(*l, &spec)?;
        let probe = match demo.companion_probe(isolation) {
            Some(p) if run.outcome().is_some() => Some(run_one(*l, &p)?),
            _ => None,
        };
        let ran = run.outcome().is_some();
        out.push(ColumnReport {
            mode: l.kind(),
            spec,
            run,
            probe,
        });
        if let Some(twin) = demo.privileged_twin(isolation).filter(|_| ran) {
            let run = run_one(*l, &twin)?;
            out.push(ColumnReport {
                mode: l.kind(),
                spec: twin,
                run,
                probe: None,
            });
        }
    }
    Ok(out)
}

/// One column: launch through the mode's launcher, wait for the end, read
/// the outcome. What the host lacks, and anything a microVM column cannot
/// do here, is the column's one-line explanation rather than a failure of
/// the demo.
fn run_one(launcher: &dyn Launcher, spec: &InstanceSpec) -> Result<ModeRun, DemoError> {
    let kind = launcher.kind();
    let vm = kind.isolation() == Isolation::Vm;
    if let Some(reason) = launcher.unavailable() {
        return Ok(ModeRun::Unavailable { reason });
    }
    let timeout = if vm { VM_TIMEOUT } else { RUN_TIMEOUT };
    let ran = launcher
        .launch(spec)
        .and_then(|inst| inst.wait_exit(timeout));
    if crate::interrupted() {
        return Err(DemoError::Interrupted);
    }
    let outcome = match ran {
        Ok(o) => o,
        Err(e) if e.is_host() || vm => {
            return Ok(ModeRun::Unavailable {
                reason: crate::chain(&e),
            })
        }
        Err(source) => {
            return Err(DemoError::Run {
                mode: kind.name(),
                workload: spec.workload,
                source: Box::new(source),
            })
        }
    };
    if outcome.timed_out {
        if vm {
            return Ok(ModeRun::Unavailable {
                reason: format!(
                    "the microVM did not finish within {} s and was stopped",
                    timeout.as_secs()
                ),
            });
        }
        return Err(DemoError::Timeout {
            mode: kind.name(),
            workload: spec.workload,
            secs: timeout.as_secs(),
        });
    }
    checked(kind, spec, outcome)
}

/// A workload that is never killed on purpose must print its result line.
/// Without it the process and container columns fail; a microVM column
/// says why instead.
fn checked(kind: ModeKind, spec: &InstanceSpec, o: InstanceOutcome) -> Result<ModeRun, DemoError> {
    let vm = kind.isolation() == Isolation::Vm;
    if vm && o.status.is_none() {
        // The guest never reported the workload's end: say why, in one line.
        let stop = o.vm.as_ref().map_or("unknown reason", |r| {
            crate::single::stop_name(r.stop_reason)
        });
        return Ok(ModeRun::Unavailable {
            reason: format!(
                "the guest stopped ({stop}) before the workload reported its exit status"
            ),
        });
    }
    if o.result.is_some() || spec.workload == Workload::Hog {
        return Ok(ModeRun::Ran(Box::new(o)));
    }
    let stderr = o
        .stderr_tail
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .cloned()
        .unwrap_or_default();
    if vm {
        return Ok(ModeRun::Unavailable {
            reason: format!(
                "the guest's `workload {}` printed no result (status {:?}) {stderr}",
                spec.workload, o.status
            )
            .trim()
            .to_owned(),
        });
    }
    Err(DemoError::NoResult {
        mode: kind.name(),
        workload: spec.workload,
        status: o.status,
        stderr,
    })
}

fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| {
            format!(
                "{} was {:?}, is now {:?}",
                c.name,
                c.before.as_deref().unwrap_or("?"),
                c.after.as_deref().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::render_table;
    use crate::modes::fake::{FakeLauncher, FakeRun};

    fn ran(result: serde_json::Value) -> FakeRun {
        let mut r = FakeRun::ready(1);
        r.outcome.result = result.as_object().cloned();
        r
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc/sys/vm")).unwrap();
        std::fs::write(d.path().join("proc/sys/vm/swappiness"), "60\n").unwrap();
        std::fs::create_dir_all(d.path().join("sys/class/net/lo")).unwrap();
        d
    }

    fn demo_at(
        name: &str,
        launchers: &[&dyn Launcher],
        d: &tempfile::TempDir,
    ) -> Result<DemoReport, DemoError> {
        run_demo_at(
            Demo::find(name).unwrap(),
            launchers,
            &DemoSetup::default(),
            &d.path().join("proc"),
            &d.path().join("sys"),
        )
    }

    #[test]
    fn each_mode_gets_its_job_and_a_column() {
        let d = tree();
        let p = FakeLauncher::new(
            ModeKind::Process,
            vec![ran(
                serde_json::json!({"workload": "forkloop", "forked": 64, "capped": true}),
            )],
        );
        let c = FakeLauncher::new(
            ModeKind::Container,
            vec![ran(
                serde_json::json!({"workload": "forkloop", "forked": 31, "errno": "EAGAIN", "capped": false}),
            )],
        );
        let mut v = FakeLauncher::new(ModeKind::Microvm, vec![]);
        v.unavailable = Some("no KVM here".into());
        let rep = demo_at("forkbomb", &[&p, &c, &v], &d).unwrap();
        assert_eq!(p.jobs(), ["forkloop --max 64"]);
        assert_eq!(c.jobs(), ["forkloop --max 256"]);
        assert_eq!(
            c.launched.borrow()[0].pids,
            Some(32),
            "the cgroup's pids.max"
        );
        assert!(v.jobs().is_empty(), "an unavailable mode is not launched");
        assert_eq!(rep.columns.len(), 3);
        assert!(matches!(
            rep.column(ModeKind::Microvm).unwrap().run,
            ModeRun::Unavailable { .. }
        ));
        let forked = rep
            .rows
            .iter()
            .find(|r| r.label == "children forked")
            .unwrap();
        assert_eq!(forked.cells, ["64", "31", facts::NOT_RUN]);
        assert!(rep.findings[0].holds, "{:?}", rep.findings);
        assert_eq!(c.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_moved_host_setting_fails_the_demo_and_is_left_alone() {
        let d = tree();
        let swappiness = d.path().join("proc/sys/vm/swappiness");
        let mut c = FakeLauncher::new(
            ModeKind::Container,
            vec![ran(serde_json::json!({"workload": "knob", "knobs": []}))],
        );
        let touched = swappiness.clone();
        c.on_launch = Some(Box::new(move || std::fs::write(&touched, "61\n").unwrap()));
        let err = demo_at("knobs", &[&c], &d).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("HOST CHANGED during demo knobs"), "{msg}");
        assert!(
            msg.contains("vm.swappiness was \"60\", is now \"61\""),
            "{msg}"
        );
        // Reported, never written back: host settings are only read.
        assert_eq!(std::fs::read_to_string(swappiness).unwrap().trim(), "61");
    }

    #[test]
    fn a_missing_result_fails_the_process_column_and_explains_the_vm_column() {
        let d = tree();
        let p = FakeLauncher::new(ModeKind::Process, vec![FakeRun::ready(1)]);
        let err = demo_at("kernel", &[&p], &d).unwrap_err();
        assert!(
            matches!(
                err,
                DemoError::NoResult {
                    mode: "process",
                    ..
                }
            ),
            "{err}"
        );
        let mut silent = FakeRun::ready(1);
        silent.outcome.status = None;
        let v = FakeLauncher::new(ModeKind::Microvm, vec![silent]);
        let rep = demo_at("kernel", &[&v], &d).unwrap();
        match &rep.columns[0].run {
            ModeRun::Unavailable { reason } => assert_eq!(
                reason,
                "the guest stopped (unknown reason) before the workload reported its exit status"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_failed_vm_launch_is_the_columns_explanation_not_a_failed_demo() {
        let d = tree();
        let v = FakeLauncher::new(
            ModeKind::Microvm,
            vec![FakeRun {
                launch_error: Some("/dev/kvm here is PVM".into()),
                ..FakeRun::default()
            }],
        );
        let rep = demo_at("kernel", &[&v], &d).unwrap();
        assert!(matches!(
            &rep.columns[0].run,
            ModeRun::Unavailable { reason } if reason == "/dev/kvm here is PVM"
        ));
        let c = FakeLauncher::new(
            ModeKind::Container,
            vec![FakeRun {
                launch_error: Some("clone failed".into()),
                ..FakeRun::default()
            }],
        );
        assert!(matches!(
            demo_at("kernel", &[&c], &d).unwrap_err(),
            DemoError::Run {
                mode: "container",
                ..
            }
        ));
    }

    #[test]
    fn a_pass_demo_explains_a_microvm_it_cannot_load_and_launches_nothing_there() {
        let d = tree();
        let v = FakeLauncher::new(ModeKind::Microvm, vec![FakeRun::ready(1)]);
        let mut p = FakeLauncher::new(ModeKind::Process, vec![]);
        p.unavailable = Some("no workload binary".into());
        let setup = DemoSetup {
            vm_host: crate::modes::VmHost::Emulated,
            ..DemoSetup::default()
        };
        for name in ["noisy-neighbour", "attack-surface"] {
            let rep = run_demo_at(
                Demo::find(name).unwrap(),
                &[&p, &v],
                &setup,
                &d.path().join("proc"),
                &d.path().join("sys"),
            )
            .unwrap();
            assert!(v.jobs().is_empty() && p.jobs().is_empty(), "{name}");
            let reasons: Vec<&str> = rep
                .columns
                .iter()
                .map(|c| match &c.run {
                    ModeRun::Unavailable { reason } => reason.as_str(),
                    other => panic!("{name}: {other:?}"),
                })
                .collect();
            assert_eq!(reasons, ["no workload binary", passes::EMULATED_VM_REASON]);
            assert!(rep.rows.iter().all(|r| r.cells == [facts::NOT_RUN; 2]));
            assert!(!rep.method.is_empty(), "{name}: the method is stated");
            assert!(
                rep.conclusion.is_empty(),
                "{name}: no numbers, no sentences"
            );
            let md = crate::demo::render_markdown(std::slice::from_ref(&rep));
            assert!(md.contains(&format!(
                "> microvm: not run here: {}",
                passes::EMULATED_VM_REASON
            )));
        }
    }

    #[test]
    fn the_cpu_demo_also_probes_where_it_ran() {
        let d = tree();
        let c = FakeLauncher::new(
            ModeKind::Container,
            vec![
                ran(serde_json::json!({"workload": "worker", "ops_per_sec": 10.0})),
                ran(serde_json::json!({"workload": "probe", "cpus_online": 2})),
            ],
        );
        let rep = demo_at("cpu", &[&c], &d).unwrap();
        assert_eq!(c.jobs(), ["worker --duration-ms 2000", "probe "]);
        assert_eq!(c.launched.borrow()[1].cpus, Some(0.2), "same limits");
        let sees = rep.rows.iter().find(|r| r.label == "CPUs it sees").unwrap();
        assert_eq!(sees.cells, ["2"]);
    }

    #[test]
    fn the_capabilities_demo_runs_a_privileged_container_beside_the_default() {
        let d = tree();
        let probe = || ran(serde_json::json!({"workload": "probe", "pid": 2}));
        let c = FakeLauncher::new(ModeKind::Container, vec![probe(), probe()]);
        let rep = demo_at("capabilities", &[&c], &d).unwrap();
        let launched = c.launched.borrow();
        assert_eq!(launched.len(), 2);
        assert!(!launched[0].privileged && launched[1].privileged);
        let labels: Vec<String> = rep.columns.iter().map(ColumnReport::label).collect();
        assert_eq!(labels, ["container", "container --privileged"]);
        assert_eq!(
            rep.column(ModeKind::Container).unwrap().label(),
            "container"
        );
        assert!(render_table(&rep).contains("container --privileged"));
    }
}
