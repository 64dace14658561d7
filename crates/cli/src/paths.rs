//! Paths given on the command line, checked before anything runs:
//!
//! - input files (`--kernel`, `--initrd`, `provision --source`): a regular
//!   file, so a FIFO or a device is refused instead of blocking the open;
//! - output files (`--console-file`, `demo --out`): a new name in an
//!   existing directory, or an existing regular file — never a symlink —
//!   and later opened with `O_NOFOLLOW`, so a symlink planted between the
//!   check and the open is refused too, never followed or truncated;
//! - output directories (`compare --out`): an existing directory that is
//!   not a symlink, or a new name in an existing directory; the files
//!   written inside are opened with `O_NOFOLLOW` as well.
//!
//! Every refusal is a usage error (exit 2) naming the flag and the path.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::exit;

/// What a non-regular file is, for the one-line error.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// `path` exists and is a regular file (symlinks to one are fine).
pub fn input_file(flag: &str, path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| exit::usage(format!("{flag} {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(exit::usage(format!(
            "{flag} {}: {}, not a regular file",
            path.display(),
            kind(meta.file_type())
        )));
    }
    Ok(())
}

/// Like [`input_file`], but a path that does not exist passes (a default
/// that is only needed when nothing is cached).
pub fn optional_input_file(flag: &str, path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => input_file(flag, path),
    }
}

/// Whether the directory can take a new entry (`access(W_OK | X_OK)`).
fn writable_dir(dir: &Path) -> bool {
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok()
}

/// The directory a new entry `path` would land in.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn parent_ok(flag: &str, path: &Path) -> anyhow::Result<()> {
    let dir = parent(path);
    if !dir.is_dir() {
        return Err(exit::usage(format!(
            "{flag} {}: {} is not an existing directory",
            path.display(),
            dir.display()
        )));
    }
    if !writable_dir(dir) {
        return Err(exit::usage(format!(
            "{flag} {}: {} is not writable",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// An output file: an existing regular file (not a symlink) or a new name
/// in an existing, writable directory.
pub fn output_file(flag: &str, path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(exit::usage(format!(
            "{flag} {}: a symlink; give the file itself (output files are never followed)",
            path.display()
        ))),
        Ok(m) if !m.is_file() => Err(exit::usage(format!(
            "{flag} {}: {}, not a regular file",
            path.display(),
            kind(m.file_type())
        ))),
        Ok(_) => {
            if nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_err() {
                return Err(exit::usage(format!(
                    "{flag} {}: not writable",
                    path.display()
                )));
            }
            parent_ok(flag, path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => parent_ok(flag, path),
        Err(e) => Err(exit::usage(format!("{flag} {}: {e}", path.display()))),
    }
}

/// An output directory: an existing directory (not a symlink) or a new
/// name in an existing, writable directory.
pub fn output_dir(flag: &str, path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(exit::usage(format!(
            "{flag} {}: a symlink; give the directory itself",
            path.display()
        ))),
        Ok(m) if !m.is_dir() => Err(exit::usage(format!(
            "{flag} {}: {}, not a directory",
            path.display(),
            kind(m.file_type())
        ))),
        Ok(_) if !writable_dir(path) => Err(exit::usage(format!(
            "{flag} {}: not writable",
            path.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => parent_ok(flag, path),
        Err(e) => Err(exit::usage(format!("{flag} {}: {e}", path.display()))),
    }
}

/// Creates or truncates `path` for writing without following a symlink
/// at its last component (`O_NOFOLLOW`: a symlink fails with `ELOOP`).
pub fn create_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `std::fs::write` through [`create_nofollow`].
pub fn write_nofollow(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    create_nofollow(path)?.write_all(data.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(r: anyhow::Result<()>) -> String {
        let e = r.unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE, "{e:#}");
        e.to_string()
    }

    #[test]
    fn inputs_must_be_regular_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        input_file("--kernel", &f).unwrap();
        assert!(usage(input_file("--kernel", &fifo)).contains("a FIFO, not a regular file"));
        assert!(usage(input_file("--kernel", d.path())).contains("a directory"));
        assert!(usage(input_file("--initrd", &d.path().join("none"))).contains("--initrd"));
        optional_input_file("--source", &d.path().join("none")).unwrap();
        assert!(usage(optional_input_file("--source", &fifo)).contains("FIFO"));
    }

    #[test]
    fn outputs_refuse_symlinks_and_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(usage(output_file("--out", &link)).contains("a symlink"));
        assert!(usage(output_dir("--out", &link)).contains("a symlink"));
        assert!(usage(output_dir("--out", &victim)).contains("not a directory"));
        assert!(usage(output_file("--out", d.path())).contains("a directory"));
        assert!(usage(output_file("--out", Path::new("/nonexistent/x")))
            .contains("/nonexistent is not an existing directory"));
        output_file("--out", &victim).unwrap();
        output_file("--out", &d.path().join("new")).unwrap();
        output_dir("--out", d.path()).unwrap();
        output_dir("--out", &d.path().join("new")).unwrap();
        // The open itself refuses a symlink planted after the check.
        let e = write_nofollow(&link, "gone").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        write_nofollow(&d.path().join("new"), "ok").unwrap();
    }
}
