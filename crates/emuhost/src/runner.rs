//! Booting the emulated host and running one command in it.
//!
//! [`EmulatedHost::prepare`] does the cached, once-per-process work;
//! [`EmulatedHost::run`] boots QEMU for one command:
//! 1. build the payload archive and put base + payload in a sealed-off
//!    memfd (nothing on disk to clean up, even if the caller is killed);
//! 2. spawn QEMU in its own process group with `PR_SET_PDEATHSIG`;
//! 3. read the serial console line by line ([`crate::markers`]), hand the
//!    command's output to the caller; the emulated host's own kernel
//!    messages go to COM2, a log file under the cache
//!    (`emuhost/log/<nonce>.log`), shown only when the run fails;
//! 4. send the console a harmless byte every second ([`kick_serial`]: a
//!    workaround for a lost wake-up in QEMU 7.2's TCG);
//! 5. stop at the exit marker, the deadline, or an interruption; QEMU is
//!    killed and reaped on every path ([`QemuChild`]'s `Drop`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::{cache_root, EmuhostCache};
use crate::image::{dedup_guest_paths, payload, qemu_bundle, BaseImage, FileMap, DEFAULT_MODULES};
use crate::markers::{clean_line, Event, MarkerParser};
use crate::modules::ModuleIndex;
use crate::peers::{peer_bundle, CarriedPeer, PeerRuntime};
use crate::provision::{
    ensure_kernel, require_busybox, require_tool, EmuKernel, QEMU, QEMU_PACKAGE,
};
use crate::EmuhostError;

/// How many console lines an error report keeps.
const TAIL_LINES: usize = 25;
/// How many base images (different busybox/modules/`/init`) the cache keeps.
const BASE_IMAGES_KEPT: usize = 3;
/// The longest allowed run (one day): keeps deadline arithmetic in range.
const MAX_TIMEOUT_S: u64 = 86_400;
/// After the exit marker, how long QEMU gets to power off by itself.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// How many kernel logs of past runs the cache keeps.
const KERNEL_LOGS_KEPT: usize = 10;
/// How many lines of the kernel log a failure shows.
const KERNEL_LOG_TAIL: usize = 40;

/// The emulated host's machine and what goes into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Guest RAM in MiB (default 2048: room for inner VMs and containers).
    pub memory_mib: u32,
    /// Virtual CPUs (default 1: under TCG on a small shared host a second
    /// vCPU slows the boot; inner guests may still have 2 vCPUs).
    pub smp: u32,
    /// Whole-run limit in seconds, boot included (default 600).
    pub timeout_s: u64,
    /// Modules to load, dependencies added (default [`DEFAULT_MODULES`]).
    pub modules: Vec<String>,
    /// Put the host's QEMU (libraries, firmware) inside, as a reference
    /// peer for the microVM (default false).
    pub include_qemu: bool,
    /// Container runtimes to put inside, on `PATH` (`/usr/local/bin`), with
    /// their libraries: the peers of `bench compare --host emulated`
    /// ([`crate::peers::runtimes_for`]); default none. A requested runtime
    /// missing here is an error naming its package (installed with apt when
    /// `allow_install`).
    pub peers: Vec<PeerRuntime>,
    /// Install missing Debian packages with apt (default false: say what
    /// to install instead).
    pub allow_install: bool,
    /// Ask apt for the newest cloud kernel even when one is cached.
    pub refresh_kernel: bool,
    /// Extra kernel command-line words for the emulated host.
    pub extra_append: Vec<String>,
    /// Cache root (default: `$ISOLAB_CACHE`, `$XDG_CACHE_HOME/isolab`,
    /// `$HOME/.cache/isolab`).
    pub cache_root: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_mib: 2048,
            smp: 1,
            timeout_s: 600,
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            include_qemu: false,
            peers: Vec::new(),
            allow_install: false,
            refresh_kernel: false,
            extra_append: Vec::new(),
            cache_root: None,
        }
    }
}

impl HostConfig {
    /// Checks the values a user can get wrong.
    pub fn validate(&self) -> Result<(), RunError> {
        let bad = |field: &'static str, why: String| Err(RunError::Config { field, why });
        if !(256..=65536).contains(&self.memory_mib) {
            return bad(
                "memory",
                format!("{} MiB is outside 256 MiB..64 GiB", self.memory_mib),
            );
        }
        if !(1..=16).contains(&self.smp) {
            return bad("smp", format!("{} is outside 1..16", self.smp));
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return bad(
                "timeout",
                format!("{} s is outside 1..{MAX_TIMEOUT_S} s", self.timeout_s),
            );
        }
        for word in &self.extra_append {
            if word.contains(char::is_whitespace) || word.contains('"') {
                return bad(
                    "append",
                    format!("{word:?} must be one word without quotes"),
                );
            }
        }
        Ok(())
    }
}

/// Errors of one boot.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configuration value is out of range.
    #[error("Invalid {field}: {why}")]
    Config { field: &'static str, why: String },
    /// No command was given.
    #[error("No command to run in the emulated host")]
    NoCommand,
    /// The in-memory initrd could not be created or filled.
    #[error("Cannot create the in-memory initramfs")]
    Initrd(#[source] io::Error),
    /// The kernel log directory could not be created.
    #[error("Cannot create the kernel log directory {path:?}")]
    KernelLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// QEMU did not start.
    #[error("Cannot start {qemu:?}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Waiting for QEMU failed.
    #[error("Cannot wait for QEMU")]
    Wait(#[source] io::Error),
    /// The deadline passed; QEMU was killed.
    #[error(
        "The emulated host did not finish within {secs} s; QEMU was killed. Last output:\n{tail}"
    )]
    Timeout { secs: u64, tail: String },
    /// The caller was interrupted; QEMU was killed.
    #[error("Interrupted; QEMU was killed")]
    Interrupted,
    /// QEMU ended without the result marker (kernel panic, QEMU error).
    #[error("QEMU exited ({status}) before the command reported its status. Last output:\n{tail}")]
    NoResult { status: String, tail: String },
}

/// One command to run inside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// Program and arguments (run by `sh`, so a program on `PATH` works).
    pub command: Vec<String>,
    /// Environment variables to export for the command.
    pub env: Vec<(String, String)>,
    /// Host files or trees to copy in.
    pub files: Vec<FileMap>,
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The command's exit status (128+N for signal N).
    pub status: i32,
    /// From spawning QEMU to the command starting (cached artifacts: the
    /// emulated host's start-up cost).
    pub to_command: Option<Duration>,
    /// From spawning QEMU to its exit.
    pub elapsed: Duration,
    /// The emulated host's kernel messages from the command's start on
    /// (kept out of the command's output; shown by `run` only when the
    /// command fails).
    pub kernel_log: PathBuf,
}

/// A prepared emulated host: kernel, tools and base image in the cache.
#[derive(Debug, Clone)]
pub struct EmulatedHost {
    config: HostConfig,
    kernel: EmuKernel,
    qemu: PathBuf,
    base_cpio: PathBuf,
    log_dir: PathBuf,
    modules: Vec<String>,
    bundle: Vec<FileMap>,
    peers: Vec<CarriedPeer>,
    cancel: Option<Arc<AtomicBool>>,
}

impl EmulatedHost {
    /// Validates, checks tools, provisions the kernel and the base image
    /// (cached), and, if asked, collects the QEMU bundle and the peer
    /// runtimes.
    pub fn prepare(config: HostConfig) -> Result<Self, EmuhostError> {
        config.validate()?;
        let qemu = require_tool(QEMU, QEMU_PACKAGE, config.allow_install)?;
        let busybox = require_busybox(config.allow_install)?;
        let root = match &config.cache_root {
            Some(r) => r.clone(),
            None => cache_root()?,
        };
        let cache = EmuhostCache::new(&root);
        let kernel = ensure_kernel(&cache, config.refresh_kernel)?;
        let index = ModuleIndex::scan(&kernel.modules).map_err(crate::image::ImageError::from)?;
        let wanted: Vec<&str> = config.modules.iter().map(String::as_str).collect();
        let base = BaseImage::gather(&busybox, &index, &wanted)?;
        let base_cpio = cache.base_cpio(&format!("{}-{}", kernel.meta.release, base.key()));
        base.write_cached(&base_cpio)?;
        crate::image::prune_base_images(cache.dir(), BASE_IMAGES_KEPT);
        let mut bundle = if config.include_qemu {
            qemu_bundle(&qemu)?
        } else {
            Vec::new()
        };
        let peers = peer_bundle(&config.peers, config.allow_install)?;
        bundle.extend(peers.files);
        let bundle = dedup_guest_paths(bundle);
        Ok(Self {
            modules: base.module_names().iter().map(|s| s.to_string()).collect(),
            config,
            kernel,
            qemu,
            base_cpio,
            log_dir: cache.log_dir(),
            bundle,
            peers: peers.peers,
            cancel: None,
        })
    }

    /// A flag that, once set, stops the current run (besides the signal
    /// flag of [`crate::interrupt`]).
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The kernel that boots.
    pub fn kernel(&self) -> &EmuKernel {
        &self.kernel
    }

    /// Modules loaded at boot, in order.
    pub fn modules(&self) -> &[String] {
        &self.modules
    }

    /// The peer runtimes carried in ([`HostConfig::peers`]).
    pub fn peers(&self) -> &[CarriedPeer] {
        &self.peers
    }

    /// Bytes every boot's payload carries besides the command's own files
    /// (QEMU bundle, peer runtimes): the size cost of those options.
    pub fn bundle_bytes(&self) -> u64 {
        self.bundle
            .iter()
            .filter_map(|f| std::fs::metadata(&f.host).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The cached base image.
    pub fn base_image(&self) -> &PathBuf {
        &self.base_cpio
    }

    /// The emulated host's kernel command line. Each word:
    /// - `console=ttyS0`: the serial port QEMU connects to our pipe;
    /// - `quiet`: only kernel errors reach the console (they are output);
    /// - `panic=-1`: reboot at once on panic, which `-no-reboot` turns into
    ///   a QEMU exit, so a panic ends the run instead of hanging it;
    /// - `mitigations=off`: speculative-execution workarounds cost much
    ///   under TCG and protect nothing in a throwaway emulated machine;
    /// - `pci=off`: nothing inside needs PCI (the console is the ISA UART,
    ///   there are no disks or NICs), and the bus scan is slow under TCG;
    /// - `nokaslr`, `tsc=reliable`, `no_timer_check`, `cryptomgr.notests`:
    ///   skip boot-time randomisation, clock re-calibration and self-tests
    ///   that cost seconds under TCG and mean nothing in an emulated host;
    /// - `audit=0 apparmor=0 security=none`: no LSM or audit work on every
    ///   syscall; the emulated host runs only our own test commands.
    ///
    /// Together they cut the boot by about 1.5 s here.
    pub fn append(&self) -> String {
        let mut words = vec![
            "console=ttyS0",
            "quiet",
            "panic=-1",
            "mitigations=off",
            "pci=off",
            "nokaslr",
            "tsc=reliable",
            "no_timer_check",
            "cryptomgr.notests",
            "audit=0",
            "apparmor=0",
            "security=none",
        ];
        words.extend(self.config.extra_append.iter().map(String::as_str));
        words.join(" ")
    }

    /// QEMU's arguments for an initrd at `initrd`, with COM2 (where the
    /// emulated host's `/init` sends kernel messages) written to `kernel_log`.
    pub fn qemu_args(&self, initrd: &str, kernel_log: &Path) -> Vec<String> {
        let c = &self.config;
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            // TCG emulates AMD SVM with nested paging: kvm_amd loads inside.
            "-cpu",
            "EPYC-v3,+svm,+npt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "-m".into(),
            c.memory_mib.to_string(),
            "-smp".into(),
            c.smp.to_string(),
        ]);
        args.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-serial",
                "stdio",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend([
            "-serial".into(),
            format!("file:{}", kernel_log.display()),
            "-no-reboot".into(),
        ]);
        args.extend([
            "-kernel".into(),
            self.kernel.vmlinuz.to_string_lossy().into_owned(),
            "-initrd".into(),
            initrd.to_string(),
            "-append".into(),
            self.append(),
        ]);
        args
    }

    /// Fills a memfd with base + payload.
    fn initrd(&self, inv: &Invocation, nonce: &str) -> Result<OwnedFd, EmuhostError> {
        let mut files = self.bundle.clone();
        files.extend(inv.files.iter().cloned());
        let archive = payload(&inv.command, &inv.env, nonce, &files)?;
        let fd = nix::sys::memfd::memfd_create(
            c"isolab-emuhost-initrd",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| RunError::Initrd(e.into()))?;
        let mut file = File::from(fd);
        let mut base = File::open(&self.base_cpio).map_err(RunError::Initrd)?;
        io::copy(&mut base, &mut file).map_err(RunError::Initrd)?;
        // newc archives are 4-byte aligned, so the second one starts on a
        // boundary the kernel's unpacker accepts.
        let mut w = archive
            .write_to(io::BufWriter::new(&file))
            .map_err(crate::image::ImageError::from)?;
        w.flush().map_err(RunError::Initrd)?;
        drop(w);
        Ok(OwnedFd::from(file))
    }

    /// Boots, runs the command, and returns its status. Every line the
    /// command (or `/init`) prints goes to `on_line` as it arrives.
    pub fn run(
        &self,
        inv: &Invocation,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Outcome, EmuhostError> {
        if inv.command.is_empty() {
            return Err(RunError::NoCommand.into());
        }
        let nonce = nonce();
        let memfd = self.initrd(inv, &nonce)?;
        let initrd = format!("/proc/self/fd/{}", memfd.as_raw_fd());
        let kernel_log = self.log_dir.join(format!("{nonce}.log"));
        std::fs::create_dir_all(&self.log_dir).map_err(|source| RunError::KernelLog {
            path: self.log_dir.clone(),
            source,
        })?;
        prune_logs(&self.log_dir, KERNEL_LOGS_KEPT);
        let started = Instant::now();
        let mut qemu = QemuChild::spawn(&self.qemu, &self.qemu_args(&initrd, &kernel_log), &memfd)?;
        drop(memfd);

        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let stdout = qemu.child.stdout.take();
        let reader = thread::spawn(move || {
            let Some(out) = stdout else { return };
            let mut r = BufReader::new(out);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let (stop_kicks, kicks) = mpsc::channel::<()>();
        let kicker = kick_serial(qemu.child.stdin.take(), kicks);
        let stderr = qemu.child.stderr.take();
        let err_reader = thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_string(&mut text);
            }
            text
        });

        let deadline = started + Duration::from_secs(self.config.timeout_s);
        let mut parser = MarkerParser::new(&nonce);
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut to_command = None;
        let mut status = None;
        let result = loop {
            if crate::interrupt::requested()
                || self
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                break Err(RunError::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(RunError::Timeout {
                    secs: self.config.timeout_s,
                    tail: String::new(),
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok(raw) => {
                    let line = clean_line(&raw);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                    match parser.feed(&line) {
                        Event::Noise(_) | Event::Begin => {}
                        Event::Run => to_command = Some(started.elapsed()),
                        Event::Output(l) => on_line(&l),
                        Event::Exit(s) => {
                            status = Some(s);
                            break Ok(());
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            }
        };
        // Past this point QEMU goes away on every path.
        let exit = match (&result, status) {
            (Ok(()), Some(_)) => qemu.wait_or_kill(POWEROFF_GRACE),
            (Ok(()), None) => qemu.wait_or_kill(Duration::from_secs(5)),
            (Err(_), _) => {
                qemu.kill();
                Ok(None)
            }
        };
        drop(stop_kicks);
        let _ = kicker.join();
        drop(rx);
        let _ = reader.join();
        let stderr_text = err_reader.join().unwrap_or_default();
        let tail_text = || {
            let mut lines: Vec<String> = tail.iter().cloned().collect();
            lines.extend(
                log_tail(&kernel_log)
                    .into_iter()
                    .map(|l| format!("kernel: {l}")),
            );
            lines.extend(
                stderr_text
                    .lines()
                    .filter(|l| !l.contains("TCG doesn't support requested feature"))
                    .map(|l| format!("qemu: {l}")),
            );
            lines.join("\n")
        };
        match result {
            Err(RunError::Timeout { secs, .. }) => Err(RunError::Timeout {
                secs,
                tail: tail_text(),
            }
            .into()),
            Err(e) => Err(e.into()),
            Ok(()) => match status {
                Some(status) => {
                    if status != 0 {
                        let lines = log_tail(&kernel_log);
                        if !lines.is_empty() {
                            on_line(&format!(
                                "emulated host kernel log ({}), last {} lines:",
                                kernel_log.display(),
                                lines.len()
                            ));
                            for l in &lines {
                                on_line(&format!("  {l}"));
                            }
                        }
                    }
                    Ok(Outcome {
                        status,
                        to_command,
                        elapsed: started.elapsed(),
                        kernel_log,
                    })
                }
                None => Err(RunError::NoResult {
                    status: match exit {
                        Ok(Some(s)) => s.to_string(),
                        Ok(None) => "killed".into(),
                        Err(e) => e.to_string(),
                    },
                    tail: tail_text(),
                }
                .into()),
            },
        }
    }
}

/// The last [`KERNEL_LOG_TAIL`] lines of a kernel log (none if unreadable).
fn log_tail(path: &Path) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let lines: Vec<String> = text
        .split(|&b| b == b'\n')
        .map(clean_line)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(KERNEL_LOG_TAIL)..].to_vec()
}

/// Keeps the newest `keep - 1` logs in `dir`, making room for one more
/// (best effort: a log that cannot be removed stays).
fn prune_logs(dir: &Path, keep: usize) {
    crate::cache::keep_newest(dir, keep.saturating_sub(1), |n| {
        Path::new(n).extension().is_some_and(|x| x == "log")
    });
}

/// A per-run random token (hex) from the kernel's CSPRNG; the clock and pid
/// if that is unavailable (uniqueness, not secrecy, is what matters).
fn nonce() -> String {
    let mut buf = [0u8; 8];
    let ok = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if ok.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        buf = (t ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// How often the emulated host's console receives [`XON`].
const KICK_INTERVAL: Duration = Duration::from_secs(1);

/// The byte sent: START (Ctrl-Q), which the console's line discipline
/// (`IXON`, the serial default) consumes without echoing it, and which
/// nothing in the emulated host reads.
const XON: u8 = 0x11;

/// Sends [`XON`] to the emulated host's console (QEMU's stdin, COM1) every
/// [`KICK_INTERVAL`] until `stop` is dropped or QEMU's stdin closes.
///
/// A workaround for a lost wake-up in QEMU 7.2's TCG (Debian 12), seen
/// twice in 34 compare runs with nested microVMs here: the emulated
/// host's vCPU halted with interrupts enabled and its local APIC timer's
/// vector pending in the IRR, and nothing woke it; QEMU sat idle until the
/// run's deadline. An NMI did not wake it for good; any interrupt routed
/// through the I/O APIC did (QEMU re-evaluates the APIC's pending vectors
/// then), and the emulated host went on where it stopped. The serial
/// line's receive interrupt is such an interrupt.
fn kick_serial(
    stdin: Option<std::process::ChildStdin>,
    stop: mpsc::Receiver<()>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let Some(mut w) = stdin else { return };
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(KICK_INTERVAL) {
            if w.write_all(&[XON]).is_err() {
                return;
            }
        }
    })
}

/// The QEMU process; killed and reaped when dropped.
#[derive(Debug)]
struct QemuChild {
    child: Child,
    reaped: bool,
}

impl QemuChild {
    fn spawn(qemu: &PathBuf, args: &[String], initrd: &OwnedFd) -> Result<Self, RunError> {
        let fd = initrd.as_raw_fd();
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(qemu);
        cmd.args(args)
            // A pipe, for [`kick_serial`].
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (setpgid, prctl, getppid, fcntl,
        // _exit); it allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || {
                // Own process group: the terminal's Ctrl-C reaches only the
                // caller, which then stops QEMU itself and cleans up.
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // If the caller dies without cleaning up, QEMU dies too.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                // QEMU opens the initrd as /proc/self/fd/<fd>.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| RunError::Spawn {
            qemu: qemu.clone(),
            source,
        })?;
        Ok(Self {
            child,
            reaped: false,
        })
    }

    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// Waits up to `grace` for QEMU to exit by itself, then kills it.
    /// `Ok(None)` means it had to be killed.
    fn wait_or_kill(&mut self, grace: Duration) -> Result<Option<ExitStatus>, RunError> {
        let until = Instant::now() + grace;
        loop {
            match self.child.try_wait().map_err(RunError::Wait)? {
                Some(s) => {
                    self.reaped = true;
                    return Ok(Some(s));
                }
                None if Instant::now() >= until => {
                    self.kill();
                    return Ok(None);
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for QemuChild {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validate_and_bad_values_name_the_field() {
        let c = HostConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.smp, 1);
        let e = HostConfig {
            memory_mib: 64,
            ..HostConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("Invalid memory: 64 MiB"), "{e}");
        let e = HostConfig {
            smp: 0,
            ..HostConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("Invalid smp"), "{e}");
        let e = HostConfig {
            extra_append: vec!["a b".into()],
            ..HostConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("Invalid append"), "{e}");
        let e = HostConfig {
            timeout_s: u64::MAX,
            ..HostConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("Invalid timeout"), "{e}");
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let e = serde_json::from_str::<HostConfig>(r#"{"memory_mib": 512, "cpus": 2}"#);
        assert!(e.is_err());
        let c: HostConfig = serde_json::from_str(r#"{"memory_mib": 512}"#).unwrap();
        assert_eq!((c.memory_mib, c.smp), (512, 1));
    }

    #[test]
    fn qemu_command_line_emulates_svm_and_boots_our_kernel() {
        let host = EmulatedHost {
            config: HostConfig {
                memory_mib: 1024,
                smp: 2,
                extra_append: vec!["loglevel=3".into()],
                ..HostConfig::default()
            },
            kernel: EmuKernel {
                meta: crate::provision::KernelMeta {
                    package: "p".into(),
                    version: "v".into(),
                    release: "r".into(),
                },
                vmlinuz: "/c/vmlinuz".into(),
                modules: "/c/modules".into(),
            },
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            base_cpio: "/c/base.cpio".into(),
            log_dir: "/c/log".into(),
            modules: vec![],
            bundle: vec![],
            peers: vec![],
            cancel: None,
        };
        let a = host
            .qemu_args("/proc/self/fd/7", Path::new("/c/log/n.log"))
            .join(" ");
        assert!(
            a.starts_with("-accel tcg -cpu EPYC-v3,+svm,+npt -m 1024 -smp 2 -nodefaults"),
            "{a}"
        );
        assert!(
            a.contains("-serial stdio -serial file:/c/log/n.log -no-reboot -kernel /c/vmlinuz -initrd /proc/self/fd/7 -append"),
            "{a}"
        );
        assert!(
            a.contains("-append console=ttyS0 quiet panic=-1 mitigations=off pci=off"),
            "{a}"
        );
        assert!(a.ends_with(" security=none loglevel=3"), "{a}");
    }

    #[test]
    fn kernel_logs_are_pruned_to_the_newest_and_tailed() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            crate::cache::write_aged(
                &d.path().join(format!("{i}.log")),
                &format!("<3>[ {i}.0] kvm: Unhandled WRMSR\n"),
                1000 + i,
            );
        }
        std::fs::write(d.path().join("keep.txt"), b"not a log").unwrap();
        prune_logs(d.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["3.log", "4.log", "keep.txt"], "room for one more");
        let many: String = (0..100).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(d.path().join("x.log"), many).unwrap();
        let t = log_tail(&d.path().join("x.log"));
        assert_eq!(t.len(), KERNEL_LOG_TAIL);
        assert_eq!(t.last().unwrap(), "line 99");
        assert!(log_tail(&d.path().join("absent.log")).is_empty());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 16);
    }
}
