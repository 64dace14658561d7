//! The tenant's request runs: sequential on one keep-alive connection, and
//! concurrent over a few connections, both through the one HTTP probe
//! ([`isolab_net::probe::request_run_at`]), as raw latency samples for
//! [`isolab_isolation::interference`].
//!
//! [`TenantLoad`] is the seam: the scenario's unit tests script the runs
//! instead of sending requests.

use std::time::Instant;

use isolab_isolation::interference::{LoadPattern, LoadRun};
use isolab_net::{ProbeConfig, ProbeError, Target};

use crate::modes::HttpTarget;
use crate::HarnessError;

/// Sends one request run at a tenant.
pub trait TenantLoad {
    /// `requests` requests in `pattern` (for a concurrent pattern, split
    /// evenly over its connections). Failed requests are counted in the
    /// run, not returned as an error; an error means the run could not be
    /// sent at all.
    fn run(
        &self,
        target: Option<&HttpTarget>,
        pattern: LoadPattern,
        requests: usize,
    ) -> Result<LoadRun, HarnessError>;
}

/// The real load: the HTTP probe's request runs (`GET /health`, the
/// built-in api's), one thread per connection, each in the tenant's network
/// namespace.
#[derive(Debug, Default)]
pub struct ProbeLoad;

impl TenantLoad for ProbeLoad {
    fn run(
        &self,
        target: Option<&HttpTarget>,
        pattern: LoadPattern,
        requests: usize,
    ) -> Result<LoadRun, HarnessError> {
        probe_runs(target, pattern, requests, &ProbeConfig::default())
    }
}

/// The same runs against another path: a user's image, at its
/// `--ready http:PORT/PATH` rule's path.
#[derive(Debug, Clone)]
pub struct ProbeLoadAt(pub String);

impl TenantLoad for ProbeLoadAt {
    fn run(
        &self,
        target: Option<&HttpTarget>,
        pattern: LoadPattern,
        requests: usize,
    ) -> Result<LoadRun, HarnessError> {
        let cfg = ProbeConfig {
            path: self.0.clone(),
            ..ProbeConfig::default()
        };
        probe_runs(target, pattern, requests, &cfg)
    }
}

fn probe_runs(
    target: Option<&HttpTarget>,
    pattern: LoadPattern,
    requests: usize,
    cfg: &ProbeConfig,
) -> Result<LoadRun, HarnessError> {
    let target = &target
        .ok_or_else(|| HarnessError::Launch("the tenant serves no HTTP".into()))?
        .target;
    let start = Instant::now();
    let (latencies_us, errors) = match pattern {
        LoadPattern::Sequential => one_connection(target, requests, cfg)?,
        LoadPattern::Concurrent { connections } => {
            let per = requests / connections.max(1) as usize;
            let runs: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..connections.max(1))
                    .map(|_| s.spawn(|| one_connection(target, per, cfg)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(HarnessError::Launch("a load thread panicked".into()))
                        })
                    })
                    .collect()
            });
            let mut lat = Vec::with_capacity(requests);
            let mut errors = 0;
            for r in runs {
                let (l, e) = r?;
                lat.extend(l);
                errors += e;
            }
            (lat, errors)
        }
    };
    Ok(LoadRun {
        pattern,
        latencies_us,
        errors,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// `n` sequential requests on one connection: latencies (µs) and errors.
/// A run in which every request failed is all errors, not a failure of the
/// scenario (the tenant may be the one the neighbour hurt).
fn one_connection(
    target: &Target,
    n: usize,
    cfg: &ProbeConfig,
) -> Result<(Vec<f64>, u64), HarnessError> {
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    match isolab_net::probe::request_run_at(target, n32, cfg) {
        Ok(run) => Ok((
            run.latencies
                .iter()
                .map(|d| d.as_secs_f64() * 1e6)
                .collect(),
            u64::from(run.errors),
        )),
        Err(ProbeError::AllFailed { requests, .. }) => Ok((vec![], u64::from(requests))),
        Err(source) => Err(HarnessError::NoAnswer {
            what: format!("the tenant at {}", target.addr),
            source,
        }),
    }
}

/// Test double of [`TenantLoad`] for the passes' unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::cell::RefCell;

    use super::*;

    /// Records the size of every run and answers each request in 100 us.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingLoad(pub(crate) RefCell<Vec<usize>>);

    impl TenantLoad for RecordingLoad {
        fn run(
            &self,
            _: Option<&HttpTarget>,
            pattern: LoadPattern,
            requests: usize,
        ) -> Result<LoadRun, HarnessError> {
            self.0.borrow_mut().push(requests);
            Ok(LoadRun {
                pattern,
                latencies_us: vec![100.0; requests],
                errors: 0,
                wall_s: 1.0,
            })
        }
    }
}
