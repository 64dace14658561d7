//! Criterion micro-benchmarks live in `benches/micro.rs`; this crate has no library code.
