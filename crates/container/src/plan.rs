//! What the cloned child needs, prepared by the launcher before the clone
//! (so the child never allocates): shared by [`crate::child`] (the setup
//! steps) and [`crate::init`] (PID 1 and the workload's exec).

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use seccompiler::BpfProgram;

use crate::process::ExecPlan;
use crate::rootfs::RootfsPlan;

/// Descriptors the child uses (the launcher's ends are closed after clone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildFds {
    pub sync: RawFd,
    pub ready_w: RawFd,
    pub stdout_w: RawFd,
    pub stderr_w: RawFd,
    pub status_w: RawFd,
    /// Read end of the launcher's lifeline: EOF when the launcher dies.
    pub lifeline: RawFd,
}

impl ChildFds {
    pub(crate) fn all(&self) -> [RawFd; 6] {
        [
            self.sync,
            self.ready_w,
            self.stdout_w,
            self.stderr_w,
            self.status_w,
            self.lifeline,
        ]
    }
}

/// The security profile, resolved for the child.
#[derive(Debug, Clone, Default)]
pub(crate) struct HardeningPlan {
    /// Capability mask to keep in every set; `None` keeps all (privileged).
    pub keep_caps: Option<u64>,
    pub no_new_privs: bool,
    /// seccomp programs, installed in order.
    pub filters: Arc<Vec<BpfProgram>>,
}

/// Everything the child needs.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// Whether the launcher has work to do on the child before it may go
    /// on (id maps, then a network hook) and sends `GO`. Without, the
    /// child runs straight through: one hand-off less.
    pub wait_for_go: bool,
    pub rootfs: RootfsPlan,
    pub hostname: String,
    pub user_namespace: bool,
    /// cgroup v1 `tasks` files the child writes `0` to, to join its cgroup
    /// itself (empty when the launcher moves it by pid).
    pub cgroup_tasks: Vec<PathBuf>,
    /// cgroup v2: the instance cgroup's directory, for `CLONE_INTO_CGROUP`.
    pub cgroup_dir: Option<RawFd>,
    /// Init shares the launcher's memory (`CLONE_VM`, see
    /// [`crate::namespaces`]): without a user namespace.
    pub shares_memory: bool,
    pub hardening: HardeningPlan,
    pub exec: ExecPlan,
    /// A user's image: the working directory and user its program runs
    /// with (the built-in workload runs as root in `/`).
    pub identity: Option<crate::process::ExecIdentity>,
    pub fds: ChildFds,
}
