//! IPv6 bindings on the maps: the [`Datapath`](super::Datapath) calls for a
//! binding whose addresses are IPv6 land here (`ops.rs` sends them), and
//! write `BERTH_SERVICES6` through `services6.rs`'s key, value and checks.
//! The port guard (`BERTH_PORTS`, by protocol and port) counts IPv6
//! mappings as IPv4 ones, so the bind hooks refuse a host socket of either
//! family on a port published over IPv6 only. Each IPv6 mapping gets its
//! own per-binding counters slot from the book IPv4 mappings draw from
//! (`binding_stats.rs`), which `nat6.rs` counts in both ways.
use std::collections::{HashMap, HashSet};

use berth_maps::{PortKey, ServiceKey6, PORTS_MAP, SERVICES6_MAP};

use super::{
    binding_stats,
    bpf::{map_err, mappings_err, BpfDatapath, Maps},
    services6::{backend6, check6, service_key6},
    BindingCounters, DatapathError,
};
use crate::domain::model::Binding;

/// The key and value of an IPv6 binding, after [`check6`]; an IPv4 one is
/// an error (the caller sorted them).
fn entry6(b: &Binding) -> Result<(ServiceKey6, berth_maps::Backend6), DatapathError> {
    let (Some(host), Some(ctr)) = (b.bind_ip6(), b.container_ip6()) else {
        return Err(DatapathError::Other(format!(
            "binding {}:{} mixes address families",
            b.bind_ip, b.host_port
        )));
    };
    check6(host, b.host_port, ctr, b.container_port)?;
    Ok((
        service_key6(host, b.host_port, b.protocol),
        backend6(ctr, b.container_port, 0),
    ))
}

/// Host address, host port, protocol, container address, container port.
type Entry6 = ([u8; 16], u16, u8, [u8; 16], u16);

fn port_key6(k: &ServiceKey6) -> PortKey {
    PortKey {
        port_be: k.host_port_be,
        proto: k.proto,
        _pad: 0,
    }
}

impl BpfDatapath {
    /// Publish (or re-point) one IPv6 binding; the port is guarded before
    /// the mapping is visible, and unguarded again if the table is full.
    pub(super) fn insert6(&self, b: &Binding) -> Result<(), DatapathError> {
        let (key, mut value) = entry6(b)?;
        let mut m = self.lock();
        let current = m.services6.get(&key, 0).ok();
        let new = current.is_none();
        let m = &mut *m;
        if let Some(slot) = binding_stats::claim_slot(
            &mut m.slots,
            &mut m.binding_stats,
            &key,
            current.map(|v| v.binding),
            b.host_port,
            |slots| self.forget_slot_flows(slots),
        )? {
            value.binding = slot;
        }
        let pk = port_key6(&key);
        let guarded = m.ports.get(&pk, 0).unwrap_or(0);
        if new {
            m.ports
                .insert(pk, guarded + 1, 0)
                .map_err(mappings_err(PORTS_MAP, self.max_mappings))?;
        }
        let inserted = m
            .services6
            .insert(key, value, 0)
            .map_err(mappings_err(SERVICES6_MAP, self.max_mappings));
        if inserted.is_err() && current.map(|c| c.binding) != Some(value.binding) {
            m.slots.release(&key, value.binding);
        }
        if inserted.is_err() && new {
            let _ = match guarded {
                0 => m.ports.remove(&pk),
                n => m.ports.insert(pk, n, 0),
            };
        }
        inserted
    }

    /// Whether `BERTH_SERVICES6` leads `b`'s host address and port to its
    /// container address and port, and the port is guarded.
    pub(super) fn publishes6(&self, b: &Binding) -> Result<bool, DatapathError> {
        let (key, want) = entry6(b)?;
        let m = self.lock();
        let served = m
            .services6
            .get(&key, 0)
            .is_ok_and(|v| v.addr == want.addr && v.port_be == want.port_be);
        let guarded = m.ports.get(&port_key6(&key), 0).is_ok_and(|n| n > 0);
        Ok(served && guarded)
    }

    /// Unpublish one IPv6 binding; its port stays guarded while another
    /// mapping of either family publishes it.
    pub(super) fn remove6(&self, b: &Binding) -> Result<(), DatapathError> {
        let (key, _) = entry6(b)?;
        let mut m = self.lock();
        let slot = m.services6.get(&key, 0).map(|v| v.binding);
        match m.services6.remove(&key) {
            Ok(()) => {
                if let Ok(slot) = slot {
                    m.slots.release(&key, slot);
                }
                let pk = port_key6(&key);
                match m.ports.get(&pk, 0) {
                    Ok(n) if n > 1 => m.ports.insert(pk, n - 1, 0).map_err(map_err(PORTS_MAP))?,
                    _ => {
                        let _ = m.ports.remove(&pk);
                    }
                }
                Ok(())
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(SERVICES6_MAP)(e)),
        }
    }
}

impl Maps {
    /// An IPv6 binding's counters, when its entry leads where the binding
    /// says and holds a slot (`tracked`: flows per slot, both families).
    pub(super) fn counters6(
        &self,
        b: &Binding,
        tracked: &HashMap<u32, u64>,
    ) -> Result<Option<BindingCounters>, DatapathError> {
        let (key, want) = entry6(b)?;
        match self.services6.get(&key, 0) {
            Ok(v) if (v.addr, v.port_be) == (want.addr, want.port_be) && v.binding != 0 => {
                binding_stats::read_slot(&self.binding_stats, v.binding, tracked).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// At start: takes out every IPv6 entry that is not one of `keep`'s
    /// (the caller rebuilds the port guard afterwards). Returns how many.
    pub(super) fn retain6(&mut self, keep: &[Binding]) -> Result<usize, DatapathError> {
        let keep: HashSet<Entry6> = keep
            .iter()
            .filter_map(|b| entry6(b).ok())
            .map(|(k, v)| (k.host_addr, k.host_port_be, k.proto, v.addr, v.port_be))
            .collect();
        let stale: Vec<(ServiceKey6, u32)> = self
            .services6
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                !keep.contains(&(k.host_addr, k.host_port_be, k.proto, v.addr, v.port_be))
            })
            .map(|(k, v)| (k, v.binding))
            .collect();
        for (k, slot) in &stale {
            match self.services6.remove(k) {
                Ok(()) => self.slots.release(k, *slot),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(SERVICES6_MAP)(e)),
            }
        }
        Ok(stale.len())
    }
}
