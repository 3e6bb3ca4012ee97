//! The client-port clash remap of NAT66, as IPv4's (`nat.rs`): a flow is
//! keyed by its reply tuple as the container sends it, so two clients'
//! flows that would reach one container port from the same client address
//! and port (one client port to two host ports or addresses of one
//! container port) would share a key. The newer one gets another client
//! source port towards the container ([`berth_maps::nat_remap_port6`]),
//! remembered under its client-side tuple in `BERTH_NAT6_FWD`; its packets
//! are rewritten to that port on the way in and back to the client's own
//! on the way out. Only clashing flows pay the second lookup (a client
//! packet whose own reply tuple names no flow of its), and the daemon
//! forgets a remap whose flow is gone.
use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, programs::TcContext};
use berth_maps::{
    nat_remap_port6, Backend6, Counter, FlowKey6, NatFwd6, NAT_REMAP_TRIES, PROTO_UDP,
};

use crate::{
    maps::{count, BERTH_NAT6, BERTH_NAT6_FWD, BERTH_NAT6_NEW},
    parse::ptr_at,
    parse6::Flow6,
    sys::BPF_ANY,
};

/// Above any L4 offset `parse6` accepts (as `nat6.rs`).
const L4_OFF_MASK: usize = 0x7fff;

/// A client packet's tuple as on the wire: client -> host address:port.
#[inline(always)]
pub(crate) fn wire_key(f: &Flow6) -> FlowKey6 {
    FlowKey6 {
        src_addr: f.src_addr,
        dst_addr: f.dst_addr,
        src_port_be: f.src_port_be,
        dst_port_be: f.dst_port_be,
        proto: f.proto,
        _pad: [0; 3],
    }
}

/// The remap kept for a client-side tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remap {
    None,
    /// Another container's: the mapping changed since.
    Stale,
    /// The client port (network order) its flow uses towards the container.
    Port(u16),
}

/// The remap kept for client-side tuple `wire`, towards backend `b`.
#[inline(always)]
pub(crate) fn remapped_port(wire: &FlowKey6, b: &Backend6) -> Remap {
    match unsafe { BERTH_NAT6_FWD.get(wire) } {
        None => Remap::None,
        Some(f) if f.backend_addr == b.addr && f.backend_port_be == b.port_be => {
            Remap::Port(f.remap_port_be)
        }
        Some(_) => Remap::Stale,
    }
}

/// Whether no flow, established or not, holds reply tuple `key`.
#[inline(always)]
pub(crate) fn tuple_free(key: &FlowKey6) -> bool {
    unsafe { BERTH_NAT6.get(key).is_none() && BERTH_NAT6_NEW.get(key).is_none() }
}

/// A new flow whose reply tuple `key` is taken: picks a client port whose
/// tuple is free and remembers it for the flow's client-side tuple `wire`.
/// `Err`: none free in [`NAT_REMAP_TRIES`], or no room to remember it
/// (`nat_port_remap_failed`; the caller refuses the flow).
#[inline(always)]
pub(crate) fn remap(f: &Flow6, b: &Backend6, key: &FlowKey6, wire: &FlowKey6) -> Result<u16, ()> {
    let mut k = *key;
    let (sport, hport) = (u16::from_be(f.src_port_be), u16::from_be(f.dst_port_be));
    let mut picked = None;
    for i in 0..NAT_REMAP_TRIES {
        k.dst_port_be = nat_remap_port6(&f.src_addr, sport, hport, i).to_be();
        if tuple_free(&k) {
            picked = Some(k.dst_port_be);
            break;
        }
    }
    let Some(port_be) = picked else {
        count(Counter::NatPortRemapFailed);
        return Err(());
    };
    let fwd = NatFwd6 {
        backend_addr: b.addr,
        backend_port_be: b.port_be,
        remap_port_be: port_be,
    };
    if BERTH_NAT6_FWD.insert(wire, &fwd, BPF_ANY).is_err() {
        count(Counter::NatPortRemapFailed);
        return Err(());
    }
    count(Counter::NatPortRemap);
    Ok(port_be)
}

/// Forgets the remap of client-side tuple `wire` (its flow was not
/// opened, or the remap is stale).
#[inline(always)]
pub(crate) fn forget(wire: &FlowKey6) {
    let _ = BERTH_NAT6_FWD.remove(wire);
}

/// Rewrites a remapped flow's client port at `port_off` (`old_be ->
/// new_be`) and the L4 checksum with it through the skb helper (a UDP
/// zero checksum stays zero), before `nat6.rs` translates the rest: kept
/// out of its rewrite, whose stack has no room left.
#[inline(always)]
pub(crate) fn rewrite_port(
    ctx: &TcContext,
    f: &Flow6,
    port_off: usize,
    old_be: u16,
    new_be: u16,
) -> Result<(), ()> {
    // Read back from the stack and masked: the verifier lost the parser's
    // bound on this offset (as `nat6::rewrite6`'s).
    let off = unsafe { core::ptr::read_volatile(&raw const port_off) } & L4_OFF_MASK;
    let port = ptr_at::<u16>(ctx.data(), ctx.data_end(), off).ok_or(())?;
    unsafe {
        core::ptr::write_unaligned(port, new_be);
    }
    let l4_off = f.l4_off & L4_OFF_MASK;
    let (csum_off, flags) = if f.proto == PROTO_UDP {
        (l4_off + 6, u64::from(BPF_F_MARK_MANGLED_0) | 2)
    } else {
        (l4_off + 16, 2)
    };
    ctx.l4_csum_replace(csum_off, u64::from(old_be), u64::from(new_be), flags)
        .map_err(|_| ())
}
