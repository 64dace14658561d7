//! Paths inside an unpacked root filesystem, resolved with chroot
//! semantics from the host: symlinks are followed relative to the root (an
//! absolute target restarts at the root, `..` stops at it), so reading
//! `etc/passwd` of a hostile image can never read the host's files.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path (Linux's limit).
pub(crate) const MAX_SYMLINKS: usize = 40;

/// A walk over a path inside a root with chroot semantics: `..` stops at
/// the root, a symlink's target is spliced in (an absolute one restarts
/// at the root), at most [`MAX_SYMLINKS`] links are followed. The caller
/// looks at each component on the host and says what it found.
pub(crate) struct Walk {
    /// Components still to walk, last first.
    pending: Vec<OsString>,
    /// The resolved prefix, relative to the root.
    cur: PathBuf,
    links: usize,
}

impl Walk {
    /// A walk over `comps`, in order.
    pub fn new(comps: impl DoubleEndedIterator<Item = OsString>) -> Walk {
        Walk {
            pending: comps.rev().collect(),
            cur: PathBuf::new(),
            links: 0,
        }
    }

    /// The next path to look at (the resolved prefix joined with the next
    /// component), `..` and `.` handled on the way; `None` at the end.
    pub fn next_path(&mut self) -> Option<PathBuf> {
        while let Some(c) = self.pending.pop() {
            if c == ".." {
                self.cur.pop();
            } else if c != "." && !c.is_empty() {
                return Some(self.cur.join(c));
            }
        }
        None
    }

    /// Whether components are left after the one last returned.
    pub fn has_more(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The path last returned is a directory (or a final component):
    /// descend into it.
    pub fn enter(&mut self, next: PathBuf) {
        self.cur = next;
    }

    /// The path last returned is a symlink to `target`: walk it instead.
    /// False past [`MAX_SYMLINKS`].
    pub fn follow(&mut self, target: &Path) -> bool {
        self.links += 1;
        if self.links > MAX_SYMLINKS {
            return false;
        }
        if target.is_absolute() {
            self.cur = PathBuf::new();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(s) => self.pending.push(s.to_os_string()),
                Component::ParentDir => self.pending.push("..".into()),
                _ => {}
            }
        }
        true
    }

    /// The resolved path, relative to the root.
    pub fn resolved(self) -> PathBuf {
        self.cur
    }
}

/// The host path that `path` (inside the image) names, all symlinks
/// resolved inside `root`; `None` when a component is missing, not a
/// directory, or the links loop.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut walk = Walk::new(Path::new(path).components().filter_map(|c| match c {
        Component::Normal(s) => Some(s.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }));
    while let Some(next) = walk.next_path() {
        let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(root.join(&next)).ok()?;
            if !walk.follow(&target) {
                return None;
            }
        } else {
            if walk.has_more() && !meta.is_dir() {
                return None;
            }
            walk.enter(next);
        }
    }
    Some(root.join(walk.resolved()))
}

/// Reads a regular file of the image; `None` if it is absent or not a
/// regular file.
pub fn read_in_root(root: &Path, path: &str) -> Option<Vec<u8>> {
    let p = resolve_in_root(root, path)?;
    let meta = std::fs::symlink_metadata(&p).ok()?;
    meta.is_file().then(|| std::fs::read(&p).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        std::fs::write(root.join("real/etc/passwd"), "inside").unwrap();
        std::fs::write(d.path().join("secret"), "host").unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("../../../../secret", root.join("up")).unwrap();
        symlink(d.path().join("secret"), root.join("abs")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd").unwrap(), b"inside");
        assert_eq!(
            read_in_root(&root, "/etc/../etc/passwd").unwrap(),
            b"inside"
        );
        assert_eq!(
            read_in_root(&root, "up"),
            None,
            "clamped at the root: /secret is absent"
        );
        assert_eq!(
            read_in_root(&root, "abs"),
            None,
            "absolute targets stay in the root"
        );
        assert_eq!(read_in_root(&root, "loop"), None);
        assert_eq!(resolve_in_root(&root, "/").unwrap(), root.join(""));
    }
}
