//! Which task a container's port carries, found by the port's IPv6
//! addresses: a task registered with IPv6 only (`--ip6` without `--ip`, or
//! CNI on an IPv6-only network) has no IPv4 endpoint, so its port's IPv4
//! addresses (`BERTH_PORT_ADDRS`) name no task with policy, yet its groups
//! must hold at its veth. The daemon keeps each port's learned global IPv6
//! addresses as one list (`BERTH_PORT_LIST6`, beside `BERTH_PORT_ADDRS6`);
//! `policy6::port_endpoint` asks here when the IPv4 ones name no task with
//! policy. It is a property of the port, never of a packet's addresses: a
//! container does not leave its rules by sending from an address it does
//! not hold.
//!
//! The IPv4 judges (`policy.rs`) still go by the packets' addresses: IPv4
//! of a port whose only policy endpoint is IPv6 is not judged by that
//! task's rules (not yet: it would cost every IPv4 packet of a port without
//! policy a lookup here).
use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, macros::map, maps::HashMap};
use berth_maps::{PortAddrs6, PORT_ADDRS_CAPACITY, PORT_ADDRS_MAX};

use crate::rules6::endpoint6_with_policy;

/// Each port's IPv6 addresses as a list (`berth_maps::PORT_LIST6_MAP`).
#[map]
pub(crate) static BERTH_PORT_LIST6: HashMap<u32, PortAddrs6> =
    HashMap::pinned(PORT_ADDRS_CAPACITY, BPF_F_NO_PREALLOC);

/// [`port_endpoint6`]: the port has no IPv6 list.
pub(crate) const EP6_NONE: u64 = u64::MAX;
/// [`port_endpoint6`]: none of the port's IPv6 addresses has policy.
pub(crate) const EP6_OPEN: u64 = u64::MAX - 1;

/// The endpoint with policy among port `ifindex`'s IPv6 addresses, as
/// `task_id << 32 | flags`, else [`EP6_NONE`] or [`EP6_OPEN`]: a plain
/// integer across the call, and a subprogram of its own, so the judges
/// pay its loop once in the verifier and only where the IPv4 addresses
/// named no task.
#[inline(never)]
pub(crate) fn port_endpoint6(ifindex: u32) -> u64 {
    let Some(p) = (unsafe { BERTH_PORT_LIST6.get(&ifindex) }) else {
        return EP6_NONE;
    };
    let mut i = 0;
    while i < PORT_ADDRS_MAX {
        if (i as u32) < p.len {
            if let Some(ep) = endpoint6_with_policy(&p.addrs[i]) {
                return (u64::from(ep.task_id) << 32) | u64::from(ep.flags);
            }
        }
        i += 1;
    }
    EP6_OPEN
}
