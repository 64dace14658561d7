//! `bench compare`: argument parsing only; the work is in the libraries.

use std::process::ExitCode;

/// Arguments of `bench compare` (filled in by its issue).
#[derive(Debug, clap::Args)]
pub struct CompareArgs {}

pub fn run(_args: CompareArgs) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("bench compare is not built yet"))
}
