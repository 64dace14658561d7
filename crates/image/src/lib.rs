//! OCI images and runtime bundles as workloads: reading an image from an
//! OCI image layout directory, an `oci-archive` or a `docker-archive`
//! tarball (what `podman save`, `docker save` and `skopeo copy` write),
//! verifying every blob, unpacking its layers into a root filesystem cached
//! by digest, and the image's runtime config as a typed struct; reading an
//! OCI runtime bundle; building the microVM's read-only root disk (erofs)
//! and the guest spec that tells the guest init what to run.
//!
//! Not here: running anything. The process, container and microVM modes
//! (crates/harness, crates/container, crates/microvm) take a [`RunSpec`]
//! and, for the microVM, a [`RootDisk`] plus the [`GuestSpec`] initramfs.
//!
//! ```no_run
//! use isolab_image::{ImageRef, ImageStore};
//! let store = ImageStore::new(std::path::Path::new("/var/cache/isolab"));
//! let image = store.unpack(&ImageRef::parse("httpd.tar:latest")?)?;
//! let spec = image.run_spec(None)?;
//! println!("{:?} as uid {} in {}", spec.args, spec.uid, spec.rootfs.display());
//! # Ok::<(), isolab_image::ImageError>(())
//! ```

pub mod bundle;
pub mod cache;
pub mod config;
pub mod disk;
mod error;
pub mod guest_spec;
pub mod manifest;
pub mod reference;
pub mod rootpath;
pub mod source;
pub mod unpack;

pub use bundle::{Bundle, BundleError};
pub use cache::{ImageStore, UnpackMeta, UnpackedImage};
pub use config::{ExposedPort, Identity, ImageConfig, Protocol, RunSpec};
pub use disk::{build_erofs, DiskError, RootDisk};
pub use error::ImageError;
pub use guest_spec::{GuestSpec, SpecError};
pub use manifest::Format;
pub use reference::ImageRef;
