//! From an image input to the one image it holds: the OCI index (or
//! docker-archive `manifest.json`), the `:TAG` selection, nested indexes
//! (multi-platform images: linux/amd64 is taken), the manifest, the config
//! and the list of layers with the digests to check them against.
//!
//! Every JSON document except the top-level index is a blob whose digest is
//! checked before it is parsed.

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::Deserialize;

use crate::error::ImageError;
use crate::source::{parse_sha256, Source};

/// Annotation carrying a tag in an OCI index (skopeo, podman, umoci).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation carrying the full name in indexes written by containerd/docker.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// How many nested indexes are followed.
const MAX_INDEX_DEPTH: usize = 4;

/// What kind of input it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// OCI image layout (a directory or an `oci-archive`).
    Oci,
    /// `docker save` / `podman save --format docker-archive`.
    DockerArchive,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Docker-archive layers carry no media type: sniffed when read.
    Detect,
}

/// One layer to apply, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Member name in the source.
    pub name: String,
    pub compression: Compression,
    /// Digest of the blob as stored (OCI), checked before use.
    pub blob_digest: Option<String>,
    /// Size the descriptor gives (OCI).
    pub size: Option<u64>,
    /// Digest of the uncompressed tar (`rootfs.diff_ids`); checked before
    /// use where it is the only digest (docker-archive).
    pub diff_id: String,
}

/// The image selected from an input.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub format: Format,
    /// The cache key's digest: the manifest's (OCI) or, for a
    /// docker-archive, which has no manifest blob, the config's (the image
    /// ID).
    pub digest: String,
    pub config_digest: String,
    pub config: ImageConfiguration,
    pub layers: Vec<LayerRef>,
    /// The names the chosen image goes by in the input.
    pub names: Vec<String>,
}

fn bad_json(what: impl Into<String>, e: impl std::fmt::Display) -> ImageError {
    ImageError::BadJson {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// Whether `name` (a ref.name annotation or a RepoTag) answers to `tag`:
/// equal, or its `:tag` suffix, or its last path part equal.
fn tag_matches(name: &str, tag: &str) -> bool {
    if name == tag {
        return true;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last == tag {
        return true;
    }
    match name.rsplit_once(':') {
        // "localhost/img:latest" answers to "latest" and "img:latest".
        Some((repo, t)) if !t.contains('/') => {
            t == tag || last == tag || repo.rsplit('/').next() == Some(tag)
        }
        _ => false,
    }
}

/// Picks one of `candidates` (each with its names) by `tag`.
fn select<'a, T>(
    source: &Source,
    candidates: &'a [(T, Vec<String>)],
    tag: Option<&str>,
) -> Result<&'a (T, Vec<String>), ImageError> {
    let available = || {
        let mut v: Vec<String> = candidates
            .iter()
            .flat_map(|(_, n)| n.iter().cloned())
            .collect();
        if v.is_empty() {
            v.push("untagged".into());
        }
        v
    };
    if candidates.is_empty() {
        return Err(ImageError::NoImages {
            path: source.path().to_path_buf(),
        });
    }
    match tag {
        Some(t) => candidates
            .iter()
            .find(|(_, names)| names.iter().any(|n| tag_matches(n, t)))
            .ok_or_else(|| ImageError::TagNotFound {
                path: source.path().to_path_buf(),
                tag: t.to_string(),
                available: available(),
            }),
        None if candidates.len() == 1 => Ok(&candidates[0]),
        None => Err(ImageError::AmbiguousImage {
            path: source.path().to_path_buf(),
            available: available(),
        }),
    }
}

/// Finds the image in `source`.
pub fn resolve(source: &Source, tag: Option<&str>) -> Result<Resolved, ImageError> {
    if source.has("index.json") {
        resolve_oci(source, tag)
    } else if source.has("manifest.json") {
        resolve_docker(source, tag)
    } else {
        Err(ImageError::MissingManifest {
            path: source.path().to_path_buf(),
        })
    }
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

fn names_of(d: &Descriptor) -> Vec<String> {
    let Some(a) = d.annotations() else {
        return Vec::new();
    };
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|k| a.get(*k).cloned())
        .collect()
}

fn resolve_oci(source: &Source, tag: Option<&str>) -> Result<Resolved, ImageError> {
    let bytes = source.read_small("Index", "index.json")?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|e| bad_json("index.json", e))?;
    let candidates: Vec<(Descriptor, Vec<String>)> = index
        .manifests()
        .iter()
        .map(|d| (d.clone(), names_of(d)))
        .collect();
    let (mut desc, names) = select(source, &candidates, tag)?.clone();
    for depth in 0.. {
        let media = desc.media_type().to_string();
        match media.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => break,
            OCI_INDEX | DOCKER_LIST => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(ImageError::IndexTooDeep {
                        path: source.path().to_path_buf(),
                        depth: MAX_INDEX_DEPTH,
                    });
                }
                let digest = desc.digest().to_string();
                let name = Source::blob_name("Index", &digest)?;
                let bytes = source.read_verified("Index", &name, &digest, Some(desc.size()))?;
                let nested: ImageIndex = serde_json::from_slice(&bytes)
                    .map_err(|e| bad_json(format!("index {digest}"), e))?;
                desc = pick_platform(source, &nested)?;
            }
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    what: "manifest",
                    media_type: other.to_string(),
                })
            }
        }
    }
    let digest = desc.digest().to_string();
    let name = Source::blob_name("Manifest", &digest)?;
    let bytes = source.read_verified("Manifest", &name, &digest, Some(desc.size()))?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| bad_json(format!("manifest {digest}"), e))?;
    if let Some(mt) = manifest.media_type() {
        let mt = mt.to_string();
        if mt != OCI_MANIFEST && mt != DOCKER_MANIFEST {
            return Err(ImageError::UnsupportedMediaType {
                what: "manifest",
                media_type: mt,
            });
        }
    }
    let cfg_desc = manifest.config();
    let cfg_media = cfg_desc.media_type().to_string();
    if cfg_media != OCI_CONFIG && cfg_media != DOCKER_CONFIG {
        return Err(ImageError::UnsupportedMediaType {
            what: "image config",
            media_type: cfg_media,
        });
    }
    let config_digest = cfg_desc.digest().to_string();
    let cfg_name = Source::blob_name("Config", &config_digest)?;
    let cfg_bytes =
        source.read_verified("Config", &cfg_name, &config_digest, Some(cfg_desc.size()))?;
    let config = parse_config(&cfg_bytes)?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::LayerCountMismatch {
            layers: manifest.layers().len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let blob_digest = d.digest().to_string();
        layers.push(LayerRef {
            name: Source::blob_name("Layer", &blob_digest)?,
            compression: layer_compression(d.media_type().as_ref())?,
            blob_digest: Some(blob_digest),
            size: Some(d.size()),
            diff_id,
        });
    }
    Ok(Resolved {
        format: Format::Oci,
        digest: format!("sha256:{}", parse_sha256("Manifest", &digest)?),
        config_digest,
        config,
        layers,
        names,
    })
}

/// The linux/amd64 entry of a multi-platform index (or its only entry).
fn pick_platform(source: &Source, index: &ImageIndex) -> Result<Descriptor, ImageError> {
    let m = index.manifests();
    if let [only] = m.as_slice() {
        return Ok(only.clone());
    }
    if let Some(d) = m.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    }) {
        return Ok(d.clone());
    }
    Err(ImageError::NoMatchingPlatform {
        path: source.path().to_path_buf(),
        available: m
            .iter()
            .map(|d| match d.platform() {
                Some(p) => format!("{}/{}", p.os(), p.architecture()),
                None => "unknown".into(),
            })
            .collect(),
    })
}

/// Compression from a layer media type; anything else is unsupported.
pub fn layer_compression(media_type: &str) -> Result<Compression, ImageError> {
    let c = match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        other => {
            return Err(ImageError::UnsupportedMediaType {
                what: "layer",
                media_type: other.to_string(),
            })
        }
    };
    Ok(c)
}

/// Parses an image config and checks it is for linux/amd64.
fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| bad_json("image config", e))?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        return Err(ImageError::UnsupportedPlatform {
            os: config.os().to_string(),
            arch: config.architecture().to_string(),
        });
    }
    Ok(config)
}

/// One entry of a docker-archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The hex digest a docker-archive file name carries (`<hex>.json`,
/// `<hex>.tar`, `blobs/sha256/<hex>`), if it carries one.
fn digest_in_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let stem = base
        .strip_suffix(".json")
        .or_else(|| base.strip_suffix(".tar"))
        .unwrap_or(base);
    (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", stem.to_ascii_lowercase()))
}

fn resolve_docker(source: &Source, tag: Option<&str>) -> Result<Resolved, ImageError> {
    let bytes = source.read_small("Manifest", "manifest.json")?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&bytes).map_err(|e| bad_json("manifest.json", e))?;
    let candidates: Vec<(DockerEntry, Vec<String>)> = entries
        .into_iter()
        .map(|e| {
            let names = e.repo_tags.clone().unwrap_or_default();
            (e, names)
        })
        .collect();
    let (entry, names) = select(source, &candidates, tag)?.clone();
    // The config has no descriptor: its digest is its own hash, which
    // must agree with its file name when the name carries one (docker and
    // podman name it `<hex>.json`).
    let cfg_bytes = source.read_small("Config", &entry.config)?;
    let (config_digest, _) = crate::source::sha256_of(&cfg_bytes[..])
        .map_err(|e| source.read_failure(&entry.config, e))?;
    if let Some(named) = digest_in_name(&entry.config) {
        if named != config_digest {
            return Err(ImageError::DigestMismatch {
                what: format!("Config {}", entry.config),
                expected: named,
                actual: config_digest,
            });
        }
    }
    let config = parse_config(&cfg_bytes)?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::LayerCountMismatch {
            layers: entry.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| LayerRef {
            name: name.clone(),
            compression: Compression::Detect,
            blob_digest: None,
            size: None,
            diff_id,
        })
        .collect();
    Ok(Resolved {
        format: Format::DockerArchive,
        digest: config_digest.clone(),
        config_digest,
        config,
        layers,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_match_short_and_full_names() {
        assert!(tag_matches("latest", "latest"));
        assert!(tag_matches("localhost/httpd:latest", "latest"));
        assert!(tag_matches("localhost/httpd:latest", "httpd:latest"));
        assert!(tag_matches(
            "localhost/httpd:latest",
            "localhost/httpd:latest"
        ));
        assert!(tag_matches("localhost/httpd:v1", "httpd"));
        assert!(!tag_matches("localhost/httpd:latest", "v1"));
        assert!(!tag_matches("localhost:5000/httpd", "5000"));
    }

    #[test]
    fn media_types_map_to_compression_or_refusal() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        let e = layer_compression("application/vnd.oci.image.layer.v1.tar+bzip2").unwrap_err();
        assert!(matches!(e, ImageError::UnsupportedMediaType { .. }) && e.is_usage());
        assert!(e.to_string().contains("bzip2"), "{e}");
    }

    #[test]
    fn docker_file_names_carry_digests() {
        let h = "ab".repeat(32);
        assert_eq!(
            digest_in_name(&format!("{h}.json")),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{h}")),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }
}
