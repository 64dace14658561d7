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
    let g = isolab_testkit::cached_guest().unwrap_or_else(|| {
        panic!("{test}: no provisioned guest kernel/initramfs: run `bench provision` (strict mode)")
    });
    let kernel_dir = g.vmlinux.parent().expect("kernel in its cache dir");
    let guest_cache = "/var/cache/isolab";
    let in_cache = |p: &Path, sub: &str| {
        format!(
            "{guest_cache}/{sub}/{}",
            p.file_name().unwrap().to_string_lossy()
        )
    };
    let rerun = isolab_testkit::Rerun {
        args: vec!["--exact".into(), test.into()],
        env: vec![("ISOLAB_CACHE".into(), guest_cache.into())],
        files: vec![
            (kernel_dir.to_path_buf(), in_cache(kernel_dir, "kernel")),
            (g.initramfs.clone(), in_cache(&g.initramfs, "initramfs")),
        ],
        passed: 1,
    };
    isolab_testkit::rerun_in_emulated_host(test, &isolab_testkit::emulated_host(test), rerun);
    eprintln!("{test} ({bin}): ran inside the emulated host (this host's KVM cannot boot Linux)");
}
