//! The workbench's own pieces inside the emulated host: the microVM on
//! nested KVM (`bench vm run`), the container on pure cgroup v2
//! (`bench container run`), and QEMU's `-M microvm` booting the same guest
//! as the reference peer.
//!
//! Probe: the emulated host (QEMU, static busybox, cloud kernel), the
//! static binaries next to this test (`cargo build -p isolab-cli -p
//! isolab-workload -p isolab-guest-init`) and a built guest kernel plus
//! guest initramfs in the artifact cache (`bench provision`). Without them
//! the test prints `SKIPPED`, or fails when `CI=true` / `ISOLAB_STRICT=1`.

use isolab_emuhost::bench::{bench_invocation, binary_dir};
use isolab_emuhost::{cache::cache_root, run_bench_inside, EmulatedHost, FileMap, HostConfig};

/// The emulated host with everything the tests run inside it, or `None`
/// after the skip line (a failure in strict mode).
fn prepare(test: &str, config: HostConfig) -> Option<EmulatedHost> {
    let binaries = binary_dir()
        .and_then(|d| isolab_emuhost::bench::binaries(&d))
        .err()
        .map(|e| e.to_string());
    let missing = isolab_testkit::first_missing([isolab_testkit::missing_guest(), binaries]);
    if !isolab_testkit::require(test, missing) {
        return None;
    }
    match EmulatedHost::prepare(config) {
        Ok(h) => Some(h),
        Err(e) => {
            isolab_testkit::require(test, Some(e.to_string()));
            None
        }
    }
}

/// What a `sh -c` script printed inside the emulated host: its lines, and
/// the JSON object among them that has `key`.
struct Script {
    lines: Vec<String>,
}

impl Script {
    /// Runs `script` with `bench`, its siblings and the guest kernels
    /// inside (plus `files`), echoing every line.
    fn run(host: &EmulatedHost, files: Vec<FileMap>, script: &str) -> Script {
        let mut inv =
            bench_invocation(&[], &binary_dir().unwrap(), &cache_root().unwrap()).unwrap();
        inv.files.extend(files);
        inv.command = vec!["sh".into(), "-c".into(), script.into()];
        let mut lines = Vec::new();
        let outcome = host
            .run(&inv, &mut |l| {
                println!("inner: {l}");
                lines.push(l.to_string());
            })
            .unwrap();
        assert_eq!(outcome.status, 0, "{lines:?}");
        Script { lines }
    }

    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn json(&self, key: &str) -> serde_json::Value {
        self.lines
            .iter()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get(key).is_some().then_some(v)
            })
            .unwrap_or_else(|| panic!("no line with {key} in {:?}", self.lines))
    }
}

#[test]
fn microvm_boots_noop_on_nested_kvm_and_reports_ready_and_status() {
    let test = "microvm_boots_noop_on_nested_kvm_and_reports_ready_and_status";
    let Some(host) = prepare(test, HostConfig::default()) else {
        return;
    };
    let mut lines = Vec::new();
    let args: Vec<String> = ["vm", "run", "--workload", "noop", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let outcome = run_bench_inside(&host, &args, &mut |l| {
        println!("inner: {l}");
        lines.push(l.to_string());
    })
    .unwrap();
    assert_eq!(outcome.status, 0, "bench vm run failed inside: {lines:?}");
    let report: serde_json::Value = lines
        .iter()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v.get("phases").is_some().then_some(v)
        })
        .unwrap_or_else(|| panic!("no VM report line in {lines:?}"));
    assert_eq!(report["exit_status"], 0, "{report}");
    assert_eq!(report["host"]["module"], "kvm_amd", "{report}");
    assert!(
        report["phases"]["workload_ready_ms"].is_number(),
        "the guest never reached ready: {report}"
    );
}

#[test]
fn container_on_cgroup_v2_and_qemu_microvm_reference_run_inside() {
    let test = "container_on_cgroup_v2_and_qemu_microvm_reference_run_inside";
    let config = HostConfig {
        include_qemu: true,
        ..HostConfig::default()
    };
    let Some(host) = prepare(test, config) else {
        return;
    };
    let guest = isolab_testkit::cached_guest().expect("probed by prepare");
    let files = vec![
        FileMap {
            host: guest.bz_image,
            guest: "/guest/bzImage".into(),
        },
        FileMap {
            host: guest.initramfs,
            guest: "/guest/initramfs.cpio".into(),
        },
    ];
    // reboot=t: QEMU's microvm has no i8042, so the guest init's reboot
    // must triple-fault, which -no-reboot turns into QEMU's exit.
    let script = "\
        /opt/isolab/bin/bench container run --workload noop --memory 64M --pids 32 --json; \
        echo container-status=$?; \
        /opt/isolab/bin/bench container run --workload hog --memory 16M --json \
          | grep -q '\"oom_killed\":true' && echo hog-oom-killed; \
        timeout 240 qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 128 \
          -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
          -kernel /guest/bzImage -initrd /guest/initramfs.cpio \
          -append 'console=ttyS0 reboot=t panic=-1 isolab.workload=noop isolab.console=1'; \
        echo qemu-status=$?";
    let out = Script::run(&host, files, script);
    let lines = &out.lines;
    assert!(out.has("container-status=0"), "container failed: {lines:?}");
    let container = out.json("cgroup_version");
    assert_eq!(container["cgroup_version"], "v2", "{container}");
    assert_eq!(container["exit_code"], 0, "{container}");
    // Init shares the launcher's memory: the OOM killer must end the
    // workload, and the launcher must live to report it.
    assert!(
        out.has("hog-oom-killed"),
        "hog not reported OOM-killed: {lines:?}"
    );
    assert!(out.has("qemu-status=0"), "QEMU microvm failed: {lines:?}");
    assert!(
        out.has("isolab-init: ready"),
        "guest never ready under QEMU: {lines:?}"
    );
    assert!(
        out.has("isolab-init: workload exited with status 0"),
        "{lines:?}"
    );
}

/// One boot for the networked microVM and both halves of compare on it:
/// `bench vm run --net`, then `bench compare` with the isolation half
/// (short budget, a memory neighbour in a 128 MiB guest with a window long
/// enough for its guest's OOM killer under TCG: a 256 MiB guest's hog was
/// not yet killed after 12 s; the system-call and the ftrace kernel
/// function passes, posture), whose JSON must show the microVM measured on
/// every axis: its host kernel functions counted (the kernel is ours here),
/// its neighbour's fate read (the guest kernel's OOM killer), the tenant
/// answering throughout.
#[test]
fn microvm_on_the_workbench_answers_http_and_compare_measures_it() {
    let test = "microvm_on_the_workbench_answers_http_and_compare_measures_it";
    let Some(host) = prepare(test, HostConfig::default()) else {
        return;
    };
    // One boot, two runs of the path every networked microVM takes: bench
    // creates the workbench and a TAP, isolab-vmm gets the TAP's fd, the
    // one probe answers from inside the workbench namespace.
    let script = "\
        /opt/isolab/bin/bench vm run --workload api --net --requests 5 --json; \
        echo vm-status=$?; \
        /opt/isolab/bin/bench compare --workload api --modes microvm --peers none \
          --runs 1 --warmup 0 --requests 5 --isolation short --neighbours memory \
          --neighbour-requests 10 --neighbour-connections 2 --neighbour-memory 128M \
          --neighbour-window-ms 8000 \
          --surface-requests 10 --format json > /tmp/compare.json; \
        echo compare-status=$?; \
        tr -d '\\n' < /tmp/compare.json; echo; \
        ls /sys/fs/cgroup/isolab 2>/dev/null | sed 's/^/cgroup-left=/'; \
        ls /sys/kernel/tracing/instances 2>/dev/null | sed 's/^/instance-left=/'";
    let out = Script::run(&host, vec![], script);
    let lines = &out.lines;
    assert!(
        out.has("vm-status=0"),
        "bench vm run --net failed: {lines:?}"
    );
    let vm = out.json("net");
    assert_eq!(vm["net"]["status"], 200, "{vm}");
    assert_eq!(vm["net"]["requests"], 5, "{vm}");
    assert!(vm["net"]["tap"].is_string(), "{vm}");
    assert_eq!(vm["stop_reason"], "host_request", "{vm}");
    assert!(
        out.has("compare-status=0"),
        "bench compare failed: {lines:?}"
    );
    let doc = out.json("schema");
    let m = &doc["modes"][0];
    assert_eq!(m["mode"], "microvm", "{doc}");
    assert_eq!(m["status"]["state"], "measured", "{m}");
    assert_eq!(
        m["raw_first_response_ms"].as_array().map(Vec::len),
        Some(1),
        "{m}"
    );
    assert!(m["phases"]["kernel_boot_ms"]["p50"].is_number(), "{m}");
    assert!(
        m["memory"]["vmm_overhead"]["p50"].as_f64().unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert_eq!(m["load"]["errors"], 0, "{m}");

    // The host kernel functions serving the monitor's threads: counted,
    // since this kernel is ours.
    let k = &doc["kernel_functions"][0];
    assert_eq!(k["mode"], "microvm", "{doc}");
    assert_eq!(k["status"]["state"], "measured", "{k}");
    assert!(k["distinct"].as_u64().unwrap_or(0) > 100, "{k}");
    assert!(
        k["threads"].as_u64().unwrap_or(0) >= 2,
        "vCPU and more: {k}"
    );
    assert_eq!(
        (k["requests"].as_u64(), k["errors"].as_u64()),
        (Some(10), Some(0)),
        "{k}"
    );
    println!("microVM host kernel functions: {k}");
    let s = &doc["surface"][0];
    assert_eq!(s["status"]["state"], "measured", "{s}");
    assert!(
        s["syscalls"]["ioctl"].as_u64().unwrap_or(0) > 0,
        "KVM_RUN: {s}"
    );

    // The memory neighbour: a second microVM (1 vCPU, 128 MiB), its monitor
    // in a cgroup, killed inside by its guest kernel; the tenant answered.
    let nm = &doc["neighbours"][0];
    assert_eq!(nm["mode"], "microvm", "{doc}");
    assert_eq!(nm["status"]["state"], "measured", "{nm}");
    let n = &nm["neighbours"][0];
    println!("microVM memory neighbour: {n}");
    assert_eq!(n["kind"], "memory", "{n}");
    assert!(n["error"].is_null(), "{n}");
    assert_eq!(n["fate"]["fate"], "guest_oom", "{n}");
    assert_eq!(n["observation"]["guest_oom"], true, "{n}");
    assert!(
        n["observation"]["throttled_periods"].is_u64(),
        "the monitor's cgroup was read: {n}"
    );
    assert_eq!(n["tenant_errors"], 0, "the tenant kept answering: {n}");
    assert_eq!(n["tenant_errors_alone"], 0, "{n}");
    assert!(
        n["interference"].as_array().is_some_and(|i| !i.is_empty()),
        "tenant p99 alone and with: {n}"
    );
    let left: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("cgroup-left=vm-") || l.starts_with("instance-left="))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
