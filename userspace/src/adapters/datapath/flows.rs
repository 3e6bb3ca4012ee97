//! The flow tables: which one an entry lives in, when it is idle past its
//! timeout, and sweeping them: one pass over each table, a batch of entries
//! per syscall, deleting the entries a predicate picks.
//!
//! Per-key iteration costs two syscalls per entry (next key, lookup); a full
//! table is 262 144 entries, and forgetting a 1 000-port range's flows used to
//! walk it once per binding. `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_DELETE_BATCH`
//! (hash maps, Linux 5.6+; berth needs 6.6) move thousands of entries per
//! syscall, and the caller decides for a whole request in one pass.
//!
//! aya 0.14 has no batch operations, so this module issues them itself on
//! the map's fd; the typed aya handle still checks key and value sizes when
//! the map is taken from the object. The policy tables (`BERTH_CT`,
//! `BERTH_CT_NEW`) share the key, so the same sweep serves them.
use std::{
    collections::HashSet,
    io,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use berth_maps::{CtEntry, FlowKey, NatEntry, NatFwd, NAT_F_CLOSING, NAT_F_REPLIED, PROTO_TCP};

use super::{DatapathError, FlowTimeouts};
use crate::domain::model::Binding;

/// Entries moved per lookup syscall. A hash bucket must fit whole, so the
/// kernel answers ENOSPC when one does not; the buffer then grows.
const BATCH: usize = 4096;
const BATCH_MAX: usize = 1 << 20;

/// One table of tracked flows keyed by a tuple: the published-port tables
/// (`BERTH_NAT`, `BERTH_NAT_NEW`: the tuple as the container sends it, a
/// [`NatEntry`]) or the policy tables (`BERTH_CT`, `BERTH_CT_NEW`: the tuple
/// as the flow's initiator sends it, a [`CtEntry`]).
pub(super) struct FlowMap<V: aya::Pod> {
    pub name: &'static str,
    /// Established or not: expiry's timeouts differ.
    pub table: FlowTable,
    pub map: HashMap<MapData, FlowKey, V>,
}

/// What a removed binding owns in a flow table: the container side of the
/// tuple and the host port the flow came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FlowOwner {
    proto: u8,
    ctr_addr_be: u32,
    ctr_port_be: u16,
    host_port_be: u16,
}

impl FlowOwner {
    /// `None` for an IPv6 binding: these tables hold IPv4 flows only.
    pub(super) fn of_binding(b: &Binding) -> Option<Self> {
        Some(Self {
            proto: b.protocol.ip_proto(),
            ctr_addr_be: u32::from_ne_bytes(b.container_ip4()?.octets()),
            ctr_port_be: b.container_port.to_be(),
            host_port_be: b.host_port.to_be(),
        })
    }

    fn of_flow(k: &FlowKey, v: &NatEntry) -> Self {
        Self {
            proto: k.proto,
            ctr_addr_be: k.src_addr_be,
            ctr_port_be: k.src_port_be,
            host_port_be: v.host_port_be,
        }
    }
}

/// The flows owned by any of `gone`, as a predicate for [`sweep`].
pub(super) fn owned_by(gone: &[Binding]) -> impl Fn(&FlowKey, &NatEntry, FlowTable) -> bool {
    let owners: HashSet<FlowOwner> = gone.iter().filter_map(FlowOwner::of_binding).collect();
    move |k, v, _| owners.contains(&FlowOwner::of_flow(k, v))
}

/// The flows owned by none of `keep`, as a predicate for [`sweep`]: at
/// start, what bindings the store no longer has left behind (a sweep lost
/// to a crash, a reset store).
pub(super) fn owned_by_none_of(
    keep: &[Binding],
) -> impl Fn(&FlowKey, &NatEntry, FlowTable) -> bool {
    let owners: HashSet<FlowOwner> = keep.iter().filter_map(FlowOwner::of_binding).collect();
    move |k, v, _| !owners.contains(&FlowOwner::of_flow(k, v))
}

/// The published-port flows that came in on one of `gone` (host addresses
/// the host no longer has), except those of an address-bound mapping
/// (`bound`: host address, port and protocol of each), as a predicate for
/// [`sweep`].
pub(super) fn on_addrs_gone(
    gone: HashSet<u32>,
    bound: HashSet<(u32, u16, u8)>,
) -> impl Fn(&FlowKey, &NatEntry, FlowTable) -> bool {
    move |k, v, _| {
        gone.contains(&v.host_addr_be)
            && !bound.contains(&(v.host_addr_be, v.host_port_be, k.proto))
    }
}

/// The policy-tracked flows with any of `addrs` at either end, as a
/// predicate for [`sweep`] over `BERTH_CT`(_NEW).
pub(super) fn touching(addrs: &[Ipv4Addr]) -> impl Fn(&FlowKey, &CtEntry, FlowTable) -> bool {
    let addrs: HashSet<u32> = addrs
        .iter()
        .map(|a| u32::from_ne_bytes(a.octets()))
        .collect();
    move |k, _, _| addrs.contains(&k.src_addr_be) || addrs.contains(&k.dst_addr_be)
}

/// Deletes every entry of `tables` that `doomed` picks; returns how many.
/// Entries the datapath adds or deletes meanwhile may or may not be seen,
/// which is fine for every caller: a removed binding gets no new flows, a
/// removed task's address gets no policy, and expiry runs again.
pub(super) fn sweep<V: aya::Pod + Default>(
    tables: &[FlowMap<V>],
    doomed: impl Fn(&FlowKey, &V, FlowTable) -> bool,
) -> Result<usize, DatapathError> {
    let mut total = 0;
    for t in tables {
        let fd = t.map.map().fd().as_fd().as_raw_fd();
        let err = |e: io::Error| DatapathError::Map {
            map: t.name,
            reason: e.to_string(),
        };
        let mut picked = Vec::new();
        batch_scan(fd, |k, v| {
            if doomed(k, v, t.table) {
                picked.push(*k);
            }
        })
        .map_err(err)?;
        total += batch_delete(fd, &picked).map_err(err)?;
    }
    Ok(total)
}

/// Calls `each` for every entry of one table, a batch per syscall.
pub(super) fn scan<V: aya::Pod + Default>(
    t: &FlowMap<V>,
    each: impl FnMut(&FlowKey, &V),
) -> Result<(), DatapathError> {
    let fd = t.map.map().fd().as_fd().as_raw_fd();
    batch_scan(fd, each).map_err(|e| DatapathError::Map {
        map: t.name,
        reason: e.to_string(),
    })
}

/// `union bpf_attr` for the `BPF_MAP`_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for the batch commands; the
    // pointers in it reference buffers that outlive the call and are as
    // large as `count` says.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<BatchAttr>(attr),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `each` for every entry of the hash map at `fd`.
pub(super) fn batch_scan<V: aya::Pod + Default>(
    fd: i32,
    each: impl FnMut(&FlowKey, &V),
) -> io::Result<()> {
    batch_scan_keyed(fd, each)
}

/// [`batch_scan`] for a table of any key (the IPv6 ones).
pub(super) fn batch_scan_keyed<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: i32,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut size = BATCH;
    let mut keys = vec![K::default(); size];
    let mut values = vec![V::default(); size];
    // The hash map's cursor is a bucket index, a u32.
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut cursor_in as u64 },
            out_batch: &raw mut cursor_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let res = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(size);
        match res {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                if size >= BATCH_MAX {
                    return Err(e);
                }
                size *= 2;
                keys.resize(size, K::default());
                values.resize(size, V::default());
                continue;
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
        for (k, v) in keys[..got].iter().zip(&values[..got]) {
            each(k, v);
        }
        if res.is_err() {
            return Ok(()); // ENOENT: no more buckets
        }
        cursor_in = cursor_out;
        first = false;
    }
}

/// Deletes `keys` from the hash map at `fd`; a key already gone (expired
/// meanwhile) is skipped. Returns how many were deleted.
pub(super) fn batch_delete<K: aya::Pod>(fd: i32, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let res = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(rest.len());
        deleted += done;
        match res {
            Ok(()) => rest = &rest[done..],
            // The kernel stops at the first key that is not there.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(done + 1..).unwrap_or_default()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

pub(super) fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Which flow table an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FlowTable {
    /// `BERTH_NAT` / `BERTH_CT`.
    Established,
    /// `BERTH_NAT_NEW` / `BERTH_CT_NEW`: the handshake (TCP) or the first
    /// reply (UDP, ICMP echo) has not happened yet.
    Embryonic,
}

/// The idle timeout, in seconds, of a tracked flow of protocol `proto`
/// with flags `flags` (the `NAT_F`_* and `CT_F`_* bits agree) in `table`.
pub(super) fn flow_timeout(proto: u8, flags: u8, table: FlowTable, t: &FlowTimeouts) -> u64 {
    let closing = flags & NAT_F_CLOSING != 0;
    match (proto, table) {
        (PROTO_TCP, FlowTable::Embryonic) if closing => t.tcp_syn.min(t.tcp_closing),
        (PROTO_TCP, FlowTable::Embryonic) => t.tcp_syn,
        (PROTO_TCP, FlowTable::Established) if closing => t.tcp_closing,
        (PROTO_TCP, FlowTable::Established) => t.tcp_established,
        (berth_maps::PROTO_ICMP | berth_maps::PROTO_ICMPV6, _) => t.icmp,
        // UDP, and any other protocol a security group tracks by its
        // addresses (GRE, IP-in-IP, SCTP, ...): a datagram stream, as
        // conntrack treats GRE.
        (_, FlowTable::Embryonic) => t.udp_single,
        (_, _) if flags & NAT_F_REPLIED != 0 => t.udp_stream,
        _ => t.udp_single,
    }
}

/// Whether a tracked published-port flow has been idle past its timeout.
pub(super) fn flow_expired(
    key: &FlowKey,
    e: &NatEntry,
    table: FlowTable,
    now_ns: u64,
    t: &FlowTimeouts,
) -> bool {
    let timeout_s = flow_timeout(key.proto, e.flags, table, t);
    now_ns.saturating_sub(e.last_seen_ns) > timeout_s * 1_000_000_000
}

/// The reply-tuple key of the flow a clash-remap entry belongs to.
pub(super) fn fwd_flow_key(wire: &FlowKey, f: &NatFwd) -> FlowKey {
    FlowKey {
        src_addr_be: f.backend_addr_be,
        dst_addr_be: wire.src_addr_be,
        src_port_be: f.backend_port_be,
        dst_port_be: f.remap_port_be,
        proto: wire.proto,
        _pad: [0; 3],
    }
}

/// Whether `e` (found under [`fwd_flow_key`]) is the flow of the remap
/// entry `wire`: the same host address and port and client port.
pub(super) fn fwd_owns(wire: &FlowKey, e: &NatEntry) -> bool {
    e.host_addr_be == wire.dst_addr_be
        && e.host_port_be == wire.dst_port_be
        && e.client_port_be == wire.src_port_be
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(host: [u8; 4], host_port: u16, proto: u8) -> (FlowKey, NatEntry) {
        let k = FlowKey {
            proto,
            ..Default::default()
        };
        let v = NatEntry {
            host_addr_be: u32::from_ne_bytes(host),
            host_port_be: host_port.to_be(),
            ..Default::default()
        };
        (k, v)
    }

    #[test]
    fn flows_of_a_gone_address_end_unless_an_address_bound_mapping_holds_them() {
        let gone = u32::from_ne_bytes([192, 0, 2, 7]);
        let bound = HashSet::from([(gone, 8443u16.to_be(), PROTO_TCP)]);
        let doomed = on_addrs_gone(HashSet::from([gone]), bound);
        let picks = |(k, v): (FlowKey, NatEntry)| doomed(&k, &v, FlowTable::Established);
        assert!(
            picks(flow([192, 0, 2, 7], 8080, PROTO_TCP)),
            "wildcard flow"
        );
        assert!(
            !picks(flow([192, 0, 2, 7], 8443, PROTO_TCP)),
            "address-bound mapping's flow"
        );
        assert!(
            picks(flow([192, 0, 2, 7], 8443, 17)),
            "same port, other protocol"
        );
        assert!(
            !picks(flow([192, 0, 2, 1], 8080, PROTO_TCP)),
            "an address still the host's"
        );
    }

    #[test]
    fn other_protocols_keep_udps_timeouts_and_icmp_keeps_its_own() {
        let t = FlowTimeouts {
            udp_single: 30,
            udp_stream: 180,
            icmp: 7,
            ..FlowTimeouts::default()
        };
        let (new, est) = (FlowTable::Embryonic, FlowTable::Established);
        for gre_like in [47, 4, 132, 50] {
            assert_eq!(flow_timeout(gre_like, 0, new, &t), 30);
            assert_eq!(flow_timeout(gre_like, NAT_F_REPLIED, est, &t), 180);
        }
        assert_eq!(
            flow_timeout(berth_maps::PROTO_ICMP, NAT_F_REPLIED, est, &t),
            7
        );
        assert_eq!(flow_timeout(berth_maps::PROTO_ICMPV6, 0, new, &t), 7);
    }
}
