//! Provisioning the emulated host from Debian: the cloud kernel (resolved
//! from the `linux-image-cloud-amd64` metapackage, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x`, cached), and the host
//! tools it needs (`qemu-system-x86_64`, a static busybox).
//!
//! Steps of [`ensure_kernel`], one function each:
//! 1. [`cached_kernel`]: reuse the kernel named in `emuhost/current`;
//! 2. [`resolve_kernel_package`]: ask apt which concrete package the
//!    metapackage depends on today;
//! 3. [`download_and_extract`]: download it and unpack `vmlinuz` plus its
//!    module tree into a staging dir, then rename it into the cache.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cache::EmuhostCache;

/// The Debian metapackage that always points at the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The emulator binary and the Debian package that ships it.
pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Errors while provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A program the emulated host needs is not installed.
    #[error("{tool} not found: install it with `apt-get install {package}`")]
    MissingTool { tool: String, package: String },
    /// Busybox exists but is dynamically linked (the `busybox` package, not
    /// `busybox-static`): it cannot run in the initramfs.
    #[error(
        "{path:?} is dynamically linked: install `busybox-static` (apt-get install busybox-static)"
    )]
    BusyboxNotStatic { path: PathBuf },
    /// apt does not know the kernel metapackage (not a Debian apt source).
    #[error("apt knows no package {package}: the emulated host needs a Debian 12 (bookworm) apt source; run `apt-get update`")]
    UnknownPackage { package: String },
    /// Running a provisioning command failed to start.
    #[error("Cannot run `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    /// A provisioning command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    CommandFailed {
        cmd: String,
        status: String,
        stderr: String,
    },
    /// The downloaded package does not hold what a kernel package holds.
    #[error("Package {package} has no {what}")]
    BadPackage { package: String, what: &'static str },
    /// A file or directory in the cache could not be created, read or moved.
    #[error("Cannot {action} {path:?}")]
    Cache {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The cache's `meta.json` is unreadable.
    #[error("Cache entry {path:?} is corrupt: delete it and run again")]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl ProvisionError {
    /// True when the host lacks something (a package, an apt source), as
    /// opposed to a failure of this run.
    pub fn is_host(&self) -> bool {
        matches!(
            self,
            Self::MissingTool { .. } | Self::BusyboxNotStatic { .. } | Self::UnknownPackage { .. }
        )
    }
}

/// A kernel package unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelMeta {
    /// Debian package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// Kernel release (`uname -r` inside), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
}

/// A ready kernel: its image and module tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuKernel {
    pub meta: KernelMeta,
    /// The bzImage to pass to `-kernel`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the package.
    pub modules: PathBuf,
}

impl EmuKernel {
    fn at(dir: &Path, meta: KernelMeta) -> Self {
        Self {
            meta,
            vmlinuz: dir.join("vmlinuz"),
            modules: dir.join("modules"),
        }
    }
}

/// Finds a program on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<String, ProvisionError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| ProvisionError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ProvisionError::CommandFailed {
            cmd: shown,
            status: out.status.to_string(),
            stderr: stderr.lines().last().unwrap_or("").trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure `tool` is on `PATH`; installs `package` with apt when
/// `allow_install`, else says what to install.
pub fn require_tool(
    tool: &str,
    package: &str,
    allow_install: bool,
) -> Result<PathBuf, ProvisionError> {
    if let Some(p) = find_program(tool) {
        return Ok(p);
    }
    if allow_install {
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", package]))?;
        if let Some(p) = find_program(tool) {
            return Ok(p);
        }
    }
    Err(ProvisionError::MissingTool {
        tool: tool.to_string(),
        package: package.to_string(),
    })
}

/// The static busybox to use as the emulated host's userland.
pub fn require_busybox(allow_install: bool) -> Result<PathBuf, ProvisionError> {
    let path = PathBuf::from(BUSYBOX);
    let check = |p: &Path| -> Result<bool, ProvisionError> {
        match std::fs::read(p) {
            Ok(bytes) => Ok(crate::elf::has_interpreter(&bytes) == Ok(false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ProvisionError::Cache {
                action: "read",
                path: p.to_path_buf(),
                source,
            }),
        }
    };
    if check(&path)? {
        return Ok(path);
    }
    if allow_install {
        run(Command::new("apt-get").args(["install", "-y", "busybox-static"]))?;
        if check(&path)? {
            return Ok(path);
        }
    }
    if path.exists() {
        Err(ProvisionError::BusyboxNotStatic { path })
    } else {
        Err(ProvisionError::MissingTool {
            tool: "busybox (static)".into(),
            package: "busybox-static".into(),
        })
    }
}

/// The concrete package named on the `Depends:` line of
/// `apt-cache depends <metapackage>` output.
pub fn parse_depends(apt_cache_output: &str) -> Option<String> {
    apt_cache_output.lines().find_map(|l| {
        let dep = l
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        (dep.starts_with("linux-image-") && !dep.starts_with('<')).then(|| dep.to_string())
    })
}

/// Asks apt which concrete kernel package the metapackage depends on.
pub fn resolve_kernel_package() -> Result<String, ProvisionError> {
    require_tool("apt-cache", "apt", false)?;
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_METAPACKAGE])
        .output()
        .map_err(|source| ProvisionError::Spawn {
            cmd: format!("apt-cache depends {KERNEL_METAPACKAGE}"),
            source,
        })?;
    parse_depends(&String::from_utf8_lossy(&out.stdout)).ok_or(ProvisionError::UnknownPackage {
        package: KERNEL_METAPACKAGE.to_string(),
    })
}

fn cache_io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ProvisionError {
    let path = path.to_path_buf();
    move |source| ProvisionError::Cache {
        action,
        path,
        source,
    }
}

/// The kernel named in `emuhost/current`, if it is fully unpacked.
pub fn cached_kernel(cache: &EmuhostCache) -> Result<Option<EmuKernel>, ProvisionError> {
    let current = match std::fs::read_to_string(cache.current_file()) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_io("read", &cache.current_file())(e)),
    };
    if current.is_empty() || current.contains('/') {
        return Ok(None);
    }
    let dir = cache.kernel_dir(&current);
    let meta_path = dir.join("meta.json");
    let text = match std::fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_io("read", &meta_path)(e)),
    };
    let meta: KernelMeta = serde_json::from_str(&text).map_err(|source| ProvisionError::Meta {
        path: meta_path.clone(),
        source,
    })?;
    let k = EmuKernel::at(&dir, meta);
    Ok((k.vmlinuz.is_file() && k.modules.is_dir()).then_some(k))
}

/// Downloads `package`, unpacks its kernel and modules, and records it as
/// the current kernel.
pub fn download_and_extract(
    cache: &EmuhostCache,
    package: &str,
) -> Result<EmuKernel, ProvisionError> {
    require_tool("apt-get", "apt", false)?;
    require_tool("dpkg-deb", "dpkg", false)?;
    let tmp_root = cache.tmp_dir();
    std::fs::create_dir_all(&tmp_root).map_err(cache_io("create", &tmp_root))?;
    let staging = tempfile::Builder::new()
        .prefix("kernel-")
        .tempdir_in(&tmp_root)
        .map_err(cache_io("create a staging dir in", &tmp_root))?;
    // As root apt drops to `_apt` for downloads, which cannot write here;
    // downloading as the calling user is what we want.
    run(Command::new("apt-get")
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
        .current_dir(staging.path()))?;
    let deb = std::fs::read_dir(staging.path())
        .map_err(cache_io("list", staging.path()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ProvisionError::BadPackage {
            package: package.to_string(),
            what: ".deb file after apt-get download",
        })?;
    let version = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
        .trim()
        .to_string();
    let unpacked = staging.path().join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;

    let bad = |what| ProvisionError::BadPackage {
        package: package.to_string(),
        what,
    };
    let boot = unpacked.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|_| bad("/boot directory"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| bad("/boot/vmlinuz-*"))?;
    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .ok_or_else(|| bad("kernel release"))?;
    let modules = unpacked.join("lib/modules").join(&release);
    if !modules.is_dir() {
        return Err(bad("/lib/modules/<release> directory"));
    }

    let entry = staging.path().join("entry");
    std::fs::create_dir(&entry).map_err(cache_io("create", &entry))?;
    std::fs::rename(&vmlinuz, entry.join("vmlinuz")).map_err(cache_io("move", &vmlinuz))?;
    std::fs::rename(&modules, entry.join("modules")).map_err(cache_io("move", &modules))?;
    let meta = KernelMeta {
        package: package.to_string(),
        version,
        release: release.clone(),
    };
    let meta_path = entry.join("meta.json");
    let text = serde_json::to_string_pretty(&meta).map_err(|source| ProvisionError::Meta {
        path: meta_path.clone(),
        source,
    })?;
    std::fs::write(&meta_path, text).map_err(cache_io("write", &meta_path))?;

    let dir = cache.kernel_dir(&release);
    let current = cache.current_file();
    if dir.join("meta.json").is_file() && dir.join("vmlinuz").is_file() {
        // Another run unpacked the same release meanwhile (or a refresh
        // found no newer one): keep that copy, it may be in use.
        std::fs::write(&current, format!("{release}\n")).map_err(cache_io("write", &current))?;
        return Ok(EmuKernel::at(&dir, meta));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(cache_io("replace", &dir))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(cache_io("create", parent))?;
    }
    std::fs::rename(&entry, &dir).map_err(cache_io("move into place", &dir))?;
    std::fs::write(&current, format!("{release}\n")).map_err(cache_io("write", &current))?;
    Ok(EmuKernel::at(&dir, meta))
}

/// The cached kernel, or (when none, or when `refresh`) the one apt
/// resolves today, downloaded and unpacked.
pub fn ensure_kernel(cache: &EmuhostCache, refresh: bool) -> Result<EmuKernel, ProvisionError> {
    if !refresh {
        if let Some(k) = cached_kernel(cache)? {
            return Ok(k);
        }
    }
    let package = resolve_kernel_package()?;
    download_and_extract(cache, &package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_line_names_the_concrete_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
        assert_eq!(parse_depends("x\n  Depends: <linux-image-virtual>\n"), None);
    }

    #[test]
    fn cached_kernel_needs_current_meta_image_and_modules() {
        let root = tempfile::tempdir().unwrap();
        let cache = EmuhostCache::new(root.path());
        assert_eq!(cached_kernel(&cache).unwrap(), None);
        let dir = cache.kernel_dir("6.1.0-9-cloud-amd64");
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        std::fs::write(cache.current_file(), "6.1.0-9-cloud-amd64\n").unwrap();
        // No meta.json yet: an interrupted extraction is not a cache hit.
        assert_eq!(cached_kernel(&cache).unwrap(), None);
        let meta = KernelMeta {
            package: "linux-image-6.1.0-9-cloud-amd64".into(),
            version: "6.1.1-1".into(),
            release: "6.1.0-9-cloud-amd64".into(),
        };
        std::fs::write(dir.join("meta.json"), serde_json::to_string(&meta).unwrap()).unwrap();
        assert_eq!(cached_kernel(&cache).unwrap(), None, "no vmlinuz yet");
        std::fs::write(dir.join("vmlinuz"), b"bz").unwrap();
        let k = cached_kernel(&cache).unwrap().unwrap();
        assert_eq!(k.meta, meta);
        assert_eq!(k.vmlinuz, dir.join("vmlinuz"));
        std::fs::write(dir.join("meta.json"), "{").unwrap();
        assert!(matches!(
            cached_kernel(&cache),
            Err(ProvisionError::Meta { .. })
        ));
    }

    #[test]
    fn missing_tool_says_what_to_install() {
        let e = require_tool("isolab-no-such-tool", "isolab-pkg", false).unwrap_err();
        assert!(e.is_host());
        assert_eq!(
            e.to_string(),
            "isolab-no-such-tool not found: install it with `apt-get install isolab-pkg`"
        );
    }
}
