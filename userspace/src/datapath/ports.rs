//! Containers come and go: every port of the bridge (a container's
//! host-side veth) gets the security-group programs, `berth_from_ctr` on tc
//! ingress (what the container sends) and `berth_to_ctr` on tc egress (what
//! it receives). A thread watches the bridge's ports and attaches new ones;
//! pins of ports that are gone are removed. It also keeps each port's own
//! addresses (learned from the container's side, see [`port_addrs`]) in
//! BERTH_PORT_ADDRS, so a container cannot send from another's address.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use berth_maps::{PortAddrs, PORT_ADDRS_MAX};

use super::{
    bpf::attach_pinned,
    port_addrs::{port_addrs, resolve_claims},
    DatapathError,
};

pub const PORT_PROGRAMS: [&str; 2] = ["berth_from_ctr", "berth_to_ctr"];
const POLL: Duration = Duration::from_millis(250);
/// Ports whose addresses are known are asked again this often (in polls);
/// ports with none yet (a container still being set up) on every poll.
const ADDR_REFRESH_POLLS: u32 = 8;

/// The bridge's ports, from sysfs of the current network namespace.
fn bridge_ports(bridge: &str) -> BTreeSet<String> {
    fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) struct PortWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Attach to the ports there are now, then keep following the bridge.
pub(super) fn watch(
    ebpf: Arc<Mutex<Ebpf>>,
    addrs_map: HashMap<MapData, u32, PortAddrs>,
    bridge: String,
    links_dir: PathBuf,
) -> Result<PortWatcher, DatapathError> {
    let mut known = BTreeSet::new();
    sync(&ebpf, &bridge, &links_dir, &mut known)?;
    let mut addrs = PortAddrSync::adopt(addrs_map);
    addrs.sync(&bridge, true);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name("berth-ports".into())
        .spawn(move || {
            let mut polls = 0u32;
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(POLL);
                if let Err(e) = sync(&ebpf, &bridge, &links_dir, &mut known) {
                    tracing::warn!(error = %e, "attaching to bridge ports");
                }
                polls = polls.wrapping_add(1);
                addrs.sync(&bridge, polls.is_multiple_of(ADDR_REFRESH_POLLS));
            }
        })
        .map_err(|e| DatapathError::Other(format!("port watcher: {e}")))?;
    Ok(PortWatcher {
        stop,
        thread: Some(thread),
    })
}

fn sync(
    ebpf: &Mutex<Ebpf>,
    bridge: &str,
    links_dir: &std::path::Path,
    known: &mut BTreeSet<String>,
) -> Result<(), DatapathError> {
    let now = bridge_ports(bridge);
    for port in now.difference(known) {
        let mut ebpf = ebpf.lock().unwrap_or_else(|p| p.into_inner());
        for prog in PORT_PROGRAMS {
            // A port may vanish between listing and attaching.
            if let Err(e) = attach_pinned(&mut ebpf, prog, port, links_dir) {
                if !matches!(e, DatapathError::NoSuchInterface(_))
                    && bridge_ports(bridge).contains(port)
                {
                    return Err(e);
                }
            }
        }
        tracing::info!(port = %port, "security-group hooks attached");
    }
    for port in known.difference(&now) {
        for prog in PORT_PROGRAMS {
            let _ = fs::remove_file(links_dir.join(format!("{prog}@{port}")));
        }
    }
    // Pins left by an earlier run for ports that are gone.
    if let Ok(entries) = fs::read_dir(links_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((prog, port)) = name.split_once('@') {
                if PORT_PROGRAMS.contains(&prog) && !now.contains(port) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    *known = now;
    Ok(())
}

/// BERTH_PORT_ADDRS kept equal to what the ports' namespaces say, with
/// contested addresses resolved by [`resolve_claims`].
struct PortAddrSync {
    map: HashMap<MapData, u32, PortAddrs>,
    /// What the map holds (ifindex -> owned addresses).
    owned: BTreeMap<u32, Vec<Ipv4Addr>>,
    /// What each port's namespace said last time.
    claims: BTreeMap<u32, Vec<Ipv4Addr>>,
    contested: BTreeSet<Ipv4Addr>,
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
    fn adopt(map: HashMap<MapData, u32, PortAddrs>) -> Self {
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
        PortAddrSync {
            map,
            claims: owned.clone(),
            owned,
            contested: BTreeSet::new(),
        }
    }

    /// Learns the ports' addresses (all of them when `full`, else only the
    /// new ones and those with none yet) and writes what changed.
    fn sync(&mut self, bridge: &str, full: bool) {
        let mut claims = BTreeMap::new();
        for name in bridge_ports(bridge) {
            let Some(ifindex) = super::bpf::ifindex(&name).ok() else {
                continue; // gone since the listing
            };
            let old = self.claims.get(&ifindex).filter(|a| !a.is_empty());
            let learned = match old {
                Some(a) if !full => Some(a.clone()),
                _ => match port_addrs(ifindex) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(port = %name, error = %e, "reading the port's addresses");
                        old.cloned()
                    }
                },
            };
            let mut addrs = learned.unwrap_or_default();
            if addrs.len() > PORT_ADDRS_MAX {
                tracing::warn!(port = %name, addrs = ?addrs, "more than {PORT_ADDRS_MAX} addresses; the rest may not send");
                addrs.truncate(PORT_ADDRS_MAX);
            }
            claims.insert(ifindex, addrs);
        }
        let (owned, contested) = resolve_claims(&self.owned, &claims);
        for a in contested.difference(&self.contested) {
            tracing::warn!(addr = %a, "address claimed by more than one bridge port; only its earlier owner, if any, may send from it");
        }
        for (port, addrs) in &owned {
            if self.owned.get(port) == Some(addrs) {
                continue;
            }
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
        self.claims = claims;
        self.contested = contested;
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
