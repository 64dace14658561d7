//! The microVM column: the workload in a guest with its own kernel, through
//! `bench vm run --json` (natively, or inside the emulated host with
//! `--host emulated`). The guest's stdout comes back over the marker port
//! (docs/contracts.md, port 0x3f2) in the report's `workload_output`.
//!
//! In the emulated host, `bench vm run --json` itself runs inside the
//! emulated hardware-virtualisation host through `isolab-emuhost` (one boot
//! of it per job; it is prepared once per runner and cached on disk), and
//! every figure carries [`EMULATED_LABEL`].
//!
//! Natively it runs `bench` as a child in its own process group rather than calling
//! the monitor in-process: the emulated host is a QEMU tree, and a process
//! group is the one handle that is sure to take all of it down on a timeout.
//! When the microVM cannot run, the column says why in one line; a demo
//! never fails because of it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use isolab_emuhost::bench::run_bench_inside;
use isolab_emuhost::{EmulatedHost, HostConfig};
use serde_json::Value;

use super::runner::{last_json_object, tail_lines, DemoMode, Job, ModeRun, ModeRunner, RunRecord};
use super::DemoError;

/// The label every figure from the emulated host carries.
pub const EMULATED_LABEL: &str = isolab_emuhost::EMULATED_HOST_LABEL;

/// Longest one microVM run may take (the emulated host boots in seconds,
/// but everything inside it runs under TCG).
pub const VM_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the microVM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmHost {
    /// This host's `/dev/kvm`.
    Native,
    /// The emulated hardware-virtualisation host (QEMU TCG + nested KVM).
    Emulated,
}

/// Runs jobs in a microVM through `bench vm run`.
#[derive(Debug, Clone)]
pub struct MicrovmRunner {
    /// The `bench` binary.
    pub bench: PathBuf,
    pub host: VmHost,
    /// Filesystem root for the host-kind check (`/` outside tests).
    pub root: PathBuf,
    /// The emulated host, prepared on first use (or why it cannot be).
    emulated: OnceLock<Result<EmulatedHost, String>>,
}

impl MicrovmRunner {
    pub fn new(bench: impl Into<PathBuf>, host: VmHost) -> Self {
        Self {
            bench: bench.into(),
            host,
            root: PathBuf::from("/"),
            emulated: OnceLock::new(),
        }
    }

    /// `bench vm run` arguments for a job.
    pub fn argv(&self, job: &Job) -> Vec<String> {
        let mut v: Vec<String> = vec!["vm".into(), "run".into(), "--json".into()];
        v.extend(["--workload".into(), job.workload.clone()]);
        if let Some(m) = job.vm_memory_mib {
            v.extend(["--memory".into(), format!("{m}M")]);
        }
        if let Some(n) = job.vm_vcpus {
            v.extend(["--vcpus".into(), n.to_string()]);
        }
        if self.host == VmHost::Emulated {
            // Observed here: without the guest console the nested guest was
            // reset before its init ran; with it, it boots. The console goes
            // to the emulated host's output, ahead of the JSON report.
            v.push("--console".into());
        }
        if !job.args.is_empty() {
            v.push("--".into());
            v.extend(job.args.iter().cloned());
        }
        v
    }

    /// Why the microVM cannot run natively here, if it cannot.
    pub fn native_refusal(root: &Path) -> Option<String> {
        isolab_microvm::host::detect(root)
            .refusal()
            .map(str::to_owned)
    }
}

impl ModeRunner for MicrovmRunner {
    fn mode(&self) -> DemoMode {
        DemoMode::Microvm
    }

    fn run(&self, job: &Job) -> Result<ModeRun, DemoError> {
        if self.host == VmHost::Emulated {
            return self.run_emulated(job);
        }
        if self.host == VmHost::Native {
            if let Some(why) = Self::native_refusal(&self.root) {
                return Ok(ModeRun::Unavailable { reason: why });
            }
        }
        if !self.bench.exists() {
            return Ok(ModeRun::Unavailable {
                reason: format!(
                    "{} not found: build it with `cargo build -p isolab-cli`",
                    self.bench.display()
                ),
            });
        }
        let mut child = Command::new(&self.bench)
            .args(self.argv(job))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| DemoError::Spawn {
                what: "bench vm run".into(),
                source,
            })?;
        let pgid = child.id() as libc::pid_t;
        let read = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = read(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let err = read(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + VM_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() > deadline || crate::interrupted() => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(DemoError::Wait {
                        what: "bench vm run".into(),
                        source,
                    })
                }
            }
        };
        // Whatever is left of the tree (QEMU, the monitor) goes with the group.
        kill_group(pgid);
        if status.is_none() {
            let _ = child.wait();
        }
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        let Some(status) = status else {
            if crate::interrupted() {
                return Err(DemoError::Interrupted);
            }
            return Ok(ModeRun::Unavailable {
                reason: format!(
                    "the microVM did not finish within {} s and was stopped",
                    VM_TIMEOUT.as_secs()
                ),
            });
        };
        let label = (self.host == VmHost::Emulated).then(|| EMULATED_LABEL.to_owned());
        Ok(record_from(status.code(), &out, &err, label))
    }
}

impl MicrovmRunner {
    /// `bench vm run --json` inside the emulated host; its console lines
    /// carry the report.
    fn run_emulated(&self, job: &Job) -> Result<ModeRun, DemoError> {
        let prepared = self.emulated.get_or_init(|| {
            let config = HostConfig {
                timeout_s: VM_TIMEOUT.as_secs(),
                ..HostConfig::default()
            };
            EmulatedHost::prepare(config).map_err(|e| chain(&e))
        });
        let mut host = match prepared {
            Ok(h) => h.clone(),
            Err(why) => {
                return Ok(ModeRun::Unavailable {
                    reason: format!("the emulated host cannot start: {why}"),
                })
            }
        };
        // Ctrl-C reaches this process only; pass it on to the QEMU run.
        let cancel = Arc::new(AtomicBool::new(false));
        host.set_cancel_flag(cancel.clone());
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (cancel, done) = (cancel.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if crate::interrupted() {
                        cancel.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let mut lines: Vec<String> = Vec::new();
        let outcome = run_bench_inside(&host, &self.argv(job), &mut |l| {
            lines.push(l.rsplit('\r').next().unwrap_or(l).to_owned())
        });
        done.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        if crate::interrupted() {
            return Err(DemoError::Interrupted);
        }
        let text = lines.join("\n");
        Ok(match outcome {
            Ok(o) => record_from(
                Some(o.status),
                &text,
                &text,
                Some(EMULATED_LABEL.to_owned()),
            ),
            Err(e) => ModeRun::Unavailable {
                reason: format!("the emulated host failed: {}", chain(&e)),
            },
        })
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

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill takes plain integers; a negative pid names the process
    // group this runner created for the child, and nothing else.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Turns `bench vm run --json`'s output into a record, or into the one-line
/// reason the VM could not run.
pub fn record_from(
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
    label: Option<String>,
) -> ModeRun {
    let error_line = || {
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .or(lines.last().copied())
            .map(str::to_owned)
    };
    let Some(report) = last_json_object(stdout).filter(|r| r.get("workload_output").is_some())
    else {
        let why = error_line()
            .unwrap_or_else(|| format!("bench vm run ended with status {code:?} and no report"));
        return ModeRun::Unavailable { reason: why };
    };
    if report["exit_status"].is_null() {
        // The guest never reported the workload's end: say why, in one line.
        let stop = report["stop_reason"].as_str().unwrap_or("unknown reason");
        return ModeRun::Unavailable {
            reason: error_line().unwrap_or_else(|| {
                format!("the guest stopped ({stop}) before the workload reported its exit status")
            }),
        };
    }
    let output = report["workload_output"].as_str().unwrap_or_default();
    let status = report["exit_status"].as_i64().map(|s| s as i32).or(code);
    let rss = report
        .pointer("/memory_at_end/total_rss_kib")
        .and_then(Value::as_u64);
    ModeRun::Ran(Box::new(RunRecord {
        status,
        result: last_json_object(output),
        host_peak_rss_kib: rss,
        stderr_tail: tail_lines(stderr, 20),
        label,
        vm_report: Some(report),
        ..RunRecord::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_carries_limits_host_and_workload_args() {
        let r = MicrovmRunner::new("/x/bench", VmHost::Emulated);
        let mut job = Job::new("hog", &["--max-mib", "512"]);
        job.vm_memory_mib = Some(128);
        assert_eq!(
            r.argv(&job).join(" "),
            "vm run --json --workload hog --memory 128M --console -- --max-mib 512"
        );
    }

    #[test]
    fn a_report_gives_the_guest_result() {
        let out = r#"{"exit_status":0,"workload_output":"{\"workload\":\"probe\",\"ok\":true,\"pid\":1}\n","memory_at_end":{"total_rss_kib":9000}}"#;
        let run = record_from(Some(0), out, "", Some(EMULATED_LABEL.into()));
        let r = run.record().unwrap();
        assert_eq!(r.status, Some(0));
        assert_eq!(r.fact("pid"), Some(&Value::from(1)));
        assert_eq!(r.host_peak_rss_kib, Some(9000));
        assert_eq!(r.label.as_deref(), Some(EMULATED_LABEL));
    }

    #[test]
    fn no_report_gives_the_last_error_line() {
        let run = record_from(
            Some(3),
            "",
            "noise\nerror: /dev/kvm here is PVM\nemuhost: status 3\n",
            None,
        );
        match run {
            ModeRun::Unavailable { reason } => assert_eq!(reason, "/dev/kvm here is PVM"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_guest_that_never_reported_is_explained() {
        let out = r#"{"stop_reason":"guest_reset","exit_status":null,"workload_output":""}"#;
        match record_from(Some(1), out, "", None) {
            ModeRun::Unavailable { reason } => assert_eq!(
                reason,
                "the guest stopped (guest_reset) before the workload reported its exit status"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pvm_hosts_are_refused_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/kvm"), "").unwrap();
        std::fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).unwrap();
        let why = MicrovmRunner::native_refusal(d.path()).unwrap();
        assert!(why.contains("PVM"), "{why}");
        assert!(!why.contains('\n'));
    }
}
