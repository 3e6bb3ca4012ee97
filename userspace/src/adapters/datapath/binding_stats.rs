//! Per-binding counters (`BERTH_BINDING_STATS`): which slot each published
//! mapping counts in, and reading the slots back.
//!
//! Every service entry carries its slot (`Backend::binding`), so the
//! datapath counts a packet with one array lookup. Slots are handed out
//! here: the daemon adopts the numbering pinned with the maps (counters
//! survive a restart), numbers what has none (mappings carried over from
//! layout 2 hold slot 0, which counts nothing), and zeroes a slot on every
//! CPU before a new mapping gets it, so a reused slot starts from zero.
//! Freed slots are reused last and oldest first, and only once no flow
//! carries them: the flows of a removed mapping hold its slot until the
//! background sweep forgets them, so a slot freed since the last reuse
//! rests until one pass over the flow tables has deleted every flow still
//! naming it ([`SlotBook::slot_for`] asks for that pass when nothing else
//! is free). A new mapping then never shows, nor counts the packets of, an
//! old one's flows.
//!
//! Flows tracked now is not a datapath counter: it is the number of
//! entries per slot in the published-port flow tables when asked, which
//! stays right whatever ends a flow (expiry, a sweep, LRU eviction).
//!
//! IPv4 and IPv6 mappings draw from the one array (`--max-mappings` slots
//! cover both families, as `BERTH_SERVICES` and `BERTH_SERVICES6` are each
//! that large but a dual-stack port is two bindings): a slot's owner is
//! the service key of either family.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{IterableMap as _, MapData, PerCpuArray, PerCpuValues};
use berth_maps::{BindingStats, NatEntry, NatEntry6, ServiceKey, ServiceKey6, BINDING_STATS_MAP};

use super::{
    bpf::map_err,
    flows::{batch_scan_keyed, scan, FlowMap},
    flows6::FlowMap6,
    DatapathError,
};
use crate::engine::datapath::BindingCounters;

/// The mapping a slot counts for: its service key, of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotOwner {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl From<&ServiceKey> for SlotOwner {
    fn from(k: &ServiceKey) -> Self {
        Self::V4(*k)
    }
}

impl From<&ServiceKey6> for SlotOwner {
    fn from(k: &ServiceKey6) -> Self {
        Self::V6(*k)
    }
}

/// Which mapping holds which slot; slots run 1..=`capacity`.
#[derive(Debug, Default)]
pub(super) struct SlotBook {
    capacity: u32,
    owner: HashMap<u32, SlotOwner>,
    /// Slots above every one handed out so far start here.
    next_fresh: u32,
    /// Slots freed that no flow carries any more, oldest first.
    freed: VecDeque<u32>,
    /// Slots freed that flows may still carry, oldest first.
    resting: VecDeque<u32>,
}

impl SlotBook {
    /// A book for `capacity` mappings that adopts the slots `pinned`
    /// service entries hold: the first holder of a valid slot keeps it; a
    /// mapping with slot 0, one out of range or a duplicate gets a new one
    /// when it is next published ([`SlotBook::slot_for`]).
    pub(super) fn adopt(capacity: u32, pinned: impl IntoIterator<Item = (SlotOwner, u32)>) -> Self {
        let mut book = Self {
            capacity,
            next_fresh: 1,
            ..Self::default()
        };
        for (key, slot) in pinned {
            if (1..=capacity).contains(&slot) && !book.owner.contains_key(&slot) {
                book.owner.insert(slot, key);
            }
        }
        let top = book.owner.keys().copied().max().unwrap_or(0);
        // An earlier daemon's removed mappings may have left flows behind.
        book.resting = (1..top).filter(|s| !book.owner.contains_key(s)).collect();
        book.next_fresh = top + 1;
        book
    }

    /// The slot `key` should count in, given the one its entry holds now
    /// (`None`: not published). `(slot, fresh)`: `fresh` says the slot was
    /// just handed out and must be zeroed before the entry names it. `None`
    /// when every slot is taken (the mapping then counts nowhere). When
    /// only resting slots are left, `forget` is called once with all of them
    /// to delete the flows that carry them; they are free once it succeeds.
    pub(super) fn slot_for<E>(
        &mut self,
        key: impl Into<SlotOwner>,
        current: Option<u32>,
        forget: impl FnOnce(&HashSet<u32>) -> Result<usize, E>,
    ) -> Result<Option<(u32, bool)>, E> {
        let key = key.into();
        if let Some(found) = self.free_slot_for(key, current) {
            return Ok(Some(found));
        }
        self.resting.retain(|s| !self.owner.contains_key(s));
        if self.resting.is_empty() {
            return Ok(None);
        }
        let resting: HashSet<u32> = self.resting.iter().copied().collect();
        let flows = forget(&resting)?;
        tracing::debug!(
            slots = resting.len(),
            flows,
            "forgot the flows still counting in freed slots before reusing them"
        );
        self.freed.extend(self.resting.drain(..));
        Ok(self.free_slot_for(key, current))
    }

    /// [`SlotBook::slot_for`] without waking resting slots.
    fn free_slot_for(&mut self, key: SlotOwner, current: Option<u32>) -> Option<(u32, bool)> {
        if let Some(s) = current {
            if self.owner.get(&s) == Some(&key) {
                return Some((s, false));
            }
        }
        let slot = if self.next_fresh <= self.capacity {
            self.next_fresh += 1;
            self.next_fresh - 1
        } else {
            loop {
                let s = self.freed.pop_front()?;
                if !self.owner.contains_key(&s) {
                    break s;
                }
            }
        };
        self.owner.insert(slot, key);
        Some((slot, true))
    }

    /// `key` no longer holds `slot` (its mapping was removed, or taking the
    /// slot failed): it rests until no flow carries it.
    pub(super) fn release(&mut self, key: impl Into<SlotOwner>, slot: u32) {
        if self.owner.get(&slot) == Some(&key.into()) {
            self.owner.remove(&slot);
            self.resting.push_back(slot);
        }
    }
}

/// The counters slot a binding keyed `key` counts in, given the one its
/// entry holds now: a fresh slot is zeroed before any entry names it (a
/// reused slot starts from nothing) and given back if zeroing fails. `None`
/// (warned; the binding counts nowhere) when every slot is taken.
pub(super) fn claim_slot(
    slots: &mut SlotBook,
    stats: &mut PerCpuArray<MapData, BindingStats>,
    key: impl Into<SlotOwner>,
    current: Option<u32>,
    host_port: u16,
    forget: impl FnOnce(&HashSet<u32>) -> Result<usize, DatapathError>,
) -> Result<Option<u32>, DatapathError> {
    let key = key.into();
    let Some((slot, fresh)) = slots.slot_for(key, current, forget)? else {
        tracing::warn!(
            host_port,
            "no per-binding counters slot left; this binding is not counted"
        );
        return Ok(None);
    };
    if fresh {
        if let Err(e) = zero_slot(stats, slot) {
            slots.release(key, slot);
            return Err(e);
        }
    }
    Ok(Some(slot))
}

/// Zeroes `slot` on every CPU.
pub(super) fn zero_slot(
    stats: &mut PerCpuArray<MapData, BindingStats>,
    slot: u32,
) -> Result<(), DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
        map: BINDING_STATS_MAP,
        reason: format!("counting CPUs: {e}"),
    })?;
    let zero = PerCpuValues::try_from(vec![BindingStats::default(); cpus]).map_err(|e| {
        DatapathError::Map {
            map: BINDING_STATS_MAP,
            reason: e.to_string(),
        }
    })?;
    stats.set(slot, zero, 0).map_err(map_err(BINDING_STATS_MAP))
}

/// `slot`'s counters summed over CPUs, and the flows tracked under it.
pub(super) fn read_slot(
    stats: &PerCpuArray<MapData, BindingStats>,
    slot: u32,
    tracked: &HashMap<u32, u64>,
) -> Result<BindingCounters, DatapathError> {
    let per_cpu = stats.get(&slot, 0).map_err(map_err(BINDING_STATS_MAP))?;
    Ok(sum(
        per_cpu.iter(),
        tracked.get(&slot).copied().unwrap_or(0),
    ))
}

fn sum<'a>(per_cpu: impl Iterator<Item = &'a BindingStats>, tracked: u64) -> BindingCounters {
    let mut c = BindingCounters {
        flows_tracked: tracked,
        ..BindingCounters::default()
    };
    for s in per_cpu {
        c.packets_in = c.packets_in.wrapping_add(s.packets_in);
        c.bytes_in = c.bytes_in.wrapping_add(s.bytes_in);
        c.packets_out = c.packets_out.wrapping_add(s.packets_out);
        c.bytes_out = c.bytes_out.wrapping_add(s.bytes_out);
        c.flows_opened = c.flows_opened.wrapping_add(s.flows_opened);
        c.flows_refused = c.flows_refused.wrapping_add(s.flows_refused);
    }
    c
}

/// Tracked flows per slot, over the published-port flow tables of both
/// families.
pub(super) fn tracked_per_slot(
    flows: &[FlowMap<NatEntry>],
    flows6: &[FlowMap6<NatEntry6>],
) -> Result<HashMap<u32, u64>, DatapathError> {
    let mut per = HashMap::new();
    for t in flows {
        scan(t, |_, v: &NatEntry| *per.entry(v.binding).or_insert(0) += 1)?;
    }
    for t in flows6 {
        let fd = t.map.map().fd().as_fd().as_raw_fd();
        batch_scan_keyed(fd, |_: &berth_maps::FlowKey6, v: &NatEntry6| {
            *per.entry(v.binding).or_insert(0) += 1;
        })
        .map_err(|e| DatapathError::Map {
            map: t.name,
            reason: e.to_string(),
        })?;
    }
    Ok(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            host_addr_be: 0,
            host_port_be: port.to_be(),
            proto: 6,
            _pad: 0,
        }
    }

    /// [`SlotBook::slot_for`] where forgetting the resting slots' flows
    /// always works.
    fn take(
        b: &mut SlotBook,
        k: impl Into<SlotOwner>,
        current: Option<u32>,
    ) -> Option<(u32, bool)> {
        b.slot_for(k, current, |_| Ok::<_, ()>(0)).unwrap()
    }

    #[test]
    fn a_freed_slot_is_reused_only_after_its_flows_are_forgotten() {
        let mut b = SlotBook::adopt(3, []);
        for p in 1..=3 {
            take(&mut b, &key(p), None);
        }
        b.release(&key(1), 1);
        b.release(&key(3), 3);
        // Slots are free but flows may carry them: a failed pass hands
        // out nothing and leaves them resting.
        let mut asked = Vec::new();
        let r = b.slot_for(&key(4), None, |s: &HashSet<u32>| {
            asked.push(s.clone());
            Err("no")
        });
        assert_eq!(r, Err("no"));
        // One pass for every resting slot, then they are handed out oldest
        // first without another.
        let mut passes = 0;
        let mut pass = |s: &HashSet<u32>| {
            passes += 1;
            asked.push(s.clone());
            Ok::<_, ()>(0)
        };
        assert_eq!(b.slot_for(&key(4), None, &mut pass), Ok(Some((1, true))));
        assert_eq!(b.slot_for(&key(5), None, &mut pass), Ok(Some((3, true))));
        assert_eq!(b.slot_for(&key(6), None, &mut pass), Ok(None));
        assert_eq!(passes, 1);
        assert_eq!(asked, [HashSet::from([1, 3]), HashSet::from([1, 3])]);
    }

    #[test]
    fn fresh_slots_go_before_any_pass() {
        let mut b = SlotBook::adopt(3, []);
        take(&mut b, &key(1), None);
        b.release(&key(1), 1);
        let r = b.slot_for(&key(2), None, |_| -> Result<usize, ()> { panic!("a pass") });
        assert_eq!(r, Ok(Some((2, true))));
        // The pinned slot of a published mapping needs none either.
        let mut b = SlotBook::adopt(1, [(SlotOwner::V4(key(1)), 1)]);
        let r = b.slot_for(&key(1), Some(1), |_| -> Result<usize, ()> {
            panic!("a pass")
        });
        assert_eq!(r, Ok(Some((1, false))));
    }

    #[test]
    fn pinned_slots_are_kept_and_the_rest_numbered_fresh() {
        let pinned = [(key(1), 3), (key(2), 0), (key(3), 3), (key(4), 99)];
        let mut b = SlotBook::adopt(8, pinned.map(|(k, s)| (SlotOwner::V4(k), s)));
        assert_eq!(take(&mut b, &key(1), Some(3)), Some((3, false)));
        // Slot 0, a duplicate and one out of range are renumbered.
        assert_eq!(take(&mut b, &key(2), Some(0)), Some((4, true)));
        assert_eq!(take(&mut b, &key(3), Some(3)), Some((5, true)));
        assert_eq!(take(&mut b, &key(4), Some(99)), Some((6, true)));
        // Publishing again keeps the slot.
        assert_eq!(take(&mut b, &key(4), Some(6)), Some((6, false)));
    }

    #[test]
    fn freed_slots_are_reused_last_oldest_first_and_zeroed() {
        let mut b = SlotBook::adopt(3, []);
        let s: Vec<_> = (1..=3).map(|p| take(&mut b, &key(p), None)).collect();
        assert_eq!(s, [Some((1, true)), Some((2, true)), Some((3, true))]);
        assert_eq!(take(&mut b, &key(9), None), None, "every slot taken");
        b.release(&key(2), 2);
        b.release(&key(1), 1);
        // Someone else's slot is not released.
        b.release(&key(7), 3);
        assert_eq!(take(&mut b, &key(10), None), Some((2, true)));
        assert_eq!(take(&mut b, &key(11), None), Some((1, true)));
        assert_eq!(take(&mut b, &key(12), None), None);
    }

    #[test]
    fn gaps_below_the_adopted_slots_are_free() {
        let mut b = SlotBook::adopt(5, [(SlotOwner::V4(key(1)), 4)]);
        assert_eq!(take(&mut b, &key(2), None), Some((5, true)));
        assert_eq!(take(&mut b, &key(3), None), Some((1, true)));
        assert_eq!(take(&mut b, &key(4), None), Some((2, true)));
        assert_eq!(take(&mut b, &key(5), None), Some((3, true)));
        assert_eq!(take(&mut b, &key(6), None), None);
    }

    #[test]
    fn both_families_share_the_slots_and_are_told_apart() {
        let v6 = ServiceKey6 {
            host_addr: [0; 16],
            host_port_be: 1u16.to_be(),
            proto: 6,
            _pad: 0,
        };
        // An IPv6 mapping of a port whose IPv4 mapping holds slot 1.
        let mut b = SlotBook::adopt(3, [(SlotOwner::V4(key(1)), 1), (SlotOwner::V6(v6), 2)]);
        assert_eq!(take(&mut b, &key(1), Some(1)), Some((1, false)));
        assert_eq!(take(&mut b, &v6, Some(2)), Some((2, false)));
        // The IPv6 key does not own the IPv4 key's slot, nor the reverse.
        assert_eq!(take(&mut b, &v6, Some(1)), Some((3, true)));
        b.release(&key(1), 3);
        assert_eq!(take(&mut b, &key(2), None), None, "all three taken");
        b.release(&v6, 2);
        assert_eq!(take(&mut b, &key(2), None), Some((2, true)));
    }

    #[test]
    fn counters_sum_over_cpus() {
        let cpu = BindingStats {
            packets_in: 2,
            bytes_in: 100,
            packets_out: 1,
            bytes_out: 60,
            flows_opened: 1,
            flows_refused: 3,
        };
        let c = sum([cpu, cpu].iter(), 7);
        assert_eq!(
            c,
            BindingCounters {
                packets_in: 4,
                bytes_in: 200,
                packets_out: 2,
                bytes_out: 120,
                flows_opened: 2,
                flows_refused: 6,
                flows_tracked: 7,
            }
        );
    }
}
