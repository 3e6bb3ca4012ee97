//! `BERTH_PORT_ADDRS6`: each bridge port's own IPv6 addresses, one entry
//! per (port, address), as [`super::ports`] learns them (with the IPv4
//! ones) from the port's veth peer. The datapath lets a container claim
//! these by neighbour discovery (`ebpf/src/l2.rs`).
use std::{collections::BTreeMap, net::Ipv6Addr};

use aya::maps::{HashMap, MapData, MapError};
use berth_maps::PortAddr6;

pub(super) struct PortAddrs6Map {
    map: HashMap<MapData, PortAddr6, u32>,
}

fn key(port: u32, a: Ipv6Addr) -> PortAddr6 {
    PortAddr6 {
        ifindex: port,
        addr: a.octets(),
    }
}

impl PortAddrs6Map {
    /// The map and what it holds (a restarted daemon adopts the pinned
    /// one), port by port.
    pub(super) fn adopt(
        map: HashMap<MapData, PortAddr6, u32>,
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
        (Self { map }, held)
    }

    /// Port `port` holds `after` where it held `before`: the new entries
    /// first, then the old ones go. On a failed insert the entries this
    /// call added are taken back and the port keeps `before`.
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
        for a in before.iter().filter(|a| !after.contains(a)) {
            match self.map.remove(&key(port, *a)) {
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                other => other?,
            }
        }
        Ok(())
    }
}
