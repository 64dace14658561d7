//! TAP devices for microVMs.
//!
//! Design choice: the TAP is created **by name inside the workbench
//! namespace and handed over as an open fd**. `/dev/net/tun` is opened on a
//! thread that has entered the namespace (a tun device is created in the
//! namespace of the opener), `TUNSETIFF` makes `IFF_TAP | IFF_NO_PI` (plus
//! `IFF_VNET_HDR` for virtio-net), and the device is enslaved to the bridge
//! and set up over netlink. The device is not persistent: it disappears
//! when the last fd closes, so a killed monitor leaves nothing behind. The
//! monitor itself never needs to enter the namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::ipam::Lease;
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{self, NetnsError};

/// The tun/tap clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// Errors of TAP creation.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` does not exist.
    #[error("{TUN_PATH} is missing; load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)")]
    NoTunDevice,
    /// Opening `/dev/net/tun` failed for another reason.
    #[error("Could not open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The name does not fit an interface name.
    #[error("TAP name {name:?} must be 1..=15 bytes without '/' or whitespace")]
    Name { name: String },
    /// Entering the workbench namespace failed.
    #[error("Could not create the TAP inside the workbench namespace")]
    Namespace(#[source] NetnsError),
    /// TUNSETIFF was refused.
    #[error("Could not create TAP device {name} (TUNSETIFF)")]
    Create {
        name: String,
        #[source]
        source: nix::Error,
    },
    /// The new device did not show up in a link dump.
    #[error("TAP device {name} was created but is not visible in the workbench namespace")]
    Missing { name: String },
    /// Enslaving to the bridge or setting up failed.
    #[error("Could not attach TAP device {name} to the bridge")]
    Attach {
        name: String,
        #[source]
        source: NetlinkError,
    },
}

/// Checks an interface name (IFNAMSIZ - 1 bytes, no separators).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains('/')
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != ".."
}

/// Creates TAP `name` in the namespace `ns`; returns its fd.
pub fn create_in(ns: BorrowedFd<'_>, name: &str, vnet_hdr: bool) -> Result<OwnedFd, TapError> {
    if !valid_ifname(name) {
        return Err(TapError::Name {
            name: name.to_owned(),
        });
    }
    let file = netns::run_in(ns, || {
        OpenOptions::new().read(true).write(true).open(TUN_PATH)
    })
    .map_err(TapError::Namespace)?
    .map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TapError::NoTunDevice,
        _ => TapError::Open {
            path: PathBuf::from(TUN_PATH),
            source,
        },
    })?;
    // SAFETY: ifreq is a plain C struct (name array plus a union of
    // integers and pointers) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    let fd = OwnedFd::from(file);
    // SAFETY: fd is an open /dev/net/tun file and req is a valid,
    // NUL-terminated ifreq that lives across the call; TUNSETIFF only reads
    // (and writes back the name into) that struct.
    unsafe { tun_set_iff(std::os::fd::AsRawFd::as_raw_fd(&fd), &req) }.map_err(|source| {
        TapError::Create {
            name: name.to_owned(),
            source,
        }
    })?;
    Ok(fd)
}

/// A TAP device on the workbench bridge, with the address lease of the
/// guest behind it. Dropping it closes the fd (removing the device) and
/// releases the address.
#[derive(Debug)]
pub struct Tap {
    name: String,
    index: u32,
    fd: OwnedFd,
    lease: Lease,
    nl: Arc<Mutex<Netlink>>,
}

impl Tap {
    /// Creates `name` in the namespace `ns`, enslaves it to `bridge` and sets it up.
    pub(crate) fn attach(
        ns: BorrowedFd<'_>,
        nl: Arc<Mutex<Netlink>>,
        bridge: u32,
        name: &str,
        vnet_hdr: bool,
        lease: Lease,
    ) -> Result<Tap, TapError> {
        let fd = create_in(ns, name, vnet_hdr)?;
        let attach = |nl: &mut Netlink| -> Result<u32, TapError> {
            let link = nl
                .link(name)
                .map_err(|source| TapError::Attach {
                    name: name.to_owned(),
                    source,
                })?
                .ok_or_else(|| TapError::Missing {
                    name: name.to_owned(),
                })?;
            nl.set_up(link.index, Some(bridge))
                .map_err(|source| TapError::Attach {
                    name: name.to_owned(),
                    source,
                })?;
            Ok(link.index)
        };
        let index = {
            let mut guard = nl.lock().unwrap_or_else(|e| e.into_inner());
            attach(&mut guard)?
        };
        Ok(Tap {
            name: name.to_owned(),
            index,
            fd,
            lease,
            nl,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index inside the workbench namespace.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The guest's address lease: `isolab.ip=<cidr()>`, `isolab.gw=<gateway()>`,
    /// and `mac()` for the guest's virtio-net MAC (so a re-leased address
    /// keeps its MAC and cached neighbour entries stay right).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// A duplicate of the TAP fd, for a monitor that wants to own one.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Closing our fd (right after this) removes a non-persistent TAP
        // unless the monitor still holds a duplicate; delete it explicitly
        // so a leaked copy cannot keep it on the bridge. ENODEV means it is
        // already gone.
        let mut nl = self.nl.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = nl.delete_link(self.index) {
            if err.errno() != Some(libc::ENODEV) {
                eprintln!("warning: could not delete TAP {}: {err}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("tap0"));
        assert!(valid_ifname("isolab-tap-0123"));
        assert!(!valid_ifname("isolab-tap-01234"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
    }
}
