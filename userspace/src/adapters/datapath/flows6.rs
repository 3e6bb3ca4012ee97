//! The IPv6 security-group flow tables (`BERTH_CT6`, `BERTH_CT6_NEW`):
//! forgotten once idle past their protocol's timeout, as the IPv4 ones
//! (`flows.rs`, whose batch scan and delete they share). Their entries
//! are `CtEntry`s, so the same timeouts read the same flag bits.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{HashMap, IterableMap as _, MapData};
use berth_maps::{CtEntry, FlowKey6};

use super::{
    flows::{batch_delete, batch_scan_keyed, flow_timeout, FlowTable},
    DatapathError, FlowTimeouts,
};

/// One IPv6 policy flow table.
pub(super) struct FlowMap6 {
    pub name: &'static str,
    pub table: FlowTable,
    pub map: HashMap<MapData, FlowKey6, CtEntry>,
}

/// Forgets the flows of `tables` idle past their timeout at `now_ns`;
/// returns how many.
pub(super) fn expire6(
    tables: &[FlowMap6],
    now_ns: u64,
    t: &FlowTimeouts,
) -> Result<usize, DatapathError> {
    let mut total = 0;
    for m in tables {
        let fd = m.map.map().fd().as_fd().as_raw_fd();
        let err = |e: std::io::Error| DatapathError::Map {
            map: m.name,
            reason: e.to_string(),
        };
        let mut idle: Vec<FlowKey6> = Vec::new();
        batch_scan_keyed(fd, |k: &FlowKey6, v: &CtEntry| {
            if expired(k, v, m.table, now_ns, t) {
                idle.push(*k);
            }
        })
        .map_err(err)?;
        total += batch_delete(fd, &idle).map_err(err)?;
    }
    Ok(total)
}

fn expired(k: &FlowKey6, v: &CtEntry, table: FlowTable, now_ns: u64, t: &FlowTimeouts) -> bool {
    let timeout_s = flow_timeout(k.proto, v.flags, table, t);
    now_ns.saturating_sub(v.last_seen_ns) > timeout_s * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use berth_maps::{CT_F_CLOSING, PROTO_TCP, PROTO_UDP};

    use super::*;

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
}
