//! A cache of where a packet DNAT'd to a container goes next, so an
//! established flow's packets skip the FIB lookup (~40-55 ns each).
//!
//! Keyed by everything the lookup is given that can differ between
//! packets — container address, client address, protocol and the uplink
//! it came in by — so an entry holds exactly what the FIB answered for
//! that key: a LAN sender (or a container) can only fill entries for the
//! sources it sends from, with the answer they would get anyway, never one
//! another client's packets use. Spoofed sources can evict entries (LRU),
//! which costs a lookup, nothing else. Only a resolved next hop is kept;
//! an entry is trusted for [`NEXT_HOP_TTL_NS`], after which the next
//! packet looks it up again (a container replaced at the same address
//! with a new MAC is reached within that time), and for packets no longer
//! than one the route's MTU was checked against.
use aya_ebpf::{macros::map, maps::LruHashMap, EbpfContext};

use crate::{
    ct::ct_now,
    fib::{fib_lookup_v4, NextHop},
    parse::Flow,
};

/// How long a looked-up next hop is used without asking the FIB again.
pub const NEXT_HOP_TTL_NS: u64 = 500_000_000;
/// Concurrent (client, container) pairs kept; beyond that the least
/// recently used pair pays a lookup again.
const NEXT_HOPS_CAPACITY: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHopKey {
    dst_addr_be: u32,
    src_addr_be: u32,
    in_ifindex: u32,
    proto: u8,
    _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHopEntry {
    /// When the FIB answered (coarse monotonic clock).
    checked_ns: u64,
    ifindex: u32,
    /// The longest packet the route's MTU was checked against (0: only
    /// packets exempt from the check may use the entry).
    mtu_ok: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
    _pad: [u8; 6],
}

/// Not pinned: a cache each load of the programs starts empty, so no
/// older daemon's pins ever need to hold it.
#[map]
static BERTH_NEXT_HOPS: LruHashMap<NextHopKey, NextHopEntry> =
    LruHashMap::with_max_entries(NEXT_HOPS_CAPACITY, 0);

/// The next hop of `flow` once DNAT'd to `dst` (see the module doc);
/// arguments as for [`fib_lookup_v4`].
#[inline(always)]
pub fn next_hop_to_container<C: EbpfContext>(
    ctx: &C,
    flow: &Flow,
    dst_addr_be: u32,
    in_ifindex: u32,
    mtu_len: u16,
) -> NextHop {
    let key = NextHopKey {
        dst_addr_be,
        src_addr_be: flow.src_addr_be,
        in_ifindex,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let now = ct_now();
    let cached = unsafe { BERTH_NEXT_HOPS.get(&key) };
    if let Some(e) = cached {
        if now.wrapping_sub(e.checked_ns) < NEXT_HOP_TTL_NS && mtu_len <= e.mtu_ok {
            return NextHop::Resolved {
                ifindex: e.ifindex,
                smac: e.smac,
                dmac: e.dmac,
            };
        }
    }
    let next = fib_lookup_v4(
        ctx,
        flow,
        flow.src_addr_be,
        dst_addr_be,
        in_ifindex,
        mtu_len,
    );
    match &next {
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            let e = NextHopEntry {
                checked_ns: now,
                ifindex: *ifindex,
                mtu_ok: mtu_len,
                smac: *smac,
                dmac: *dmac,
                _pad: [0; 6],
            };
            // Full or contended: the next packet looks it up again.
            let _ = BERTH_NEXT_HOPS.insert(&key, &e, 0);
        }
        // The route or the neighbour is gone: no stale answer is kept.
        _ if cached.is_some() => {
            let _ = BERTH_NEXT_HOPS.remove(&key);
        }
        _ => {}
    }
    next
}
