//! A cache of where a packet DNAT'd to a container goes next, so an
//! established flow's packets skip the FIB lookup (~40-55 ns each).
//!
//! Keyed by everything the lookup is given that can differ between
//! packets — container address, client address, protocol and the uplink
//! it came in by — and a slot is used only when its whole key matches, so
//! an entry holds exactly what the FIB answered for that key: a LAN sender
//! (or a container) can only fill entries for the sources it sends from,
//! with the answer they would get anyway, never one another client's
//! packets use. Colliding keys (chosen sources included) only evict each
//! other, which costs a lookup. Only a resolved next hop is kept; an entry
//! is trusted for [`NEXT_HOP_TTL_NS`], after which the next packet looks
//! it up again (a container replaced at the same address with a new MAC is
//! reached within that time), and for packets no longer than one the
//! route's MTU was checked against.
//!
//! Direct-mapped and per CPU: an array slot is found without a helper
//! call or a lock (a hash map lookup costs about what it saves), and a
//! program never shares a slot with another CPU.
use aya_ebpf::{macros::map, maps::PerCpuArray, EbpfContext};

use crate::{
    fib::{fib_lookup_v4, NextHop},
    parse::Flow,
};

/// How long a looked-up next hop is used without asking the FIB again.
pub(crate) const NEXT_HOP_TTL_NS: u64 = 500_000_000;
/// Slots per CPU (a power of two).
const SLOTS_LOG2: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    dst_addr_be: u32,
    src_addr_be: u32,
    in_ifindex: u32,
    proto: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    key: Key,
    /// When the FIB answered (coarse monotonic clock).
    checked_ns: u64,
    /// 0: empty (a resolved next hop has a device).
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
static BERTH_NEXT_HOPS: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1 << SLOTS_LOG2, 0);

#[inline(always)]
fn slot_of(k: &Key) -> u32 {
    let h = k.dst_addr_be ^ k.src_addr_be.rotate_left(16) ^ k.in_ifindex.rotate_left(8) ^ k.proto;
    h.wrapping_mul(0x9e37_79b1) >> (32 - SLOTS_LOG2)
}

/// The next hop of `flow` once DNAT'd to `dst` (see the module doc);
/// arguments as for [`fib_lookup_v4`], `now` from the coarse clock.
#[inline(always)]
pub(crate) fn next_hop_to_container<C: EbpfContext>(
    ctx: &C,
    flow: &Flow,
    dst_addr_be: u32,
    in_ifindex: u32,
    mtu_len: u16,
    now: u64,
) -> NextHop {
    let key = Key {
        dst_addr_be,
        src_addr_be: flow.src_addr_be,
        in_ifindex,
        proto: u32::from(flow.proto),
    };
    let slot = BERTH_NEXT_HOPS.get_ptr_mut(slot_of(&key));
    if let Some(s) = slot {
        let s = unsafe { &*s };
        if s.ifindex != 0
            && s.key == key
            && now.wrapping_sub(s.checked_ns) < NEXT_HOP_TTL_NS
            && mtu_len <= s.mtu_ok
        {
            return NextHop::Resolved {
                ifindex: s.ifindex,
                smac: s.smac,
                dmac: s.dmac,
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
    let Some(s) = slot else {
        return next;
    };
    let s = unsafe { &mut *s };
    match &next {
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            *s = Slot {
                key,
                checked_ns: now,
                ifindex: *ifindex,
                mtu_ok: mtu_len,
                smac: *smac,
                dmac: *dmac,
                _pad: [0; 6],
            };
        }
        // Too long for the route: the entry (checked for shorter packets)
        // stays right for them.
        NextHop::TooBig { .. } => {}
        // The route or the neighbour is gone: no stale answer is kept.
        _ if s.key == key => s.ifindex = 0,
        _ => {}
    }
    next
}
