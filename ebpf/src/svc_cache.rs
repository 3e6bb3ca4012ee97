//! A cache of the service lookup for the uplink's established TCP packets
//! (issue 11: the ingress hit at most 3x an empty program), so such a
//! packet costs one hash lookup (its flow's) instead of two.
//!
//! Keyed by the packet's (protocol, host address, host port), per CPU and
//! direct-mapped, as the next-hop cache (`nexthop.rs`): a slot is an array
//! load, a hash map probe costs a hash of the key and a bucket walk.
//! Filled by every uplink packet that [`service_find`] answered, so a
//! slot holds exactly what the lookup said for its key.
//!
//! What keeps it right:
//! - A cached answer is only used to find an *established* flow: a TCP
//!   packet without SYN (one that can never open a flow) whose tracked
//!   flow under the cached container exists and owns the packet (same host
//!   address and port, same client port: `nat::ct_track_known`). Such an
//!   entry was opened by a packet the real lookup sent to that container;
//!   anything else (no slot, a stale one, no such flow, a TTL of 1, a SYN,
//!   UDP) takes the full path, which looks the service up and refills.
//!   A new flow is therefore never opened on a cached answer.
//! - An entry is trusted for [`SVC_CACHE_TTL_NS`]. The daemon ends the
//!   flows of a mapping it removes (and of an address the host loses), as
//!   it already must since the host-address check runs only when a flow
//!   opens; the TTL bounds what a flow whose sweep is still to come (or
//!   failed) can get: half a second more of its old translation, as the
//!   packets just before the change had.
//! - Not pinned: each load of the programs starts it empty.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use berth_maps::Backend;

use crate::service::Service;

/// How long a cached service answer is used without asking the map again.
pub(crate) const SVC_CACHE_TTL_NS: u64 = 500_000_000;
/// Slots per CPU (a power of two).
const SLOTS_LOG2: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    /// [`key_of`]: never 0 for a real key (the protocol is not 0), so an
    /// empty slot matches nothing.
    key: u64,
    backend: Backend,
    wildcard: u32,
    /// When the map answered (coarse monotonic clock).
    checked_ns: u64,
}

/// Not pinned (see the module doc).
#[map]
static BERTH_SVC_CACHE: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1 << SLOTS_LOG2, 0);

#[inline(always)]
fn key_of(proto: u8, addr_be: u32, port_be: u16) -> u64 {
    u64::from(addr_be) | (u64::from(port_be) << 32) | (u64::from(proto) << 48)
}

#[inline(always)]
fn slot_of(key: u64) -> u32 {
    let h = (key as u32) ^ ((key >> 32) as u32).rotate_left(8);
    h.wrapping_mul(0x9e37_79b1) >> (32 - SLOTS_LOG2)
}

/// The cached service of (`proto`, `addr_be`, `port_be`), if a slot holds
/// it; [`svc_cache_fresh`] says whether it may be used at `now`.
#[inline(always)]
pub(crate) fn svc_cache_get(proto: u8, addr_be: u32, port_be: u16) -> Option<(Service, u64)> {
    let key = key_of(proto, addr_be, port_be);
    let s = BERTH_SVC_CACHE.get_ptr(slot_of(key))?;
    let s = unsafe { &*s };
    if s.key != key {
        return None;
    }
    Some((
        Service {
            backend: s.backend,
            wildcard: s.wildcard != 0,
        },
        s.checked_ns,
    ))
}

/// Whether an answer cached at `checked_ns` may still be used at `now`.
#[inline(always)]
pub(crate) fn svc_cache_fresh(checked_ns: u64, now: u64) -> bool {
    now.wrapping_sub(checked_ns) < SVC_CACHE_TTL_NS
}

/// Remember what the service lookup answered for this key at `now`.
#[inline(always)]
pub(crate) fn svc_cache_put(proto: u8, addr_be: u32, port_be: u16, svc: &Service, now: u64) {
    let key = key_of(proto, addr_be, port_be);
    if let Some(s) = BERTH_SVC_CACHE.get_ptr_mut(slot_of(key)) {
        unsafe {
            *s = Slot {
                key,
                backend: svc.backend,
                wildcard: u32::from(svc.wildcard),
                checked_ns: now,
            };
        }
    }
}
