//! `isolab-microvm`: a minimal KVM monitor that boots a Linux guest kernel
//! with an initramfs and runs one workload in it, measuring where boot time
//! and memory go.
//!
//! Code map:
//! - [`builder`]: the boot sequence, one function per numbered step
//!   (mirrored in docs/design.md, "MicroVM boot sequence"), and [`run`];
//! - [`vstate`]: the KVM objects (system handle, VM, vCPUs, guest memory);
//! - [`arch`]: the x86_64 machine model (layout, GDT, page tables, CPUID,
//!   MSRs, zero page / PVH info, MP table);
//! - [`devices`]: COM1, i8042, the boot-marker device, the buses and the
//!   virtio-mmio slot layout;
//! - [`exits`]: pure VM-exit handling;
//! - [`loader`]: kernel and initramfs loading;
//! - [`host`]: which kind of KVM this host has;
//! - [`seccomp`]: per-thread seccomp filters and dropped capabilities;
//! - [`timing`] and [`memory_stats`]: what a run reports;
//! - [`smoke`]: a real-mode payload that runs even on PVM KVM.
//!
//! It does not build guest kernels or initramfs images (guest/), nor decide
//! what to benchmark (isolab-harness).

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exits;
pub mod host;
pub mod loader;
pub mod memory_stats;
pub mod seccomp;
pub mod smoke;
pub mod timing;
pub mod vstate;

pub use builder::{run, BuildError, RunHooks, VmReport};
pub use config::{Console, VmConfig};
pub use exits::StopReason;
pub use host::HostKind;
