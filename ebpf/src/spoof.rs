//! Source checks: addresses that cannot be where a packet claims to come
//! from are dropped before they are translated or delivered.
//!
//! - On an uplink, every IPv4 packet, whatever it is addressed to, with a
//!   loopback source or destination (127.0.0.0/8; the CVE-2020-8558 class)
//!   or a source in a bridge subnet (a container's): such a source passes
//!   loose `rp_filter` and would be forwarded to the containers and judged as
//!   one of them. Both checks cost no helper call.
//! - On an uplink, a source that is one of the host's own addresses, in
//!   what berth would translate: a new flow to a published port and an ICMP
//!   error about one. The kernel drops the rest as martians, and an
//!   established flow's key holds the source its first packet was checked
//!   with; so the hash lookup stays off the per-packet path.
//! - On a container's veth: a source that is not one of that port's own
//!   addresses, when policy applies to the port's container, the claimed
//!   source or the receiver (AWS's source/destination check). A port whose
//!   addresses could not be learned owns none.
use berth_maps::{Counter, PortAddrs, PORT_ADDRS_MAX};

use crate::{
    dplog::{dp_log, EV_HOST_SOURCE, EV_MARTIAN},
    maps::{count, in_local_nets, BERTH_HOST_ADDRS, BERTH_PORT_ADDRS},
    parse::{ptr_at, ETH_LEN, ETH_P_IP_BE},
    policy::endpoint_with_policy,
};

/// Source and destination of an untagged IPv4 frame (version 4 and a
/// whole 20-byte header present; the rest is the parser's business).
#[inline(always)]
fn ipv4_addrs(data: usize, data_end: usize) -> Option<(u32, u32)> {
    let eth = ptr_at::<[u8; ETH_LEN]>(data, data_end, 0)?;
    let ethertype = unsafe { u16::from_ne_bytes([(*eth)[12], (*eth)[13]]) };
    if ethertype != ETH_P_IP_BE {
        return None;
    }
    let ip = unsafe { &*ptr_at::<[u8; 20]>(data, data_end, ETH_LEN)? };
    if ip[0] >> 4 != 4 {
        return None;
    }
    Some((
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
    ))
}

#[inline(always)]
fn is_loopback(addr_be: u32) -> bool {
    addr_be.to_ne_bytes()[0] == 127
}

/// Whether a frame arriving on an uplink must be dropped (counted).
#[inline(always)]
pub(crate) fn uplink_martian(data: usize, data_end: usize) -> bool {
    let Some((src, dst)) = ipv4_addrs(data, data_end) else {
        return false;
    };
    let dropped = if is_loopback(src) || is_loopback(dst) {
        Counter::UplinkLoopback
    } else if in_local_nets(src) {
        Counter::UplinkSpoofedSource
    } else {
        return false;
    };
    count(dropped);
    dp_log(EV_MARTIAN, src, dst, 0, 0);
    true
}

/// Whether a client address on an uplink is one of the host's own, which
/// no packet from outside can have (counted).
#[inline(always)]
pub(crate) fn uplink_host_source(src_be: u32) -> bool {
    if unsafe { BERTH_HOST_ADDRS.get(&src_be) }.is_some() {
        count(Counter::UplinkSpoofedSource);
        dp_log(EV_HOST_SOURCE, src_be, 0, 0, 0);
        return true;
    }
    false
}

#[inline(always)]
pub(crate) fn port_owns(p: &PortAddrs, addr_be: u32) -> bool {
    let mut i = 0;
    while i < PORT_ADDRS_MAX {
        if (i as u32) < p.len && p.addrs_be[i] == addr_be {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
pub(crate) fn port_has_policy(p: &PortAddrs) -> bool {
    let mut i = 0;
    while i < PORT_ADDRS_MAX {
        if (i as u32) < p.len && endpoint_with_policy(p.addrs_be[i]).is_some() {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether a frame a container sent on the port `ifindex` may go on: its
/// source is the port's own, or policy applies to nobody involved.
#[inline(always)]
pub(crate) fn container_source_ok(data: usize, data_end: usize, ifindex: u32) -> bool {
    let Some((src, dst)) = ipv4_addrs(data, data_end) else {
        return true;
    };
    let port = unsafe { BERTH_PORT_ADDRS.get(&ifindex) };
    if let Some(p) = port {
        if port_owns(p, src) {
            return true;
        }
    }
    let policy = endpoint_with_policy(src).is_some()
        || endpoint_with_policy(dst).is_some()
        || port.is_some_and(port_has_policy);
    if policy {
        count(Counter::ContainerSpoofedSource);
        return false;
    }
    true
}
