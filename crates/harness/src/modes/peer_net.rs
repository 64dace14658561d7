//! A peer (runc, crun, gVisor) attached to the workbench bridge the way
//! our container is, and the way Docker attaches containers: a network
//! namespace made by the launcher, with a veth from it onto the bridge,
//! handed to the runtime by path (the OCI config's network namespace
//! `path`; runsc is started inside it). The instance is then probed at its
//! bridge address from the workbench namespace by the same code as every
//! other mode, and its launch clock starts before the namespace is made,
//! as our container's includes its veth.
//!
//! The namespace is bind-mounted at `<bundle>/netns`, so it goes with the
//! bundle: [`super::oci::remove_bundle`], the launcher's watchdog and the
//! next start's sweep ([`crate::stale`]) unmount it before removing the
//! bundle.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isolab_net::{NamedNetns, Target, VethAttachment, Workbench, WorkbenchError};
use serde_json::Value;

use super::container::on_workbench;
use super::InstanceSpec;
use crate::net::{on_bridge, SharedWorkbench};
use crate::HarnessError;

/// The file name of a peer's network namespace inside its bundle.
pub const NETNS_NAME: &str = "netns";

/// The peer's namespace on the workbench bridge when `spec` serves HTTP
/// there (the built-in api, or a user's image with a network ready rule,
/// reached at its bridge address like our container's); `None` otherwise
/// (loopback in the runtime's own namespace: density runs and
/// `--container-net loopback`). With `join`, the bundle's config.json names
/// it (runc, crun); runsc is started inside it instead.
pub(crate) fn for_spec(
    spec: &InstanceSpec,
    network: &SharedWorkbench,
    bundle_dir: &Path,
    join: bool,
) -> Result<Option<PeerNet>, HarnessError> {
    if !on_workbench(spec) {
        return Ok(None);
    }
    let net = PeerNet::create(network.get()?, bundle_dir)?;
    if join {
        join_in_bundle(&bundle_dir.join("config.json"), &net.path())?;
    }
    Ok(Some(net))
}

/// A peer's network namespace, attached to the workbench bridge; dropping
/// it deletes the veth and the namespace's name (the namespace goes with
/// its last process).
#[derive(Debug)]
pub(crate) struct PeerNet {
    veth: Option<VethAttachment>,
    ns: Option<NamedNetns>,
    workbench: Arc<Workbench>,
}

impl PeerNet {
    /// Makes `<bundle_dir>/netns` and attaches it (`eth0`, a leased address,
    /// `lo` up, a default route via the bridge).
    pub fn create(workbench: Arc<Workbench>, bundle_dir: &Path) -> Result<PeerNet, HarnessError> {
        let ns = NamedNetns::create(bundle_dir, NETNS_NAME).map_err(WorkbenchError::Namespace)?;
        let veth = match workbench.attach_veth(ns.as_fd(), "eth0") {
            Ok(v) => v,
            Err(e) => {
                let _ = ns.remove();
                return Err(e.into());
            }
        };
        Ok(PeerNet {
            veth: Some(veth),
            ns: Some(ns),
            workbench,
        })
    }

    /// `<bundle>/netns`.
    pub fn path(&self) -> PathBuf {
        self.ns
            .as_ref()
            .map(|n| n.path().to_owned())
            .expect("named until dropped")
    }

    /// The namespace, for `setns` (runsc is started inside it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns.as_ref().expect("named until dropped").as_fd()
    }

    /// The instance's `port` at its bridge address, reached from the
    /// workbench namespace.
    pub fn target(&self, port: u16) -> Target {
        let addr = self.veth.as_ref().expect("attached until dropped").addr();
        on_bridge(&self.workbench, addr, port)
    }
}

impl Drop for PeerNet {
    fn drop(&mut self) {
        drop(self.veth.take());
        if let Some(ns) = self.ns.take() {
            let _ = ns.remove();
        }
    }
}

/// Unmounts a bundle's network namespace name, if it has one (before the
/// bundle is removed: a mounted file cannot be unlinked).
pub(crate) fn release_in(bundle_dir: &Path) {
    let _ = isolab_net::netns::remove_name(&bundle_dir.join(NETNS_NAME));
}

/// Points the bundle's network namespace at `netns` (the runtime joins it
/// instead of creating one).
pub(crate) fn join_in_bundle(config: &Path, netns: &Path) -> Result<(), HarnessError> {
    edit_bundle(config, |spec| {
        let nss = spec["linux"]["namespaces"].as_array_mut()?;
        let net = nss.iter_mut().find(|ns| ns["type"] == "network")?;
        net["path"] = Value::String(netns.display().to_string());
        Some(())
    })
}

/// Rewrites the bundle's `config.json` with `f` (`None`: the spec lacks
/// what `f` needs).
pub(crate) fn edit_bundle(
    config: &Path,
    f: impl FnOnce(&mut Value) -> Option<()>,
) -> Result<(), HarnessError> {
    let bad = |what: &str| HarnessError::Launch(format!("{}: {what}", config.display()));
    let text =
        std::fs::read_to_string(config).map_err(|e| HarnessError::io("read the bundle", e))?;
    let mut spec: Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
    f(&mut spec).ok_or_else(|| bad("no network namespace or env"))?;
    let text = serde_json::to_string_pretty(&spec).map_err(|_| bad("cannot serialise"))?;
    std::fs::write(config, text).map_err(|e| HarnessError::io("write the bundle", e))
}
