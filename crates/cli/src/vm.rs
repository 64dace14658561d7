//! `bench vm`: argument parsing only; the work is in the libraries.

use std::process::ExitCode;

/// Arguments of `bench vm` (filled in by its issue).
#[derive(Debug, clap::Args)]
pub struct VmCmd {}

pub fn run(_args: VmCmd) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("bench vm is not built yet"))
}
