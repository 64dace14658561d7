//! `--host emulated`, the one place the CLI runs `bench` inside the
//! emulated hardware-virtualisation host (QEMU TCG + nested KVM): for
//! `bench vm run` (its output streamed) and `bench compare` (its JSON
//! report parsed and labelled by `isolab_harness::emulated`).

use isolab_emuhost::EMULATED_HOST_LABEL;
use isolab_harness::compare::{CompareConfig, CompareReport};
use isolab_harness::{emulated, Workload};

/// Seconds before the emulated host of one `bench vm run` is stopped.
const VM_RUN_TIMEOUT_S: u64 = 600;

/// `bench <args>` inside the emulated host, with the guest for `workload`
/// provisioned here first; every output line goes to `on_line`. Returns
/// the inner command's status.
pub fn run(
    workload: Workload,
    args: &[String],
    include_qemu: bool,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<i32> {
    emulated::provision_guest(workload)?;
    let host = emulated::prepare(include_qemu, vec![], VM_RUN_TIMEOUT_S)?;
    Ok(emulated::run_bench(&host, args, on_line)?.status)
}

/// [`run`] with `files` carried in too (a user's image's root disk and
/// spec initramfs).
pub fn run_with_files(
    workload: Workload,
    args: &[String],
    files: Vec<isolab_emuhost::FileMap>,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<i32> {
    emulated::provision_guest(workload)?;
    let host = emulated::prepare(false, vec![], VM_RUN_TIMEOUT_S)?;
    isolab_emuhost::interrupt::install_handlers()
        .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
    let outcome = isolab_emuhost::run_bench_inside_with(&host, args, files, &mut |l| {
        on_line(l.rsplit('\r').next().unwrap_or(l))
    })
    .map_err(isolab_harness::HarnessError::from)?;
    Ok(outcome.status)
}

/// `bench compare` inside the emulated host; its progress lines are echoed
/// on stderr.
pub fn compare(cfg: &CompareConfig) -> anyhow::Result<CompareReport> {
    eprintln!("bench: {EMULATED_HOST_LABEL}");
    Ok(emulated::compare(cfg, &mut |l| {
        eprintln!("  [emulated] {l}")
    })?)
}
