//! `bench container`: argument parsing only; the work is in the libraries.

use std::process::ExitCode;

/// Arguments of `bench container` (filled in by its issue).
#[derive(Debug, clap::Args)]
pub struct ContainerCmd {}

pub fn run(_args: ContainerCmd) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("bench container is not built yet"))
}
