//! The workbench network as the harness uses it (the namespace, bridge,
//! veth and TAP are `isolab-net`'s): one workbench per run, created when
//! the first instance needs it; a container attached through a veth while
//! its init waits; and the one HTTP measurement every mode reports, a
//! [`NetReport`] (launch -> first response, then a request run), taken with
//! `isolab_net`'s probe from inside the instance's namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isolab_container::NetworkHook;
use isolab_net::{ProbeConfig, Target, VethAttachment, Workbench, WorkbenchConfig};
use serde::Serialize;

use crate::stats::summarize;
use crate::HarnessError;

/// The run's workbench, created on first use and removed when the last
/// holder drops it; a namespace of this run's own
/// ([`WorkbenchConfig::per_process`]), so concurrent runs never contend.
#[derive(Debug, Default)]
pub struct SharedWorkbench(Mutex<Option<Arc<Workbench>>>);

impl SharedWorkbench {
    /// The workbench, created now if this run has none yet.
    pub fn get(&self) -> Result<Arc<Workbench>, HarnessError> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wb) = slot.as_ref() {
            return Ok(Arc::clone(wb));
        }
        let wb = Arc::new(Workbench::create(WorkbenchConfig::per_process())?);
        *slot = Some(Arc::clone(&wb));
        Ok(wb)
    }
}

/// Attaches a container's network namespace to the workbench bridge while
/// its init waits; keeps the veth (and so the lease) until dropped. `W` is
/// how the hook holds the workbench: borrowed (`&Workbench`, one run) or
/// shared (`Arc<Workbench>`, an instance of compare).
#[derive(Debug)]
pub struct VethHook<W: std::ops::Deref<Target = Workbench>> {
    workbench: W,
    attached: Mutex<Option<VethAttachment>>,
}

impl<W: std::ops::Deref<Target = Workbench>> VethHook<W> {
    pub fn new(workbench: W) -> Self {
        VethHook {
            workbench,
            attached: Mutex::new(None),
        }
    }

    /// The workbench the veth is on.
    pub fn workbench(&self) -> &Workbench {
        &self.workbench
    }

    /// The container's address on the bridge, once attached.
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(VethAttachment::addr)
    }
}

impl<W> NetworkHook for VethHook<W>
where
    W: std::ops::Deref<Target = Workbench> + std::fmt::Debug + Send + Sync,
{
    fn attach(
        &self,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let veth = self.workbench.attach_veth(netns, "eth0")?;
        *self.attached.lock().unwrap_or_else(|e| e.into_inner()) = Some(veth);
        Ok(())
    }
}

/// What the HTTP probe saw of one instance (`"net"` in `bench container
/// run --json` and `bench vm run --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetReport {
    /// The instance's address on the bridge, with the port.
    pub addr: String,
    /// The TAP on the bridge (microVM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Launch -> first successful HTTP response.
    pub launch_to_first_response_ms: f64,
    /// Attempts until the first response ([`isolab_net::probe::RETRY_INTERVAL`]
    /// apart).
    pub attempts: u32,
    /// HTTP status of the first response.
    pub status: u16,
    /// The request/response run after the first response.
    pub requests: u32,
    /// Latency percentiles of the run (linear interpolation, as every
    /// summary of the harness).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub throughput_rps: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Probes `target`: the first response, timed from `launched`, then
/// `requests` sequential requests. `what` names the instance in errors.
pub fn probe(
    target: &Target,
    launched: Instant,
    requests: u32,
    what: &str,
) -> Result<NetReport, HarnessError> {
    let cfg = ProbeConfig::default();
    let no_answer = |source| HarnessError::NoAnswer {
        what: format!("{what} at {}", target.addr),
        source,
    };
    let first = isolab_net::probe::first_response_at(target, launched, &cfg).map_err(no_answer)?;
    let run = isolab_net::probe::request_run_at(target, requests, &cfg).map_err(no_answer)?;
    if let Some(e) = &run.first_error {
        return Err(HarnessError::Launch(format!(
            "{} of {} requests to {what} at {} failed; first: {e}",
            run.errors, run.requests, target.addr
        )));
    }
    let lat: Vec<f64> = run.latencies.iter().map(|d| ms(*d)).collect();
    let s = summarize(&lat);
    Ok(NetReport {
        addr: target.addr.to_string(),
        tap: None,
        launch_to_first_response_ms: ms(first.elapsed),
        attempts: first.attempts,
        status: first.status,
        requests: run.latencies.len() as u32,
        p50_ms: s.as_ref().map_or(0.0, |s| s.p50),
        p99_ms: s.as_ref().map_or(0.0, |s| s.p99),
        max_ms: s.as_ref().map_or(0.0, |s| s.max),
        throughput_rps: run.throughput_rps(),
    })
}

/// An address on the workbench bridge, reached from inside its namespace.
pub fn on_bridge(workbench: &Workbench, addr: Ipv4Addr, port: u16) -> Target {
    Target {
        netns: isolab_net::Netns::Path(workbench.netns_path()),
        addr: SocketAddr::from((addr, port)),
    }
}

/// When `target` first answered, probing until `deadline`; the instant is
/// `launched` plus the probe's elapsed time, so it is on the same clock as
/// the ready signal.
pub fn first_response(
    target: &Target,
    launched: Instant,
    deadline: Instant,
) -> Result<Instant, HarnessError> {
    let cfg = ProbeConfig {
        deadline: deadline.saturating_duration_since(Instant::now()),
        ..ProbeConfig::default()
    };
    isolab_net::probe::first_response_at(target, launched, &cfg)
        .map(|f| launched + f.elapsed)
        .map_err(|source| HarnessError::NoAnswer {
            what: format!("the instance at {}", target.addr),
            source,
        })
}
