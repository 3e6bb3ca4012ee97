//! Choosing dynamic host ports. Pure logic: what the host looks like (mapped
//! ports, bound sockets, cool-downs) comes in as arguments, so every rule is
//! tested without a host.
//!
//! A request for `n` ports gets a contiguous block inside the policy's range
//! in which no port is reserved, in use (mapped for the same protocol and an
//! overlapping bind IP, or bound by a socket of the host) or cooling down
//! (released less than the cool-down ago, so a load balancer still aiming at
//! an old copy never reaches a new one). The scan starts at a random offset
//! and wraps, so ports are spread over the range instead of reused first.
use std::collections::{BTreeMap, BTreeSet};

pub use crate::domain::error::Exhausted;
use crate::{domain::model::Protocol, domain::spec::PortRange};

/// The ECS agent's reserved ports: SSH, the Docker daemon (plain and TLS)
/// and the agent's own introspection and metadata ports.
pub const DEFAULT_RESERVED_PORTS: [u16; 5] = [22, 2375, 2376, 51678, 51679];
/// How long a released host port is not handed out again.
pub const DEFAULT_COOLDOWN_SECS: u64 = 300;

/// Where and what may be allocated (`berth daemon --dynamic-ports`,
/// `--reserved-ports`, `--port-cooldown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub range: PortRange,
    pub reserved: BTreeSet<u16>,
    pub cooldown_secs: u64,
}

impl PortPolicy {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            reserved: DEFAULT_RESERVED_PORTS.into_iter().collect(),
            cooldown_secs: DEFAULT_COOLDOWN_SECS,
        }
    }
}

/// Ports of one protocol that must not be handed out, besides the reserved
/// list. Callers fill them for the protocol and bind IP being allocated.
#[derive(Clone, Debug, Default)]
pub struct Taken {
    /// Mapped already, or earlier in the same request.
    pub mapped: BTreeSet<u16>,
    /// Held by a socket in the daemon's network namespace.
    pub bound: BTreeSet<u16>,
    /// Released less than the cool-down ago.
    pub cooling: BTreeSet<u16>,
}

/// A contiguous block of `count` free ports in `policy.range`, scanning from
/// the block start at `offset` (taken modulo the number of possible starts)
/// and wrapping around.
pub fn allocate(
    policy: &PortPolicy,
    taken: &Taken,
    count: u32,
    offset: u64,
) -> Result<PortRange, Exhausted> {
    let range = policy.range;
    let size = range.port_count();
    let mut exhausted = Exhausted {
        range,
        count,
        reserved: 0,
        in_use: 0,
        cooling: 0,
    };
    // busy_before[i]: how many of the first i ports of the range are not free.
    let mut busy_before = Vec::with_capacity(size as usize + 1);
    busy_before.push(0u32);
    for port in range.iter() {
        let busy = if policy.reserved.contains(&port) {
            exhausted.reserved += 1;
            true
        } else if taken.mapped.contains(&port) || taken.bound.contains(&port) {
            exhausted.in_use += 1;
            true
        } else if taken.cooling.contains(&port) {
            exhausted.cooling += 1;
            true
        } else {
            false
        };
        let last = *busy_before.last().unwrap_or(&0);
        busy_before.push(last + u32::from(busy));
    }
    if count == 0 || count > size {
        return Err(exhausted);
    }
    let starts = size - count + 1;
    let first = (offset % u64::from(starts)) as u32;
    for i in 0..starts {
        let s = (first + i) % starts;
        if busy_before[(s + count) as usize] == busy_before[s as usize] {
            let start = u32::from(range.start) + s;
            return Ok(PortRange {
                start: start as u16,
                end: (start + count - 1) as u16,
            });
        }
    }
    Err(exhausted)
}

/// When each released host port was released (wall-clock Unix seconds), per
/// protocol. Kept in the store so a restart does not forget them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoolDowns {
    released: BTreeMap<(Protocol, u16), u64>,
}

impl CoolDowns {
    pub fn from_entries(entries: impl IntoIterator<Item = ((Protocol, u16), u64)>) -> Self {
        Self {
            released: entries.into_iter().collect(),
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = ((Protocol, u16), u64)> + '_ {
        self.released.iter().map(|(k, v)| (*k, *v))
    }

    /// When `key` was released, if it is cooling (or not yet forgotten).
    pub fn get(&self, key: (Protocol, u16)) -> Option<u64> {
        self.released.get(&key).copied()
    }

    pub fn release(&mut self, protocol: Protocol, port: u16, now: u64) {
        self.released.insert((protocol, port), now);
    }

    /// Whether `port` was released less than `cooldown_secs` before `now`.
    /// A release time in the future (the clock went back) is still cooling;
    /// [`CoolDowns::prune`] moves it to the present.
    pub fn is_cooling(&self, protocol: Protocol, port: u16, now: u64, cooldown_secs: u64) -> bool {
        self.released
            .get(&(protocol, port))
            .is_some_and(|&at| cooldown_secs > 0 && now < at.saturating_add(cooldown_secs))
    }

    /// The cooling ports of `protocol` at `now`.
    pub fn cooling(&self, protocol: Protocol, now: u64, cooldown_secs: u64) -> BTreeSet<u16> {
        self.released
            .range((protocol, 0)..=(protocol, u16::MAX))
            .filter(|&(&(p, port), _)| self.is_cooling(p, port, now, cooldown_secs))
            .map(|(&(_, port), _)| port)
            .collect()
    }

    /// Forgets the entries whose cool-down is over and moves release times
    /// that lie in the future (the clock went back) to `now`, so a clock step
    /// never stretches a cool-down. Returns what changed: `None` for a
    /// forgotten entry, the new time for a moved one.
    pub fn prune(&mut self, now: u64, cooldown_secs: u64) -> Vec<((Protocol, u16), Option<u64>)> {
        let mut changed = Vec::new();
        self.released.retain(|&key, at| {
            if *at > now {
                *at = now;
                changed.push((key, Some(now)));
            }
            let keep = cooldown_secs > 0 && now < at.saturating_add(cooldown_secs);
            if !keep {
                changed.retain(|(k, _)| *k != key);
                changed.push((key, None));
            }
            keep
        });
        changed
    }

    pub fn len(&self) -> usize {
        self.released.len()
    }

    pub fn is_empty(&self) -> bool {
        self.released.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    fn policy(start: u16, end: u16) -> PortPolicy {
        PortPolicy {
            range: range(start, end),
            reserved: BTreeSet::new(),
            cooldown_secs: 300,
        }
    }

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn allocates_inside_the_range_starting_at_the_offset() {
        let p = policy(49153, 49162);
        let free = Taken::default();
        assert_eq!(allocate(&p, &free, 1, 0), Ok(range(49153, 49153)));
        assert_eq!(allocate(&p, &free, 1, 3), Ok(range(49156, 49156)));
        // The offset wraps around the range.
        assert_eq!(allocate(&p, &free, 1, 13), Ok(range(49156, 49156)));
    }

    #[test]
    fn skips_reserved_mapped_bound_and_cooling_ports_and_wraps() {
        let mut p = policy(100, 105);
        p.reserved = set(&[103]);
        let taken = Taken {
            mapped: set(&[104]),
            bound: set(&[105]),
            cooling: set(&[100]),
        };
        assert_eq!(allocate(&p, &taken, 1, 3), Ok(range(101, 101)));
        assert_eq!(allocate(&p, &taken, 1, 2), Ok(range(102, 102)));
    }

    #[test]
    fn a_block_is_contiguous_and_never_straddles_a_taken_port() {
        let p = policy(100, 109);
        let taken = Taken {
            mapped: set(&[103, 107]),
            ..Default::default()
        };
        // Only 100-102 and 104-106 can hold three.
        for offset in 0..20 {
            let got = allocate(&p, &taken, 3, offset).unwrap();
            assert!(got == range(100, 102) || got == range(104, 106), "{got:?}");
        }
        allocate(&p, &taken, 4, 0).unwrap_err();
    }

    #[test]
    fn a_block_as_large_as_the_range_takes_all_of_it() {
        let p = policy(100, 104);
        assert_eq!(allocate(&p, &Taken::default(), 5, 77), Ok(range(100, 104)));
        allocate(&p, &Taken::default(), 6, 0).unwrap_err();
    }

    #[test]
    fn exhaustion_counts_each_port_once_by_reason() {
        let mut p = policy(1000, 1009);
        p.reserved = set(&[1000, 1001, 22]);
        let taken = Taken {
            mapped: set(&[1001, 1002, 1003]),
            bound: set(&[1003, 1004]),
            cooling: set(&[1004, 1005, 1006, 1007, 1008, 1009]),
        };
        let err = allocate(&p, &taken, 1, 0).unwrap_err();
        assert_eq!(
            err,
            Exhausted {
                range: range(1000, 1009),
                count: 1,
                reserved: 2,
                in_use: 3,
                cooling: 5
            }
        );
        assert_eq!(
            format!("{err} {}", err.counts()),
            "no free host port in 1000-1009 (2 reserved, 3 in use, 5 cooling down)"
        );
        let err = allocate(&p, &Taken::default(), 10, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free block of 10 contiguous host ports in 1000-1009"
        );
    }

    #[test]
    fn cool_down_lasts_exactly_its_length() {
        let mut c = CoolDowns::default();
        c.release(Protocol::Tcp, 8080, 1000);
        assert!(c.is_cooling(Protocol::Tcp, 8080, 1000, 300));
        assert!(c.is_cooling(Protocol::Tcp, 8080, 1299, 300));
        assert!(!c.is_cooling(Protocol::Tcp, 8080, 1300, 300));
        assert!(!c.is_cooling(Protocol::Udp, 8080, 1000, 300));
        assert!(!c.is_cooling(Protocol::Tcp, 8080, 1000, 0));
        assert_eq!(c.cooling(Protocol::Tcp, 1100, 300), set(&[8080]));
        assert!(c.cooling(Protocol::Udp, 1100, 300).is_empty());
    }

    #[test]
    fn a_release_in_the_future_cools_from_now_after_pruning() {
        let mut c = CoolDowns::default();
        c.release(Protocol::Tcp, 8080, 10_000);
        // The clock went back an hour: still cooling, but not for an hour more.
        assert!(c.is_cooling(Protocol::Tcp, 8080, 6_400, 300));
        assert_eq!(
            c.prune(6_400, 300),
            vec![((Protocol::Tcp, 8080), Some(6_400))]
        );
        assert!(c.is_cooling(Protocol::Tcp, 8080, 6_699, 300));
        assert!(!c.is_cooling(Protocol::Tcp, 8080, 6_700, 300));
    }

    #[test]
    fn prune_forgets_only_finished_cool_downs() {
        let mut c = CoolDowns::default();
        c.release(Protocol::Tcp, 1, 100);
        c.release(Protocol::Udp, 2, 200);
        assert_eq!(c.prune(400, 250), vec![((Protocol::Tcp, 1), None)]);
        assert_eq!(c.entries().collect::<Vec<_>>(), [((Protocol::Udp, 2), 200)]);
        // With no cool-down nothing is kept.
        assert_eq!(c.prune(200, 0), vec![((Protocol::Udp, 2), None)]);
        assert!(c.is_empty());
    }
}
