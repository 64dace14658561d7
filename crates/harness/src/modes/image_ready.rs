//! Readiness of a user's image, observed from outside (its program knows
//! nothing of our ready pipe), the same way in every mode: `http:` through
//! the one HTTP probe (`isolab_net::probe`, its retry policy), `tcp:` by a
//! connect that succeeds, `exit` by the program's end, `log:` by a line of
//! its stdout or stderr containing the text.
//!
//! A mode supplies where the instance is reached ([`isolab_net::Target`],
//! whose port is replaced by the rule's), an [`OutputScan`] fed by its
//! output pipes, and a check of whether the program has exited.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isolab_net::{Netns, ProbeConfig, Target};

use isolab_image::RunSpec;

use crate::image::ReadyRule;
use crate::HarnessError;

/// Most output one stream keeps for the outcome (the tail matters).
const KEEP: usize = 64 << 10;
/// How long one probe attempt series runs before the exit check runs
/// again (a program that died is not waited on for the whole timeout).
const SLICE: Duration = Duration::from_millis(100);
/// Pause between TCP connects and exit checks.
const POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
struct ScanState {
    /// When a line first contained the needle.
    seen: Option<Instant>,
    /// Streams still open.
    open: usize,
}

/// Lines of a program's stdout and stderr, scanned for a `log:` rule's
/// text as they arrive; each stream is read to its end on a thread of its
/// own, so a chatty program never blocks on a full pipe.
#[derive(Debug, Clone)]
pub struct OutputScan {
    needle: Option<Arc<str>>,
    state: Arc<(Mutex<ScanState>, Condvar)>,
}

/// How a wait for a log line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogWait {
    /// The text appeared at this instant.
    Seen(Instant),
    /// Every stream ended without it.
    Closed,
    /// The deadline passed.
    Timeout,
}

impl OutputScan {
    /// A scan for the rule's text (none for other rules: output is only
    /// kept).
    pub fn new(rule: &ReadyRule) -> Self {
        OutputScan {
            needle: match rule {
                ReadyRule::Log(t) => Some(t.as_str().into()),
                _ => None,
            },
            state: Arc::default(),
        }
    }

    /// Read `r` line by line to its end; the thread returns the stream's
    /// last [`KEEP`] bytes.
    pub fn drain(&self, r: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
        let me = self.clone();
        if r.is_some() {
            me.state.0.lock().unwrap_or_else(|e| e.into_inner()).open += 1;
        }
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(r) = r {
                let mut r = BufReader::new(r);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    me.saw(&line);
                    kept.extend_from_slice(&line);
                    if kept.len() > 2 * KEEP {
                        kept.drain(..kept.len() - KEEP);
                    }
                }
                let (m, cv) = &*me.state;
                m.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
                cv.notify_all();
            }
            let start = kept.len().saturating_sub(KEEP);
            String::from_utf8_lossy(&kept[start..]).into_owned()
        })
    }

    fn saw(&self, line: &[u8]) {
        let Some(n) = &self.needle else { return };
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        if s.seen.is_none() && String::from_utf8_lossy(line).contains(&**n) {
            s.seen = Some(Instant::now());
            cv.notify_all();
        }
    }

    /// Wait until the text appeared, every stream ended, or `deadline`.
    pub fn wait(&self, deadline: Instant) -> LogWait {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(at) = s.seen {
                return LogWait::Seen(at);
            }
            if s.open == 0 {
                return LogWait::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return LogWait::Timeout;
            }
            s = cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What a mode tells [`wait_ready`] about its instance.
pub struct Observed<'a> {
    /// Where the instance is reached (any port: the rule's replaces it);
    /// `None` where it cannot be reached from here.
    pub reach: Option<Target>,
    /// Its output.
    pub output: Output<'a>,
    /// The program has exited: `Some(when)`, observed without reaping it
    /// (its status is collected when the instance is stopped).
    pub exited: &'a mut dyn FnMut() -> Result<Option<Instant>, HarnessError>,
}

/// A user's image run by a spawned runtime, with the scan of its output
/// its `log:` rule reads.
pub(crate) type ImageScan = Option<(Arc<crate::image::ImageWorkload>, OutputScan)>;

/// A spawned runtime's image and scan, and its stdout and stderr drained:
/// through the scan for an image, plainly otherwise.
pub(crate) fn drain_child(
    spec: &super::InstanceSpec,
    child: &mut std::process::Child,
) -> (ImageScan, JoinHandle<String>, JoinHandle<String>) {
    let image = spec
        .image
        .as_ref()
        .map(|i| (Arc::clone(i), OutputScan::new(&i.ready)));
    let (stdout, stderr) = match &image {
        Some((_, scan)) => (
            scan.drain(child.stdout.take()),
            scan.drain(child.stderr.take()),
        ),
        None => (
            super::spawn::drain(child.stdout.take()),
            super::spawn::drain(child.stderr.take()),
        ),
    };
    (image, stdout, stderr)
}

/// [`Observed::exited`] for our child `pid`: when its exit was first seen
/// (it is not reaped; its status is collected when the instance stops).
pub(crate) fn exit_watch(pid: u32) -> impl FnMut() -> Result<Option<Instant>, HarnessError> {
    let mut seen = None;
    move || {
        if seen.is_none() && super::process::has_exited(pid)? {
            seen = Some(Instant::now());
        }
        Ok(seen)
    }
}

/// Where a `log:` rule looks.
pub enum Output<'a> {
    /// Pipes this process reads, scanned as lines arrive.
    Scan(&'a OutputScan),
    /// A check of the output some other reader keeps (our container's
    /// launcher), polled.
    Poll(&'a dyn Fn() -> bool),
}

fn early_exit(rule: &ReadyRule) -> HarnessError {
    HarnessError::NotReady(format!(
        "the image's program exited before it was ready ({rule})"
    ))
}

fn timed_out(rule: &ReadyRule, timeout: Duration) -> HarnessError {
    HarnessError::NotReady(format!(
        "the image's program was not ready ({rule}) within {timeout:?}"
    ))
}

/// Wait until `rule` holds for the instance launched at `launched`;
/// returns when it did.
pub fn wait_ready(
    rule: &ReadyRule,
    launched: Instant,
    obs: Observed<'_>,
    timeout: Duration,
) -> Result<Instant, HarnessError> {
    let deadline = launched.max(Instant::now()) + timeout;
    let reach = |port: u16| -> Result<Target, HarnessError> {
        let mut t = obs.reach.clone().ok_or_else(|| {
            HarnessError::Config(format!(
                "--ready {rule}: this mode's instance cannot be reached from the host"
            ))
        })?;
        t.addr.set_port(port);
        Ok(t)
    };
    match rule {
        ReadyRule::Exit => loop {
            if let Some(at) = (obs.exited)()? {
                return Ok(at);
            }
            if Instant::now() >= deadline || crate::interrupted() {
                return Err(timed_out(rule, timeout));
            }
            std::thread::sleep(POLL);
        },
        ReadyRule::Log(_) => loop {
            let slice = (Instant::now() + SLICE).min(deadline);
            match obs.output {
                Output::Scan(scan) => match scan.wait(slice) {
                    LogWait::Seen(at) => return Ok(at),
                    // Streams may close before the exit is seen: the
                    // exit check below decides.
                    LogWait::Closed => std::thread::sleep(POLL),
                    LogWait::Timeout => {}
                },
                Output::Poll(seen) => {
                    while Instant::now() < slice {
                        if seen() {
                            return Ok(Instant::now());
                        }
                        std::thread::sleep(POLL);
                    }
                }
            }
            if (obs.exited)()?.is_some() {
                return Err(early_exit(rule));
            }
            if Instant::now() >= deadline || crate::interrupted() {
                return Err(timed_out(rule, timeout));
            }
        },
        ReadyRule::Tcp { port } => {
            let t = reach(*port)?;
            loop {
                if tcp_accepts(&t)? {
                    return Ok(Instant::now());
                }
                if (obs.exited)()?.is_some() {
                    return Err(early_exit(rule));
                }
                if Instant::now() >= deadline || crate::interrupted() {
                    return Err(timed_out(rule, timeout));
                }
                std::thread::sleep(POLL);
            }
        }
        ReadyRule::Http { port, path } => {
            let t = reach(*port)?;
            loop {
                let cfg = ProbeConfig {
                    path: path.clone(),
                    deadline: SLICE.min(deadline.saturating_duration_since(Instant::now())),
                    ..ProbeConfig::default()
                };
                match isolab_net::probe::first_response_at(&t, launched, &cfg) {
                    Ok(f) => return Ok(launched + f.elapsed),
                    // An answer that is an error status still shows the
                    // program serves HTTP: ready.
                    Err(isolab_net::ProbeError::Status { .. }) => return Ok(Instant::now()),
                    Err(isolab_net::ProbeError::Deadline { .. })
                    | Err(isolab_net::ProbeError::NoNamespace(_)) => {}
                    // A namespace looked for under a runtime whose
                    // processes come and go while it starts: again, while
                    // the program runs (the exit check below bounds it).
                    Err(isolab_net::ProbeError::Netns { .. })
                        if matches!(t.netns, Netns::Find(_)) => {}
                    Err(source) => {
                        return Err(HarnessError::NoAnswer {
                            what: format!("the image's program at {}", t.addr),
                            source,
                        })
                    }
                }
                if (obs.exited)()?.is_some() {
                    return Err(early_exit(rule));
                }
                if Instant::now() >= deadline || crate::interrupted() {
                    return Err(timed_out(rule, timeout));
                }
            }
        }
    }
}

/// One TCP connect to the target, from inside its namespace; a refused or
/// unreachable connection is `false` (not there yet).
fn tcp_accepts(t: &Target) -> Result<bool, HarnessError> {
    let addr = t.addr;
    let connect = move || {
        TcpStream::connect_timeout(&addr, isolab_net::probe::CONNECT_TIMEOUT)
            .map(drop)
            .is_ok()
    };
    let path = match &t.netns {
        Netns::Current => return Ok(connect()),
        Netns::Path(p) => p.clone(),
        // Not there yet; the caller's deadline bounds the wait.
        Netns::Find(find) => match find() {
            Some(p) => p,
            None => return Ok(false),
        },
    };
    let fd = match isolab_net::netns::open(&path) {
        Ok(fd) => fd,
        // The namespace went with the instance: the exit check reports it.
        Err(_) => return Ok(false),
    };
    isolab_net::netns::run_in(std::os::fd::AsFd::as_fd(&fd), connect)
        .map_err(|e| HarnessError::Launch(format!("enter {}: {e}", path.display())))
}

/// The path inside the image that `run.args[0]` names: itself when it
/// holds a `/`, else the first match in the image's `PATH` (from its
/// environment), as a shell would find it. Only a regular file (after
/// symlinks, resolved inside the rootfs) counts.
pub fn program_in_root(run: &RunSpec) -> Result<String, HarnessError> {
    let argv0 = run.args.first().ok_or_else(|| {
        HarnessError::Config("the image names no command: give one after --".into())
    })?;
    let is_file = |p: &str| {
        isolab_image::rootpath::resolve_in_root(&run.rootfs, p)
            .and_then(|h| std::fs::metadata(h).ok())
            .is_some_and(|m| m.is_file())
    };
    if argv0.contains('/') {
        let abs = if argv0.starts_with('/') {
            argv0.clone()
        } else {
            format!("{}/{argv0}", run.cwd.trim_end_matches('/'))
        };
        return if is_file(&abs) {
            Ok(abs)
        } else {
            Err(HarnessError::Config(format!(
                "the image has no program {argv0:?}"
            )))
        };
    }
    let path = run
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| is_file(p))
        .ok_or_else(|| {
            HarnessError::Config(format!(
                "the image has no program {argv0:?} on its PATH ({path})"
            ))
        })
}

/// A loopback target in our own namespace.
pub fn host_loopback() -> Target {
    Target {
        netns: Netns::Current,
        addr: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r.into(), w.into())
    }

    fn never() -> impl FnMut() -> Result<Option<Instant>, HarnessError> {
        || Ok(None)
    }

    #[test]
    fn a_log_line_in_either_stream_is_ready() {
        let rule: ReadyRule = "log:listening on".parse().unwrap();
        let scan = OutputScan::new(&rule);
        let (r1, mut w1) = pipe();
        let (r2, mut w2) = pipe();
        let out = scan.drain(Some(r1));
        let err = scan.drain(Some(r2));
        let launched = Instant::now();
        let writer = std::thread::spawn(move || {
            writeln!(w1, "starting").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            writeln!(w2, "now listening on :80").unwrap();
            drop((w1, w2));
        });
        let mut exited = never();
        let at = wait_ready(
            &rule,
            launched,
            Observed {
                reach: None,
                output: Output::Scan(&scan),
                exited: &mut exited,
            },
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(at >= launched);
        writer.join().unwrap();
        assert_eq!(out.join().unwrap(), "starting\n");
        assert_eq!(err.join().unwrap(), "now listening on :80\n");
    }

    #[test]
    fn a_program_that_exits_without_the_line_is_not_ready() {
        let rule: ReadyRule = "log:never printed".parse().unwrap();
        let scan = OutputScan::new(&rule);
        let (r, mut w) = pipe();
        let h = scan.drain(Some(r));
        writeln!(w, "bye").unwrap();
        drop(w);
        let mut exited = || Ok(Some(Instant::now()));
        let e = wait_ready(
            &rule,
            Instant::now(),
            Observed {
                reach: None,
                output: Output::Scan(&scan),
                exited: &mut exited,
            },
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(e.to_string().contains("exited before"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn tcp_is_ready_once_something_listens_on_loopback() {
        // Reserve a port, release it, listen on it a little later.
        let port = crate::modes::spawn::free_port().unwrap();
        let rule = ReadyRule::Tcp { port };
        let scan = OutputScan::new(&rule);
        let listener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let _ = l.accept();
        });
        let launched = Instant::now();
        let mut exited = never();
        let at = wait_ready(
            &rule,
            launched,
            Observed {
                reach: Some(host_loopback()),
                output: Output::Scan(&scan),
                exited: &mut exited,
            },
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(at - launched >= Duration::from_millis(30));
        listener.join().unwrap();
    }

    #[test]
    fn tcp_gives_up_when_the_program_exits_and_exit_is_its_end() {
        let port = crate::modes::spawn::free_port().unwrap();
        let rule = ReadyRule::Tcp { port };
        let scan = OutputScan::new(&rule);
        let end = Instant::now();
        let mut exited = move || Ok(Some(end));
        let obs = Observed {
            reach: Some(host_loopback()),
            output: Output::Scan(&scan),
            exited: &mut exited,
        };
        let e = wait_ready(&rule, end, obs, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("exited before"), "{e}");
        let mut exited = move || Ok(Some(end));
        let obs = Observed {
            reach: None,
            output: Output::Scan(&scan),
            exited: &mut exited,
        };
        let at = wait_ready(&ReadyRule::Exit, end, obs, Duration::from_secs(1));
        assert_eq!(at.unwrap(), end);
    }
}
