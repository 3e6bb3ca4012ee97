//! Interfaces and IPv4 addresses of the network namespace we run in.
use std::{
    ffi::{CStr, CString},
    io,
    net::Ipv4Addr,
};

use crate::domain::cidr::Ipv4Cidr;

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

/// Every IPv4 address in this network namespace (getifaddrs).
pub fn ipv4_addrs() -> io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below exactly once.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: for AF_INET entries both pointers, when non-null, point to
        // `sockaddr_in`s; ifa_name is a NUL-terminated string.
        unsafe {
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let addr = sockaddr_in_ip(ifa.ifa_addr);
            let prefix_len = if ifa.ifa_netmask.is_null() {
                32
            } else {
                u32::from(sockaddr_in_ip(ifa.ifa_netmask)).count_ones() as u8
            };
            out.push(InterfaceAddr {
                interface: CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                cidr: Ipv4Cidr::new(addr, prefix_len),
            });
        }
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
pub fn interface_subnets6(name: &str) -> io::Result<Vec<crate::domain::cidr::Ipv6Cidr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below exactly once.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of getifaddrs' list, valid until freeifaddrs; for
        // AF_INET6 entries the address and netmask, when non-null, are
        // `sockaddr_in6`s and ifa_name a NUL-terminated string.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        unsafe {
            if ifa.ifa_addr.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET6
                || CStr::from_ptr(ifa.ifa_name).to_bytes() != name.as_bytes()
            {
                continue;
            }
            let addr = std::net::Ipv6Addr::from(
                (*ifa.ifa_addr.cast::<libc::sockaddr_in6>())
                    .sin6_addr
                    .s6_addr,
            );
            if addr.is_unicast_link_local() {
                continue;
            }
            let prefix_len = if ifa.ifa_netmask.is_null() {
                128
            } else {
                u128::from_be_bytes(
                    (*ifa.ifa_netmask.cast::<libc::sockaddr_in6>())
                        .sin6_addr
                        .s6_addr,
                )
                .count_ones() as u8
            };
            out.push(crate::domain::cidr::Ipv6Cidr::new(addr, prefix_len));
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe {
        libc::freeifaddrs(head);
    }
    Ok(out)
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
/// ones included, as [`host_ipv4_addrs`] includes 127.0.0.1), sorted.
pub fn host_ipv6_addrs() -> io::Result<Vec<std::net::Ipv6Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        unsafe {
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET6 {
                continue;
            }
            let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
            out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr));
        }
    }
    unsafe {
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        let (addr, len) = s.split_once('/').unwrap();
        Ipv4Cidr::new(addr.parse().unwrap(), len.parse().unwrap())
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
