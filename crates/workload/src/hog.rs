//! `workload hog`: grows its resident memory step by step until it is
//! killed (a memory limit doing its job) or reaches its cap.
//!
//! The cap is `--max-mib` (default 512), never above
//! [`HOG_HARD_CAP_MIB`](crate::args::HOG_HARD_CAP_MIB), so a hog run without a
//! limit cannot take the host down. Every step writes every page, then prints
//! `hog: <total> MiB` to stderr. Reaching the cap is a normal end (ok true,
//! `capped` true); an allocation the allocator refuses ends with ok false.

use serde_json::Value;

use crate::{memory, ready, result, status};

/// Runs the hog and returns the result object (if it is not killed first).
pub fn run(
    step_mib: u64,
    max_mib: u64,
) -> Result<serde_json::Map<String, Value>, crate::WorkloadError> {
    ready::signal()?;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    let mut refused = false;
    while total < max_mib {
        let step = step_mib.min(max_mib - total);
        match memory::try_touched(step * memory::MIB) {
            Some(buf) => {
                held.push(buf);
                total += step;
                eprintln!("hog: {total} MiB");
            }
            None => {
                eprintln!("hog: allocation of {step} MiB refused at {total} MiB");
                refused = true;
                break;
            }
        }
    }
    let mut out = result::object("hog", !refused);
    out.insert("mib".into(), total.into());
    out.insert("capped".into(), (!refused).into());
    out.insert("max_mib".into(), max_mib.into());
    out.insert("rss_kib".into(), status::self_rss_kib().into());
    std::hint::black_box(&held);
    Ok(out)
}
