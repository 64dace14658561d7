//! The error of reading and unpacking an image: one variant per failing
//! step, with what was being read in its fields.
//!
//! Everything wrong with the *input* (a missing file, a truncated tar, a
//! digest that does not match, a layer that tries to leave the root
//! filesystem, a media type we do not handle) is a usage error: the CLI
//! maps [`ImageError::is_usage`] to exit 2. Failures to write the cache are
//! not: the image was fine, the host was not.

use std::io;
use std::path::PathBuf;

/// Reading, verifying or unpacking an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference names nothing on disk.
    #[error(
        "Image {path:?} not found: give an OCI image layout directory, an oci-archive or a \
         docker-archive tarball, optionally followed by :TAG"
    )]
    NotFound { path: PathBuf },
    /// The path exists but is neither an image layout nor an archive.
    #[error("{path:?} is not an OCI image layout, oci-archive or docker-archive: {reason}")]
    UnknownFormat { path: PathBuf, reason: String },
    /// Reading the input failed (permissions, I/O error).
    #[error("Cannot read {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The outer tarball is cut short or malformed.
    #[error("Corrupt archive {path:?}: {reason} (truncated or not a tar file?)")]
    CorruptArchive { path: PathBuf, reason: String },
    /// Neither `index.json` (OCI) nor `manifest.json` (docker-archive).
    #[error("No image manifest in {path:?}: neither index.json nor manifest.json is there")]
    MissingManifest { path: PathBuf },
    /// A file the manifests point at is not in the image.
    #[error("{what} {name} is missing from {path:?}")]
    MissingBlob {
        path: PathBuf,
        what: &'static str,
        name: String,
    },
    /// A name inside the image's manifests is not a plain relative path.
    #[error("Invalid file name {name:?} in the manifest of {path:?}")]
    BadBlobName { path: PathBuf, name: String },
    /// The index or manifest.json lists no image at all.
    #[error("{path:?} holds no image")]
    NoImages { path: PathBuf },
    /// Several images and no `:TAG` to choose.
    #[error("{path:?} holds several images ({}): choose one with PATH:TAG", available.join(", "))]
    AmbiguousImage {
        path: PathBuf,
        available: Vec<String>,
    },
    /// No image carries the requested tag.
    #[error("No image tagged {tag:?} in {path:?} (available: {})", available.join(", "))]
    TagNotFound {
        path: PathBuf,
        tag: String,
        available: Vec<String>,
    },
    /// An index lists no manifest for this host's platform.
    #[error("No linux/amd64 image in the index of {path:?} (platforms: {})", available.join(", "))]
    NoMatchingPlatform {
        path: PathBuf,
        available: Vec<String>,
    },
    /// Indexes nested deeper than we follow.
    #[error("Image indexes in {path:?} nest deeper than {depth} levels")]
    IndexTooDeep { path: PathBuf, depth: usize },
    /// A digest that is not `sha256:<64 hex digits>`.
    #[error("Unsupported digest {digest:?} for {what}: only sha256 is supported")]
    UnsupportedDigest { what: String, digest: String },
    /// A blob's size differs from its descriptor.
    #[error("{what} {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// A blob's content does not hash to its digest.
    #[error("{what} does not match its digest: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A media type this reader does not handle.
    #[error("Unsupported media type {media_type:?} for the {what}")]
    UnsupportedMediaType {
        what: &'static str,
        media_type: String,
    },
    /// A JSON document does not parse as what it claims to be.
    #[error("Invalid {what}: {reason}")]
    BadJson { what: String, reason: String },
    /// A JSON document is larger than any sane manifest.
    #[error("{what} is {size} bytes, larger than the {limit}-byte limit for a JSON document")]
    JsonTooLarge { what: String, size: u64, limit: u64 },
    /// The config lists a different number of layers than the manifest.
    #[error(
        "The image config lists {diff_ids} layer digests but the manifest has {layers} layers"
    )]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    /// The image is for another OS or CPU.
    #[error("The image is for {os}/{arch}; this host runs linux/amd64")]
    UnsupportedPlatform { os: String, arch: String },
    /// A layer is not a readable tar stream (truncated, bad compression).
    #[error("Layer {layer} is not a valid tar stream")]
    BadLayer {
        layer: String,
        #[source]
        source: io::Error,
    },
    /// A layer entry would land outside the root filesystem.
    #[error("Layer {layer}: entry {entry:?} escapes the root filesystem ({reason})")]
    PathEscape {
        layer: String,
        entry: String,
        reason: String,
    },
    /// A layer entry that cannot be applied (unsupported type, a hard link
    /// to nothing, a file where a directory must be).
    #[error("Layer {layer}: entry {entry:?}: {reason}")]
    BadEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// Writing into the cache failed (disk full, permissions): a host
    /// problem, not the image's.
    #[error("Cannot write {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image names no program and no arguments were given.
    #[error("The image sets neither Entrypoint nor Cmd: give the command after --")]
    NoCommand,
    /// `User` in the image config cannot be resolved in its root filesystem.
    #[error("Image user {user:?}: {reason}")]
    BadUser { user: String, reason: String },
}

impl ImageError {
    /// True when the input was at fault (CLI: exit 2, nothing changed).
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Write { .. })
    }
}

/// `io::Error` while reading `path`, with "not found" told apart.
pub(crate) fn read_error(path: impl Into<PathBuf>, source: io::Error) -> ImageError {
    ImageError::Read {
        path: path.into(),
        source,
    }
}

/// `io::Error` while writing `path` in the cache.
pub(crate) fn write_error(path: impl Into<PathBuf>, source: io::Error) -> ImageError {
    ImageError::Write {
        path: path.into(),
        source,
    }
}
