//! TC (tcx) hook: skb checksum helpers, which handle CHECKSUM_PARTIAL
//! packets (local senders on veth) as well as complete ones.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use berth_maps::{Counter, PROTO_UDP};

use crate::{
    fib::NextHop,
    hook::Hook,
    icmp::ICMP_MAX_HDR_LEN,
    maps::count,
    nat::Rewrite,
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

impl Hook for TcContext {
    type Verdict = i32;
    const PASS: i32 = TC_ACT_OK;
    const DROP: i32 = TC_ACT_SHOT;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn in_ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }

    /// A GSO packet (a local sender's 64 KiB TCP burst on veth) is larger
    /// than any MTU until it is segmented on the way out.
    #[inline(always)]
    fn mtu_len(&self, tot_len: u16) -> u16 {
        if unsafe { (*self.skb.skb).gso_size } != 0 {
            0
        } else {
            tot_len
        }
    }

    /// With the skb checksum helpers, which handle CHECKSUM_PARTIAL.
    #[inline(always)]
    fn rewrite(&self, flow: &Flow, rw: &Rewrite) -> Result<(), ()> {
        let ctx = self;
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

    #[inline(always)]
    fn deliver(&self, next: NextHop) -> i32 {
        tc_redirect(self, next)
    }
}

/// Send a translated packet on its way without touching netfilter.
#[inline(always)]
fn tc_redirect(ctx: &TcContext, next: NextHop) -> i32 {
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
                return TC_ACT_SHOT;
            }
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        NextHop::NoNeigh { ifindex } => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        NextHop::Unreachable => {
            count(Counter::NoRoute);
            TC_ACT_SHOT
        }
    }
}
