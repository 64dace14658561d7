//! The one home of isolab's test plumbing, used as a dev-dependency by every
//! crate's `tests/`: strict mode, the `SKIPPED <test>: <reason>` line,
//! probes of real abilities (root, namespaces, cgroups, overlayfs,
//! `/dev/kvm`), the paths of the workspace's built binaries, and the
//! provisioned guest in the artifact cache.
//!
//! The rule it implements (docs/testing.md): a test that lacks an ability
//! prints one skip line and returns; under strict mode (`CI=true` or
//! `ISOLAB_STRICT=1`) the same condition fails the test instead, so CI can
//! never pass by skipping.
//!
//! ```no_run
//! fn my_privileged_test() {
//!     if !isolab_testkit::require("my_privileged_test", isolab_testkit::missing_root()) {
//!         return;
//!     }
//!     // ... the real test
//! }
//! ```

use std::path::PathBuf;

pub use isolab_guest_kernel::GuestArtifacts;

/// True when a missing ability must fail a test rather than skip it.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ISOLAB_STRICT").is_ok_and(|v| v == "1")
}

/// Prints `SKIPPED <test>: <reason>` on stderr in one write, so lines of
/// parallel tests never interleave and libtest's capture does not hide it.
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Whether `test` may go on: `None` (nothing missing) says yes; `Some(why)`
/// prints the skip line and says no, or panics in strict mode.
#[track_caller]
pub fn require(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) if strict() => {
            panic!("{test}: {why} (strict mode: a missing ability fails the test)")
        }
        Some(why) => {
            skipped(test, &why);
            false
        }
    }
}

/// The first of several probes that found something missing.
pub fn first_missing(probes: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    probes.into_iter().flatten().next()
}

/// `Some(reason)` unless this process runs as root.
pub fn missing_root() -> Option<String> {
    (!nix::unistd::geteuid().is_root()).then(|| "not root".to_owned())
}

/// `Some(reason)` unless a child can create the namespaces in `flags`
/// (checked in a forked child, so this process never unshares).
pub fn missing_unshare(flags: nix::sched::CloneFlags) -> Option<String> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: the hook runs in the forked child before exec and only calls
    // unshare(2), a single async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(move || nix::sched::unshare(flags).map_err(std::io::Error::from));
    }
    match cmd.status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("cannot unshare {flags:?} ({s})")),
        Err(e) => Some(format!("cannot unshare {flags:?}: {e}")),
    }
}

/// `Some(reason)` unless this process can create (and remove) a cgroup
/// under the workbench parent, the real ability behind containers and
/// density runs.
pub fn missing_cgroup() -> Option<String> {
    use isolab_cgroups::{create, Hierarchy, Limits};
    let probe = Hierarchy::detect_host().and_then(|h| {
        let name = format!("probe-{}-{}", std::process::id(), unique());
        create(&h, &name, &Limits::default())?.remove()
    });
    probe.err().map(|e| format!("cannot create a cgroup: {e}"))
}

/// `Some(reason)` unless the kernel has overlayfs (container root filesystems).
pub fn missing_overlayfs() -> Option<String> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    (!fs.contains("overlay")).then(|| "no overlayfs".to_owned())
}

/// What a container test needs: root, overlayfs, a cgroup, and the
/// `workload` binary.
pub fn missing_container() -> Option<String> {
    first_missing([
        missing_root(),
        missing_binary("workload", "isolab-workload"),
        missing_overlayfs(),
        missing_cgroup(),
    ])
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// `Some(reason)` unless `/dev/kvm` opens read-write.
pub fn missing_kvm() -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .err()
        .map(|e| format!("cannot open /dev/kvm: {e}"))
}

/// `Some(reason)` unless `cmd` is an executable on PATH.
pub fn missing_command(cmd: &str, package: &str) -> Option<String> {
    which(cmd)
        .is_none()
        .then(|| format!("{cmd} not found on PATH: apt-get install {package}"))
}

/// Full path of `cmd` on PATH.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// `target/<triple>/<profile>`: where the workspace's binaries are built,
/// found from the running test executable (`.../<profile>/deps/<test>`;
/// [`isolab_guest_kernel::binary_dir`], the one rule for it).
pub fn target_profile_dir() -> PathBuf {
    isolab_guest_kernel::binary_dir().expect("the test executable's directory")
}

/// A binary of the workspace (`workload`, `bench`, `isolab-init`) beside the
/// test's profile directory; `ISOLAB_<NAME>_BIN` (upper case, `-` as `_`)
/// overrides it.
pub fn binary(name: &str) -> PathBuf {
    let var = format!("ISOLAB_{}_BIN", name.to_uppercase().replace('-', "_"));
    match std::env::var_os(&var) {
        Some(p) => PathBuf::from(p),
        None => target_profile_dir().join(name),
    }
}

/// `Some(reason)` unless the workspace binary `name` is built.
pub fn missing_binary(name: &str, package: &str) -> Option<String> {
    let p = binary(name);
    (!p.is_file()).then(|| format!("{} missing: cargo build -p {package}", p.display()))
}

/// The interfaces of this process's network namespace, sorted (to check
/// that a test left the host's own network as it found it).
pub fn host_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What to carry into the emulated host when a test reruns there.
#[derive(Debug, Default)]
pub struct Rerun {
    /// Arguments of the test binary (`--exact NAME` for one test); the run
    /// always adds `--nocapture --test-threads=1`.
    pub args: Vec<String>,
    /// Extra environment inside (`CI=true` is always set: strict there too).
    pub env: Vec<(String, String)>,
    /// Files and directories copied in: (host path, absolute guest path).
    pub files: Vec<(PathBuf, String)>,
    /// How many tests must pass inside (`test result: ok. N passed`).
    pub passed: usize,
}

/// Where the test binary goes inside the emulated host.
pub const GUEST_TEST_DIR: &str = "/opt/isolab/test";

/// Runs the running test binary again inside the emulated host (QEMU TCG
/// with nested KVM, `host`) with what `rerun` carries, for tests that need
/// what this host lacks (hardware KVM, a kernel of our own); returns the
/// output and panics unless the tests passed in there. The inner run sees
/// `ISOLAB_EMULATED_HOST=1`.
pub fn rerun_in_emulated_host(
    test: &str,
    host: &isolab_emuhost::EmulatedHost,
    rerun: Rerun,
) -> String {
    use isolab_emuhost::{FileMap, Invocation};
    let exe = std::env::current_exe().expect("the test executable's path");
    let name = exe
        .file_name()
        .expect("the test executable's name")
        .to_string_lossy()
        .into_owned();
    let guest_exe = format!("{GUEST_TEST_DIR}/{name}");
    let mut command = vec![guest_exe.clone()];
    command.extend(rerun.args);
    command.extend(["--nocapture".into(), "--test-threads=1".into()]);
    let mut env = vec![("CI".to_owned(), "true".to_owned())];
    env.extend(rerun.env);
    let mut files = vec![FileMap {
        host: exe,
        guest: guest_exe,
    }];
    files.extend(
        rerun
            .files
            .into_iter()
            .map(|(host, guest)| FileMap { host, guest }),
    );
    let inv = Invocation {
        command,
        env,
        files,
    };
    let mut out = String::new();
    let outcome = host
        .run(&inv, &mut |l| {
            out.push_str(l);
            out.push('\n');
        })
        .unwrap_or_else(|e| panic!("{test}: the emulated host failed: {e}"));
    let expect = format!("test result: ok. {} passed", rerun.passed);
    assert!(
        outcome.status == 0 && out.contains(&expect),
        "{test} failed inside the emulated host (status {}):\n{out}",
        outcome.status
    );
    out
}

/// The emulated host with default settings, or a panic naming the test
/// (strict mode: the rerun is the test).
pub fn emulated_host(test: &str) -> isolab_emuhost::EmulatedHost {
    isolab_emuhost::EmulatedHost::prepare(isolab_emuhost::HostConfig::default())
        .unwrap_or_else(|e| panic!("{test}: cannot prepare the emulated host (strict mode): {e}"))
}

/// The workspace's artifact cache (`$ISOLAB_CACHE`, else the XDG/HOME
/// default), as `bench provision` fills it.
pub fn cache_root() -> Option<PathBuf> {
    isolab_guest_kernel::cache_root().ok()
}

/// The newest provisioned guest kernel and initramfs in the cache.
pub fn cached_guest() -> Option<GuestArtifacts> {
    isolab_guest_kernel::cached_guest(&cache_root()?)
}

/// `Some(reason)` unless a provisioned guest is in the cache (tests must
/// not start a minutes-long kernel build).
pub fn missing_guest() -> Option<String> {
    cached_guest().is_none().then(|| {
        "no provisioned guest kernel/initramfs in the cache: run `bench provision`".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_goes_on_and_the_first_missing_is_named() {
        assert!(require("t", None));
        assert_eq!(
            first_missing([None, Some("a".into()), Some("b".into())]),
            Some("a".into())
        );
        assert_eq!(first_missing([None, None]), None);
    }

    #[test]
    fn binaries_sit_beside_the_profile_dir() {
        let p = binary("isolab-no-such-binary");
        assert_eq!(p.parent(), Some(target_profile_dir().as_path()));
        assert!(missing_binary("isolab-no-such-binary", "x")
            .unwrap()
            .contains("cargo build -p x"));
    }
}
