//! The instruments behind the isolation half of `bench compare`: what the
//! price of a container or a VM buys.
//!
//! - [`systrace`]: host system calls made by an instance's host-side
//!   processes and threads (ptrace tracer, own pass).
//! - [`hap`]: distinct host kernel functions executed on behalf of an
//!   instance (ftrace, the Horizontal Attack Profile method), only where the
//!   kernel is our own.
//! - [`posture`]: what the host-side processes hold over the host kernel,
//!   and what the workload holds over the kernel it talks to.
//! - [`interference`]: noisy-neighbour statistics over raw latency samples.
//! - [`neighbour`]: the neighbour's kind and its fate (throttled,
//!   OOM-killed, forks refused, guest OOM) from what was observed.
//! - [`reading`]: short sentences generated from measured numbers.
//!
//! This crate measures; it does not launch instances or generate load (the
//! harness does, through its launchers and its HTTP probe).

pub mod hap;
pub mod interference;
pub mod neighbour;
pub mod posture;
pub mod reading;
pub mod systrace;
