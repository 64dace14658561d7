//! `--host emulated`: `bench` itself, run again inside the emulated
//! hardware-virtualisation host (QEMU TCG + nested KVM, `isolab-emuhost`),
//! with the guest artifacts provisioned here first so they travel in as
//! payload instead of being built inside. Every figure that comes back
//! carries [`EMULATED_HOST_LABEL`].

use isolab_emuhost::{EmulatedHost, HostConfig, Outcome, PeerRuntime, EMULATED_HOST_LABEL};

use crate::compare::CompareReport;
use crate::env::KvmKind;
use crate::modes::ModeKind;
use crate::{HarnessError, Workload};

/// The emulated host, prepared (cached after the first run). With
/// `include_qemu` the host's `qemu-system-x86_64` goes in too (the QEMU
/// peer); `peers` are the container runtimes carried in with their
/// libraries (crun, runc, runsc: [`isolab_emuhost::peers::runtimes_for`]).
pub fn prepare(
    include_qemu: bool,
    peers: Vec<PeerRuntime>,
    timeout_s: u64,
) -> Result<EmulatedHost, HarnessError> {
    let cfg = HostConfig {
        include_qemu,
        peers,
        allow_install: true,
        timeout_s,
        ..HostConfig::default()
    };
    Ok(EmulatedHost::prepare(cfg)?)
}

/// Runs `bench <args>` inside `host` with progress bars off (its console
/// is a terminal to indicatif, but nobody watches it); every output line
/// goes to `on_line`. SIGINT/SIGTERM stop QEMU through the runner.
pub fn run_bench(
    host: &EmulatedHost,
    args: &[String],
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, HarnessError> {
    isolab_emuhost::interrupt::install_handlers()
        .map_err(|e| HarnessError::io("install the signal handlers for the emulated host", e))?;
    Ok(isolab_emuhost::run_bench_inside(host, args, &mut |l| {
        on_line(l.rsplit('\r').next().unwrap_or(l))
    })?)
}

/// `bench compare` inside the emulated host: the same configuration, JSON
/// out, parsed and labelled here. `on_line` sees the inner progress lines
/// (not the report).
pub fn compare(
    cfg: &crate::compare::CompareConfig,
    on_line: &mut dyn FnMut(&str),
) -> Result<CompareReport, HarnessError> {
    compare_with(cfg, &[], vec![], on_line)
}

/// [`compare`] with `image_args` after the configuration's own (a user's
/// image named as the inner cache holds it) and `files` carried in (that
/// cache entry).
pub fn compare_with(
    cfg: &crate::compare::CompareConfig,
    image_args: &[String],
    files: Vec<isolab_emuhost::FileMap>,
    on_line: &mut dyn FnMut(&str),
) -> Result<CompareReport, HarnessError> {
    crate::single::provisioned_guest(cfg.workload)?;
    let host = prepare(
        cfg.modes.contains(&ModeKind::QemuMicrovm),
        carried_peers(cfg),
        3000,
    )?;
    let mut args = compare_args(cfg);
    args.extend(image_args.iter().cloned());
    isolab_emuhost::interrupt::install_handlers()
        .map_err(|e| HarnessError::io("install the signal handlers for the emulated host", e))?;
    let mut lines = vec![];
    let mut in_report = false;
    let outcome = isolab_emuhost::run_bench_inside_with(&host, &args, files, &mut |l| {
        let l = l.rsplit('\r').next().unwrap_or(l);
        if l.trim_end() == "{" {
            in_report = true;
        }
        if !in_report {
            on_line(l);
        }
        if l.starts_with('}') {
            in_report = false;
        }
        lines.push(l.to_owned());
    })?;
    if let Ok(p) = std::env::var("ISOLAB_EMU_LOG") {
        let _ = std::fs::write(p, lines.join("\n"));
    }
    let json = extract_json(&lines).ok_or_else(|| {
        HarnessError::Launch(format!(
            "the emulated host's bench compare printed no report (exit {})",
            outcome.status
        ))
    })?;
    let mut report: CompareReport = serde_json::from_str(&json).map_err(|e| {
        HarnessError::Launch(format!("the emulated host's report does not parse: {e}"))
    })?;
    report.environment.label = Some(EMULATED_HOST_LABEL.into());
    report.environment.kvm = KvmKind::Emulated;
    Ok(report)
}

/// The container runtimes the inner `bench compare` measures as peers,
/// carried into the emulated host (it has none of its own).
pub fn carried_peers(cfg: &crate::compare::CompareConfig) -> Vec<PeerRuntime> {
    isolab_emuhost::peers::runtimes_for(cfg.modes.iter().filter(|m| m.is_peer()).map(|m| m.name()))
}

/// The inner `bench compare` arguments for `cfg`, with JSON output.
pub fn compare_args(cfg: &crate::compare::CompareConfig) -> Vec<String> {
    let names = |peers: bool| {
        let v: Vec<&str> = cfg
            .modes
            .iter()
            .filter(|m| m.is_peer() == peers)
            .map(|m| m.name())
            .collect();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(",")
        }
    };
    let mut v: Vec<String> = vec![
        "compare".into(),
        "--workload".into(),
        cfg.workload.name().into(),
        "--modes".into(),
        names(false),
        "--peers".into(),
        names(true),
        "--runs".into(),
        cfg.runs.to_string(),
        "--warmup".into(),
        cfg.warmup.to_string(),
        "--requests".into(),
        cfg.requests.to_string(),
        "--ready-timeout".into(),
        cfg.ready_timeout.as_secs().to_string(),
        "--format".into(),
        "json".into(),
    ];
    if cfg.container_loopback {
        v.extend(["--container-net".into(), "loopback".into()]);
    }
    if let Some(d) = &cfg.density {
        v.extend([
            "--density".into(),
            "--budget".into(),
            format!("{}K", d.budget_bytes >> 10),
        ]);
        if let Some(n) = d.max_instances {
            v.extend(["--max-instances".into(), n.to_string()]);
        }
    }
    // The isolation half is on by default: the inner run gets the same
    // budget (or `off`), then every pass's own flags, so it runs exactly
    // the outer configuration.
    v.extend([
        "--isolation".into(),
        cfg.isolation.map_or("off", |b| b.name()).into(),
    ]);
    match &cfg.neighbours {
        Some(n) => v.extend(crate::isolation::cli_args(n)),
        None => v.extend(["--neighbours".into(), "none".into()]),
    }
    if let Some(s) = &cfg.surface {
        v.extend([
            "--attack-surface".into(),
            "--surface-requests".into(),
            s.requests.to_string(),
        ]);
    }
    if cfg.posture {
        v.push("--posture".into());
    }
    v
}

/// The pretty-printed JSON document among the console lines.
pub fn extract_json(lines: &[String]) -> Option<String> {
    let start = lines.iter().position(|l| l.trim_end() == "{")?;
    let end = start + lines[start..].iter().position(|l| l.starts_with('}'))?;
    let mut doc = lines[start..end].join("\n");
    doc.push_str("\n}");
    Some(doc)
}

/// Provisions the guest for `workload` here, so `bench vm run` inside
/// finds it in the cache it is given.
pub fn provision_guest(workload: Workload) -> Result<(), HarnessError> {
    crate::single::provisioned_guest(workload).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::CompareConfig;
    use crate::density::DensityConfig;
    use std::time::Duration;

    #[test]
    fn json_document_is_found_among_console_lines() {
        let lines: Vec<String> = [
            "[  1.0] kvm: loaded",
            "{",
            "  \"a\": 1",
            "}",
            "ISOLAB-EMUHOST-EXIT 0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(extract_json(&lines).unwrap(), "{\n  \"a\": 1\n}");
        assert!(extract_json(&lines[..1]).is_none());
    }

    #[test]
    fn inner_arguments_carry_the_whole_config() {
        let cfg = CompareConfig {
            workload: Workload::Cache,
            runs: 3,
            warmup: 1,
            requests: 10,
            ready_timeout: Duration::from_secs(30),
            container_loopback: false,
            modes: vec![ModeKind::Process, ModeKind::Microvm, ModeKind::Runc],
            density: Some(DensityConfig {
                budget_bytes: 1 << 30,
                max_instances: Some(20),
                ready_timeout: Duration::from_secs(30),
            }),
            neighbours: Some(crate::isolation::NeighbourConfig {
                kinds: vec![crate::isolation::NeighbourKind::Memory],
                ..Default::default()
            }),
            surface: Some(crate::isolation::SurfaceConfig::default()),
            posture: true,
            image: None,
            isolation: None,
        };
        assert_eq!(
            compare_args(&cfg).join(" "),
            "compare --workload cache --modes process,microvm --peers runc --runs 3 --warmup 1 \
             --requests 10 --ready-timeout 30 --format json --density --budget 1048576K \
             --max-instances 20 --isolation off --neighbours memory --neighbour-cpus 1 --neighbour-memory 262144K \
             --neighbour-pids 128 --neighbour-requests 400 --neighbour-connections 4 \
             --neighbour-window-ms 1000 --attack-surface --surface-requests 100 --posture"
        );
        assert_eq!(carried_peers(&cfg), [PeerRuntime::Runc]);
        // The default run's isolation half goes in with its budget; a
        // cost-only run says so, so the inner run does not add it.
        let short = CompareConfig {
            isolation: Some(crate::isolation::Budget::Short),
            ..cfg.clone()
        };
        assert!(compare_args(&short)
            .join(" ")
            .contains("--isolation short --neighbours memory"));
        let cost = CompareConfig {
            neighbours: None,
            surface: None,
            posture: false,
            ..cfg.clone()
        };
        assert!(compare_args(&cost)
            .join(" ")
            .ends_with("--isolation off --neighbours none"));
        let all = CompareConfig {
            modes: crate::modes::MODES.iter().map(|m| m.kind).collect(),
            ..cfg
        };
        assert_eq!(
            carried_peers(&all),
            [PeerRuntime::Crun, PeerRuntime::Runc, PeerRuntime::Runsc],
            "qemu-microvm is no container runtime (include_qemu carries it)"
        );
    }
}
