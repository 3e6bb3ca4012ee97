//! The bridges berth serves (`--bridge`, repeatable), as they come and go.
//!
//! A served bridge gets `berth_reply` on its TC ingress and its MAC in
//! `BERTH_BRIDGE_MACS` (the port gate's "sent by the host"); its ports are
//! the port watcher's (`ports`), which drives this module from the same
//! netlink link events. A bridge named on the command line may not exist
//! yet (the CNI bridge plugin creates `cni0` on its first ADD): it waits,
//! visible in `berth status`, and is attached the moment it appears. A
//! bridge deleted and created again comes back with another ifindex and
//! often another MAC: its old link pin (attached to nothing now) and MAC
//! entry are dropped before the new ones are made.
use std::{
    fs,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use berth_maps::{program, BRIDGE_MACS_MAP};

use super::{
    attach::{attach_pinned, bridge_mac, link_name},
    sys, BridgeState, DatapathError,
};

/// What the watcher last saw of each served bridge, read by `berth status`.
pub(super) type BridgeStates = Arc<Mutex<Vec<BridgeState>>>;

/// One `--bridge`.
#[derive(Debug)]
struct Served {
    name: String,
    /// Set while it exists, is a bridge and `berth_reply` is attached.
    ifindex: Option<u32>,
    /// What `BERTH_BRIDGE_MACS` holds for it.
    mac: Option<u64>,
    /// Why a link of this name is not served (not a bridge, attach failed).
    problem: Option<String>,
}

/// What [`Bridges::refresh`] changed about one bridge.
#[derive(Debug, Default)]
pub(super) struct Change {
    /// It was served and is no longer (deleted, renamed, or re-created):
    /// its ports must be unhooked.
    pub gone: bool,
    /// It is served now and was not: its ports must be hooked.
    pub appeared: bool,
    pub err: Option<DatapathError>,
}

pub(super) struct Bridges {
    ebpf: Arc<Mutex<Ebpf>>,
    links_dir: PathBuf,
    slots: Vec<Served>,
    macs: HashMap<MapData, u64, u32>,
    states: BridgeStates,
}

fn ifindex(name: &str) -> Option<u32> {
    super::attach::ifindex(name).ok()
}

impl Bridges {
    pub(super) fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        links_dir: PathBuf,
        names: &[String],
        macs: HashMap<MapData, u64, u32>,
        states: BridgeStates,
    ) -> Self {
        let slots = names
            .iter()
            .map(|name| Served {
                name: name.clone(),
                ifindex: None,
                mac: None,
                problem: None,
            })
            .collect();
        Self {
            ebpf,
            links_dir,
            slots,
            macs,
            states,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn name(&self, i: usize) -> &str {
        &self.slots[i].name
    }

    /// The served bridge a link event is about: by name, or by the ifindex
    /// it is served under (a delete, or a rename away).
    pub(super) fn slot_for(&self, name: &str, index: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.name == name || s.ifindex == Some(index))
    }

    /// The name of the served bridge with this ifindex (a port's master).
    pub(super) fn by_index(&self, index: u32) -> Option<&str> {
        self.slots
            .iter()
            .find(|s| s.ifindex == Some(index))
            .map(|s| s.name.as_str())
    }

    /// The bridges served now.
    pub(super) fn attached(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.ifindex.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Brings bridge `i` in line with the system: attach it if it appeared,
    /// forget it if it went, follow its MAC.
    pub(super) fn refresh(&mut self, i: usize) -> Change {
        let name = self.slots[i].name.clone();
        let now = ifindex(&name);
        let mut change = Change::default();
        if self.slots[i].ifindex.is_some() && self.slots[i].ifindex != now {
            self.forget(i);
            change.gone = true;
        }
        match now {
            None => {
                // A link pin left by a run that saw it (deleted while no
                // daemon ran) is attached to nothing: not shown as if it were.
                let _ = fs::remove_file(self.links_dir.join(link_name(program::REPLY, &name)));
                self.slots[i].problem = None;
            }
            Some(index) if self.slots[i].ifindex == Some(index) => {
                if let Ok(mac) = bridge_mac(&name) {
                    self.set_mac(i, index, mac);
                }
            }
            Some(index) => match self.attach(i, index) {
                Ok(()) => change.appeared = true,
                Err(e) => {
                    let text = crate::domain::error::chain(&e);
                    if self.slots[i].problem.as_ref() != Some(&text) {
                        tracing::warn!(bridge = %name, error = %text, "cannot serve the bridge");
                    }
                    self.slots[i].problem = Some(text);
                    change.err = Some(e);
                }
            },
        }
        change
    }

    /// `berth_reply` on the bridge, its MAC in the gate's map. The MAC goes
    /// first: what the host sends to a port must not meet a gate that does
    /// not know it yet.
    fn attach(&mut self, i: usize, index: u32) -> Result<(), DatapathError> {
        let name = self.slots[i].name.clone();
        if !crate::adapters::netif::is_bridge(&name) {
            return Err(DatapathError::Other(format!(
                "{name} exists but is not a bridge"
            )));
        }
        let mac = bridge_mac(&name)?;
        self.set_mac(i, index, mac);
        // A pin left by an earlier bridge of this name holds a link to an
        // interface that is gone: swapping the program into it would attach
        // nothing, so it goes and a new link is made.
        let pin = self.links_dir.join(link_name(program::REPLY, &name));
        let stale = sys::obj_get(&pin)
            .and_then(|fd| sys::link_info(&fd))
            .is_ok_and(|l| l.target != u64::from(index));
        if stale {
            let _ = fs::remove_file(&pin);
        }
        let mut ebpf = self
            .ebpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        attach_pinned(&mut ebpf, program::REPLY, &name, &self.links_dir)?;
        drop(ebpf);
        let s = &mut self.slots[i];
        s.ifindex = Some(index);
        s.problem = None;
        tracing::info!(bridge = %name, ifindex = index, mac = format_args!("{mac:012x}"), "bridge attached");
        Ok(())
    }

    /// The bridge went (or is about to be attached anew): its link pin and
    /// MAC entry go with it.
    fn forget(&mut self, i: usize) {
        let name = self.slots[i].name.clone();
        let _ = fs::remove_file(self.links_dir.join(link_name(program::REPLY, &name)));
        if let Some(mac) = self.slots[i].mac.take() {
            if !self.slots.iter().any(|s| s.mac == Some(mac)) {
                let _ = self.macs.remove(&mac);
            }
        }
        self.slots[i].ifindex = None;
        tracing::info!(bridge = %name, "bridge gone; waiting for it to be created again");
    }

    /// A bridge without a fixed address takes one of its ports', so its MAC
    /// changes as ports come and go. The new entry is written before the
    /// old one is removed.
    fn set_mac(&mut self, i: usize, index: u32, mac: u64) {
        let old = self.slots[i].mac;
        if old == Some(mac) {
            return;
        }
        if let Err(e) = self.macs.insert(mac, index, 0) {
            tracing::warn!(bridge = %self.slots[i].name, error = %e, map = BRIDGE_MACS_MAP, "recording the bridge's address");
            return;
        }
        self.slots[i].mac = Some(mac);
        if let Some(old) = old {
            if !self.slots.iter().any(|s| s.mac == Some(old)) {
                let _ = self.macs.remove(&old);
            }
        }
        tracing::debug!(bridge = %self.slots[i].name, mac = format_args!("{mac:012x}"), "bridge address");
    }

    /// Drops MAC entries no served bridge has (left by an earlier run).
    pub(super) fn prune_macs(&mut self) {
        let stale: Vec<u64> = self
            .macs
            .keys()
            .filter_map(Result::ok)
            .filter(|m| !self.slots.iter().any(|s| s.mac == Some(*m)))
            .collect();
        for m in stale {
            let _ = self.macs.remove(&m);
        }
    }

    /// Writes what `berth status` shows; `ports(name)` counts a bridge's
    /// hooked ports.
    pub(super) fn publish(&self, ports: impl Fn(&str) -> usize) {
        let states = self
            .slots
            .iter()
            .map(|s| BridgeState {
                name: s.name.clone(),
                state: match (s.ifindex, &s.problem) {
                    (Some(_), _) => "attached",
                    (None, Some(_)) => "failed",
                    (None, None) => "waiting",
                }
                .into(),
                ifindex: s.ifindex.unwrap_or(0),
                subnets: Vec::new(),
                ports: ports(&s.name),
                detail: s.problem.clone(),
            })
            .collect();
        *self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = states;
    }
}
