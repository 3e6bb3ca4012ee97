//! Interfaces and addresses (both families) of the network namespace we run in.
use std::{
    ffi::{CStr, CString},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::domain::cidr::{Ipv4Cidr, Ipv6Cidr};

/// One IPv4 address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub interface: String,
    pub cidr: Ipv4Cidr,
}

pub fn interface_exists(name: &str) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string for the whole call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// One address of one interface, either family, with its prefix length
/// (the full length where the kernel reports no netmask).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IfAddr {
    /// Whether `ip` is in this address's subnet (families apart).
    pub fn subnet_holds(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(ip)) => Ipv4Cidr::new(a, self.prefix_len).contains(ip),
            (IpAddr::V6(a), IpAddr::V6(ip)) => Ipv6Cidr::new(a, self.prefix_len).contains(ip),
            _ => false,
        }
    }
}

/// Every IPv4 and IPv6 address in this network namespace: the one walk
/// over getifaddrs' list; callers filter it.
pub fn interface_addrs() -> io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below exactly once.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs; ifa_name is a NUL-terminated
        // string, and address and netmask, when non-null, are sockaddrs of
        // the family the address names.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let (addr, mask) = unsafe {
            if ifa.ifa_addr.is_null() {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => (
                    IpAddr::V4(sockaddr_in_ip(ifa.ifa_addr)),
                    (!ifa.ifa_netmask.is_null())
                        .then(|| u32::from(sockaddr_in_ip(ifa.ifa_netmask)).count_ones()),
                ),
                libc::AF_INET6 => (
                    IpAddr::V6(sockaddr_in6_ip(ifa.ifa_addr)),
                    (!ifa.ifa_netmask.is_null())
                        .then(|| u128::from(sockaddr_in6_ip(ifa.ifa_netmask)).count_ones()),
                ),
                _ => continue,
            }
        };
        let full = if addr.is_ipv4() { 32 } else { 128 };
        out.push(IfAddr {
            // SAFETY: as above.
            interface: unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned(),
            addr,
            prefix_len: mask.unwrap_or(full) as u8,
        });
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe {
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// # Safety
/// `sa` must point to a valid `sockaddr_in`.
unsafe fn sockaddr_in_ip(sa: *const libc::sockaddr) -> Ipv4Addr {
    let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
}

/// # Safety
/// `sa` must point to a valid `sockaddr_in6`.
unsafe fn sockaddr_in6_ip(sa: *const libc::sockaddr) -> Ipv6Addr {
    let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
    Ipv6Addr::from(sin6.sin6_addr.s6_addr)
}

/// Every IPv4 address in this network namespace.
pub fn ipv4_addrs() -> io::Result<Vec<InterfaceAddr>> {
    Ok(interface_addrs()?
        .into_iter()
        .filter_map(|a| match a.addr {
            IpAddr::V4(addr) => Some(InterfaceAddr {
                interface: a.interface,
                cidr: Ipv4Cidr::new(addr, a.prefix_len),
            }),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// The IPv4 subnets on interface `name`, in the order the kernel lists them.
pub fn interface_subnets(name: &str) -> io::Result<Vec<Ipv4Cidr>> {
    Ok(ipv4_addrs()?
        .into_iter()
        .filter(|a| a.interface == name)
        .map(|a| a.cidr)
        .collect())
}

/// The IPv6 subnets on interface `name` (link-local ones left out: every
/// interface has `fe80::/64`, which says nothing about which containers
/// are its), in the order the kernel lists them.
pub fn interface_subnets6(name: &str) -> io::Result<Vec<Ipv6Cidr>> {
    Ok(interface_addrs()?
        .into_iter()
        .filter(|a| a.interface == name)
        .filter_map(|a| match a.addr {
            IpAddr::V6(addr) if !addr.is_unicast_link_local() => {
                Some(Ipv6Cidr::new(addr, a.prefix_len))
            }
            _ => None,
        })
        .collect())
}

/// Whether `name` is a Linux bridge (its sysfs directory has `bridge/`).
pub fn is_bridge(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{name}/bridge")).is_dir()
}

/// Every host IPv4 address, sorted and without duplicates: what a wildcard
/// (0.0.0.0) binding answers on. Loopback and the bridge's own address are
/// included; the datapath decides where each one matters.
pub fn host_ipv4_addrs() -> io::Result<Vec<Ipv4Addr>> {
    let mut addrs: Vec<Ipv4Addr> = ipv4_addrs()?.into_iter().map(|a| a.cidr.addr).collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// The host's IPv6 addresses (every interface's, `::1` and link-local
/// ones included, as [`host_ipv4_addrs`] includes 127.0.0.1), without
/// duplicates, the ones that matter most first ([`by_priority`]): a host
/// address table too small for all keeps the first.
pub fn host_ipv6_addrs() -> io::Result<Vec<Ipv6Addr>> {
    let mut kinds: std::collections::HashMap<String, LinkKind> = std::collections::HashMap::new();
    let addrs: Vec<(Ipv6Addr, LinkKind)> = interface_addrs()?
        .into_iter()
        .filter_map(|a| match a.addr {
            IpAddr::V6(addr) => {
                let kind = *kinds.entry(a.interface).or_insert_with_key(|name| {
                    if is_bridge(name) {
                        LinkKind::Bridge
                    } else if is_bridge_port(name) {
                        LinkKind::BridgePort
                    } else {
                        LinkKind::Other
                    }
                });
                Some((addr, kind))
            }
            IpAddr::V4(_) => None,
        })
        .collect();
    Ok(by_priority(addrs))
}

/// What an address's link is, for [`by_priority`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge: its link-local address is its containers' gateway.
    Bridge,
    /// A port of a bridge (a container's host-side veth).
    BridgePort,
    Other,
}

/// Whether `name` is a port of a Linux bridge (a container's host-side
/// veth, say): its sysfs directory has `brport/`.
fn is_bridge_port(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{name}/brport")).is_dir()
}

/// (address, its link) in the order a host address table keeps them:
/// addresses that are not link-local (where clients reach the host, and
/// which a container must never claim), then the bridges' link-local ones
/// (their containers' gateway), then other links' (an uplink's), then the
/// link-local addresses of bridge ports, one per container's host-side
/// veth, which no packet berth sees is addressed to. Each part sorted; an
/// address on several links counts once, where it matters most.
pub fn by_priority(addrs: Vec<(Ipv6Addr, LinkKind)>) -> Vec<Ipv6Addr> {
    let rank = |(a, kind): &(Ipv6Addr, LinkKind)| match (a.is_unicast_link_local(), kind) {
        (false, _) => 0,
        (true, LinkKind::Bridge) => 1,
        (true, LinkKind::Other) => 2,
        (true, LinkKind::BridgePort) => 3,
    };
    let mut ranked: Vec<(u8, Ipv6Addr)> = addrs.iter().map(|x| (rank(x), x.0)).collect();
    ranked.sort();
    let mut seen = std::collections::HashSet::new();
    ranked
        .into_iter()
        .filter_map(|(_, a)| seen.insert(a).then_some(a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        let (addr, len) = s.split_once('/').unwrap();
        Ipv4Cidr::new(addr.parse().unwrap(), len.parse().unwrap())
    }

    #[test]
    fn ipv6_addresses_come_global_then_bridges_then_other_links_then_bridge_ports_link_local() {
        use LinkKind::{Bridge, BridgePort, Other};
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let got = by_priority(vec![
            (a("fe80::99"), BridgePort),
            (a("fe80::1"), Other),
            (a("2001:db8::2"), Other),
            (a("fe80::5"), BridgePort),
            (a("fe80::ff"), Bridge),
            (a("fd00::1"), BridgePort),
            (a("::1"), Other),
            (a("fe80::99"), Other),
            (a("2001:db8::2"), Bridge),
        ]);
        assert_eq!(
            got,
            [
                a("::1"),
                a("2001:db8::2"),
                a("fd00::1"),
                a("fe80::ff"),
                a("fe80::1"),
                a("fe80::99"),
                a("fe80::5"),
            ],
            "fe80::99 is on a bridge port and on another link: counted once, as the other's"
        );
    }

    #[test]
    fn an_address_holds_its_subnet_of_its_own_family_only() {
        let a = IfAddr {
            interface: "docker0".into(),
            addr: "172.17.0.1".parse().unwrap(),
            prefix_len: 16,
        };
        assert!(a.subnet_holds("172.17.3.4".parse().unwrap()));
        assert!(!a.subnet_holds("172.18.0.1".parse().unwrap()));
        assert!(!a.subnet_holds("::ffff:172.17.3.4".parse().unwrap()));
        let b = IfAddr {
            interface: "docker0".into(),
            addr: "fd00:17::1".parse().unwrap(),
            prefix_len: 64,
        };
        assert!(b.subnet_holds("fd00:17::2".parse().unwrap()));
        assert!(!b.subnet_holds("fd00:18::2".parse().unwrap()));
        assert!(!b.subnet_holds("172.17.3.4".parse().unwrap()));
    }

    #[test]
    fn loopbacks_address_is_listed_with_its_prefix() {
        let addrs = interface_addrs().unwrap();
        assert!(
            addrs.iter().any(|a| a.interface == "lo"
                && a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)
                && a.prefix_len == 8),
            "{addrs:?}"
        );
    }

    #[test]
    fn subnet_contains_its_hosts_and_nothing_else() {
        let net = cidr("172.17.0.1/16");
        assert!(net.contains("172.17.0.2".parse().unwrap()));
        assert!(net.contains("172.17.255.254".parse().unwrap()));
        assert!(!net.contains("172.18.0.2".parse().unwrap()));
        assert!(!net.contains("10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn prefix_edge_cases() {
        assert!(cidr("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
        let host = cidr("10.0.0.1/32");
        assert!(host.contains("10.0.0.1".parse().unwrap()));
        assert!(!host.contains("10.0.0.2".parse().unwrap()));
        assert_eq!(host.to_string(), "10.0.0.1/32");
        assert_eq!(cidr("172.17.0.1/16").network(), cidr("172.17.0.0/16"));
        assert_eq!(cidr("10.1.2.3/0").network(), cidr("0.0.0.0/0"));
    }

    #[test]
    fn loopback_is_listed_with_its_prefix() {
        // Every network namespace, even a fresh one, has `lo`; it may be down
        // (no address) in a sandbox, so only check what is there.
        assert!(interface_exists("lo"));
        assert!(!interface_exists("berth-no-such-if0"));
        for a in interface_subnets("lo").unwrap() {
            assert_eq!(a.prefix_len, 8);
        }
    }
}
