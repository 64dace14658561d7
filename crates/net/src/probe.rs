//! The HTTP probe, the one every mode is measured with: time from launch to
//! the first successful response, and a short request/response run (N
//! sequential requests on one keep-alive connection).
//!
//! Retry policy ([`retryable`]): while nothing answers yet the probe retries
//! every [`RETRY_INTERVAL`] (250 µs, so it adds at most that much to a
//! measured startup) on connection refused (nothing listens yet), host or
//! network unreachable and a connect timeout of [`CONNECT_TIMEOUT`] (the
//! interface or route is not there yet), and on HTTP 503 (up but not
//! ready), until the deadline; any other error ends the probe at once.
//! The first response that arrives (any status below 400) is the
//! first-response time.
//!
//! A [`Target`] names the network namespace the probe runs in (its own, a
//! namespace file, or one that appears after launch); the probe enters it on
//! a helper thread of its own, so the caller's thread never changes
//! namespace and the sockets live there.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::{self, NetnsError};

/// Pause between attempts while the instance does not answer yet.
pub const RETRY_INTERVAL: Duration = Duration::from_micros(250);
/// Longest one connection attempt may take before it counts as "not there
/// yet" and is retried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// Errors of the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No successful response before the deadline.
    #[error("No successful HTTP response from {url} within {waited:?} ({attempts} attempts; last: {last})")]
    Deadline {
        url: String,
        waited: Duration,
        attempts: u32,
        last: String,
    },
    /// A request failed for a reason that retrying would not fix.
    #[error("Request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with a status that is not "not ready yet".
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// Reading the response body failed.
    #[error("Could not read the response body from {url}")]
    Body {
        url: String,
        #[source]
        source: io::Error,
    },
    /// The target's network namespace never appeared before the deadline.
    #[error("No network namespace to probe appeared within {0:?}")]
    NoNamespace(Duration),
    /// Entering the target's network namespace failed.
    #[error("Could not enter the network namespace {path:?}")]
    Netns {
        path: PathBuf,
        #[source]
        source: NetnsError,
    },
    /// The probe's helper thread panicked.
    #[error("The probe thread panicked")]
    Panicked,
    /// Every request of a request run failed.
    #[error("All {requests} requests to {url} failed; first error: {first}")]
    AllFailed {
        url: String,
        requests: u32,
        first: String,
    },
}

/// Probe settings; [`Default`] gives the documented values.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Path to request (default `/health`).
    pub path: String,
    /// Give up on the first response after this long (default 10 s).
    pub deadline: Duration,
    /// Read timeout of one request once connected (default 5 s).
    pub request_timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: "/health".into(),
            deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The network namespace a probe runs in.
#[derive(Clone)]
pub enum Netns {
    /// The caller's own.
    Current,
    /// A namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    Path(PathBuf),
    /// A namespace that appears after the launch (a runtime such as runc
    /// creates it while the probe already runs): polled every
    /// [`RETRY_INTERVAL`] until it answers a path.
    Find(Arc<dyn Fn() -> Option<PathBuf> + Send + Sync>),
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Current => f.write_str("Current"),
            Netns::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Netns::Find(_) => f.write_str("Find(..)"),
        }
    }
}

/// Where an instance's HTTP service is reached.
#[derive(Debug, Clone)]
pub struct Target {
    pub netns: Netns,
    pub addr: SocketAddr,
}

/// When the first successful response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstResponse {
    /// From the caller's `since` (the launch) to the response's arrival.
    pub elapsed: Duration,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// The HTTP status.
    pub status: u16,
}

/// What a request/response run saw: the latency of every answered request,
/// in order, and the failures (a run is never cut short by one).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRun {
    /// Requests sent.
    pub requests: u32,
    /// Latency of each answered request.
    pub latencies: Vec<Duration>,
    /// Requests that failed.
    pub errors: u32,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Wall time of the whole run.
    pub total: Duration,
}

impl RequestRun {
    /// Answered requests per second over the run.
    pub fn throughput_rps(&self) -> f64 {
        let secs = self.total.as_secs_f64();
        if secs > 0.0 {
            self.latencies.len() as f64 / secs
        } else {
            0.0
        }
    }
}

fn url_of(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

fn agent(cfg: &ProbeConfig) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(cfg.request_timeout)
        .build()
}

/// Whether a failed request is worth retrying: nothing listening yet, no
/// route/neighbour yet, or the server says it is not ready (503).
pub fn retryable(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::Status(503, _) => true,
        ureq::Error::Status(..) => false,
        ureq::Error::Transport(t) => {
            if t.kind() != ureq::ErrorKind::ConnectionFailed {
                return false;
            }
            let Some(io) = std::error::Error::source(t).and_then(|s| s.downcast_ref::<io::Error>())
            else {
                return false;
            };
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
            ) || matches!(
                io.raw_os_error(),
                Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
            )
        }
    }
}

/// Polls `addr` from the calling thread's namespace until the first
/// successful response; `since` is the launch instant the elapsed time is
/// measured from.
pub fn first_response(
    addr: SocketAddr,
    since: Instant,
    cfg: &ProbeConfig,
) -> Result<FirstResponse, ProbeError> {
    let url = url_of(addr, &cfg.path);
    let agent = agent(cfg);
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match agent.get(&url).call() {
            Ok(resp) => {
                let elapsed = since.elapsed();
                let status = resp.status();
                // Drain the body so the response is complete.
                resp.into_string().map_err(|source| ProbeError::Body {
                    url: url.clone(),
                    source,
                })?;
                return Ok(FirstResponse {
                    elapsed,
                    attempts,
                    status,
                });
            }
            Err(err) if retryable(&err) => {
                if start.elapsed() >= cfg.deadline {
                    return Err(ProbeError::Deadline {
                        url,
                        waited: start.elapsed(),
                        attempts,
                        last: err.to_string(),
                    });
                }
                std::thread::sleep(RETRY_INTERVAL);
            }
            Err(ureq::Error::Status(status, _)) => return Err(ProbeError::Status { url, status }),
            Err(err) => {
                return Err(ProbeError::Request {
                    url,
                    source: Box::new(err),
                })
            }
        }
    }
}

/// Sends `n` sequential requests (keep-alive) from the calling thread's
/// namespace and records each; a failed request is counted, not fatal,
/// unless every request failed.
pub fn request_run(addr: SocketAddr, n: u32, cfg: &ProbeConfig) -> Result<RequestRun, ProbeError> {
    let url = url_of(addr, &cfg.path);
    let agent = agent(cfg);
    let mut run = RequestRun {
        requests: n,
        latencies: Vec::with_capacity(n as usize),
        errors: 0,
        first_error: None,
        total: Duration::ZERO,
    };
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let answered = agent
            .get(&url)
            .call()
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_string().map_err(|e| e.to_string()));
        match answered {
            Ok(_) => run.latencies.push(t.elapsed()),
            Err(e) => {
                run.errors += 1;
                run.first_error.get_or_insert(e);
            }
        }
    }
    run.total = start.elapsed();
    if n > 0 && run.latencies.is_empty() {
        return Err(ProbeError::AllFailed {
            url,
            requests: n,
            first: run.first_error.unwrap_or_default(),
        });
    }
    Ok(run)
}

/// Runs `f` inside the target's namespace on a helper thread; `deadline`
/// bounds the wait for a namespace that appears after launch.
fn in_netns<T: Send>(
    netns: &Netns,
    deadline: Instant,
    f: impl FnOnce() -> Result<T, ProbeError> + Send,
) -> Result<T, ProbeError> {
    let (fd, path) = match netns {
        Netns::Current => return run_on_thread(f),
        Netns::Path(p) => {
            let fd = netns::open(p).map_err(|source| ProbeError::Netns {
                path: p.clone(),
                source,
            })?;
            (fd, p.clone())
        }
        // A path found may name a process that is gone by the time it is
        // opened (runc's intermediate `runc init` has the new namespace
        // for an instant): look again until the deadline.
        Netns::Find(find) => loop {
            let found = find();
            let last = Instant::now() >= deadline;
            match found {
                Some(p) => match netns::open(&p) {
                    Ok(fd) => break (fd, p),
                    Err(source) if last => return Err(ProbeError::Netns { path: p, source }),
                    Err(_) => {}
                },
                None if last => {
                    return Err(ProbeError::NoNamespace(
                        deadline.saturating_duration_since(Instant::now()),
                    ))
                }
                None => {}
            }
            std::thread::sleep(RETRY_INTERVAL);
        },
    };
    netns::run_in(std::os::fd::AsFd::as_fd(&fd), f)
        .map_err(|source| ProbeError::Netns { path, source })?
}

/// A fresh thread even in our own namespace, so the probe's timing does
/// not depend on where it runs.
fn run_on_thread<T: Send>(
    f: impl FnOnce() -> Result<T, ProbeError> + Send,
) -> Result<T, ProbeError> {
    std::thread::scope(|s| s.spawn(f).join().unwrap_or(Err(ProbeError::Panicked)))
}

/// [`first_response`] inside the target's namespace.
pub fn first_response_at(
    target: &Target,
    since: Instant,
    cfg: &ProbeConfig,
) -> Result<FirstResponse, ProbeError> {
    let deadline = Instant::now() + cfg.deadline;
    in_netns(&target.netns, deadline, || {
        let left = ProbeConfig {
            deadline: deadline.saturating_duration_since(Instant::now()),
            ..cfg.clone()
        };
        first_response(target.addr, since, &left)
    })
}

/// [`request_run`] inside the target's namespace.
pub fn request_run_at(
    target: &Target,
    n: u32,
    cfg: &ProbeConfig,
) -> Result<RequestRun, ProbeError> {
    let deadline = Instant::now() + cfg.deadline;
    in_netns(&target.netns, deadline, || request_run(target.addr, n, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_are_retried_other_failures_are_not() {
        // Port 1 on loopback: nothing listens there, so this is a real
        // ECONNREFUSED without privileges.
        let cfg = ProbeConfig {
            deadline: Duration::from_millis(20),
            ..ProbeConfig::default()
        };
        let err = first_response("127.0.0.1:1".parse().unwrap(), Instant::now(), &cfg).unwrap_err();
        match err {
            ProbeError::Deadline { attempts, .. } => assert!(attempts >= 2, "{attempts}"),
            other => panic!("expected a deadline after retries, got {other}"),
        }
    }

    #[test]
    fn a_namespace_that_never_appears_ends_at_the_deadline() {
        let t = Target {
            netns: Netns::Find(Arc::new(|| None)),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let cfg = ProbeConfig {
            deadline: Duration::from_millis(5),
            ..ProbeConfig::default()
        };
        assert!(matches!(
            first_response_at(&t, Instant::now(), &cfg),
            Err(ProbeError::NoNamespace(_))
        ));
    }

    #[test]
    fn a_found_namespace_whose_process_is_gone_is_looked_for_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let t = Target {
            netns: Netns::Find(Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                Some(PathBuf::from("/proc/4294967295/ns/net"))
            })),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let cfg = ProbeConfig {
            deadline: Duration::from_millis(5),
            ..ProbeConfig::default()
        };
        let e = first_response_at(&t, Instant::now(), &cfg).unwrap_err();
        assert!(matches!(e, ProbeError::Netns { .. }), "{e}");
        assert!(calls.load(Ordering::SeqCst) >= 2, "looked for again");
    }

    #[test]
    fn a_run_against_nothing_fails_as_a_whole() {
        let cfg = ProbeConfig::default();
        let e = request_run("127.0.0.1:1".parse().unwrap(), 3, &cfg).unwrap_err();
        assert!(
            matches!(e, ProbeError::AllFailed { requests: 3, .. }),
            "{e}"
        );
        let none = request_run("127.0.0.1:1".parse().unwrap(), 0, &cfg).unwrap();
        assert_eq!((none.requests, none.errors), (0, 0));
    }
}
