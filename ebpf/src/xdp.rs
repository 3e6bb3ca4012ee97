//! XDP hook: direct writes and RFC 1624 checksum arithmetic. Frames from a
//! NIC carry complete checksums. (Frames a local sender put on a veth with
//! checksum offload carry only a pseudo-header seed, which XDP cannot tell
//! apart; `--attach tc` handles those.)
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_meta, programs::XdpContext};
use berth_maps::{Counter, XdpHandoff, PROTO_UDP, XDP_HANDOFF_MAGIC, XDP_HANDOFF_MAGIC_NEIGH};

use crate::{
    csum,
    fib::NextHop,
    hook::Hook,
    maps::count,
    nat::Rewrite,
    parse::{ptr_at, Flow, IP_CSUM_OFF, IP_TTL_OFF},
    pmtu::FragNeeded,
};

#[inline(always)]
unsafe fn rd<T: Copy>(p: *mut T) -> T {
    unsafe { core::ptr::read_unaligned(p) }
}

#[inline(always)]
unsafe fn wr<T>(p: *mut T, v: T) {
    unsafe { core::ptr::write_unaligned(p, v) }
}

impl Hook for XdpContext {
    type Verdict = u32;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

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
        Self::data_end(self) - Self::data(self)
    }

    #[inline(always)]
    fn in_ifindex(&self) -> u32 {
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn mtu_len(&self, tot_len: u16) -> u16 {
        tot_len
    }

    /// Direct writes and RFC 1624 arithmetic.
    #[inline(always)]
    fn rewrite(&self, flow: &Flow, rw: &Rewrite) -> Result<(), ()> {
        let (d, e) = (Self::data(self), Self::data_end(self));
        let ip_csum = ptr_at::<u16>(d, e, IP_CSUM_OFF).ok_or(())?;
        let ttl_word = ptr_at::<u16>(d, e, IP_TTL_OFF).ok_or(())?;
        let addr = ptr_at::<u32>(d, e, rw.addr_off).ok_or(())?;
        // LLVM knows these offsets are within the parsed L4 header and
        // would drop their checks as implied by the parser's; the verifier,
        // which lost that range on the way here, needs them.
        let (port_off, port2_off, l4_csum_off) = unsafe {
            (
                core::ptr::read_volatile(&raw const rw.port_off),
                core::ptr::read_volatile(&raw const rw.port2_off),
                core::ptr::read_volatile(&flow.l4_csum_off()),
            )
        };
        let port = ptr_at::<u16>(d, e, port_off).ok_or(())?;
        let port2 = if port2_off != 0 {
            Some(ptr_at::<u16>(d, e, port2_off).ok_or(())?)
        } else {
            None
        };
        let l4_csum = ptr_at::<u16>(d, e, l4_csum_off).ok_or(())?;
        unsafe {
            let old_ttl = u16::from_ne_bytes([flow.ttl, flow.proto]);
            let new_ttl = u16::from_ne_bytes([flow.ttl - 1, flow.proto]);
            let mut c = csum::replace4(rd(ip_csum), rw.old_addr_be, rw.new_addr_be);
            c = csum::replace2(c, old_ttl, new_ttl);
            wr(ip_csum, c);
            wr(ttl_word, new_ttl);
            wr(addr, rw.new_addr_be);
            wr(port, rw.new_port_be);
            if let Some(p) = port2 {
                wr(p, rw.new_port2_be);
            }
            if !flow.udp_csum_zero {
                let mut c = csum::replace4(rd(l4_csum), rw.old_addr_be, rw.new_addr_be);
                c = csum::replace2(c, rw.old_port_be, rw.new_port_be);
                if port2.is_some() {
                    c = csum::replace2(c, rw.old_port2_be, rw.new_port2_be);
                }
                if c == 0 && flow.proto == PROTO_UDP {
                    c = 0xffff;
                }
                wr(l4_csum, c);
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn deliver(&self, next: NextHop) -> u32 {
        xdp_handoff(self, next)
    }

    #[inline(always)]
    fn send_back(&self, ans: &FragNeeded) -> u32 {
        crate::pmtu::xdp_send_back(self, ans)
    }

    /// A program array takes programs of one type (TC's here), so IPv6
    /// goes on to `berth_deliver`, which tail-calls for it.
    #[inline(always)]
    fn not_ipv4(&self) -> u32 {
        xdp_action::XDP_PASS
    }
}

/// XDP cannot redirect into a bridge, so it leaves the next hop in the
/// packet metadata and passes; `berth_deliver` (TC, same device) redirects.
#[inline(always)]
pub(crate) fn xdp_handoff(ctx: &XdpContext, next: NextHop) -> u32 {
    let (magic, ifindex) = match next {
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            let Some(eth) = ptr_at::<[u8; 12]>(ctx.data(), ctx.data_end(), 0) else {
                return xdp_action::XDP_DROP;
            };
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&dmac);
            macs[6..].copy_from_slice(&smac);
            unsafe {
                wr(eth, macs);
            }
            (XDP_HANDOFF_MAGIC, ifindex)
        }
        NextHop::NoNeigh { ifindex } => (XDP_HANDOFF_MAGIC_NEIGH, ifindex),
        NextHop::Unreachable | NextHop::TooBig { .. } => {
            count(Counter::NoRoute);
            return xdp_action::XDP_DROP;
        }
    };
    let len = size_of::<XdpHandoff>() as i32;
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
        count(Counter::NoRoute);
        return xdp_action::XDP_DROP;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + len as usize > data {
        return xdp_action::XDP_DROP;
    }
    unsafe {
        wr(meta as *mut XdpHandoff, XdpHandoff { magic, ifindex });
    }
    xdp_action::XDP_PASS
}
