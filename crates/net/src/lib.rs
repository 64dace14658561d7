//! isolab-net: the workbench's own network, for process, container and
//! microVM instances alike.
//!
//! Owns: one network namespace of the workbench (default `isolab0`,
//! bind-mounted at `/run/netns/isolab0` so `ip -n isolab0 ...` can inspect
//! it), a bridge inside it (default `isobr0`, `10.203.0.1/24`), address
//! leases for instances, the attachments (veth for a container, TAP for a
//! microVM, setns for a plain process), and an HTTP probe that measures
//! launch-to-first-response and a short request/response run from inside
//! the namespace.
//!
//! Does not own: the instances themselves (launchers create them and hand
//! over a namespace fd or pid), or anything in the host's own network
//! namespace, which this crate never configures.

pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod probe;
pub mod rtmsg;
pub mod tap;
pub mod workbench;

pub use ipam::{AddrError, AddressPool, Lease, Subnet};
pub use netlink::{Netlink, NetlinkError};
pub use netns::{NamedNetns, NetnsError};
pub use probe::{FirstResponse, Netns, ProbeConfig, ProbeError, RequestRun, Target};
pub use tap::{Tap, TapError};
pub use workbench::{VethAttachment, Workbench, WorkbenchConfig, WorkbenchError};
