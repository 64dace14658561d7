//! The HTTP probe: time from launch to the first successful response, and a
//! short request/response run (N sequential requests on one keep-alive
//! connection: p50/p99 latency and throughput).
//!
//! Connecting retries only on "connection refused" (nothing listens yet)
//! and "host/network unreachable" (the interface or route is not there
//! yet), every [`ProbeConfig::retry_interval`] (default 1 ms: tight, so the
//! probe adds at most about a millisecond to the measured startup), until
//! [`ProbeConfig::deadline`]; any other error ends the probe at once. A
//! `503` also counts as "not ready yet".
//!
//! To probe an instance on the workbench bridge, run these functions inside
//! the namespace: `workbench.run_in(|| probe::first_response(...))` (a
//! helper thread that `setns()`es; the sockets are created there).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// The server answered with a non-success status.
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// Reading the response body failed.
    #[error("Could not read the response body from {url}")]
    Body {
        url: String,
        #[source]
        source: io::Error,
    },
}

/// Probe settings; [`Default`] gives the documented values.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Path to request (default `/health`).
    pub path: String,
    /// Pause between connection attempts (default 1 ms).
    pub retry_interval: Duration,
    /// Give up on the first response after this long (default 10 s).
    pub deadline: Duration,
    /// Per-request connect and read timeout (default 5 s).
    pub request_timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: "/health".into(),
            retry_interval: Duration::from_millis(1),
            deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// When the first successful response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstResponse {
    /// From the caller's `since` (the launch) to the response's arrival.
    pub elapsed: Duration,
    /// Connection attempts made, the successful one included.
    pub attempts: u32,
    /// The HTTP status.
    pub status: u16,
}

/// Figures of a request/response run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunStats {
    /// Requests answered successfully.
    pub requests: u32,
    /// Median latency (nearest rank).
    pub p50: Duration,
    /// 99th percentile latency (nearest rank).
    pub p99: Duration,
    /// Fastest request.
    pub min: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Wall time of the whole run.
    pub total: Duration,
    /// Requests per second over the run.
    pub throughput_rps: f64,
}

fn url_of(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

fn agent(cfg: &ProbeConfig) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(cfg.request_timeout)
        .timeout(cfg.request_timeout)
        .build()
}

/// Whether a failed request is worth retrying: nothing listening yet, or no
/// route/neighbour yet.
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
            io.kind() == io::ErrorKind::ConnectionRefused
                || matches!(
                    io.raw_os_error(),
                    Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
                )
        }
    }
}

/// Polls `addr` until the first successful response; `since` is the launch
/// instant the elapsed time is measured from.
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
                std::thread::sleep(cfg.retry_interval);
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

/// Sends `n` sequential requests (keep-alive) and measures them. Any failed
/// request ends the run with an error: a run with holes is not a number.
pub fn request_run(addr: SocketAddr, n: u32, cfg: &ProbeConfig) -> Result<RunStats, ProbeError> {
    let url = url_of(addr, &cfg.path);
    let agent = agent(cfg);
    let mut samples = Vec::with_capacity(n as usize);
    let run_start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let resp = agent.get(&url).call().map_err(|err| match err {
            ureq::Error::Status(status, _) => ProbeError::Status {
                url: url.clone(),
                status,
            },
            err => ProbeError::Request {
                url: url.clone(),
                source: Box::new(err),
            },
        })?;
        resp.into_string().map_err(|source| ProbeError::Body {
            url: url.clone(),
            source,
        })?;
        samples.push(t.elapsed());
    }
    let total = run_start.elapsed();
    Ok(stats(&mut samples, total))
}

/// Summarises latency samples (sorts them in place).
pub fn stats(samples: &mut [Duration], total: Duration) -> RunStats {
    samples.sort_unstable();
    let secs = total.as_secs_f64();
    RunStats {
        requests: samples.len() as u32,
        p50: percentile(samples, 50.0),
        p99: percentile(samples, 99.0),
        min: samples.first().copied().unwrap_or_default(),
        max: samples.last().copied().unwrap_or_default(),
        total,
        throughput_rps: if secs > 0.0 {
            samples.len() as f64 / secs
        } else {
            0.0
        },
    }
}

/// Nearest-rank percentile of sorted samples; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&s, 50.0), ms(50));
        assert_eq!(percentile(&s, 99.0), ms(99));
        assert_eq!(percentile(&s, 100.0), ms(100));
        assert_eq!(percentile(&[ms(7)], 99.0), ms(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn stats_sorts_and_counts() {
        let mut s = vec![ms(3), ms(1), ms(2), ms(4)];
        let r = stats(&mut s, Duration::from_secs(2));
        assert_eq!((r.requests, r.min, r.max, r.p50), (4, ms(1), ms(4), ms(2)));
        assert_eq!(r.throughput_rps, 2.0);
    }

    #[test]
    fn refused_connections_are_retried_other_failures_are_not() {
        // Port 1 on loopback: nothing listens there, so this is a real
        // ECONNREFUSED without privileges.
        let cfg = ProbeConfig {
            deadline: ms(20),
            ..ProbeConfig::default()
        };
        let err = first_response("127.0.0.1:1".parse().unwrap(), Instant::now(), &cfg).unwrap_err();
        match err {
            ProbeError::Deadline { attempts, .. } => assert!(attempts >= 2, "{attempts}"),
            other => panic!("expected a deadline after retries, got {other}"),
        }
    }
}
