//! The unpacked-image cache: `<cache root>/images/sha256-<hex>/` holds
//! `rootfs/`, `config.json` (the typed [`ImageConfig`]) and `meta.json`
//! ([`UnpackMeta`]), keyed by the manifest's digest (a docker-archive has
//! no manifest blob: its config digest, the image ID, stands in).
//!
//! Unpacking happens in `images/.tmp-<pid>-<n>/` and the directory is
//! renamed into place only when every layer is verified and applied, so
//! a key that exists is complete; a failed or killed unpack leaves only a
//! temporary directory, removed on the spot or, if the process died, by
//! the next unpack. The cache root is a parameter (docs/contracts.md,
//! "Artifact cache").

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::{ImageConfig, RunSpec};
use crate::error::{write_error, ImageError};
use crate::manifest::{self, Compression, Format, LayerRef};
use crate::reference::ImageRef;
use crate::source::{hex, Source};
use crate::unpack::Unpacker;

/// What an unpack did, kept beside the rootfs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnpackMeta {
    /// The cache key's digest (manifest, or config for a docker-archive).
    pub digest: String,
    pub config_digest: String,
    pub format: Format,
    /// The input it was unpacked from (first time only).
    pub source: String,
    /// Names (tags) of the image in that input.
    pub names: Vec<String>,
    pub layers: usize,
    /// Layer blobs as stored (compressed where they are).
    pub layer_bytes: u64,
    /// Regular-file bytes in the root filesystem.
    pub rootfs_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    /// Checking every layer's digest before use.
    pub verify_ms: f64,
    /// Decompressing and applying the layers.
    pub apply_ms: f64,
}

/// An image unpacked in the cache.
#[derive(Debug, Clone)]
pub struct UnpackedImage {
    /// `sha256-<hex>`: the directory name.
    pub key: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    pub meta: UnpackMeta,
    /// True when the cache already had it.
    pub cached: bool,
}

impl UnpackedImage {
    /// What to run: the image's command (`args` replace its Cmd), env,
    /// working directory and user resolved in its rootfs.
    pub fn run_spec(&self, args: Option<&[String]>) -> Result<RunSpec, ImageError> {
        RunSpec::from_image(&self.rootfs, &self.config, args)
    }
}

/// The cache of unpacked images under one cache root.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary directory removed on drop unless kept.
struct TmpDir(Option<PathBuf>);

impl TmpDir {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("live temp dir")
    }
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("live temp dir")
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = force_remove(&p);
        }
    }
}

/// Removes a tree even where an image made directories read-only for
/// its owner (which stops a non-root owner from deleting their entries).
pub fn force_remove(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = fs::symlink_metadata(path) else {
        return;
    };
    if m.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Reads through to `inner` while hashing what passes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The uncompressed tar stream of a layer.
fn decompress<'a>(
    compression: Compression,
    raw: Box<dyn Read + 'a>,
) -> io::Result<Box<dyn Read + 'a>> {
    let mut raw = BufReader::with_capacity(256 << 10, raw);
    let kind = match compression {
        Compression::Detect => {
            let head = raw.fill_buf()?;
            if head.starts_with(&[0x1f, 0x8b]) {
                Compression::Gzip
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Compression::Zstd
            } else {
                Compression::None
            }
        }
        c => c,
    };
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        Compression::None | Compression::Detect => Box::new(raw),
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl ImageStore {
    /// The store under `cache_root` (the project's artifact cache root).
    pub fn new(cache_root: &Path) -> ImageStore {
        ImageStore {
            dir: cache_root.join("images"),
        }
    }

    /// `<cache root>/images`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached image with this key (`sha256-<hex>`), if complete.
    pub fn lookup(&self, key: &str) -> Option<UnpackedImage> {
        let dir = self.dir.join(key);
        let config: ImageConfig =
            serde_json::from_slice(&fs::read(dir.join("config.json")).ok()?).ok()?;
        let meta: UnpackMeta =
            serde_json::from_slice(&fs::read(dir.join("meta.json")).ok()?).ok()?;
        Some(UnpackedImage {
            key: key.to_string(),
            rootfs: dir.join("rootfs"),
            dir,
            config,
            meta,
            cached: true,
        })
    }

    /// Unpacks the image `reference` names, or finds it in the cache.
    pub fn unpack(&self, reference: &ImageRef) -> Result<UnpackedImage, ImageError> {
        let source = Source::open(&reference.path)?;
        let resolved = manifest::resolve(&source, reference.tag.as_deref())?;
        let key = resolved.digest.replacen(':', "-", 1);
        if let Some(hit) = self.lookup(&key) {
            return Ok(hit);
        }
        fs::create_dir_all(&self.dir).map_err(|e| write_error(&self.dir, e))?;
        self.remove_stale();
        let tmp = TmpDir(Some(self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ))));
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(&rootfs).map_err(|e| write_error(&rootfs, e))?;

        let t = Instant::now();
        let mut layer_bytes = 0;
        for layer in &resolved.layers {
            layer_bytes += self.verify_layer(&source, layer)?;
        }
        let verify_ms = ms(t);

        let t = Instant::now();
        let mut unpacker = Unpacker::new(&rootfs);
        for layer in &resolved.layers {
            apply(&source, layer, &mut unpacker)?;
        }
        let stats = unpacker.finish()?;
        let apply_ms = ms(t);

        let config = ImageConfig::from_oci(&resolved.config);
        let meta = UnpackMeta {
            digest: resolved.digest.clone(),
            config_digest: resolved.config_digest.clone(),
            format: resolved.format,
            source: reference.to_string(),
            names: resolved.names.clone(),
            layers: resolved.layers.len(),
            layer_bytes,
            rootfs_bytes: stats.bytes,
            entries: stats.entries,
            whiteouts: stats.whiteouts,
            verify_ms,
            apply_ms,
        };
        for (name, value) in [
            ("config.json", serde_json::to_vec_pretty(&config)),
            ("meta.json", serde_json::to_vec_pretty(&meta)),
        ] {
            let p = tmp.path().join(name);
            let bytes = value.map_err(|e| write_error(&p, io::Error::other(e)))?;
            fs::write(&p, bytes).map_err(|e| write_error(&p, e))?;
        }
        let dest = self.dir.join(&key);
        match fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                tmp.keep();
            }
            // Another unpack of the same image finished first: use it
            // (ours is removed when `tmp` drops).
            Err(_) if self.lookup(&key).is_some() => {}
            Err(e) => return Err(write_error(&dest, e)),
        }
        Ok(UnpackedImage {
            key,
            rootfs: dest.join("rootfs"),
            dir: dest,
            config,
            meta,
            cached: false,
        })
    }

    /// Checks a layer before it is used; returns its stored size.
    fn verify_layer(&self, source: &Source, layer: &LayerRef) -> Result<u64, ImageError> {
        let size = source.size("Layer", &layer.name)?;
        match &layer.blob_digest {
            Some(d) => source.verify("Layer", &layer.name, d, layer.size)?,
            // docker-archive: only the uncompressed digest is known.
            None => {
                let raw = source.open_member("Layer", &layer.name)?;
                let stream = decompress(layer.compression, raw)
                    .map_err(|e| source.read_failure(&layer.name, e))?;
                let (got, _) =
                    crate::source::sha256_of(stream).map_err(|e| bad_stream(layer, e))?;
                check_diff_id(layer, &got)?;
            }
        }
        Ok(size)
    }

    /// Removes temporary directories whose process is gone.
    fn remove_stale(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(".tmp-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .map_or_else(|e| e != nix::Error::ESRCH, |()| true);
            if !alive {
                let _ = force_remove(&e.path());
            }
        }
    }
}

fn bad_stream(layer: &LayerRef, source: io::Error) -> ImageError {
    ImageError::BadLayer {
        layer: layer.name.clone(),
        source,
    }
}

fn check_diff_id(layer: &LayerRef, got: &str) -> Result<(), ImageError> {
    if got != layer.diff_id.to_ascii_lowercase() {
        return Err(ImageError::DigestMismatch {
            what: format!("Uncompressed layer {}", layer.name),
            expected: layer.diff_id.clone(),
            actual: got.to_string(),
        });
    }
    Ok(())
}

/// Applies one (verified) layer, checking its uncompressed digest against
/// the config's `diff_ids` on the way.
fn apply(source: &Source, layer: &LayerRef, unpacker: &mut Unpacker) -> Result<(), ImageError> {
    let raw = source.open_member("Layer", &layer.name)?;
    let stream =
        decompress(layer.compression, raw).map_err(|e| source.read_failure(&layer.name, e))?;
    let mut hashing = Hashing {
        inner: stream,
        hash: Sha256::new(),
    };
    unpacker.apply_layer(&layer.name, &mut hashing)?;
    // The tar reader stops at the end-of-archive blocks; the digest
    // covers the whole stream.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| bad_stream(layer, e))?;
    let got = format!("sha256:{}", hex(&hashing.hash.finalize()));
    check_diff_id(layer, &got)
}
