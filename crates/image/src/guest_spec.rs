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
//! The format (docs/contracts.md, "Guest spec"): the line
//! `isolab-spec 1\n`, then records `KEY=VALUE\0`, in order. Values may hold
//! any byte but NUL, which no argument or environment entry can contain.
//! Keys: `arg` (repeated, at least once), `env` (repeated, `NAME=VALUE`),
//! `cwd`, `uid`, `gid`, `group` (repeated, supplementary gids), `ready`
//! (`1`: hand the command `ISOLAB_READY_FD` like the built-in workload).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::config::RunSpec;
use crate::disk::ROOT_FSTYPE;
use crate::source::hex;

/// First line of a spec file.
pub const MAGIC: &[u8] = b"isolab-spec 1\n";
/// Path of the spec inside the guest initramfs.
pub const SPEC_PATH: &str = "isolab/spec";
/// The first virtio-blk disk in the guest.
pub const ROOT_DEVICE: &str = "/dev/vda";
/// Largest spec the init reads.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Spec initramfs images kept in a cache directory.
const KEEP: usize = 8;

/// A spec that cannot be encoded, or its initramfs not written.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A value has a NUL byte.
    #[error("{key} value {value:?} contains a NUL byte")]
    Nul { key: &'static str, value: String },
    /// No command.
    #[error("The guest spec has no command")]
    NoCommand,
    /// Larger than the init reads.
    #[error("The guest spec is {size} bytes; the guest init reads at most {MAX_SPEC_BYTES}")]
    TooLarge { size: usize },
    /// A spec file that does not parse (decode only).
    #[error("Invalid guest spec: {reason}")]
    Malformed { reason: String },
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
        matches!(
            self,
            Self::Nul { .. } | Self::NoCommand | Self::TooLarge { .. } | Self::Malformed { .. }
        )
    }
}

/// What the guest init runs, as it reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Hand the command an `ISOLAB_READY_FD` (images built around the
    /// workbench's own workload); off for foreign programs.
    pub ready_fd: bool,
}

impl GuestSpec {
    /// The guest's view of a run spec (the rootfs is the root disk).
    pub fn from_run_spec(s: &RunSpec) -> GuestSpec {
        GuestSpec {
            args: s.args.clone(),
            env: s.env.clone(),
            cwd: s.cwd.clone(),
            uid: s.uid,
            gid: s.gid,
            additional_gids: s.additional_gids.clone(),
            ready_fd: false,
        }
    }

    /// The spec file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SpecError> {
        if self.args.is_empty() {
            return Err(SpecError::NoCommand);
        }
        let mut out = MAGIC.to_vec();
        let mut put = |key: &'static str, value: &str| {
            if value.contains('\0') {
                return Err(SpecError::Nul {
                    key,
                    value: value.to_string(),
                });
            }
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(0);
            Ok(())
        };
        for a in &self.args {
            put("arg", a)?;
        }
        for e in &self.env {
            put("env", e)?;
        }
        put("cwd", if self.cwd.is_empty() { "/" } else { &self.cwd })?;
        put("uid", &self.uid.to_string())?;
        put("gid", &self.gid.to_string())?;
        for g in &self.additional_gids {
            put("group", &g.to_string())?;
        }
        if self.ready_fd {
            put("ready", "1")?;
        }
        if out.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge { size: out.len() });
        }
        Ok(out)
    }

    /// Parses a spec file (the guest init has its own copy of this
    /// parser; the golden bytes in the tests of both keep them in step).
    pub fn decode(bytes: &[u8]) -> Result<GuestSpec, SpecError> {
        let bad = |reason: String| SpecError::Malformed { reason };
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("missing the 'isolab-spec 1' line".into()))?;
        let mut s = GuestSpec {
            cwd: "/".into(),
            ..GuestSpec::default()
        };
        let body = body
            .strip_suffix(&[0])
            .ok_or_else(|| bad("last record not NUL-terminated".into()))?;
        for rec in body.split(|&b| b == 0) {
            let rec = std::str::from_utf8(rec).map_err(|_| bad("record is not UTF-8".into()))?;
            let (k, v) = rec
                .split_once('=')
                .ok_or_else(|| bad(format!("record {rec:?} has no '='")))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| bad(format!("{k}={v:?} is not a number")))
            };
            match k {
                "arg" => s.args.push(v.into()),
                "env" => s.env.push(v.into()),
                "cwd" => s.cwd = v.into(),
                "uid" => s.uid = num(v)?,
                "gid" => s.gid = num(v)?,
                "group" => s.additional_gids.push(num(v)?),
                "ready" => s.ready_fd = v == "1",
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        if s.args.is_empty() {
            return Err(SpecError::NoCommand);
        }
        Ok(s)
    }
}

/// The guest parameters that make init boot from the root disk.
pub fn root_cmdline() -> String {
    format!("isolab.root={ROOT_DEVICE} isolab.rootfstype={ROOT_FSTYPE}")
}

/// The spec as a newc archive holding `/isolab/spec`.
pub fn spec_archive(spec: &GuestSpec) -> Result<Vec<u8>, SpecError> {
    let bytes = spec.encode()?;
    let mut out = Vec::new();
    isolab_initramfs::Archive::new()
        .dir("isolab", 0o755)
        .file(SPEC_PATH, bytes, 0o644)
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

    /// The bytes guest/init's parser is tested against too.
    pub const GOLDEN: &[u8] = b"isolab-spec 1\narg=/bin/httpd\0arg=-f\0arg=a b\0env=PATH=/bin\0env=X=1=2\0cwd=/www\0uid=33\0gid=33\0group=4\0group=5\0ready=1\0";

    fn spec() -> GuestSpec {
        GuestSpec {
            args: vec!["/bin/httpd".into(), "-f".into(), "a b".into()],
            env: vec!["PATH=/bin".into(), "X=1=2".into()],
            cwd: "/www".into(),
            uid: 33,
            gid: 33,
            additional_gids: vec![4, 5],
            ready_fd: true,
        }
    }

    #[test]
    fn encodes_the_documented_format() {
        assert_eq!(spec().encode().unwrap(), GOLDEN);
        assert_eq!(GuestSpec::decode(GOLDEN).unwrap(), spec());
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.args.push("a\0b".into());
        assert!(matches!(s.encode(), Err(SpecError::Nul { .. })));
        assert!(matches!(
            GuestSpec::default().encode(),
            Err(SpecError::NoCommand)
        ));
        let mut big = spec();
        big.env.push("X=".to_string() + &"y".repeat(MAX_SPEC_BYTES));
        assert!(matches!(big.encode(), Err(SpecError::TooLarge { .. })));
        for bad in [
            &b"nope"[..],
            b"isolab-spec 1\narg=x",
            b"isolab-spec 1\nfoo=1\0",
        ] {
            assert!(GuestSpec::decode(bad).is_err());
        }
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
        let f = listed.iter().find(|e| e.path == SPEC_PATH).unwrap();
        assert_eq!(f.data, GOLDEN);
        assert_eq!(
            root_cmdline(),
            "isolab.root=/dev/vda isolab.rootfstype=erofs"
        );
    }
}
