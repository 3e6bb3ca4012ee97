//! Hand-offs through `BERTH_TAILS` (`berth_maps::tail`): each IPv4 program
//! that meets an IPv6 frame tail-calls the IPv6 program of its hook, so
//! the IPv4 path never parses IPv6. The ethertype test runs only where a
//! frame already is not IPv4, or (container veths, the bridge) costs one
//! load beside the IPv4 parse. A tail call that falls through (an empty
//! slot: this build or an older daemon has no program there) is counted
//! (`ipv6_no_program`) and then decided by the caller:
//! - an uplink or the bridge passes the frame untouched, as berth always
//!   did with IPv6 (nothing is translated, so nothing is owed a check);
//! - a container's veth drops it where policy applies (or may apply) to
//!   the port's container, except neighbour discovery, so IPv6 never slips
//!   past a security group that IPv4 is held to (`policy6.rs`); what a
//!   container's neighbour discovery claims is judged all the same, on
//!   every port (`l2::nd_spoofed`), as its IPv6 program would have.
use aya_ebpf::programs::TcContext;
use berth_maps::Counter;

use crate::{
    maps::{count, BERTH_TAILS},
    parse::ptr_at,
    parse6::ETH_P_IPV6_BE,
    policy::nowhere,
    policy6::unjudged6_passes,
};

const ETH_TYPE_OFF: usize = 12;

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
    let from = slot == berth_maps::tail::FROM_CTR6;
    if from && crate::l2::nd_spoofed(ctx.data(), ctx.data_end(), port) {
        return aya_ebpf::bindings::TC_ACT_SHOT;
    }
    if port_may_pass_ipv6(ctx.data(), ctx.data_end(), port, from) {
        aya_ebpf::bindings::TC_ACT_OK
    } else {
        aya_ebpf::bindings::TC_ACT_SHOT
    }
}

/// Without its IPv6 program, whether an IPv6 frame may cross port `port`:
/// when policy applies to no one, or `policy6::unjudged6_passes` says so
/// (the port's container has no policy, or the frame is neighbour
/// discovery; a port whose addresses were not learned may carry policy).
#[inline(always)]
fn port_may_pass_ipv6(data: usize, data_end: usize, port: u32, from: bool) -> bool {
    nowhere() || unjudged6_passes(data, data_end, port, from)
}
