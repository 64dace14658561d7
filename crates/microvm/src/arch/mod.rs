//! Architecture facade: the only place that names a target architecture.
//! The rest of the crate uses `crate::arch::*` and stays arch-neutral.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
