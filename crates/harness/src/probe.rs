//! HTTP probe: launch -> first successful response, and a short
//! request/response run (latency percentiles, throughput).
//!
//! Method: the probe connects in a loop and retries only while the kernel
//! answers connection-refused (nothing listening yet) or, for a path that is
//! still being set up, unreachable; it waits [`RETRY_INTERVAL`] between tries.
//! The first try that connects sends `GET /health` with a real HTTP client and
//! the time its `200` arrives is the first-response time. The probe can run
//! inside another network namespace (a container's, or the workbench's) by
//! entering it on its own thread.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stats::{summarize, Summary};
use crate::HarnessError;

/// Pause between connection attempts while nothing listens.
pub const RETRY_INTERVAL: Duration = Duration::from_micros(250);

/// The network namespace a probe runs in.
#[derive(Debug, Clone)]
pub enum Netns {
    /// The harness's own.
    Ours,
    /// A namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    Path(PathBuf),
    /// The first process under this pid (itself included) whose network
    /// namespace differs from ours: for runtimes (runc, crun) that create the
    /// container after the launch, so the namespace appears while probing.
    FirstOtherUnder(u32),
}

/// Where an instance's HTTP service is reached.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub netns: Netns,
    pub addr: SocketAddr,
}

fn resolve(netns: &Netns, deadline: Instant) -> Result<Option<PathBuf>, HarnessError> {
    match netns {
        Netns::Ours => Ok(None),
        Netns::Path(p) => Ok(Some(p.clone())),
        Netns::FirstOtherUnder(root) => {
            let ours = std::fs::read_link("/proc/self/ns/net")
                .map_err(|e| HarnessError::Io("read /proc/self/ns/net".into(), e))?;
            loop {
                for pid in crate::memory::process_tree(std::path::Path::new("/proc"), *root) {
                    let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
                    if let Ok(l) = std::fs::read_link(&p) {
                        if l != ours {
                            return Ok(Some(p));
                        }
                    }
                }
                if Instant::now() > deadline {
                    return Err(HarnessError::Timeout(format!(
                        "no network namespace appeared under pid {root}"
                    )));
                }
                std::thread::sleep(RETRY_INTERVAL);
            }
        }
    }
}

fn enter_netns(netns: &Netns, deadline: Instant) -> Result<(), HarnessError> {
    if let Some(path) = resolve(netns, deadline)? {
        let f = std::fs::File::open(&path)
            .map_err(|e| HarnessError::Io(format!("open {}", path.display()), e))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| HarnessError::Io(format!("setns {}", path.display()), e.into()))?;
    }
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
}

/// Block until `GET /health` answers 200; returns the instant it did.
/// Runs on a fresh thread so that entering a namespace never leaks.
pub fn first_response(target: &HttpTarget, deadline: Instant) -> Result<Instant, HarnessError> {
    let target = target.clone();
    std::thread::spawn(move || -> Result<Instant, HarnessError> {
        enter_netns(&target.netns, deadline)?;
        let url = format!("http://{}/health", target.addr);
        let agent = agent();
        loop {
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "{} did not answer before the deadline",
                    target.addr
                )));
            }
            match TcpStream::connect_timeout(&target.addr, Duration::from_millis(200)) {
                Ok(s) => drop(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused
                            | ErrorKind::HostUnreachable
                            | ErrorKind::NetworkUnreachable
                            | ErrorKind::TimedOut
                    ) =>
                {
                    std::thread::sleep(RETRY_INTERVAL);
                    continue;
                }
                Err(e) => return Err(HarnessError::Io(format!("connect {}", target.addr), e)),
            }
            match agent.get(&url).call() {
                Ok(r) if r.status() == 200 => return Ok(Instant::now()),
                Ok(r) => {
                    return Err(HarnessError::Probe(format!(
                        "{url} answered {}",
                        r.status()
                    )))
                }
                Err(ureq::Error::Transport(_)) => std::thread::sleep(RETRY_INTERVAL),
                Err(e) => return Err(HarnessError::Probe(format!("{url}: {e}"))),
            }
        }
    })
    .join()
    .map_err(|_| HarnessError::Probe("probe thread panicked".into()))?
}

/// Result of a short request/response run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub requests: usize,
    pub errors: usize,
    /// Latency of each request in microseconds.
    pub latency_us: Summary,
    pub requests_per_sec: f64,
}

/// `n` sequential `GET /health` requests over one keep-alive connection.
pub fn request_run(target: &HttpTarget, n: usize) -> Result<LoadResult, HarnessError> {
    let target = target.clone();
    std::thread::spawn(move || -> Result<LoadResult, HarnessError> {
        enter_netns(&target.netns, Instant::now() + Duration::from_secs(5))?;
        let url = format!("http://{}/health", target.addr);
        let agent = agent();
        let mut lat = Vec::with_capacity(n);
        let mut errors = 0;
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            match agent.get(&url).call() {
                Ok(r) if r.status() == 200 => {
                    let _ = r.into_string();
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                _ => errors += 1,
            }
        }
        let total = start.elapsed().as_secs_f64();
        let latency_us = summarize(&lat)
            .ok_or_else(|| HarnessError::Probe(format!("all {n} requests to {url} failed")))?;
        Ok(LoadResult {
            requests: n,
            errors,
            latency_us,
            requests_per_sec: lat.len() as f64 / total,
        })
    })
    .join()
    .map_err(|_| HarnessError::Probe("probe thread panicked".into()))?
}
