//! Where an image's files are read from: a directory (an OCI image layout,
//! or an unpacked docker-archive) or an uncompressed tarball of one
//! (`oci-archive`, `docker-archive`), read in place.
//!
//! A tarball is indexed once (one pass over its headers, seeking over the
//! data) and each member is then read at its offset: blobs are never copied
//! out of the archive. Every blob is checked against its sha256 digest
//! ([`Source::verify`]) before anything uses it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{read_error, ImageError};

/// Members of the outer tarball: offset of the data and size.
type TarIndex = HashMap<String, (u64, u64)>;

/// The files of one image input.
#[derive(Debug)]
pub enum Source {
    /// A directory.
    Dir { root: PathBuf },
    /// An uncompressed tar archive, indexed.
    Tar {
        path: PathBuf,
        file: File,
        index: TarIndex,
    },
}

/// Largest JSON document (index, manifest, config) read into memory.
pub const JSON_LIMIT: u64 = 8 << 20;

/// A sha256 digest as `sha256:<64 lowercase hex>`.
pub fn parse_sha256(what: &str, digest: &str) -> Result<String, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::UnsupportedDigest {
            what: what.to_string(),
            digest: digest.to_string(),
        })?;
    Ok(hex.to_ascii_lowercase())
}

/// `sha256:<hex>` of what `r` yields, and how many bytes that was.
pub fn sha256_of(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((format!("sha256:{}", hex(&h.finalize())), n))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Normalises a member name: no leading `./` or `/`, no `..`.
fn normalise(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A window of a file read with `pread`, so several can be open at once.
#[derive(Debug)]
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member ends early",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Source {
    /// Opens `path`: a directory as it is, a regular file as a tarball.
    pub fn open(path: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                read_error(path, e)
            }
        })?;
        if meta.is_dir() {
            return Ok(Source::Dir {
                root: path.to_path_buf(),
            });
        }
        if !meta.is_file() {
            return Err(ImageError::UnknownFormat {
                path: path.to_path_buf(),
                reason: "neither a directory nor a regular file".into(),
            });
        }
        let file = File::open(path).map_err(|e| read_error(path, e))?;
        let index = index_tar(path, &file, meta.len())?;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            file,
            index,
        })
    }

    /// The path given by the user.
    pub fn path(&self) -> &Path {
        match self {
            Source::Dir { root } => root,
            Source::Tar { path, .. } => path,
        }
    }

    fn bad_name(&self, name: &str) -> ImageError {
        ImageError::BadBlobName {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        }
    }

    /// Whether member `name` exists (as a regular file).
    pub fn has(&self, name: &str) -> bool {
        match (self, normalise(name)) {
            (Source::Dir { root }, Some(n)) => root.join(n).is_file(),
            (Source::Tar { index, .. }, Some(n)) => index.contains_key(&n),
            _ => false,
        }
    }

    /// Size of member `name`; `what` names it in the error.
    pub fn size(&self, what: &'static str, name: &str) -> Result<u64, ImageError> {
        let n = normalise(name).ok_or_else(|| self.bad_name(name))?;
        let missing = || ImageError::MissingBlob {
            path: self.path().to_path_buf(),
            what,
            name: name.to_string(),
        };
        match self {
            Source::Dir { root } => match std::fs::metadata(root.join(&n)) {
                Ok(m) if m.is_file() => Ok(m.len()),
                Ok(_) => Err(missing()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
                Err(e) => Err(read_error(root.join(&n), e)),
            },
            Source::Tar { index, .. } => index.get(&n).map(|&(_, s)| s).ok_or_else(missing),
        }
    }

    /// A reader over member `name`.
    pub fn open_member(
        &self,
        what: &'static str,
        name: &str,
    ) -> Result<Box<dyn Read + '_>, ImageError> {
        let n = normalise(name).ok_or_else(|| self.bad_name(name))?;
        let size = self.size(what, name)?;
        match self {
            Source::Dir { root } => {
                let p = root.join(&n);
                let f = File::open(&p).map_err(|e| read_error(&p, e))?;
                Ok(Box::new(f.take(size)))
            }
            Source::Tar { file, index, .. } => {
                let (pos, size) = index[&n];
                Ok(Box::new(Section {
                    file,
                    pos,
                    end: pos + size,
                }))
            }
        }
    }

    /// Reads a small member whole (JSON documents), refusing anything
    /// larger than [`JSON_LIMIT`].
    pub fn read_small(&self, what: &'static str, name: &str) -> Result<Vec<u8>, ImageError> {
        let size = self.size(what, name)?;
        if size > JSON_LIMIT {
            return Err(ImageError::JsonTooLarge {
                what: format!("{what} {name}"),
                size,
                limit: JSON_LIMIT,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open_member(what, name)?
            .read_to_end(&mut buf)
            .map_err(|e| self.read_failure(name, e))?;
        Ok(buf)
    }

    /// Hashes member `name` and compares it with `digest` (and `size`
    /// when the descriptor gives one), before anything uses it.
    pub fn verify(
        &self,
        what: &'static str,
        name: &str,
        digest: &str,
        size: Option<u64>,
    ) -> Result<(), ImageError> {
        let label = format!("{what} {name}");
        let want = parse_sha256(&label, digest)?;
        let actual_size = self.size(what, name)?;
        if let Some(expected) = size.filter(|&s| s != actual_size) {
            return Err(ImageError::SizeMismatch {
                what: label,
                digest: digest.to_string(),
                expected,
                actual: actual_size,
            });
        }
        let (got, _) =
            sha256_of(self.open_member(what, name)?).map_err(|e| self.read_failure(name, e))?;
        if got != format!("sha256:{want}") {
            return Err(ImageError::DigestMismatch {
                what: label,
                expected: format!("sha256:{want}"),
                actual: got,
            });
        }
        Ok(())
    }

    /// Reads a blob whole after checking its digest.
    pub fn read_verified(
        &self,
        what: &'static str,
        name: &str,
        digest: &str,
        size: Option<u64>,
    ) -> Result<Vec<u8>, ImageError> {
        let label = format!("{what} {name}");
        let want = parse_sha256(&label, digest)?;
        let bytes = self.read_small(what, name)?;
        if let Some(expected) = size.filter(|&s| s != bytes.len() as u64) {
            return Err(ImageError::SizeMismatch {
                what: label,
                digest: digest.to_string(),
                expected,
                actual: bytes.len() as u64,
            });
        }
        let got = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        if got != format!("sha256:{want}") {
            return Err(ImageError::DigestMismatch {
                what: label,
                expected: format!("sha256:{want}"),
                actual: got,
            });
        }
        Ok(bytes)
    }

    /// A read error on member `name`: a short read is a corrupt archive.
    pub fn read_failure(&self, name: &str, e: io::Error) -> ImageError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ImageError::CorruptArchive {
                path: self.path().to_path_buf(),
                reason: format!("{name} ends early"),
            }
        } else {
            read_error(self.path().join(name), e)
        }
    }

    /// Blob path of an OCI layout: `blobs/<alg>/<hex>`.
    pub fn blob_name(what: &str, digest: &str) -> Result<String, ImageError> {
        Ok(format!("blobs/sha256/{}", parse_sha256(what, digest)?))
    }
}

/// One pass over the archive's headers: offset and size of every regular
/// file. Anything that is not a complete tar archive is `CorruptArchive`.
fn index_tar(path: &Path, file: &File, len: u64) -> Result<TarIndex, ImageError> {
    let corrupt = |reason: String| ImageError::CorruptArchive {
        path: path.to_path_buf(),
        reason,
    };
    let mut head = [0u8; 512];
    match file.read_exact_at(&mut head, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(corrupt(format!(
                "only {len} bytes, not even one tar header"
            )))
        }
        Err(e) => return Err(read_error(path, e)),
    }
    if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImageError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "a compressed file: decompress it first (podman save and skopeo write \
                     uncompressed archives)"
                .into(),
        });
    }
    if &head[257..262] != b"ustar" {
        return Err(ImageError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "not a tar archive".into(),
        });
    }
    let mut archive = tar::Archive::new(file);
    let mut index = TarIndex::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(e.to_string()))?;
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let name = entry.path().map_err(|e| corrupt(e.to_string()))?;
        let Some(name) = name.to_str().and_then(normalise) else {
            continue;
        };
        let pos = entry.raw_file_position();
        let size = entry.size();
        if pos.checked_add(size).is_none_or(|end| end > len) {
            return Err(corrupt(format!(
                "member {name} needs {size} bytes at offset {pos}, the file has {len}"
            )));
        }
        index.insert(name, (pos, size));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_members_are_read_in_place_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(
            &p,
            tar_of(&[("./index.json", b"{}"), ("blobs/x", b"hello")]),
        )
        .unwrap();
        let s = Source::open(&p).unwrap();
        assert!(s.has("index.json") && s.has("./blobs/x") && !s.has("nope"));
        assert_eq!(s.read_small("index", "index.json").unwrap(), b"{}");
        let (d, n) = sha256_of(&b"hello"[..]).unwrap();
        assert_eq!(n, 5);
        s.verify("blob", "blobs/x", &d, Some(5)).unwrap();
        let e = s.verify("blob", "blobs/x", &d, Some(6)).unwrap_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        let (other, _) = sha256_of(&b"hellO"[..]).unwrap();
        let e = s.verify("blob", "blobs/x", &other, None).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        assert!(e.is_usage());
        let e = s.read_small("blob", "../etc/passwd").unwrap_err();
        assert!(matches!(e, ImageError::BadBlobName { .. }), "{e}");
    }

    #[test]
    fn truncated_or_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let full = tar_of(&[("index.json", &[b'x'; 3000])]);
        let p = dir.path().join("cut.tar");
        std::fs::write(&p, &full[..1500]).unwrap();
        let e = Source::open(&p).unwrap_err();
        assert!(matches!(e, ImageError::CorruptArchive { .. }), "{e}");
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            Source::open(&p).unwrap_err(),
            ImageError::CorruptArchive { .. }
        ));
        std::fs::write(&p, [0x1f, 0x8b].repeat(300)).unwrap();
        assert!(matches!(
            Source::open(&p).unwrap_err(),
            ImageError::UnknownFormat { .. }
        ));
        let e = Source::open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, ImageError::NotFound { .. }));
    }

    #[test]
    fn digests_must_be_sha256() {
        assert!(parse_sha256("x", &format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in ["sha512:abc", "sha256:xyz", "sha256:", "abc"] {
            assert!(matches!(
                parse_sha256("x", bad),
                Err(ImageError::UnsupportedDigest { .. })
            ));
        }
    }
}
