//! The one service lookup: which container a (protocol, host address,
//! host port) is published to. Used by the uplink ingress, by ICMP errors
//! about replies (their quoted source is a host address and port) and by
//! the cgroup socket hooks.
use berth_maps::{Backend, ServiceKey, CONFIG_WILDCARD_ONLY};

use crate::maps::{BERTH_CONFIG, BERTH_HOST_ADDRS, BERTH_SERVICES};

/// A mapping on this exact host address first, then the wildcard one
/// (host address 0.0.0.0), which covers only the host's own addresses:
/// `local` says the caller knows `addr_be` is one (loopback, for the
/// socket hooks); otherwise `BERTH_HOST_ADDRS` decides, so traffic merely
/// routed through the host is never taken. Where the daemon has flagged
/// that no mapping names a host address, the exact probe is skipped: an
/// array slot is a load, a hash probe a hash of the key.
#[inline(always)]
pub(crate) fn service_lookup(
    proto: u8,
    addr_be: u32,
    port_be: u16,
    local: bool,
) -> Option<Backend> {
    let mut key = ServiceKey {
        host_addr_be: addr_be,
        host_port_be: port_be,
        proto,
        _pad: 0,
    };
    if !wildcard_only() {
        if let Some(b) = unsafe { BERTH_SERVICES.get(&key) } {
            return Some(*b);
        }
    }
    key.host_addr_be = 0;
    let b = unsafe { BERTH_SERVICES.get(&key) }.copied()?;
    // Last: a port nothing is published on (most of what reaches an
    // uplink) costs two lookups, not three.
    if !local {
        unsafe { BERTH_HOST_ADDRS.get(&addr_be) }?;
    }
    Some(b)
}

#[inline(always)]
fn wildcard_only() -> bool {
    BERTH_CONFIG
        .get(CONFIG_WILDCARD_ONLY)
        .is_some_and(|v| *v != 0)
}

/// The IPv6 service lookup: this exact host address, then the wildcard
/// (`::`). Unlike [`service_lookup`] it does not yet check that the
/// address is the host's own: nothing is translated on its answer until
/// NAT66 lands, which brings the IPv6 host-address set with it.
#[inline(always)]
pub(crate) fn service_lookup6(
    proto: u8,
    addr: &[u8; 16],
    port_be: u16,
) -> Option<berth_maps::Backend6> {
    let mut key: berth_maps::ServiceKey6 = unsafe { core::mem::zeroed() };
    key.host_addr = *addr;
    key.host_port_be = port_be;
    key.proto = proto;
    if let Some(b) = unsafe { crate::maps::BERTH_SERVICES6.get(&key) } {
        return Some(*b);
    }
    key.host_addr = [0; 16];
    unsafe { crate::maps::BERTH_SERVICES6.get(&key) }.copied()
}
