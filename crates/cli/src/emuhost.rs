//! `bench emuhost`: drive the emulated hardware-virtualisation host directly.

use std::process::ExitCode;

/// Arguments of `bench emuhost` (filled in by its issue).
#[derive(Debug, clap::Args)]
pub struct EmuhostCmd {}

pub fn run(_args: EmuhostCmd) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!("bench emuhost is not built yet"))
}
