//! berth's kernel programs.
//!
//! - `berth_ingress` (TC on each uplink) / `berth_xdp` (XDP on each uplink):
//!   a packet to a published (protocol, host address, host port) is tracked,
//!   DNAT'd to its container and redirected towards it.
//! - `berth_deliver` (TC on each uplink, with `berth_xdp` only): redirects
//!   what `berth_xdp` translated.
//! - `berth_reply` (TC on the bridge): a container's reply to a tracked flow
//!   leaves with the host address and port the flow arrived on.
//! - `berth_bind4` (cgroup bind4): host processes cannot bind a published
//!   host port (EADDRINUSE).
//! Everything else passes byte-identical.
#![no_std]
#![no_main]

mod bind;
mod csum;
mod fib;
mod maps;
mod nat;
mod parse;
mod tc;
mod xdp;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use berth_maps::{Counter, XdpHandoff, XDP_HANDOFF_MAGIC, XDP_HANDOFF_MAGIC_NEIGH};

use crate::{
    fib::fib_lookup_v4,
    maps::count,
    nat::{
        ct_lookup_reply, ct_track_ingress, ingress_rewrite, lb4_lookup_service, reply_rewrite,
        Rewriter,
    },
    parse::{parse_flow, Flow, Parsed},
    tc::{tc_pull_headers, tc_translate_and_redirect},
    xdp::{xdp_handoff, XdpRewriter},
};

/// Outcome of the hook-independent part of ingress.
enum Ingress {
    Pass,
    Drop,
    Dnat(Flow, berth_maps::Backend),
}

#[inline(always)]
fn ingress_decide(data: usize, data_end: usize) -> Ingress {
    let flow = match parse_flow(data, data_end) {
        Parsed::Other => return Ingress::Pass,
        Parsed::Fragment => {
            count(Counter::Fragment);
            return Ingress::Pass;
        }
        Parsed::Flow(f) => f,
    };
    let Some(backend) = lb4_lookup_service(&flow) else {
        count(Counter::IngressPass);
        return Ingress::Pass;
    };
    // Forwarding would expire it; never hand a packet for a container to a
    // host socket instead.
    if flow.ttl <= 1 {
        count(Counter::TtlExceeded);
        return Ingress::Drop;
    }
    if ct_track_ingress(&flow, &backend).is_err() {
        return Ingress::Drop;
    }
    count(Counter::IngressDnat);
    Ingress::Dnat(flow, backend)
}

#[classifier]
pub fn berth_ingress(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    match ingress_decide(ctx.data(), ctx.data_end()) {
        Ingress::Pass => TC_ACT_OK,
        Ingress::Drop => TC_ACT_SHOT,
        Ingress::Dnat(flow, backend) => {
            let rw = ingress_rewrite(&flow, &backend);
            tc_translate_and_redirect(&ctx, &flow, &rw, flow.src_addr_be, backend.addr_be)
        }
    }
}

#[xdp]
pub fn berth_xdp(ctx: XdpContext) -> u32 {
    match ingress_decide(ctx.data(), ctx.data_end()) {
        Ingress::Pass => xdp_action::XDP_PASS,
        Ingress::Drop => xdp_action::XDP_DROP,
        Ingress::Dnat(flow, backend) => {
            let rw = ingress_rewrite(&flow, &backend);
            let mut rewriter = XdpRewriter {
                data: ctx.data(),
                data_end: ctx.data_end(),
            };
            if rewriter.rewrite(&flow, &rw).is_err() {
                return xdp_action::XDP_DROP;
            }
            let in_ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
            let next = fib_lookup_v4(
                &ctx,
                &flow,
                flow.src_addr_be,
                backend.addr_be,
                in_ifindex,
                flow.tot_len,
            );
            xdp_handoff(&ctx, next)
        }
    }
}

#[classifier]
pub fn berth_deliver(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<XdpHandoff>() > data {
        return TC_ACT_OK;
    }
    let h = unsafe { core::ptr::read_unaligned(meta as *const XdpHandoff) };
    match h.magic {
        XDP_HANDOFF_MAGIC => unsafe { bpf_redirect(h.ifindex, 0) as i32 },
        XDP_HANDOFF_MAGIC_NEIGH => unsafe {
            bpf_redirect_neigh(h.ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        _ => TC_ACT_OK,
    }
}

#[classifier]
pub fn berth_reply(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    let flow = match parse_flow(ctx.data(), ctx.data_end()) {
        Parsed::Flow(f) => f,
        _ => return TC_ACT_OK,
    };
    let Some(entry) = ct_lookup_reply(&flow) else {
        return TC_ACT_OK;
    };
    if flow.ttl <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    count(Counter::ReplySnat);
    let rw = reply_rewrite(&flow, &entry);
    tc_translate_and_redirect(&ctx, &flow, &rw, entry.host_addr_be, flow.dst_addr_be)
}

#[cgroup_sock_addr(bind4)]
pub fn berth_bind4(ctx: SockAddrContext) -> i32 {
    bind::bind4_check(&ctx)
}

/// Floors for `cargo xtask bench`: the cost of running any program at all.
#[classifier]
pub fn berth_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[xdp]
pub fn berth_empty_xdp(_ctx: XdpContext) -> u32 {
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
