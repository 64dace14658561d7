//! Measures launch -> ready of `workload noop` with our launcher and with
//! runc/crun on the equivalent OCI bundle, N runs each (root required):
//!
//! `cargo run -p isolab-container --example launch_timing -- [N] [WORKLOAD_BIN]`
//!
//! Not a test: numbers depend on the machine. The benchmark harness owns
//! the real comparison; this is the by-hand check.

use std::path::PathBuf;

use isolab_container::oci::{run_peer, write_bundle};
use isolab_container::ContainerConfig;

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let bin: PathBuf = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("workload")
    });
    let cfg = ContainerConfig::new(&bin, "noop");

    let mut ours: Vec<u64> = Vec::new();
    let mut ours_exit = Vec::new();
    for _ in 0..n {
        let o = isolab_container::run(&cfg).expect("isolab run");
        ours.push(o.launch_to_ready_us.expect("noop signals ready"));
        ours_exit.push(o.launch_to_exit_us);
    }
    let ours_p50 = pct(&mut ours, 0.5);
    println!(
        "isolab  launch->ready p50 {:.2} ms p90 {:.2} ms; launch->exit p50 {:.2} ms  (n={n})",
        ours_p50,
        pct(&mut ours, 0.9),
        pct(&mut ours_exit, 0.5)
    );

    let dir = tempfile::tempdir().unwrap();
    for runtime in ["runc", "crun"] {
        let state = dir.path().join(format!("{runtime}-state"));
        let root = ["--root", state.to_str().unwrap()];
        let mut ready = Vec::new();
        let mut exit = Vec::new();
        let mut refused = None;
        for i in 0..n {
            let id = format!("timing-{runtime}-{}-{i}", std::process::id());
            let bundle = write_bundle(&dir.path().join(&id), &cfg, &id).unwrap();
            match run_peer(std::path::Path::new(runtime), &root, &bundle) {
                Ok(o) => {
                    ready.extend(o.launch_to_ready_us);
                    exit.push(o.launch_to_exit_us);
                }
                Err(e) => {
                    refused = Some(e.to_string());
                    let _ = bundle.remove();
                    break;
                }
            }
            let _ = bundle.remove();
        }
        match refused {
            Some(e) => println!("{runtime:7} did not run: {e}"),
            None => {
                let p50 = pct(&mut ready, 0.5);
                println!(
                    "{runtime:7} launch->ready p50 {:.2} ms p90 {:.2} ms; launch->exit p50 {:.2} ms  (n={n}); p50 ratio {runtime}/isolab {:.2}",
                    p50,
                    pct(&mut ready, 0.9),
                    pct(&mut exit, 0.5),
                    p50 / ours_p50
                )
            }
        }
    }
}
