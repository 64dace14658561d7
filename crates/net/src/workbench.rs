//! The workbench network: one namespace of its own with a bridge in it,
//! and the attachments of instances to that bridge.
//!
//! Setup, in order (one function each, see [`Workbench::create`]):
//! 1. validate the names and the subnet;
//! 2. take the lock `<lock_dir>/net-<name>.lock` (a live workbench of the
//!    same name is an error; a lock left by a killed run is free again);
//! 3. check that no address of the caller's own namespace lies in the
//!    subnet (read-only: this crate never configures the host's network);
//! 4. remove a stale namespace name left by a killed run;
//! 5. create the namespace, bind-mounted at `<run_dir>/<name>`;
//! 6. inside it: `lo` up, the bridge with the subnet's first address, up.
//!
//! Attachments: a container gets a veth pair whose peer is created
//! directly in its namespace ([`Workbench::attach_veth`]); a microVM gets a
//! TAP fd ([`Workbench::create_tap`]); a plain process enters the namespace
//! in `pre_exec` ([`Workbench::pre_exec_enter`]). Each holds an address
//! [`Lease`] and removes its interface when dropped. Removing the namespace
//! removes every interface in it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};

use crate::ipam::{AddrError, AddressPool, Lease, Subnet};
use crate::netlink::{Link, Netlink, NetlinkError};
use crate::netns::{self, NamedNetns, NetnsError};
use crate::tap::{self, Tap, TapError};

/// Default namespace name.
pub const DEFAULT_NAME: &str = "isolab0";
/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "isobr0";
/// Default subnet; its first address (10.203.0.1) is the bridge's. It exists
/// only inside the workbench namespace.
pub const DEFAULT_SUBNET: &str = "10.203.0.0/24";
/// Default directory of lock files.
pub const DEFAULT_LOCK_DIR: &str = "/run/isolab";

/// Errors of the workbench network.
#[derive(Debug, thiserror::Error)]
pub enum WorkbenchError {
    /// A name in the configuration is unusable.
    #[error("Invalid {what} name {name:?}: use 1..=15 bytes without '/' or whitespace")]
    Name { what: &'static str, name: String },
    /// The lock directory or file could not be created.
    #[error("Could not create the lock file {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another live workbench holds this name and its bridge.
    #[error("Workbench network {name} (bridge {bridge}) is already in use by a running process (lock {lock}); stop it or pick another name")]
    InUse {
        name: String,
        bridge: String,
        lock: PathBuf,
    },
    /// The caller's own namespace already has an address in the subnet.
    #[error("Address range {subnet} is already in use here ({addr} on ifindex {index}); pick another private subnet")]
    AddressRangeInUse {
        subnet: Subnet,
        addr: Ipv4Addr,
        index: u32,
    },
    /// Reading the caller's addresses failed.
    #[error("Could not read this namespace's addresses to check the subnet")]
    AddressScan(#[source] NetlinkError),
    /// A stale namespace name could not be removed.
    #[error("Could not remove the stale namespace left by an earlier run")]
    Stale(#[source] NetnsError),
    /// Creating the namespace failed.
    #[error("Could not create the workbench namespace")]
    Namespace(#[source] NetnsError),
    /// Opening netlink inside the namespace failed.
    #[error("Could not talk to the workbench namespace")]
    Netlink(#[source] NetlinkError),
    /// Setting up `lo` failed.
    #[error("Could not set up lo in the workbench namespace")]
    Loopback(#[source] NetlinkError),
    /// Creating or configuring the bridge failed.
    #[error("Could not set up bridge {name} with {addr}/{prefix}")]
    Bridge {
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
        #[source]
        source: NetlinkError,
    },
    /// The subnet is invalid or has no free address.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// Creating the veth pair failed.
    #[error("Could not create veth pair {host} <-> {peer}")]
    Veth {
        host: String,
        peer: String,
        #[source]
        source: NetlinkError,
    },
    /// Configuring the instance's end failed.
    #[error("Could not configure {peer} in the instance's namespace ({step})")]
    Peer {
        peer: String,
        step: &'static str,
        #[source]
        source: NetlinkError,
    },
    /// The instance's namespace could not be opened.
    #[error("Could not open the instance's network namespace")]
    Target(#[source] NetnsError),
    /// Creating the TAP failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Removing the namespace failed.
    #[error("Could not remove the workbench namespace")]
    Teardown(#[source] NetnsError),
}

impl WorkbenchError {
    /// Whether the host lacks something (privilege, a kernel feature, a
    /// device) rather than the request being wrong: the CLI maps this to
    /// exit status 3.
    pub fn is_host(&self) -> bool {
        const HOST_ERRNOS: &[i32] = &[libc::EPERM, libc::EACCES, libc::EOPNOTSUPP, libc::ENOENT];
        let refused = |e: &NetlinkError| e.errno().is_some_and(|n| HOST_ERRNOS.contains(&n));
        match self {
            WorkbenchError::Namespace(NetnsError::Unshare(_))
            | WorkbenchError::Namespace(NetnsError::BindMount { .. })
            | WorkbenchError::Tap(TapError::NoTunDevice) => true,
            WorkbenchError::Netlink(NetlinkError::Socket(_)) => true,
            WorkbenchError::Bridge { source, .. } | WorkbenchError::Veth { source, .. } => {
                refused(source)
            }
            _ => false,
        }
    }
}

/// Configuration of the workbench network; [`Default`] gives the documented
/// defaults, [`WorkbenchConfig::per_process`] a workbench of this process's
/// own.
#[derive(Debug, Clone)]
pub struct WorkbenchConfig {
    /// Namespace name (default `isolab0`).
    pub name: String,
    /// Bridge name inside it (default `isobr0`).
    pub bridge: String,
    /// Private subnet (default `10.203.0.0/24`); the bridge takes its first address.
    pub subnet: Subnet,
    /// Where namespace names live (default `/run/netns`, as `ip netns`).
    pub run_dir: PathBuf,
    /// Where the lock file lives (default `/run/isolab`).
    pub lock_dir: PathBuf,
}

impl Default for WorkbenchConfig {
    fn default() -> Self {
        WorkbenchConfig {
            name: DEFAULT_NAME.into(),
            bridge: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET.parse().expect("the default subnet is valid"),
            run_dir: PathBuf::from(netns::RUN_NETNS),
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
        }
    }
}

/// The workbench namespace with its bridge. Dropping it removes the
/// namespace, and with it every interface inside.
#[derive(Debug)]
pub struct Workbench {
    config: WorkbenchConfig,
    ns: Option<NamedNetns>,
    nl: Arc<Mutex<Netlink>>,
    bridge_index: u32,
    pool: AddressPool,
    next_if: AtomicU32,
    removed_stale: bool,
    lock: Option<(Flock<File>, PathBuf)>,
}

impl Workbench {
    /// Creates the namespace and the bridge (steps in the module docs).
    pub fn create(config: WorkbenchConfig) -> Result<Workbench, WorkbenchError> {
        validate(&config)?;
        let lock = take_lock(&config)?;
        // From here on every failure must give the lock file back.
        let prepared = check_subnet_free(&config.subnet).and_then(|()| {
            let ns_path = config.run_dir.join(&config.name);
            let removed_stale = netns::remove_name(&ns_path).map_err(WorkbenchError::Stale)?;
            let ns = NamedNetns::create(&config.run_dir, &config.name)
                .map_err(WorkbenchError::Namespace)?;
            Ok((removed_stale, ns))
        });
        let (removed_stale, ns) = match prepared {
            Ok(p) => p,
            Err(err) => {
                release_lock(lock);
                return Err(err);
            }
        };
        match setup_inside(&ns, &config) {
            Ok((nl, bridge_index)) => Ok(Workbench {
                pool: AddressPool::new(config.subnet),
                config,
                ns: Some(ns),
                nl: Arc::new(Mutex::new(nl)),
                bridge_index,
                next_if: AtomicU32::new(0),
                removed_stale,
                lock: Some(lock),
            }),
            Err(err) => {
                let _ = ns.remove();
                release_lock(lock);
                Err(err)
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &WorkbenchConfig {
        &self.config
    }

    /// Whether a stale namespace of a killed run was removed at creation.
    pub fn removed_stale(&self) -> bool {
        self.removed_stale
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        self.config.run_dir.join(&self.config.name)
    }

    /// The bridge's address (the instances' gateway).
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.config.subnet.gateway()
    }

    /// The bridge's interface index inside the namespace.
    pub fn bridge_index(&self) -> u32 {
        self.bridge_index
    }

    /// Every interface inside the workbench namespace.
    pub fn links(&self) -> Result<Vec<Link>, WorkbenchError> {
        self.netlink().links().map_err(WorkbenchError::Netlink)
    }

    /// A bare address lease (for an instance attached by other means).
    pub fn lease(&self) -> Result<Lease, WorkbenchError> {
        Ok(self.pool.lease()?)
    }

    /// Number of addresses currently leased.
    pub fn leased(&self) -> usize {
        self.pool.leased()
    }

    fn netlink(&self) -> MutexGuard<'_, Netlink> {
        self.nl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ns_fd(&self) -> BorrowedFd<'_> {
        self.ns
            .as_ref()
            .map(AsFd::as_fd)
            .expect("the namespace is only taken by destroy/drop")
    }

    /// A hook for `CommandExt::pre_exec` that moves the child into the
    /// workbench namespace (process mode). The workbench must outlive the
    /// `spawn` call that runs the hook.
    pub fn pre_exec_enter(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let fd = self.ns_fd().as_raw_fd();
        move || netns::enter_raw(fd)
    }

    /// Runs `f` on a helper thread inside the workbench namespace (for
    /// example the [`crate::probe`]); sockets it opens stay there.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, WorkbenchError> {
        netns::run_in(self.ns_fd(), f).map_err(WorkbenchError::Namespace)
    }

    /// [`crate::probe::first_response`] run inside the workbench namespace,
    /// so the probe's traffic can only reach the bridge and its instances.
    pub fn probe_first_response(
        &self,
        addr: std::net::SocketAddr,
        since: std::time::Instant,
        cfg: &crate::probe::ProbeConfig,
    ) -> Result<Result<crate::probe::FirstResponse, crate::probe::ProbeError>, WorkbenchError> {
        self.run_in(|| crate::probe::first_response(addr, since, cfg))
    }

    /// [`crate::probe::request_run`] run inside the workbench namespace.
    pub fn probe_run(
        &self,
        addr: std::net::SocketAddr,
        requests: u32,
        cfg: &crate::probe::ProbeConfig,
    ) -> Result<Result<crate::probe::RequestRun, crate::probe::ProbeError>, WorkbenchError> {
        self.run_in(|| crate::probe::request_run(addr, requests, cfg))
    }

    /// Attaches the instance whose network namespace is `target` (open
    /// `/proc/<pid>/ns/net` with [`netns::open_pid`]): a veth pair with
    /// the host end on the bridge and the peer `peer_name` (usually
    /// `eth0`) created inside `target`, given a leased address, set up, with
    /// `lo` up and a default route via the bridge.
    pub fn attach_veth(
        &self,
        target: BorrowedFd<'_>,
        peer_name: &str,
    ) -> Result<VethAttachment, WorkbenchError> {
        if !tap::valid_ifname(peer_name) {
            return Err(WorkbenchError::Name {
                what: "peer interface",
                name: peer_name.to_owned(),
            });
        }
        let lease = self.pool.lease()?;
        let host = format!("iv{}", self.next_if.fetch_add(1, Ordering::Relaxed));
        let veth_err = |source| WorkbenchError::Veth {
            host: host.clone(),
            peer: peer_name.to_owned(),
            source,
        };
        // The host end born up, on the bridge. Its index is never looked
        // up: the pair is deleted by the host end's name.
        self.netlink()
            .add_veth(
                &host,
                peer_name,
                lease.mac(),
                target,
                Some(self.bridge_index),
            )
            .map_err(veth_err)?;
        let attachment = VethAttachment {
            host,
            peer: peer_name.to_owned(),
            lease,
            nl: Arc::clone(&self.nl),
        };
        // On error the attachment's Drop removes the pair.
        configure_peer(target, peer_name, &attachment.lease)?;
        Ok(attachment)
    }

    /// [`Workbench::attach_veth`] for the namespace of process `pid`.
    pub fn attach_veth_pid(
        &self,
        pid: i32,
        peer_name: &str,
    ) -> Result<VethAttachment, WorkbenchError> {
        let fd = netns::open_pid(pid).map_err(WorkbenchError::Target)?;
        self.attach_veth(fd.as_fd(), peer_name)
    }

    /// Creates a TAP on the bridge for a microVM and leases the guest's
    /// address; `name` defaults to `it<N>`. The TAP's fd is the handle: see
    /// [`crate::tap`] for why it is not persistent.
    pub fn create_tap(&self, name: Option<&str>, vnet_hdr: bool) -> Result<Tap, WorkbenchError> {
        let lease = self.pool.lease()?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => format!("it{}", self.next_if.fetch_add(1, Ordering::Relaxed)),
        };
        Ok(Tap::attach(
            self.ns_fd(),
            Arc::clone(&self.nl),
            self.bridge_index,
            &name,
            vnet_hdr,
            lease,
        )?)
    }

    /// Removes the namespace (and so every interface in it) and the lock,
    /// reporting errors that `Drop` can only print.
    pub fn destroy(mut self) -> Result<(), WorkbenchError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), WorkbenchError> {
        let result = match self.ns.take() {
            Some(ns) => ns.remove().map_err(WorkbenchError::Teardown),
            None => Ok(()),
        };
        if let Some(lock) = self.lock.take() {
            release_lock(lock);
        }
        result
    }
}

impl Drop for Workbench {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            eprintln!("warning: {err}");
        }
    }
}

/// A container's veth attachment; dropping it deletes the pair (both ends)
/// and releases the address.
#[derive(Debug)]
pub struct VethAttachment {
    host: String,
    peer: String,
    lease: Lease,
    nl: Arc<Mutex<Netlink>>,
}

impl VethAttachment {
    /// Name of the end on the bridge.
    pub fn host_name(&self) -> &str {
        &self.host
    }

    /// Name of the end inside the instance.
    pub fn peer_name(&self) -> &str {
        &self.peer
    }

    /// The instance's address lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The instance's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.lease.addr()
    }
}

impl Drop for VethAttachment {
    fn drop(&mut self) {
        let mut nl = self.nl.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = nl.delete_link_named(&self.host) {
            // ENODEV: the instance's namespace died and took the pair along.
            if err.errno() != Some(libc::ENODEV) {
                eprintln!("warning: could not delete veth {}: {err}", self.host);
            }
        }
    }
}

fn validate(config: &WorkbenchConfig) -> Result<(), WorkbenchError> {
    if !tap::valid_ifname(&config.name) {
        return Err(WorkbenchError::Name {
            what: "namespace",
            name: config.name.clone(),
        });
    }
    if !tap::valid_ifname(&config.bridge) {
        return Err(WorkbenchError::Name {
            what: "bridge",
            name: config.bridge.clone(),
        });
    }
    // Re-check: a Subnet built by hand is already valid, but keep the rule
    // in one place.
    Subnet::new(config.subnet.network(), config.subnet.prefix())?;
    Ok(())
}

impl WorkbenchConfig {
    /// A workbench only this process uses (`isolab<pid>`, bridge
    /// `isobr<pid>`; the n-th after the first in one process gets `n<n>`
    /// appended), so runs that create one for their own lifetime (`bench
    /// compare`, the demos) never wait for each other. The subnet is the
    /// default one: it exists only inside each workbench's namespace.
    pub fn per_process() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let suffix = match NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => String::new(),
            n => format!("n{n}"),
        };
        WorkbenchConfig {
            name: format!("isolab{pid}{suffix}"),
            bridge: format!("isobr{pid}{suffix}"),
            ..WorkbenchConfig::default()
        }
    }
}

/// Whether `name` is a workbench's namespace name: `isolab` and digits,
/// optionally `n` and digits (the default `isolab0`, or a
/// [`WorkbenchConfig::per_process`] one).
pub fn is_workbench_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("isolab")
        .is_some_and(|rest| match rest.split_once('n') {
            Some((pid, n)) => digits(pid) && digits(n),
            None => digits(rest),
        })
}

/// [`remove_stale`] for every workbench namespace under `defaults.run_dir`
/// ([`is_workbench_name`]), with `defaults`' lock directory; then every
/// workbench lock file nobody holds (a run killed before it made its
/// namespace, or before it gave the lock back, leaves one). Returns how
/// many namespaces and lock files were removed.
pub fn remove_stale_all(defaults: &WorkbenchConfig) -> Result<usize, WorkbenchError> {
    let with_name = |name: String| WorkbenchConfig {
        name,
        ..defaults.clone()
    };
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(&defaults.run_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_workbench_name(&name) {
                removed += usize::from(remove_stale(&with_name(name))?);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(&defaults.lock_dir) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file
                .strip_prefix("net-")
                .and_then(|f| f.strip_suffix(".lock"))
                .filter(|n| is_workbench_name(n))
            else {
                continue;
            };
            if let Some(lock) = take_unheld(&with_name(name.to_owned()))? {
                release_lock(lock);
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Removes the workbench namespace a killed run left behind, if nobody
/// holds its lock (a live workbench is left alone). Called at every start,
/// so a stale `/run/netns/<name>` never outlives the next run of any kind.
/// Returns whether one was removed.
pub fn remove_stale(config: &WorkbenchConfig) -> Result<bool, WorkbenchError> {
    let ns_path = config.run_dir.join(&config.name);
    if fs::symlink_metadata(&ns_path).is_err() {
        return Ok(false);
    }
    let Some(lock) = take_unheld(config)? else {
        return Ok(false);
    };
    let removed = netns::remove_name(&ns_path).map_err(WorkbenchError::Stale);
    release_lock(lock);
    removed
}

/// The lock when nobody holds it (what a dead run left); `None` while a
/// live workbench does.
fn take_unheld(config: &WorkbenchConfig) -> Result<Option<(Flock<File>, PathBuf)>, WorkbenchError> {
    match take_lock(config) {
        Ok(lock) => Ok(Some(lock)),
        Err(WorkbenchError::InUse { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn lock_path(config: &WorkbenchConfig) -> PathBuf {
    config.lock_dir.join(format!("net-{}.lock", config.name))
}

fn take_lock(config: &WorkbenchConfig) -> Result<(Flock<File>, PathBuf), WorkbenchError> {
    let path = lock_path(config);
    let lock_err = |source| WorkbenchError::Lock {
        path: path.clone(),
        source,
    };
    // Another workbench may remove the (then empty) directory between our
    // mkdir and open, or unlink the file between our open and our lock
    // (it gave the lock back); try again a few times.
    let mut attempt = 0;
    loop {
        fs::create_dir_all(&config.lock_dir).map_err(lock_err)?;
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => {
                attempt += 1;
                continue;
            }
            Err(e) => return Err(lock_err(e)),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // A lock on a file no longer named `path` guards nothing.
            Ok(lock) if !still_named(&lock, &path) && attempt < 5 => attempt += 1,
            Ok(lock) => return Ok((lock, path)),
            Err((_, nix::Error::EWOULDBLOCK)) => {
                return Err(WorkbenchError::InUse {
                    name: config.name.clone(),
                    bridge: config.bridge.clone(),
                    lock: path,
                })
            }
            Err((_, errno)) => return Err(lock_err(io::Error::from(errno))),
        }
    }
}

/// Whether `path` still names the file `lock` holds.
fn still_named(lock: &Flock<File>, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (lock.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(named)) => (held.dev(), held.ino()) == (named.dev(), named.ino()),
        _ => false,
    }
}

fn release_lock((lock, path): (Flock<File>, PathBuf)) {
    // Unlink while still holding the lock so no one locks a file that is
    // about to vanish; then drop (unlock and close), then try to remove the
    // directory, which fails harmlessly when others still use it.
    let _ = fs::remove_file(&path);
    drop(lock);
    if let Some(dir) = path.parent() {
        let _ = fs::remove_dir(dir);
    }
}

fn check_subnet_free(subnet: &Subnet) -> Result<(), WorkbenchError> {
    let mut nl = Netlink::open().map_err(WorkbenchError::AddressScan)?;
    let addresses = nl.addresses().map_err(WorkbenchError::AddressScan)?;
    // Only an address inside the subnet counts: a wider host route (a
    // cloud's 10.0.0.0/8) never sees traffic that stays in the namespace.
    match addresses.iter().find(|a| subnet.contains(a.addr)) {
        Some(a) => Err(WorkbenchError::AddressRangeInUse {
            subnet: *subnet,
            addr: a.addr,
            index: a.index,
        }),
        None => Ok(()),
    }
}

fn setup_inside(
    ns: &NamedNetns,
    config: &WorkbenchConfig,
) -> Result<(Netlink, u32), WorkbenchError> {
    let mut nl = Netlink::open_in(ns.as_fd()).map_err(WorkbenchError::Netlink)?;
    loopback_up(&mut nl).map_err(WorkbenchError::Loopback)?;
    let gateway = config.subnet.gateway();
    let prefix = config.subnet.prefix();
    let bridge_err = |source| WorkbenchError::Bridge {
        name: config.bridge.clone(),
        addr: gateway,
        prefix,
        source,
    };
    nl.add_bridge(&config.bridge).map_err(bridge_err)?;
    let index = nl
        .link(&config.bridge)
        .map_err(bridge_err)?
        .map(|l| l.index)
        .ok_or_else(|| {
            bridge_err(NetlinkError::Refused {
                op: "find new bridge",
                target: config.bridge.clone(),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })
        })?;
    nl.add_address(index, gateway, prefix).map_err(bridge_err)?;
    nl.set_up(index, None).map_err(bridge_err)?;
    Ok((nl, index))
}

fn loopback_up(nl: &mut Netlink) -> Result<(), NetlinkError> {
    // Our container's namespace comes with `lo` up already; a peer's may not.
    if let Some(lo) = nl.link("lo")?.filter(|lo| !lo.up) {
        nl.set_up(lo.index, None)?;
    }
    Ok(())
}

fn configure_peer(target: BorrowedFd<'_>, peer: &str, lease: &Lease) -> Result<(), WorkbenchError> {
    let err = |step: &'static str| {
        let peer = peer.to_owned();
        move |source| WorkbenchError::Peer { peer, step, source }
    };
    let mut nl = Netlink::open_in(target).map_err(err("open netlink"))?;
    loopback_up(&mut nl).map_err(err("lo up"))?;
    let index = nl
        .link(peer)
        .map_err(err("find interface"))?
        .map(|l| l.index)
        .ok_or_else(|| {
            err("find interface")(NetlinkError::Refused {
                op: "find peer",
                target: peer.to_owned(),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })
        })?;
    nl.configure_interface(index, lease.addr(), lease.prefix(), lease.gateway())
        .map_err(err("address, up, default route"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = WorkbenchConfig::default();
        assert_eq!((c.name.as_str(), c.bridge.as_str()), ("isolab0", "isobr0"));
        assert_eq!(c.subnet.to_string(), "10.203.0.0/24");
        assert_eq!(c.subnet.gateway(), Ipv4Addr::new(10, 203, 0, 1));
        assert_eq!(lock_path(&c), PathBuf::from("/run/isolab/net-isolab0.lock"));
        assert!(validate(&c).is_ok());
    }

    #[test]
    fn a_stale_name_is_removed_only_when_nobody_holds_the_lock() {
        // umount2 on the name needs root.
        let test = "a_stale_name_is_removed_only_when_nobody_holds_the_lock";
        if !isolab_testkit::require(test, isolab_testkit::missing_root()) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let c = WorkbenchConfig {
            name: "stale0".into(),
            run_dir: d.path().join("netns"),
            lock_dir: d.path().join("locks"),
            ..WorkbenchConfig::default()
        };
        assert!(!remove_stale(&c).unwrap(), "nothing there");
        fs::create_dir_all(&c.run_dir).unwrap();
        let ns = c.run_dir.join("stale0");
        // A name that is not a mount point: what a run killed between
        // creating and bind-mounting it leaves.
        fs::write(&ns, "").unwrap();
        let held = take_lock(&c).unwrap();
        assert!(!remove_stale(&c).unwrap(), "a live owner holds the lock");
        assert!(ns.exists());
        release_lock(held);
        assert!(remove_stale(&c).unwrap());
        assert!(!ns.exists());
        assert!(!lock_path(&c).exists(), "the lock file is given back");
    }

    #[test]
    fn the_sweep_removes_lock_files_nobody_holds_and_only_those() {
        let d = tempfile::tempdir().unwrap();
        let defaults = WorkbenchConfig {
            run_dir: d.path().join("netns"),
            lock_dir: d.path().join("locks"),
            ..WorkbenchConfig::default()
        };
        let named = |name: &str| WorkbenchConfig {
            name: name.into(),
            ..defaults.clone()
        };
        // What a run killed before it made its namespace leaves: a lock
        // file nobody holds.
        fs::create_dir_all(&defaults.lock_dir).unwrap();
        let dead = lock_path(&named("isolab4242"));
        fs::write(&dead, "").unwrap();
        let other = defaults.lock_dir.join("net-notours.lock");
        fs::write(&other, "").unwrap();
        let live = take_lock(&named("isolab7n1")).unwrap();
        assert_eq!(remove_stale_all(&defaults).unwrap(), 1);
        assert!(!dead.exists(), "the dead run's lock file is removed");
        assert!(other.exists(), "a file that is not a workbench's stays");
        assert!(lock_path(&named("isolab7n1")).exists(), "a held lock stays");
        release_lock(live);
    }

    #[test]
    fn a_lock_on_a_file_given_back_is_seen_to_guard_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = WorkbenchConfig {
            lock_dir: d.path().join("locks"),
            ..WorkbenchConfig::default()
        };
        let first = take_lock(&c).unwrap();
        // Another opener got the old file before it was given back.
        let old = File::open(lock_path(&c)).unwrap();
        release_lock(first);
        let stale = Flock::lock(old, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(
            !still_named(&stale, &lock_path(&c)),
            "that lock guards nothing"
        );
        let (held, path) = take_lock(&c).unwrap();
        assert!(still_named(&held, &path), "take_lock holds the named file");
        release_lock((held, path));
    }

    #[test]
    fn per_process_workbenches_have_valid_names_the_sweep_recognises() {
        let (a, b) = (
            WorkbenchConfig::per_process(),
            WorkbenchConfig::per_process(),
        );
        assert_ne!(a.name, b.name);
        assert_ne!(a.bridge, b.bridge);
        for c in [&a, &b] {
            validate(c).unwrap();
            assert!(is_workbench_name(&c.name), "{}", c.name);
        }
        assert!(is_workbench_name("isolab0"));
        assert!(is_workbench_name("isolab1234n7"));
        for other in [
            "isolab",
            "isolabx",
            "isolab1a",
            "docker0",
            "isolab-1",
            "isolab12n",
            "isolabn3",
        ] {
            assert!(!is_workbench_name(other), "{other}");
        }
    }

    #[test]
    fn bad_names_are_refused_before_touching_anything() {
        let c = WorkbenchConfig {
            bridge: "a-bridge-name-too-long".into(),
            ..WorkbenchConfig::default()
        };
        let err = validate(&c).unwrap_err();
        assert!(err.to_string().contains("bridge name"), "{err}");
        let c = WorkbenchConfig {
            name: "a/b".into(),
            ..WorkbenchConfig::default()
        };
        assert!(matches!(validate(&c), Err(WorkbenchError::Name { .. })));
    }

    #[test]
    fn host_problems_are_told_apart_from_usage_problems() {
        assert!(WorkbenchError::Tap(TapError::NoTunDevice).is_host());
        assert!(WorkbenchError::Namespace(NetnsError::Unshare(nix::Error::EPERM)).is_host());
        let unsupported = NetlinkError::Refused {
            op: "create bridge",
            target: "isobr0".into(),
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        assert!(WorkbenchError::Bridge {
            name: "isobr0".into(),
            addr: Ipv4Addr::new(10, 203, 0, 1),
            prefix: 24,
            source: unsupported,
        }
        .is_host());
        let exhausted = AddrError::Exhausted {
            subnet: "10.203.0.0/29".parse().unwrap(),
            capacity: 5,
        };
        assert!(!WorkbenchError::Address(exhausted).is_host());
        assert!(!WorkbenchError::InUse {
            name: "isolab0".into(),
            bridge: "isobr0".into(),
            lock: PathBuf::from("/run/isolab/net-isolab0.lock"),
        }
        .is_host());
    }
}
