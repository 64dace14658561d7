//! Reproducible initramfs images (newc cpio), written with the `cpio` crate.
//!
//! This crate owns the archive format only: which entries go in, in which
//! order, with which metadata. It does not know about kernels or monitors.
//! Two users: the microVM guest image ([`guest_initramfs`]: `/init` +
//! `/workload`) and the emulated host's image (busybox, modules, test
//! programs), built by another crate through the general [`Archive`] API.
//!
//! Reproducible by construction: entries are sorted by path, inode numbers
//! are assigned in that order, uid/gid are 0 and every mtime is 0, so the
//! same input gives the same bytes. Missing parent directories are added
//! (mode 0755) because the kernel's unpacker does not create them.
//!
//! ```no_run
//! use isolab_initramfs::Archive;
//! let mut out = Vec::new();
//! Archive::new()
//!     .dir("dev", 0o755)
//!     .char_dev("dev/console", 0o600, 5, 1)
//!     .file("init", std::path::Path::new("/bin/busybox"), 0o755)
//!     .symlink("bin/sh", "/init")
//!     .write_to(&mut out)
//!     .unwrap();
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cpio::newc::{self, ModeFileType};

/// Errors while building or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path inside the archive is empty, absolute after normalisation, or
    /// climbs out with `..`.
    #[error("Invalid path in archive {path:?}: use a relative path without '..'")]
    InvalidPath { path: String },
    /// Two different entries were given for the same path.
    #[error("Duplicate entry {path:?} in archive")]
    Duplicate { path: String },
    /// A host file to copy into the archive could not be read.
    #[error("Cannot read {host:?} for archive entry {path:?}")]
    ReadHost {
        host: PathBuf,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file is larger than newc's 32-bit size field.
    #[error("File {path:?} is {len} bytes; newc archives hold at most 4 GiB per file")]
    TooLarge { path: String, len: u64 },
    /// Writing the archive failed.
    #[error("Cannot write the archive")]
    Write(#[source] io::Error),
    /// Creating the output file failed.
    #[error("Cannot create {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading an archive back failed (corrupt or not newc).
    #[error("Cannot read the archive")]
    Read(#[source] io::Error),
}

/// Where a file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The contents of this host file, read when the archive is written.
    Path(PathBuf),
}

impl From<Vec<u8>> for Source {
    fn from(v: Vec<u8>) -> Self {
        Source::Bytes(v)
    }
}
impl From<&[u8]> for Source {
    fn from(v: &[u8]) -> Self {
        Source::Bytes(v.to_vec())
    }
}
impl From<&str> for Source {
    fn from(v: &str) -> Self {
        Source::Bytes(v.as_bytes().to_vec())
    }
}
impl From<&Path> for Source {
    fn from(p: &Path) -> Self {
        Source::Path(p.to_path_buf())
    }
}
impl From<PathBuf> for Source {
    fn from(p: PathBuf) -> Self {
        Source::Path(p)
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Source),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    InvalidPath(String),
    Duplicate(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    /// Permission bits only (0o7777).
    perm: u32,
}

/// An archive being assembled. Builder methods never fail; all checks and
/// host reads happen in [`Archive::write_to`], which reports the first
/// problem.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
    /// Builder mistakes, reported by `write_to`.
    problems: Vec<Problem>,
}

/// One entry as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    /// Full mode: file type and permission bits.
    pub mode: u32,
    pub size: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub ino: u32,
    pub rdev: (u32, u32),
    /// File contents or symlink target.
    pub data: Vec<u8>,
}

impl Listed {
    /// True if this entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
    /// True if this entry is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
    /// True if this entry is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
    /// True if this entry is a character device.
    pub fn is_char_dev(&self) -> bool {
        self.mode & 0o170000 == 0o020000
    }
}

/// Normalises an in-archive path: strips leading `/` and `./`, collapses
/// repeated slashes, refuses `..` and the empty path.
fn normalise(path: &str) -> Result<String, InitramfsError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => {
                return Err(InitramfsError::InvalidPath {
                    path: path.to_string(),
                })
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(InitramfsError::InvalidPath {
            path: path.to_string(),
        });
    }
    Ok(parts.join("/"))
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(mut self, path: &str, node: Node) -> Self {
        match normalise(path) {
            Err(_) => self.problems.push(Problem::InvalidPath(path.to_string())),
            Ok(p) => {
                // Adding the same directory twice is harmless (the same
                // parent named by two callers); anything else is a mistake.
                if let Some(old) = self.nodes.get(&p) {
                    if !(old.kind == Kind::Dir && node.kind == Kind::Dir) {
                        self.problems.push(Problem::Duplicate(p));
                        return self;
                    }
                }
                self.nodes.insert(p, node);
            }
        }
        self
    }

    /// A directory with the given permission bits.
    pub fn dir(self, path: &str, perm: u32) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::Dir,
                perm: perm & 0o7777,
            },
        )
    }

    /// A regular file from bytes or from a host path.
    pub fn file(self, path: &str, source: impl Into<Source>, perm: u32) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::File(source.into()),
                perm: perm & 0o7777,
            },
        )
    }

    /// A symbolic link at `path` pointing to `target` (stored verbatim).
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::Symlink(target.to_string()),
                perm: 0o777,
            },
        )
    }

    /// A character device node.
    pub fn char_dev(self, path: &str, perm: u32, major: u32, minor: u32) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::CharDev { major, minor },
                perm: perm & 0o7777,
            },
        )
    }

    /// A block device node.
    pub fn block_dev(self, path: &str, perm: u32, major: u32, minor: u32) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::BlockDev { major, minor },
                perm: perm & 0o7777,
            },
        )
    }

    /// The paths that will be written, in archive order, including implied
    /// parent directories.
    pub fn paths(&self) -> Vec<String> {
        self.with_parents().into_keys().collect()
    }

    fn with_parents(&self) -> BTreeMap<String, Node> {
        let mut all = self.nodes.clone();
        for path in self.nodes.keys() {
            let mut cur = path.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                all.entry(parent.to_string()).or_insert(Node {
                    kind: Kind::Dir,
                    perm: 0o755,
                });
                cur = parent;
            }
        }
        all
    }

    /// Writes the newc archive (with its trailer) to `out` and returns it.
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, InitramfsError> {
        if let Some(problem) = self.problems.first() {
            return Err(match problem.clone() {
                Problem::InvalidPath(path) => InitramfsError::InvalidPath { path },
                Problem::Duplicate(path) => InitramfsError::Duplicate { path },
            });
        }
        let mut out = out;
        for (index, (path, node)) in self.with_parents().iter().enumerate() {
            // Inode 0 is avoided: some unpackers treat it as "no inode".
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            out = write_node(out, path, node, ino)?;
        }
        newc::trailer(out).map_err(InitramfsError::Write)
    }

    /// Writes the archive to a file at `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<(), InitramfsError> {
        let file = File::create(path).map_err(|source| InitramfsError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let mut w = self.write_to(BufWriter::new(file))?;
        w.flush().map_err(InitramfsError::Write)
    }
}

fn write_node<W: Write>(out: W, path: &str, node: &Node, ino: u32) -> Result<W, InitramfsError> {
    let base = newc::Builder::new(path)
        .ino(ino)
        .uid(0)
        .gid(0)
        .mtime(0)
        .mode(node.perm);
    let (builder, data): (newc::Builder, Vec<u8>) = match &node.kind {
        Kind::Dir => (
            base.set_mode_file_type(ModeFileType::Directory).nlink(2),
            Vec::new(),
        ),
        Kind::File(source) => {
            let data = match source {
                Source::Bytes(b) => b.clone(),
                Source::Path(host) => {
                    std::fs::read(host).map_err(|source| InitramfsError::ReadHost {
                        host: host.clone(),
                        path: path.to_string(),
                        source,
                    })?
                }
            };
            (
                base.set_mode_file_type(ModeFileType::Regular).nlink(1),
                data,
            )
        }
        Kind::Symlink(target) => (
            base.set_mode_file_type(ModeFileType::Symlink).nlink(1),
            target.as_bytes().to_vec(),
        ),
        Kind::CharDev { major, minor } => (
            base.set_mode_file_type(ModeFileType::Char)
                .nlink(1)
                .rdev_major(*major)
                .rdev_minor(*minor),
            Vec::new(),
        ),
        Kind::BlockDev { major, minor } => (
            base.set_mode_file_type(ModeFileType::Block)
                .nlink(1)
                .rdev_major(*major)
                .rdev_minor(*minor),
            Vec::new(),
        ),
    };
    let len = u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge {
        path: path.to_string(),
        len: data.len() as u64,
    })?;
    let mut writer = builder.write(out, len);
    writer.write_all(&data).map_err(InitramfsError::Write)?;
    writer.finish().map_err(InitramfsError::Write)
}

/// Reads a newc archive and lists its entries (without the trailer).
pub fn list<R: Read>(mut input: R) -> Result<Vec<Listed>, InitramfsError> {
    let mut entries = Vec::new();
    loop {
        let mut reader = newc::Reader::new(input).map_err(InitramfsError::Read)?;
        let e = reader.entry().clone();
        if e.is_trailer() {
            return Ok(entries);
        }
        let mut data = Vec::with_capacity(e.file_size() as usize);
        reader
            .read_to_end(&mut data)
            .map_err(InitramfsError::Read)?;
        entries.push(Listed {
            path: e.name().to_string(),
            mode: e.mode(),
            size: e.file_size(),
            uid: e.uid(),
            gid: e.gid(),
            mtime: e.mtime(),
            ino: e.ino(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data,
        });
        input = reader.finish().map_err(InitramfsError::Read)?;
    }
}

/// One extra file for the guest image (demos put inputs next to the
/// workload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// Path inside the guest, e.g. `etc/demo.json`.
    pub path: String,
    pub source: Source,
    pub perm: u32,
}

/// The microVM guest image: `/init` (the guest init), `/workload`, the
/// mount points init uses (`/dev`, `/proc`, `/sys`, `/tmp`), `/dev/console`
/// (the kernel opens it for init's stdio before devtmpfs is mounted), and
/// any extra files.
pub fn guest_initramfs(
    init: impl Into<Source>,
    workload: impl Into<Source>,
    extra_files: &[ExtraFile],
) -> Archive {
    let mut a = Archive::new()
        .file("init", init, 0o755)
        .file("workload", workload, 0o755)
        .dir("dev", 0o755)
        // 5:1 is /dev/console (Documentation/admin-guide/devices.txt).
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .dir("etc", 0o755);
    for extra in extra_files {
        a = a.file(&extra.path, extra.source.clone(), extra.perm);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(a: &Archive) -> Vec<u8> {
        a.write_to(Vec::new()).unwrap()
    }

    #[test]
    fn same_input_gives_same_bytes_regardless_of_insertion_order() {
        let a = Archive::new()
            .file("b/x", "hello", 0o644)
            .dir("a", 0o755)
            .symlink("c", "b/x");
        let b = Archive::new()
            .symlink("c", "b/x")
            .dir("a", 0o755)
            .file("b/x", "hello", 0o644);
        assert_eq!(bytes(&a), bytes(&b));
    }

    #[test]
    fn host_file_content_and_mtime_do_not_leak_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"payload").unwrap();
        let first = bytes(&Archive::new().file("f", p.as_path(), 0o755));
        // Touch the file: a new mtime must not change the archive.
        std::fs::write(&p, b"payload").unwrap();
        let second = bytes(&Archive::new().file("f", p.as_path(), 0o755));
        assert_eq!(first, second);
        assert_eq!(first, bytes(&Archive::new().file("f", "payload", 0o755)));
    }

    #[test]
    fn listing_shows_sorted_entries_with_parents_types_and_modes() {
        let out = bytes(
            &Archive::new()
                .file("/usr/bin/tool", "#!", 0o755)
                .char_dev("dev/console", 0o600, 5, 1)
                .symlink("bin", "usr/bin"),
        );
        let l = list(out.as_slice()).unwrap();
        let names: Vec<_> = l.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        assert!(l[0].is_symlink());
        assert_eq!(l[0].data, b"usr/bin");
        assert!(l[1].is_dir() && l[1].mode & 0o7777 == 0o755);
        assert!(l[2].is_char_dev() && l[2].rdev == (5, 1));
        assert!(l[5].is_file() && l[5].mode & 0o7777 == 0o755);
        assert_eq!(l[5].data, b"#!");
        for (i, e) in l.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
            assert_eq!(e.ino as usize, i + 1);
        }
    }

    #[test]
    fn archive_is_padded_newc_with_trailer() {
        let out = bytes(&Archive::new().file("a", "xyz", 0o644));
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("TRAILER!!!"));
    }

    #[test]
    fn bad_paths_and_duplicates_are_refused_with_the_path() {
        let e = Archive::new()
            .file("../etc/passwd", "x", 0o644)
            .write_to(Vec::new());
        assert!(
            matches!(e, Err(InitramfsError::InvalidPath { ref path }) if path == "../etc/passwd")
        );
        let e = Archive::new().dir("/", 0o755).write_to(Vec::new());
        assert!(matches!(e, Err(InitramfsError::InvalidPath { .. })));
        let e = Archive::new()
            .file("a", "1", 0o644)
            .file("/a", "2", 0o644)
            .write_to(Vec::new());
        assert!(matches!(e, Err(InitramfsError::Duplicate { ref path }) if path == "a"));
        // The same directory twice is fine.
        assert!(Archive::new()
            .dir("d", 0o755)
            .dir("d/", 0o755)
            .write_to(Vec::new())
            .is_ok());
    }

    #[test]
    fn missing_host_file_names_the_file() {
        let e = Archive::new()
            .file("init", Path::new("/nonexistent/isolab-init"), 0o755)
            .write_to(Vec::new())
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/isolab-init") && msg.contains("init"),
            "{msg}"
        );
    }

    #[test]
    fn guest_image_has_init_workload_console_and_mount_points() {
        let a = guest_initramfs(
            &b"INIT"[..],
            &b"WORK"[..],
            &[ExtraFile {
                path: "etc/demo.txt".into(),
                source: "hi".into(),
                perm: 0o644,
            }],
        );
        let l = list(bytes(&a).as_slice()).unwrap();
        let find = |p: &str| l.iter().find(|e| e.path == p).unwrap().clone();
        assert_eq!(find("init").data, b"INIT");
        assert_eq!(find("init").mode & 0o777, 0o755);
        assert_eq!(find("workload").data, b"WORK");
        assert!(find("dev/console").is_char_dev());
        for d in ["dev", "proc", "sys", "tmp"] {
            assert!(find(d).is_dir(), "{d}");
        }
        assert_eq!(find("tmp").mode & 0o7777, 0o1777);
        assert_eq!(find("etc/demo.txt").data, b"hi");
    }
}
