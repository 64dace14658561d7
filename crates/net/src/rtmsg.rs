//! Pure builders of the rtnetlink messages the crate sends, kept apart from
//! the socket so their content is unit-tested without privileges.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;

/// `RTM_NEWLINK` for a bridge called `name`.
pub fn bridge(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
    ];
    msg
}

/// TX and RX queues of each veth end ([`veth`]).
pub const VETH_QUEUES: u32 = 1;

/// `RTM_NEWLINK` for a veth pair: `name` in the socket's namespace, `peer`
/// with MAC `peer_mac` created directly in the namespace `peer_ns`; `name`
/// up and enslaved to `master` if given (the kernel applies them once the
/// pair is tied; the peer is configured before that, and a veth end whose
/// peer is not yet tied refuses to go up with `ENOTCONN`).
///
/// Both ends get one TX and one RX queue ([`VETH_QUEUES`]) instead of the
/// kernel's default of one per possible CPU: every queue is a sysfs
/// object made and removed with the device, and a veth's queues only
/// matter for XDP, which the workbench does not use.
pub fn veth(
    name: &str,
    peer: &str,
    peer_mac: [u8; 6],
    peer_ns: RawFd,
    master: Option<u32>,
) -> LinkMessage {
    let mut peer_msg = LinkMessage::default();
    peer_msg.attributes = vec![
        LinkAttribute::IfName(peer.to_owned()),
        LinkAttribute::Address(peer_mac.to_vec()),
        LinkAttribute::NetNsFd(peer_ns),
        LinkAttribute::NumTxQueues(VETH_QUEUES),
        LinkAttribute::NumRxQueues(VETH_QUEUES),
    ];
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::NumTxQueues(VETH_QUEUES),
        LinkAttribute::NumRxQueues(VETH_QUEUES),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]),
    ];
    if let Some(master) = master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    msg
}

/// `RTM_SETLINK` setting `index` up, enslaved to `master` if given.
pub fn set_up(index: u32, master: Option<u32>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    if let Some(master) = master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    msg
}

/// `RTM_DELLINK` of `index`.
pub fn delete(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// `RTM_DELLINK` of the interface called `name` (index 0: the kernel looks
/// the name up), for a caller that never learnt the index.
pub fn delete_named(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![LinkAttribute::IfName(name.to_owned())];
    msg
}

/// The broadcast address of `addr/prefix`.
pub fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) | host_mask)
}

/// `RTM_NEWADDR` of `addr/prefix` on `index`, with its broadcast.
pub fn address(index: u32, addr: Ipv4Addr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    msg.attributes = vec![
        AddressAttribute::Local(addr.into()),
        AddressAttribute::Address(addr.into()),
        AddressAttribute::Broadcast(broadcast(addr, prefix)),
    ];
    msg
}

/// `RTM_NEWROUTE` of the IPv4 default route via `gateway` (main table).
pub fn default_route(gateway: Ipv4Addr) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 0;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;

    /// Serialises as the socket would and parses the bytes back.
    fn round_trip(msg: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes)
            .unwrap()
            .payload
        {
            NetlinkPayload::InnerMessage(inner) => inner,
            other => panic!("unexpected payload {other:?}"),
        }
    }

    #[test]
    fn veth_peer_carries_name_mac_and_namespace() {
        let mac = [0x02, 0x49, 10, 203, 0, 2];
        let RouteNetlinkMessage::NewLink(msg) = round_trip(RouteNetlinkMessage::NewLink(veth(
            "iv0",
            "eth0",
            mac,
            7,
            Some(3),
        ))) else {
            panic!("not a NewLink");
        };
        assert!(msg
            .attributes
            .contains(&LinkAttribute::IfName("iv0".into())));
        let infos = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            })
            .expect("peer info");
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::Address(mac.to_vec())));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(7)));
        // The host end born up on the bridge (the peer cannot be).
        assert!(!peer.header.flags.contains(LinkFlags::Up));
        assert!(msg.header.flags.contains(LinkFlags::Up));
        assert!(msg.attributes.contains(&LinkAttribute::Controller(3)));
        // One queue each way on both ends.
        for attrs in [&msg.attributes, &peer.attributes] {
            assert!(attrs.contains(&LinkAttribute::NumTxQueues(1)));
            assert!(attrs.contains(&LinkAttribute::NumRxQueues(1)));
        }
    }

    #[test]
    fn delete_by_name_leaves_the_index_to_the_kernel() {
        let RouteNetlinkMessage::DelLink(msg) =
            round_trip(RouteNetlinkMessage::DelLink(delete_named("iv3")))
        else {
            panic!("not a DelLink");
        };
        assert_eq!(msg.header.index, 0);
        assert_eq!(msg.attributes, vec![LinkAttribute::IfName("iv3".into())]);
    }

    #[test]
    fn set_up_enslaves_and_raises() {
        let msg = set_up(5, Some(2));
        assert_eq!(msg.header.index, 5);
        assert!(msg.header.flags.contains(LinkFlags::Up));
        assert!(msg.header.change_mask.contains(LinkFlags::Up));
        assert_eq!(msg.attributes, vec![LinkAttribute::Controller(2)]);
        assert!(set_up(5, None).attributes.is_empty());
    }

    #[test]
    fn address_and_broadcast() {
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 203, 0, 7), 24),
            Ipv4Addr::new(10, 203, 0, 255)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(192, 168, 7, 9), 29),
            Ipv4Addr::new(192, 168, 7, 15)
        );
        let RouteNetlinkMessage::NewAddress(msg) = round_trip(RouteNetlinkMessage::NewAddress(
            address(3, Ipv4Addr::new(10, 203, 0, 7), 24),
        )) else {
            panic!("not a NewAddress");
        };
        assert_eq!((msg.header.index, msg.header.prefix_len), (3, 24));
        assert!(msg.attributes.contains(&AddressAttribute::Local(
            Ipv4Addr::new(10, 203, 0, 7).into()
        )));
    }

    #[test]
    fn default_route_goes_via_the_gateway_in_main() {
        let RouteNetlinkMessage::NewRoute(msg) = round_trip(RouteNetlinkMessage::NewRoute(
            default_route(Ipv4Addr::new(10, 203, 0, 1)),
        )) else {
            panic!("not a NewRoute");
        };
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert_eq!(msg.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(
            msg.attributes,
            vec![RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 203, 0, 1
            )))]
        );
    }

    #[test]
    fn bridge_kind() {
        let msg = bridge("isobr0");
        assert!(msg
            .attributes
            .contains(&LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge
            )])));
    }
}
