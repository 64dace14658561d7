//! One instance, as `bench container run` and `bench vm run` run it: the
//! library half of those commands (the CLI only fills configs and renders).
//! With the network, this invocation creates the workbench for its own
//! lifetime, attaches the instance (a veth for a container, a TAP passed
//! to the monitor for a microVM), probes it over HTTP with the one probe
//! ([`crate::net::probe`]), stops it and removes everything again.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isolab_container::{ContainerConfig, NetworkHook, Outcome};
use isolab_guest_kernel::GuestArtifacts;
use isolab_microvm::{Console, StopReason, VmConfig, VmReport};
use isolab_net::{Workbench, WorkbenchConfig};

use crate::modes::microvm::{net_cmdline, Vmm};
use crate::net::{on_bridge, NetReport, VethHook};
use crate::ready::{ReadyEvent, ReadyPipe};
use crate::{HarnessError, Workload};

/// The port the HTTP workloads answer on (on every address).
pub const HTTP_PORT: u16 = isolab_workload::HTTP_PORT;

/// How long a networked guest may take from launch to its ready marker
/// (the emulated host boots slowly).
pub const VM_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Checks that `--net` can probe this workload: it must serve HTTP on its
/// default port and address.
pub fn check_net(workload: Workload, args: &[String]) -> Result<(), HarnessError> {
    if !workload.serves_http() {
        let http: Vec<Workload> = Workload::ALL
            .into_iter()
            .filter(|w| w.serves_http())
            .collect();
        return Err(HarnessError::Config(format!(
            "--net probes HTTP on port {HTTP_PORT}: use --workload {}, not '{workload}'",
            Workload::list(&http).replace(", ", " or ")
        )));
    }
    if args.iter().any(|a| a == "--port" || a == "--bind") {
        return Err(HarnessError::Config(format!(
            "--net needs the workload on 0.0.0.0:{HTTP_PORT}: drop --port/--bind from its arguments"
        )));
    }
    Ok(())
}

/// A finished `bench container run`.
#[derive(Debug)]
pub struct ContainerRun {
    pub outcome: Outcome,
    /// With the network: what the probe saw.
    pub net: Option<NetReport>,
}

/// Runs one container to its end; with `net_requests`, on the workbench
/// network, probed and then stopped. `on_start` gets the host pid of the
/// container's init once it runs (0 once it is gone), for signal
/// forwarding.
pub fn container(
    cfg: &ContainerConfig,
    net_requests: Option<u32>,
    on_start: &dyn Fn(i32),
) -> Result<ContainerRun, HarnessError> {
    crate::stale::clean_at_start();
    // Owned for this invocation; dropped (namespace and every interface in
    // it removed) after the container, on every path.
    let workbench = match net_requests {
        Some(_) => Some(Workbench::create(WorkbenchConfig::default())?),
        None => None,
    };
    let hook = workbench.as_ref().map(VethHook::new);
    let running = isolab_container::start_with(cfg, hook.as_ref().map(|h| h as &dyn NetworkHook))?;
    on_start(running.pid());
    let (outcome, net) = match (&workbench, &hook, net_requests) {
        (Some(wb), Some(h), Some(requests)) => {
            let probed = match h.addr() {
                Some(ip) => crate::net::probe(
                    &on_bridge(wb, ip, HTTP_PORT),
                    running.launched_at(),
                    requests,
                    "the workload",
                ),
                None => Err(HarnessError::Launch(
                    "the network hook ran but left no veth attached".into(),
                )),
            };
            let outcome = running.stop();
            on_start(0);
            let outcome = outcome?;
            match probed {
                Ok(net) => (outcome, Some(net)),
                Err(e) => {
                    let last = outcome.stdout.lines().last().unwrap_or("(no output)");
                    return Err(HarnessError::Launch(format!(
                        "{}; container {} ended {}; its last output: {last}",
                        crate::chain(&e),
                        outcome.id,
                        outcome.status
                    )));
                }
            }
        }
        _ => {
            let outcome = running.wait();
            on_start(0);
            (outcome?, None)
        }
    };
    drop(hook);
    if let Some(wb) = workbench {
        wb.destroy()?;
    }
    Ok(ContainerRun { outcome, net })
}

/// Why this host cannot boot the guest, unless `allow_pvm` asks to try a
/// PVM-capable kernel on PVM KVM.
pub fn check_vm_host(allow_pvm: bool) -> Result<(), HarnessError> {
    use isolab_microvm::host::{self, HostKind};
    let kind = host::detect(Path::new("/"));
    match kind.refusal() {
        Some(_) if kind == HostKind::Pvm && allow_pvm => Ok(()),
        Some(why) => Err(HarnessError::Unavailable(why.to_owned())),
        None => Ok(()),
    }
}

/// The provisioned guest kernel and initramfs (built on the very first
/// run, cached afterwards).
pub fn provisioned_guest(workload: Workload) -> Result<GuestArtifacts, HarnessError> {
    let cache =
        isolab_guest_kernel::cache_root().map_err(|e| HarnessError::Unavailable(e.to_string()))?;
    let bin_dir = isolab_guest_kernel::binary_dir().ok_or_else(|| {
        HarnessError::Unavailable("cannot locate the bench executable's directory".into())
    })?;
    let opts = isolab_guest_kernel::ProvisionOptions::new(cache, &bin_dir, workload);
    Ok(isolab_guest_kernel::provision(&opts)?.artifacts())
}

/// What `bench vm run` asks for.
#[derive(Debug)]
pub struct VmRunConfig {
    /// The `isolab-vmm` binary.
    pub vmm: PathBuf,
    pub config: VmConfig,
    /// An fd to write `R` to when the workload is ready (then closed).
    pub ready_fd: Option<OwnedFd>,
    /// With the network: requests in the run after the first response.
    pub net_requests: Option<u32>,
}

/// A finished `bench vm run`.
#[derive(Debug)]
pub struct VmRun {
    pub report: VmReport,
    /// With the network: what the probe saw.
    pub net: Option<NetReport>,
}

/// Runs one microVM in an `isolab-vmm` process to its end; with
/// `net_requests`, on a TAP on the workbench bridge, probed once ready and
/// then stopped with SIGTERM. A guest console on stdout is passed through
/// as it comes. `on_start` gets the monitor's pid (0 once it is gone).
pub fn vm(mut run: VmRunConfig, on_start: &dyn Fn(i32)) -> Result<VmRun, HarnessError> {
    crate::stale::clean_at_start();
    let echo = run.config.console == Console::Stdout;
    let (workbench, tap) = match run.net_requests {
        Some(_) => {
            let wb = Workbench::create(WorkbenchConfig::default())?;
            let tap = wb.create_tap(None, false)?;
            let extra = net_cmdline(&tap);
            run.config.cmdline_extra = Some(match run.config.cmdline_extra.take() {
                Some(user) => format!("{user} {extra}"),
                None => extra,
            });
            (Some(wb), Some(tap))
        }
        None => (None, None),
    };
    // With the network we wait for ready ourselves (and pass it on);
    // without, the caller's fd, if any, goes to the monitor as it is.
    let mut pipe = ReadyPipe::new()?;
    let direct = if tap.is_none() {
        run.ready_fd.take()
    } else {
        None
    };
    let tap_fd = tap
        .as_ref()
        .map(|t| t.try_clone_fd().map(|fd| (fd, t.lease().mac())))
        .transpose()
        .map_err(|e| HarnessError::io("duplicate the TAP fd", e))?;
    let ready = match &tap {
        Some(_) => pipe.write_end(),
        None => direct.as_ref(),
    };
    let mut vmm = Vmm::spawn_with(
        &run.vmm,
        &run.config,
        ready,
        tap_fd.as_ref().map(|(fd, mac)| (fd, *mac)),
        echo,
    )?;
    pipe.close_write();
    drop((direct, tap_fd));
    on_start(vmm.child.id() as i32);
    let probed = match (&workbench, &tap, run.net_requests) {
        (Some(wb), Some(t), Some(requests)) => Some(match pipe.wait(VM_READY_TIMEOUT) {
            Ok(ReadyEvent::Ready(_)) => {
                if let Some(mut f) = run.ready_fd.take().map(std::fs::File::from) {
                    // The caller may have gone; that must not stop the VM.
                    let _ = f.write_all(b"R");
                }
                let target = on_bridge(wb, t.lease().addr(), HTTP_PORT);
                crate::net::probe(&target, vmm.launched, requests, "the guest").map(|mut n| {
                    n.tap = Some(t.name().to_owned());
                    n
                })
            }
            Ok(ReadyEvent::Closed) => Err(HarnessError::NotReady(
                "the VM ended before its workload was ready".into(),
            )),
            Err(_) => Err(HarnessError::NotReady(format!(
                "the guest did not report ready within {} s; rerun with --console to see its boot",
                VM_READY_TIMEOUT.as_secs()
            ))),
        }),
        _ => None,
    };
    if probed.is_some() {
        crate::modes::spawn::terminate(vmm.child.id(), Duration::from_secs(5));
    }
    let finished = vmm.finish();
    on_start(0);
    drop(tap);
    if let Some(wb) = workbench {
        wb.destroy()?;
    }
    let (report, _) = finished?;
    let net = match probed {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            let out = report.workload_output.trim_end();
            let last = out.lines().last().unwrap_or("(no output)");
            return Err(HarnessError::Launch(format!(
                "{}; VM stopped ({}); the workload's last output: {last}",
                crate::chain(&e),
                stop_name(report.stop_reason)
            )));
        }
    };
    Ok(VmRun { report, net })
}

/// How a stop reason reads in a sentence.
pub fn stop_name(r: StopReason) -> &'static str {
    match r {
        StopReason::WorkloadExited => "workload exited",
        StopReason::GuestReset => "guest reset",
        StopReason::GuestPowerOff => "guest power-off",
        StopReason::TripleFault => "triple fault",
        StopReason::Halted => "halted",
        StopReason::HostRequest => "host signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_needs_an_http_workload_on_its_default_port() {
        let e = check_net(Workload::Noop, &[]).unwrap_err();
        assert!(e.is_usage());
        assert!(
            e.to_string()
                .contains("use --workload api or cache, not 'noop'"),
            "{e}"
        );
        let e = check_net(Workload::Api, &["--port".into(), "9".into()]).unwrap_err();
        assert!(e.to_string().contains("drop --port"), "{e}");
        assert!(check_net(Workload::Cache, &[]).is_ok());
    }
}
