//! TC (tcx) hook: skb checksum helpers, which handle CHECKSUM_PARTIAL
//! packets (local senders on veth) as well as complete ones.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use berth_maps::{Counter, PROTO_UDP};

use crate::{
    fib::{fib_lookup_v4, NextHop},
    icmp::ICMP_MAX_HDR_LEN,
    maps::count,
    nat::{Rewrite, Rewriter},
    parse::{Flow, IP_CSUM_OFF, IP_TTL_OFF},
};

/// Longest headers we look at: those of an ICMP error quoting TCP.
const MAX_HDR_LEN: u32 = ICMP_MAX_HDR_LEN as u32;

/// Make the headers readable with direct packet access: pull only when the
/// linear part is shorter than both the headers and the packet.
#[inline(always)]
pub fn tc_pull_headers(ctx: &TcContext) {
    let want = if ctx.len() < MAX_HDR_LEN {
        ctx.len()
    } else {
        MAX_HDR_LEN
    };
    if ctx.data() + (want as usize) > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
}

pub struct TcRewriter<'a>(pub &'a TcContext);

impl Rewriter for TcRewriter<'_> {
    #[inline(always)]
    fn rewrite(&mut self, flow: &Flow, rw: &Rewrite) -> Result<(), ()> {
        let ctx = self.0;
        let l4_csum = flow.l4_csum_off();
        // UDP: a zero checksum means "none" and stays zero; a computed zero
        // is sent as 0xffff.
        let mangled = if flow.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        ctx.store(rw.addr_off, &rw.new_addr_be, 0).map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM_OFF, rw.old_addr_be as u64, rw.new_addr_be as u64, 4)
            .map_err(|_| ())?;
        ctx.l4_csum_replace(
            l4_csum,
            rw.old_addr_be as u64,
            rw.new_addr_be as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| ())?;
        ctx.store(rw.port_off, &rw.new_port_be, 0).map_err(|_| ())?;
        ctx.l4_csum_replace(
            l4_csum,
            rw.old_port_be as u64,
            rw.new_port_be as u64,
            mangled | 2,
        )
        .map_err(|_| ())?;
        if rw.port2_off != 0 {
            ctx.store(rw.port2_off, &rw.new_port2_be, 0)
                .map_err(|_| ())?;
            ctx.l4_csum_replace(
                l4_csum,
                rw.old_port2_be as u64,
                rw.new_port2_be as u64,
                mangled | 2,
            )
            .map_err(|_| ())?;
        }
        let old_ttl = u16::from_ne_bytes([flow.ttl, flow.proto]);
        let new_ttl = u16::from_ne_bytes([flow.ttl - 1, flow.proto]);
        ctx.store(IP_TTL_OFF, &(flow.ttl - 1), 0).map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_ttl as u64, new_ttl as u64, 2)
            .map_err(|_| ())
    }
}

/// Send a translated packet on its way without touching netfilter.
#[inline(always)]
pub fn tc_redirect(ctx: &TcContext, next: NextHop) -> i32 {
    match next {
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&dmac);
            macs[6..].copy_from_slice(&smac);
            if ctx.store(0, &macs, 0).is_err() {
                return TC_ACT_SHOT as i32;
            }
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        NextHop::NoNeigh { ifindex } => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        NextHop::Unreachable => {
            count(Counter::NoRoute);
            TC_ACT_SHOT as i32
        }
    }
}

/// Translate and deliver; the flow's new destination is `dst`.
#[inline(always)]
pub fn tc_translate_and_redirect(
    ctx: &TcContext,
    flow: &Flow,
    rw: &Rewrite,
    src: u32,
    dst: u32,
) -> i32 {
    if TcRewriter(ctx).rewrite(flow, rw).is_err() {
        return TC_ACT_SHOT as i32;
    }
    let (in_ifindex, gso_size) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_size) };
    // A GSO packet (a local sender's 64 KiB TCP burst on veth) is larger
    // than any MTU until it is segmented on the way out.
    let mtu_len = if gso_size != 0 { 0 } else { flow.tot_len };
    let next = fib_lookup_v4(ctx, flow, src, dst, in_ifindex, mtu_len);
    tc_redirect(ctx, next)
}
