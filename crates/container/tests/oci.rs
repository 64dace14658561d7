//! Privileged tests: the production runtimes run our bundle for real.
//! Without root, the workload binary or the runtime, each test prints
//! `SKIPPED <test>: <reason>`; with `CI=true` or `ISOLAB_STRICT=1` it fails.

use std::path::PathBuf;

use isolab_container::oci::{run_peer, write_bundle, OciError};
use isolab_container::ContainerConfig;

fn require(test: &str, runtime: &str) -> Option<PathBuf> {
    let missing = isolab_testkit::first_missing([
        isolab_testkit::missing_root(),
        isolab_testkit::missing_binary("workload", "isolab-workload"),
        isolab_testkit::missing_command(runtime, runtime),
    ]);
    isolab_testkit::require(test, missing)
        .then(|| isolab_testkit::which(runtime))
        .flatten()
}

fn assert_no_cgroup(id: &str) {
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = ctrl.path().join("isolab").join(id);
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn runc_runs_the_same_workload_from_our_bundle() {
    let Some(runc) = require("runc_runs_the_same_workload_from_our_bundle", "runc") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = ContainerConfig::new(isolab_testkit::binary("workload"), "probe");
    c.hostname = Some("oci-box".into());
    c.limits.pids = Some(64);
    c.limits.memory_bytes = Some(64 << 20);
    let id = format!("oci-runc-{}", std::process::id());
    let bundle = write_bundle(&dir.path().join("bundle"), &c, &id).unwrap();
    let state = dir.path().join("runc-state");
    let root = ["--root", state.to_str().unwrap()];
    let o = run_peer(&runc, &root, &bundle).unwrap_or_else(|e| panic!("runc: {e}"));
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert!(
        o.launch_to_ready_us.is_some(),
        "the ready fd reached the workload as fd 3"
    );
    let line = o.stdout.lines().last().unwrap();
    let r: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(r["hostname"], "oci-box");
    assert_eq!(r["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(r["pid"], 1, "runc runs the workload as PID 1");
    assert_no_cgroup(&id);
    bundle.remove().unwrap();
}

#[test]
fn crun_runs_or_its_own_refusal_is_surfaced() {
    let Some(crun) = require("crun_runs_or_its_own_refusal_is_surfaced", "crun") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = ContainerConfig::new(isolab_testkit::binary("workload"), "noop");
    let id = format!("oci-crun-{}", std::process::id());
    let bundle = write_bundle(&dir.path().join("bundle"), &c, &id).unwrap();
    let state = dir.path().join("crun-state");
    let root = ["--root", state.to_str().unwrap()];
    match run_peer(&crun, &root, &bundle) {
        Ok(o) => {
            assert_eq!(o.exit_code, 0, "{o:?}");
            assert!(o.launch_to_ready_us.is_some());
        }
        Err(e @ OciError::Refused { .. }) => {
            // crun 1.8 on a hybrid host: its own words reach the user.
            let msg = e.to_string();
            println!("crun refused: {msg}");
            assert!(msg.starts_with("crun failed"), "{msg}");
            let OciError::Refused { stderr, .. } = e else {
                unreachable!()
            };
            assert!(!stderr.is_empty() && stderr != "(no error output)");
        }
        Err(e) => panic!("unexpected: {e}"),
    }
    assert_no_cgroup(&id);
}
