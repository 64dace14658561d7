//! The plain-process column: the workload as a child of `bench`, with no
//! namespace and no cgroup of its own. Only the workload's own safety caps
//! (the arguments the catalog gives it) bound what it does.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::runner::{last_json_object, tail_lines, DemoMode, Job, ModeRun, ModeRunner, RunRecord};
use super::DemoError;

/// Longest a demo workload may run as a process before it is killed.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs jobs as plain child processes.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    /// The static `workload` binary.
    pub workload: PathBuf,
}

impl ModeRunner for ProcessRunner {
    fn mode(&self) -> DemoMode {
        DemoMode::Process
    }

    fn run(&self, job: &Job) -> Result<ModeRun, DemoError> {
        let what = format!("workload {} as a process", job.workload);
        let mut child = Command::new(&self.workload)
            .arg(&job.workload)
            .args(&job.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DemoError::Spawn {
                what: what.clone(),
                source,
            })?;
        let pid = child.id() as libc::pid_t;
        let readers = [
            child.stdout.take().map(reader),
            child.stderr.take().map(reader),
        ];
        let waited = wait_with_rusage(pid, PROCESS_TIMEOUT);
        let [out, err] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
        let (status, maxrss_kib, cpu_us) = waited.map_err(|source| DemoError::Wait {
            what: what.clone(),
            source,
        })?;
        let Some(status) = status else {
            if crate::interrupted() {
                return Err(DemoError::Interrupted);
            }
            return Err(DemoError::Timeout {
                what,
                secs: PROCESS_TIMEOUT.as_secs(),
            });
        };
        Ok(ModeRun::Ran(Box::new(RunRecord {
            status: Some(status),
            result: last_json_object(&out),
            host_peak_rss_kib: Some(maxrss_kib),
            cpu_time_us: Some(cpu_us),
            stderr_tail: tail_lines(&err, 20),
            ..RunRecord::default()
        })))
    }
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits for `pid` with `wait4`, so the kernel's peak-RSS figure for exactly
/// that process comes back with its status. Kills it at the deadline and
/// answers `None` for the status then.
fn wait_with_rusage(
    pid: libc::pid_t,
    timeout: Duration,
) -> std::io::Result<(Option<i32>, u64, u64)> {
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid value of a plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if killed { 0 } else { libc::WNOHANG };
        // SAFETY: both out-pointers refer to live locals; `pid` is our own
        // child, not yet reaped (std's Child is never waited on).
        let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if rc == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            let rss = usage.ru_maxrss.max(0) as u64;
            let tv =
                |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64;
            let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
            return Ok(((!killed).then_some(code), rss, cpu));
        }
        if Instant::now() > deadline || crate::interrupted() {
            // SAFETY: kill takes plain integers; `pid` is our unreaped child,
            // so it cannot name another process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
