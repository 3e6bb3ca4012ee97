//! The one service lookup: which container a (protocol, host address,
//! host port) is published to. Used by the uplink ingress, by ICMP errors
//! about replies (their quoted source is a host address and port) and by
//! the cgroup socket hooks.
use berth_maps::{exact_ports_slot, Backend, ServiceKey, CONFIG_WILDCARD_ONLY};

use crate::maps::{BERTH_CONFIG, BERTH_EXACT_PORTS, BERTH_HOST_ADDRS, BERTH_SERVICES};

/// A mapping found for a packet, before anyone asked whether its address
/// is the host's.
#[derive(Clone, Copy)]
pub(crate) struct Service {
    pub backend: Backend,
    /// Found on the wildcard address (0.0.0.0), which covers only the
    /// host's own addresses: whoever acts on it for a new flow checks
    /// [`is_host_addr`] first.
    pub wildcard: bool,
}

/// A mapping on this exact host address first, then the wildcard one.
/// The exact probe is skipped where `BERTH_EXACT_PORTS` says no mapping
/// on a specific address publishes this port, or the daemon has flagged
/// that none does at all: an array slot is a load, a hash probe a hash of
/// the key. The uplink ingress checks the address only for a packet that
/// opens a flow (an established flow's entry holds the host address its
/// first packet was checked with, and the daemon ends the flows of an
/// address the host no longer has), so an established packet costs one
/// lookup here, not two.
#[inline(always)]
pub(crate) fn service_find(proto: u8, addr_be: u32, port_be: u16) -> Option<Service> {
    let mut key = ServiceKey {
        host_addr_be: addr_be,
        host_port_be: port_be,
        proto,
        _pad: 0,
    };
    if exact_port(proto, port_be) && !wildcard_only() {
        if let Some(b) = unsafe { BERTH_SERVICES.get(&key) } {
            return Some(Service {
                backend: *b,
                wildcard: false,
            });
        }
    }
    key.host_addr_be = 0;
    let b = unsafe { BERTH_SERVICES.get(&key) }.copied()?;
    Some(Service {
        backend: b,
        wildcard: true,
    })
}

/// [`service_find`] with the address check done: a wildcard mapping
/// answers only on the host's own addresses. `local` says the caller knows
/// `addr_be` is one (loopback, for the socket hooks); otherwise
/// `BERTH_HOST_ADDRS` decides, so traffic merely routed through the host
/// is never taken.
#[inline(always)]
pub(crate) fn service_lookup(
    proto: u8,
    addr_be: u32,
    port_be: u16,
    local: bool,
) -> Option<Backend> {
    let s = service_find(proto, addr_be, port_be)?;
    // Last: a port nothing is published on (most of what reaches an
    // uplink) costs two lookups, not three.
    if s.wildcard && !local && !is_host_addr(addr_be) {
        return None;
    }
    Some(s.backend)
}

/// Whether `addr_be` is one of the host's own addresses (as the daemon
/// last synced them).
#[inline(always)]
pub(crate) fn is_host_addr(addr_be: u32) -> bool {
    unsafe { BERTH_HOST_ADDRS.get(&addr_be) }.is_some()
}

#[inline(always)]
fn wildcard_only() -> bool {
    BERTH_CONFIG
        .get(CONFIG_WILDCARD_ONLY)
        .is_some_and(|v| *v != 0)
}

/// The mapping an IPv6 packet to `addr`:`port_be` is for: this exact host
/// address, then the wildcard (`::`), and whether it was the wildcard (the
/// caller asks `BERTH_HOST_ADDRS6` when a flow opens, as for IPv4).
#[inline(always)]
pub(crate) fn service_find6(
    proto: u8,
    addr: &[u8; 16],
    port_be: u16,
) -> Option<(berth_maps::Backend6, bool)> {
    let mut key: berth_maps::ServiceKey6 = unsafe { core::mem::zeroed() };
    key.host_addr = *addr;
    key.host_port_be = port_be;
    key.proto = proto;
    if let Some(b) = unsafe { crate::maps::BERTH_SERVICES6.get(&key) } {
        return Some((*b, false));
    }
    key.host_addr = [0; 16];
    unsafe { crate::maps::BERTH_SERVICES6.get(&key) }.map(|b| (*b, true))
}

#[inline(always)]
fn exact_port(proto: u8, port_be: u16) -> bool {
    let (i, bit) = exact_ports_slot(proto, u16::from_be(port_be));
    BERTH_EXACT_PORTS.get(i).is_some_and(|w| *w & bit != 0)
}
