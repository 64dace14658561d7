//! Shared plumbing of the image tests: the real test images (built once by
//! `build-test-images.sh` with podman, skopeo and umoci, cached under the
//! artifact cache by the script's hash), a tree walker for comparing root
//! filesystems, and a writer of deliberately broken OCI layouts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The recipe; its hash keys the cached images.
const SCRIPT: &str = include_str!("../build-test-images.sh");

/// What a test image build needs on the host.
pub fn missing_tools() -> Option<String> {
    isolab_testkit::first_missing([
        isolab_testkit::missing_root(),
        isolab_testkit::missing_command("podman", "podman"),
        isolab_testkit::missing_command("skopeo", "skopeo"),
        isolab_testkit::missing_command("umoci", "umoci"),
        isolab_testkit::missing_command("apt-get", "apt"),
        isolab_testkit::missing_command("dpkg-deb", "dpkg"),
        (!Path::new("/bin/busybox").is_file())
            .then(|| "/bin/busybox missing: apt-get install busybox-static".to_string()),
    ])
}

pub fn cache_root() -> PathBuf {
    isolab_guest_kernel::cache_root().expect("a cache root (set ISOLAB_CACHE or HOME)")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The directory of built test images, or `None` after a skip line.
pub fn test_images(test: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if !isolab_testkit::require(test, missing_tools()) {
        return None;
    }
    let r = BUILT.get_or_init(|| {
        let key = &hex(&Sha256::digest(SCRIPT.as_bytes()))[..16];
        let base = cache_root().join("test-images");
        let dir = base.join(key);
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let lock = std::fs::File::create(base.join(".lock")).map_err(|e| e.to_string())?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e.to_string())?;
        if dir.join("nginx-oci.tar").is_file() {
            return Ok(dir);
        }
        let tmp = base.join(format!(".tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        // Relative to any crate under crates/ (the CLI tests share it).
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/tests/build-test-images.sh");
        let started = std::time::Instant::now();
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(&tmp)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!(
                "build-test-images.sh failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())?;
        eprintln!(
            "built the test images in {:.1} s into {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(dir)
    });
    match r {
        Ok(d) => Some(d.clone()),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// One node of a tree as a user would compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content hash (files), link target (symlinks), device number.
    pub data: String,
    pub nlink: u64,
}

/// Every path under `root` (relative, `""` for the root itself).
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, Node>) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let (kind, data, nlink) = if ft.is_dir() {
        ('d', String::new(), 0)
    } else if ft.is_symlink() {
        ('l', std::fs::read_link(p).unwrap().display().to_string(), 0)
    } else if ft.is_file() {
        (
            'f',
            hex(&Sha256::digest(std::fs::read(p).unwrap())),
            m.nlink(),
        )
    } else {
        ('n', format!("{:x}:{:o}", m.rdev(), m.mode() & 0o170000), 0)
    };
    let rel = p.strip_prefix(root).unwrap().display().to_string();
    out.insert(
        rel,
        Node {
            kind,
            mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
            uid: m.uid(),
            gid: m.gid(),
            data,
            nlink,
        },
    );
    if ft.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        children.sort();
        for c in children {
            walk(root, &c, out);
        }
    }
}

/// Asserts two trees are equal, listing every difference.
pub fn assert_same_tree(ours: &Path, theirs: &Path, what: &str) {
    let a = tree(ours);
    let b = tree(theirs);
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("only in ours: {k:?} {v:?}")),
            Some(w) if w != v => diffs.push(format!("{k:?}: ours {v:?}, theirs {w:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("only in theirs: {k:?} {:?}", b[k]));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert!(a.len() > 3, "{what}: trees are not empty");
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(b)))
}

/// A layer tar whose entries are given raw (names go into the header
/// unchecked, as a hostile tool would write them).
pub fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Writes an OCI layout with one image (tag `t`) whose layers are given as
/// (media type, blob); the config's diff_ids are the blobs' digests (the
/// blobs are uncompressed).
pub fn write_layout(dir: &Path, layers: &[(&str, Vec<u8>)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (mt, blob) in layers {
        let d = put(blob);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
                "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "t"}}]
        }))
        .unwrap(),
    )
    .unwrap();
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}
