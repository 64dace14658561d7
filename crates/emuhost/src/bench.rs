//! Running `bench <args>` inside the emulated host: the running `bench`
//! and its sibling static binaries (`workload`, `isolab-init`, `isolab-vmm`,
//! `isolab-trace`,
//! found next to the executable as docs/contracts.md says) plus the built guest kernels
//! from the artifact cache are copied in, and `ISOLAB_CACHE` inside points
//! at that copy. This is what `bench vm run --host emulated` and
//! `bench compare --host emulated` use.

use std::path::{Path, PathBuf};

use crate::image::FileMap;
use crate::runner::{EmulatedHost, Invocation, Outcome};
use crate::EmuhostError;

/// Where the binaries go inside.
pub const GUEST_BIN_DIR: &str = "/opt/isolab/bin";
/// The artifact cache inside.
pub const GUEST_CACHE: &str = "/var/cache/isolab";
/// The static binaries `bench` needs beside it: the workload, the guest
/// init, the monitor it launches for every microVM, and the system-call
/// tracer of the attack-surface pass.
pub const SIBLINGS: &[&str] = &["workload", "isolab-init", "isolab-vmm", "isolab-trace"];

/// Errors while assembling the inner `bench` run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The running executable's directory is unknown.
    #[error("Cannot find the directory of the running executable")]
    NoExeDir,
    /// A sibling binary is not built.
    #[error("{name} not found in {dir:?}: build it with `cargo build -p {package}`")]
    MissingBinary {
        name: String,
        dir: PathBuf,
        package: &'static str,
    },
}

/// Where the static binaries are ([`isolab_guest_kernel::binary_dir`]: next
/// to the running executable).
pub fn binary_dir() -> Result<PathBuf, BenchError> {
    isolab_guest_kernel::binary_dir().ok_or(BenchError::NoExeDir)
}

fn package_of(name: &str) -> &'static str {
    match name {
        "bench" => "isolab-cli",
        "workload" => "isolab-workload",
        "isolab-vmm" => "isolab-vmm",
        "isolab-trace" => "isolab-isolation",
        _ => "isolab-guest-init",
    }
}

/// The file maps for `bench` and its siblings from `bin_dir`.
pub fn binaries(bin_dir: &Path) -> Result<Vec<FileMap>, BenchError> {
    let mut maps = Vec::new();
    for name in std::iter::once("bench").chain(SIBLINGS.iter().copied()) {
        // The monitor: the `monitor` profile's build beside a release one.
        let host = if name == isolab_guest_kernel::MONITOR_BIN {
            isolab_guest_kernel::monitor_binary(bin_dir)
        } else {
            bin_dir.join(name)
        };
        if !host.is_file() {
            return Err(BenchError::MissingBinary {
                name: name.to_string(),
                dir: bin_dir.to_path_buf(),
                package: package_of(name),
            });
        }
        maps.push(FileMap {
            host,
            guest: format!("{GUEST_BIN_DIR}/{name}"),
        });
    }
    Ok(maps)
}

/// The built guest kernels ([`isolab_guest_kernel::built_kernels`]) in the
/// cache root, mapped to the same place under [`GUEST_CACHE`]. The kernel
/// source and build trees are left out: they are large and only the
/// outputs are needed inside.
pub fn guest_kernels(cache_root: &Path) -> Vec<FileMap> {
    let mut maps: Vec<FileMap> = isolab_guest_kernel::built_kernels(cache_root)
        .into_iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            Some(FileMap {
                host: path,
                guest: format!("{GUEST_CACHE}/kernel/{name}"),
            })
        })
        .collect();
    maps.sort_by(|a, b| a.guest.cmp(&b.guest));
    maps
}

/// The invocation that runs `bench <args>` inside with everything it needs.
pub fn bench_invocation(
    args: &[String],
    bin_dir: &Path,
    cache_root: &Path,
) -> Result<Invocation, BenchError> {
    let mut files = binaries(bin_dir)?;
    files.extend(guest_kernels(cache_root));
    let mut command = vec![format!("{GUEST_BIN_DIR}/bench")];
    command.extend(args.iter().cloned());
    Ok(Invocation {
        command,
        // The console is a terminal to indicatif but nobody watches it:
        // drawn progress bars would run into the output (a JSON report
        // starting mid-line is never found).
        env: vec![
            ("ISOLAB_CACHE".into(), GUEST_CACHE.into()),
            ("ISOLAB_PROGRESS".into(), "0".into()),
        ],
        files,
    })
}

/// Runs `bench <args>` inside `host`; output lines go to `on_line`.
/// Every figure shown from this run must carry [`crate::EMULATED_HOST_LABEL`].
pub fn run_bench_inside(
    host: &EmulatedHost,
    args: &[String],
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, EmuhostError> {
    run_bench_inside_with(host, args, vec![], on_line)
}

/// [`run_bench_inside`] with `extra` files carried in as well (a user's
/// image: its root disk and spec initramfs, built on this host, since the
/// emulated host has no image tools).
pub fn run_bench_inside_with(
    host: &EmulatedHost,
    args: &[String],
    extra: Vec<FileMap>,
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, EmuhostError> {
    let cache_root = match &host.config().cache_root {
        Some(r) => r.clone(),
        None => crate::cache::cache_root()?,
    };
    let mut inv = bench_invocation(args, &binary_dir()?, &cache_root)?;
    inv.files.extend(extra);
    host.run(&inv, on_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_carries_bench_siblings_and_built_kernels_only() {
        let bin = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let e = bench_invocation(&[], bin.path(), cache.path()).unwrap_err();
        assert!(e.to_string().contains("cargo build -p isolab-cli"), "{e}");
        for n in [
            "bench",
            "workload",
            "isolab-init",
            "isolab-vmm",
            "isolab-trace",
        ] {
            std::fs::write(bin.path().join(n), "x").unwrap();
        }
        std::fs::create_dir_all(cache.path().join("kernel/abc")).unwrap();
        std::fs::write(cache.path().join("kernel/abc/meta.json"), "{}").unwrap();
        std::fs::create_dir_all(cache.path().join("kernel/src/linux")).unwrap();
        let inv = bench_invocation(&["vm".into(), "run".into()], bin.path(), cache.path()).unwrap();
        assert_eq!(inv.command, ["/opt/isolab/bin/bench", "vm", "run"]);
        let guests: Vec<_> = inv.files.iter().map(|f| f.guest.as_str()).collect();
        assert_eq!(
            guests,
            [
                "/opt/isolab/bin/bench",
                "/opt/isolab/bin/workload",
                "/opt/isolab/bin/isolab-init",
                "/opt/isolab/bin/isolab-vmm",
                "/opt/isolab/bin/isolab-trace",
                "/var/cache/isolab/kernel/abc"
            ]
        );
        assert_eq!(
            inv.env,
            [
                ("ISOLAB_CACHE".into(), "/var/cache/isolab".into()),
                ("ISOLAB_PROGRESS".into(), "0".into())
            ]
        );
    }
}
