//! What the emulated host has in its cache and on this machine
//! (`bench emuhost info`). Reads only; provisions nothing.

use std::path::PathBuf;
use std::process::Command;

use crate::cache::EmuhostCache;
use crate::provision::{cached_kernel, find_program, KernelMeta, BUSYBOX, QEMU};

/// A snapshot of the emulated host's readiness.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    pub cache_dir: PathBuf,
    /// The cached cloud kernel, if any.
    pub kernel: Option<KernelMeta>,
    /// Cached base images with their sizes in bytes.
    pub base_images: Vec<(PathBuf, u64)>,
    /// QEMU's path and first `--version` line.
    pub qemu: Option<(PathBuf, String)>,
    /// Busybox's path and whether it is static.
    pub busybox: Option<(PathBuf, bool)>,
}

/// Gathers [`Info`] for the cache at `cache`.
pub fn gather(cache: &EmuhostCache) -> Info {
    let kernel = cached_kernel(cache).ok().flatten().map(|k| k.meta);
    let mut base_images: Vec<(PathBuf, u64)> = std::fs::read_dir(cache.dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("base-") && n.ends_with(".cpio")
        })
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    base_images.sort();
    let qemu = find_program(QEMU).map(|p| {
        let v = Command::new(&p)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        (p, v)
    });
    let busybox = std::fs::read(BUSYBOX).ok().map(|b| {
        (
            PathBuf::from(BUSYBOX),
            crate::elf::has_interpreter(&b) == Ok(false),
        )
    });
    Info {
        cache_dir: cache.dir().to_path_buf(),
        kernel,
        base_images,
        qemu,
        busybox,
    }
}
