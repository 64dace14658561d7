//! Applying layers to a root filesystem, bottom first, the way the OCI
//! image spec ("Applying Changesets") says: whiteouts (`.wh.NAME`) remove
//! what lower layers put there, an opaque marker (`.wh..wh..opq`) hides a
//! directory's lower content, and a layer's own entries are never hidden
//! by its own whiteouts, whatever their order in the tar.
//!
//! Nothing is ever written outside the root filesystem:
//! - entry names and hard-link targets with `..` are refused
//!   ([`ImageError::PathEscape`]); a leading `/` is read relative to the
//!   root, as GNU tar and containerd do (umoci names the root `/`);
//! - a relative symlink whose target climbs above the root is refused;
//!   absolute symlink targets are kept (they mean the image's root);
//! - parent directories are resolved component by component with
//!   `lstat`, following symlinks *inside* the root only (an absolute
//!   target restarts at the root, `..` stops at it: chroot semantics,
//!   like containerd's and umoci's scoped joins), so no symlink planted by
//!   one entry can carry a later entry to the host;
//! - the final component is never followed: an existing symlink there is
//!   replaced, not written through.
//!
//! The unpacker works in a private directory the caller created; nobody
//! else writes there while it runs.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};

use crate::error::{write_error, ImageError};
use crate::rootpath::Walk;

/// Prefix of a whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What applying the layers produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied (files, directories, links, nodes).
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
}

/// Applies layers to one root filesystem.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    /// Ownership is applied only when running as root.
    chown: bool,
    /// Directory mtimes, applied at the end (entries written into a
    /// directory change its mtime).
    dir_times: BTreeMap<PathBuf, i64>,
    stats: UnpackStats,
}

/// Why a path could not be resolved inside the root.
enum Resolve {
    NotFound,
    NotADirectory(PathBuf),
    Loop,
    Io(PathBuf, io::Error),
}

/// The components of an entry name, or why it escapes.
fn components(name: &Path) -> Result<Vec<OsString>, &'static str> {
    let mut out = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' in the path"),
            // A leading `/` means the image's root, as GNU tar and
            // containerd read it (umoci writes `/` for the root itself).
            Component::RootDir => {}
            Component::Prefix(_) => return Err("not a Unix path"),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, read from directory `depth` levels
/// below the root, climbs above the root.
fn relative_target_escapes(depth: usize, target: &Path) -> bool {
    let mut d = depth as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                d -= 1;
                if d < 0 {
                    return true;
                }
            }
            Component::Normal(_) => d += 1,
            _ => {}
        }
    }
    false
}

fn to_cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))
}

/// Removes `path` whatever it is (a directory recursively).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Unpacker {
    /// An unpacker writing into `root` (an existing, empty directory).
    pub fn new(root: &Path) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            chown: nix::unistd::geteuid().is_root(),
            dir_times: BTreeMap::new(),
            stats: UnpackStats::default(),
        }
    }

    /// Statistics so far.
    pub fn stats(&self) -> UnpackStats {
        self.stats
    }

    /// Resolves `comps` (a directory path inside the root) to a real
    /// directory path relative to the root, following symlinks within the
    /// root. With `create`, missing directories are made (0755), as tar
    /// does for members whose parents have no entry of their own.
    fn resolve_dir(
        &self,
        comps: &[OsString],
        create: bool,
        created: &mut HashSet<PathBuf>,
    ) -> Result<PathBuf, Resolve> {
        let mut walk = Walk::new(comps.iter().cloned());
        while let Some(next) = walk.next_path() {
            let full = self.root.join(&next);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {
                    // A directory holding an entry of this layer is part
                    // of this layer (tar writers may omit its own entry):
                    // an opaque marker must not remove it with the entry.
                    if create {
                        created.insert(next.clone());
                    }
                    walk.enter(next);
                }
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&full).map_err(|e| Resolve::Io(full.clone(), e))?;
                    if !walk.follow(&target) {
                        return Err(Resolve::Loop);
                    }
                }
                Ok(_) => return Err(Resolve::NotADirectory(next)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Err(Resolve::NotFound);
                    }
                    fs::create_dir(&full).map_err(|e| Resolve::Io(full.clone(), e))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                        .map_err(|e| Resolve::Io(full.clone(), e))?;
                    created.insert(next.clone());
                    walk.enter(next);
                }
                Err(e) => return Err(Resolve::Io(full, e)),
            }
        }
        Ok(walk.resolved())
    }

    /// Applies one layer (an uncompressed tar stream); `layer` names it in
    /// errors.
    pub fn apply_layer(&mut self, layer: &str, input: impl Read) -> Result<(), ImageError> {
        let eof_at = Rc::new(Cell::new(None));
        let mut archive = tar::Archive::new(PadAtEof {
            inner: input,
            pos: 0,
            eof_at: eof_at.clone(),
            fill: 0,
        });
        let bad_layer = |source: io::Error| ImageError::BadLayer {
            layer: layer.to_string(),
            source,
        };
        // Everything this layer wrote: its own whiteouts never hide these.
        let mut created: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().map_err(bad_layer)? {
            let mut entry = entry.map_err(bad_layer)?;
            let raw = entry.path().map_err(bad_layer)?.into_owned();
            self.apply_entry(layer, &raw, &mut entry, &mut created)?;
            // Data that ran into the end of the stream was cut, not padded.
            let data_end = entry.raw_file_position() + entry.size();
            if eof_at.get().is_some_and(|eof| eof < data_end) {
                return Err(bad_layer(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} is cut short", raw.display()),
                )));
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        layer: &str,
        raw: &Path,
        entry: &mut tar::Entry<'_, R>,
        created: &mut HashSet<PathBuf>,
    ) -> Result<(), ImageError> {
        let entry_name = raw.to_string_lossy().into_owned();
        let escape = |reason: &str| ImageError::PathEscape {
            layer: layer.to_string(),
            entry: entry_name.clone(),
            reason: reason.to_string(),
        };
        let bad = |reason: String| ImageError::BadEntry {
            layer: layer.to_string(),
            entry: entry_name.clone(),
            reason,
        };
        let comps = components(raw).map_err(escape)?;
        let kind = entry.header().entry_type();
        let Some((name, parents)) = comps.split_last() else {
            // "./": the root directory's own metadata.
            if kind.is_dir() {
                let rel = PathBuf::new();
                self.set_meta(layer, &rel, entry, true)?;
            }
            return Ok(());
        };
        let name_bytes = name.as_bytes();

        // Whiteouts: resolve the directory without creating it; a
        // directory that is not there has nothing to hide.
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let parent = match self.resolve_dir(parents, false, created) {
                Ok(p) => p,
                Err(Resolve::NotFound | Resolve::NotADirectory(_)) => return Ok(()),
                Err(Resolve::Loop) => return Err(bad("too many levels of symlinks".into())),
                Err(Resolve::Io(p, e)) => return Err(write_error(p, e)),
            };
            self.stats.whiteouts += 1;
            if name == OPAQUE_MARKER {
                return self.make_opaque(&parent, created);
            }
            let hidden = OsStr::from_bytes(&name_bytes[WHITEOUT_PREFIX.len()..]);
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(escape("whiteout of '.' or '..'"));
            }
            let rel = parent.join(hidden);
            if !created.contains(&rel) {
                let full = self.root.join(&rel);
                remove_any(&full).map_err(|e| write_error(&full, e))?;
            }
            return Ok(());
        }

        let parent = match self.resolve_dir(parents, true, created) {
            Ok(p) => p,
            Err(Resolve::NotADirectory(p)) => {
                return Err(bad(format!("{} is not a directory", p.display())))
            }
            Err(Resolve::Loop) => return Err(bad("too many levels of symlinks".into())),
            Err(Resolve::NotFound) => return Err(bad("parent directory missing".into())),
            Err(Resolve::Io(p, e)) => return Err(write_error(p, e)),
        };
        let rel = parent.join(name);
        let full = self.root.join(&rel);
        let existing = fs::symlink_metadata(&full).ok();
        // A directory stays a directory (its content merges); anything
        // else is replaced.
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_any(&full).map_err(|e| write_error(&full, e))?;
        }
        let werr = |e: io::Error| write_error(&full, e);
        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    fs::create_dir(&full).map_err(werr)?;
                }
                self.set_meta(layer, &rel, entry, true)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&full)
                    .map_err(werr)?;
                let n = copy(entry, &mut f).map_err(|e| match e {
                    CopyError::Read(source) => ImageError::BadLayer {
                        layer: layer.to_string(),
                        source,
                    },
                    CopyError::Write(e) => write_error(&full, e),
                })?;
                self.stats.bytes += n;
                drop(f);
                self.set_meta(layer, &rel, entry, false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad("symlink without a target".into()))?
                    .into_owned();
                if target.is_relative()
                    && relative_target_escapes(parent.components().count(), &target)
                {
                    return Err(escape(&format!(
                        "symlink to {} points outside the root",
                        target.display()
                    )));
                }
                std::os::unix::fs::symlink(&target, &full).map_err(werr)?;
                self.set_meta(layer, &rel, entry, false)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad("hard link without a target".into()))?
                    .into_owned();
                let tcomps = components(&target)
                    .map_err(|r| escape(&format!("hard link target {}: {r}", target.display())))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(escape("hard link to the root"));
                };
                let tparent = self.resolve_dir(tparents, false, created).map_err(|_| {
                    bad(format!(
                        "hard link target {} does not exist",
                        target.display()
                    ))
                })?;
                let tfull = self.root.join(tparent.join(tname));
                match fs::symlink_metadata(&tfull) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => {
                        return Err(bad(format!("hard link to directory {}", target.display())))
                    }
                    Err(_) => {
                        return Err(bad(format!(
                            "hard link target {} does not exist",
                            target.display()
                        )))
                    }
                }
                // link(2) never follows a symlink at the target: the link
                // is to the symlink itself, inside the root.
                fs::hard_link(&tfull, &full).map_err(werr)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let h = entry.header();
                let (sflag, dev) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, device(h)),
                    tar::EntryType::Block => (SFlag::S_IFBLK, device(h)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                match nix::sys::stat::mknod(&full, sflag, Mode::from_bits_truncate(0o600), dev) {
                    Ok(()) => self.set_meta(layer, &rel, entry, false)?,
                    // Without CAP_MKNOD (rootless) device nodes are left
                    // out, as rootless runtimes do.
                    Err(nix::Error::EPERM) if !self.chown && sflag != SFlag::S_IFIFO => {
                        return Ok(())
                    }
                    Err(e) => return Err(werr(e.into())),
                }
            }
            other => return Err(bad(format!("unsupported tar entry type {other:?}"))),
        }
        created.insert(rel);
        self.stats.entries += 1;
        Ok(())
    }

    /// Hides the lower content of directory `rel`: everything in it that
    /// this layer did not write goes, recursively.
    fn make_opaque(&self, rel: &Path, created: &HashSet<PathBuf>) -> Result<(), ImageError> {
        let full = self.root.join(rel);
        let rd = fs::read_dir(&full).map_err(|e| write_error(&full, e))?;
        for child in rd {
            let child = child.map_err(|e| write_error(&full, e))?;
            let crel = rel.join(child.file_name());
            let cfull = self.root.join(&crel);
            if created.contains(&crel) {
                let is_dir = child.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    self.make_opaque(&crel, created)?;
                }
            } else {
                remove_any(&cfull).map_err(|e| write_error(&cfull, e))?;
            }
        }
        Ok(())
    }

    /// Owner, mode, mtime and xattrs from the header, in that order
    /// (chown clears set-id bits, so the mode comes after it).
    fn set_meta<R: Read>(
        &mut self,
        layer: &str,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        is_dir: bool,
    ) -> Result<(), ImageError> {
        let full = self.root.join(rel);
        let werr = |e: io::Error| write_error(&full, e);
        let bad = |e: io::Error| ImageError::BadEntry {
            layer: layer.to_string(),
            entry: rel.display().to_string(),
            reason: e.to_string(),
        };
        let h = entry.header();
        let is_link = h.entry_type().is_symlink();
        let mut uid = h.uid().map_err(bad)?;
        let mut gid = h.gid().map_err(bad)?;
        let mtime = h.mtime().map_err(bad)? as i64;
        let mode = h.mode().map_err(bad)? & 0o7777;
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                } else if key == "uid" {
                    uid = ext.value().ok().and_then(|v| v.parse().ok()).unwrap_or(uid);
                } else if key == "gid" {
                    gid = ext.value().ok().and_then(|v| v.parse().ok()).unwrap_or(gid);
                }
            }
        }
        if self.chown {
            let (Ok(u), Ok(g)) = (u32::try_from(uid), u32::try_from(gid)) else {
                return Err(bad(io::Error::other(format!(
                    "uid {uid} or gid {gid} out of range"
                ))));
            };
            fchownat(
                AT_FDCWD,
                &full,
                Some(Uid::from_raw(u)),
                Some(Gid::from_raw(g)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| werr(e.into()))?;
        }
        if !is_link {
            fs::set_permissions(&full, fs::Permissions::from_mode(mode)).map_err(werr)?;
        }
        for (name, value) in xattrs {
            set_xattr(&full, &name, &value).map_err(werr)?;
        }
        if is_dir {
            self.dir_times.insert(rel.to_path_buf(), mtime);
        } else {
            let t = TimeSpec::new(mtime, 0);
            utimensat(AT_FDCWD, &full, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| werr(e.into()))?;
        }
        Ok(())
    }

    /// Sets the directories' mtimes, once every layer is applied.
    pub fn finish(mut self) -> Result<UnpackStats, ImageError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let full = self.root.join(&rel);
            // A later layer may have removed or replaced it.
            if !fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let t = TimeSpec::new(mtime, 0);
            utimensat(AT_FDCWD, &full, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| write_error(&full, e.into()))?;
        }
        Ok(self.stats)
    }
}

fn device(h: &tar::Header) -> u64 {
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    nix::sys::stat::makedev(u64::from(major), u64::from(minor))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = to_cstring(path)?;
    let n = CString::new(name).map_err(|_| io::Error::other("NUL in xattr name"))?;
    // SAFETY: both strings are NUL-terminated and live across the call;
    // value points at value.len() readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A file system without xattrs, or a namespace we may not write
    // (trusted.* without CAP_SYS_ADMIN): the content still unpacks.
    match e.raw_os_error() {
        Some(libc::ENOTSUP) | Some(libc::EPERM) => Ok(()),
        _ => Err(e),
    }
}

/// Ends a stream the way a tar reader expects: after the real end,
/// zeros up to the next 512-byte block plus the two end-of-archive blocks.
/// Some writers (umoci 0.4.7's `insert`, seen in the tests) stop right
/// after the last member's data; GNU tar and Go's reader accept that, and
/// so does this. Data cut short is still an error: the caller compares
/// each member's end with `eof_at`.
struct PadAtEof<R> {
    inner: R,
    pos: u64,
    eof_at: Rc<Cell<Option<u64>>>,
    fill: u64,
}

impl<R: Read> Read for PadAtEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof_at.get().is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            self.eof_at.set(Some(self.pos));
            self.fill = (512 - self.pos % 512) % 512 + 1024;
        }
        let k = buf
            .len()
            .min(usize::try_from(self.fill).unwrap_or(usize::MAX));
        buf[..k].fill(0);
        self.fill -= k as u64;
        self.pos += k as u64;
        Ok(k)
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy` that tells a bad layer (read) from a full disk (write).
fn copy(from: &mut impl Read, to: &mut File) -> Result<u64, CopyError> {
    use std::io::Write;
    let mut buf = vec![0u8; 128 << 10];
    let mut n = 0;
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tar built entry by entry.
    #[derive(Default)]
    struct T(Vec<u8>);

    impl T {
        fn add(
            mut self,
            name: &str,
            kind: tar::EntryType,
            data: &[u8],
            link: Option<&str>,
            mode: u32,
        ) -> T {
            let mut b = tar::Builder::new(std::mem::take(&mut self.0));
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(1_000_000);
            h.set_uid(0);
            h.set_gid(0);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Names with '..' or '/' go in raw, as a hostile tool would.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, data).unwrap();
            self.0 = b.into_inner().unwrap();
            // Drop the two end blocks append_data's finish would add:
            // Builder::into_inner writes them, strip to keep appending.
            let n = self.0.len() - 1024;
            self.0.truncate(n);
            self
        }
        fn file(self, name: &str, data: &[u8]) -> T {
            self.add(name, tar::EntryType::Regular, data, None, 0o644)
        }
        fn dir(self, name: &str) -> T {
            self.add(name, tar::EntryType::Directory, b"", None, 0o755)
        }
        fn symlink(self, name: &str, to: &str) -> T {
            self.add(name, tar::EntryType::Symlink, b"", Some(to), 0o777)
        }
        fn hardlink(self, name: &str, to: &str) -> T {
            self.add(name, tar::EntryType::Link, b"", Some(to), 0o644)
        }
        fn bytes(mut self) -> Vec<u8> {
            self.0.extend_from_slice(&[0u8; 1024]);
            self.0
        }
    }

    fn unpack(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<UnpackStats, ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let mut u = Unpacker::new(&root);
        for (i, l) in layers.iter().enumerate() {
            if let Err(e) = u.apply_layer(&format!("layer{i}"), &l[..]) {
                return (dir, Err(e));
            }
        }
        let r = u.finish();
        (dir, r)
    }

    fn read(dir: &tempfile::TempDir, p: &str) -> Option<String> {
        fs::read_to_string(dir.path().join("rootfs").join(p)).ok()
    }

    #[test]
    fn files_dirs_links_and_modes() {
        let l = T::default()
            .dir("./")
            .dir("etc/")
            .file("etc/hostname", b"box\n")
            .add("bin/tool", tar::EntryType::Regular, b"#!x", None, 0o4755)
            .symlink("bin/alias", "/bin/tool")
            .hardlink("bin/hard", "bin/tool")
            .bytes();
        let (d, r) = unpack(&[l]);
        let s = r.unwrap();
        assert_eq!(read(&d, "etc/hostname").as_deref(), Some("box\n"));
        let root = d.path().join("rootfs");
        let m = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755, "setuid bit kept");
        assert_eq!(m.nlink(), 2);
        assert_eq!(
            fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(m.mtime(), 1_000_000);
        assert_eq!(fs::metadata(root.join("etc")).unwrap().mtime(), 1_000_000);
        assert_eq!(s.bytes, 7);
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers_only() {
        let l0 = T::default()
            .file("a/keep", b"1")
            .file("a/gone", b"2")
            .file("o/old", b"3")
            .file("o/sub/old", b"4")
            .bytes();
        // Whiteout after the file of the same layer: the file stays.
        let l1 = T::default()
            .file("a/same", b"5")
            .file("a/.wh.gone", b"")
            .file("a/.wh.same", b"")
            .file("o/sub/new", b"6")
            .file("o/.wh..wh..opq", b"")
            .file("o/new", b"7")
            .bytes();
        let (d, r) = unpack(&[l0, l1]);
        let s = r.unwrap();
        assert_eq!(s.whiteouts, 3);
        assert_eq!(read(&d, "a/keep").as_deref(), Some("1"));
        assert_eq!(read(&d, "a/gone"), None);
        assert_eq!(read(&d, "a/same").as_deref(), Some("5"));
        assert_eq!(read(&d, "o/old"), None);
        assert_eq!(
            read(&d, "o/sub/old"),
            None,
            "opaque hides lower content recursively"
        );
        assert_eq!(read(&d, "o/sub/new").as_deref(), Some("6"));
        assert_eq!(read(&d, "o/new").as_deref(), Some("7"));
        assert!(!d.path().join("rootfs/a/.wh.gone").exists());
        assert!(!d.path().join("rootfs/o/.wh..wh..opq").exists());
    }

    #[test]
    fn later_layers_replace_types() {
        let l0 = T::default()
            .dir("x/")
            .file("x/f", b"1")
            .file("y", b"2")
            .bytes();
        let l1 = T::default().file("x", b"now a file").dir("y/").bytes();
        let (d, r) = unpack(&[l0, l1]);
        r.unwrap();
        assert_eq!(read(&d, "x").as_deref(), Some("now a file"));
        assert!(d.path().join("rootfs/y").is_dir());
    }

    #[test]
    fn escapes_are_refused() {
        let outside = |d: &tempfile::TempDir| d.path().join("escaped").exists();
        for (layer, what) in [
            (T::default().file("../escaped", b"x").bytes(), "'..'"),
            (T::default().symlink("l", "../escaped").bytes(), "symlink"),
            (
                T::default().symlink("a/b/l", "../../../escaped").bytes(),
                "symlink",
            ),
            (
                T::default()
                    .file("f", b"x")
                    .hardlink("h", "../escaped")
                    .bytes(),
                "hard link",
            ),
        ] {
            let (d, r) = unpack(&[layer]);
            let e = r.unwrap_err();
            assert!(matches!(e, ImageError::PathEscape { .. }), "{what}: {e}");
            assert!(e.is_usage());
            assert!(!outside(&d), "{what}");
        }
    }

    #[test]
    fn absolute_names_land_inside_the_root() {
        let (d, r) = unpack(&[T::default()
            .file("/abs", b"x")
            .hardlink("/h", "/abs")
            .bytes()]);
        r.unwrap();
        assert_eq!(read(&d, "abs").as_deref(), Some("x"));
        assert_eq!(read(&d, "h").as_deref(), Some("x"));
    }

    #[test]
    fn symlinked_parents_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let abs = outside.to_str().unwrap().to_string();
        // An absolute symlink to a host directory, then a write through it.
        let l = T::default()
            .symlink("evil", &abs)
            .file("evil/pwned", b"x")
            .symlink("up", "/")
            .file("up/etc/f", b"y")
            .bytes();
        let mut u = Unpacker::new(&root);
        u.apply_layer("l", &l[..]).unwrap();
        u.finish().unwrap();
        assert!(
            !outside.join("pwned").exists(),
            "nothing written on the host"
        );
        assert_eq!(
            fs::read_to_string(root.join(abs.trim_start_matches('/')).join("pwned")).unwrap(),
            "x",
            "written where the symlink points inside the root"
        );
        assert_eq!(fs::read_to_string(root.join("etc/f")).unwrap(), "y");
        // The final component is replaced, never written through.
        let l2 = T::default().file("evil", b"plain").bytes();
        let mut u = Unpacker::new(&root);
        u.apply_layer("l2", &l2[..]).unwrap();
        assert_eq!(fs::read_to_string(root.join("evil")).unwrap(), "plain");
    }

    #[test]
    fn truncated_layers_and_odd_links_are_errors() {
        let full = T::default().file("big", &[7u8; 5000]).bytes();
        let (_d, r) = unpack(&[full[..3000].to_vec()]);
        assert!(matches!(r.unwrap_err(), ImageError::BadLayer { .. }));
        let (_d, r) = unpack(&[T::default().hardlink("h", "missing").bytes()]);
        assert!(matches!(r.unwrap_err(), ImageError::BadEntry { .. }));
        let (_d, r) = unpack(&[T::default().dir("d/").hardlink("h", "d").bytes()]);
        assert!(matches!(r.unwrap_err(), ImageError::BadEntry { .. }));
        let (_d, r) = unpack(&[T::default().file("f", b"").file("f/x", b"").bytes()]);
        assert!(matches!(r.unwrap_err(), ImageError::BadEntry { .. }));
    }

    #[test]
    fn a_layer_without_padding_or_end_blocks_is_read_whole() {
        let full = T::default().file("a", b"first").file("b", b"last!").bytes();
        // Cut right after the last member's data, as umoci 0.4.7 writes.
        let cut = full[..512 * 3 + 5].to_vec();
        let (d, r) = unpack(&[cut]);
        r.unwrap();
        assert_eq!(read(&d, "b").as_deref(), Some("last!"));
        // One byte less is a cut file, not padding.
        let (_d, r) = unpack(&[full[..512 * 3 + 4].to_vec()]);
        assert!(matches!(r.unwrap_err(), ImageError::BadLayer { .. }));
    }

    #[test]
    fn relative_escape_arithmetic() {
        assert!(!relative_target_escapes(0, Path::new("usr/lib")));
        assert!(relative_target_escapes(0, Path::new("../x")));
        assert!(!relative_target_escapes(1, Path::new("../lib/x")));
        assert!(relative_target_escapes(1, Path::new("a/../../../x")));
    }
}
