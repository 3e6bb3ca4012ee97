//! Hand-offs through `BERTH_TAILS` (`berth_maps::tail`): each IPv4 program
//! that meets an IPv6 frame tail-calls the IPv6 program of its hook, so
//! the IPv4 path never parses IPv6. The ethertype test runs only where a
//! frame already is not IPv4, or (container veths, the bridge) costs one
//! load beside the IPv4 parse. A tail call that falls through (an empty
//! slot: this build or an older daemon has no program there) is counted
//! (`ipv6_no_program`) and then decided by the caller:
//! - an uplink or the bridge passes the frame untouched, as berth always
//!   did with IPv6 (nothing is translated, so nothing is owed a check);
//! - a container's veth drops it where policy applies to the port's
//!   container, except neighbour discovery, so IPv6 never slips past a
//!   security group that IPv4 is held to.
use aya_ebpf::programs::TcContext;
use berth_maps::Counter;

use crate::{
    maps::{count, BERTH_PORT_ADDRS, BERTH_TAILS},
    parse::{ptr_at, ETH_LEN},
    parse6::ETH_P_IPV6_BE,
    policy::nowhere,
    spoof::port_has_policy,
};

const ETH_TYPE_OFF: usize = 12;
const IP6_NEXT_OFF: usize = ETH_LEN + 6;
const ICMP6_TYPE_OFF: usize = ETH_LEN + 40;
const NEXTHDR_ICMP6: u8 = 58;
/// Router solicitation .. redirect (RFC 4861).
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;

/// Whether an untagged frame carries IPv6.
#[inline(always)]
pub(crate) fn is_ipv6(data: usize, data_end: usize) -> bool {
    ptr_at::<u16>(data, data_end, ETH_TYPE_OFF)
        .is_some_and(|t| unsafe { core::ptr::read_unaligned(t) } == ETH_P_IPV6_BE)
}

/// Tail-calls `slot`; returns only if the call fell through (counted).
#[inline(always)]
pub(crate) fn tail_call(ctx: &TcContext, slot: u32) {
    unsafe {
        BERTH_TAILS.tail_call(ctx, slot);
    }
    count(Counter::Ipv6NoProgram);
}

/// An IPv6 frame at an uplink or the bridge: its program, else untouched.
#[inline(always)]
pub(crate) fn ipv6_or_pass(ctx: &TcContext, slot: u32) -> i32 {
    tail_call(ctx, slot);
    aya_ebpf::bindings::TC_ACT_OK
}

/// An IPv6 frame on container port `port` (either direction): its program,
/// else dropped where policy applies to the port's container.
#[inline(always)]
pub(crate) fn ipv6_on_port(ctx: &TcContext, slot: u32, port: u32) -> i32 {
    tail_call(ctx, slot);
    if port_may_pass_ipv6(ctx.data(), ctx.data_end(), port) {
        aya_ebpf::bindings::TC_ACT_OK
    } else {
        aya_ebpf::bindings::TC_ACT_SHOT
    }
}

/// Without its IPv6 program, whether an IPv6 frame may cross port `port`:
/// when policy applies to no one, to none of the port's (IPv4) endpoints,
/// or the frame is neighbour discovery (without which a container's IPv6
/// would not even fail cleanly). A port whose addresses were not learned
/// owns none, as for the IPv4 source check.
#[inline(always)]
fn port_may_pass_ipv6(data: usize, data_end: usize, port: u32) -> bool {
    if nowhere() || is_nd(data, data_end) {
        return true;
    }
    match unsafe { BERTH_PORT_ADDRS.get(&port) } {
        Some(p) => !port_has_policy(p),
        None => true,
    }
}

/// Neighbour discovery: `ICMPv6` types 133-137 right after the fixed header.
/// ND carries no extension headers in practice (and RFC 6980 forbids
/// fragmented ND); one that does is not recognised and so dropped with the
/// rest: the error is on the closed side.
#[inline(always)]
fn is_nd(data: usize, data_end: usize) -> bool {
    let (Some(next), Some(ty)) = (
        ptr_at::<u8>(data, data_end, IP6_NEXT_OFF),
        ptr_at::<u8>(data, data_end, ICMP6_TYPE_OFF),
    ) else {
        return false;
    };
    let (next, ty) = unsafe { (*next, *ty) };
    next == NEXTHDR_ICMP6 && (ND_FIRST..=ND_LAST).contains(&ty)
}
