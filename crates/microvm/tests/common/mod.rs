//! Shared plumbing of the guest-tier tests: strict mode, skip lines, the
//! provisioned artifacts, and rerunning a test inside the emulated host when
//! this host's KVM cannot boot Linux.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ISOLAB_STRICT").is_ok_and(|v| v == "1")
}

pub fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn cache_root() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("ISOLAB_CACHE") {
        return Some(c.into());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(Path::new(&x).join("isolab"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/isolab"))
}

pub fn newest(dir: &Path, pick: impl Fn(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| pick(&e.path()))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

pub fn find_artifacts() -> Option<(PathBuf, PathBuf)> {
    cache_root().and_then(|root| {
        let kernel = newest(&root.join("kernel"), |d| {
            let v = d.join("vmlinux");
            (d.join("meta.json").is_file() && v.is_file()).then_some(v)
        })?;
        let initrd = newest(&root.join("initramfs"), |p| {
            let name = p.file_name()?.to_str()?;
            (name.starts_with("guest-") && name.ends_with(".cpio")).then(|| p.to_path_buf())
        })?;
        Some((kernel, initrd))
    })
}

/// Runs `test` of this test binary (`bin`, its file name) inside the
/// emulated host with the provisioned guest copied in; panics unless it
/// passes there.
pub fn rerun_in_emulated_host(bin: &str, test: &str) {
    use isolab_emuhost::{EmulatedHost, FileMap, HostConfig, Invocation};
    let (kernel, initrd) = find_artifacts().unwrap_or_else(|| {
        panic!("{test}: no provisioned guest kernel/initramfs: run `bench provision` (strict mode)")
    });
    let kernel_dir = kernel.parent().expect("kernel in its cache dir");
    let guest_cache = "/var/cache/isolab";
    let map = |host: &Path, guest: String| FileMap {
        host: host.to_path_buf(),
        guest,
    };
    let exe = std::env::current_exe().expect("test binary path");
    let inv = Invocation {
        command: vec![
            format!("/opt/isolab/test/{bin}"),
            "--exact".into(),
            test.into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
        ],
        env: vec![
            ("ISOLAB_CACHE".into(), guest_cache.into()),
            ("CI".into(), "true".into()),
        ],
        files: vec![
            map(&exe, format!("/opt/isolab/test/{bin}")),
            map(
                kernel_dir,
                format!(
                    "{guest_cache}/kernel/{}",
                    kernel_dir.file_name().unwrap().to_string_lossy()
                ),
            ),
            map(
                &initrd,
                format!(
                    "{guest_cache}/initramfs/{}",
                    initrd.file_name().unwrap().to_string_lossy()
                ),
            ),
        ],
    };
    let host = EmulatedHost::prepare(HostConfig::default())
        .unwrap_or_else(|e| panic!("{test}: cannot prepare the emulated host (strict mode): {e}"));
    let mut out = String::new();
    let outcome = host
        .run(&inv, &mut |l| {
            out.push_str(l);
            out.push('\n');
        })
        .unwrap_or_else(|e| panic!("{test}: the emulated host failed: {e}"));
    eprintln!("{test}: ran inside the emulated host (this host's KVM cannot boot Linux)");
    assert!(
        outcome.status == 0 && out.contains("test result: ok. 1 passed"),
        "{test} failed inside the emulated host (status {}):\n{out}",
        outcome.status
    );
}
