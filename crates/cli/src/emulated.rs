//! `--host emulated`, the one place the CLI runs `bench` inside the
//! emulated hardware-virtualisation host (QEMU TCG + nested KVM): for
//! `bench vm run` (its output streamed) and `bench compare` (its JSON
//! report parsed and labelled by `isolab_harness::emulated`). A user's
//! image goes in as its unpacked cache entry ([`image_carry`]).

use std::path::Path;

use isolab_emuhost::bench::GUEST_CACHE;
use isolab_emuhost::{FileMap, EMULATED_HOST_LABEL};
use isolab_harness::compare::{CompareConfig, CompareReport};
use isolab_harness::modes::ModeKind;
use isolab_harness::{emulated, Workload};
use isolab_image::ImageStore;

use crate::exit;

/// Seconds before the emulated host of one `bench vm run` is stopped.
const VM_RUN_TIMEOUT_S: u64 = 600;

/// `bench <args>` inside the emulated host, with the guest for `workload`
/// provisioned here first; every output line goes to `on_line`. Returns
/// the inner command's status.
pub fn run(
    workload: Workload,
    args: &[String],
    include_qemu: bool,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<i32> {
    emulated::provision_guest(workload)?;
    let host = emulated::prepare(include_qemu, vec![], VM_RUN_TIMEOUT_S)?;
    Ok(emulated::run_bench(&host, args, on_line)?.status)
}

/// [`run`] with `files` carried in too (a user's image's root disk and
/// spec initramfs).
pub fn run_with_files(
    workload: Workload,
    args: &[String],
    files: Vec<isolab_emuhost::FileMap>,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<i32> {
    emulated::provision_guest(workload)?;
    let host = emulated::prepare(false, vec![], VM_RUN_TIMEOUT_S)?;
    isolab_emuhost::interrupt::install_handlers()
        .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
    let outcome = isolab_emuhost::run_bench_inside_with(&host, args, files, &mut |l| {
        on_line(l.rsplit('\r').next().unwrap_or(l))
    })
    .map_err(isolab_harness::HarnessError::from)?;
    Ok(outcome.status)
}

/// The most bytes of a user's image carried into the emulated host: the
/// payload is unpacked into its RAM (2048 MiB), which must still hold the
/// inner guests (256 MiB each for an image) and containers.
pub const IMAGE_CARRY_MAX_BYTES: u64 = 384 << 20;

/// What a user's image takes into the emulated host: the inner `bench
/// compare` arguments that name it and the files of its cache entry.
#[derive(Debug, Default)]
pub struct ImageCarry {
    pub args: Vec<String>,
    pub files: Vec<FileMap>,
    pub bytes: u64,
}

/// Modes that boot an image from its erofs disk and need no rootfs.
fn boots_disk(m: ModeKind) -> bool {
    matches!(m, ModeKind::Microvm | ModeKind::QemuMicrovm)
}

/// The unpacked cache entry of `cfg`'s image under `cache`, mapped to the
/// same key in the emulated host's cache: `config.json`, `meta.json`, the
/// erofs root disk (built here, where mkfs.erofs is) for the microVM and
/// QEMU, and the rootfs for every other mode (else only its `/etc/passwd`
/// and `/etc/group`, which name the image's user). `over` replaces the
/// image's command. Bounded by [`IMAGE_CARRY_MAX_BYTES`].
pub fn image_carry(
    cfg: &CompareConfig,
    cache: &Path,
    over: &[String],
) -> anyhow::Result<ImageCarry> {
    let Some(image) = &cfg.image else {
        return Ok(ImageCarry::default());
    };
    let key = image.key.as_deref().ok_or_else(|| {
        exit::usage("--bundle runs on this host only: drop --host emulated, or pass the image as --image REF")
    })?;
    let img = ImageStore::new(cache).lookup(key).ok_or_else(|| {
        anyhow::anyhow!(
            "image {} ({key}) is not in the image cache any more: run again to unpack it",
            image.label
        )
    })?;
    let inside = format!("{GUEST_CACHE}/images/{key}");
    let mut c = ImageCarry::default();
    let carry = |c: &mut ImageCarry, host: std::path::PathBuf, name: &str| {
        c.files.push(FileMap {
            host,
            guest: format!("{inside}/{name}"),
        });
    };
    carry(&mut c, img.dir.join("config.json"), "config.json");
    carry(&mut c, img.dir.join("meta.json"), "meta.json");
    if cfg.modes.iter().any(|m| boots_disk(*m)) {
        let disk = img.root_disk().map_err(|e| {
            let msg = format!("{}: {}", image.label, isolab_harness::chain(&e));
            if e.is_host() {
                exit::host(msg)
            } else {
                anyhow::anyhow!(msg)
            }
        })?;
        c.bytes += disk.bytes;
        carry(&mut c, disk.path, "rootfs.erofs");
    }
    if cfg.modes.iter().any(|m| !boots_disk(*m)) {
        c.bytes += img.meta.rootfs_bytes;
        carry(&mut c, img.rootfs.clone(), "rootfs");
    } else {
        for f in ["etc/passwd", "etc/group"] {
            let p = img.rootfs.join(f);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                carry(&mut c, p, &format!("rootfs/{f}"));
            }
        }
    }
    check_carry_size(&image.label, c.bytes, IMAGE_CARRY_MAX_BYTES)?;
    c.args = vec![
        format!("--image-key={key}"),
        format!("--image-label={}", image.label),
        format!("--ready={}", image.ready),
    ];
    if !over.is_empty() {
        c.args.push("--".into());
        c.args.extend(over.iter().cloned());
    }
    Ok(c)
}

/// One usage line when an image is too large for the emulated host.
fn check_carry_size(label: &str, bytes: u64, limit: u64) -> anyhow::Result<()> {
    if bytes <= limit {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Err(exit::usage(format!(
        "{label}: {:.1} MiB of image to carry into the emulated host, over its {:.0} MiB limit (it is held in the emulated host's RAM): run it on this host (drop --host emulated) or use a smaller image",
        mib(bytes),
        mib(limit)
    )))
}

/// `bench compare` inside the emulated host, with its image (if any)
/// carried in ([`image_carry`]; `over` replaces its command); its progress
/// lines are echoed on stderr.
pub fn compare(cfg: &CompareConfig, over: &[String]) -> anyhow::Result<CompareReport> {
    let carry = match &cfg.image {
        Some(_) => {
            let cache = isolab_guest_kernel::cache_root()
                .map_err(|e| exit::host(format!("no cache root for images: {e}")))?;
            image_carry(cfg, &cache, over)?
        }
        None => ImageCarry::default(),
    };
    eprintln!("bench: {EMULATED_HOST_LABEL}");
    if let Some(i) = &cfg.image {
        eprintln!(
            "bench: {} carried in: {:.1} MiB in {} path(s)",
            i.label,
            carry.bytes as f64 / (1 << 20) as f64,
            carry.files.len()
        );
    }
    Ok(emulated::compare_with(
        cfg,
        &carry.args,
        carry.files,
        &mut |l| eprintln!("  [emulated] {l}"),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache entry under `cache` with its erofs disk already built (so
    /// no mkfs.erofs runs) and the config for `modes` naming it.
    fn entry(cache: &Path, modes: &[ModeKind]) -> CompareConfig {
        let key = "sha256-ab";
        let dir = cache.join("images").join(key);
        std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        std::fs::write(dir.join("rootfs/etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(dir.join("rootfs/bin/httpd"), "x").unwrap();
        std::fs::write(dir.join("rootfs.erofs"), vec![0u8; 4096]).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&isolab_image::ImageConfig::default()).unwrap(),
        )
        .unwrap();
        let meta = isolab_image::UnpackMeta {
            digest: "sha256:ab".into(),
            config_digest: "sha256:cd".into(),
            format: isolab_image::Format::Oci,
            source: "httpd-oci.tar".into(),
            names: vec![],
            layers: 1,
            layer_bytes: 1,
            rootfs_bytes: 1,
            entries: 4,
            whiteouts: 0,
            verify_ms: 0.0,
            apply_ms: 0.0,
        };
        std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        let image = isolab_harness::image::ImageWorkload {
            label: "httpd-oci.tar".into(),
            key: Some(key.into()),
            run: isolab_image::RunSpec {
                rootfs: dir.join("rootfs"),
                args: vec!["/bin/httpd".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                exposed_ports: vec![],
            },
            ready: "http:80/".parse().unwrap(),
        };
        CompareConfig {
            workload: Workload::Api,
            runs: 1,
            warmup: 0,
            requests: 0,
            ready_timeout: std::time::Duration::from_secs(1),
            container_loopback: false,
            modes: modes.to_vec(),
            density: None,
            neighbours: None,
            surface: None,
            posture: false,
            image: Some(std::sync::Arc::new(image)),
            isolation: None,
        }
    }

    #[test]
    fn the_vms_get_the_disk_and_the_user_files_other_modes_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let guests =
            |c: &ImageCarry| -> Vec<String> { c.files.iter().map(|f| f.guest.clone()).collect() };
        let inside = "/var/cache/isolab/images/sha256-ab";
        let vms = entry(d.path(), &[ModeKind::Microvm, ModeKind::QemuMicrovm]);
        let c = image_carry(&vms, d.path(), &[]).unwrap();
        assert_eq!(
            guests(&c),
            [
                format!("{inside}/config.json"),
                format!("{inside}/meta.json"),
                format!("{inside}/rootfs.erofs"),
                format!("{inside}/rootfs/etc/passwd"),
            ]
        );
        assert_eq!(c.bytes, 4096, "the disk only");
        assert_eq!(
            c.args,
            [
                "--image-key=sha256-ab",
                "--image-label=httpd-oci.tar",
                "--ready=http:80/"
            ]
        );
        let both = entry(d.path(), &[ModeKind::Container, ModeKind::Microvm]);
        let over = ["sh".to_string(), "-c".to_string(), "exit 4".to_string()];
        let c = image_carry(&both, d.path(), &over).unwrap();
        assert_eq!(
            guests(&c)[2..],
            [format!("{inside}/rootfs.erofs"), format!("{inside}/rootfs")]
        );
        assert_eq!(c.bytes, 4096 + 1, "the disk and the rootfs's bytes");
        assert_eq!(c.args[3..], ["--", "sh", "-c", "exit 4"]);
        let container = entry(d.path(), &[ModeKind::Container]);
        let c = image_carry(&container, d.path(), &[]).unwrap();
        assert_eq!(guests(&c)[2..], [format!("{inside}/rootfs")], "no disk");
        // An entry gone from the cache is named.
        std::fs::remove_file(d.path().join("images/sha256-ab/meta.json")).unwrap();
        let e = image_carry(&container, d.path(), &[]).unwrap_err();
        assert!(format!("{e}").contains("not in the image cache"), "{e}");
    }

    #[test]
    fn an_image_over_the_limit_is_one_usage_line() {
        assert!(check_carry_size("x.tar", 10, 10).is_ok());
        let e = check_carry_size("big.tar", 500 << 20, IMAGE_CARRY_MAX_BYTES).unwrap_err();
        assert_eq!(exit::code_for(&e), exit::USAGE);
        let msg = format!("{e:#}");
        assert!(msg.starts_with("big.tar: 500.0 MiB"), "{msg}");
        assert!(
            msg.contains("384 MiB limit") && !msg.contains('\n'),
            "{msg}"
        );
    }
}
