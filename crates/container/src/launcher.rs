//! The launch sequence as seen from the host, one function per step, in the
//! order of `docs/design.md` ("Container launch sequence"; the child's half
//! is [`crate::child`]), and the two ways to use it: one-shot [`run`] and
//! [`start`] -> [`Running`] -> [`Running::stop`] for long-running workloads.
//!
//! 1. [`validate`]: the config; root;
//! 2. [`prepare_host`]: detect the cgroup hierarchy; remove stale instances
//!    of dead launchers;
//! 3. [`prepare_image`]: the workload must be an ELF executable; build (once)
//!    and lease the shared image;
//! 4. [`prepare_security`]: resolve the security profile and compile its
//!    seccomp filter (once per process); [`prepare_network`]: the sync
//!    socket, then a thread that makes the network namespace, attaches the
//!    network hook and sends the namespace to the child itself,
//!    concurrently with steps 5-10;
//! 5. [`create_instance_dir`]: `<run_dir>/<id>` (0700) with the owner
//!    file and the overlay's upper and work dirs;
//! 6. [`create_cgroup`]: the instance cgroup with every limit and the
//!    device rules written before anything joins it;
//! 7. [`open_channels`]: ready, stdout, stderr, status and lifeline pipes;
//! 8. [`clone_child`]: block signals, clone init into new namespaces (v2:
//!    `clone3` with `CLONE_INTO_CGROUP`, born in its cgroup; v1: init joins
//!    itself), restore the mask; hand ready/stdout/stderr to the process's
//!    one reader thread ([`crate::reader`]);
//! 9. [`attach`]: (user namespace) write the id maps; run the network hook;
//!    send `GO`
//!    (only when there was something to do: otherwise the child did not
//!    wait; it joins the namespace the network thread sends after its
//!    pivot, before `/sys`);
//! 10. [`await_exec`]: read the child's phase stamps, then EOF on the sync
//!     socket (the workload exec'd) or a failure message; join the network
//!     thread (its error, if any, is the launch's).
//!
//! The launch clock ([`Running::launched_at`], [`LaunchPhases`]) starts
//! before step 1. Every step fails with its own [`ContainerError`] variant. Teardown (after
//! exit, on error, on drop): SIGKILL init if alive and reap it, read the
//! cgroup's statistics, kill and remove the cgroup, and only then remove
//! the instance directory (so a cgroup that could not be removed stays
//! findable by the next start's stale cleanup).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use isolab_cgroups::{CgroupManager, Hierarchy, Stats};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;

use crate::config::{ContainerConfig, NetworkHook};
use crate::error::ContainerError;
use crate::image::{self, ImageLease};
use crate::instance::{self, InstanceDir, USERNS_BASE_ID, USERNS_ID_COUNT};
use crate::namespaces;
use crate::phases::{self, LaunchPhases, Marks, STAMPS_MSG_LEN};
use crate::plan::{ChildFds, ChildPlan, HardeningPlan};
use crate::process::{self, ExecIdentity, ExecPlan};
use crate::reader::{self, Monitor, Shared};
use crate::rootfs::RootfsPlan;
use crate::security::{ProfileSummary, SecurityProfile};
use crate::sync::{self, ExitStatus, MSG_LEN};

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
    /// Where the launch's time went.
    pub phases: LaunchPhases,
    /// The security profile it ran under.
    pub security: ProfileSummary,
    /// "v1" or "v2".
    pub cgroup_version: &'static str,
    /// Read after the exit, before the cgroup is removed.
    pub stats: Stats,
    /// The workload's captured stdout.
    pub stdout: String,
    /// The start of the workload's stderr.
    pub stderr: String,
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

/// [`start`] with a network hook (see [`NetworkHook`] for when it runs).
pub fn start_with(
    config: &ContainerConfig,
    network: Option<&dyn NetworkHook>,
) -> Result<Running, ContainerError> {
    // The network namespace is made (and the hook run) on a scoped thread
    // that borrows the hook; it is joined before the launch returns.
    std::thread::scope(|scope| launch(scope, config, network))
}

fn launch<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    config: &ContainerConfig,
    network: Option<&'scope dyn NetworkHook>,
) -> Result<Running, ContainerError> {
    // The launch clock covers every step: preparation is per-launch work
    // too (stale cleanup, the image lease), so it is not hidden.
    let t0 = Instant::now();
    let mut marks = Marks {
        t0: phases::now_ns(),
        ..Marks::default()
    };
    validate(config)?;
    // The sync socket first: the network thread sends the namespace it
    // makes straight to the child over it.
    let sync_pair = sync_socketpair()?;
    let netns = prepare_network(scope, config, network, &sync_pair.0)?;
    let hierarchy = prepare_host(config)?;
    // Without a user namespace init shares this process's memory; its
    // keeper thread starts now, so its start overlaps the instance
    // directory and the cgroup (`namespaces::Keeper`).
    let keeper = match config.user_namespace {
        false => Some(namespaces::Keeper::spawn().map_err(ContainerError::Clone)?),
        true => None,
    };
    let image = prepare_image(config)?;
    let (security, hardening) = prepare_security(config)?;
    marks.prepared = phases::now_ns();
    let id = instance::new_id();
    let mut live = Live {
        id: id.clone(),
        instance: None,
        cgroup: None,
        pid: None,
        shares_memory: false,
        image,
    };
    live.instance = Some(create_instance_dir(config, &id)?);
    marks.instance_dir = phases::now_ns();
    live.cgroup = Some(create_cgroup(&hierarchy, &id, config, &security)?);
    marks.cgroup = phases::now_ns();
    let ch = open_channels(sync_pair, live.cgroup.as_deref())?;
    let shares_memory = keeper.is_some();
    let plan = child_plan(
        config,
        &live,
        &id,
        hardening,
        &ch,
        netns.is_some(),
        shares_memory,
    )?;
    let (pid, shared, parent) = clone_child(&plan, keeper, ch, config.quiet_stderr)?;
    live.pid = Some(pid);
    live.shares_memory = plan.shares_memory;
    marks.cloned = phases::now_ns();
    // From here init may be reading `plan` in this very memory (it shares
    // it): every way out ends init before `plan` is dropped.
    let attached = after_clone(
        config,
        network,
        netns,
        pid,
        &parent.sync,
        plan.wait_for_go,
        &mut marks,
    );
    if let Err(e) = attached {
        let status = live.reap_now();
        return Err(match e {
            ContainerError::ChildDied { .. } => ContainerError::ChildDied { status },
            e => e,
        });
    }
    drop(parent.sync);
    drop(plan);

    Ok(Running {
        live,
        workload: config.workload.clone(),
        cgroup_version: hierarchy.version(),
        security: security.summary(),
        t0,
        marks,
        grace: Duration::from_millis(config.stop_grace_ms),
        status_r: parent.status_r,
        _lifeline: parent.lifeline_w,
        shared,
    })
}

/// Steps 9 and 10: attach (GO), the network thread's namespace, the
/// child's stamps and exec.
fn after_clone<'scope>(
    config: &ContainerConfig,
    network: Option<&'scope dyn NetworkHook>,
    netns: Option<NetnsThread<'scope>>,
    pid: Pid,
    sync: &OwnedFd,
    wait_for_go: bool,
    marks: &mut Marks,
) -> Result<(), ContainerError> {
    // A user namespace's hook runs here, by pid; otherwise it ran on the
    // network thread.
    let late_hook = network.filter(|_| netns.is_none());
    attach(config, pid, late_hook, sync, wait_for_go)?;
    marks.go_sent = phases::now_ns();
    let exec = await_exec(sync, marks);
    // The network thread is done once the child has the namespace (or
    // failed); its error explains a child that could not join one.
    if let Some(thread) = netns {
        let joined = thread
            .join()
            .map_err(|_| ContainerError::NetNamespace(nix::Error::EIO))
            .and_then(|r| r);
        match joined {
            Ok(sent) => marks.go_sent = marks.go_sent.max(sent),
            // A failed send is the child's failure seen from this side:
            // the child's own report says more.
            Err(ContainerError::Sync(_)) if exec.is_err() => {}
            Err(e) => return Err(e),
        }
    }
    exec
}

/// Step 1.
pub(crate) fn validate(config: &ContainerConfig) -> Result<(), ContainerError> {
    config.validate()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(ContainerError::NotRoot);
    }
    Ok(())
}

/// Step 2. The stale scan reads every instance's owner file, so with a
/// thousand live instances it would cost milliseconds per launch: it runs
/// at the first start of this process in a run dir, then at most once a
/// second ([`STALE_SCAN_INTERVAL`]).
fn prepare_host(config: &ContainerConfig) -> Result<Hierarchy, ContainerError> {
    // The host's cgroup layout does not change under a running process:
    // detected (mountinfo parsed) once, not at every launch.
    static HOST: OnceLock<Hierarchy> = OnceLock::new();
    let hierarchy = match HOST.get() {
        Some(h) => h.clone(),
        None => {
            let h = Hierarchy::detect_host().map_err(ContainerError::Cgroups)?;
            HOST.get_or_init(|| h).clone()
        }
    };
    if stale_scan_due(&config.run_dir, Instant::now()) {
        instance::clean_stale(&config.run_dir, &hierarchy);
    }
    Ok(hierarchy)
}

/// The least time between two stale scans of one run dir by one process.
pub const STALE_SCAN_INTERVAL: Duration = Duration::from_secs(1);

fn stale_scan_due(run_dir: &std::path::Path, now: Instant) -> bool {
    static LAST: Mutex<Vec<(std::path::PathBuf, Instant)>> = Mutex::new(Vec::new());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match last.iter_mut().find(|(d, _)| d == run_dir) {
        Some((_, t)) if now.saturating_duration_since(*t) < STALE_SCAN_INTERVAL => false,
        Some((_, t)) => {
            *t = now;
            true
        }
        None => {
            last.push((run_dir.to_path_buf(), now));
            true
        }
    }
}

/// Step 3.
/// A user's image brings its own rootfs: nothing to build or lease.
pub(crate) fn prepare_image(
    config: &ContainerConfig,
) -> Result<Option<ImageLease>, ContainerError> {
    if config.image.is_some() {
        return Ok(None);
    }
    image::lease(&config.state_dir, &config.workload_bin).map(Some)
}

/// Step 4.
pub(crate) fn prepare_security(
    config: &ContainerConfig,
) -> Result<(SecurityProfile, HardeningPlan), ContainerError> {
    let profile = config.security();
    let hardening = HardeningPlan {
        keep_caps: profile.caps.map(|c| c.0),
        no_new_privs: profile.no_new_privileges,
        filters: profile.filters().map_err(ContainerError::Seccomp)?,
    };
    Ok((profile, hardening))
}

/// Step 4b: start making the network namespace on a thread of its own,
/// attach the network hook to it there, and send it to the child over the
/// sync socket (`sync`, the launcher's end; the child receives it after
/// its pivot), concurrently with steps 5-10 and the child's first mounts;
/// unless it must come from the clone (a user namespace owns it). The
/// thread hands the namespace to the child directly, so the launcher's
/// thread never waits for it; it is joined after [`await_exec`], and
/// returns when it sent the namespace (the end of the attach phase). On a
/// failure it shuts the socket's sending side, so the child stops waiting
/// (its join fails) and the thread's error is the one reported.
fn prepare_network<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    config: &ContainerConfig,
    hook: Option<&'scope dyn NetworkHook>,
    sync: &OwnedFd,
) -> Result<Option<NetnsThread<'scope>>, ContainerError> {
    if config.user_namespace {
        return Ok(None);
    }
    let sync = sync.try_clone().map_err(|e| ContainerError::Channel {
        what: "sync",
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE)),
    })?;
    std::thread::Builder::new()
        .name("isolab-netns".into())
        .spawn_scoped(scope, move || {
            let made = namespaces::new_netns()
                .map_err(ContainerError::NetNamespace)
                .and_then(|fd| match hook {
                    Some(hook) => hook
                        .attach(fd.as_fd())
                        .map(|()| fd)
                        .map_err(|source| ContainerError::NetworkHook { source }),
                    None => Ok(fd),
                })
                .and_then(|fd| send_fd(&sync, sync::NETNS, &fd).map_err(ContainerError::Sync));
            match made {
                Ok(()) => Ok(phases::now_ns()),
                Err(e) => {
                    let _ = nix::sys::socket::shutdown(
                        sync.as_raw_fd(),
                        nix::sys::socket::Shutdown::Write,
                    );
                    Err(e)
                }
            }
        })
        .map(Some)
        .map_err(|e| {
            ContainerError::NetNamespace(nix::Error::from_raw(
                e.raw_os_error().unwrap_or(libc::EAGAIN),
            ))
        })
}

/// The network thread: when it sent the namespace to the child.
type NetnsThread<'scope> = std::thread::ScopedJoinHandle<'scope, Result<u64, ContainerError>>;

/// Step 5.
pub(crate) fn create_instance_dir(
    config: &ContainerConfig,
    id: &str,
) -> Result<InstanceDir, ContainerError> {
    let dir = InstanceDir::create(&config.run_dir, id, config.user_namespace)?;
    if let Some(image) = &config.image {
        // The overlay's root takes the upper dir's mode (0700 for ours):
        // give it the image's root mode, so the image's non-root user can
        // reach `/` (the instance dir above it stays 0700).
        use std::os::unix::fs::PermissionsExt;
        let err =
            |path: std::path::PathBuf| move |source| ContainerError::InstanceDir { path, source };
        let mode = std::fs::metadata(&image.rootfs)
            .map_err(err(image.rootfs.clone()))?
            .permissions()
            .mode()
            & 0o7777;
        std::fs::set_permissions(dir.upper(), std::fs::Permissions::from_mode(mode))
            .map_err(err(dir.upper()))?;
    }
    Ok(dir)
}

/// Step 6.
pub(crate) fn create_cgroup(
    hierarchy: &Hierarchy,
    id: &str,
    config: &ContainerConfig,
    security: &SecurityProfile,
) -> Result<Box<dyn CgroupManager>, ContainerError> {
    isolab_cgroups::create_with_devices(hierarchy, id, &config.limits, security.devices).map_err(
        |source| ContainerError::CgroupCreate {
            id: id.to_string(),
            source,
        },
    )
}

/// Both ends of every channel between the launcher and the child, and
/// (cgroup v2) the cgroup directory the child is cloned into.
struct Channels {
    parent: ParentEnds,
    child: ChildEnds,
    cgroup_dir: Option<OwnedFd>,
}

/// The launcher's ends.
struct ParentEnds {
    sync: OwnedFd,
    ready_r: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
    status_r: OwnedFd,
    lifeline_w: OwnedFd,
}

/// The child's ends, closed in the launcher right after the clone.
struct ChildEnds {
    sync: OwnedFd,
    ready_w: OwnedFd,
    stdout_w: OwnedFd,
    stderr_w: OwnedFd,
    status_w: OwnedFd,
    lifeline_r: OwnedFd,
}

/// The sync socket (launcher's end, child's end), made before step 4b.
fn sync_socketpair() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| ContainerError::Channel {
        what: "sync",
        source,
    })
}

/// Step 7: every channel but the sync socket (made first).
fn open_channels(
    (sync_parent, sync_child): (OwnedFd, OwnedFd),
    cgroup: Option<&dyn CgroupManager>,
) -> Result<Channels, ContainerError> {
    let chan = |what| move |source| ContainerError::Channel { what, source };
    let pipe = |what| nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(chan(what));
    let (ready_r, ready_w) = pipe("ready")?;
    let (stdout_r, stdout_w) = pipe("stdout")?;
    let (stderr_r, stderr_w) = pipe("stderr")?;
    let (status_r, status_w) = pipe("status")?;
    let (lifeline_r, lifeline_w) = pipe("lifeline")?;
    // v2 (no self-join files): the child is cloned straight into it.
    let cgroup_dir = match cgroup.filter(|c| c.self_join_files().is_empty()) {
        Some(cg) => {
            let dir = cg.paths().into_iter().next().unwrap_or_default();
            Some(
                nix::fcntl::open(
                    &dir,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(chan("cgroup directory"))?,
            )
        }
        None => None,
    };
    Ok(Channels {
        cgroup_dir,
        parent: ParentEnds {
            sync: sync_parent,
            ready_r,
            stdout_r,
            stderr_r,
            status_r,
            lifeline_w,
        },
        child: ChildEnds {
            sync: sync_child,
            ready_w,
            stdout_w,
            stderr_w,
            status_w,
            lifeline_r,
        },
    })
}

/// Everything the child needs, prepared before the clone (it never allocates).
fn child_plan(
    config: &ContainerConfig,
    live: &Live,
    id: &str,
    hardening: HardeningPlan,
    ch: &Channels,
    netns_from_launcher: bool,
    shares_memory: bool,
) -> Result<ChildPlan, ContainerError> {
    let inst = live
        .instance
        .as_ref()
        .ok_or_else(|| ContainerError::Config("no instance".into()))?;
    let lower = match (&config.image, &live.image) {
        (Some(i), _) => i.rootfs.clone(),
        (None, Some(lease)) => lease.dir.clone(),
        (None, None) => return Err(ContainerError::Config("no image".into())),
    };
    let hostname = config
        .hostname
        .clone()
        .unwrap_or_else(|| format!("isolab-{}", &id[..id.len().min(56)]));
    let c = &ch.child;
    let cgroup_tasks = live
        .cgroup
        .as_ref()
        .map(|c| c.self_join_files())
        .unwrap_or_default();
    Ok(ChildPlan {
        wait_for_go: needs_go(config),
        rootfs: RootfsPlan {
            rootfs: inst.rootfs(),
            netns_from: netns_from_launcher.then(|| c.sync.as_raw_fd()),
            overlay_options: format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                inst.upper().display(),
                inst.work().display()
            ),
            make_mount_points: config.image.is_some(),
        },
        hostname,
        user_namespace: config.user_namespace,
        cgroup_tasks,
        cgroup_dir: ch.cgroup_dir.as_ref().map(|d| d.as_raw_fd()),
        shares_memory,
        hardening,
        exec: ExecPlan::new(
            config
                .image
                .as_ref()
                .map_or(image::WORKLOAD_PATH, |i| i.program.as_str()),
            &config.argv(),
            &config.envp(),
        )
        .ok_or_else(|| ContainerError::Config("argument contains a NUL byte".into()))?,
        identity: match &config.image {
            Some(i) => Some(
                ExecIdentity::new(&i.cwd, i.uid, i.gid, &i.additional_gids).ok_or_else(|| {
                    ContainerError::Config("working directory contains a NUL byte".into())
                })?,
            ),
            None => None,
        },
        fds: ChildFds {
            sync: c.sync.as_raw_fd(),
            ready_w: c.ready_w.as_raw_fd(),
            stdout_w: c.stdout_w.as_raw_fd(),
            stderr_w: c.stderr_w.as_raw_fd(),
            status_w: c.status_w.as_raw_fd(),
            lifeline: c.lifeline_r.as_raw_fd(),
        },
    })
}

/// Whether [`attach`] has work to do before the child may go on: id maps
/// (and then a network hook). The cgroup needs none (v1's child joins
/// itself, v2's is cloned into it) and neither does a network hook without
/// a user namespace: it ran on the network thread, and the child waits for
/// the namespace it attached to.
fn needs_go(config: &ContainerConfig) -> bool {
    config.user_namespace
}

/// What [`clone_child`] leaves the launcher: init's pid, what the reader
/// ([`crate::reader`]) sees of it, and the launcher's ends still in use.
type Cloned = (Pid, Arc<Shared>, Remaining);

/// The launcher's ends after the reader thread took its pipes.
struct Remaining {
    sync: OwnedFd,
    status_r: OwnedFd,
    lifeline_w: OwnedFd,
}

/// Step 8.
fn clone_child(
    plan: &ChildPlan,
    keeper: Option<namespaces::Keeper>,
    ch: Channels,
    quiet_stderr: bool,
) -> Result<Cloned, ContainerError> {
    let old_mask = process::block_all().map_err(ContainerError::Clone)?;
    let cloned = namespaces::clone_init(plan, keeper);
    let _ = process::set_mask(&old_mask);
    drop(ch.child);
    let pid = cloned.map_err(ContainerError::Clone)?;
    let p = ch.parent;
    let shared = Arc::new((Mutex::new(Monitor::default()), Condvar::new()));
    let watched = reader::watch(
        p.ready_r,
        p.stdout_r,
        p.stderr_r,
        quiet_stderr,
        Arc::clone(&shared),
    );
    if let Err(source) = watched {
        // Init may be reading `plan` in this memory: end it first.
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = wait_blocking(pid);
        return Err(ContainerError::Channel {
            what: "monitor",
            source,
        });
    }
    Ok((
        pid,
        shared,
        Remaining {
            sync: p.sync,
            status_r: p.status_r,
            lifeline_w: p.lifeline_w,
        },
    ))
}

/// Step 9.
fn attach(
    config: &ContainerConfig,
    pid: Pid,
    late_hook: Option<&dyn NetworkHook>,
    sync: &OwnedFd,
    send_go: bool,
) -> Result<(), ContainerError> {
    if config.user_namespace {
        write_id_maps(pid)?;
    }
    if let Some(hook) = late_hook {
        let ns = nix::fcntl::open(
            format!("/proc/{pid}/ns/net").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(ContainerError::NetNamespace)?;
        hook.attach(ns.as_fd())
            .map_err(|source| ContainerError::NetworkHook { source })?;
    }
    if send_go {
        process::write_msg(sync.as_raw_fd(), &[sync::GO]).map_err(ContainerError::Sync)?;
    }
    Ok(())
}

/// Sends one `tag` byte with `fd` attached (`SCM_RIGHTS`).
fn send_fd(sock: &OwnedFd, tag: u8, fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(std::slice::from_ref(&tag))];
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// Step 10: the child's stamps, then EOF (exec'd) or its failure.
/// `ChildDied` (with an empty status) when it died without a word.
fn await_exec(sync: &OwnedFd, marks: &mut Marks) -> Result<(), ContainerError> {
    let mut msg = [0u8; STAMPS_MSG_LEN];
    loop {
        match process::read_msg(sync.as_raw_fd(), &mut msg) {
            Ok(0) => {
                marks.execd = phases::now_ns();
                return Ok(());
            }
            Ok(n) => {
                if let Some(stamps) = phases::decode(&msg[..n]) {
                    marks.child = stamps;
                    continue;
                }
                return Err(match sync::parse_failure(&msg[..n]) {
                    Some((step, source)) => ContainerError::Child { step, source },
                    None => ContainerError::Sync(nix::Error::EBADMSG),
                });
            }
            // The child died without a word (e.g. killed): report how.
            Err(nix::Error::ECONNRESET) | Err(nix::Error::EPIPE) => {
                return Err(ContainerError::ChildDied {
                    status: String::new(),
                })
            }
            Err(e) => return Err(ContainerError::Sync(e)),
        }
    }
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

/// Host resources of one instance; dropping it tears everything down.
#[derive(Debug)]
struct Live {
    id: String,
    instance: Option<InstanceDir>,
    cgroup: Option<Box<dyn CgroupManager>>,
    /// Init's host pid while it has not been reaped.
    pid: Option<Pid>,
    /// Whether init shares this process's memory (its keeper thread owns
    /// its stack).
    shares_memory: bool,
    /// Keeps the image from being pruned while the container lives.
    image: Option<ImageLease>,
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
        if let Some(cg) = self.cgroup.take() {
            if let Err(source) = cg.remove() {
                // The instance dir stays: it is what the next start's stale
                // cleanup finds this cgroup by (once this launcher is gone).
                self.instance = None;
                return Err(ContainerError::Cleanup {
                    id: self.id.clone(),
                    source,
                });
            }
        }
        if let Some(inst) = self.instance.take() {
            inst.remove()
                .map_err(|source| ContainerError::InstanceDir {
                    path: inst.dir.clone(),
                    source,
                })?;
        }
        self.image = None;
        Ok(())
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
    security: ProfileSummary,
    t0: Instant,
    marks: Marks,
    grace: Duration,
    status_r: OwnedFd,
    /// Held for the container's life; init ends the container on its EOF.
    _lifeline: OwnedFd,
    shared: Arc<Shared>,
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
    /// Whether init shares this process's memory (no user namespace:
    /// `CLONE_VM`, see `docs/design.md`): its PSS and USS are
    /// then this process's, and its own pages are its stack, counted in the
    /// container's cgroup.
    pub fn init_shares_launcher_memory(&self) -> bool {
        self.live.shares_memory
    }

    pub fn launched_at(&self) -> Instant {
        self.t0
    }

    /// Where the launch's time went; `workload_ready_us` once it is ready.
    pub fn phases(&self) -> LaunchPhases {
        let (lock, _) = &*self.shared;
        let ready = lock.lock().unwrap_or_else(|e| e.into_inner()).ready_ns;
        LaunchPhases::from_marks(&self.marks, ready)
    }

    /// The security profile the container runs under.
    pub fn security(&self) -> &ProfileSummary {
        &self.security
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

    /// Whether `text` appeared in the workload's stdout or stderr so far
    /// (as much of them as is kept).
    pub fn output_contains(&self, text: &str) -> bool {
        let (lock, _) = &*self.shared;
        let m = lock.lock().unwrap_or_else(|e| e.into_inner());
        let has = |b: &[u8]| String::from_utf8_lossy(b).contains(text);
        has(&m.stdout) || has(&m.stderr)
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
        {
            // Init is reaped, so everything in its PID namespace is gone
            // and the pipes are closed: wait for the reader to drain them.
            let (lock, cvar) = &*self.shared;
            let m = lock.lock().unwrap_or_else(|e| e.into_inner());
            drop(
                cvar.wait_while(m, |m| !m.done)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
        let stats = self.stats()?;
        self.live.teardown()?;
        let (lock, _) = &*self.shared;
        let m = lock.lock().unwrap_or_else(|e| e.into_inner());
        let stdout = String::from_utf8_lossy(&m.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&m.stderr).into_owned();
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
            phases: LaunchPhases::from_marks(&self.marks, m.ready_ns),
            security: self.security.clone(),
            cgroup_version: self.cgroup_version,
            stats,
            stdout,
            stderr,
            result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_scans_run_first_then_at_most_once_a_second() {
        let dir = std::path::Path::new("/nonexistent/stale-scan-test");
        let t = Instant::now();
        assert!(stale_scan_due(dir, t));
        assert!(!stale_scan_due(dir, t + Duration::from_millis(500)));
        assert!(stale_scan_due(dir, t + Duration::from_millis(1001)));
        assert!(stale_scan_due(
            std::path::Path::new("/nonexistent/other"),
            t
        ));
    }

    #[test]
    fn the_child_waits_only_when_the_launcher_has_work_first() {
        let c = ContainerConfig::new("/w", "noop");
        assert!(!needs_go(&c), "no userns: the network thread has the hook");
        let mut u = c.clone();
        u.user_namespace = true;
        assert!(needs_go(&u), "id maps");
    }

    #[test]
    fn a_running_container_can_be_handed_to_another_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Running>();
        send_sync::<Outcome>();
    }
}
