//! Measures launch -> ready of one workload mode as a plain process and as
//! our container, interleaved in the same run, and prints the container's
//! overhead (container p50 minus process p50) with the median of each
//! launch phase; then runc/crun on the equivalent OCI bundle if asked.
//! Root required:
//!
//! `cargo run --release -p isolab-container --example launch_timing -- [N] [WORKLOAD_BIN] [--privileged] [--peers]`
//!
//! Not a test: numbers depend on the machine. The benchmark harness owns
//! the real comparison; this is the by-hand check while tuning the launch.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use isolab_container::oci::{run_peer, write_bundle};
use isolab_container::{ContainerConfig, LaunchPhases};

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// Spawn -> ready byte of the workload as a plain process (as the harness's
/// process mode measures it).
fn process_ready_us(bin: &PathBuf, mode: &str) -> u64 {
    let (r, w) = nix::unistd::pipe().unwrap();
    let wfd = w.as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.arg(mode)
        .env("ISOLAB_READY_FD", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: only dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    drop(w);
    let mut f = std::fs::File::from(r);
    let mut b = [0u8; 1];
    let _ = f.read(&mut b);
    let us = t0.elapsed().as_micros() as u64;
    child.wait().unwrap();
    us
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("--"))
        .collect();
    let mut pos = args.iter().filter(|a| !a.starts_with("--"));
    let n: usize = pos.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let bin: PathBuf = pos.next().map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("workload")
    });
    let mut cfg = ContainerConfig::new(&bin, "noop");
    cfg.privileged = flags.contains(&"--privileged");
    cfg.quiet_stderr = true;
    println!("profile: {}", cfg.security().summary().description);

    // Warm-up: the image, the compiled filter, page cache.
    for _ in 0..3 {
        isolab_container::run(&cfg).expect("isolab run");
        process_ready_us(&bin, "noop");
    }
    let mut ours = Vec::new();
    let mut procs = Vec::new();
    let mut phases: Vec<LaunchPhases> = Vec::new();
    for _ in 0..n {
        procs.push(process_ready_us(&bin, "noop"));
        let o = isolab_container::run(&cfg).expect("isolab run");
        ours.push(o.launch_to_ready_us.expect("noop signals ready"));
        phases.push(o.phases);
    }
    let (c50, p50) = (pct(&mut ours, 0.5), pct(&mut procs, 0.5));
    println!(
        "process  ready p50 {p50:.2} ms; container ready p50 {c50:.2} ms p90 {:.2} ms; overhead {:.2} ms (n={n})",
        pct(&mut ours, 0.9),
        c50 - p50
    );
    let names = phases[0].named();
    for (i, (name, _)) in names.iter().enumerate() {
        let mut v: Vec<u64> = phases.iter().map(|p| p.named()[i].1).collect();
        println!("  {name:15} p50 {:7.3} ms", pct(&mut v, 0.5));
    }

    if !flags.contains(&"--peers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for runtime in ["runc", "crun"] {
        let state = dir.path().join(format!("{runtime}-state"));
        let root = ["--root", state.to_str().unwrap()];
        let mut ready = Vec::new();
        let mut refused = None;
        for i in 0..n {
            let id = format!("timing-{runtime}-{}-{i}", std::process::id());
            let bundle = write_bundle(&dir.path().join(&id), &cfg, &id).unwrap();
            match run_peer(std::path::Path::new(runtime), &root, &bundle) {
                Ok(o) => ready.extend(o.launch_to_ready_us),
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
            None => println!(
                "{runtime:7} launch->ready p50 {:.2} ms (n={n}); p50 ratio {runtime}/isolab {:.2}",
                pct(&mut ready, 0.5),
                pct(&mut ready, 0.5) / c50
            ),
        }
    }
}
