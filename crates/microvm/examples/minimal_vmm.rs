//! The smallest monitor process over this library, for measuring what a
//! dedicated monitor binary costs (issue 16) until `isolab-vmm` exists:
//! no CLI framework, one VM, confined (seccomp on every thread, no
//! capabilities), the report as one JSON line on stdout.
//!
//! `minimal_vmm --kernel VMLINUX --initrd CPIO [--workload noop]
//!  [--memory-mib 128] [--vcpus 1] [--thp]`
//!
//! Exit status: the workload's; 1 when the VM failed; 2 for bad arguments;
//! 159 when a monitor thread made a forbidden syscall.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use isolab_microvm::config::HugePages;
use isolab_microvm::{RunHooks, VmConfig};

fn main() -> ExitCode {
    let started = Instant::now();
    let mut args = std::env::args().skip(1);
    let mut config = VmConfig::new("", "noop");
    config.seccomp = true;
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--kernel" => config.kernel = value().into(),
            "--initrd" => config.initrd = Some(value().into()),
            "--workload" => config.workload = value(),
            "--memory-mib" => config.memory_mib = value().parse().unwrap_or(0),
            "--vcpus" => config.vcpus = value().parse().unwrap_or(0),
            "--thp" => config.huge_pages = HugePages::Thp,
            other => {
                eprintln!("error: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    // Locked before the run: a confined thread may write but not open.
    let mut out = std::io::stdout().lock();
    match isolab_microvm::run(&config, started, RunHooks::default()) {
        Ok(report) => {
            let line = serde_json::to_string(&report).unwrap_or_default();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            ExitCode::from(report.exit_status.unwrap_or(1))
        }
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
