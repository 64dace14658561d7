//! Shared plumbing of the guest-tier tests (strict mode, skip lines and the
//! artifact cache are `isolab-testkit`'s): the provisioned guest, and
//! rerunning a test inside the emulated host when this host's KVM cannot
//! boot Linux.

use std::path::{Path, PathBuf};

/// The provisioned guest kernel (vmlinux) and initramfs for guest-tier
/// test `test` of the test binary `bin`, or `None` when the test must not
/// go on here: it printed its skip line, or (strict mode on a host whose
/// KVM cannot boot Linux) it already ran inside the emulated host.
pub fn guest(bin: &str, test: &str) -> Option<(PathBuf, PathBuf)> {
    if let Some(why) = isolab_microvm::host::detect(Path::new("/")).refusal() {
        if isolab_testkit::strict() && std::env::var_os("ISOLAB_EMULATED_HOST").is_none() {
            rerun_in_emulated_host(bin, test);
        } else {
            isolab_testkit::require(test, Some(why.to_owned()));
        }
        return None;
    }
    isolab_testkit::require(test, isolab_testkit::missing_guest())
        .then(isolab_testkit::cached_guest)
        .flatten()
        .map(|g| (g.vmlinux, g.initramfs))
}

/// Runs `test` of this test binary (`bin`, its file name) inside the
/// emulated host with the provisioned guest copied in; panics unless it
/// passes there.
pub fn rerun_in_emulated_host(bin: &str, test: &str) {
    use isolab_emuhost::{EmulatedHost, FileMap, HostConfig, Invocation};
    let g = isolab_testkit::cached_guest().unwrap_or_else(|| {
        panic!("{test}: no provisioned guest kernel/initramfs: run `bench provision` (strict mode)")
    });
    let (kernel, initrd) = (g.vmlinux, g.initramfs);
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
