//! The IPv6 flow tables: the security-group ones (`BERTH_CT6`,
//! `BERTH_CT6_NEW`) and the published-port ones (`BERTH_NAT6`,
//! `BERTH_NAT6_NEW`), forgotten once idle past their protocol's timeout,
//! and the latter also with the binding that let them in, as the IPv4
//! ones (`flows.rs`, whose batch scan and delete they share). Their
//! entries carry the IPv4 entries' flag bits, so the same timeouts apply.
use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use berth_maps::{CtEntry, FlowKey6, NatEntry6};

use super::{
    flows::{batch_delete, batch_scan_keyed, flow_timeout, FlowTable},
    DatapathError, FlowTimeouts,
};
use crate::domain::model::Binding;

/// One IPv6 flow table: policy tracking ([`CtEntry`]) or published ports
/// ([`NatEntry6`]).
pub(super) struct FlowMap6<V: aya::Pod = CtEntry> {
    pub name: &'static str,
    pub table: FlowTable,
    pub map: HashMap<MapData, FlowKey6, V>,
}

/// Deletes every entry of `tables` that `doomed` picks; returns how many.
/// As [`super::flows::sweep`]: entries the datapath adds meanwhile may or
/// may not be seen.
pub(super) fn sweep6<V: aya::Pod + Default>(
    tables: &[FlowMap6<V>],
    doomed: impl Fn(&FlowKey6, &V, FlowTable) -> bool,
) -> Result<usize, DatapathError> {
    let mut total = 0;
    for m in tables {
        let fd = m.map.map().fd().as_fd().as_raw_fd();
        let err = |e: std::io::Error| DatapathError::Map {
            map: m.name,
            reason: e.to_string(),
        };
        let mut picked: Vec<FlowKey6> = Vec::new();
        batch_scan_keyed(fd, |k: &FlowKey6, v: &V| {
            if doomed(k, v, m.table) {
                picked.push(*k);
            }
        })
        .map_err(err)?;
        total += batch_delete(fd, &picked).map_err(err)?;
    }
    Ok(total)
}

/// The IPv6 policy-tracked flows with any of `addrs` at either end, as a
/// predicate for [`sweep6`] over `BERTH_CT6`(_NEW) (IPv4's
/// `flows::touching`).
pub(super) fn touching6(
    addrs: &[std::net::Ipv6Addr],
) -> impl Fn(&FlowKey6, &CtEntry, FlowTable) -> bool {
    let addrs: HashSet<[u8; 16]> = addrs.iter().map(std::net::Ipv6Addr::octets).collect();
    move |k, _, _| addrs.contains(&k.src_addr) || addrs.contains(&k.dst_addr)
}

/// What an IPv6 binding owns in `BERTH_NAT6`(_NEW), whose keys are the
/// reply tuple as the container sends it: the container side of the tuple
/// and the host port the flow came in on (the IPv6 `FlowOwner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FlowOwner6 {
    proto: u8,
    ctr_addr: [u8; 16],
    ctr_port_be: u16,
    host_port_be: u16,
}

impl FlowOwner6 {
    /// `None` for an IPv4 binding.
    pub(super) fn of_binding(b: &Binding) -> Option<Self> {
        Some(Self {
            proto: b.protocol.ip_proto(),
            ctr_addr: b.container_ip6()?.octets(),
            ctr_port_be: b.container_port.to_be(),
            host_port_be: b.host_port.to_be(),
        })
    }

    fn of_flow(k: &FlowKey6, v: &NatEntry6) -> Self {
        Self {
            proto: k.proto,
            ctr_addr: k.src_addr,
            ctr_port_be: k.src_port_be,
            host_port_be: v.host_port_be,
        }
    }
}

/// The IPv6 published-port flows owned by any of `gone`, as a predicate
/// for [`sweep6`].
pub(super) fn owned_by6(gone: &[Binding]) -> impl Fn(&FlowKey6, &NatEntry6, FlowTable) -> bool {
    let owners: HashSet<FlowOwner6> = gone.iter().filter_map(FlowOwner6::of_binding).collect();
    move |k, v, _| owners.contains(&FlowOwner6::of_flow(k, v))
}

/// The IPv6 published-port flows owned by none of `keep`: at start, what
/// bindings the store no longer has left behind.
pub(super) fn owned_by_none_of6(
    keep: &[Binding],
) -> impl Fn(&FlowKey6, &NatEntry6, FlowTable) -> bool {
    let owners: HashSet<FlowOwner6> = keep.iter().filter_map(FlowOwner6::of_binding).collect();
    move |k, v, _| !owners.contains(&FlowOwner6::of_flow(k, v))
}

/// Whether an IPv6 published-port flow has been idle past its timeout.
pub(super) fn nat6_expired(
    k: &FlowKey6,
    v: &NatEntry6,
    table: FlowTable,
    now_ns: u64,
    t: &FlowTimeouts,
) -> bool {
    let timeout_s = flow_timeout(k.proto, v.flags, table, t);
    now_ns.saturating_sub(v.last_seen_ns) > timeout_s * 1_000_000_000
}

/// Forgets the flows of `tables` idle past their timeout at `now_ns`;
/// returns how many.
pub(super) fn expire6(
    tables: &[FlowMap6],
    now_ns: u64,
    t: &FlowTimeouts,
) -> Result<usize, DatapathError> {
    sweep6(tables, |k, v, table| expired(k, v, table, now_ns, t))
}

fn expired(k: &FlowKey6, v: &CtEntry, table: FlowTable, now_ns: u64, t: &FlowTimeouts) -> bool {
    let timeout_s = flow_timeout(k.proto, v.flags, table, t);
    now_ns.saturating_sub(v.last_seen_ns) > timeout_s * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use berth_maps::{CT_F_CLOSING, NAT_F_REPLIED, PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::domain::model::Protocol;

    fn binding6(ctr: Ipv6Addr, host_port: u16, protocol: Protocol) -> Binding {
        Binding {
            task: "t".into(),
            container_ip: ctr.into(),
            bind_ip: Ipv6Addr::UNSPECIFIED.into(),
            host_port,
            container_port: 80,
            protocol,
            ecs: Default::default(),
            cni: None,
            docker_events: false,
        }
    }

    /// A flow of `ctr`:80 that came in on host port `host_port`, keyed as
    /// the datapath keys it (the container's reply tuple).
    fn nat6_flow(ctr: Ipv6Addr, host_port: u16, proto: u8) -> (FlowKey6, NatEntry6) {
        let k = FlowKey6 {
            src_addr: ctr.octets(),
            dst_addr: Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1).octets(),
            src_port_be: 80u16.to_be(),
            dst_port_be: 40000u16.to_be(),
            proto,
            _pad: [0; 3],
        };
        let v = NatEntry6 {
            host_port_be: host_port.to_be(),
            ..Default::default()
        };
        (k, v)
    }

    #[test]
    fn a_removed_ipv6_bindings_flows_are_its_own_and_no_one_elses() {
        let a: Ipv6Addr = "fd00:b::2".parse().unwrap();
        let b: Ipv6Addr = "fd00:b::3".parse().unwrap();
        let gone = [binding6(a, 8080, Protocol::Tcp)];
        let doomed = owned_by6(&gone);
        let picks = |(k, v): (FlowKey6, NatEntry6)| doomed(&k, &v, FlowTable::Established);
        assert!(picks(nat6_flow(a, 8080, PROTO_TCP)));
        assert!(!picks(nat6_flow(b, 8080, PROTO_TCP)), "other container");
        assert!(!picks(nat6_flow(a, 8081, PROTO_TCP)), "other host port");
        assert!(!picks(nat6_flow(a, 8080, PROTO_UDP)), "other protocol");
        // An IPv4 binding owns nothing here.
        let v4 = Binding {
            container_ip: std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
            bind_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            ..binding6(a, 8080, Protocol::Tcp)
        };
        assert!(FlowOwner6::of_binding(&v4).is_none());
        // At start: what no stored binding owns goes, the rest stays.
        let stray = owned_by_none_of6(&gone);
        assert!(!stray(
            &nat6_flow(a, 8080, PROTO_TCP).0,
            &nat6_flow(a, 8080, PROTO_TCP).1,
            FlowTable::Embryonic
        ));
        let (k, v) = nat6_flow(b, 9090, PROTO_UDP);
        assert!(stray(&k, &v, FlowTable::Embryonic));
    }

    #[test]
    fn ipv6_published_port_flows_expire_by_their_protocols_timeouts() {
        let t = FlowTimeouts::default();
        let s = 1_000_000_000;
        let ctr: Ipv6Addr = "fd00:b::2".parse().unwrap();
        let flow = |proto, flags| {
            let (k, mut v) = nat6_flow(ctr, 8080, proto);
            v.last_seen_ns = 10 * s;
            v.flags = flags;
            (k, v)
        };
        let (est, new) = (FlowTable::Established, FlowTable::Embryonic);
        let (k, v) = flow(PROTO_TCP, 0);
        assert!(!nat6_expired(&k, &v, est, (10 + t.tcp_established) * s, &t));
        assert!(nat6_expired(&k, &v, est, (11 + t.tcp_established) * s, &t));
        // A handshake that never finished goes after the SYN timeout.
        assert!(nat6_expired(&k, &v, new, (11 + t.tcp_syn) * s, &t));
        let (k, v) = flow(PROTO_UDP, NAT_F_REPLIED);
        assert!(!nat6_expired(&k, &v, est, (10 + t.udp_stream) * s, &t));
        assert!(nat6_expired(&k, &v, est, (11 + t.udp_stream) * s, &t));
        let (k, v) = flow(PROTO_UDP, 0);
        assert!(nat6_expired(&k, &v, new, (11 + t.udp_single) * s, &t));
        assert!(!nat6_expired(&k, &v, new, (10 + t.udp_single) * s, &t));
    }

    #[test]
    fn ipv6_policy_flows_expire_by_their_protocols_timeouts() {
        let t = FlowTimeouts::default();
        let s = 1_000_000_000;
        let key = |proto| FlowKey6 {
            proto,
            ..Default::default()
        };
        let entry = |flags| CtEntry {
            last_seen_ns: 10 * s,
            flags,
            ..Default::default()
        };
        let est = FlowTable::Established;
        // An established TCP flow lives for days; a closing one a minute.
        assert!(!expired(&key(PROTO_TCP), &entry(0), est, 3_600 * s, &t));
        assert!(expired(
            &key(PROTO_TCP),
            &entry(CT_F_CLOSING),
            est,
            (10 + t.tcp_closing + 1) * s,
            &t
        ));
        // An unanswered UDP flow, its 30 s.
        let new = FlowTable::Embryonic;
        assert!(!expired(
            &key(PROTO_UDP),
            &entry(0),
            new,
            (10 + t.udp_single) * s,
            &t
        ));
        assert!(expired(
            &key(PROTO_UDP),
            &entry(0),
            new,
            (11 + t.udp_single) * s,
            &t
        ));
    }

    #[test]
    fn an_endpoints_policy_flows_are_picked_at_either_end_only() {
        let gone = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let stays = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
        let peer = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);
        let key = |src: Ipv6Addr, dst: Ipv6Addr| FlowKey6 {
            src_addr: src.octets(),
            dst_addr: dst.octets(),
            proto: PROTO_UDP,
            ..Default::default()
        };
        let doomed = touching6(&[gone]);
        let e = CtEntry::default();
        let t = FlowTable::Established;
        assert!(doomed(&key(gone, peer), &e, t));
        assert!(doomed(&key(peer, gone), &e, FlowTable::Embryonic));
        assert!(!doomed(&key(stays, peer), &e, t));
        assert!(!doomed(&key(peer, stays), &e, t));
        assert!(!touching6(&[])(&key(gone, peer), &e, t));
    }
}
