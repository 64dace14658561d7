//! The isolation half of `bench compare`: scenarios that measure what the
//! price of a container or a VM buys, on instances launched through the
//! same [`crate::modes`] launchers as the cost half, with the instruments
//! of `isolab-isolation`.
//!
//! - [`noisy`]: the noisy-neighbour scenario (tenant latency alone and next
//!   to a `cpu`, `memory` or `fork` neighbour of the same mode; the
//!   neighbour's fate).
//! - [`load`]: the tenant's request runs through the one HTTP probe.
//! - [`watch`]: a neighbour's cgroup counters, sampled while it runs.

pub mod load;
pub mod noisy;
pub mod watch;

pub use isolab_isolation::neighbour::NeighbourKind;
pub use noisy::{HostFacts, Limits, ModeNeighbours, NeighbourConfig};
