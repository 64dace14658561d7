//! What the guest init must run for an image, and how it gets there.
//!
//! The kernel command line holds 2048 bytes, and an image's command and
//! environment easily exceed that (or contain spaces and quotes the
//! command line cannot carry). So the command line only says *where* the
//! root is (`isolab.root=/dev/vda isolab.rootfstype=erofs`), and the
//! command travels as a file, `/isolab/spec`, in a second newc cpio
//! archive appended to the guest initramfs: the kernel unpacks
//! concatenated archives into the same rootfs (each starting 4-byte
//! aligned; zero padding between them is skipped).
//!
//! The format (docs/contracts.md, "Guest spec") is defined once, in
//! `isolab_guest_spec`, which the guest init decodes with.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::config::RunSpec;
use crate::disk::ROOT_FSTYPE;
use crate::source::hex;

pub use isolab_guest_spec::{FormatError, GuestSpec, MAGIC, MAX_SPEC_BYTES, SPEC_PATH};

/// The first virtio-blk disk in the guest.
pub const ROOT_DEVICE: &str = "/dev/vda";
/// Spec initramfs images kept in a cache directory.
const KEEP: usize = 8;

/// A spec that cannot be encoded, or its initramfs not written.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec cannot be encoded (a NUL byte, no command, too large).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Reading the base initramfs failed.
    #[error("Cannot read the guest initramfs {path:?}")]
    ReadBase {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the combined initramfs failed.
    #[error("Cannot write {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    /// True when the spec's content was at fault.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Format(_))
    }
}

impl RunSpec {
    /// The guest's view of this run spec (the rootfs is the root disk).
    pub fn guest_spec(&self) -> GuestSpec {
        GuestSpec {
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            uid: self.uid,
            gid: self.gid,
            additional_gids: self.additional_gids.clone(),
            ready_fd: false,
        }
    }
}

/// The guest parameters that make init boot from the root disk.
pub fn root_cmdline() -> String {
    format!("isolab.root={ROOT_DEVICE} isolab.rootfstype={ROOT_FSTYPE}")
}

/// The archive member the init finds at [`SPEC_PATH`].
fn spec_member() -> &'static str {
    SPEC_PATH.trim_start_matches('/')
}

/// The spec as a newc archive holding `/isolab/spec`.
pub fn spec_archive(spec: &GuestSpec) -> Result<Vec<u8>, SpecError> {
    let bytes = spec.encode()?;
    let mut out = Vec::new();
    isolab_initramfs::Archive::new()
        .dir("isolab", 0o755)
        .file(spec_member(), bytes, 0o644)
        .write_to(&mut out)
        .map_err(|e| SpecError::Write {
            path: PathBuf::from(SPEC_PATH),
            source: std::io::Error::other(e),
        })?;
    Ok(out)
}

/// The guest initramfs `base` with the spec archive appended, as
/// `<dir>/image-<hash>.cpio` (cached: same base and spec, same file; the
/// newest few are kept).
pub fn spec_initramfs(base: &Path, spec: &GuestSpec, dir: &Path) -> Result<PathBuf, SpecError> {
    let extra = spec_archive(spec)?;
    let meta = fs::metadata(base).map_err(|source| SpecError::ReadBase {
        path: base.to_path_buf(),
        source,
    })?;
    let mut h = Sha256::new();
    h.update(b"isolab image initramfs 1");
    h.update(base.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    h.update(mtime.to_le_bytes());
    h.update(&extra);
    let out = dir.join(format!("image-{}.cpio", &hex(&h.finalize())[..16]));
    if out.is_file() {
        return Ok(out);
    }
    let werr = |path: &Path, source| SpecError::Write {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| werr(dir, e))?;
    let mut bytes = fs::read(base).map_err(|source| SpecError::ReadBase {
        path: base.to_path_buf(),
        source,
    })?;
    // Each archive must start 4-byte aligned; pad to a 512-byte block
    // like cpio(1) does.
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes.extend_from_slice(&extra);
    let tmp = dir.join(format!(".tmp-image-{}.cpio", std::process::id()));
    let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, &out)) {
        let _ = fs::remove_file(&tmp);
        return Err(werr(&out, e));
    }
    prune(dir, &out);
    Ok(out)
}

fn prune(dir: &Path, keep: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("image-") && n.ends_with(".cpio"))
        })
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.reverse();
    for (_, p) in found.into_iter().skip(KEEP) {
        if p != keep {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any valid spec (the format itself is tested in `guest/spec`).
    fn spec() -> GuestSpec {
        GuestSpec {
            args: vec!["/bin/sh".into()],
            ..GuestSpec::default()
        }
    }

    #[test]
    fn an_unencodable_spec_is_the_user_s_fault() {
        let e = spec_archive(&GuestSpec::default()).unwrap_err();
        assert!(matches!(e, SpecError::Format(FormatError::NoCommand)));
        assert!(e.is_usage());
    }

    #[test]
    fn initramfs_appends_an_aligned_archive_and_is_cached() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.cpio");
        let mut b = Vec::new();
        isolab_initramfs::Archive::new()
            .file("init", &b"#!"[..], 0o755)
            .write_to(&mut b)
            .unwrap();
        fs::write(&base, &b).unwrap();
        let out = spec_initramfs(&base, &spec(), &d.path().join("c")).unwrap();
        let again = spec_initramfs(&base, &spec(), &d.path().join("c")).unwrap();
        assert_eq!(out, again);
        let bytes = fs::read(&out).unwrap();
        let second = b.len().div_ceil(512) * 512;
        assert!(bytes[b.len()..second].iter().all(|&x| x == 0));
        let listed = isolab_initramfs::list(&bytes[second..]).unwrap();
        let f = listed.iter().find(|e| e.path == "isolab/spec").unwrap();
        assert_eq!(f.data, spec().encode().unwrap());
        assert_eq!(
            root_cmdline(),
            "isolab.root=/dev/vda isolab.rootfstype=erofs"
        );
    }
}
