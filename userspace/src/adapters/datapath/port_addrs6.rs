//! `BERTH_PORT_ADDRS6`: each bridge port's own IPv6 addresses, one entry
//! per (port, address), as [`super::ports`] learns them (with the IPv4
//! ones) from the port's veth peer. The datapath lets a container claim
//! these by neighbour discovery (`ebpf/src/l2.rs`). The same addresses
//! go to `BERTH_PORT_LIST6` as one list per port, by which the veth
//! judges find a task registered with IPv6 only (`ebpf/src/port_ep6.rs`).
use std::{collections::BTreeMap, net::Ipv6Addr};

use aya::maps::{HashMap, MapData, MapError};
use berth_maps::{PortAddr6, PortAddrs6, PORT_ADDRS_MAX};

pub(super) struct PortAddrs6Map {
    map: HashMap<MapData, PortAddr6, u32>,
    /// `BERTH_PORT_LIST6`.
    list: HashMap<MapData, u32, PortAddrs6>,
}

fn encode(addrs: &[Ipv6Addr]) -> PortAddrs6 {
    let mut p = PortAddrs6::default();
    for (slot, a) in p.addrs.iter_mut().zip(addrs) {
        *slot = a.octets();
    }
    p.len = addrs.len().min(PORT_ADDRS_MAX) as u32;
    p
}

fn ignore_enoent(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn key(port: u32, a: Ipv6Addr) -> PortAddr6 {
    PortAddr6 {
        ifindex: port,
        addr: a.octets(),
    }
}

impl PortAddrs6Map {
    /// The map and what it holds (a restarted daemon adopts the pinned
    /// one), port by port; the lists are written again from it (pins from
    /// before `BERTH_PORT_LIST6` have none) and lists of ports it does not
    /// hold go.
    pub(super) fn adopt(
        map: HashMap<MapData, PortAddr6, u32>,
        mut list: HashMap<MapData, u32, PortAddrs6>,
    ) -> (Self, BTreeMap<u32, Vec<Ipv6Addr>>) {
        let mut held: BTreeMap<u32, Vec<Ipv6Addr>> = BTreeMap::new();
        for k in map.keys().filter_map(Result::ok) {
            held.entry(k.ifindex)
                .or_default()
                .push(Ipv6Addr::from(k.addr));
        }
        for a in held.values_mut() {
            a.sort();
        }
        let stale: Vec<u32> = list
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !held.contains_key(p))
            .collect();
        for p in stale {
            let _ = list.remove(&p);
        }
        for (port, addrs) in &held {
            if let Err(e) = list.insert(*port, encode(addrs), 0) {
                tracing::warn!(ifindex = port, error = %e, "writing the port's IPv6 address list");
            }
        }
        (Self { map, list }, held)
    }

    /// Port `port` holds `after` where it held `before`: the new entries
    /// first, then its list, then the old entries go. On a failed insert
    /// the entries this call added are taken back and the port keeps
    /// `before`.
    pub(super) fn replace(
        &mut self,
        port: u32,
        before: &[Ipv6Addr],
        after: &[Ipv6Addr],
    ) -> Result<(), MapError> {
        let added: Vec<Ipv6Addr> = after
            .iter()
            .filter(|a| !before.contains(a))
            .copied()
            .collect();
        for (i, a) in added.iter().enumerate() {
            if let Err(e) = self.map.insert(key(port, *a), 1, 0) {
                for b in &added[..i] {
                    let _ = self.map.remove(&key(port, *b));
                }
                return Err(e);
            }
        }
        // The list as the entries say, before the old entries go: a
        // failed write takes this call's entries back too.
        let listed = if after.is_empty() {
            ignore_enoent(self.list.remove(&port))
        } else {
            self.list.insert(port, encode(after), 0)
        };
        if let Err(e) = listed {
            for b in &added {
                let _ = self.map.remove(&key(port, *b));
            }
            return Err(e);
        }
        for a in before.iter().filter(|a| !after.contains(a)) {
            ignore_enoent(self.map.remove(&key(port, *a)))?;
        }
        Ok(())
    }
}
