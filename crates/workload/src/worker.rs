//! `workload worker`: CPU-bound work, SHA-256 chained over its own output.
//!
//! One operation is one SHA-256 of a 64-byte block; each output feeds the
//! next input, so no two operations can be skipped or run in parallel.
//! Ready is signalled just before the work starts. SIGTERM or SIGINT ends
//! the work early (checked between batches) with the result line as usual,
//! `stopped` naming the signal: a worker that is PID 1 of a PID namespace
//! (runc's container) would otherwise ignore SIGTERM, whose default action
//! the kernel does not apply to an init, and be stopped only by SIGKILL.

use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::args::WorkerLimit;
use crate::{ready, result, signals};

/// Operations between two clock reads in duration mode, and between two
/// looks at the stop flag.
const BATCH: u64 = 1024;

/// One operation: the next block from the previous one.
fn step(block: &mut [u8; 64]) {
    let d = Sha256::digest(&block[..]);
    block[..32].copy_from_slice(&d);
    block[32..].copy_from_slice(&d);
}

/// One chain of operations under `limit`, from `start`; its count and
/// final block.
fn chain(limit: WorkerLimit, start: Instant) -> (u64, [u8; 64]) {
    let stop = || signals::term_seen().is_some();
    let mut block = [0u8; 64];
    let mut ops = 0u64;
    match limit {
        WorkerLimit::Count(n) => {
            while ops < n {
                step(&mut block);
                ops += 1;
                if ops % BATCH == 0 && stop() {
                    break;
                }
            }
        }
        WorkerLimit::DurationMs(ms) => {
            let budget = std::time::Duration::from_millis(ms);
            while start.elapsed() < budget && !stop() {
                for _ in 0..BATCH {
                    step(&mut block);
                }
                ops += BATCH;
            }
        }
    }
    (ops, block)
}

/// Runs the work on `threads` threads (each its own chain under `limit`)
/// and returns the result object; `ops` is the sum, the digest the first
/// chain's.
pub fn run(
    limit: WorkerLimit,
    threads: u32,
) -> Result<serde_json::Map<String, Value>, crate::WorkloadError> {
    // A handler, not a waiter thread: the worker keeps exactly `threads`
    // threads (a container's pids.current counts each).
    signals::flag_on_term()?;
    ready::signal()?;
    let start = Instant::now();
    let (ops, block) = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads.max(1))
            .map(|_| s.spawn(move || chain(limit, start).0))
            .collect();
        let (mut ops, block) = chain(limit, start);
        for t in others {
            ops += t.join().unwrap_or(0);
        }
        (ops, block)
    });
    let secs = start.elapsed().as_secs_f64();
    let mut out = result::object("worker", true);
    out.insert("ops".into(), ops.into());
    out.insert("threads".into(), threads.into());
    out.insert("elapsed_ms".into(), (secs * 1000.0).into());
    out.insert(
        "ops_per_sec".into(),
        if secs > 0.0 { ops as f64 / secs } else { 0.0 }.into(),
    );
    // The digest proves the work was done (and keeps it from being elided).
    out.insert("digest".into(), hex(&block[..8]).into());
    let sig = signals::term_seen();
    out.insert(
        "stopped".into(),
        sig.map_or(Value::Null, |s| Value::from(s.as_str())),
    );
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
        let a = run(WorkerLimit::Count(100), 1).unwrap();
        let b = run(WorkerLimit::Count(100), 1).unwrap();
        assert_eq!(a["ops"], 100);
        assert_eq!(a["digest"], b["digest"]);
        assert_ne!(
            a["digest"],
            run(WorkerLimit::Count(101), 1).unwrap()["digest"]
        );
        let t = run(WorkerLimit::Count(100), 3).unwrap();
        assert_eq!(
            (t["ops"].as_u64(), t["threads"].as_u64()),
            (Some(300), Some(3))
        );
        assert_eq!(t["digest"], a["digest"], "every chain is the same chain");
    }
}
