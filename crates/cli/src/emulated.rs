//! `--host emulated` for `bench compare`: provision the guest artifacts here,
//! boot the emulated hardware-virtualisation host (QEMU TCG + nested KVM,
//! `isolab-emuhost`), run the same `bench compare` inside with JSON output,
//! and render its report here, labelled so no figure can be mistaken for a
//! hardware one.

use std::process::ExitCode;

use anyhow::Context;
use isolab_emuhost::bench::{bench_invocation, binary_dir};
use isolab_emuhost::{EmulatedHost, HostConfig, EMULATED_HOST_LABEL};
use isolab_harness::compare::CompareReport;
use isolab_harness::env::KvmKind;
use isolab_harness::report::Format;

use crate::compare::CompareArgs;
use crate::exit;

/// Build (or find cached) the guest kernel and initramfs on this host, so
/// the emulated host gets them as payload instead of building inside.
pub fn provision_guest(workload: &str) -> anyhow::Result<()> {
    let cache = isolab_guest_kernel::cache_root().map_err(|e| exit::host(e.to_string()))?;
    let bin_dir = isolab_guest_kernel::binary_dir()
        .ok_or_else(|| exit::host("cannot locate the bench executable's directory"))?;
    let opts = isolab_guest_kernel::ProvisionOptions::new(cache, &bin_dir, workload);
    isolab_guest_kernel::provision(&opts)
        .map_err(|e| exit::host(format!("{:#}", anyhow::Error::new(e))))?;
    Ok(())
}

/// Prepare the emulated host (cached after the first run).
pub fn prepare(include_qemu: bool) -> anyhow::Result<EmulatedHost> {
    let cfg = HostConfig {
        include_qemu,
        allow_install: true,
        timeout_s: 3000,
        ..HostConfig::default()
    };
    EmulatedHost::prepare(cfg).map_err(|e| {
        if e.is_host_problem() {
            exit::host(format!("{:#}", anyhow::Error::new(e)))
        } else {
            anyhow::Error::new(e).context("prepare the emulated host")
        }
    })
}

/// The inner `bench compare` arguments: the user's, with JSON output.
fn inner_args(a: &CompareArgs) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "compare".into(),
        "--workload".into(),
        a.workload.clone(),
        "--modes".into(),
        a.modes.join(","),
        "--peers".into(),
        if a.peers.is_empty() {
            "none".into()
        } else {
            a.peers.join(",")
        },
        "--runs".into(),
        a.runs.to_string(),
        "--warmup".into(),
        a.warmup.to_string(),
        "--requests".into(),
        a.requests.to_string(),
        "--ready-timeout".into(),
        a.ready_timeout.to_string(),
        "--format".into(),
        "json".into(),
    ];
    if a.density {
        v.extend([
            "--density".into(),
            "--budget".into(),
            a.budget.clone(),
            "--max-instances".into(),
            a.max_instances.to_string(),
        ]);
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

/// Run `bench <args>` inside with progress bars off (the console is a
/// terminal to indicatif, but nobody watches it); collect the output lines,
/// echoing the non-report ones to stderr as progress.
pub fn run_inside(
    host: &EmulatedHost,
    args: &[String],
    lines: &mut Vec<String>,
) -> anyhow::Result<isolab_emuhost::Outcome> {
    let cache = isolab_guest_kernel::cache_root().map_err(|e| exit::host(e.to_string()))?;
    let bins = binary_dir().map_err(|e| exit::host(e.to_string()))?;
    let mut inv = bench_invocation(args, &bins, &cache).map_err(|e| exit::host(e.to_string()))?;
    inv.env.push(("ISOLAB_PROGRESS".into(), "0".into()));
    let mut in_report = false;
    host.run(&inv, &mut |l| {
        let l = l.trim_end_matches(['\r', '\n']);
        let l = l.rsplit('\r').next().unwrap_or(l);
        if l.trim_end() == "{" {
            in_report = true;
        }
        if !in_report {
            eprintln!("  [emulated] {l}");
        }
        if l.starts_with('}') {
            in_report = false;
        }
        lines.push(l.to_string());
    })
    .context("run bench inside the emulated host")
}

pub fn compare(args: &CompareArgs, format: Format) -> anyhow::Result<ExitCode> {
    let mut lines = vec![];
    eprintln!("bench: {EMULATED_HOST_LABEL}");
    provision_guest(&args.workload)?;
    let wants_qemu = args.peers.iter().any(|p| p.trim().starts_with("qemu"));
    let host = prepare(wants_qemu)?;
    let outcome = run_inside(&host, &inner_args(args), &mut lines)?;
    if let Ok(p) = std::env::var("ISOLAB_EMU_LOG") {
        let _ = std::fs::write(p, lines.join("\n"));
    }
    let json = extract_json(&lines).with_context(|| {
        format!(
            "the emulated host's bench compare printed no report (exit {})",
            outcome.status
        )
    })?;
    let mut report: CompareReport =
        serde_json::from_str(&json).context("parse the emulated host's report")?;
    report.environment.label = Some(EMULATED_HOST_LABEL.into());
    report.environment.kvm = KvmKind::Emulated;
    crate::compare::emit(&report, format, args.out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
