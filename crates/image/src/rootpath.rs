//! Paths inside an unpacked root filesystem, resolved with chroot
//! semantics from the host: symlinks are followed relative to the root (an
//! absolute target restarts at the root, `..` stops at it), so reading
//! `etc/passwd` of a hostile image can never read the host's files.

use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// The host path that `path` (inside the image) names, all symlinks
/// resolved inside `root`; `None` when a component is missing, not a
/// directory, or the links loop.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = Vec::new();
    push_components(&mut pending, Path::new(path));
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = std::fs::read_link(root.join(&next)).ok()?;
            if target.is_absolute() {
                cur = PathBuf::new();
            }
            push_components(&mut pending, &target);
        } else {
            if !pending.is_empty() && !meta.is_dir() {
                return None;
            }
            cur = next;
        }
    }
    Some(root.join(cur))
}

/// Pushes `p`'s components onto the stack `pending` (last first).
fn push_components(pending: &mut Vec<String>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(s) => pending.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => pending.push("..".into()),
            _ => {}
        }
    }
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
