//! Containers on the host kernel: the workload in new pid, mount, uts, ipc,
//! net and cgroup namespaces (user namespace optional), in its own cgroup,
//! on an overlay of a shared read-only image, under a tiny PID 1.
//!
//! This crate owns the launch sequence ([`launcher`] on the host side,
//! `child` inside), the root filesystem ([`rootfs`], [`pivot`]), init
//! ([`init`]), the security profile ([`security`]: [`caps`], [`seccomp`]),
//! the launch phases ([`phases`]), instance state and cleanup
//! ([`instance`]), the image ([`image`]) and the OCI bundle writer for
//! runc/crun ([`oci`]). cgroups are `isolab-cgroups`; networking is
//! attached through [`NetworkHook`].
//!
//! Host-changing calls go through the [`Syscall`] seam.

mod bpf;
pub mod caps;
mod child;
pub mod config;
pub mod error;
pub mod image;
pub mod init;
pub mod instance;
pub mod launcher;
mod namespaces;
pub mod oci;
pub mod phases;
pub mod pivot;
mod plan;
mod process;
mod reader;
pub mod rootfs;
pub mod seccomp;
pub mod security;
mod sync;
pub mod syscall;

pub use config::{ContainerConfig, ImageProcess, NetworkHook};
pub use error::{ChildStep, ContainerError};
pub use isolab_cgroups::{parse_cpus, parse_size, CpuSet, Limits, Stats};
pub use launcher::{run, start, start_with, Outcome, Running};
pub use phases::LaunchPhases;
pub use security::{ProfileSummary, SecurityProfile};
pub use sync::ExitStatus;
pub use syscall::{LinuxSyscall, Syscall};
