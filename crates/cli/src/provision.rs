//! `bench provision`: argument parsing and presentation only. The guest
//! artifacts come from `isolab_guest_kernel::provision` (the harness calls
//! the same function on the first `bench compare`); the emulated host's
//! kernel from `isolab_emuhost::provision::ensure_kernel`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use isolab_guest_kernel::{binary_dir, cache_root, provision, ProvisionOptions};
use isolab_harness::Workload;

use crate::exit;

/// Build or find the guest kernel and the guest initramfs (cached).
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Workload the microVM will run (noop, api, worker, cache, hog, forkloop, probe, knob).
    #[arg(long, default_value = "noop", value_parser = crate::args::workload)]
    pub workload: Workload,
    /// Kernel source tarball (Debian's linux-source-6.1 package).
    #[arg(long, value_name = "TARBALL", default_value = isolab_guest_kernel::DEFAULT_SOURCE)]
    pub source: PathBuf,
    /// Directory holding the static `isolab-init` and `workload` binaries
    /// (default: next to `bench`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// No spinner while the kernel builds.
    #[arg(long)]
    pub quiet: bool,
    /// Only the guest kernel and initramfs, not the emulated host's kernel
    /// (which `apt-get download`s Debian's cloud kernel on first use).
    #[arg(long)]
    pub guest_only: bool,
}

pub fn run(args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    // Only needed when no kernel is cached, so a missing one is fine here;
    // a FIFO or directory would block or fail late.
    crate::paths::optional_input_file("--source", &args.source)?;
    if let Some(d) = &args.bin_dir {
        if !d.is_dir() {
            return Err(exit::usage(format!(
                "--bin-dir {}: not an existing directory",
                d.display()
            )));
        }
    }
    let root = cache_root().map_err(|e| exit::host(e.to_string()))?;
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => binary_dir().context("cannot find the directory of the bench executable")?,
    };
    let mut opts = ProvisionOptions::new(root, &bin_dir, args.workload);
    opts.kernel.source = args.source;
    opts.kernel.progress = !args.quiet;
    let p = provision(&opts)?;
    let k = &p.kernel;
    let state = |cached: bool| if cached { "cached" } else { "built" };
    let size = std::fs::metadata(&p.initramfs).map_or(0, |m| m.len());
    println!(
        "guest kernel  {} ({}, config {})",
        k.meta.kernel_version,
        state(k.cached),
        k.meta.config_hash
    );
    println!("  vmlinux     {}", k.vmlinux.display());
    println!("  bzImage     {}", k.bz_image.display());
    println!("  config      {}", k.config.display());
    println!(
        "initramfs     {} ({}, {:.1} MiB)",
        p.initramfs.display(),
        state(p.initramfs_cached),
        size as f64 / (1024.0 * 1024.0)
    );
    println!("guest params  {}", p.guest_params);
    if !args.guest_only {
        emulated_host()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The emulated host's kernel and modules (cached after the first run).
fn emulated_host() -> anyhow::Result<()> {
    use isolab_emuhost::{cache::EmuhostCache, provision::ensure_kernel};
    let cache = EmuhostCache::from_env().map_err(|e| exit::host(e.to_string()))?;
    let was_cached = isolab_emuhost::provision::cached_kernel(&cache)
        .ok()
        .flatten()
        .is_some();
    let k = ensure_kernel(&cache, false)
        .map_err(isolab_emuhost::EmuhostError::from)
        .context("emulated host")?;
    println!(
        "emulated host {} ({}, {} {})",
        k.meta.release,
        if was_cached { "cached" } else { "downloaded" },
        k.meta.package,
        k.meta.version
    );
    println!("  vmlinuz     {}", k.vmlinuz.display());
    Ok(())
}
