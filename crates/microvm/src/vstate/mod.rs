//! KVM objects the monitor owns, one module per kernel object: the KVM
//! system handle, the VM, its vCPUs and guest memory.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
