//! Running one demo: the host's settings are read, the demo's job runs in
//! every requested mode, the host is read again, and the evidence becomes a
//! [`DemoReport`]. A host setting that moved fails the demo loudly, whatever
//! else happened.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::catalog::Demo;
use super::facts::{self, Column, Finding, HostTruth, Row};
use super::guard::{Change, HostGuard, HostSetting};
use super::runner::{DemoMode, Job, ModeRun, ModeRunner};

/// Errors of a demo run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("Cannot start {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot wait for {what}")]
    Wait {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {secs} s and was killed")]
    Timeout { what: String, secs: u64 },
    #[error("The container running `workload {workload}` failed: {message}")]
    Container { workload: String, message: String },
    #[error("`workload {workload}` printed no result line in the {mode} column (status {status:?}): {stderr}")]
    NoResult {
        mode: &'static str,
        workload: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("Interrupted; the runs already started were stopped and cleaned up")]
    Interrupted,
    #[error("HOST CHANGED during demo {demo}: {changes} — this is a bug in the isolation under test; report it")]
    HostChanged { demo: &'static str, changes: String },
}

/// One column of a finished demo.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnReport {
    pub mode: DemoMode,
    pub job: Job,
    pub run: ModeRun,
    /// The probe run beside the job, for demos whose table also shows where
    /// the job ran (the CPUs the cpu demo's spinner sees).
    pub probe: Option<ModeRun>,
}

/// The evidence of one demo.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    #[serde(skip)]
    pub demo: &'static Demo,
    pub name: &'static str,
    pub columns: Vec<ColumnReport>,
    /// The host's own facts, read by `bench` outside any namespace.
    pub host: HostTruth,
    pub rows: Vec<Row>,
    pub findings: Vec<Finding>,
    /// The host settings read before the demo and verified unchanged after.
    pub host_settings: Vec<HostSetting>,
}

impl DemoReport {
    /// The column of `mode`, if it was requested.
    pub fn column(&self, mode: DemoMode) -> Option<&ColumnReport> {
        self.columns.iter().find(|c| c.mode == mode)
    }
}

/// Demos whose table also shows the probe's view of the CPUs.
fn wants_probe(demo: &Demo) -> bool {
    demo.name == "cpu"
}

/// Runs `demo` with each runner (one column each, in the order given).
pub fn run_demo(demo: &'static Demo, runners: &[&dyn ModeRunner]) -> Result<DemoReport, DemoError> {
    run_demo_at(demo, runners, Path::new("/proc"), Path::new("/sys"))
}

/// [`run_demo`] with the host's `/proc` and `/sys` roots given.
pub fn run_demo_at(
    demo: &'static Demo,
    runners: &[&dyn ModeRunner],
    proc_root: &Path,
    sys_root: &Path,
) -> Result<DemoReport, DemoError> {
    let guard = HostGuard::snapshot_at(proc_root);
    let host = HostTruth::read(proc_root, sys_root);
    let columns = run_columns(demo, runners);
    // The host check comes first: a moved setting outranks any other error.
    let changes = guard.verify();
    if !changes.is_empty() {
        return Err(DemoError::HostChanged {
            demo: demo.name,
            changes: describe(&changes),
        });
    }
    let columns = columns?;
    let cols: Vec<Column<'_>> = columns
        .iter()
        .map(|c| Column {
            mode: c.mode,
            job: &c.job,
            record: c.run.record(),
            probe: c.probe.as_ref().and_then(ModeRun::record),
        })
        .collect();
    let rows = facts::rows(demo.name, &cols, &host);
    let findings = facts::findings(demo.name, &cols, &host);
    Ok(DemoReport {
        demo,
        name: demo.name,
        rows,
        findings,
        host,
        host_settings: guard.settings.clone(),
        columns,
    })
}

fn run_columns(demo: &Demo, runners: &[&dyn ModeRunner]) -> Result<Vec<ColumnReport>, DemoError> {
    let mut out = Vec::new();
    for r in runners {
        if crate::interrupted() {
            return Err(DemoError::Interrupted);
        }
        let job = demo.job(r.mode());
        let run = checked(r.mode(), &job, r.run(&job)?)?;
        let probe = if wants_probe(demo) && run.record().is_some() {
            let pj = Job::new("probe", &[]);
            Some(checked(r.mode(), &pj, r.run(&pj)?)?)
        } else {
            None
        };
        out.push(ColumnReport {
            mode: r.mode(),
            job,
            run,
            probe,
        });
    }
    Ok(out)
}

/// A workload that is never killed on purpose must print its result line.
/// Without it the process and container columns fail; the microVM column
/// says why instead.
fn checked(mode: DemoMode, job: &Job, run: ModeRun) -> Result<ModeRun, DemoError> {
    let ModeRun::Ran(rec) = &run else {
        return Ok(run);
    };
    if rec.result.is_some() || job.workload == "hog" {
        return Ok(run);
    }
    let stderr = rec
        .stderr_tail
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .cloned()
        .unwrap_or_default();
    if mode == DemoMode::Microvm {
        return Ok(ModeRun::Unavailable {
            reason: format!(
                "the guest's `workload {}` printed no result (status {:?}) {stderr}",
                job.workload, rec.status
            )
            .trim()
            .to_owned(),
        });
    }
    Err(DemoError::NoResult {
        mode: mode.name(),
        workload: job.workload.clone(),
        status: rec.status,
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

/// Where `bench` finds the binaries the runners need.
pub fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Some(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::runner::RunRecord;
    use std::cell::RefCell;

    /// A runner double: records the jobs, answers a canned result, and can
    /// play a container that escapes and moves a host sysctl.
    struct Fake {
        mode: DemoMode,
        jobs: RefCell<Vec<String>>,
        result: Option<serde_json::Value>,
        touch: Option<PathBuf>,
    }

    impl ModeRunner for Fake {
        fn mode(&self) -> DemoMode {
            self.mode
        }
        fn run(&self, job: &Job) -> Result<ModeRun, DemoError> {
            self.jobs
                .borrow_mut()
                .push(format!("{} {}", job.workload, job.args.join(" ")));
            if let Some(p) = &self.touch {
                std::fs::write(p, "61\n").unwrap();
            }
            if self.mode == DemoMode::Microvm {
                return Ok(ModeRun::Unavailable {
                    reason: "no KVM here".into(),
                });
            }
            Ok(ModeRun::Ran(Box::new(RunRecord {
                status: Some(0),
                result: self.result.clone(),
                ..RunRecord::default()
            })))
        }
    }

    fn fake(mode: DemoMode, result: Option<serde_json::Value>) -> Fake {
        Fake {
            mode,
            jobs: RefCell::default(),
            result,
            touch: None,
        }
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc/sys/vm")).unwrap();
        std::fs::write(d.path().join("proc/sys/vm/swappiness"), "60\n").unwrap();
        std::fs::create_dir_all(d.path().join("sys/class/net/lo")).unwrap();
        d
    }

    #[test]
    fn each_mode_gets_its_job_and_a_column() {
        let d = tree();
        let p = fake(
            DemoMode::Process,
            Some(serde_json::json!({"workload": "forkloop", "forked": 64, "capped": true})),
        );
        let c = fake(
            DemoMode::Container,
            Some(
                serde_json::json!({"workload": "forkloop", "forked": 31, "errno": "EAGAIN", "capped": false}),
            ),
        );
        let v = fake(DemoMode::Microvm, None);
        let demo = Demo::find("forkbomb").unwrap();
        let rep = run_demo_at(
            demo,
            &[&p, &c, &v],
            &d.path().join("proc"),
            &d.path().join("sys"),
        )
        .unwrap();
        assert_eq!(p.jobs.borrow().as_slice(), ["forkloop --max 64"]);
        assert_eq!(c.jobs.borrow().as_slice(), ["forkloop --max 256"]);
        assert_eq!(rep.columns.len(), 3);
        assert!(matches!(
            rep.column(DemoMode::Microvm).unwrap().run,
            ModeRun::Unavailable { .. }
        ));
        let forked = rep
            .rows
            .iter()
            .find(|r| r.label == "children forked")
            .unwrap();
        assert_eq!(forked.cells, ["64", "31", facts::NOT_RUN]);
        assert!(rep.findings[0].holds, "{:?}", rep.findings);
    }

    #[test]
    fn a_moved_host_setting_fails_the_demo_and_is_left_alone() {
        let d = tree();
        let swappiness = d.path().join("proc/sys/vm/swappiness");
        let mut c = fake(
            DemoMode::Container,
            Some(serde_json::json!({"workload": "knob", "knobs": []})),
        );
        c.touch = Some(swappiness.clone());
        let demo = Demo::find("knobs").unwrap();
        let err =
            run_demo_at(demo, &[&c], &d.path().join("proc"), &d.path().join("sys")).unwrap_err();
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
    fn a_missing_result_fails_the_process_column() {
        let d = tree();
        let p = fake(DemoMode::Process, None);
        let err = run_demo_at(
            Demo::find("kernel").unwrap(),
            &[&p],
            &d.path().join("proc"),
            &d.path().join("sys"),
        )
        .unwrap_err();
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
    }
}
