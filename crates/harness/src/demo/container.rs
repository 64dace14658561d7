//! The container column: the workload through `isolab-container`'s one-shot
//! [`isolab_container::run`], in its own namespaces and cgroup, on the host
//! kernel. The cgroup's counters (OOM kills, throttling, pids) come back
//! with the outcome, read before the cgroup is removed.

use std::path::PathBuf;

use isolab_cgroups::Limits;
use isolab_container::{ContainerConfig, ContainerError};

use super::runner::{DemoMode, Job, ModeRun, ModeRunner, RunRecord};
use super::DemoError;

/// The hostname every demo container gets, so the tables read the same on
/// every run.
pub const DEMO_HOSTNAME: &str = "isolab-demo";

/// Runs jobs as containers.
#[derive(Debug, Clone)]
pub struct ContainerRunner {
    /// The static `workload` binary (copied into the container image).
    pub workload: PathBuf,
}

impl ContainerRunner {
    /// The container config for a job: its limits become the cgroup's.
    pub fn config(&self, job: &Job) -> ContainerConfig {
        let mut c = ContainerConfig::new(&self.workload, &job.workload);
        c.args = job.args.clone();
        c.hostname = Some(DEMO_HOSTNAME.to_owned());
        c.limits = Limits {
            memory_bytes: job.memory_bytes,
            cpus: job.cpus,
            pids: job.pids,
            ..Limits::default()
        };
        c
    }
}

impl ModeRunner for ContainerRunner {
    fn mode(&self) -> DemoMode {
        DemoMode::Container
    }

    fn run(&self, job: &Job) -> Result<ModeRun, DemoError> {
        match isolab_container::run(&self.config(job)) {
            Ok(o) => Ok(ModeRun::Ran(Box::new(RunRecord {
                status: Some(o.exit_code),
                result: o.result,
                cpu_time_us: o.stats.cpu_usage_usec,
                cgroup: Some(o.stats),
                ..RunRecord::default()
            }))),
            // What the host lacks is the column's explanation, not a failure.
            Err(e @ (ContainerError::NotRoot | ContainerError::Cgroups(_))) => {
                Ok(ModeRun::Unavailable { reason: chain(&e) })
            }
            Err(e) => Err(DemoError::Container {
                workload: job.workload.clone(),
                message: chain(&e),
            }),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
