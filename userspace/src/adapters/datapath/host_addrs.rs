//! The host address tables (`BERTH_HOST_ADDRS`, `BERTH_HOST_ADDRS6`), each
//! of `--max-host-addrs` entries: which of the host's addresses they hold
//! when the host has more (the first given, most important first), and
//! how many they lack, for `berth status` and the metrics.
use std::{
    collections::HashSet,
    hash::Hash,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::engine::datapath::HostAddrsFill;

/// The tables' capacity and, from the last push of each family, the
/// host's addresses and how many were left out.
#[derive(Debug, Default)]
pub(super) struct Fill {
    capacity: u32,
    ipv4: [AtomicU64; 2],
    ipv6: [AtomicU64; 2],
}

impl Fill {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// After a push of `wanted` addresses of which the table holds `held`.
    pub(super) fn record(&self, ipv6: bool, wanted: usize, held: usize) {
        let slot = if ipv6 { &self.ipv6 } else { &self.ipv4 };
        slot[0].store(wanted as u64, Ordering::Relaxed);
        slot[1].store(wanted.saturating_sub(held) as u64, Ordering::Relaxed);
    }

    pub(super) fn read(&self) -> HostAddrsFill {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HostAddrsFill {
            capacity: self.capacity,
            ipv4: get(&self.ipv4[0]),
            ipv4_left_out: get(&self.ipv4[1]),
            ipv6: get(&self.ipv6[0]),
            ipv6_left_out: get(&self.ipv6[1]),
        }
    }
}

/// What a table of `capacity` entries holds of `addrs` (most important
/// first, duplicates counted once): the first that fit. Returns them and
/// how many distinct addresses there were.
pub(super) fn fit<T: Copy + Eq + Hash>(
    addrs: impl IntoIterator<Item = T>,
    capacity: u32,
) -> (HashSet<T>, usize) {
    let mut seen = HashSet::new();
    let mut kept = HashSet::new();
    for a in addrs {
        if seen.insert(a) && kept.len() < capacity as usize {
            kept.insert(a);
        }
    }
    (kept, seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_addresses_fit_and_duplicates_count_once() {
        let (kept, wanted) = fit([5, 1, 5, 9, 2], 3);
        assert_eq!((kept, wanted), ([5, 1, 9].into(), 4));
        let (kept, wanted) = fit([5, 1, 5], 3);
        assert_eq!((kept, wanted), ([5, 1].into(), 2));
        let (kept, wanted) = fit(Vec::<u32>::new(), 3);
        assert_eq!((kept.len(), wanted), (0, 0));
    }

    #[test]
    fn the_fill_reports_what_each_family_lacks() {
        let f = Fill::new(1024);
        f.record(true, 1100, 1024);
        f.record(false, 3, 3);
        assert_eq!(
            f.read(),
            HostAddrsFill {
                capacity: 1024,
                ipv4: 3,
                ipv4_left_out: 0,
                ipv6: 1100,
                ipv6_left_out: 76,
            }
        );
        f.record(true, 10, 10);
        assert_eq!(
            f.read().ipv6_left_out,
            0,
            "a later push that fits clears it"
        );
    }
}
