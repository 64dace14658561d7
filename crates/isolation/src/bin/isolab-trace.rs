//! `isolab-trace`: count the host system calls of running processes (all
//! their threads and new children) or of a command, by name and thread.
//!
//! ```text
//! isolab-trace [--stop-on-stdin-eof] --pid PID [--pid PID]...
//! isolab-trace -- COMMAND [ARGS]...
//! ```
//!
//! Stdout carries the protocol of `isolab_isolation::systrace::process`:
//! one `{"attached": ...}` line once every thread is seized, one
//! `{"profile": ...}` line after detaching. With `--pid` it stops on
//! SIGTERM/SIGINT/SIGHUP (or when stdin closes, with
//! `--stop-on-stdin-eof`); the traced processes run on. With a command it
//! runs until the command ends, passes those signals on to it, and sends
//! the command's stdout to stderr so the protocol stays clean.
//!
//! Exit status: 0 traced and reported, 1 tracing failed, 2 usage error.

use std::io::Read as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use isolab_isolation::systrace::process::emit;
use isolab_isolation::systrace::{SpawnSpec, TraceMessage, Tracer};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};

const USAGE: &str =
    "usage: isolab-trace [--stop-on-stdin-eof] --pid PID [--pid PID]... | isolab-trace -- COMMAND [ARGS]...";

enum Target {
    Pids(Vec<u32>),
    Command(Vec<String>),
}

fn parse(args: &[String]) -> Result<(Target, bool), String> {
    let mut pids = Vec::new();
    let mut stdin_eof = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pid" => {
                let v = it.next().ok_or("--pid needs a process id")?;
                let pid = v
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("--pid {v:?} is not a process id"))?;
                pids.push(pid);
            }
            "--stop-on-stdin-eof" => stdin_eof = true,
            "--" => {
                let cmd: Vec<String> = it.cloned().collect();
                if cmd.is_empty() || !pids.is_empty() {
                    return Err("give either --pid or a command after --".into());
                }
                return Ok((Target::Command(cmd), stdin_eof));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if pids.is_empty() {
        return Err("nothing to trace: give --pid PID or -- COMMAND".into());
    }
    Ok((Target::Pids(pids), stdin_eof))
}

extern "C" fn wake(_: libc::c_int) {}

/// Sets `stop` and keeps poking the tracer thread with SIGUSR1 (whose
/// handler is installed without SA_RESTART) until the process exits, so a
/// `waitpid` entered just after the flag was checked is interrupted too.
fn stop_tracer(stop: &AtomicBool, tracer_tid: libc::pid_t) -> ! {
    stop.store(true, Ordering::SeqCst);
    loop {
        // SAFETY: tgkill only sends a signal to a thread of this process.
        unsafe {
            libc::syscall(libc::SYS_tgkill, libc::getpid(), tracer_tid, libc::SIGUSR1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, stdin_eof) = match parse(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("isolab-trace: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stops = {
        let mut s = SigSet::empty();
        s.add(Signal::SIGTERM);
        s.add(Signal::SIGINT);
        s.add(Signal::SIGHUP);
        s
    };
    // Blocked here and so in the threads spawned below, which sigwait.
    if let Err(e) = signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stops), None) {
        eprintln!("isolab-trace: cannot block the stop signals: {e}");
        return ExitCode::FAILURE;
    }
    let action = signal::SigAction::new(
        SigHandler::Handler(wake),
        signal::SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    if let Err(e) = unsafe { signal::sigaction(Signal::SIGUSR1, &action) } {
        eprintln!("isolab-trace: cannot install the wake-up handler: {e}");
        return ExitCode::FAILURE;
    }
    let tracer_tid = nix::unistd::gettid().as_raw();
    let stop = Arc::new(AtomicBool::new(false));

    let (tracer, root) = match target {
        Target::Pids(pids) => match Tracer::seize(&pids) {
            Ok(t) => (t, None),
            Err(e) => return fail(&e),
        },
        Target::Command(cmd) => {
            let stdout = match nix::unistd::dup(std::io::stderr()) {
                Ok(fd) => fd,
                Err(e) => {
                    eprintln!("isolab-trace: cannot duplicate stderr: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut spec = SpawnSpec::new(&cmd[0], &cmd[1..]);
            spec.stdout = Some(stdout);
            match Tracer::spawn(spec) {
                Ok((t, pid)) => (t, Some(pid)),
                Err(e) => return fail(&e),
            }
        }
    };

    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while let Ok(sig) = stops.wait() {
                match root {
                    // The command decides how to end; we trace until it does.
                    Some(pid) => {
                        let _ = signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
                    }
                    None => stop_tracer(&stop, tracer_tid),
                }
            }
        });
    }
    if stdin_eof && root.is_none() {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop_tracer(&stop, tracer_tid)
        });
    }

    let mut out = std::io::stdout().lock();
    let attached = TraceMessage::Attached {
        traced: tracer.traced(),
        not_traced: tracer.not_traced().to_vec(),
    };
    if let Err(e) = emit(&mut out, &attached) {
        eprintln!("isolab-trace: cannot write to stdout: {e}");
    }
    match tracer.run(&stop) {
        Ok(profile) => {
            if let Err(e) = emit(&mut out, &TraceMessage::Profile(profile)) {
                eprintln!("isolab-trace: cannot write to stdout: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut line = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        line.push_str(": ");
        line.push_str(&s.to_string());
        src = s.source();
    }
    eprintln!("isolab-trace: error: {line}");
    ExitCode::FAILURE
}
