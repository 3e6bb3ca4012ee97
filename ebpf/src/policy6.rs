//! Security groups over IPv6 at a container's veth (issue 15).
//!
//! The IPv4 programs do not judge IPv6. Until an IPv6 program does, IPv6
//! from or to a container whose task has policy would pass unchecked, a
//! bypass of every rule: so `berth_from_ctr` / `berth_to_ctr` drop it
//! (`policy6_unjudged`), except neighbour discovery, without which the
//! container's IPv6 stack cannot even resolve its router.
//!
//! Neighbour discovery is ICMPv6 right after the fixed header with a hop
//! limit of 255 (RFC 4861 makes receivers drop anything else, so nothing
//! routed qualifies). A container may send router and neighbour
//! solicitations and neighbour advertisements, and receive router
//! advertisements and both neighbour messages: a router advertisement or
//! a redirect from a container with policy is the rogue-router attack,
//! and is dropped.
//!
//! Which container a port carries is known by its learned IPv4 addresses
//! (`BERTH_PORT_ADDRS`): policy applies when one of them has it. A port
//! whose addresses were never learned may carry a task with policy, so
//! while any endpoint has policy it is treated as one (fail closed).
use berth_maps::Counter;

use crate::{
    maps::{count, BERTH_PORT_ADDRS},
    parse::{ptr_at, ETH_LEN},
    parse6::{ETH_P_IPV6_BE, IP6_HDR_LEN},
    spoof::port_has_policy,
};

const NEXTHDR_ICMPV6: u8 = 58;
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
/// Neighbour discovery's hop limit (RFC 4861 section 6.1.1, 7.1.1).
const ND_HOP_LIMIT: u8 = 255;

/// Whether the (untagged) frame is IPv6.
#[inline(always)]
pub(crate) fn is_ipv6(data: usize, data_end: usize) -> bool {
    ptr_at::<u16>(data, data_end, 12).is_some_and(|t| unsafe { *t } == ETH_P_IPV6_BE)
}

/// Whether an IPv6 frame is neighbour discovery a container may send
/// (`from`) or receive.
#[inline(always)]
fn nd_allowed(data: usize, data_end: usize, from: bool) -> bool {
    let Some(ip) = ptr_at::<[u8; IP6_HDR_LEN + 1]>(data, data_end, ETH_LEN) else {
        return false;
    };
    let ip = unsafe { &*ip };
    if ip[6] != NEXTHDR_ICMPV6 || ip[7] != ND_HOP_LIMIT {
        return false;
    }
    match ip[IP6_HDR_LEN] {
        ND_NEIGHBOUR_SOLICIT | ND_NEIGHBOUR_ADVERT => true,
        ND_ROUTER_SOLICIT => from,
        ND_ROUTER_ADVERT => !from,
        _ => false,
    }
}

/// Whether policy may apply to the container behind bridge port `ifindex`.
#[inline(always)]
fn port_may_have_policy(ifindex: u32) -> bool {
    match unsafe { BERTH_PORT_ADDRS.get(&ifindex) } {
        Some(p) => port_has_policy(p),
        None => true,
    }
}

/// An IPv6 frame a container on port `ifindex` sends (`from`) or receives
/// that no IPv6 program judged: whether it may pass. Call only where some
/// endpoint has policy (`policy::nowhere()` is false).
#[inline(always)]
pub(crate) fn unjudged6_passes(data: usize, data_end: usize, ifindex: u32, from: bool) -> bool {
    if !port_may_have_policy(ifindex) || nd_allowed(data, data_end, from) {
        return true;
    }
    count(Counter::Policy6Unjudged);
    false
}
