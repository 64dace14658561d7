//! The tracer as a separate process: the `isolab-trace` binary of this
//! crate, driven over its stdin/stdout.
//!
//! Why a process of its own: the instances the harness measures are its
//! children, and a tracer thread in the parent's own process would let the
//! parent's `waitpid` see ptrace stops and reap traced children
//! (kernel/exit.c, `wait_consider_task`). A tracer process is never the
//! real parent of what it traces, and its death cannot wedge the caller:
//! the kernel detaches its tracees when it exits.
//!
//! Protocol (one JSON [`TraceMessage`] per line on its stdout):
//! `{"attached": ...}` once every thread is seized, then `{"profile": ...}`
//! after it detached; the caller asks it to stop by closing its stdin
//! (`--stop-on-stdin-eof`) or with SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::profile::{NotTraced, SyscallProfile};

/// One line of the tracer process's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceMessage {
    /// Every thread asked for is seized (or listed as not traced).
    Attached {
        traced: Vec<u32>,
        not_traced: Vec<NotTraced>,
    },
    /// The tracer detached; what it counted.
    Profile(SyscallProfile),
}

/// Failures of driving the tracer process.
#[derive(Debug, thiserror::Error)]
pub enum TracerProcessError {
    /// The binary could not be started.
    #[error("Cannot start the tracer {binary:?}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its stdout could not be read.
    #[error("Cannot read the tracer's output")]
    Read(#[source] std::io::Error),
    /// It ended without the message expected next.
    #[error("The tracer ended before reporting {expected} ({status}): {stderr}")]
    Ended {
        expected: &'static str,
        status: String,
        stderr: String,
    },
    /// A line that is not a message of the protocol.
    #[error("The tracer wrote {line:?}, not a trace message")]
    BadMessage {
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A running `isolab-trace` that has seized its threads.
#[derive(Debug)]
pub struct TracerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    traced: Vec<u32>,
    not_traced: Vec<NotTraced>,
}

impl TracerProcess {
    /// Starts `binary` (the `isolab-trace` executable) on every thread of
    /// `pids` and returns once they are all seized.
    pub fn attach(binary: &Path, pids: &[u32]) -> Result<Self, TracerProcessError> {
        let mut cmd = Command::new(binary);
        cmd.arg("--stop-on-stdin-eof");
        for p in pids {
            cmd.arg("--pid").arg(p.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TracerProcessError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut me = Self {
            child,
            stdin,
            stdout,
            traced: Vec::new(),
            not_traced: Vec::new(),
        };
        match me.next("the attached threads")? {
            TraceMessage::Attached { traced, not_traced } => {
                me.traced = traced;
                me.not_traced = not_traced;
                Ok(me)
            }
            TraceMessage::Profile(_) => Err(me.ended("the attached threads")),
        }
    }

    /// Host thread ids seized at attach time.
    pub fn traced(&self) -> &[u32] {
        &self.traced
    }

    /// Threads that could not be seized, with why.
    pub fn not_traced(&self) -> &[NotTraced] {
        &self.not_traced
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the tracer to detach and returns what it counted.
    pub fn finish(mut self) -> Result<SyscallProfile, TracerProcessError> {
        drop(self.stdin.take());
        match self.next("its profile")? {
            TraceMessage::Profile(p) => {
                let _ = self.child.wait();
                Ok(p)
            }
            TraceMessage::Attached { .. } => Err(self.ended("its profile")),
        }
    }

    fn next(&mut self, expected: &'static str) -> Result<TraceMessage, TracerProcessError> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(TracerProcessError::Read)?;
        if n == 0 {
            return Err(self.ended(expected));
        }
        serde_json::from_str(line.trim_end()).map_err(|source| TracerProcessError::BadMessage {
            line: line.trim_end().to_owned(),
            source,
        })
    }

    fn ended(&mut self, expected: &'static str) -> TracerProcessError {
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        TracerProcessError::Ended {
            expected,
            status,
            stderr: stderr.trim().to_owned(),
        }
    }
}

impl Drop for TracerProcess {
    fn drop(&mut self) {
        // Not finished: stop it hard. The kernel detaches its tracees.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes one message as a line (used by the `isolab-trace` binary).
pub fn emit(out: &mut impl std::io::Write, msg: &TraceMessage) -> std::io::Result<()> {
    let line = serde_json::to_string(msg).map_err(std::io::Error::other)?;
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_line_each() {
        let mut buf = Vec::new();
        emit(
            &mut buf,
            &TraceMessage::Attached {
                traced: vec![1, 2],
                not_traced: vec![NotTraced {
                    tid: 3,
                    reason: "already traced by 9".into(),
                }],
            },
        )
        .unwrap();
        emit(&mut buf, &TraceMessage::Profile(SyscallProfile::default())).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(r#"{"attached":{"traced":[1,2]"#));
        assert!(matches!(
            serde_json::from_str::<TraceMessage>(lines[1]).unwrap(),
            TraceMessage::Profile(_)
        ));
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error_naming_it() {
        let e = TracerProcess::attach(Path::new("/nonexistent/isolab-trace"), &[1]).unwrap_err();
        assert!(matches!(e, TracerProcessError::Spawn { .. }));
        assert!(e.to_string().contains("/nonexistent/isolab-trace"));
    }
}
