//! rtnetlink requests over a synchronous socket (netlink-sys), with the
//! messages built and parsed by netlink-packet-route: links (bridge, veth,
//! TAP master/up), IPv4 addresses and the default route.
//!
//! A socket acts on the network namespace it was created in; open one for
//! another namespace with [`Netlink::open_in`].

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netns::{self, NetnsError};
use crate::rtmsg;

/// Receive buffer: large enough for one dump datagram of a small namespace.
/// Reserved, never zeroed: a socket opened during a container launch (the
/// peer's configuration, after the clone made this process's heap
/// copy-on-write) then touches only the page or two a reply fills instead
/// of faulting all sixteen.
const RECV_BUF: usize = 64 * 1024;

/// Errors of netlink requests.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be created, bound or connected.
    #[error("Could not open a NETLINK_ROUTE socket")]
    Socket(#[source] io::Error),
    /// The socket could not be created inside the target namespace.
    #[error("Could not open a netlink socket in the target namespace")]
    Namespace(#[source] Box<NetnsError>),
    /// Sending a request failed.
    #[error("Could not send the {op} request for {target}")]
    Send {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    /// Receiving the answer failed.
    #[error("Could not receive the answer to {op} for {target}")]
    Recv {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    /// The answer could not be parsed.
    #[error("Could not parse the kernel's answer to {op} for {target}: {detail}")]
    Decode {
        op: &'static str,
        target: String,
        detail: String,
    },
    /// The kernel refused the request.
    #[error("The kernel refused {op} for {target}")]
    Refused {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The errno of a refused request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One interface as seen by a link dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `tun`, ...), when the kernel reports one.
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
}

/// An IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

/// A NETLINK_ROUTE socket bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            socket,
            seq: 0,
            // Capacity only: `recv` writes into its spare part.
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// A socket in the network namespace `ns` (opened right here when the
    /// calling thread is already in it, else on a helper thread).
    pub fn open_in(ns: BorrowedFd<'_>) -> Result<Netlink, NetlinkError> {
        if netns::is_current(ns) {
            return Netlink::open();
        }
        netns::run_in(ns, Netlink::open).map_err(|e| NetlinkError::Namespace(Box::new(e)))?
    }

    fn send(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<u32, NetlinkError> {
        let mut bytes = Vec::new();
        let seq = self.append(&mut bytes, msg, flags);
        self.socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Send {
                op,
                target: target.to_owned(),
                source,
            })?;
        Ok(seq)
    }

    /// Serialises `msg` with the next sequence number onto `bytes` (4-byte
    /// aligned, so several can share one datagram) and returns the number.
    fn append(&mut self, bytes: &mut Vec<u8>, msg: RouteNetlinkMessage, flags: u16) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let start = bytes.len();
        bytes.resize(start + ((packet.buffer_len() + 3) & !3), 0);
        packet.serialize(&mut bytes[start..]);
        self.seq
    }

    /// Receives datagrams and hands each message of sequence `seq` to
    /// `each` until it returns `Some`.
    fn receive<T>(
        &mut self,
        op: &'static str,
        target: &str,
        seq: u32,
        mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Option<Result<T, NetlinkError>>,
    ) -> Result<T, NetlinkError> {
        loop {
            self.buf.clear();
            let size = match self.socket.recv(&mut self.buf, 0) {
                Ok(size) => size,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NetlinkError::Recv {
                        op,
                        target: target.to_owned(),
                        source,
                    })
                }
            };
            let mut offset = 0;
            while offset + 4 <= size {
                let len = u32::from_ne_bytes([
                    self.buf[offset],
                    self.buf[offset + 1],
                    self.buf[offset + 2],
                    self.buf[offset + 3],
                ]) as usize;
                if len < 16 || offset + len > size {
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &self.buf[offset..offset + len],
                )
                .map_err(|e| NetlinkError::Decode {
                    op,
                    target: target.to_owned(),
                    detail: e.to_string(),
                })?;
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let Some(result) = each(msg) {
                    return result;
                }
            }
        }
    }

    /// Sends a request that the kernel acknowledges: a batch of one.
    fn request(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        self.request_batch(target, vec![(op, msg, flags)])
    }

    /// Sends `requests` (each acknowledged) in one datagram, then reads
    /// their acks: the kernel handles the messages of a datagram in order
    /// and answers each, so this is one `sendmsg` instead of one round
    /// trip per request. A refused request does not stop the ones after
    /// it; the first refusal (in request order) is returned.
    fn request_batch(
        &mut self,
        target: &str,
        requests: Vec<(&'static str, RouteNetlinkMessage, u16)>,
    ) -> Result<(), NetlinkError> {
        let Some(first_op) = requests.first().map(|r| r.0) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        let sent: Vec<(u32, &'static str)> = requests
            .into_iter()
            .map(|(op, msg, flags)| {
                let seq = self.append(&mut bytes, msg, NLM_F_REQUEST | NLM_F_ACK | flags);
                (seq, op)
            })
            .collect();
        self.socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Send {
                op: first_op,
                target: target.to_owned(),
                source,
            })?;
        // Every ack is a datagram of its own, in request order; all are
        // read, so none is left for a later request.
        let mut first_refusal = None;
        for (seq, op) in sent {
            let answer = self.receive(op, target, seq, |msg| match msg.payload {
                NetlinkPayload::Error(err) => Some(Ok(err.code.map(|_| err.to_io()))),
                _ => None,
            })?;
            if let (Some(source), None) = (answer, &first_refusal) {
                first_refusal = Some(NetlinkError::Refused {
                    op,
                    target: target.to_owned(),
                    source,
                });
            }
        }
        match first_refusal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends a dump request and collects every answer.
    fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(op, "dump", msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(op, "dump", seq, |msg| match msg.payload {
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(err) if err.code.is_some() => Some(Err(NetlinkError::Refused {
                op,
                target: "dump".into(),
                source: err.to_io(),
            })),
            NetlinkPayload::InnerMessage(inner) => {
                out.push(inner);
                None
            }
            _ => None,
        })?;
        Ok(out)
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.dump(
            "link dump",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_of(&link)),
                _ => None,
            })
            .collect())
    }

    /// The interface called `name`, if any: one `RTM_GETLINK` by name, not
    /// a dump (a dump's cost grows with every interface of the namespace:
    /// a thousand veths on the workbench bridge in a density run).
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let op = "find link";
        let seq = self.send(op, name, RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)?;
        self.receive(op, name, seq, |msg| match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                Some(Ok(Some(link_of(&link))))
            }
            NetlinkPayload::Error(err) => Some(match err.code {
                Some(_) if err.to_io().raw_os_error() == Some(libc::ENODEV) => Ok(None),
                None => Ok(None),
                Some(_) => Err(NetlinkError::Refused {
                    op,
                    target: name.to_owned(),
                    source: err.to_io(),
                }),
            }),
            _ => None,
        })
    }

    /// Every IPv4 address of the namespace.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answers = self.dump("address dump", RouteNetlinkMessage::GetAddress(msg))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let addr = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(std::net::IpAddr::V4(v4)) => Some(*v4),
                        AddressAttribute::Address(std::net::IpAddr::V4(v4)) => Some(*v4),
                        _ => None,
                    })?;
                    Some(Address {
                        index: a.header.index,
                        addr,
                        prefix: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge called `name`.
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.request(
            "create bridge",
            name,
            RouteNetlinkMessage::NewLink(rtmsg::bridge(name)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair: `name` here, `peer` (with MAC `peer_mac`)
    /// directly inside the namespace `peer_ns`, so no rename or move is
    /// ever needed there. `name` is born up and enslaved to the bridge
    /// `master` if given: one round trip instead of three.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_mac: [u8; 6],
        peer_ns: BorrowedFd<'_>,
        master: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let msg = rtmsg::veth(name, peer, peer_mac, peer_ns.as_raw_fd(), master);
        self.request(
            "create veth pair",
            name,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sets an interface up, optionally enslaving it to bridge `master` first.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> Result<(), NetlinkError> {
        self.request(
            "set link up",
            &format!("ifindex {index}"),
            RouteNetlinkMessage::SetLink(rtmsg::set_up(index, master)),
            0,
        )
    }

    /// Deletes an interface (for a veth, both ends).
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(
            "delete link",
            &format!("ifindex {index}"),
            RouteNetlinkMessage::DelLink(rtmsg::delete(index)),
            0,
        )
    }

    /// Deletes the interface called `name` (for a veth, both ends).
    pub fn delete_link_named(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.request(
            "delete link",
            name,
            RouteNetlinkMessage::DelLink(rtmsg::delete_named(name)),
            0,
        )
    }

    /// Gives interface `index` the address `addr/prefix`, sets it up and
    /// adds the IPv4 default route via `gateway` through it: the three
    /// requests in one datagram ([`Netlink::request_batch`]), in that
    /// order (the route needs the address's subnet to reach the gateway).
    pub fn configure_interface(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        self.request_batch(
            &format!("ifindex {index} ({addr}/{prefix} via {gateway})"),
            vec![
                (
                    "add address",
                    RouteNetlinkMessage::NewAddress(rtmsg::address(index, addr, prefix)),
                    NLM_F_CREATE | NLM_F_EXCL,
                ),
                (
                    "set link up",
                    RouteNetlinkMessage::SetLink(rtmsg::set_up(index, None)),
                    0,
                ),
                (
                    "add default route",
                    RouteNetlinkMessage::NewRoute(rtmsg::default_route(gateway)),
                    NLM_F_CREATE | NLM_F_EXCL,
                ),
            ],
        )
    }

    /// Adds `addr/prefix` to interface `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.request(
            "add address",
            &format!("{addr}/{prefix} on ifindex {index}"),
            RouteNetlinkMessage::NewAddress(rtmsg::address(index, addr, prefix)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds the IPv4 default route via `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.request(
            "add default route",
            &format!("via {gateway}"),
            RouteNetlinkMessage::NewRoute(rtmsg::default_route(gateway)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        master: None,
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
