//! Host kernel attack surface by ftrace: the number of distinct host kernel
//! functions executed on behalf of an instance during a fixed load, the
//! Horizontal Attack Profile method of IBM's nabla-measurements (function
//! tracer, `set_ftrace_pid` over the instance's host threads).
//!
//! tracefs knobs are host settings, so this runs **only where the kernel is
//! our own**: inside the emulated host, whose init exports
//! `ISOLAB_EMULATED_HOST=1` (crates/emuhost). Anywhere else the result is
//! [`NotMeasured::HostKernel`] and nothing is read or written. Where it
//! runs, it works in a tracing instance of its own
//! (`instances/isolab-hap-<pid>-<n>`), never the top-level buffer, and
//! removes it afterwards (and unmounts tracefs if it mounted it).
//!
//! Sequence: [`HapSession::start`] (1) checks the kernel is ours, (2)
//! mounts tracefs if needed, (3) creates the instance, (4) sizes its
//! buffer, sets `function-fork` (children and new threads of traced tasks
//! are traced too) and `set_ftrace_pid`, (5) selects the `function` tracer
//! and starts a reader of `trace_pipe` that collects distinct function
//! names as they come (so a long load does not overflow the buffer);
//! [`HapSession::finish`] (6) stops tracing, drains the pipe, (7) reads the
//! lost-event counters and (8) removes the instance.
//!
//! Limits, as in the original method: functions run in interrupt context
//! while a traced task is current are attributed to it, and work a traced
//! task causes in other threads (kworkers, softirq on another CPU) is not.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The variable the emulated host's init exports (crates/emuhost).
pub const EMULATED_HOST_ENV: &str = "ISOLAB_EMULATED_HOST";
/// Where tracefs lives.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Ring buffer per CPU of the instance, KiB.
pub const BUFFER_KB: u32 = 8192;
/// Prefix of our tracing instances.
pub const INSTANCE_PREFIX: &str = "isolab-hap-";

/// Why the kernel functions were not measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum NotMeasured {
    /// The kernel is the real host's: its tracefs is never touched.
    HostKernel,
    /// No tracefs mount point (kernel without tracing).
    NoTracefs { path: PathBuf },
    /// tracefs has no function tracer for instances.
    NoFunctionTracer { available: Vec<String> },
    /// No thread to trace.
    NoThreads,
}

impl std::fmt::Display for NotMeasured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HostKernel => write!(
                f,
                "not measured: the host kernel is not ours (tracefs knobs are host settings; run with --host emulated)"
            ),
            Self::NoTracefs { path } => write!(f, "not measured: no tracefs at {}", path.display()),
            Self::NoFunctionTracer { available } => write!(
                f,
                "not measured: no function tracer (available: {})",
                available.join(" ")
            ),
            Self::NoThreads => write!(f, "not measured: no host thread to trace"),
        }
    }
}

/// Failures while measuring where measuring is allowed.
#[derive(Debug, thiserror::Error)]
pub enum HapError {
    /// tracefs could not be mounted.
    #[error("Cannot mount tracefs at {path:?}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The tracing instance could not be created.
    #[error("Cannot create the tracing instance {path:?}")]
    CreateInstance {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A knob of our instance could not be written.
    #[error("Cannot write {value:?} to {path:?}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// `trace_pipe` could not be opened or read.
    #[error("Cannot read {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The instance could not be removed.
    #[error("Cannot remove the tracing instance {path:?}")]
    RemoveInstance {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one measurement found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFunctions {
    /// Distinct kernel functions entered by the traced threads.
    pub distinct: usize,
    /// Their names, sorted.
    pub functions: Vec<String>,
    /// Function entries read.
    pub entries: u64,
    /// Entries the ring buffer dropped (overrun + `LOST` markers): when not
    /// zero, `distinct` is a lower bound.
    pub lost_events: u64,
    /// Threads given to `set_ftrace_pid`.
    pub threads: Vec<u32>,
}

/// The outcome, as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HapOutcome {
    Measured(KernelFunctions),
    NotMeasured(NotMeasured),
}

/// Where to look and whether the kernel is ours.
#[derive(Debug, Clone)]
pub struct HapConfig {
    pub tracefs: PathBuf,
    /// True only inside a kernel of our own (the emulated host).
    pub own_kernel: bool,
    pub buffer_kb: u32,
}

impl HapConfig {
    /// `/sys/kernel/tracing`; own kernel when `ISOLAB_EMULATED_HOST=1`.
    pub fn detect() -> Self {
        Self {
            tracefs: PathBuf::from(TRACEFS),
            own_kernel: std::env::var(EMULATED_HOST_ENV).is_ok_and(|v| v == "1"),
            buffer_kb: BUFFER_KB,
        }
    }
}

/// Parses one line of `trace_pipe` of the function tracer: the function
/// name, or `Err(n)` for a `[LOST n EVENTS]` marker, or `Ok(None)`.
pub fn parse_line(line: &str) -> Result<Option<&str>, u64> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if let Some(rest) = line.split("[LOST ").nth(1) {
        return Err(rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0));
    }
    let left = line.split(" <-").next().unwrap_or(line);
    Ok(left.split_whitespace().last().filter(|f| !f.ends_with(':')))
}

fn write(path: PathBuf, value: &str) -> Result<(), HapError> {
    std::fs::write(&path, value).map_err(|source| HapError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

#[derive(Debug, Default)]
struct Collected {
    functions: BTreeSet<String>,
    entries: u64,
    lost: u64,
}

fn collect(path: PathBuf, stop: Arc<AtomicBool>) -> Result<Collected, HapError> {
    let rerr = |source| HapError::Read {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(rerr)?;
    let mut c = Collected::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial = String::new();
    loop {
        match f.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(5)),
            Ok(n) => {
                partial.push_str(&String::from_utf8_lossy(&buf[..n]));
                let end = partial.rfind('\n').map_or(0, |i| i + 1);
                for line in partial[..end].lines() {
                    match parse_line(line) {
                        Ok(Some(func)) => {
                            c.entries += 1;
                            if !c.functions.contains(func) {
                                c.functions.insert(func.to_owned());
                            }
                        }
                        Ok(None) => {}
                        Err(lost) => c.lost += lost,
                    }
                }
                partial.drain(..end);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Empty: done once tracing is off (set before `stop`).
                if stop.load(Ordering::SeqCst) {
                    return Ok(c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(rerr(e)),
        }
    }
}

/// A measurement in progress (see the module docs for its steps).
#[derive(Debug)]
pub struct HapSession {
    instance: PathBuf,
    mounted: Option<PathBuf>,
    threads: Vec<u32>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Result<Collected, HapError>>>,
}

static INSTANCE_SEQ: AtomicU32 = AtomicU32::new(0);

impl HapSession {
    /// Starts tracing `threads` (host tids). `Ok(Err(why))` where the
    /// kernel functions are not measured here; nothing is touched then.
    pub fn start(cfg: &HapConfig, threads: &[u32]) -> Result<Result<Self, NotMeasured>, HapError> {
        // 1. Only our own kernel.
        if !cfg.own_kernel {
            return Ok(Err(NotMeasured::HostKernel));
        }
        if threads.is_empty() {
            return Ok(Err(NotMeasured::NoThreads));
        }
        if !cfg.tracefs.is_dir() {
            return Ok(Err(NotMeasured::NoTracefs {
                path: cfg.tracefs.clone(),
            }));
        }
        // 2. Mount tracefs if it is not (the emulated host's init does not).
        let mut mounted = None;
        if !cfg.tracefs.join("instances").is_dir() {
            nix::mount::mount(
                Some("nodev"),
                &cfg.tracefs,
                Some("tracefs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|source| HapError::Mount {
                path: cfg.tracefs.clone(),
                source,
            })?;
            mounted = Some(cfg.tracefs.clone());
        }
        // 3. Our own instance.
        let instance = cfg.tracefs.join("instances").join(format!(
            "{INSTANCE_PREFIX}{}-{}",
            std::process::id(),
            INSTANCE_SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        if let Err(source) = std::fs::create_dir(&instance) {
            unmount(mounted.as_deref());
            return Err(HapError::CreateInstance {
                path: instance,
                source,
            });
        }
        let mut s = Self {
            instance,
            mounted,
            threads: threads.to_vec(),
            stop: Arc::new(AtomicBool::new(false)),
            reader: None,
        };
        let available =
            std::fs::read_to_string(s.instance.join("available_tracers")).unwrap_or_default();
        let available: Vec<String> = available.split_whitespace().map(str::to_owned).collect();
        if !available.iter().any(|t| t == "function") {
            return Ok(Err(NotMeasured::NoFunctionTracer { available }));
        }
        // 4. Buffer, fork following, pids.
        let i = s.instance.clone();
        write(i.join("tracing_on"), "0")?;
        write(i.join("buffer_size_kb"), &cfg.buffer_kb.to_string())?;
        write(i.join("options/function-fork"), "1")?;
        let pids: Vec<String> = threads.iter().map(u32::to_string).collect();
        write(i.join("set_ftrace_pid"), &pids.join(" "))?;
        // 5. Function tracer on, reader collecting.
        write(i.join("current_tracer"), "function")?;
        let (path, stop) = (i.join("trace_pipe"), Arc::clone(&s.stop));
        s.reader = Some(std::thread::spawn(move || collect(path, stop)));
        write(i.join("tracing_on"), "1")?;
        Ok(Ok(s))
    }

    /// Stops tracing and returns what was collected; the instance is removed.
    pub fn finish(mut self) -> Result<KernelFunctions, HapError> {
        // 6. Stop, then drain.
        write(self.instance.join("tracing_on"), "0")?;
        self.stop.store(true, Ordering::SeqCst);
        let collected = match self.reader.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            Some(Err(_)) | None => Collected::default(),
        };
        // 7. Overruns per CPU.
        let overrun: u64 = std::fs::read_dir(self.instance.join("per_cpu"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path().join("stats")).ok())
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("overrun:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum();
        // 8. Remove the instance (Drop does it again harmlessly).
        self.cleanup()?;
        Ok(KernelFunctions {
            distinct: collected.functions.len(),
            functions: collected.functions.into_iter().collect(),
            entries: collected.entries,
            lost_events: collected.lost + overrun,
            threads: std::mem::take(&mut self.threads),
        })
    }

    /// The instance directory (for tests and logs).
    pub fn instance(&self) -> &Path {
        &self.instance
    }

    fn cleanup(&mut self) -> Result<(), HapError> {
        if self.instance.is_dir() {
            let _ = std::fs::write(self.instance.join("tracing_on"), "0");
            self.stop.store(true, Ordering::SeqCst);
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
            let _ = std::fs::write(self.instance.join("current_tracer"), "nop");
            let _ = std::fs::write(self.instance.join("set_ftrace_pid"), "");
            std::fs::remove_dir(&self.instance).map_err(|source| HapError::RemoveInstance {
                path: self.instance.clone(),
                source,
            })?;
        }
        unmount(self.mounted.take().as_deref());
        Ok(())
    }
}

fn unmount(path: Option<&Path>) {
    if let Some(p) = path {
        let _ = nix::mount::umount(p);
    }
}

impl Drop for HapSession {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_pipe_lines_give_function_names_and_lost_counts() {
        assert_eq!(
            parse_line(
                "        workload-201     [000] .....  1234.567890: tcp_sendmsg <-inet_sendmsg"
            ),
            Ok(Some("tcp_sendmsg"))
        );
        assert_eq!(
            parse_line(" __x64_sys_accept4 <-do_syscall_64"),
            Ok(Some("__x64_sys_accept4"))
        );
        assert_eq!(
            parse_line("skb_release_data.isra.0"),
            Ok(Some("skb_release_data.isra.0"))
        );
        assert_eq!(parse_line("CPU:0 [LOST 1234 EVENTS]"), Err(1234));
        assert_eq!(parse_line("# tracer: function"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
    }

    #[test]
    fn on_a_kernel_not_ours_nothing_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HapConfig {
            tracefs: dir.path().to_path_buf(),
            own_kernel: false,
            buffer_kb: 64,
        };
        let r = HapSession::start(&cfg, &[1]).unwrap();
        assert_eq!(r.unwrap_err(), NotMeasured::HostKernel);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(NotMeasured::HostKernel
            .to_string()
            .starts_with("not measured: the host kernel is not ours"));
        let missing = HapConfig {
            tracefs: dir.path().join("none"),
            own_kernel: true,
            buffer_kb: 64,
        };
        assert!(matches!(
            HapSession::start(&missing, &[1]).unwrap().unwrap_err(),
            NotMeasured::NoTracefs { .. }
        ));
        assert_eq!(
            HapSession::start(&missing, &[]).unwrap().unwrap_err(),
            NotMeasured::NoThreads
        );
    }

    #[test]
    fn the_outcome_serialises_with_its_reason() {
        let j = serde_json::to_string(&HapOutcome::NotMeasured(NotMeasured::HostKernel)).unwrap();
        assert_eq!(j, r#"{"not_measured":{"reason":"host_kernel"}}"#);
    }
}
