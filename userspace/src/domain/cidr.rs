//! Networks as `ip addr` writes them (`172.17.0.1/16`), and the IPv6
//! networks security-group rules name (`2001:db8::/32`).
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

/// An interface address with its prefix, as `ip addr` shows it
/// (`172.17.0.1/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            addr,
            prefix_len: prefix_len.min(32),
        }
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The network this address is in (`172.17.0.1/16` -> `172.17.0.0/16`).
    pub fn network(self) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        (u32::from(self.addr) ^ u32::from(ip)) & self.mask() == 0
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An IPv6 network (`2001:db8::/32`, `::/0`), as a security-group rule's
/// peer names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Ipv6Cidr {
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Self {
        Self {
            addr,
            prefix_len: prefix_len.min(128),
        }
    }

    /// The prefix as a mask over the address's 128 bits.
    pub fn mask(self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The network this address is in (`2001:db8::1/32` -> `2001:db8::/32`).
    pub fn network(self) -> Self {
        Self {
            addr: Ipv6Addr::from(u128::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    pub fn contains(self, ip: Ipv6Addr) -> bool {
        (u128::from(self.addr) ^ u128::from(ip)) & self.mask() == 0
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}
