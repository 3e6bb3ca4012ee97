//! Filling and reading a daemon's pinned flow tables (`BERTH_NAT`, and the
//! policy table `BERTH_CT`) directly, for tests and benchmarks that need a
//! full table without a quarter of a million real connections.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use berth_maps::{CtEntry, FlowKey, NatEntry, CT_MAP, NAT_MAP, PROTO_TCP};

fn pinned<V: aya::Pod>(bpffs: &Path, name: &str) -> Result<HashMap<MapData, FlowKey, V>> {
    let path = bpffs.join("berth").join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    HashMap::try_from(Map::HashMap(data)).with_context(|| format!("{name} is not a hash map"))
}

fn nat_map(bpffs: &Path) -> Result<HashMap<MapData, FlowKey, NatEntry>> {
    pinned(bpffs, NAT_MAP)
}

/// Inserts `n` fresh established TCP flows from `from` (ports 1024…) to
/// `to`:80 into the pinned policy table `BERTH_CT`; returns how many.
pub fn insert_ct_flows(bpffs: &Path, from: Ipv4Addr, to: Ipv4Addr, n: u16) -> Result<usize> {
    let mut map = pinned::<CtEntry>(bpffs, CT_MAP)?;
    let value = CtEntry {
        last_seen_ns: monotonic_ns(),
        flags: berth_maps::CT_F_ESTABLISHED,
        wscale: [0xff; 2],
        ..Default::default()
    };
    for i in 0..n {
        let key = FlowKey {
            src_addr_be: u32::from_ne_bytes(from.octets()),
            dst_addr_be: u32::from_ne_bytes(to.octets()),
            src_port_be: (1024 + i).to_be(),
            dst_port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        map.insert(key, value, 0).context("filling BERTH_CT")?;
    }
    Ok(n as usize)
}

/// Entries in the pinned policy table `BERTH_CT` with `ip` at either end.
pub fn count_ct_flows_touching(bpffs: &Path, ip: Ipv4Addr) -> Result<usize> {
    let map = pinned::<CtEntry>(bpffs, CT_MAP)?;
    let addr = u32::from_ne_bytes(ip.octets());
    Ok(map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.src_addr_be == addr || k.dst_addr_be == addr)
        .count())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`, a valid timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// TCP flows from `clients` distinct client ports each, to every container
/// port of `ctr_ports` at `ctr_ip`, as if they came in on host port
/// `host_base + (ctr_port - ctr_ports.start)`: what a published range
/// `host_base-…:ctr_ports` collects. Fresh, so expiry leaves them be.
pub struct FlowFill {
    pub ctr_ip: Ipv4Addr,
    pub ctr_ports: std::ops::RangeInclusive<u16>,
    pub host_base: u16,
    pub client_ip: Ipv4Addr,
    pub per_port: u32,
}

impl FlowFill {
    fn entries(&self) -> impl Iterator<Item = (FlowKey, NatEntry)> + '_ {
        let now = monotonic_ns();
        let start = *self.ctr_ports.start();
        self.ctr_ports.clone().flat_map(move |ctr_port| {
            (0..self.per_port).map(move |i| {
                let key = FlowKey {
                    src_addr_be: u32::from_ne_bytes(self.ctr_ip.octets()),
                    // Client addresses vary too, so 65 535 ports are no limit.
                    dst_addr_be: u32::from_ne_bytes(self.client_ip.octets())
                        .wrapping_add((i / 60_000).to_be()),
                    src_port_be: ctr_port.to_be(),
                    dst_port_be: (1024 + (i % 60_000) as u16).to_be(),
                    proto: PROTO_TCP,
                    _pad: [0; 3],
                };
                let value = NatEntry {
                    host_addr_be: 0,
                    host_port_be: (self.host_base + (ctr_port - start)).to_be(),
                    last_seen_ns: now,
                    ..Default::default()
                };
                (key, value)
            })
        })
    }

    /// Inserts the flows into the table pinned under `bpffs`; returns how many.
    pub fn insert(&self, bpffs: &Path) -> Result<usize> {
        let mut map = nat_map(bpffs)?;
        let mut n = 0;
        for (k, v) in self.entries() {
            map.insert(k, v, 0).context("filling BERTH_NAT")?;
            n += 1;
        }
        Ok(n)
    }
}

/// Entries in the pinned flow table whose container address is `ctr_ip`.
pub fn count_flows_of(bpffs: &Path, ctr_ip: Ipv4Addr) -> Result<usize> {
    let map = nat_map(bpffs)?;
    let addr = u32::from_ne_bytes(ctr_ip.octets());
    Ok(map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.src_addr_be == addr)
        .count())
}

/// The established TCP flow of a published port, as `BERTH_NAT` keys it (by
/// its reply tuple: container -> client), or `None`.
pub fn nat_tcp_flow(
    bpffs: &Path,
    ctr: std::net::SocketAddrV4,
    client: std::net::SocketAddrV4,
) -> Result<Option<NatEntry>> {
    let map = nat_map(bpffs)?;
    let key = FlowKey {
        src_addr_be: u32::from_ne_bytes(ctr.ip().octets()),
        dst_addr_be: u32::from_ne_bytes(client.ip().octets()),
        src_port_be: ctr.port().to_be(),
        dst_port_be: client.port().to_be(),
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    match map.get(&key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).context("reading BERTH_NAT"),
    }
}
