//! The production container runtimes measured as peers (`crun`, `runc`,
//! gVisor's `runsc`), carried into the emulated host so they run on its pure
//! cgroup v2 (crun refuses this project's hybrid-cgroup hosts outright).
//!
//! Each runtime is the host's own Debian binary, found on `PATH` (plus
//! `/usr/sbin` and `/sbin`, where `runc` lives, for callers whose `PATH`
//! lacks them), copied to [`GUEST_PEER_DIR`] (on `PATH` inside) with the
//! shared libraries `ldd` names at their host paths. Nothing else is needed
//! at run time (checked by `tests/peers.rs` in the emulated host):
//!
//! - `crun`, `runc`: cgroup v2 at `/sys/fs/cgroup` with controllers enabled
//!   at the root (the emulated host's `/init` does it); they create the
//!   `isolab` parent from the bundle's `cgroupsPath` and enable what they
//!   need in it; state under `/run` (a tmpfs inside) or `--root`.
//! - `runsc`: a static Go binary that re-executes itself through
//!   `/proc/self/exe` (gofer, sandbox); `--platform=ptrace` and
//!   `--network=none` work inside. Its sandbox's threads and ptrace stubs
//!   count against the bundle's `pids` limit (a limit of 32 makes the
//!   Sentry panic with EAGAIN), and `runsc run` cannot pass the ready fd.
//!
//! They are carried only when asked ([`crate::HostConfig::peers`]): they
//! are part of every boot's initramfs, and `runsc` alone is 24 MB.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::{shared_libraries, FileMap, ImageError};
use crate::provision::find_program;

/// Where the runtimes go inside (on the emulated host's `PATH`).
pub const GUEST_PEER_DIR: &str = "/usr/local/bin";

/// Directories searched after `PATH`: `runc` is in `/usr/sbin`, which a
/// non-root user's `PATH` often lacks.
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// A container runtime that can be carried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerRuntime {
    Crun,
    Runc,
    /// gVisor's runtime.
    Runsc,
}

impl PeerRuntime {
    /// Every runtime, in the order they are reported.
    pub const ALL: [Self; 3] = [Self::Crun, Self::Runc, Self::Runsc];

    /// The program's name (also its name inside).
    pub fn command(self) -> &'static str {
        match self {
            Self::Crun => "crun",
            Self::Runc => "runc",
            Self::Runsc => "runsc",
        }
    }

    /// The Debian package that installs it.
    pub fn package(self) -> &'static str {
        self.command()
    }

    /// The runtime behind a peer name of `bench compare --peers` (`crun`,
    /// `runc`, `gvisor` or `runsc`); `None` for peers that are no container
    /// runtime (`qemu-microvm`: see [`crate::HostConfig::include_qemu`]).
    pub fn for_peer(name: &str) -> Option<Self> {
        match name.trim() {
            "crun" => Some(Self::Crun),
            "runc" => Some(Self::Runc),
            "gvisor" | "runsc" => Some(Self::Runsc),
            _ => None,
        }
    }

    /// The program's path inside the emulated host.
    pub fn guest_path(self) -> String {
        format!("{GUEST_PEER_DIR}/{}", self.command())
    }
}

/// The runtimes to carry for the peers of a `bench compare --peers` list:
/// the container runtimes among them, each once, in [`PeerRuntime::ALL`]
/// order. This is what `--host emulated` puts in [`crate::HostConfig::peers`].
pub fn runtimes_for<'a>(peer_names: impl IntoIterator<Item = &'a str>) -> Vec<PeerRuntime> {
    let mut v: Vec<PeerRuntime> = peer_names
        .into_iter()
        .filter_map(PeerRuntime::for_peer)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Errors while collecting a runtime to carry in.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The runtime is not installed on this host.
    #[error("{command} not found on PATH, /usr/sbin or /sbin: install it (apt-get install {package}) to run it in the emulated host")]
    NotInstalled {
        command: &'static str,
        package: &'static str,
    },
    /// Installing it with apt failed.
    #[error("Cannot install {command}")]
    Install {
        command: &'static str,
        #[source]
        source: crate::provision::ProvisionError,
    },
    /// Its size or shared libraries could not be read.
    #[error("Cannot collect {command} and its libraries")]
    Collect {
        command: &'static str,
        #[source]
        source: ImageError,
    },
}

/// One runtime as carried in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CarriedPeer {
    pub runtime: PeerRuntime,
    /// The host program copied in.
    pub host: PathBuf,
    /// Its path inside ([`GUEST_PEER_DIR`]).
    pub guest: String,
    /// The shared libraries copied with it, at their host paths.
    pub libraries: Vec<PathBuf>,
    /// The program's size in bytes (libraries not counted: shared ones are
    /// carried once, see [`PeerBundle::bytes`]).
    pub binary_bytes: u64,
}

/// The runtimes to carry, as file maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBundle {
    pub peers: Vec<CarriedPeer>,
    /// Programs and libraries, each guest path once.
    pub files: Vec<FileMap>,
    /// Bytes of all of `files`: what every boot's initramfs grows by.
    pub bytes: u64,
}

/// Finds `runtime` on `PATH`, then in `/usr/sbin` and `/sbin`.
pub fn locate(runtime: PeerRuntime) -> Result<PathBuf, PeerError> {
    locate_in(runtime, SBIN_DIRS.iter().map(Path::new))
}

fn locate_in<'a>(
    runtime: PeerRuntime,
    extra: impl IntoIterator<Item = &'a Path>,
) -> Result<PathBuf, PeerError> {
    let cmd = runtime.command();
    find_program(cmd)
        .or_else(|| extra.into_iter().map(|d| d.join(cmd)).find(|p| p.is_file()))
        .ok_or(PeerError::NotInstalled {
            command: cmd,
            package: runtime.package(),
        })
}

/// Collects `runtimes` (found with [`locate`]) and their libraries; a
/// missing one is installed with apt when `allow_install`, else named with
/// its package.
pub fn peer_bundle(runtimes: &[PeerRuntime], allow_install: bool) -> Result<PeerBundle, PeerError> {
    let mut found = Vec::new();
    for &rt in runtimes {
        let host = match locate(rt) {
            Err(PeerError::NotInstalled { .. }) if allow_install => {
                // apt may install into /usr/sbin, off this process's PATH:
                // look again the same way before trusting its verdict.
                let tried = crate::provision::require_tool(rt.command(), rt.package(), true);
                match (locate(rt), tried) {
                    (Ok(p), _) => p,
                    (Err(_), Err(source)) => {
                        return Err(PeerError::Install {
                            command: rt.command(),
                            source,
                        })
                    }
                    (Err(e), Ok(_)) => return Err(e),
                }
            }
            other => other?,
        };
        found.push((rt, host));
    }
    bundle_of(&found)
}

fn bundle_of(found: &[(PeerRuntime, PathBuf)]) -> Result<PeerBundle, PeerError> {
    let mut bundle = PeerBundle::default();
    let mut files = Vec::new();
    for (rt, host) in found {
        let collect = |source| PeerError::Collect {
            command: rt.command(),
            source,
        };
        let binary_bytes = std::fs::metadata(host)
            .map_err(|source| {
                collect(ImageError::ReadHost {
                    path: host.clone(),
                    source,
                })
            })?
            .len();
        let libraries = shared_libraries(host).map_err(collect)?;
        files.push(FileMap {
            host: host.clone(),
            guest: rt.guest_path(),
        });
        files.extend(libraries.iter().map(|l| FileMap {
            host: l.clone(),
            guest: l.to_string_lossy().into_owned(),
        }));
        bundle.peers.push(CarriedPeer {
            runtime: *rt,
            host: host.clone(),
            guest: rt.guest_path(),
            libraries,
            binary_bytes,
        });
    }
    bundle.files = crate::image::dedup_guest_paths(files);
    for f in &bundle.files {
        bundle.bytes += std::fs::metadata(&f.host)
            .map_err(|source| PeerError::Collect {
                command: "a peer runtime",
                source: ImageError::ReadHost {
                    path: f.host.clone(),
                    source,
                },
            })?
            .len();
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_peer_names_map_to_runtimes_once() {
        assert_eq!(
            runtimes_for(["qemu-microvm", "runc", "gvisor", "crun", "runc", "none"]),
            [PeerRuntime::Crun, PeerRuntime::Runc, PeerRuntime::Runsc]
        );
        assert_eq!(runtimes_for(["qemu-microvm"]), []);
        assert_eq!(PeerRuntime::for_peer("runsc"), Some(PeerRuntime::Runsc));
        assert_eq!(PeerRuntime::Runc.guest_path(), "/usr/local/bin/runc");
    }

    #[test]
    fn runtimes_serialise_by_command_name() {
        let v: Vec<PeerRuntime> = serde_json::from_str(r#"["crun","runsc"]"#).unwrap();
        assert_eq!(v, [PeerRuntime::Crun, PeerRuntime::Runsc]);
        assert!(serde_json::from_str::<Vec<PeerRuntime>>(r#"["docker"]"#).is_err());
    }

    #[test]
    fn a_missing_runtime_names_its_package() {
        let dir = tempfile::tempdir().unwrap();
        // Found in an extra directory when PATH lacks it.
        let runc = dir.path().join("runc");
        std::fs::write(&runc, "x").unwrap();
        if find_program("runc").is_none() {
            assert_eq!(locate_in(PeerRuntime::Runc, [dir.path()]).unwrap(), runc);
        }
        if find_program("runsc").is_none() {
            let e = locate_in(PeerRuntime::Runsc, [dir.path()]).unwrap_err();
            assert!(e.to_string().contains("apt-get install runsc"), "{e}");
        }
    }

    #[test]
    fn a_bundle_carries_each_program_and_shared_library_once() {
        let dir = tempfile::tempdir().unwrap();
        let bb = Path::new(crate::provision::BUSYBOX);
        let sh = Path::new("/bin/sh");
        if !bb.exists() || !sh.exists() {
            eprintln!("SKIPPED a_bundle_carries_each_program: no {bb:?} or {sh:?}");
            return;
        }
        // Two dynamic programs sharing libc and the loader, one static one.
        let b = bundle_of(&[
            (PeerRuntime::Crun, sh.to_path_buf()),
            (PeerRuntime::Runc, sh.to_path_buf()),
            (PeerRuntime::Runsc, bb.to_path_buf()),
        ])
        .unwrap();
        let guests: Vec<&str> = b.files.iter().map(|f| f.guest.as_str()).collect();
        assert_eq!(guests[0], "/usr/local/bin/crun");
        assert!(guests.contains(&"/usr/local/bin/runc"));
        assert!(guests.contains(&"/usr/local/bin/runsc"));
        let libc = guests.iter().filter(|g| g.contains("libc.so")).count();
        assert_eq!(libc, 1, "{guests:?}");
        assert!(b.peers[2].libraries.is_empty(), "busybox is static");
        assert!(!b.peers[0].libraries.is_empty());
        let sum: u64 = b
            .files
            .iter()
            .map(|f| std::fs::metadata(&f.host).unwrap().len())
            .sum();
        assert_eq!(b.bytes, sum);
        let e = bundle_of(&[(PeerRuntime::Crun, dir.path().join("gone"))]).unwrap_err();
        assert!(e.to_string().starts_with("Cannot collect crun"), "{e}");
    }
}
