//! The microVM's guest artifacts: the guest kernel, built from Debian's
//! `linux-source-6.1` with a minimal configuration (tinyconfig plus the
//! fragments in `guest/kernel/config/`), and the provisioning that pairs it
//! with the guest initramfs. Everything is cached under the artifact cache
//! (docs/contracts.md); a cached call reads one small JSON file.
//!
//! Not here: the initramfs format (isolab-initramfs), the guest init
//! (isolab-init), booting (isolab-microvm).

mod builder;
mod cache;
mod fragments;
mod provision;

pub use builder::{
    build, lookup, BuildOptions, GuestKernel, KernelError, KernelMeta, DEFAULT_SOURCE, INSTALL_HINT,
};
pub use cache::{
    built_kernels, cache_root, cache_root_from, cached_guest, guest_initramfs_images, CacheError,
    GuestArtifacts,
};
pub use fragments::{config_hash, default_fragments, parse_config, verify, Dropped, Fragment};
pub use provision::{
    binary_dir, monitor_binary, provision, ProvisionError, ProvisionOptions, Provisioned, INIT_BIN,
    MONITOR_BIN, WORKLOAD_BIN,
};
