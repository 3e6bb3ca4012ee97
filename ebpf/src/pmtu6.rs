//! Path-MTU discovery through a published IPv6 port: `pmtu.rs`'s rules
//! over IPv6, where every packet too long for the container's route gets
//! an answer (IPv6 routers never fragment): `ICMPv6` "packet too big" (type
//! 2, RFC 4443) with the route's MTU, from the address the client sent
//! to, quoting as much of the packet as fits in the minimum MTU (1 232
//! bytes: every packet here is longer, as no IPv6 route's MTU is below
//! 1 280), sent back out of the uplink it came in by. TC only: XDP leaves
//! IPv6 to `berth_ingress6`.
//!
//! Never answered (`frag_needed_suppressed`): a frame not sent to this
//! host's MAC, a source that is unspecified, loopback, multicast or one of
//! the host's own addresses, a multicast destination, and anything over
//! the per-CPU token bucket it shares with IPv4. A flow only the dropped
//! packet opened is forgotten, as over IPv4.
//!
//! A program of its own (`berth_pmtu6`, `BERTH_TAILS` slot `PMTU6`):
//! `berth_ingress6` has no stack left for it. It re-reads the packet and
//! its mapping; the route's MTU and the flow's client port come in `cb`.
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use berth_maps::{tail, Backend6, Counter, FlowKey6};

use crate::{
    hook::Hook as _,
    maps::{count, BERTH_HOST_ADDRS6, BERTH_NAT6_NEW},
    parse::{ptr_at, ETH_LEN},
    parse6::{parse_packet6, Flow6, Parsed6},
    pmtu::{fold, sum_words, token},
    service::service_find6,
    tc::tc_pull_headers,
};

/// The quote: what fits in 1 280 bytes beside an IPv6 and an `ICMPv6` header.
pub(crate) const QUOTE6_LEN: usize = 1232;
/// The IPv6 and `ICMPv6` headers the answer puts in front of its quote.
const HDRS6_LEN: usize = 40 + 8;
const ICMPV6: u8 = 58;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const HOP_LIMIT: u8 = 64;

/// Where the quote is read to be summed: too large for the stack.
#[map]
static BERTH_PMTU6_QUOTE: PerCpuArray<[u8; QUOTE6_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Whether an address may be an `ICMPv6` error's source or destination.
#[inline(always)]
fn unicast6(a: &[u8; 16]) -> bool {
    let mut low = 0u8;
    for b in &a[..15] {
        low |= *b;
    }
    a[0] != 0xff && (low != 0 || a[15] > 1)
}

/// From `berth_ingress6`: the packet is longer than the route's `mtu`
/// (its flow's client port towards the container: `sport_be`). Dropped
/// when the slot is empty (counted `ipv6_no_program`).
#[inline(always)]
pub(crate) fn to_pmtu6(ctx: &TcContext, mtu: u16, sport_be: u16) -> i32 {
    unsafe {
        (*ctx.skb.skb).cb[0] = u32::from(mtu);
        (*ctx.skb.skb).cb[1] = u32::from(sport_be);
    }
    crate::tails::tail_call(ctx, tail::PMTU6);
    TC_ACT_SHOT
}

#[classifier]
pub(crate) fn berth_pmtu6(ctx: TcContext) -> i32 {
    let (mtu, sport_be) = unsafe {
        let cb = &(*ctx.skb.skb).cb;
        (cb[0] as u16, cb[1] as u16)
    };
    tc_pull_headers(&ctx);
    let Parsed6::Flow(f) = parse_packet6(ctx.data(), ctx.data_end(), ctx.len() as usize) else {
        return TC_ACT_SHOT;
    };
    let Some((b, _)) = service_find6(f.proto, &f.dst_addr, f.dst_port_be) else {
        return TC_ACT_SHOT;
    };
    too_big6(&ctx, &f, &b, sport_be, mtu)
}

/// A packet of `f` (tracked, client port `sport_be` towards `b`) is
/// longer than the route's `mtu`: answer it, or drop it.
#[inline(always)]
fn too_big6(ctx: &TcContext, f: &Flow6, b: &Backend6, sport_be: u16, mtu: u16) -> i32 {
    forget_unsent6(f, b, sport_be);
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx.data(), ctx.data_end(), 0) else {
        return TC_ACT_SHOT;
    };
    let eth = unsafe { *eth };
    if eth[0] & 1 != 0
        || eth[6] & 1 != 0
        || !unicast6(&f.src_addr)
        || !unicast6(&f.dst_addr)
        || unsafe { BERTH_HOST_ADDRS6.get(&f.src_addr) }.is_some()
        || !token()
    {
        count(Counter::FragNeededSuppressed);
        return TC_ACT_SHOT;
    }
    let Some(q) = BERTH_PMTU6_QUOTE.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    let q = unsafe { &mut *q };
    // Every packet here is longer than the quote (aya's `load_bytes`
    // would clamp the length to the packet's, which the verifier refuses
    // as possibly zero).
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            ETH_LEN as u32,
            q.as_mut_ptr().cast(),
            QUOTE6_LEN as u32,
        )
    };
    if loaded != 0 {
        return TC_ACT_SHOT;
    }
    let quote_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            q.as_mut_ptr().cast(),
            QUOTE6_LEN as u32,
            0,
        )
    };
    if quote_sum < 0 {
        return TC_ACT_SHOT;
    }
    let mut hdr = [0u8; ETH_LEN + HDRS6_LEN];
    hdr[..6].copy_from_slice(&eth[6..12]);
    hdr[6..12].copy_from_slice(&eth[..6]);
    hdr[12..14].copy_from_slice(&eth[12..14]);
    let len = ((8 + QUOTE6_LEN) as u16).to_be_bytes();
    let ip = &mut hdr[ETH_LEN..ETH_LEN + 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&len);
    ip[6] = ICMPV6;
    ip[7] = HOP_LIMIT;
    ip[8..24].copy_from_slice(&f.dst_addr);
    ip[24..40].copy_from_slice(&f.src_addr);
    // Pseudo header: both addresses, the upper-layer length, ICMPv6.
    let mut sum = u64::from(quote_sum as u32);
    sum += u64::from(sum_words(&ip[8..40], 0));
    sum += u64::from(u16::from_ne_bytes(len));
    sum += u64::from(u16::from_ne_bytes([0, ICMPV6]));
    let icmp = &mut hdr[ETH_LEN + 40..];
    icmp[0] = ICMPV6_PACKET_TOO_BIG;
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    sum += u64::from(sum_words(icmp, 0));
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let c = !fold(sum as u32);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    send_back6(ctx, &hdr)
}

/// Cut the skb to the quote, put `hdr` in front, redirect it to the
/// uplink's egress (as `pmtu::tc_send_back`).
#[inline(always)]
fn send_back6(ctx: &TcContext, hdr: &[u8; ETH_LEN + HDRS6_LEN]) -> i32 {
    let ifindex = ctx.in_ifindex();
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + QUOTE6_LEN) as u32, 0) } != 0
        || ctx
            .adjust_room(HDRS6_LEN as i32, BPF_ADJ_ROOM_MAC, 0)
            .is_err()
    {
        count(Counter::FragNeededSuppressed);
        return TC_ACT_SHOT;
    }
    let mut l3 = [0u8; HDRS6_LEN];
    l3.copy_from_slice(&hdr[ETH_LEN..]);
    let mut l2 = [0u8; ETH_LEN];
    l2.copy_from_slice(&hdr[..ETH_LEN]);
    if ctx
        .store(ETH_LEN, &l3, u64::from(BPF_F_RECOMPUTE_CSUM))
        .is_err()
        || ctx.store(0, &l2, 0).is_err()
    {
        return TC_ACT_SHOT;
    }
    count(Counter::FragNeededSent);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// The flow entry this packet opened, if it is still only this packet's.
#[inline(always)]
fn forget_unsent6(f: &Flow6, b: &Backend6, sport_be: u16) {
    crate::frag6::frag6_first_dropped(f);
    let key = FlowKey6 {
        src_addr: b.addr,
        dst_addr: f.src_addr,
        src_port_be: b.port_be,
        dst_port_be: sport_be,
        proto: f.proto,
        _pad: [0; 3],
    };
    let Some(e) = BERTH_NAT6_NEW.get_ptr_mut(&key) else {
        return;
    };
    if unsafe { (*e).packets } != [1, 0] {
        return;
    }
    let _ = BERTH_NAT6_NEW.remove(&key);
    if sport_be != f.src_port_be {
        crate::remap6::forget(&crate::remap6::wire_key(f));
    }
}
