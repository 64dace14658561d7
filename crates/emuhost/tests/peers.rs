//! The container peers (crun, runc, gVisor's runsc) carried into the
//! emulated host (`HostConfig::peers`) run our own OCI bundle there, on its
//! pure cgroup v2, and leave nothing behind. crun refuses this project's
//! hybrid-cgroup hosts, so this is where it can be measured at all.
//!
//! One boot: outside, the test prepares the emulated host with the three
//! runtimes and reruns this test binary inside (strict mode there); inside,
//! it runs every check and reports every peer that failed with its own
//! error line before failing.
//!
//! Probe: QEMU, a static busybox, the cloud kernel (cached or fetched with
//! apt), `crun`, `runc`, `runsc` on this host and the built `workload`
//! (`cargo build -p isolab-workload`). Without them the test prints
//! `SKIPPED`, or fails when `CI=true` / `ISOLAB_STRICT=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use isolab_container::oci::{run_peer, write_bundle, Bundle};
use isolab_container::ContainerConfig;
use isolab_emuhost::peers::GUEST_PEER_DIR;
use isolab_emuhost::{EmulatedHost, HostConfig, PeerRuntime};
use isolab_testkit::{missing_binary, require};

const TEST: &str = "crun_runc_and_runsc_run_our_bundle_on_the_emulated_hosts_cgroup_v2";
/// This test binary's path inside.
const GUEST_WORKLOAD: &str = "/opt/isolab/bin/workload";

fn in_emulated_host() -> bool {
    std::env::var("ISOLAB_EMULATED_HOST").is_ok_and(|v| v == "1")
}

#[test]
fn crun_runc_and_runsc_run_our_bundle_on_the_emulated_hosts_cgroup_v2() {
    if in_emulated_host() {
        inside();
    } else {
        outside();
    }
}

/// Boots the emulated host with the peers and this binary; passes when the
/// test passed in there.
fn outside() {
    if !require(TEST, missing_binary("workload", "isolab-workload")) {
        return;
    }
    let config = HostConfig {
        peers: PeerRuntime::ALL.to_vec(),
        ..HostConfig::default()
    };
    let host = match EmulatedHost::prepare(config) {
        Ok(h) => h,
        Err(e) => {
            require(
                TEST,
                Some(format!("emulated host with peers unavailable: {e}")),
            );
            return;
        }
    };
    for p in host.peers() {
        eprintln!(
            "{TEST}: carrying {} -> {} ({} bytes, {} libraries)",
            p.host.display(),
            p.guest,
            p.binary_bytes,
            p.libraries.len()
        );
    }
    eprintln!(
        "{TEST}: peer payload {:.1} MiB per boot",
        host.bundle_bytes() as f64 / (1 << 20) as f64
    );
    let rerun = isolab_testkit::Rerun {
        args: vec!["--exact".into(), TEST.into()],
        env: vec![("ISOLAB_WORKLOAD_BIN".into(), GUEST_WORKLOAD.into())],
        files: vec![(isolab_testkit::binary("workload"), GUEST_WORKLOAD.into())],
        passed: 1,
    };
    let out = isolab_testkit::rerun_in_emulated_host(TEST, &host, rerun);
    for l in out.lines() {
        eprintln!("inner: {l}");
    }
}

/// What one peer did, or its own error.
type Check = Result<String, String>;

fn inside() {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .expect("the emulated host mounts cgroup2 at /sys/fs/cgroup");
    for c in ["cpu", "memory", "pids"] {
        assert!(v2.split_whitespace().any(|w| w == c), "no {c} in {v2:?}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.split(' ').nth(2) == Some("cgroup")),
        "a pure cgroup v2 host has no v1 hierarchy:\n{mounts}"
    );
    let workload = isolab_testkit::binary("workload");
    let work = tempfile::tempdir().unwrap();
    let mut checks: Vec<(PeerRuntime, Check)> = Vec::new();
    for rt in PeerRuntime::ALL {
        let path = PathBuf::from(rt.guest_path());
        assert!(
            path.is_file(),
            "{} not carried into {GUEST_PEER_DIR}",
            rt.command()
        );
        let check = match rt {
            PeerRuntime::Runsc => runsc(&path, &workload, work.path()),
            _ => oci(rt, &path, &workload, work.path()),
        };
        match &check {
            Ok(s) => eprintln!("peer {}: {s}", rt.command()),
            Err(e) => eprintln!("peer {} FAILED: {e}", rt.command()),
        }
        checks.push((rt, check));
    }
    // Inside the emulated host nothing else runs: the shared parent must be
    // gone or empty once every peer is done.
    let parent = Path::new("/sys/fs/cgroup/isolab");
    let children: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|(rt, c)| c.as_ref().err().map(|e| format!("{}: {e}", rt.command())))
        .collect();
    assert!(failed.is_empty(), "peers failed:\n{}", failed.join("\n"));
    assert!(children.is_empty(), "cgroups left: {children:?}");
}

/// The container config every peer gets: the noop workload under memory,
/// CPU and pids limits, so the runtime must use the delegated controllers
/// (a runtime that cannot write `memory.max`/`pids.max`/`cpu.max` fails).
fn config(workload: &Path, state: &Path) -> ContainerConfig {
    let mut c = ContainerConfig::new(workload, "noop");
    c.limits.memory_bytes = Some(64 << 20);
    c.limits.pids = Some(64);
    c.limits.cpus = Some(0.5);
    c.state_dir = state.to_path_buf();
    c
}

/// What a runtime left of instance `id`: its cgroup, its state, mounts and
/// processes naming it.
fn leftovers(id: &str, runtime_root: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let cg = Path::new("/sys/fs/cgroup/isolab").join(id);
    if cg.exists() {
        left.push(format!("cgroup {}", cg.display()));
    }
    let state = runtime_root.join(id);
    if state.exists() {
        left.push(format!("runtime state {}", state.display()));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(id))
            .map(|l| format!("mount {l}")),
    );
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(id) {
                left.push(format!("process {name}: {cmd}"));
            }
        }
    }
    left
}

/// crun or runc exactly as the harness runs them: `run --bundle DIR
/// --preserve-fds 1 ID` with the ready pipe at fd 3.
fn oci(rt: PeerRuntime, runtime: &Path, workload: &Path, work: &Path) -> Check {
    let name = rt.command();
    let id = format!("emupeers-{name}-{}", std::process::id());
    let root = work.join(format!("{name}-root"));
    let cfg = config(workload, &work.join("state"));
    let bundle = write_bundle(&work.join("bundles").join(&id), &cfg, &id)
        .map_err(|e| format!("cannot write the bundle: {e}"))?;
    let result = run_peer(runtime, &["--root", root.to_str().unwrap()], &bundle);
    let _ = bundle.remove();
    let left = leftovers(&id, &root);
    let o = result.map_err(|e| with_leftovers(e.to_string(), &left))?;
    if o.exit_code != 0 || o.launch_to_ready_us.is_none() {
        let e = format!(
            "exit {}, ready {:?}; stderr: {}",
            o.exit_code,
            o.launch_to_ready_us,
            o.stderr.lines().last().unwrap_or("(none)")
        );
        return Err(with_leftovers(e, &left));
    }
    noop_result(&o.stdout).map_err(|e| with_leftovers(e, &left))?;
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(format!(
        "ready {} us, exited {} us after launch (emulated host)",
        o.launch_to_ready_us.unwrap_or(0),
        o.launch_to_exit_us
    ))
}

/// A failure, and what the runtime left behind if anything.
fn with_leftovers(e: String, left: &[String]) -> String {
    if left.is_empty() {
        e
    } else {
        format!("{e}; and left behind: {left:?}")
    }
}

fn noop_result(stdout: &str) -> Result<(), String> {
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|_| format!("no result line from noop in {stdout:?}"))?;
    if v["workload"] == "noop" && v["ok"] == true {
        Ok(())
    } else {
        Err(format!("noop reported {line}"))
    }
}

/// gVisor's runtime on the same bundle, `--platform=ptrace
/// --network=none`. `runsc run` has no `--preserve-fds`, so the bundle's
/// `ISOLAB_READY_FD` is removed (the workload refuses a ready fd that is
/// not open) and the run is judged by its exit and result line. The pids
/// limit counts the sandbox's own threads and ptrace stubs (about 30 for
/// one workload process on this 1-vCPU host), so 64 leaves the workload
/// less room than under crun or runc.
fn runsc(runtime: &Path, workload: &Path, work: &Path) -> Check {
    let id = format!("emupeers-runsc-{}", std::process::id());
    let root = work.join("runsc-root");
    let panic_log = work.join("runsc-panic.log");
    let cfg = config(workload, &work.join("state"));
    let bundle = write_bundle(&work.join("bundles").join(&id), &cfg, &id)
        .map_err(|e| format!("cannot write the bundle: {e}"))?;
    drop_ready_fd(&bundle)?;
    let t0 = Instant::now();
    let out = Command::new(runtime)
        .arg("--root")
        .arg(&root)
        .args(["--platform=ptrace", "--network=none"])
        .arg("--panic-log")
        .arg(&panic_log)
        .args(["run", "--bundle"])
        .arg(&bundle.dir)
        .arg(&id)
        .stdin(Stdio::null())
        .output();
    let elapsed = t0.elapsed();
    let _ = bundle.remove();
    let out = out.map_err(|e| format!("cannot start {}: {e}", runtime.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = leftovers(&id, &root);
    if !out.status.success() {
        let panic = std::fs::read_to_string(&panic_log).unwrap_or_default();
        let reason = panic
            .lines()
            .find(|l| l.starts_with("panic:") || l.starts_with("fatal"))
            .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("(no error output)");
        return Err(with_leftovers(format!("{}: {reason}", out.status), &left));
    }
    noop_result(&stdout).map_err(|e| with_leftovers(e, &left))?;
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(format!(
        "exited 0 after {} us (no ready fd in gVisor; emulated host)",
        elapsed.as_micros()
    ))
}

/// Removes `ISOLAB_READY_FD` from the bundle's process environment.
fn drop_ready_fd(bundle: &Bundle) -> Result<(), String> {
    let file = bundle.dir.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if let Some(env) = spec["process"]["env"].as_array_mut() {
        env.retain(|v| !v.as_str().unwrap_or("").starts_with("ISOLAB_READY_FD="));
    }
    std::fs::write(&file, spec.to_string()).map_err(|e| e.to_string())
}
