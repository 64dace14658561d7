//! `bench demo`: argument parsing only; the work is in the libraries.

use std::process::ExitCode;

/// Arguments of `bench demo` (filled in by its issue).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("bench demo is not built yet"))
}
