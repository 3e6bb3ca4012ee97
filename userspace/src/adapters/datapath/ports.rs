//! Containers come and go: every port of a served bridge (a container's
//! host-side veth) gets the security-group programs, `berth_from_ctr` on tc
//! ingress (what the container sends) and `berth_to_ctr` on tc egress (what
//! it receives). It also keeps each port's own addresses (learned from the
//! container's side, see [`port_addrs`]) in `BERTH_PORT_ADDRS`, so a container
//! cannot send from another's address, and its IPv6 ones in
//! `BERTH_PORT_ADDRS6` ([`super::port_addrs6`]), which it may claim to its
//! neighbours.
//!
//! A thread follows link events over netlink (`RTM_NEWLINK` / `RTM_DELLINK`,
//! `IFLA_MASTER` = a served bridge), so a container's veth is hooked as soon
//! as it is enslaved, milliseconds before a runtime typically sets it up and
//! gives the container an address. The same events tell the bridges
//! themselves appearing and going (see [`super::bridges`]). A full resync
//! against the bridges' port lists runs at start, after the kernel reports lost events (ENOBUFS), and
//! every [`RESYNC`] as a safety net. A listing that fails changes nothing:
//! hooks are never removed because a port could not be seen.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use berth_maps::{PortAddr6, PortAddrs, PortAddrs6, HOOKED_PORTS_MAP, PORT_ADDRS_MAX};

use super::{
    attach::attach_pinned,
    bridges::{BridgeStates, Bridges},
    port_addrs::{forget_neighbour, port_addrs, resolve_claims, Learned, Peer},
    port_addrs6::PortAddrs6Map,
    DatapathError,
};
use crate::domain::error::chain;

pub(super) const PORT_PROGRAMS: [&str; 2] = berth_maps::program::PORT_PROGRAMS;
/// Full resync against the bridge's port list.
const RESYNC: Duration = Duration::from_secs(10);
/// How often the thread looks at its stop flag between events.
const WAKE: Duration = Duration::from_millis(250);
/// Ports with no address yet (a container still being set up) are asked
/// for their addresses this often; ports whose addresses are known, every
/// [`ADDR_REFRESH`]. Both are the fallback: an address added or removed in
/// a container's namespace is told at once (see [`LinkEvents`]).
const ADDR_POLL: Duration = Duration::from_millis(250);
const ADDR_REFRESH: Duration = Duration::from_secs(2);

/// The bridge's ports, from sysfs of the current network namespace.
fn bridge_ports(bridge: &str) -> io::Result<BTreeSet<String>> {
    fs::read_dir(format!("/sys/class/net/{bridge}/brif"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

pub(super) struct PortWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The served bridges, their hooked ports and how to hook more.
struct Ports {
    ebpf: Arc<Mutex<Ebpf>>,
    bridges: Bridges,
    links_dir: PathBuf,
    /// Hooked port -> the bridge it is on.
    known: BTreeMap<String, String>,
    /// `BERTH_HOOKED_PORTS`: the ifindex of every port in `known`, for the
    /// datapath's gate on ports not hooked yet.
    hooked: HashMap<MapData, u32, u32>,
}

impl Ports {
    /// A port joined bridge `bridge`: hook it. Everything a new port needs
    /// happens here.
    fn on_new_port(&mut self, port: &str, bridge: &str) -> Result<(), DatapathError> {
        let t0 = Instant::now();
        let mut ebpf = self
            .ebpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for prog in PORT_PROGRAMS {
            if let Err(e) = attach_pinned(&mut ebpf, prog, port, &self.links_dir) {
                // A port may vanish between its event and the attach.
                if matches!(e, DatapathError::NoSuchInterface(_)) || !is_port(bridge, port) {
                    return Ok(());
                }
                return Err(e);
            }
        }
        // Listed only once both programs are attached.
        if let Some(i) = ifindex(port) {
            self.hooked
                .insert(i, 1, 0)
                .map_err(|e| DatapathError::Map {
                    map: HOOKED_PORTS_MAP,
                    reason: e.to_string(),
                })?;
        }
        self.known.insert(port.to_owned(), bridge.to_owned());
        tracing::info!(port = %port, bridge = %bridge, took_us = t0.elapsed().as_micros() as u64, "security-group hooks attached");
        Ok(())
    }

    /// A port left its bridge or is gone: unpinning detaches its hooks.
    fn on_port_gone(&mut self, port: &str) {
        for prog in PORT_PROGRAMS {
            let _ = fs::remove_file(self.links_dir.join(format!("{prog}@{port}")));
        }
        if let Some(bridge) = self.known.remove(port) {
            tracing::info!(port = %port, bridge = %bridge, "bridge port gone; hooks removed");
        }
        self.prune_hooked();
    }

    /// Drops listed ifindexes that are no longer hooked ports (gone, or
    /// left by an earlier run).
    fn prune_hooked(&mut self) {
        let keep: BTreeSet<u32> = self.known.keys().filter_map(|p| ifindex(p)).collect();
        let stale: Vec<u32> = self
            .hooked
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !keep.contains(i))
            .collect();
        for i in stale {
            let _ = self.hooked.remove(&i);
        }
    }

    /// Served bridge `i` appeared, went or changed: its ports follow.
    fn refresh_bridge(&mut self, i: usize) -> Result<(), DatapathError> {
        let change = self.bridges.refresh(i);
        let name = self.bridges.name(i).to_owned();
        if change.gone {
            let ports: Vec<String> = self
                .known
                .iter()
                .filter(|(_, b)| **b == name)
                .map(|(p, _)| p.clone())
                .collect();
            for port in ports {
                self.on_port_gone(&port);
            }
        }
        let mut first_err = change.err;
        if change.appeared {
            // Ports enslaved before the bridge's own event was read.
            if let Ok(ports) = bridge_ports(&name) {
                let new: Vec<String> = ports
                    .into_iter()
                    .filter(|p| !self.known.contains_key(p))
                    .collect();
                for port in new {
                    if let Err(e) = self.on_new_port(&port, &name) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        self.publish();
        first_err.map_or(Ok(()), Err)
    }

    /// Brings the bridges and the hooks in line with the system. A bridge
    /// whose port list cannot be read keeps its hooks as they are.
    fn resync(&mut self) -> Result<(), DatapathError> {
        let mut first_err = None;
        for i in 0..self.bridges.len() {
            if let Err(e) = self.refresh_bridge(i) {
                first_err.get_or_insert(e);
            }
        }
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        for bridge in self.bridges.attached() {
            match bridge_ports(&bridge) {
                Ok(ports) => now.extend(ports.into_iter().map(|p| (p, bridge.clone()))),
                Err(e) => {
                    tracing::warn!(bridge = %bridge, error = %e, "cannot list the bridge's ports; keeping the hooks as they are");
                    now.extend(
                        self.known
                            .iter()
                            .filter(|(_, b)| **b == bridge)
                            .map(|(p, b)| (p.clone(), b.clone())),
                    );
                }
            }
        }
        let (new, gone) = diff(&self.known, &now);
        for port in gone {
            self.on_port_gone(&port);
        }
        // Pins left by an earlier run for ports that are gone.
        if let Ok(entries) = fs::read_dir(&self.links_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some((prog, port)) = name.split_once('@') {
                    if PORT_PROGRAMS.contains(&prog) && !now.contains_key(port) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        for port in new {
            let bridge = now[&port].clone();
            if let Err(e) = self.on_new_port(&port, &bridge) {
                first_err.get_or_insert(e);
            }
        }
        // A port moved from one served bridge to another keeps its hooks.
        for (port, bridge) in now {
            if let Some(b) = self.known.get_mut(&port) {
                *b = bridge;
            }
        }
        // After the attaches: a restarted daemon keeps the ports it adopts
        // listed throughout.
        self.prune_hooked();
        self.bridges.prune_macs();
        self.publish();
        first_err.map_or(Ok(()), Err)
    }

    fn on_event(&mut self, ev: &LinkEvent) -> Result<(), DatapathError> {
        if let Some(i) = self.bridges.slot_for(&ev.name, ev.index) {
            return self.refresh_bridge(i);
        }
        let bridge = ev
            .master
            .filter(|_| !ev.deleted)
            .and_then(|m| self.bridges.by_index(m))
            .map(str::to_owned);
        let result = match (bridge, self.known.get(&ev.name).cloned()) {
            (Some(b), None) => self.on_new_port(&ev.name, &b),
            (Some(b), Some(old)) if b != old => {
                self.known.insert(ev.name.clone(), b);
                Ok(())
            }
            (None, Some(_)) => {
                self.on_port_gone(&ev.name);
                Ok(())
            }
            _ => return Ok(()),
        };
        self.publish();
        result
    }

    fn publish(&self) {
        let known = &self.known;
        self.bridges
            .publish(|name| known.values().filter(|b| *b == name).count());
    }
}

/// Ports to hook and ports to unhook.
fn diff(
    known: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    (
        now.keys()
            .filter(|p| !known.contains_key(*p))
            .cloned()
            .collect(),
        known
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect(),
    )
}

fn is_port(bridge: &str, port: &str) -> bool {
    Path::new(&format!("/sys/class/net/{bridge}/brif/{port}")).exists()
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// What the watcher needs from the loader.
pub(super) struct WatchSetup {
    pub ebpf: Arc<Mutex<Ebpf>>,
    pub addrs_map: HashMap<MapData, u32, PortAddrs>,
    /// `BERTH_PORT_ADDRS6`.
    pub addrs6_map: HashMap<MapData, PortAddr6, u32>,
    /// `BERTH_PORT_LIST6`.
    pub list6_map: HashMap<MapData, u32, PortAddrs6>,
    pub bridges: Vec<String>,
    pub links_dir: PathBuf,
    pub hooked: HashMap<MapData, u32, u32>,
    /// `BERTH_BRIDGE_MACS`.
    pub macs: HashMap<MapData, u64, u32>,
    pub states: BridgeStates,
}

/// Attach to the bridges and ports there are now, then keep following them.
/// A served bridge that exists but cannot be attached fails the start; one
/// that does not exist yet is waited for.
pub(super) fn watch(setup: WatchSetup) -> Result<PortWatcher, DatapathError> {
    // Subscribe before the first listing, so no port falls between the two.
    let events = LinkEvents::open().map_err(DatapathError::io("netlink link events"))?;
    // Before the first reading of addresses, so none set in between is missed.
    let addr_events = AddrEvents::open()
        .inspect_err(|e| tracing::warn!(error = %e, "no address events from containers' namespaces; polling their addresses only"))
        .ok();
    let bridges = Bridges::new(
        setup.ebpf.clone(),
        setup.links_dir.clone(),
        &setup.bridges,
        setup.macs,
        setup.states,
    );
    // Addresses before hooks: a port's programs check what it sends against
    // BERTH_PORT_ADDRS from the moment they are attached (or swapped into
    // its pinned links), and that map starts empty after an upgrade from
    // pins without it. Only bridges that exist have ports.
    let mut addrs = PortAddrSync::adopt(setup.addrs_map, setup.addrs6_map, setup.list6_map);
    let present: Vec<String> = setup
        .bridges
        .iter()
        .filter(|b| ifindex(b).is_some())
        .cloned()
        .collect();
    addrs.sync(&present, true);
    let mut ports = Ports {
        ebpf: setup.ebpf,
        bridges,
        links_dir: setup.links_dir,
        known: BTreeMap::new(),
        hooked: setup.hooked,
    };
    ports.resync()?;
    for name in &setup.bridges {
        if ifindex(name).is_none() {
            tracing::info!(bridge = %name, "bridge does not exist yet; it is attached the moment it is created");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name("berth-ports".into())
        .spawn(move || follow(ports, addrs, events, addr_events, &flag))
        .map_err(DatapathError::io("port watcher"))?;
    Ok(PortWatcher {
        stop,
        thread: Some(thread),
    })
}

fn follow(
    mut ports: Ports,
    mut addrs: PortAddrSync,
    events: LinkEvents,
    addr_events: Option<AddrEvents>,
    stop: &AtomicBool,
) {
    let mut last_sync = Instant::now();
    let (mut last_addrs, mut last_full) = (Instant::now(), Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut resync = last_sync.elapsed() >= RESYNC;
        let (links_ready, addrs_ready) = wait_readable(&events.fd, addr_events.as_ref());
        if let (true, Some(ae)) = (addrs_ready, &addr_events) {
            let attached = ports.bridges.attached();
            if ae.drain(&mut buf, &attached, &mut addrs).is_err() {
                // Events were lost: read every port's addresses.
                addrs.sync(&attached, true);
            }
        }
        if links_ready {
            match events.recv(&mut buf) {
                Ok(n) => {
                    for ev in parse_link_events(&buf[..n]) {
                        if let Err(e) = ports.on_event(&ev) {
                            tracing::warn!(link = %ev.name, error = %chain(&e), "attaching to a bridge or its port");
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // ENOBUFS: the kernel dropped events; read the whole list.
                    tracing::warn!(error = %e, "netlink link events lost; resyncing the bridges' ports");
                    resync = true;
                }
            }
        }
        if resync {
            if let Err(e) = ports.resync() {
                tracing::warn!(error = %chain(&e), "attaching to bridges and their ports");
            }
            last_sync = Instant::now();
        }
        if last_addrs.elapsed() >= ADDR_POLL {
            let full = last_full.elapsed() >= ADDR_REFRESH;
            addrs.sync(&ports.bridges.attached(), full);
            last_addrs = Instant::now();
            if full {
                last_full = last_addrs;
            }
        }
    }
}

/// `BERTH_PORT_ADDRS` and `BERTH_PORT_ADDRS6` kept equal to what the
/// ports' namespaces say, with contested addresses resolved by
/// [`resolve_claims`] (each family on its own).
struct PortAddrSync {
    map: HashMap<MapData, u32, PortAddrs>,
    /// What the map holds (ifindex -> owned addresses).
    owned: BTreeMap<u32, Vec<Ipv4Addr>>,
    /// What each port's namespace said last time.
    claims: BTreeMap<u32, Vec<Ipv4Addr>>,
    contested: BTreeSet<Ipv4Addr>,
    /// The same for IPv6 (global addresses only, see `port_addrs`).
    map6: PortAddrs6Map,
    owned6: BTreeMap<u32, Vec<Ipv6Addr>>,
    claims6: BTreeMap<u32, Vec<Ipv6Addr>>,
    contested6: BTreeSet<Ipv6Addr>,
    /// Each port's veth peer, as last learned: an address event names the
    /// peer (namespace id, ifindex there), not the port.
    peers: BTreeMap<u32, Peer>,
}

fn encode_port_addrs(addrs: &[Ipv4Addr]) -> PortAddrs {
    let mut p = PortAddrs::default();
    for (slot, a) in p.addrs_be.iter_mut().zip(addrs) {
        *slot = u32::from_ne_bytes(a.octets());
    }
    p.len = addrs.len().min(PORT_ADDRS_MAX) as u32;
    p
}

impl PortAddrSync {
    /// Starts from what is pinned, so ownership survives a restart.
    fn adopt(
        map: HashMap<MapData, u32, PortAddrs>,
        map6: HashMap<MapData, PortAddr6, u32>,
        list6: HashMap<MapData, u32, PortAddrs6>,
    ) -> Self {
        let owned: BTreeMap<u32, Vec<Ipv4Addr>> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(port, p)| {
                let n = (p.len as usize).min(PORT_ADDRS_MAX);
                let addrs = p.addrs_be[..n]
                    .iter()
                    .map(|a| Ipv4Addr::from(a.to_ne_bytes()))
                    .collect();
                (port, addrs)
            })
            .collect();
        let (map6, owned6) = PortAddrs6Map::adopt(map6, list6);
        Self {
            map,
            claims: owned.clone(),
            owned,
            contested: BTreeSet::new(),
            map6,
            claims6: owned6.clone(),
            owned6,
            contested6: BTreeSet::new(),
            peers: BTreeMap::new(),
        }
    }

    /// An address of interface `index` in the namespace `nsid` names was
    /// added or removed: re-read the port whose peer that is at once, or,
    /// when no known port's is, every port without addresses yet (a new
    /// container's, whose peer was not learned yet).
    fn on_peer_addr_change(&mut self, bridges: &[String], nsid: i32, index: u32) {
        let port = self
            .peers
            .iter()
            .find(|(_, p)| p.netnsid == Some(nsid) && p.ifindex == index)
            .map(|(port, _)| *port);
        self.sync_ports(bridges, false, port);
    }

    /// Learns the ports' addresses (all of them when `full`, else only the
    /// new ones and those with none yet) and writes what changed.
    fn sync(&mut self, bridges: &[String], full: bool) {
        self.sync_ports(bridges, full, None);
    }

    /// As [`Self::sync`], re-reading port `force` too.
    fn sync_ports(&mut self, bridges: &[String], full: bool, force: Option<u32>) {
        // A listing that fails changes nothing.
        let mut names = BTreeSet::new();
        for bridge in bridges {
            let Ok(ports) = bridge_ports(bridge) else {
                return;
            };
            names.extend(ports);
        }
        let mut claims = BTreeMap::new();
        let mut claims6 = BTreeMap::new();
        for name in names {
            let Some(ifindex) = super::attach::ifindex(&name).ok() else {
                continue; // gone since the listing
            };
            let old = Learned {
                v4: self.claims.get(&ifindex).cloned().unwrap_or_default(),
                v6: self.claims6.get(&ifindex).cloned().unwrap_or_default(),
            };
            let old = (!old.v4.is_empty() || !old.v6.is_empty()).then_some(old);
            let learned = match old {
                Some(a) if !full && force != Some(ifindex) => Some(a),
                _ => match port_addrs(ifindex) {
                    Ok(Some((peer, a))) => {
                        self.peers.insert(ifindex, peer);
                        Some(a)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(port = %name, error = %e, "reading the port's addresses");
                        old
                    }
                },
            };
            let Learned {
                v4: mut addrs,
                v6: mut addrs6,
            } = learned.unwrap_or_default();
            if addrs.len() > PORT_ADDRS_MAX {
                tracing::warn!(port = %name, addrs = ?addrs, "more than {PORT_ADDRS_MAX} addresses; the rest may not send");
                addrs.truncate(PORT_ADDRS_MAX);
            }
            if addrs6.len() > PORT_ADDRS_MAX {
                tracing::warn!(port = %name, addrs = ?addrs6, "more than {PORT_ADDRS_MAX} IPv6 addresses; the rest may not be claimed");
                addrs6.truncate(PORT_ADDRS_MAX);
            }
            claims.insert(ifindex, addrs);
            claims6.insert(ifindex, addrs6);
        }
        self.sync6(bridges, claims6);
        let (owned, contested) = resolve_claims(&self.owned, &claims);
        for a in contested.difference(&self.contested) {
            tracing::warn!(addr = %a, "address claimed by more than one bridge port; only its earlier owner, if any, may send from it");
        }
        for (port, addrs) in &owned {
            if self.owned.get(port) == Some(addrs) {
                continue;
            }
            let before = self.owned.get(port).cloned().unwrap_or_default();
            forget_neighbours(
                bridges,
                addrs
                    .iter()
                    .filter(|a| !before.contains(a))
                    .map(|a| IpAddr::V4(*a)),
            );
            match self.map.insert(port, encode_port_addrs(addrs), 0) {
                Ok(()) => tracing::info!(ifindex = port, addrs = ?addrs, "bridge port addresses"),
                Err(e) => {
                    tracing::warn!(ifindex = port, error = %e, "writing the port's addresses");
                    continue;
                }
            }
            self.owned.insert(*port, addrs.clone());
        }
        let gone: Vec<u32> = self
            .owned
            .keys()
            .filter(|p| !owned.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            let _ = self.map.remove(&port);
            self.owned.remove(&port);
        }
        self.peers.retain(|port, _| claims.contains_key(port));
        self.claims = claims;
        self.contested = contested;
    }

    /// Writes the IPv6 addresses each port owns now, given what each
    /// port's namespace says (`claims6`).
    fn sync6(&mut self, bridges: &[String], claims6: BTreeMap<u32, Vec<Ipv6Addr>>) {
        let (owned, contested) = resolve_claims(&self.owned6, &claims6);
        for a in contested.difference(&self.contested6) {
            tracing::warn!(addr = %a, "IPv6 address claimed by more than one bridge port; only its earlier owner, if any, may claim it to its neighbours");
        }
        let gone = self
            .owned6
            .keys()
            .filter(|p| !owned.contains_key(p))
            .map(|p| (*p, Vec::new()));
        let changes: Vec<(u32, Vec<Ipv6Addr>)> = owned
            .iter()
            .filter(|(p, a)| self.owned6.get(p).map_or(!a.is_empty(), |b| b != *a))
            .map(|(p, a)| (*p, a.clone()))
            .chain(gone)
            .collect();
        for (port, addrs) in changes {
            let before = self.owned6.get(&port).cloned().unwrap_or_default();
            forget_neighbours(
                bridges,
                addrs
                    .iter()
                    .filter(|a| !before.contains(a))
                    .map(|a| IpAddr::V6(*a)),
            );
            match self.map6.replace(port, &before, &addrs) {
                Ok(()) => {
                    tracing::info!(ifindex = port, addrs = ?addrs, "bridge port IPv6 addresses")
                }
                Err(e) => {
                    tracing::warn!(ifindex = port, error = %e, "writing the port's IPv6 addresses");
                    continue;
                }
            }
            if addrs.is_empty() && !owned.contains_key(&port) {
                self.owned6.remove(&port);
            } else {
                self.owned6.insert(port, addrs);
            }
        }
        self.claims6 = claims6;
        self.contested6 = contested;
    }
}

/// Addresses newly owned by a bridge port may have been another
/// container's a moment ago: their neighbour entries (on whichever served
/// bridge has one) are dropped so the next packet learns the new MAC (see
/// [`forget_neighbour`]). A failure only costs the wait berth would
/// otherwise have had, so it is logged, not fatal.
fn forget_neighbours(bridges: &[String], addrs: impl Iterator<Item = IpAddr>) {
    let indexes: Vec<u32> = bridges
        .iter()
        .filter_map(|b| super::attach::ifindex(b).ok())
        .collect();
    for a in addrs {
        for &bridge in &indexes {
            match forget_neighbour(bridge, a) {
                Ok(true) => {
                    tracing::info!(addr = %a, "address moved to a new bridge port: its old neighbour entry forgotten")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "forgetting the address's old neighbour entry")
                }
            }
        }
    }
}

impl Drop for PortWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `NETLINK_ROUTE` socket subscribed to link changes.
struct LinkEvents {
    fd: OwnedFd,
}

const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTA_HDRLEN: usize = 4;

impl LinkEvents {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; we set the fields used.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_LINK;
        // SAFETY: `addr` is a valid sockaddr_nl of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Room for bursts (many containers at once); a wake-up timeout so
        // the thread sees its stop flag and the resync timer.
        set_sockopt(&fd, libc::SO_RCVBUF, &(4 << 20 as libc::c_int))?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: WAKE.as_micros() as libc::suseconds_t,
        };
        set_sockopt(&fd, libc::SO_RCVTIMEO, &tv)?;
        Ok(Self { fd })
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Whether the link socket and the address socket have something to read,
/// waiting up to [`WAKE`] (so the thread sees its stop flag and timers).
fn wait_readable(links: &OwnedFd, addrs: Option<&AddrEvents>) -> (bool, bool) {
    let mut fds =
        [links.as_raw_fd(), addrs.map_or(-1, |a| a.fd.as_raw_fd())].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    // SAFETY: two valid pollfds (a negative fd is ignored by poll).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, WAKE.as_millis() as libc::c_int) };
    if rc <= 0 {
        return (false, false);
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR) != 0;
    (ready(&fds[0]), ready(&fds[1]))
}

/// A `NETLINK_ROUTE` socket subscribed to IPv4 and IPv6 address changes in the
/// containers' namespaces: with `NETLINK_LISTEN_ALL_NSID` it gets the events
/// of every namespace that has an id in ours (each veth peer's namespace
/// has one: it is the port's `IFLA_LINK_NETNSID`), tagged with that id, so a
/// container's address is known as soon as it is set rather than at the
/// next poll. Kept apart from [`LinkEvents`], so a link event of another
/// namespace is never taken for one of ours.
struct AddrEvents {
    fd: OwnedFd,
}

impl AddrEvents {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; we set the fields used.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        // SAFETY: `addr` is a valid sockaddr_nl of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        set_sockopt(&fd, libc::SO_RCVBUF, &(1 << 20 as libc::c_int))?;
        set_netlink_opt(&fd, NETLINK_LISTEN_ALL_NSID, &(1 as libc::c_int))?;
        Ok(Self { fd })
    }

    /// Re-reads the port of every address event waiting; `Err` when the
    /// kernel dropped some (ENOBUFS).
    fn drain(
        &self,
        buf: &mut [u8],
        bridges: &[String],
        addrs: &mut PortAddrSync,
    ) -> io::Result<()> {
        loop {
            match self.recv(buf) {
                // Our own namespace's addresses are the host's: not a port's.
                Ok((_, None)) => {}
                Ok((n, Some(nsid))) => {
                    for index in parse_addr_events(&buf[..n]) {
                        addrs.on_peer_addr_change(bridges, nsid, index);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "address events lost; reading every port's addresses");
                    return Err(e);
                }
            }
        }
    }

    /// One datagram, and the id of the namespace it comes from when that
    /// is not this one.
    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64s: aligned for a cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid; the fields used are set.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: `msg` points at `iov` and `control`, valid for their lengths.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut nsid = None;
        // SAFETY: walking the control messages recvmsg wrote into `control`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_NETLINK
                    && (*c).cmsg_type == NETLINK_LISTEN_ALL_NSID
                    && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
                {
                    nsid = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()));
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        Ok((n as usize, nsid))
    }
}

/// The interface of each IPv4 or IPv6 address added or removed in one
/// datagram.
fn parse_addr_events(mut b: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    while let Some(len) = u32_at(b, 0).map(|l| l as usize) {
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let ty = u16_at(b, 4).unwrap_or(0);
        // ifaddrmsg: family, prefix length, flags, scope, ifindex.
        let body = &b[NLMSG_HDRLEN..len];
        let family = body.first().map(|f| i32::from(*f));
        if (ty == RTM_NEWADDR || ty == RTM_DELADDR)
            && matches!(family, Some(libc::AF_INET | libc::AF_INET6))
        {
            if let Some(index) = u32_at(body, 4) {
                out.push(index);
            }
        }
        b = b.get(align4(len)..).unwrap_or_default();
    }
    out.dedup();
    out
}

fn set_sockopt<T>(fd: &OwnedFd, opt: libc::c_int, val: &T) -> io::Result<()> {
    set_opt(fd, libc::SOL_SOCKET, opt, val)
}

fn set_netlink_opt<T>(fd: &OwnedFd, opt: libc::c_int, val: &T) -> io::Result<()> {
    set_opt(fd, SOL_NETLINK, opt, val)
}

fn set_opt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a `T` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            std::ptr::from_ref::<T>(val).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One link's state from an `RTM_NEWLINK` / `RTM_DELLINK` message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkEvent {
    index: u32,
    name: String,
    /// `IFLA_ADDRESS`, for Ethernet-like links (low 48 bits).
    mac: Option<u64>,
    /// `IFLA_MASTER`: the ifindex of the bridge (or bond) it is enslaved to.
    master: Option<u32>,
    deleted: bool,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The link events in one datagram; anything malformed ends the parse.
fn parse_link_events(mut b: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    while let Some(len) = u32_at(b, 0).map(|l| l as usize) {
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let ty = u16_at(b, 4).unwrap_or(0);
        if ty == RTM_NEWLINK || ty == RTM_DELLINK {
            if let Some(ev) = parse_link(&b[NLMSG_HDRLEN..len], ty == RTM_DELLINK) {
                out.push(ev);
            }
        }
        b = b.get(align4(len)..).unwrap_or_default();
    }
    out
}

/// An ifinfomsg and its attributes.
fn parse_link(b: &[u8], deleted: bool) -> Option<LinkEvent> {
    let index = u32_at(b, 4)?;
    let mut attrs = b.get(IFINFOMSG_LEN..)?;
    let (mut name, mut master, mut mac) = (None, None, None);
    while let Some(len) = u16_at(attrs, 0).map(usize::from) {
        if len < RTA_HDRLEN || len > attrs.len() {
            break;
        }
        let payload = &attrs[RTA_HDRLEN..len];
        match u16_at(attrs, 2)? & 0x3fff {
            IFLA_IFNAME => {
                let end = payload
                    .iter()
                    .position(|&c| c == 0)
                    .unwrap_or(payload.len());
                name = Some(String::from_utf8_lossy(&payload[..end]).into_owned());
            }
            IFLA_MASTER => master = u32_at(payload, 0),
            IFLA_ADDRESS if payload.len() == 6 => {
                mac = Some(payload.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)));
            }
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    Some(LinkEvent {
        index,
        name: name?,
        mac,
        master,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rta(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(((RTA_HDRLEN + payload.len()) as u16).to_ne_bytes());
        v.extend(ty.to_ne_bytes());
        v.extend(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    fn addr_msg(ty: u16, family: u8, index: u32) -> Vec<u8> {
        let mut body = vec![family, 24, 0, 0];
        body.extend(index.to_ne_bytes());
        body.extend(rta(2, &[172, 17, 0, 9]));
        let mut m = Vec::new();
        m.extend(((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend(ty.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn address_events_name_the_interface_in_their_namespace() {
        let mut b = addr_msg(RTM_NEWADDR, libc::AF_INET as u8, 2);
        b.extend(addr_msg(RTM_DELADDR, libc::AF_INET as u8, 7));
        b.extend(addr_msg(RTM_NEWADDR, libc::AF_INET6 as u8, 9));
        b.extend(addr_msg(RTM_NEWADDR, libc::AF_PACKET as u8, 4));
        b.extend(link_msg(RTM_NEWLINK, 3, &[]));
        assert_eq!(parse_addr_events(&b), [2, 7, 9]);
        b.extend([0xff, 0xff, 0, 0]); // a length past the end
        assert_eq!(parse_addr_events(&b), [2, 7, 9]);
    }

    fn link_msg(ty: u16, index: i32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        for a in attrs {
            body.extend(a);
        }
        let mut m = Vec::new();
        m.extend(((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend(ty.to_ne_bytes());
        m.extend([0u8; 10]); // flags, seq, pid
        m.extend(body);
        m
    }

    #[test]
    fn enslaving_releasing_and_deleting_a_port_are_told_apart() {
        let mut dgram = link_msg(
            RTM_NEWLINK,
            7,
            &[
                rta(IFLA_ADDRESS, &[0x02, 0x42, 0xac, 0x11, 0, 0x05]),
                rta(IFLA_IFNAME, b"veth1a2b\0"),
                rta(IFLA_MASTER, &4u32.to_ne_bytes()),
            ],
        );
        dgram.extend(link_msg(RTM_NEWLINK, 8, &[rta(IFLA_IFNAME, b"eth0\0")]));
        dgram.extend(link_msg(RTM_DELLINK, 7, &[rta(IFLA_IFNAME, b"veth1a2b\0")]));
        // Other message types in the same datagram are skipped.
        dgram.extend(link_msg(20, 9, &[rta(IFLA_IFNAME, b"x\0")]));
        assert_eq!(
            parse_link_events(&dgram),
            vec![
                LinkEvent {
                    index: 7,
                    name: "veth1a2b".into(),
                    mac: Some(0x0242_ac11_0005),
                    master: Some(4),
                    deleted: false
                },
                LinkEvent {
                    index: 8,
                    name: "eth0".into(),
                    mac: None,
                    master: None,
                    deleted: false
                },
                LinkEvent {
                    index: 7,
                    name: "veth1a2b".into(),
                    mac: None,
                    master: None,
                    deleted: true
                },
            ]
        );
    }

    #[test]
    fn truncated_or_bogus_messages_end_the_parse_without_panicking() {
        let good = link_msg(
            RTM_NEWLINK,
            7,
            &[
                rta(IFLA_IFNAME, b"veth0\0"),
                rta(IFLA_MASTER, &4u32.to_ne_bytes()),
            ],
        );
        for cut in 0..good.len() {
            let events = parse_link_events(&good[..cut]);
            assert!(events.is_empty(), "cut at {cut}: {events:?}");
        }
        let mut bogus = good.clone();
        bogus[0..4].copy_from_slice(&3u32.to_ne_bytes()); // shorter than a header
        assert!(parse_link_events(&bogus).is_empty());
        let mut bad_attr = good;
        let at = NLMSG_HDRLEN + IFINFOMSG_LEN;
        bad_attr[at..at + 2].copy_from_slice(&999u16.to_ne_bytes());
        assert!(parse_link_events(&bad_attr).is_empty(), "no name, no event");
    }

    #[test]
    fn a_resync_hooks_new_ports_and_unhooks_gone_ones() {
        let on = |ports: [&str; 2]| -> BTreeMap<String, String> {
            ports.map(|p| (p.to_owned(), "br0".to_owned())).into()
        };
        let (known, now) = (on(["a", "b"]), on(["b", "c"]));
        assert_eq!(diff(&known, &now), (vec!["c".into()], vec!["a".into()]));
    }

    #[test]
    fn the_bridge_port_list_fails_loudly_instead_of_looking_empty() {
        // The old listing turned an error into "no ports", which unhooked
        // every port.
        bridge_ports("berth-no-such-br0").unwrap_err();
    }
}
