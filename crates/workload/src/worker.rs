//! `workload worker`: CPU-bound work, SHA-256 chained over its own output.
//!
//! One operation is one SHA-256 of a 64-byte block; each output feeds the
//! next input, so no two operations can be skipped or run in parallel.
//! Ready is signalled just before the work starts.

use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::args::WorkerLimit;
use crate::{ready, result};

/// Operations between two clock reads in duration mode.
const BATCH: u64 = 1024;

/// One operation: the next block from the previous one.
fn step(block: &mut [u8; 64]) {
    let d = Sha256::digest(&block[..]);
    block[..32].copy_from_slice(&d);
    block[32..].copy_from_slice(&d);
}

/// Runs the work and returns the result object.
pub fn run(limit: WorkerLimit) -> Result<serde_json::Map<String, Value>, crate::WorkloadError> {
    let mut block = [0u8; 64];
    ready::signal()?;
    let start = Instant::now();
    let mut ops = 0u64;
    match limit {
        WorkerLimit::Count(n) => {
            while ops < n {
                step(&mut block);
                ops += 1;
            }
        }
        WorkerLimit::DurationMs(ms) => {
            let budget = std::time::Duration::from_millis(ms);
            while start.elapsed() < budget {
                for _ in 0..BATCH {
                    step(&mut block);
                }
                ops += BATCH;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = result::object("worker", true);
    out.insert("ops".into(), ops.into());
    out.insert("elapsed_ms".into(), (secs * 1000.0).into());
    out.insert(
        "ops_per_sec".into(),
        if secs > 0.0 { ops as f64 / secs } else { 0.0 }.into(),
    );
    // The digest proves the work was done (and keeps it from being elided).
    out.insert("digest".into(), hex(&block[..8]).into());
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_exact_and_deterministic() {
        let a = run(WorkerLimit::Count(100)).unwrap();
        let b = run(WorkerLimit::Count(100)).unwrap();
        assert_eq!(a["ops"], 100);
        assert_eq!(a["digest"], b["digest"]);
        assert_ne!(a["digest"], run(WorkerLimit::Count(101)).unwrap()["digest"]);
    }
}
