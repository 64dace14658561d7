//! Benchmark: VMM memory overhead and boot phases of `workload noop`.
//!
//! Boots the provisioned guest (artifact cache, docs/contracts.md) `RUNS`
//! times in this process and prints one JSON object per run plus a summary:
//! VMM overhead at ready (smaps RSS outside guest RAM, Firecracker's
//! method; goal <= 5 MiB, FC's published threshold), guest-touched memory,
//! and the boot phases. Run with `cargo bench -p isolab-microvm`.
//! Needs hardware KVM (or the emulated host); elsewhere it says why and exits 0.

use std::path::{Path, PathBuf};
use std::time::Instant;

use isolab_microvm::{host, RunHooks, VmConfig};

const RUNS: usize = 10;
const GOAL_KIB: u64 = 5 * 1024;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn main() {
    let kind = host::detect(Path::new("/"));
    if let Some(why) = kind.refusal() {
        println!("SKIPPED vmm_overhead: {why}");
        return;
    }
    let cached = isolab_testkit::cached_guest();
    let kernel = std::env::var_os("ISOLAB_GUEST_KERNEL")
        .map(PathBuf::from)
        .or_else(|| cached.as_ref().map(|g| g.vmlinux.clone()));
    let initrd = std::env::var_os("ISOLAB_GUEST_INITRD")
        .map(PathBuf::from)
        .or_else(|| cached.as_ref().map(|g| g.initramfs.clone()));
    let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
        println!("SKIPPED vmm_overhead: no guest kernel/initramfs: run `bench provision`");
        return;
    };
    let mut overhead = Vec::new();
    let mut ready = Vec::new();
    for run in 0..RUNS {
        let mut c = VmConfig::new(&kernel, "noop");
        c.initrd = Some(initrd.clone());
        match isolab_microvm::run(&c, Instant::now(), RunHooks::default()) {
            Ok(r) => {
                println!(
                    "{}",
                    serde_json::json!({"run": run, "phases": r.phases, "memory_at_ready": r.memory_at_ready, "exit_status": r.exit_status})
                );
                if let Some(m) = r.memory_at_ready {
                    overhead.push(m.vmm_overhead_kib as f64);
                }
                if let Some(t) = r.phases.start_to_ready_ms {
                    ready.push(t);
                }
            }
            Err(e) => {
                eprintln!("run {run} failed: {e:#?}");
                std::process::exit(1);
            }
        }
    }
    let m = median(overhead);
    println!(
        "{}",
        serde_json::json!({
            "summary": "vmm_overhead",
            "runs": RUNS,
            "median_vmm_overhead_kib": m,
            "median_start_to_ready_ms": median(ready),
            "goal_kib": GOAL_KIB,
            "within_goal": m.map(|k| k <= GOAL_KIB as f64),
        })
    );
}
