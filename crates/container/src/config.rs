//! What to run and how: the serde config the CLI and the harness fill in,
//! its validation, and the network hook.

use std::fmt::Debug;
use std::path::PathBuf;

use isolab_cgroups::Limits;
use serde::{Deserialize, Serialize};

use crate::error::ContainerError;

/// Default state directory (the shared images live in `images/`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/isolab";
/// Default runtime directory (one subdirectory per live instance). Its own
/// directory: other parts of the workbench keep locks and bundles in
/// `/run/isolab`, and everything in here is subject to stale cleanup.
pub const DEFAULT_RUN_DIR: &str = "/run/isolab/containers";
/// Default grace period between SIGTERM and SIGKILL in [`crate::Running::stop`].
pub const DEFAULT_STOP_GRACE_MS: u64 = 5_000;

/// One container instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The static `workload` binary on the host (copied into the image).
    pub workload_bin: PathBuf,
    /// The workload's mode, its first argument (`noop`, `api`, ...).
    pub workload: String,
    /// Further arguments to the workload.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (`KEY=value`); `PATH`, `HOME` and `ISOLAB_READY_FD` are always set.
    #[serde(default)]
    pub env: Vec<String>,
    /// cgroup limits, written before the workload runs.
    #[serde(default)]
    pub limits: Limits,
    /// Hostname in the UTS namespace; default `isolab-<instance id>`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Also create a user namespace (container root = host uid 100000).
    #[serde(default)]
    pub user_namespace: bool,
    /// Where shared images are built (default `/var/lib/isolab`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where instance directories live (default `/run/isolab/containers`).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Do not copy the workload's stderr to the launcher's stderr (it is
    /// still captured in [`crate::Outcome::stderr`]; the harness runs many
    /// instances; default false).
    #[serde(default)]
    pub quiet_stderr: bool,
    /// Run unconfined on purpose: all of root's capabilities, no seccomp
    /// filter, no device restrictions (default false: Docker's default
    /// profile, see [`crate::security`]).
    #[serde(default)]
    pub privileged: bool,
    /// Set no_new_privs before the workload runs, so setuid binaries and
    /// file capabilities grant nothing (default false, as in Docker).
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Grace between SIGTERM and SIGKILL when stopping (default 5000 ms).
    #[serde(default = "default_grace")]
    pub stop_grace_ms: u64,
    /// Run a user's image instead of the built-in workload: its rootfs is
    /// the overlay's lower layer and its program runs with its own argv,
    /// environment, working directory and user (`workload_bin`,
    /// `workload`, `args` and `env` are then unused).
    #[serde(default)]
    pub image: Option<ImageProcess>,
}

/// A user's image as the container runs it (from `isolab_image::RunSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageProcess {
    /// The unpacked root filesystem, the overlay's read-only lower layer.
    pub rootfs: PathBuf,
    /// Absolute path of the program inside the rootfs.
    pub program: String,
    /// Its argv (`argv[0]` as the image names it).
    pub argv: Vec<String>,
    /// Its whole environment (`KEY=value`).
    pub env: Vec<String>,
    /// Absolute working directory, created when missing (as Docker does).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_run_dir() -> PathBuf {
    DEFAULT_RUN_DIR.into()
}
fn default_grace() -> u64 {
    DEFAULT_STOP_GRACE_MS
}

impl ContainerConfig {
    /// A config with defaults for everything but the binary and the mode.
    pub fn new(workload_bin: impl Into<PathBuf>, workload: impl Into<String>) -> Self {
        Self {
            workload_bin: workload_bin.into(),
            workload: workload.into(),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            hostname: None,
            user_namespace: false,
            quiet_stderr: false,
            privileged: false,
            no_new_privileges: false,
            state_dir: default_state_dir(),
            run_dir: default_run_dir(),
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            image: None,
        }
    }

    /// Checks everything that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ContainerError> {
        let bad = |m: String| Err(ContainerError::Config(m));
        if self.workload.is_empty() || self.workload.starts_with('-') {
            return bad(format!("workload name '{}' is not a mode", self.workload));
        }
        for s in std::iter::once(&self.workload)
            .chain(&self.args)
            .chain(&self.env)
        {
            if s.contains('\0') {
                return bad(format!("'{}' contains a NUL byte", s.escape_debug()));
            }
        }
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                return bad(format!("environment entry '{e}' is not KEY=value"));
            }
        }
        if let Some(i) = &self.image {
            for s in [&i.program, &i.cwd]
                .into_iter()
                .chain(&i.argv)
                .chain(&i.env)
            {
                if s.contains('\0') {
                    return bad(format!("'{}' contains a NUL byte", s.escape_debug()));
                }
            }
            if !i.program.starts_with('/') || !i.cwd.starts_with('/') || i.argv.is_empty() {
                return bad("the image's program and working directory must be absolute paths and its argv not empty".into());
            }
            let root = i.rootfs.to_string_lossy();
            if root.contains([',', ':', '\0']) {
                return bad(format!(
                    "image rootfs {root}: an overlay layer path cannot hold ',' or ':'"
                ));
            }
        }
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return bad(format!(
                    "hostname '{h}' is invalid: use 1-63 letters, digits and '-', not starting or ending with '-'"
                ));
            }
        }
        if self.limits.memory_bytes == Some(0) {
            return bad("memory limit 0: it must be greater than zero".into());
        }
        if let Some(c) = self.limits.cpus {
            if !c.is_finite() || c <= 0.0 {
                return bad(format!("CPU amount {c}: it must be a positive number"));
            }
        }
        if self.limits.pids == Some(0) {
            return bad("pids limit 0: the workload needs at least one process".into());
        }
        Ok(())
    }

    /// The security profile these settings select.
    pub fn security(&self) -> crate::security::SecurityProfile {
        crate::security::SecurityProfile::new(self.privileged, self.no_new_privileges)
    }

    /// argv of the workload inside the container.
    pub(crate) fn argv(&self) -> Vec<String> {
        if let Some(i) = &self.image {
            return i.argv.clone();
        }
        let mut v = vec![
            crate::image::WORKLOAD_PATH.to_string(),
            self.workload.clone(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    /// Environment of the workload inside the container.
    pub(crate) fn envp(&self) -> Vec<String> {
        if let Some(i) = &self.image {
            return i.env.clone();
        }
        let mut v = vec![
            "PATH=/".to_string(),
            "HOME=/".to_string(),
            format!("ISOLAB_READY_FD={}", crate::init::READY_FD),
        ];
        v.extend(self.env.iter().cloned());
        v
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Attaches the container's network (e.g. a veth from a bridge) to its
/// network namespace, given as a descriptor, before the workload starts.
/// Without a user namespace the launcher makes the namespace on a thread
/// of its own and runs the hook there, while the container is cloned and
/// mounts its root; the container joins the namespace only once the hook
/// has returned. With a user namespace (which must own the network
/// namespace) the hook runs after the clone, with the id maps written.
/// Devices inside the namespace disappear with it, so there is no detach.
pub trait NetworkHook: Debug + Send + Sync {
    fn attach(
        &self,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ContainerConfig {
        ContainerConfig::new("/bin/workload", "noop")
    }

    #[test]
    fn defaults_are_documented_values() {
        let c: ContainerConfig =
            serde_json::from_str(r#"{"workload_bin": "/w", "workload": "noop"}"#).unwrap();
        assert_eq!(c.run_dir, PathBuf::from("/run/isolab/containers"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/isolab"));
        assert_eq!(c.stop_grace_ms, 5000);
        assert!(!c.user_namespace);
        assert!(!c.privileged && !c.no_new_privileges);
        assert_eq!(c.security().name, "default");
        assert!(serde_json::from_str::<ContainerConfig>(
            r#"{"workload_bin": "/w", "workload": "noop", "memroy": 1}"#
        )
        .is_err());
    }

    #[test]
    fn bad_values_are_refused_with_the_value_named() {
        let mut c = cfg();
        c.hostname = Some("bad_host!".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("'bad_host!'"));
        let mut c = cfg();
        c.limits.memory_bytes = Some(0);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.limits.cpus = Some(-1.0);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.limits.pids = Some(0);
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.env = vec!["NOEQUALS".into()];
        assert!(c.validate().is_err());
        assert!(cfg().validate().is_ok());
    }

    #[test]
    fn the_workload_gets_its_mode_and_the_ready_fd() {
        let mut c = cfg();
        c.args = vec!["--duration-ms".into(), "10".into()];
        assert_eq!(c.argv(), vec!["/workload", "noop", "--duration-ms", "10"]);
        assert!(c.envp().contains(&"ISOLAB_READY_FD=3".to_string()));
    }

    #[test]
    fn an_image_brings_its_own_argv_and_environment() {
        let mut c = cfg();
        c.image = Some(ImageProcess {
            rootfs: "/var/cache/isolab/images/sha256-x/rootfs".into(),
            program: "/bin/busybox".into(),
            argv: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/www".into(),
            uid: 33,
            gid: 33,
            additional_gids: vec![],
        });
        assert!(c.validate().is_ok());
        assert_eq!(c.argv(), ["httpd", "-f"]);
        assert_eq!(c.envp(), ["PATH=/bin"]);
        let mut bad = c.clone();
        bad.image.as_mut().unwrap().rootfs = "/a,b".into();
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.image.as_mut().unwrap().cwd = "www".into();
        assert!(bad.validate().is_err());
    }
}
