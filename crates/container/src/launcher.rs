//! The launch sequence as seen from the host (the child's half is in
//! [`crate::child`]), and the two ways to use it: one-shot [`run`] and
//! [`start`] -> [`Running`] -> [`Running::stop`] for long-running workloads.
//!
//! 1. validate the config; require root;
//! 2. detect the cgroup hierarchy; remove stale instances of dead launchers;
//! 3. build (once) the shared image;
//! 4. start the launch clock; create the instance directory and the cgroup
//!    with its limits;
//! 5. open the channels: sync socketpair, ready pipe, stdout pipe, status pipe;
//! 6. block signals, clone init into new namespaces, restore the mask;
//! 7. (user namespace) write the id maps; move init into the cgroup (v2;
//!    on v1 init joins itself, see [`crate::child`]); run the network hook;
//!    send GO;
//! 8. wait for EOF on the sync socket (workload exec'd) or a failure message.
//!
//! Teardown (after exit, on error, on drop): SIGKILL init if alive and reap
//! it, read the cgroup's statistics, kill and remove the cgroup, remove the
//! instance directory.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isolab_cgroups::{CgroupManager, Hierarchy, Stats};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;

use crate::child::{ChildFds, ChildPlan};
use crate::config::{ContainerConfig, NetworkHook};
use crate::error::ContainerError;
use crate::instance::{self, InstanceDir, USERNS_BASE_ID, USERNS_ID_COUNT};
use crate::process::{self, ExecPlan};
use crate::rootfs::RootfsPlan;
use crate::sync::{self, ExitStatus, MSG_LEN};
use crate::{image, namespaces};

/// Most of the workload's stdout kept (its result line is short).
const STDOUT_CAP: usize = 4 << 20;

/// What a finished container reports.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: String,
    pub workload: String,
    /// How the workload ended (or init, if the container was killed).
    pub status: ExitStatus,
    /// Shell convention: code, or 128+N for signal N.
    pub exit_code: i32,
    /// The cgroup's `oom_kill` counter is non-zero.
    pub oom_killed: bool,
    /// Launch -> the workload's ready byte, if it sent one.
    pub launch_to_ready_us: Option<u64>,
    /// Launch -> init reaped.
    pub launch_to_exit_us: u64,
    /// "v1" or "v2".
    pub cgroup_version: &'static str,
    /// Read after the exit, before the cgroup is removed.
    pub stats: Stats,
    /// The workload's captured stdout.
    pub stdout: String,
    /// The last line of stdout that parses as a JSON object (the result line).
    pub result: Option<serde_json::Value>,
}

/// Runs a container to completion.
pub fn run(config: &ContainerConfig) -> Result<Outcome, ContainerError> {
    start(config)?.wait()
}

/// Starts a container; it runs until it exits, [`Running::stop`], drop, or
/// the death of this process (init watches a lifeline pipe). Any thread may
/// start it and hand the [`Running`] to another; reaping needs the process.
pub fn start(config: &ContainerConfig) -> Result<Running, ContainerError> {
    start_with(config, None)
}

/// [`start`] with a network hook run while the container waits.
pub fn start_with(
    config: &ContainerConfig,
    network: Option<&dyn NetworkHook>,
) -> Result<Running, ContainerError> {
    config.validate()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(ContainerError::NotRoot);
    }
    let hierarchy = Hierarchy::detect_host().map_err(ContainerError::Cgroups)?;
    instance::clean_stale(&config.run_dir, &hierarchy);
    let image = image::ensure(&config.state_dir, &config.workload_bin)?;

    let t0 = Instant::now();
    let id = instance::new_id();
    let mut live = Live {
        id: id.clone(),
        instance: Some(InstanceDir::create(
            &config.run_dir,
            &id,
            config.user_namespace,
        )?),
        cgroup: None,
        pid: None,
    };
    live.cgroup = Some(
        isolab_cgroups::create(&hierarchy, &id, &config.limits).map_err(|source| {
            ContainerError::CgroupCreate {
                id: id.clone(),
                source,
            }
        })?,
    );

    let chan = |what| move |source| ContainerError::Channel { what, source };
    let (sync_parent, sync_child) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(chan("sync"))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(chan("ready"))?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(chan("stdout"))?;
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(chan("status"))?;
    let (lifeline_r, lifeline_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(chan("lifeline"))?;

    let inst = live
        .instance
        .as_ref()
        .ok_or_else(|| ContainerError::Config("no instance".into()))?;
    let hostname = config
        .hostname
        .clone()
        .unwrap_or_else(|| format!("isolab-{}", &id[..id.len().min(56)]));
    let plan = ChildPlan {
        rootfs: RootfsPlan {
            rootfs: inst.rootfs(),
            overlay_options: format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                inst.upper().display(),
                inst.work().display()
            ),
        },
        hostname,
        user_namespace: config.user_namespace,
        quiet_stderr: config.quiet_stderr,
        cgroup_tasks: live
            .cgroup
            .as_ref()
            .map(|c| c.self_join_files())
            .unwrap_or_default(),
        exec: ExecPlan::new(image::WORKLOAD_PATH, &config.argv(), &config.envp())
            .ok_or_else(|| ContainerError::Config("argument contains a NUL byte".into()))?,
        fds: ChildFds {
            sync: sync_child.as_raw_fd(),
            ready_w: ready_w.as_raw_fd(),
            stdout_w: stdout_w.as_raw_fd(),
            status_w: status_w.as_raw_fd(),
            lifeline: lifeline_r.as_raw_fd(),
        },
    };

    let old_mask = process::block_all().map_err(ContainerError::Clone)?;
    let cloned = namespaces::clone_init(&plan);
    let _ = process::set_mask(&old_mask);
    drop((sync_child, ready_w, stdout_w, status_w, lifeline_r));
    let pid = cloned.map_err(ContainerError::Clone)?;
    live.pid = Some(pid);

    let shared = Arc::new((Mutex::new(Monitor::default()), Condvar::new()));
    let monitor = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("isolab-mon-{}", pid))
            .spawn(move || monitor(ready_r, stdout_r, &shared))
            .map_err(|e| ContainerError::Channel {
                what: "monitor",
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
            })?
    };

    if config.user_namespace {
        write_id_maps(pid)?;
    }
    if let Some(cg) = live
        .cgroup
        .as_ref()
        .filter(|c| c.self_join_files().is_empty())
    {
        cg.add_pid(pid.as_raw())
            .map_err(|source| ContainerError::CgroupJoin {
                pid: pid.as_raw(),
                source,
            })?;
    }
    if let Some(hook) = network {
        hook.attach(pid.as_raw())
            .map_err(|source| ContainerError::NetworkHook {
                pid: pid.as_raw(),
                source,
            })?;
    }
    process::write_msg(sync_parent.as_raw_fd(), &[sync::GO]).map_err(ContainerError::Sync)?;
    let mut msg = [0u8; MSG_LEN];
    match process::read_msg(sync_parent.as_raw_fd(), &mut msg) {
        Ok(0) => {}
        Ok(n) => {
            return Err(match sync::parse_failure(&msg[..n]) {
                Some((step, source)) => ContainerError::Child { step, source },
                None => ContainerError::Sync(nix::Error::EBADMSG),
            })
        }
        // The child died without a word (e.g. killed): report how.
        Err(nix::Error::ECONNRESET) | Err(nix::Error::EPIPE) => {
            let status = live.reap_now();
            return Err(ContainerError::ChildDied { status });
        }
        Err(e) => return Err(ContainerError::Sync(e)),
    }
    drop(sync_parent);

    Ok(Running {
        live,
        workload: config.workload.clone(),
        cgroup_version: hierarchy.version(),
        t0,
        grace: Duration::from_millis(config.stop_grace_ms),
        status_r,
        _lifeline: lifeline_w,
        shared,
        monitor: Some(monitor),
    })
}

fn write_id_maps(pid: Pid) -> Result<(), ContainerError> {
    let line = format!("0 {USERNS_BASE_ID} {USERNS_ID_COUNT}\n");
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{file}"), &line).map_err(|source| {
            ContainerError::IdMap {
                pid: pid.as_raw(),
                file,
                source,
            }
        })?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Monitor {
    ready_at: Option<Instant>,
    /// The ready pipe was closed (with or without the ready byte).
    ready_closed: bool,
    stdout: Vec<u8>,
    done: bool,
}

/// Timestamps the ready byte as it arrives and collects stdout, until the
/// workload (and everything else in the container) has closed both.
fn monitor(ready: OwnedFd, stdout: OwnedFd, shared: &(Mutex<Monitor>, Condvar)) {
    let (lock, cvar) = shared;
    let mut ready = Some(std::fs::File::from(ready));
    let mut out = Some(std::fs::File::from(stdout));
    let mut buf = [0u8; 8192];
    while ready.is_some() || out.is_some() {
        let mut fds = Vec::with_capacity(2);
        if let Some(r) = &ready {
            fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
        }
        if let Some(o) = &out {
            fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let revents: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut idx = 0;
        if ready.is_some() {
            if revents[idx] {
                let now = Instant::now();
                let r = ready.as_mut().map(|f| f.read(&mut buf));
                let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Some(Ok(n)) if n > 0 => {
                        if m.ready_at.is_none() && buf[..n].contains(&b'R') {
                            m.ready_at = Some(now);
                        }
                    }
                    _ => {
                        m.ready_closed = true;
                        ready = None;
                    }
                }
                cvar.notify_all();
            }
            idx += 1;
        }
        if out.is_some() && revents[idx] {
            let r = out.as_mut().map(|f| f.read(&mut buf));
            match r {
                Some(Ok(n)) if n > 0 => {
                    let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let room = STDOUT_CAP.saturating_sub(m.stdout.len());
                    m.stdout.extend_from_slice(&buf[..n.min(room)]);
                }
                _ => out = None,
            }
        }
    }
    let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
    m.ready_closed = true;
    m.done = true;
    cvar.notify_all();
}

/// Host resources of one instance; dropping it tears everything down.
#[derive(Debug)]
struct Live {
    id: String,
    instance: Option<InstanceDir>,
    cgroup: Option<Box<dyn CgroupManager>>,
    /// Init's host pid while it has not been reaped.
    pid: Option<Pid>,
}

impl Live {
    /// SIGKILLs init (the kernel then kills the whole PID namespace) and
    /// reaps it; returns how it ended.
    fn reap_now(&mut self) -> String {
        match self.pid.take() {
            Some(pid) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                match wait_blocking(pid) {
                    Ok(s) => format!("{s:?}"),
                    Err(e) => e.to_string(),
                }
            }
            None => "already reaped".into(),
        }
    }

    fn teardown(&mut self) -> Result<(), ContainerError> {
        self.reap_now();
        let mut result = Ok(());
        if let Some(cg) = self.cgroup.take() {
            if let Err(source) = cg.remove() {
                result = Err(ContainerError::Cleanup {
                    id: self.id.clone(),
                    source,
                });
            }
        }
        if let Some(inst) = self.instance.take() {
            if let Err(source) = inst.remove() {
                if result.is_ok() {
                    result = Err(ContainerError::InstanceDir {
                        path: inst.dir.clone(),
                        source,
                    });
                }
            }
        }
        result
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

fn wait_blocking(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Err(nix::Error::EINTR) => continue,
            r => return r,
        }
    }
}

/// A started container.
#[derive(Debug)]
pub struct Running {
    live: Live,
    workload: String,
    cgroup_version: &'static str,
    t0: Instant,
    grace: Duration,
    status_r: OwnedFd,
    /// Held for the container's life; init ends the container on its EOF.
    _lifeline: OwnedFd,
    shared: Arc<(Mutex<Monitor>, Condvar)>,
    monitor: Option<JoinHandle<()>>,
}

impl Running {
    pub fn id(&self) -> &str {
        &self.live.id
    }

    /// Host pid of the container's init (its PID 1).
    pub fn pid(&self) -> i32 {
        self.live.pid.map_or(0, Pid::as_raw)
    }

    /// When the launch began (the clock of all durations).
    pub fn launched_at(&self) -> Instant {
        self.t0
    }

    /// The instance's cgroup (for memory and CPU readings while it runs).
    pub fn cgroup(&self) -> Option<&dyn CgroupManager> {
        self.live.cgroup.as_deref()
    }

    pub fn stats(&self) -> Result<Stats, ContainerError> {
        self.live
            .cgroup
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_else(|| Ok(Stats::default()))
            .map_err(|source| ContainerError::Stats {
                id: self.live.id.clone(),
                source,
            })
    }

    /// Waits until the workload reports ready; returns launch -> ready, or
    /// `None` if it closed the ready fd without it or `timeout` passed.
    pub fn wait_ready(&self, timeout: Duration) -> Option<Duration> {
        let (lock, cvar) = &*self.shared;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (m, _) = cvar
            .wait_timeout_while(guard, timeout, |m| m.ready_at.is_none() && !m.ready_closed)
            .unwrap_or_else(|e| e.into_inner());
        m.ready_at.map(|t| t.saturating_duration_since(self.t0))
    }

    /// Sends `signal` to init, which forwards it to the workload.
    pub fn signal(&self, signal: Signal) -> Result<(), ContainerError> {
        match self.live.pid {
            Some(pid) => {
                nix::sys::signal::kill(pid, signal).map_err(|source| ContainerError::Signal {
                    pid: pid.as_raw(),
                    source,
                })
            }
            None => Ok(()),
        }
    }

    /// Waits for the workload to end, then tears the container down.
    pub fn wait(mut self) -> Result<Outcome, ContainerError> {
        let pid = self.live.pid.ok_or(ContainerError::Wait {
            pid: 0,
            source: nix::Error::ECHILD,
        })?;
        let status = wait_blocking(pid).map_err(|source| ContainerError::Wait {
            pid: pid.as_raw(),
            source,
        })?;
        self.finish(status)
    }

    /// SIGTERM (forwarded to the workload), then SIGKILL after the grace
    /// period; then tears the container down.
    pub fn stop(mut self) -> Result<Outcome, ContainerError> {
        let Some(pid) = self.live.pid else {
            return Err(ContainerError::Wait {
                pid: 0,
                source: nix::Error::ECHILD,
            });
        };
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + self.grace;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
                Ok(status) => return self.finish(status),
                Err(source) => {
                    return Err(ContainerError::Wait {
                        pid: pid.as_raw(),
                        source,
                    })
                }
            }
            if Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let status = wait_blocking(pid).map_err(|source| ContainerError::Wait {
                    pid: pid.as_raw(),
                    source,
                })?;
                return self.finish(status);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn finish(&mut self, init_status: WaitStatus) -> Result<Outcome, ContainerError> {
        let exited_at = Instant::now();
        self.live.pid = None;
        // Init writes the workload's status just before it exits; without
        // it, init itself was killed and its signal is the container's end.
        let mut msg = [0u8; MSG_LEN];
        let n = process::read_msg(self.status_r.as_raw_fd(), &mut msg).unwrap_or(0);
        let status = sync::parse_status(&msg[..n]).unwrap_or(match init_status {
            WaitStatus::Exited(_, c) => ExitStatus::Exited(c),
            WaitStatus::Signaled(_, s, _) => ExitStatus::Signaled(s as i32),
            _ => ExitStatus::Signaled(libc::SIGKILL),
        });
        if let Some(h) = self.monitor.take() {
            let _ = h.join();
        }
        let stats = self.stats()?;
        self.live.teardown()?;
        let (lock, _) = &*self.shared;
        let m = lock.lock().unwrap_or_else(|e| e.into_inner());
        let stdout = String::from_utf8_lossy(&m.stdout).into_owned();
        let result = stdout.lines().rev().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l.trim())
                .ok()
                .filter(|v| v.is_object())
        });
        Ok(Outcome {
            id: self.live.id.clone(),
            workload: self.workload.clone(),
            status,
            exit_code: status.code(),
            oom_killed: stats.oom_kills > 0,
            launch_to_ready_us: m
                .ready_at
                .map(|t| t.saturating_duration_since(self.t0).as_micros() as u64),
            launch_to_exit_us: exited_at.saturating_duration_since(self.t0).as_micros() as u64,
            cgroup_version: self.cgroup_version,
            stats,
            stdout,
            result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_container_can_be_handed_to_another_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Running>();
        send_sync::<Outcome>();
    }
}
