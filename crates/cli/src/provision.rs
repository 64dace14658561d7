//! `bench provision`: argument parsing only; the work is in the libraries.

use std::process::ExitCode;

/// Arguments of `bench provision` (filled in by its issue).
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {}

pub fn run(_args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("bench provision is not built yet"))
}
