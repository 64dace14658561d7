//! x86_64 machine model: memory layout, boot data and initial vCPU state.

pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
