//! berth's kernel programs.
//!
//! - `berth_ingress` (TC on each uplink) / `berth_xdp` (XDP on each uplink):
//!   a packet to a published (protocol, host address, host port) is tracked,
//!   DNAT'd to its container and redirected towards it.
//! - `berth_deliver` (TC on each uplink, with `berth_xdp` only): redirects
//!   what `berth_xdp` translated.
//! - `berth_reply` (TC on the bridge): a container's reply to a tracked flow
//!   leaves with the host address and port the flow arrived on.
//! - `berth_from_ctr` / `berth_to_ctr` (TC on each container's host-side
//!   veth): source checks and security groups; `berth_from_ctr` also
//!   translates a fragmented reply (before the bridge could reassemble it).
//! - Fragments: see `parse.rs` and `frag.rs`.
//! - IPv6: each TC program above tail-calls its IPv6 program through
//!   `BERTH_TAILS` (`tails.rs`, `berth_maps::tail`): `berth_ingress6` and
//!   `berth_reply6` (NAT66, `nat6.rs`), `berth_from_ctr6` / `berth_to_ctr6`
//!   (security groups, `policy6.rs`); `berth_icmp6` (tail-called by the
//!   two NAT66 programs): `ICMPv6` errors about their flows (`icmp6.rs`).
//! - `berth_log` (tail-called by `berth_from_ctr` / `berth_to_ctr` and
//!   the IPv6 programs): the datapath log line of a packet they refused
//!   (`dplog.rs`, `dplog6.rs`).
//! - `berth_bind4`, `berth_bind6` (cgroup bind4/bind6): host processes
//!   cannot bind a published host port (EADDRINUSE), over IPv4 or IPv6.
//! - `berth_connect4`, `berth_sendmsg4`, `berth_recvmsg4`, `berth_peername4`
//!   (cgroup `sock_addr)`: host-local and hairpin access without a proxy.
//! - `berth_connect6`, `berth_sendmsg6`, `berth_recvmsg6`, `berth_peername6`:
//!   the same over IPv6 (`sock6.rs`).
//!
//! Source checks come first (`spoof`): an uplink drops loopback and local
//! sources, a bridge port drops sources its container does not own.
//! Everything else passes byte-identical.
#![no_std]
#![no_main]

mod bind;
mod csum;
mod csum6;
mod ct;
mod dplog;
mod dplog6;
mod fib;
mod flowlog;
mod frag;
mod frag6;
mod gate;
mod hook;
mod icmp;
mod icmp6;
mod ingress;
mod l2;
mod maps;
mod nat;
mod nat6;
mod nexthop;
mod parse;
mod parse6;
mod pmtu;
mod pmtu6;
mod policy;
mod policy6;
mod port_ep6;
mod remap6;
mod rules6;
mod service;
mod sock;
mod sock6;
mod spoof;
mod stats;
mod svc_cache;
mod sys;
mod tails;
mod tc;
mod tcp;
mod xdp;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use berth_maps::{
    tail, Counter, XdpHandoff, FRAG_K_SNAT, FRAG_V_ALLOW, XDP_HANDOFF_MAGIC,
    XDP_HANDOFF_MAGIC_NEIGH,
};

use crate::{
    fib::{fib_lookup_frag, fib_lookup_icmp},
    frag::{
        frag_key_of_flow, frag_key_of_frag, frag_lookup, frag_remember, frag_rewrite, FragRewrite,
    },
    hook::Hook as _,
    icmp::{
        ct_lookup_icmp_from_container, icmp_from_flow_container, icmp_rewrite, parse_icmp_error,
        Quoted,
    },
    ingress::{ingress, translate_and_deliver},
    maps::count,
    nat::{ct_lookup_reply, reply_rewrite},
    parse::{ipv4_fragment, parse_packet, Flow, Frag, Ip, Parsed, IP_SRC_OFF},
    tc::tc_pull_headers,
};

#[classifier]
pub(crate) fn berth_ingress(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    ingress(&ctx)
}

#[xdp]
pub(crate) fn berth_xdp(ctx: XdpContext) -> u32 {
    ingress(&ctx)
}

/// IPv6 at an uplink, tail-called (`BERTH_TAILS` slot `INGRESS6`) by
/// `berth_ingress` and `berth_deliver`.
#[classifier]
pub(crate) fn berth_ingress6(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    nat6::ingress6(&ctx)
}

/// IPv6 from a container at the bridge, tail-called (slot `REPLY6`) by
/// `berth_reply`: NAT66's reply SNAT.
#[classifier]
pub(crate) fn berth_reply6(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    nat6::reply6(&ctx)
}

#[classifier]
pub(crate) fn berth_deliver(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + size_of::<XdpHandoff>() > data {
        return deliver_other(&ctx);
    }
    let h = unsafe { core::ptr::read_unaligned(meta as *const XdpHandoff) };
    match h.magic {
        XDP_HANDOFF_MAGIC => unsafe { bpf_redirect(h.ifindex, 0) as i32 },
        XDP_HANDOFF_MAGIC_NEIGH => unsafe {
            bpf_redirect_neigh(h.ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        _ => deliver_other(&ctx),
    }
}

/// What `berth_xdp` did not hand off: IPv6 (which XDP leaves to TC) goes
/// to its program, anything else on to the stack.
#[inline(always)]
fn deliver_other(ctx: &TcContext) -> i32 {
    if tails::is_ipv6(ctx.data(), ctx.data_end()) {
        return tails::ipv6_or_pass(ctx, tail::INGRESS6);
    }
    TC_ACT_OK
}

#[classifier]
pub(crate) fn berth_reply(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    // Everything the bridge hands up came in by one of its ports.
    if gate::gate_refuses(ctx.data(), ctx.data_end(), gate::FROM_A_PORT) {
        return TC_ACT_SHOT;
    }
    match parse_packet(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        Parsed::Flow(f) => tc_reply_flow(&ctx, &f, true),
        Parsed::Ip(ip) => tc_reply_icmp(&ctx, &ip),
        Parsed::Fragment(f) => tc_reply_frag(&ctx, &f),
        Parsed::NotIpv4 if tails::is_ipv6(ctx.data(), ctx.data_end()) => {
            tails::ipv6_or_pass(&ctx, tail::REPLY6)
        }
        Parsed::NotIpv4 => TC_ACT_OK,
    }
}

/// A container's packet replying to a tracked flow leaves with the host
/// address and port the flow arrived on; anything else is left alone.
#[inline(always)]
fn tc_reply_flow(ctx: &TcContext, flow: &Flow, log: bool) -> i32 {
    let entry = match ct_lookup_reply(flow, ctx.data(), ctx.data_end(), log) {
        Ok(Some(e)) => e,
        Ok(None) => return TC_ACT_OK,
        // Logged already where the program may (`log`), else by `berth_log`.
        Err(()) if log => return TC_ACT_SHOT,
        Err(()) => return dplog::drop_logged(ctx, dplog::EV_NAT_FULL),
    };
    if flow.ttl <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    if flow.first_frag {
        let key = frag_key_of_flow(FRAG_K_SNAT, flow);
        frag_remember(&key, entry.host_addr_be, FRAG_V_ALLOW);
    }
    count(Counter::ReplySnat);
    stats::binding_count_out(entry.binding, flow.tot_len);
    let rw = reply_rewrite(flow, &entry);
    translate_and_deliver(ctx, flow, &rw, entry.host_addr_be, flow.dst_addr_be)
}

/// A later fragment of a container's datagram leaves from the host
/// address its first fragment got; one nothing was remembered for is the
/// container's own traffic.
#[inline(always)]
fn tc_reply_frag(ctx: &TcContext, f: &Frag) -> i32 {
    let Some(e) = frag_lookup(&frag_key_of_frag(FRAG_K_SNAT, f)) else {
        count(Counter::Fragment);
        return TC_ACT_OK;
    };
    if f.ttl <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    let rw = FragRewrite {
        addr_off: IP_SRC_OFF,
        old_addr_be: f.src_addr_be,
        new_addr_be: e.addr_be,
    };
    if frag_rewrite(ctx.data(), ctx.data_end(), f, &rw).is_err() {
        return TC_ACT_SHOT;
    }
    count(Counter::FragXlate);
    ctx.deliver(fib_lookup_frag(
        ctx,
        f,
        e.addr_be,
        f.dst_addr_be,
        ctx.in_ifindex(),
    ))
}

#[cgroup_sock_addr(bind4)]
pub(crate) fn berth_bind4(ctx: SockAddrContext) -> i32 {
    bind::bind4_check(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub(crate) fn berth_bind6(ctx: SockAddrContext) -> i32 {
    bind::bind6_check(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub(crate) fn berth_connect4(ctx: SockAddrContext) -> i32 {
    sock::sock4_forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn berth_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::sock4_forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn berth_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::sock4_reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn berth_peername4(ctx: SockAddrContext) -> i32 {
    sock::sock4_reverse(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn berth_connect6(ctx: SockAddrContext) -> i32 {
    sock6::sock6_forward(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn berth_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock6::sock6_forward(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub(crate) fn berth_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock6::sock6_reverse(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub(crate) fn berth_peername6(ctx: SockAddrContext) -> i32 {
    sock6::sock6_reverse(&ctx)
}

/// tc ingress of each container's host-side veth: security groups on what
/// the container sends. A fragmented reply to a published-port flow is
/// translated and sent to the uplink from here: past this hook, on a host
/// with `br_netfilter` (any Docker host), the bridge reassembles fragments
/// into a datagram longer than the uplink's MTU, and BPF cannot fragment.
#[classifier]
pub(crate) fn berth_from_ctr(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    let (port, vlan) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).vlan_present) };
    gate::gate_learn(ctx.data(), ctx.data_end(), port);
    if l2::frame_refused(ctx.data(), ctx.data_end(), vlan, port, true)
        || l2::arp_spoofed(ctx.data(), ctx.data_end(), port)
    {
        return TC_ACT_SHOT;
    }
    if tails::is_ipv6(ctx.data(), ctx.data_end()) {
        return tails::ipv6_on_port(&ctx, tail::FROM_CTR6, port);
    }
    // Both checks refuse only where policy applies to someone.
    if !policy::nowhere() {
        if !spoof::container_source_ok(ctx.data(), ctx.data_end(), port) {
            return dplog::drop_logged(&ctx, dplog::EV_CTR_SPOOF);
        }
        if let Err(ev) =
            policy::from_container(ctx.data(), ctx.data_end(), ctx.len() as usize, port)
        {
            return dplog::drop_logged(&ctx, ev);
        }
    }
    if !ipv4_fragment(ctx.data(), ctx.data_end()) {
        return TC_ACT_OK;
    }
    match parse_packet(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        // No datapath log in this program (its stack is full): a full
        // table is logged by `berth_log`.
        Parsed::Flow(f) if f.first_frag => tc_reply_flow(&ctx, &f, false),
        Parsed::Fragment(f) => tc_reply_frag(&ctx, &f),
        _ => TC_ACT_OK,
    }
}

/// tc egress of each container's host-side veth: security groups on what
/// the container receives.
#[classifier]
pub(crate) fn berth_to_ctr(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    if gate::gate_refuses(ctx.data(), ctx.data_end(), unsafe {
        (*ctx.skb.skb).ingress_ifindex
    }) {
        return TC_ACT_SHOT;
    }
    let (port, vlan) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).vlan_present) };
    if l2::frame_refused(ctx.data(), ctx.data_end(), vlan, port, false) {
        return TC_ACT_SHOT;
    }
    if tails::is_ipv6(ctx.data(), ctx.data_end()) {
        return tails::ipv6_on_port(&ctx, tail::TO_CTR6, port);
    }
    if policy::nowhere() {
        return TC_ACT_OK;
    }
    match policy::to_container(ctx.data(), ctx.data_end(), ctx.len() as usize, port) {
        Ok(()) => TC_ACT_OK,
        Err(ev) => dplog::drop_logged(&ctx, ev),
    }
}

/// The datapath log of a packet `berth_from_ctr` or `berth_to_ctr`
/// refused (tail-called, `BERTH_TAILS` slot `LOG`; see `dplog`): writes
/// the line for the event in `cb[0]` and drops the packet, as its caller
/// would have.
#[classifier]
pub(crate) fn berth_log(ctx: TcContext) -> i32 {
    let (ev, port) = unsafe { ((*ctx.skb.skb).cb[0], (*ctx.skb.skb).ifindex) };
    if tails::is_ipv6(ctx.data(), ctx.data_end()) {
        dplog6::log_refused6(&ctx, ev, port);
    } else {
        dplog::log_refused(&ctx, ev, port);
    }
    TC_ACT_SHOT
}

/// IPv6 a container sends (tail-called by `berth_from_ctr`): its source and
/// its task's egress rules (`policy6.rs`).
#[classifier]
pub(crate) fn berth_from_ctr6(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    let port = unsafe { (*ctx.skb.skb).ifindex };
    let judged = policy6::judge6(ctx.data(), ctx.data_end(), ctx.len() as usize, port, true);
    if judged != policy6::PASS {
        return dplog::drop_logged(&ctx, judged);
    }
    frag6::from_ctr6(&ctx)
}

/// IPv6 a container receives (tail-called by `berth_to_ctr`): its task's
/// ingress rules.
#[classifier]
pub(crate) fn berth_to_ctr6(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    let port = unsafe { (*ctx.skb.skb).ifindex };
    let judged = policy6::judge6(ctx.data(), ctx.data_end(), ctx.len() as usize, port, false);
    if judged != policy6::PASS {
        return dplog::drop_logged(&ctx, judged);
    }
    TC_ACT_OK
}

/// A container's ICMP error about a translated flow leaves as if the host
/// port had sent it.
#[inline(always)]
fn tc_reply_icmp(ctx: &TcContext, ip: &Ip) -> i32 {
    let Some(e) = parse_icmp_error(ctx.data(), ctx.data_end(), ctx.len() as usize, ip) else {
        return TC_ACT_OK;
    };
    let Some(entry) = ct_lookup_icmp_from_container(&e) else {
        return TC_ACT_OK;
    };
    if !icmp_from_flow_container(&e) {
        count(Counter::IcmpForged);
        return TC_ACT_SHOT;
    }
    if e.outer_ttl <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    if icmp_rewrite(
        ctx.data(),
        ctx.data_end(),
        &e,
        Quoted::Destination,
        entry.host_addr_be,
        entry.host_port_be,
        entry.client_port_be,
    )
    .is_err()
    {
        return TC_ACT_SHOT;
    }
    count(Counter::IcmpXlate);
    let next = fib_lookup_icmp(
        ctx,
        &e,
        entry.host_addr_be,
        e.outer_dst_be,
        ctx.in_ifindex(),
    );
    ctx.deliver(next)
}

/// An `ICMPv6` error about a NAT66 flow, tail-called (slot `ICMP6`) by
/// `berth_ingress6` and `berth_reply6` (`icmp6.rs`).
#[classifier]
pub(crate) fn berth_icmp6(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    icmp6::icmp6(&ctx)
}

/// Floors for `cargo xtask bench`: the cost of running any program at all.
#[classifier]
pub(crate) fn berth_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[xdp]
pub(crate) fn berth_empty_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
