//! Address management for the workbench subnet: the bridge takes the first
//! host address, instances lease the others, and a [`Lease`] gives its
//! address back when dropped.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// Errors of subnet parsing and address allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The text is not `a.b.c.d/len`.
    #[error("Invalid subnet {text:?}: expected a.b.c.d/len, for example 10.203.0.0/24")]
    Parse { text: String },
    /// The prefix leaves too few or too many addresses.
    #[error("Subnet prefix /{prefix} is outside /16../29; pick a prefix in that range")]
    Prefix { prefix: u8 },
    /// Host bits are set in the network address.
    #[error("Subnet {text} has host bits set; did you mean {network}/{prefix}?")]
    HostBits {
        text: String,
        network: Ipv4Addr,
        prefix: u8,
    },
    /// The subnet is not in a private (RFC 1918) range.
    #[error("Subnet {subnet} is not private; use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")]
    NotPrivate { subnet: Subnet },
    /// Every address of the subnet is leased.
    #[error("All {capacity} addresses of {subnet} are leased; detach an instance or use a larger subnet")]
    Exhausted { subnet: Subnet, capacity: u32 },
}

/// An IPv4 subnet, `network/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Checks the subnet: prefix /16../29, no host bits, private range.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Subnet, AddrError> {
        if !(16..=29).contains(&prefix) {
            return Err(AddrError::Prefix { prefix });
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        let masked = Ipv4Addr::from(u32::from(network) & mask);
        if masked != network {
            return Err(AddrError::HostBits {
                text: format!("{network}/{prefix}"),
                network: masked,
                prefix,
            });
        }
        let subnet = Subnet { network, prefix };
        if !network.is_private() {
            return Err(AddrError::NotPrivate { subnet });
        }
        Ok(subnet)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The bridge's (gateway's) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `addr` lies inside the subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(addr) & mask == u32::from(self.network)
    }

    /// Whether two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - u32::from(shorter));
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// Number of addresses instances can lease (all but network, gateway
    /// and broadcast).
    pub fn capacity(&self) -> u32 {
        self.size() - 3
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = AddrError;
    fn from_str(text: &str) -> Result<Subnet, AddrError> {
        let parse = || AddrError::Parse {
            text: text.to_owned(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(parse)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| parse())?;
        let prefix: u8 = prefix.parse().map_err(|_| parse())?;
        Subnet::new(addr, prefix)
    }
}

/// The set of leased host offsets within a subnet.
#[derive(Debug)]
struct Pool {
    subnet: Subnet,
    used: BTreeSet<u32>,
}

/// Hands out addresses of one subnet; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct AddressPool {
    inner: Arc<Mutex<Pool>>,
}

impl AddressPool {
    /// An empty pool over `subnet`.
    pub fn new(subnet: Subnet) -> AddressPool {
        AddressPool {
            inner: Arc::new(Mutex::new(Pool {
                subnet,
                used: BTreeSet::new(),
            })),
        }
    }

    /// Leases the lowest free address.
    pub fn lease(&self) -> Result<Lease, AddrError> {
        let mut pool = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let subnet = pool.subnet;
        // Offsets 0 (network), 1 (gateway) and size-1 (broadcast) are never leased.
        let free = (2..subnet.size() - 1).find(|off| !pool.used.contains(off));
        let Some(offset) = free else {
            return Err(AddrError::Exhausted {
                subnet,
                capacity: subnet.capacity(),
            });
        };
        pool.used.insert(offset);
        Ok(Lease {
            addr: Ipv4Addr::from(u32::from(subnet.network) + offset),
            subnet,
            offset,
            pool: Arc::clone(&self.inner),
        })
    }

    /// Number of addresses currently leased.
    pub fn leased(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .len()
    }
}

/// One leased address; released when dropped.
#[derive(Debug)]
pub struct Lease {
    addr: Ipv4Addr,
    subnet: Subnet,
    offset: u32,
    pool: Arc<Mutex<Pool>>,
}

impl Lease {
    /// The leased address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its prefix length.
    pub fn prefix(&self) -> u8 {
        self.subnet.prefix
    }

    /// The gateway (bridge) address to route through.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    /// A MAC address derived from the leased address (`02:49:` then the
    /// four address bytes; locally administered, unicast). Reusing an
    /// address then reuses its MAC, so a neighbour entry cached for the
    /// previous holder stays right and the first packets to a new instance
    /// are not lost to a stale ARP entry.
    pub fn mac(&self) -> [u8; 6] {
        let [a, b, c, d] = self.addr.octets();
        [0x02, 0x49, a, b, c, d]
    }

    /// `addr/prefix`, as the guest's `isolab.ip=` parameter wants it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.subnet.prefix)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.used.remove(&self.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s: Subnet = "10.203.0.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 203, 0, 1));
        assert_eq!(s.capacity(), 253);
        assert!(matches!(
            "10.203.0.1/24".parse::<Subnet>(),
            Err(AddrError::HostBits { .. })
        ));
        assert!(matches!(
            "8.8.8.0/24".parse::<Subnet>(),
            Err(AddrError::NotPrivate { .. })
        ));
        assert!(matches!(
            "10.0.0.0/8".parse::<Subnet>(),
            Err(AddrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0/31".parse::<Subnet>(),
            Err(AddrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0".parse::<Subnet>(),
            Err(AddrError::Parse { .. })
        ));
        assert!(matches!(
            "x/24".parse::<Subnet>(),
            Err(AddrError::Parse { .. })
        ));
    }

    #[test]
    fn overlap_and_contains() {
        let a: Subnet = "10.203.0.0/24".parse().unwrap();
        let b: Subnet = "10.203.0.0/16".parse().unwrap();
        let c: Subnet = "10.204.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(a.contains(Ipv4Addr::new(10, 203, 0, 77)));
        assert!(!a.contains(Ipv4Addr::new(10, 203, 1, 1)));
    }

    #[test]
    fn leases_lowest_free_and_releases_on_drop() {
        let pool = AddressPool::new("192.168.77.0/29".parse().unwrap());
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_eq!(a.addr(), Ipv4Addr::new(192, 168, 77, 2));
        assert_eq!(b.cidr(), "192.168.77.3/29");
        assert_eq!(b.gateway(), Ipv4Addr::new(192, 168, 77, 1));
        assert_eq!(b.mac(), [0x02, 0x49, 192, 168, 77, 3]);
        drop(a);
        assert_eq!(pool.leased(), 1);
        let c = pool.lease().unwrap();
        assert_eq!(c.addr(), Ipv4Addr::new(192, 168, 77, 2));
    }

    #[test]
    fn exhaustion_is_an_error_not_a_wrap() {
        let pool = AddressPool::new("172.16.5.0/29".parse().unwrap());
        let leases: Vec<Lease> = (0..5).map(|_| pool.lease().unwrap()).collect();
        assert_eq!(leases.last().unwrap().addr(), Ipv4Addr::new(172, 16, 5, 6));
        assert!(matches!(
            pool.lease(),
            Err(AddrError::Exhausted { capacity: 5, .. })
        ));
        drop(leases);
        assert_eq!(pool.leased(), 0);
    }
}
