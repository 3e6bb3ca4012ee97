//! TC (tcx) hook: skb checksum helpers, which handle `CHECKSUM_PARTIAL`
//! packets (local senders on veth) as well as complete ones.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use berth_maps::{tail, Counter, PROTO_UDP};

use crate::{
    csum,
    fib::NextHop,
    hook::Hook,
    icmp::ICMP_MAX_HDR_LEN,
    maps::count,
    nat::Rewrite,
    parse::{ptr_at, Flow, ETH_LEN, IP_CSUM_OFF, IP_TTL_OFF},
    pmtu::FragNeeded,
    tails,
};

/// Longest headers we look at: those of an ICMP error quoting TCP.
const MAX_HDR_LEN: u32 = ICMP_MAX_HDR_LEN as u32;

/// Make the headers readable with direct packet access: pull only when the
/// linear part is shorter than both the headers and the packet.
#[inline(always)]
pub(crate) fn tc_pull_headers(ctx: &TcContext) {
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
        Self::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        Self::data_end(self)
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

    /// The IPv4 header and both ports by direct writes (the headers were
    /// pulled; the program's direct writes make the kernel unclone the head
    /// first), the L4 checksum by two skb helper calls, which know about
    /// `CHECKSUM_PARTIAL` (a local sender's seed covers the pseudo header
    /// only, so it takes the address change and not the ports') and
    /// `CHECKSUM_COMPLETE` (`skb->csum` takes the pseudo-header change,
    /// which no data change balances): the address as a pseudo-header
    /// change, both ports as one 32-bit word. An IPv4 header whose checksum
    /// follows its changes, and ports whose checksum follows them, leave a
    /// `CHECKSUM_COMPLETE` value valid. Nothing cheaper is right for every
    /// skb: a TC program cannot see `ip_summed`, and one call with a
    /// combined diff would put the ports' change into a partial seed.
    /// (Two helper calls; one per field and checksum was seven, and a
    /// store of the ports was one more.)
    #[inline(always)]
    fn rewrite(&self, flow: &Flow, rw: &Rewrite) -> Result<(), ()> {
        let (d, e) = (Self::data(self), Self::data_end(self));
        let ip = ptr_at::<[u8; 20]>(d, e, ETH_LEN).ok_or(())?.cast::<u8>();
        let (mut sport, mut dport) = (flow.src_port_be, flow.dst_port_be);
        if rw.port_off == flow.l4_off {
            sport = rw.new_port_be;
        } else {
            dport = rw.new_port_be;
        }
        if rw.port2_off != 0 {
            if rw.port2_off == flow.l4_off {
                sport = rw.new_port2_be;
            } else {
                dport = rw.new_port2_be;
            }
        }
        let old_ports = u32::from(flow.src_port_be) | (u32::from(flow.dst_port_be) << 16);
        let new_ports = u32::from(sport) | (u32::from(dport) << 16);
        // LLVM knows the L4 offset is within the parsed header and would
        // drop this check as implied by the parser's; the verifier, which
        // lost that range on the way here, needs it (as in `xdp.rs`).
        // (A copy: reading the field itself would keep the whole `Flow` in
        // memory, where the verifier loses its other bounds.)
        let l4_off = flow.l4_off;
        let l4_off = unsafe { core::ptr::read_volatile(&raw const l4_off) };
        let ports = ptr_at::<u32>(d, e, l4_off).ok_or(())?;
        let addr_off = rw.addr_off - ETH_LEN;
        unsafe {
            let ip_csum = ip.add(IP_CSUM_OFF - ETH_LEN).cast::<u16>();
            let ttl_word = ip.add(IP_TTL_OFF - ETH_LEN).cast::<u16>();
            let old_ttl = u16::from_ne_bytes([flow.ttl, flow.proto]);
            let new_ttl = u16::from_ne_bytes([flow.ttl - 1, flow.proto]);
            let mut c = csum::replace4(
                core::ptr::read_unaligned(ip_csum),
                rw.old_addr_be,
                rw.new_addr_be,
            );
            c = csum::replace2(c, old_ttl, new_ttl);
            core::ptr::write_unaligned(ip_csum, c);
            core::ptr::write_unaligned(ttl_word, new_ttl);
            core::ptr::write_unaligned(ip.add(addr_off).cast::<u32>(), rw.new_addr_be);
            if new_ports != old_ports {
                core::ptr::write_unaligned(ports, new_ports);
            }
        }
        // UDP: a zero checksum means "none" and stays zero; a computed zero
        // is sent as 0xffff.
        let mangled = if flow.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let l4_csum = flow.l4_csum_off();
        self.l4_csum_replace(
            l4_csum,
            u64::from(rw.old_addr_be),
            u64::from(rw.new_addr_be),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .map_err(|_| ())?;
        if new_ports != old_ports {
            self.l4_csum_replace(
                l4_csum,
                u64::from(old_ports),
                u64::from(new_ports),
                mangled | 4,
            )
            .map_err(|_| ())?;
        }
        Ok(())
    }

    #[inline(always)]
    fn deliver(&self, next: NextHop) -> i32 {
        tc_redirect(self, next)
    }

    #[inline(always)]
    fn send_back(&self, ans: &FragNeeded) -> i32 {
        crate::pmtu::tc_send_back(self, ans)
    }

    #[inline(always)]
    fn not_ipv4(&self) -> i32 {
        if tails::is_ipv6(Self::data(self), Self::data_end(self)) {
            return tails::ipv6_or_pass(self, tail::INGRESS6);
        }
        TC_ACT_OK
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
            // A direct write: the checksum helpers may have moved the data.
            let Some(eth) = ptr_at::<[[u8; 6]; 2]>(ctx.data(), ctx.data_end(), 0) else {
                return TC_ACT_SHOT;
            };
            unsafe {
                core::ptr::write_unaligned(eth, [dmac, smac]);
            }
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        NextHop::NoNeigh { ifindex } => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        NextHop::Unreachable | NextHop::TooBig { .. } => {
            count(Counter::NoRoute);
            TC_ACT_SHOT
        }
    }
}
