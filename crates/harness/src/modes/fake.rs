//! A [`Launcher`] test double: instances that become ready after a scripted
//! delay (read off the clock, never slept), report scripted memory and end
//! with a scripted outcome, so the scenarios (compare, density, demos) are
//! unit-tested without privileges. It records what it was asked to launch
//! and counts the instances still running.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    HttpTarget, Instance, InstanceMemory, InstanceOutcome, InstanceSpec, Launcher, ModeKind,
};
use crate::HarnessError;

/// What one launch does.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeRun {
    /// The launch itself fails with this message.
    pub launch_error: Option<String>,
    /// Launch -> ready; `None`: it never signals ready.
    pub ready_after: Option<Duration>,
    pub memory: InstanceMemory,
    pub outcome: InstanceOutcome,
    /// Stopping it fails with this message (its end cannot be read).
    pub stop_error: Option<String>,
}

impl FakeRun {
    /// Ready after `ms` milliseconds, ending with status 0.
    pub fn ready(ms: u64) -> Self {
        FakeRun {
            ready_after: Some(Duration::from_millis(ms)),
            outcome: InstanceOutcome {
                status: Some(0),
                ..InstanceOutcome::default()
            },
            ..FakeRun::default()
        }
    }
}

/// Launches scripted instances of `kind`.
pub(crate) struct FakeLauncher {
    pub kind: ModeKind,
    pub unavailable: Option<String>,
    /// One entry per launch, in order; the last one repeats.
    pub script: Vec<FakeRun>,
    /// Called at every launch (e.g. to play an instance that escapes and
    /// touches the host).
    pub on_launch: Option<Box<dyn Fn()>>,
    /// The specs launched so far.
    pub launched: RefCell<Vec<InstanceSpec>>,
    /// Instances launched and not yet stopped or waited for.
    pub live: Arc<AtomicUsize>,
}

impl FakeLauncher {
    pub fn new(kind: ModeKind, script: Vec<FakeRun>) -> Self {
        FakeLauncher {
            kind,
            unavailable: None,
            script,
            on_launch: None,
            launched: RefCell::default(),
            live: Arc::default(),
        }
    }

    /// "workload args..." of every launch, in order.
    pub fn jobs(&self) -> Vec<String> {
        self.launched
            .borrow()
            .iter()
            .map(|s| format!("{} {}", s.workload, s.args.join(" ")))
            .collect()
    }
}

impl Launcher for FakeLauncher {
    fn kind(&self) -> ModeKind {
        self.kind
    }

    fn unavailable(&self) -> Option<String> {
        self.unavailable.clone()
    }

    fn launch(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, HarnessError> {
        let n = {
            let mut l = self.launched.borrow_mut();
            l.push(spec.clone());
            l.len() - 1
        };
        if let Some(f) = &self.on_launch {
            f();
        }
        let run = self
            .script
            .get(n)
            .or(self.script.last())
            .cloned()
            .unwrap_or_default();
        if let Some(e) = run.launch_error {
            return Err(HarnessError::Launch(e));
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeInstance {
            run,
            launched: Instant::now(),
            live: Arc::clone(&self.live),
        }))
    }
}

struct FakeInstance {
    run: FakeRun,
    launched: Instant,
    live: Arc<AtomicUsize>,
}

impl FakeInstance {
    fn end(self) -> InstanceOutcome {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.run.outcome
    }
}

impl Instance for FakeInstance {
    fn launched_at(&self) -> Instant {
        self.launched
    }

    fn wait_ready(&mut self, _timeout: Duration) -> Result<Instant, HarnessError> {
        self.run
            .ready_after
            .map(|d| self.launched + d)
            .ok_or_else(|| HarnessError::NotReady("scripted never to be ready".into()))
    }

    fn http_target(&self) -> Option<HttpTarget> {
        None
    }

    fn host_pids(&self) -> Vec<u32> {
        Vec::new()
    }

    fn memory(&self) -> InstanceMemory {
        self.run.memory.clone()
    }

    fn stop(self: Box<Self>) -> Result<InstanceOutcome, HarnessError> {
        let error = self.run.stop_error.clone();
        let outcome = self.end();
        match error {
            Some(e) => Err(HarnessError::Launch(e)),
            None => Ok(outcome),
        }
    }

    fn wait_exit(self: Box<Self>, _timeout: Duration) -> Result<InstanceOutcome, HarnessError> {
        Ok(self.end())
    }
}
