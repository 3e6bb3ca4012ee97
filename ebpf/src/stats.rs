//! Per-mapping counters (`BERTH_BINDING_STATS`): a per-CPU array slot
//! found by the index the mapping's service entry (or its flow's entry)
//! carries, so counting a packet is one array lookup, which the verifier
//! inlines, and plain adds with no atomics. A slot out of range (a
//! mapping from older pins before the daemon numbered it) counts nothing.
//! The `bench-uncounted` feature (bench only) builds every call here empty.
use berth_maps::BindingStats;

use crate::maps::BERTH_BINDING_STATS;

#[inline(always)]
fn slot(binding: u32) -> Option<*mut BindingStats> {
    if cfg!(feature = "bench-uncounted") {
        return None;
    }
    BERTH_BINDING_STATS.get_ptr_mut(binding)
}

/// A packet of `tot_len` bytes (IPv4 total length) translated towards the
/// container.
#[inline(always)]
pub(crate) fn binding_count_in(binding: u32, tot_len: u16) {
    if let Some(s) = slot(binding) {
        unsafe {
            (*s).packets_in += 1;
            (*s).bytes_in += u64::from(tot_len);
        }
    }
}

/// A reply of `tot_len` bytes translated back to the host port.
#[inline(always)]
pub(crate) fn binding_count_out(binding: u32, tot_len: u16) {
    if let Some(s) = slot(binding) {
        unsafe {
            (*s).packets_out += 1;
            (*s).bytes_out += u64::from(tot_len);
        }
    }
}

/// A new flow tracked for the mapping.
#[inline(always)]
pub(crate) fn binding_count_opened(binding: u32) {
    if let Some(s) = slot(binding) {
        unsafe {
            (*s).flows_opened += 1;
        }
    }
}

/// A new flow the task's security groups refused.
#[inline(always)]
pub(crate) fn binding_count_refused(binding: u32) {
    if let Some(s) = slot(binding) {
        unsafe {
            (*s).flows_refused += 1;
        }
    }
}
