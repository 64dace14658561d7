//! The emulated hardware-virtualisation host: a Debian cloud kernel booted
//! under QEMU's TCG with emulated AMD SVM and nested paging, so `kvm_amd`
//! loads inside and `/dev/kvm` works even where the real host has no
//! VT-x/AMD-V or only PVM. It also is a pure cgroup v2 host.
//!
//! This crate owns provisioning (apt download, unpack, cache), the outer
//! initramfs (busybox, modules, generated `/init`, payload files), booting
//! QEMU, streaming the console and returning the command's status. It does
//! not know what the command does; `bench` is just one command
//! ([`bench::run_bench_inside`]).
//!
//! ```no_run
//! use isolab_emuhost::{EmulatedHost, HostConfig, Invocation};
//! let host = EmulatedHost::prepare(HostConfig::default())?;
//! let inv = Invocation { command: vec!["uname".into(), "-r".into()], ..Default::default() };
//! let outcome = host.run(&inv, &mut |line| println!("{line}"))?;
//! assert_eq!(outcome.status, 0);
//! # Ok::<(), isolab_emuhost::EmuhostError>(())
//! ```
//!
//! Timings inside are not comparable to hardware: every figure taken there
//! is shown with [`EMULATED_HOST_LABEL`].

pub mod bench;
pub mod cache;
mod elf;
pub mod image;
pub mod info;
pub mod interrupt;
pub mod markers;
pub mod modules;
pub mod peers;
pub mod provision;
pub mod runner;

pub use bench::{run_bench_inside, run_bench_inside_with};
pub use image::FileMap;
pub use peers::PeerRuntime;
pub use runner::{EmulatedHost, HostConfig, Invocation, Outcome, RunError};

/// The label every figure measured inside the emulated host carries.
pub const EMULATED_HOST_LABEL: &str = "emulated host: timings not comparable to hardware";

/// Any failure of the emulated host, by stage.
#[derive(Debug, thiserror::Error)]
pub enum EmuhostError {
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Run(#[from] runner::RunError),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    #[error(transparent)]
    Peers(#[from] peers::PeerError),
}

impl EmuhostError {
    /// True when the host lacks something (a package, an apt source, a
    /// built binary), as opposed to a failed run.
    pub fn is_host(&self) -> bool {
        match self {
            Self::Provision(e) => e.is_host(),
            Self::Bench(bench::BenchError::MissingBinary { .. }) | Self::Cache(_) => true,
            Self::Peers(peers::PeerError::NotInstalled { .. }) => true,
            Self::Peers(peers::PeerError::Install { source, .. }) => source.is_host(),
            _ => false,
        }
    }

    /// True when a user-given value was wrong.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Run(RunError::Config { .. } | RunError::NoCommand)
                | Self::Image(image::ImageError::BadGuestPath { .. })
        )
    }
}
