//! Provisioning: everything a microVM run needs, built or found in the
//! cache. Used by `bench provision` and by the harness on the first
//! `bench compare`.
//!
//! - the guest kernel ([`crate::build`]), keyed by its config hash;
//! - the guest initramfs (`/init` = isolab-init, `/workload`), keyed by the
//!   identity (path, size, mtime) of the two binaries, in
//!   `<cache>/initramfs/guest-<key>.cpio`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use isolab_initramfs::{guest_initramfs, ExtraFile, InitramfsError};
use sha2::{Digest, Sha256};

use crate::builder::{build, BuildOptions, GuestKernel, KernelError};

use isolab_workload::Workload;

/// File name of the guest init binary.
pub const INIT_BIN: &str = "isolab-init";
/// File name of the workload binary.
pub const WORKLOAD_BIN: &str = "workload";
/// Initramfs images kept in the cache; older ones are removed.
const KEEP_INITRAMFS: usize = 4;

/// Errors while provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{what} binary {path:?} not found: build it with `cargo build -p {package}`")]
    MissingBinary {
        what: &'static str,
        path: PathBuf,
        package: &'static str,
    },
    #[error("Guest kernel")]
    Kernel(#[from] KernelError),
    #[error("Cannot create {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Guest initramfs {path:?}")]
    Initramfs {
        path: PathBuf,
        #[source]
        source: InitramfsError,
    },
    #[error("Cannot move the initramfs into place at {path:?}")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ProvisionError {
    /// Whether the host lacks something (the kernel source package, build
    /// tools, a built binary) rather than the run failing.
    pub fn is_host(&self) -> bool {
        match self {
            ProvisionError::Kernel(k) => matches!(
                k,
                KernelError::SourceMissing { .. } | KernelError::MissingBuildDeps { .. }
            ),
            ProvisionError::MissingBinary { .. } => true,
            _ => false,
        }
    }
}

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    pub kernel: BuildOptions,
    /// The static guest init (`isolab-init`).
    pub init: PathBuf,
    /// The static workload binary.
    pub workload_bin: PathBuf,
    /// The workload the run will select (it goes on the kernel command
    /// line, not into the image).
    pub workload: Workload,
    /// Extra files for demos.
    pub extra_files: Vec<ExtraFile>,
}

impl ProvisionOptions {
    /// Defaults: binaries from [`binary_dir`], cache from the environment.
    pub fn new(cache_root: PathBuf, bin_dir: &Path, workload: Workload) -> Self {
        Self {
            kernel: BuildOptions::new(cache_root),
            init: bin_dir.join(INIT_BIN),
            workload_bin: bin_dir.join(WORKLOAD_BIN),
            workload,
            extra_files: Vec::new(),
        }
    }
}

/// What a microVM run needs.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub kernel: GuestKernel,
    pub initramfs: PathBuf,
    /// True if the initramfs was already in the cache.
    pub initramfs_cached: bool,
    /// The guest parameters selecting the workload (`isolab.workload=...`).
    pub guest_params: String,
}

impl Provisioned {
    /// The three files a boot needs.
    pub fn artifacts(&self) -> crate::GuestArtifacts {
        crate::GuestArtifacts {
            vmlinux: self.kernel.vmlinux.clone(),
            bz_image: self.kernel.bz_image.clone(),
            initramfs: self.initramfs.clone(),
        }
    }
}

/// Where the static binaries are: next to the running executable, or one
/// level up when it is a test binary in `target/<triple>/<profile>/deps/`.
pub fn binary_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().map(Path::to_path_buf);
    }
    Some(dir.to_path_buf())
}

/// The monitor binary's file name.
pub const MONITOR_BIN: &str = "isolab-vmm";
/// The cargo profile the monitor is built with for release runs (see the
/// workspace Cargo.toml).
pub const MONITOR_PROFILE: &str = "monitor";

/// The monitor for the binaries in `dir`. Beside a release build, the one
/// built with the `monitor` profile (`target/<triple>/monitor/`, which
/// `./bench` builds) when it is there and at least as new as the release
/// profile's own `isolab-vmm` (so a rebuilt release is never paired with
/// an older monitor); otherwise, and for every other profile, the one in
/// `dir`.
pub fn monitor_binary(dir: &Path) -> PathBuf {
    let plain = dir.join(MONITOR_BIN);
    if dir.file_name().is_some_and(|n| n == "release") {
        if let Some(tuned) = dir
            .parent()
            .map(|t| t.join(MONITOR_PROFILE).join(MONITOR_BIN))
        {
            let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
            match (mtime(&tuned), mtime(&plain)) {
                (Some(t), Some(p)) if t >= p => return tuned,
                (Some(_), None) => return tuned,
                _ => {}
            }
        }
    }
    plain
}

/// Builds or finds the kernel and the initramfs.
pub fn provision(opts: &ProvisionOptions) -> Result<Provisioned, ProvisionError> {
    for (what, path, package) in [
        ("Guest init", &opts.init, "isolab-init"),
        ("Workload", &opts.workload_bin, "isolab-workload"),
    ] {
        if !path.is_file() {
            return Err(ProvisionError::MissingBinary {
                what,
                path: path.clone(),
                package,
            });
        }
    }
    let kernel = build(&opts.kernel)?;
    let (initramfs, initramfs_cached) = initramfs(opts)?;
    Ok(Provisioned {
        kernel,
        initramfs,
        initramfs_cached,
        guest_params: format!("isolab.workload={}", opts.workload),
    })
}

fn identity(h: &mut Sha256, path: &Path) {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    h.update(canon.as_os_str().as_encoded_bytes());
    if let Ok(md) = fs::metadata(path) {
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(md.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
}

/// The cache key of the guest image: identities of its inputs (cheap: no
/// hashing of multi-megabyte binaries on every run).
fn initramfs_key(opts: &ProvisionOptions) -> String {
    let mut h = Sha256::new();
    h.update(b"isolab guest initramfs 1");
    identity(&mut h, &opts.init);
    identity(&mut h, &opts.workload_bin);
    for e in &opts.extra_files {
        h.update(e.path.as_bytes());
        h.update(e.perm.to_le_bytes());
        match &e.source {
            isolab_initramfs::Source::Bytes(b) => h.update(Sha256::digest(b)),
            isolab_initramfs::Source::Path(p) => identity(&mut h, p),
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn initramfs(opts: &ProvisionOptions) -> Result<(PathBuf, bool), ProvisionError> {
    let dir = opts.kernel.cache_root.join("initramfs");
    fs::create_dir_all(&dir).map_err(|source| ProvisionError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("guest-{}.cpio", initramfs_key(opts)));
    if path.is_file() {
        return Ok((path, true));
    }
    let tmp = dir.join(format!(".tmp-{}.cpio", std::process::id()));
    let archive = guest_initramfs(
        opts.init.as_path(),
        opts.workload_bin.as_path(),
        &opts.extra_files,
    );
    if let Err(source) = archive.write_file(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(ProvisionError::Initramfs { path, source });
    }
    fs::rename(&tmp, &path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ProvisionError::Rename {
            path: path.clone(),
            source,
        }
    })?;
    prune(&dir, &path);
    Ok((path, false))
}

/// Keeps the newest few images (each rebuild of a binary makes a new one).
fn prune(dir: &Path, keep: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("guest-") && n.ends_with(".cpio"))
        })
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    images.sort();
    images.reverse();
    for (_, p) in images.into_iter().skip(KEEP_INITRAMFS) {
        if p != keep {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_profile_build_is_preferred_beside_release_only_when_current() {
        let t = tempfile::tempdir().unwrap();
        let release = t.path().join("release");
        let tuned_dir = t.path().join(MONITOR_PROFILE);
        std::fs::create_dir_all(&release).unwrap();
        std::fs::create_dir_all(&tuned_dir).unwrap();
        let plain = release.join(MONITOR_BIN);
        let tuned = tuned_dir.join(MONITOR_BIN);
        assert_eq!(
            monitor_binary(&release),
            plain,
            "nothing built: the plain path"
        );
        std::fs::write(&plain, "release").unwrap();
        assert_eq!(monitor_binary(&release), plain);
        std::fs::write(&tuned, "monitor").unwrap();
        assert_eq!(monitor_binary(&release), tuned, "the newer tuned build");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&plain)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(monitor_binary(&release), plain, "a rebuilt release wins");
        let debug = t.path().join("debug");
        assert_eq!(monitor_binary(&debug), debug.join(MONITOR_BIN));
    }

    fn opts(tmp: &Path, name: Workload) -> ProvisionOptions {
        let bin = tmp.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join(INIT_BIN), b"init").unwrap();
        fs::write(bin.join(WORKLOAD_BIN), b"work").unwrap();
        ProvisionOptions::new(tmp.join("cache"), &bin, name)
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts(tmp.path(), Workload::Noop);
        o.workload_bin = tmp.path().join("nowhere/workload");
        let e = provision(&o).unwrap_err().to_string();
        assert!(
            e.contains("nowhere/workload") && e.contains("cargo build -p isolab-workload"),
            "{e}"
        );
    }

    #[test]
    fn initramfs_is_cached_until_a_binary_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path(), Workload::Noop);
        let (p1, cached1) = initramfs(&o).unwrap();
        let (p2, cached2) = initramfs(&o).unwrap();
        assert!(!cached1 && cached2);
        assert_eq!(p1, p2);
        let listed = isolab_initramfs::list(fs::File::open(&p1).unwrap()).unwrap();
        let work = listed.iter().find(|e| e.path == "workload").unwrap();
        assert_eq!(work.data, b"work");
        // A rebuilt workload (new size) gives a new image.
        fs::write(&o.workload_bin, b"work v2").unwrap();
        let (p3, cached3) = initramfs(&o).unwrap();
        assert!(!cached3);
        assert_ne!(p1, p3);
    }
}
