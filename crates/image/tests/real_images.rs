//! Privileged tier: images built by Debian's own container tools (podman
//! import + save, skopeo copy, umoci; see build-test-images.sh) read in
//! every input format, unpacked, compared with umoci's unpack, turned into
//! an erofs root disk and checked with erofs-utils' own extractor; and
//! broken images, each refused with its own error and nothing left in the
//! cache.
//!
//! Needs root (ownership, device nodes), podman, skopeo, umoci, apt-get
//! and dpkg-deb, busybox-static and erofs-utils; prints `SKIPPED` without
//! them (a failure under `CI=true` / `ISOLAB_STRICT=1`).

use std::path::Path;

use isolab_image::{ImageError, ImageRef, ImageStore, Protocol};

mod common;
use common::{assert_same_tree, raw_tar, test_images, tree, write_layout};

fn store() -> (tempfile::TempDir, ImageStore) {
    let d = tempfile::tempdir().unwrap();
    let s = ImageStore::new(d.path());
    (d, s)
}

fn unpack(s: &ImageStore, r: &str) -> isolab_image::UnpackedImage {
    let r = ImageRef::parse(r).unwrap();
    s.unpack(&r).unwrap_or_else(|e| panic!("{r}: {e}: {e:?}"))
}

#[test]
fn httpd_image_reads_the_same_from_every_format() {
    let Some(dir) = test_images("httpd_image_reads_the_same_from_every_format") else {
        return;
    };
    let (_d, s) = store();
    let oci = unpack(&s, dir.join("httpd-oci.tar").to_str().unwrap());
    let docker = unpack(
        &s,
        &format!("{}:latest", dir.join("httpd-docker.tar").display()),
    );
    let layout = unpack(
        &s,
        &format!("{}:latest", dir.join("httpd-layout").display()),
    );
    eprintln!(
        "httpd: {} layer(s), {} KiB stored, {} KiB unpacked; verify {:.1} ms, apply {:.1} ms",
        oci.meta.layers,
        oci.meta.layer_bytes / 1024,
        oci.meta.rootfs_bytes / 1024,
        oci.meta.verify_ms,
        oci.meta.apply_ms
    );
    assert_eq!(oci.meta.format, isolab_image::Format::Oci);
    assert_eq!(docker.meta.format, isolab_image::Format::DockerArchive);
    assert!(!oci.cached && !docker.cached);
    let c = &oci.config;
    assert_eq!(c.cmd, ["/bin/httpd", "-f", "-vv", "-p", "80", "-h", "/www"]);
    assert_eq!(c.first_tcp_port(), Some(80));
    assert_eq!(c.working_dir.as_deref(), Some("/www"));
    assert!(c.env.contains(&"GREETING=hello".to_string()), "{:?}", c.env);
    assert_eq!(&docker.config, c, "docker-archive carries the same config");
    assert_eq!(&layout.config, c, "skopeo's layout carries the same config");
    assert_same_tree(&oci.rootfs, &docker.rootfs, "oci-archive vs docker-archive");
    assert_same_tree(&oci.rootfs, &layout.rootfs, "oci-archive vs skopeo layout");
    let t = tree(&oci.rootfs);
    assert_eq!(t["bin/httpd"].data, "busybox");
    assert_eq!(t["tmp"].mode, 0o1777);
    assert_eq!(
        std::fs::read_to_string(oci.rootfs.join("www/health")).unwrap(),
        "ok\n"
    );
    // The second time it is a cache hit keyed by the manifest digest.
    let again = unpack(&s, dir.join("httpd-oci.tar").to_str().unwrap());
    assert!(again.cached);
    assert_eq!(again.key, oci.key);
    assert_eq!(again.config, oci.config);
    let spec = oci.run_spec(None).unwrap();
    assert_eq!((spec.uid, spec.cwd.as_str()), (0, "/www"));
    assert!(spec.env.iter().any(|e| e.starts_with("PATH=")));
}

#[test]
fn multi_layer_unpack_equals_umocis() {
    let test = "multi_layer_unpack_equals_umocis";
    let Some(dir) = test_images(test) else {
        return;
    };
    let (_d, s) = store();
    let layout = dir.join("multi-layout");
    let ours = unpack(&s, &format!("{}:multi", layout.display()));
    assert_eq!(ours.meta.layers, 4);
    assert!(ours.meta.whiteouts >= 3, "{:?}", ours.meta);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let st = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:multi", layout.display()))
        .arg(&bundle)
        .env("TMPDIR", work.path())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_same_tree(&ours.rootfs, &bundle.join("rootfs"), "ours vs umoci unpack");
    // What the layers did, as a user checks it.
    let r = &ours.rootfs;
    assert!(!r.join("data/gone").exists(), "whiteout applied");
    assert!(
        !r.join("data/sub/old").exists(),
        "repack's whiteout applied"
    );
    assert!(
        !r.join("opt/old1").exists() && !r.join("opt/dir").exists(),
        "opaque /opt"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("opt/fresh/file")).unwrap(),
        "new\n"
    );
    let t = tree(r);
    assert_eq!(t["bin/tool"].mode, 0o4755);
    assert_eq!(t["bin/tool"].nlink, 2, "hard link kept");
    assert_eq!((t["srv/private"].uid, t["srv/private"].mode), (1000, 0o600));
    assert_eq!(t["srv/keep-link"].data, "../data/keep");
    // The typed config umoci wrote.
    let c = &ours.config;
    assert_eq!(c.entrypoint, ["/bin/sh"]);
    assert_eq!(c.cmd, ["-c", "echo multi"]);
    assert_eq!(c.user.as_deref(), Some("app"));
    assert_eq!(
        c.exposed_ports
            .iter()
            .map(|p| (p.port, p.protocol))
            .collect::<Vec<_>>(),
        [(53, Protocol::Udp), (8080, Protocol::Tcp)]
    );
    let spec = ours.run_spec(Some(&["echo hi".to_string()])).unwrap();
    assert_eq!(spec.args, ["/bin/sh", "echo hi"]);
    assert_eq!(
        (spec.uid, spec.gid, spec.additional_gids.clone()),
        (1000, 1000, vec![2000])
    );
    assert_eq!(spec.cwd, "/srv");
    assert!(spec.env.contains(&"HOME=/srv".to_string()));
    // skopeo's zstd copy of the same image unpacks to the same tree.
    let z = unpack(&s, &format!("{}:multi", dir.join("multi-zstd").display()));
    assert_same_tree(&z.rootfs, &ours.rootfs, "zstd layers vs gzip layers");
}

#[test]
fn nginx_from_debian_packages_runs_from_its_rootfs() {
    let test = "nginx_from_debian_packages_runs_from_its_rootfs";
    let Some(dir) = test_images(test) else {
        return;
    };
    let (_d, s) = store();
    let img = unpack(&s, dir.join("nginx-oci.tar").to_str().unwrap());
    eprintln!(
        "nginx: {} KiB stored, {} KiB unpacked, {} entries; verify {:.1} ms, apply {:.1} ms",
        img.meta.layer_bytes / 1024,
        img.meta.rootfs_bytes / 1024,
        img.meta.entries,
        img.meta.verify_ms,
        img.meta.apply_ms
    );
    assert_eq!(img.config.cmd[0], "/usr/sbin/nginx");
    // podman stores STOPSIGNAL SIGQUIT as its number.
    assert!(
        matches!(img.config.stop_signal.as_deref(), Some("SIGQUIT" | "3")),
        "{:?}",
        img.config.stop_signal
    );
    // The binary and its libraries work from the unpacked root: `nginx -t`
    // loads every library and parses the config (no socket is opened).
    let out = std::process::Command::new("chroot")
        .arg(&img.rootfs)
        .args(["/usr/sbin/nginx", "-t", "-c", "/etc/nginx/nginx.conf"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("test is successful"),
        "{err}"
    );
    let _ = std::fs::remove_file(img.rootfs.join("run/nginx.pid"));
}

#[test]
fn root_disk_holds_the_same_tree() {
    let test = "root_disk_holds_the_same_tree";
    let Some(dir) = test_images(test) else {
        return;
    };
    if !isolab_testkit::require(
        test,
        isolab_testkit::first_missing([
            isolab_testkit::missing_command("mkfs.erofs", "erofs-utils"),
            isolab_testkit::missing_command("fsck.erofs", "erofs-utils"),
        ]),
    ) {
        return;
    }
    let (_d, s) = store();
    let img = unpack(&s, &format!("{}:multi", dir.join("multi-layout").display()));
    let disk = img.root_disk().unwrap();
    assert!(!disk.cached);
    eprintln!(
        "multi: erofs disk {} KiB for {} KiB of files, built in {:.1} ms",
        disk.bytes / 1024,
        img.meta.rootfs_bytes / 1024,
        disk.build_ms
    );
    let again = img.root_disk().unwrap();
    assert!(again.cached && again.path == disk.path);
    let mut magic = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&disk.path).unwrap(),
        &mut magic,
        1024,
    )
    .unwrap();
    assert_eq!(
        u32::from_le_bytes(magic),
        0xe0f5_e1e2,
        "erofs superblock magic"
    );
    // erofs-utils' own reader extracts the same tree.
    let x = tempfile::tempdir().unwrap();
    let out = x.path().join("x");
    let st = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", out.display()))
        .arg("--preserve")
        .arg(&disk.path)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // fsck.erofs 1.5 does not recreate hard links, and it sets ownership
    // after permissions, which clears set-id bits on extraction (the
    // image's inodes keep them), so compare without both.
    let strip = |p: &Path| {
        tree(p)
            .into_iter()
            .map(|(k, mut v)| {
                v.nlink = 0;
                v.mode &= !0o6000;
                (k, v)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (strip(&img.rootfs), strip(&out));
    let a_root = a.get("").cloned();
    let b_root = b.get("").cloned();
    let strip_root = |mut m: std::collections::BTreeMap<String, common::Node>| {
        m.remove("");
        m
    };
    assert_eq!(
        strip_root(a),
        strip_root(b),
        "erofs content equals the rootfs"
    );
    assert_eq!(a_root.map(|n| n.kind), b_root.map(|n| n.kind));
}

/// Bad images: each gives its own typed, one-line usage error, and the
/// cache holds nothing afterwards (no key, no temporary directory).
#[test]
fn bad_images_give_their_own_errors_and_leave_nothing() {
    let test = "bad_images_give_their_own_errors_and_leave_nothing";
    let Some(dir) = test_images(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let check = |r: &str, want: fn(&ImageError) -> bool, what: &str| {
        let (d, s) = store();
        let e = match ImageRef::parse(r) {
            Ok(r) => s.unpack(&r).map(|_| ()).unwrap_err(),
            Err(e) => e,
        };
        assert!(want(&e), "{what}: unexpected error {e:?}");
        assert!(e.is_usage(), "{what}: usage error");
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{what}: one line: {msg}");
        eprintln!("{what}: error: {msg}");
        let left: Vec<_> = std::fs::read_dir(d.path().join("images"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what}: left in the cache: {left:?}");
    };

    // Truncated archive.
    let full = std::fs::read(dir.join("httpd-oci.tar")).unwrap();
    let cut = w.join("cut.tar");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    check(
        cut.to_str().unwrap(),
        |e| matches!(e, ImageError::CorruptArchive { .. }),
        "truncated tar",
    );

    // A layer blob changed by one byte: digest mismatch.
    let flipped = w.join("flipped");
    common::copy_tree(&dir.join("httpd-layout"), &flipped);
    let biggest = std::fs::read_dir(flipped.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut b = std::fs::read(&biggest).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&biggest, &b).unwrap();
    check(
        &format!("{}:latest", flipped.display()),
        |e| matches!(e, ImageError::DigestMismatch { .. }),
        "wrong digest",
    );

    // No manifest at all.
    let empty = w.join("empty");
    std::fs::create_dir(&empty).unwrap();
    check(
        empty.to_str().unwrap(),
        |e| matches!(e, ImageError::MissingManifest { .. }),
        "missing manifest",
    );

    // The index points at a manifest blob that is not there.
    let nomanifest = w.join("nomanifest");
    common::copy_tree(&dir.join("httpd-layout"), &nomanifest);
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(nomanifest.join("index.json")).unwrap()).unwrap();
    let md = idx["manifests"][0]["digest"].as_str().unwrap();
    std::fs::remove_file(
        nomanifest
            .join("blobs/sha256")
            .join(md.trim_start_matches("sha256:")),
    )
    .unwrap();
    check(
        nomanifest.to_str().unwrap(),
        |e| matches!(e, ImageError::MissingBlob { .. }),
        "missing manifest blob",
    );

    // Layers escaping the root.
    for (name, entries) in [
        (
            "dotdot",
            raw_tar(&[("../../escaped", tar::EntryType::Regular, b"x", None)]),
        ),
        (
            "symlink",
            raw_tar(&[("l", tar::EntryType::Symlink, b"", Some("../../../escaped"))]),
        ),
        (
            "hardlink",
            raw_tar(&[("h", tar::EntryType::Link, b"", Some("../../etc/shadow"))]),
        ),
    ] {
        let l = w.join(format!("escape-{name}"));
        write_layout(&l, &[("application/vnd.oci.image.layer.v1.tar", entries)]);
        check(
            l.to_str().unwrap(),
            |e| matches!(e, ImageError::PathEscape { .. }),
            name,
        );
        assert!(!w.join("escaped").exists() && !Path::new("/escaped").exists());
    }

    // A media type we do not handle.
    let bz = w.join("bzip2");
    write_layout(
        &bz,
        &[("application/vnd.oci.image.layer.v1.tar+bzip2", raw_tar(&[]))],
    );
    check(
        bz.to_str().unwrap(),
        |e| matches!(e, ImageError::UnsupportedMediaType { .. }),
        "media type",
    );

    // A truncated layer (the blob's digest matches its truncated bytes).
    let full_layer = raw_tar(&[("big", tar::EntryType::Regular, &[1u8; 4096], None)]);
    let tl = w.join("truncated-layer");
    write_layout(
        &tl,
        &[(
            "application/vnd.oci.image.layer.v1.tar",
            full_layer[..2048].to_vec(),
        )],
    );
    check(
        tl.to_str().unwrap(),
        |e| matches!(e, ImageError::BadLayer { .. }),
        "truncated layer",
    );

    // Tags.
    check(
        &format!("{}:nope", dir.join("httpd-oci.tar").display()),
        |e| matches!(e, ImageError::TagNotFound { .. }),
        "unknown tag",
    );
    check(
        w.join("nothing-here.tar").to_str().unwrap(),
        |e| matches!(e, ImageError::NotFound { .. }),
        "no such file",
    );
}
