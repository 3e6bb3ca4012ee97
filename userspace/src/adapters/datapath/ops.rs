//! The engine's [`Datapath`] on the loaded maps: publishing bindings,
//! host addresses and bridge subnets, flow sweeps and expiry, counters,
//! and the security-group tables. `bpf` loads and attaches; this writes.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use berth_maps::{
    local_net_encode, Backend, FlowKey, FlowKey6, NatEntry, NatEntry6, PortKey, ServiceKey,
    CONFIG_MAP, CONFIG_PORT_GATE, COUNTERS_MAP, COUNTER_NAMES, HOST_ADDRS_MAP, LOCAL_NETS_MAP,
    LOCAL_NETS_MAX, LOCAL_NET_MORE, PORTS_MAP, SERVICES_MAP,
};

use super::{
    binding_stats,
    bpf::{map_err, mappings_err, BpfDatapath},
    flowlog::DepartedSlot,
    flows::{
        flow_expired, flow_timeout, fwd_flow_key, fwd_owns, monotonic_ns, on_addrs_gone, owned_by,
        owned_by_none_of, sweep, touching, FlowTable,
    },
    flows6::{nat6_expired, owned_by6, owned_by_none_of6, sweep6, touching6},
    Datapath, DatapathError, FlowTimeouts, PolicyRule,
};
use crate::{domain::cidr::Ipv4Cidr, domain::model::Binding, engine::flowlog::TableFlow};

impl BpfDatapath {
    /// [`sweep`] over the published-port tables; while a flow log runs,
    /// each deleted flow is handed to it with its final counts.
    fn sweep_nat(
        &self,
        doomed: impl Fn(&FlowKey, &NatEntry, FlowTable) -> bool,
    ) -> Result<usize, DatapathError> {
        let Some(slot) = self.departed_slot() else {
            return sweep(&self.flows, doomed);
        };
        sweep(&self.flows, |k, v, table| {
            let gone = doomed(k, v, table);
            if gone {
                note_departed(&slot, || TableFlow::v4(k, v));
            }
            gone
        })
    }

    /// [`Self::sweep_nat`] over the IPv6 published-port tables.
    fn sweep_nat6(
        &self,
        doomed: impl Fn(&FlowKey6, &NatEntry6, FlowTable) -> bool,
    ) -> Result<usize, DatapathError> {
        let Some(slot) = self.departed_slot() else {
            return sweep6(&self.nat6_flows, doomed);
        };
        sweep6(&self.nat6_flows, |k, v, table| {
            let gone = doomed(k, v, table);
            if gone {
                note_departed(&slot, || TableFlow::v6(k, v));
            }
            gone
        })
    }

    /// Deletes the published-port flows of both families that count in
    /// one of `slots` (freed counters slots about to be reused).
    pub(super) fn forget_slot_flows(&self, slots: &HashSet<u32>) -> Result<usize, DatapathError> {
        let n = self.sweep_nat(|_, v, _| slots.contains(&v.binding))?;
        Ok(n + self.sweep_nat6(|_, v, _| slots.contains(&v.binding))?)
    }

    /// The flow log's slot for deleted flows while one runs.
    fn departed_slot(&self) -> Option<DepartedSlot> {
        self.departed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
            .then(|| self.departed.clone())
    }
}

fn note_departed(slot: &DepartedSlot, flow: impl FnOnce() -> TableFlow) {
    if let Some(d) = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
    {
        d.push(flow);
    }
}

fn port_key(b: &Binding) -> PortKey {
    PortKey {
        port_be: b.host_port.to_be(),
        proto: b.protocol.ip_proto(),
        _pad: 0,
    }
}

/// The subnets a `BERTH_LOCAL_NETS` array holds, in slot order.
fn local_nets_listed(slots: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for slot in slots {
        if *slot == 0 {
            break;
        }
        out.push(slot & !LOCAL_NET_MORE);
        if slot & LOCAL_NET_MORE == 0 {
            break;
        }
    }
    out
}

/// The slot writes, in order, that turn `BERTH_LOCAL_NETS` from `slots` into
/// the subnets `want`. Each write is one 8-byte slot, ordered so that a
/// packet racing the update sees the old list, the new one, or the old one
/// plus new subnets (write a slot, then link it from the one before; copy
/// the last over a stale one, then unlink the last): a re-addressed bridge
/// is never unguarded.
fn local_net_writes(slots: &[u64], want: &[u64]) -> Vec<(u32, u64)> {
    let mut have = local_nets_listed(slots);
    let mut writes = Vec::new();
    for net in want {
        if !have.contains(net) {
            have.push(*net);
            let n = have.len();
            writes.push((n as u32 - 1, *net));
            if n > 1 {
                writes.push((n as u32 - 2, have[n - 2] | LOCAL_NET_MORE));
            }
        }
    }
    while let Some(i) = have.iter().position(|n| !want.contains(n)) {
        let n = have.len();
        if i + 1 < n {
            writes.push((i as u32, have[n - 1] | LOCAL_NET_MORE));
        }
        have.swap_remove(i);
        match have.len() {
            0 => writes.push((0, 0)),
            n => {
                writes.push((n as u32 - 1, have[n - 1]));
                writes.push((n as u32, 0));
            }
        }
    }
    writes
}

/// The IPv4 bits of an address; the callers have sent IPv6 bindings to
/// `bindings6.rs` already (an IPv6 one would read as the wildcard).
fn v4_be(ip: std::net::IpAddr) -> u32 {
    match ip {
        std::net::IpAddr::V4(ip) => u32::from_ne_bytes(ip.octets()),
        std::net::IpAddr::V6(_) => 0,
    }
}

pub fn service_key(b: &Binding) -> ServiceKey {
    ServiceKey {
        host_addr_be: v4_be(b.bind_ip),
        host_port_be: b.host_port.to_be(),
        proto: b.protocol.ip_proto(),
        _pad: 0,
    }
}

pub fn backend(b: &Binding) -> Backend {
    Backend {
        addr_be: v4_be(b.container_ip),
        port_be: b.container_port.to_be(),
        _pad: 0,
        binding: 0,
    }
}

impl BpfDatapath {
    /// Forget the clash-remap entries whose flow no longer exists (expired
    /// or forgotten); an established flow's remap is never touched.
    fn forget_orphan_remaps(&self) {
        let mut m = self.lock();
        let orphans: Vec<FlowKey> = m
            .nat_fwd
            .iter()
            .filter_map(Result::ok)
            .filter(|(wire, f)| {
                let key = fwd_flow_key(wire, f);
                let e = self.flows.iter().find_map(|t| t.map.get(&key, 0).ok());
                !e.is_some_and(|e| fwd_owns(wire, &e))
            })
            .map(|(k, _)| k)
            .collect();
        for k in &orphans {
            let _ = m.nat_fwd.remove(k);
        }
    }

    /// Forget the IPv6 policy-tracked flows (`BERTH_CT6`, `BERTH_CT6_NEW`)
    /// with any of `addrs` at either end: IPv6 endpoints no task has any
    /// more. As IPv4's [`Datapath::forget_endpoint_flows`], so a task
    /// published again at the address, on the same port, starts from its
    /// own groups; done at once, when the endpoint goes (there is no IPv6
    /// publish for a sweep to hold back).
    fn forget_endpoint_flows6(&self, addrs: &[Ipv6Addr]) -> Result<(), DatapathError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let n = sweep6(&self.ct6_flows, touching6(addrs))?;
        if n > 0 {
            tracing::info!(
                flows = n,
                addresses = addrs.len(),
                "forgot IPv6 policy-tracked flows of endpoints that went"
            );
        }
        Ok(())
    }
}

impl Datapath for BpfDatapath {
    fn insert(&self, b: &Binding) -> Result<(), DatapathError> {
        if b.is_ipv6() {
            return self.insert6(b);
        }
        let mut m = self.lock();
        let key = service_key(b);
        let current = m.services.get(&key, 0).ok();
        let new = current.is_none();
        let mut value = backend(b);
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
        let pk = port_key(b);
        let guarded = m.ports.get(&pk, 0).unwrap_or(0);
        if new {
            // Guard the port first: a host process must not slip in between.
            m.ports
                .insert(pk, guarded + 1, 0)
                .map_err(mappings_err(PORTS_MAP, self.max_mappings))?;
            if key.host_addr_be != 0 {
                m.exact_added(&key)?;
            }
        }
        let inserted = m
            .services
            .insert(key, value, 0)
            .map_err(mappings_err(SERVICES_MAP, self.max_mappings));
        if inserted.is_err() && current.map(|c| c.binding) != Some(value.binding) {
            m.slots.release(&key, value.binding);
        }
        if inserted.is_err() && new {
            // A full table: the port is not published, so not guarded.
            let _ = match guarded {
                0 => m.ports.remove(&pk),
                n => m.ports.insert(pk, n, 0),
            };
            if key.host_addr_be != 0 {
                m.exact_removed(&key)?;
            }
        }
        inserted
    }

    fn publishes(&self, b: &Binding) -> Result<bool, DatapathError> {
        if b.is_ipv6() {
            return self.publishes6(b);
        }
        let m = self.lock();
        // The counters' slot is the datapath's own choice: compare where
        // the mapping leads, not which slot counts it.
        let want = backend(b);
        let served = m
            .services
            .get(&service_key(b), 0)
            .is_ok_and(|v| v.addr_be == want.addr_be && v.port_be == want.port_be);
        let guarded = m.ports.get(&port_key(b), 0).is_ok_and(|n| n > 0);
        Ok(served && guarded)
    }

    fn remove(&self, b: &Binding) -> Result<(), DatapathError> {
        if b.is_ipv6() {
            return self.remove6(b);
        }
        let mut m = self.lock();
        let key = service_key(b);
        let slot = m.services.get(&key, 0).map(|v| v.binding);
        match m.services.remove(&key) {
            Ok(()) => {
                if let Ok(slot) = slot {
                    m.slots.release(&key, slot);
                }
                if key.host_addr_be != 0 {
                    m.exact_removed(&key)?;
                }
                let pk = port_key(b);
                match m.ports.get(&pk, 0) {
                    Ok(n) if n > 1 => m.ports.insert(pk, n - 1, 0).map_err(map_err(PORTS_MAP))?,
                    _ => {
                        let _ = m.ports.remove(&pk);
                    }
                }
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(SERVICES_MAP)(e)),
        }
        Ok(())
    }

    fn forget_flows(&self, gone: &[Binding]) -> Result<usize, DatapathError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let n = self.sweep_nat(owned_by(gone))?;
        self.forget_orphan_remaps();
        let n6 = self.sweep_nat6(owned_by6(gone))?;
        self.forget_orphan_remaps6();
        Ok(n + n6)
    }

    fn forget_endpoint_flows(&self, addrs: &[Ipv4Addr]) -> Result<usize, DatapathError> {
        if addrs.is_empty() {
            return Ok(0);
        }
        sweep(&self.ct_flows, touching(addrs))
    }

    fn retain(&self, keep: &[Binding]) -> Result<usize, DatapathError> {
        let keep_bindings = keep;
        let keep: HashSet<(ServiceKey, (u32, u16))> = keep
            .iter()
            .filter(|b| !b.is_ipv6())
            .map(|b| {
                let be = backend(b);
                (service_key(b), (be.addr_be, be.port_be))
            })
            .collect();
        let mut m = self.lock();
        let stale6 = m.retain6(keep_bindings)?;
        let stale: Vec<ServiceKey> = m
            .services
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| !keep.contains(&(*k, (v.addr_be, v.port_be))))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            let slot = m.services.get(k, 0).map(|v| v.binding);
            match m.services.remove(k) {
                Ok(()) => {
                    if let Ok(slot) = slot {
                        m.slots.release(k, slot);
                    }
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(SERVICES_MAP)(e)),
            }
        }
        // Rebuild the guarded ports from what is published: counts kept
        // across a crash may be off.
        let mut want: std::collections::HashMap<PortKey, u32> = std::collections::HashMap::new();
        for (k, _) in m.services.iter().filter_map(Result::ok) {
            let pk = PortKey {
                port_be: k.host_port_be,
                proto: k.proto,
                _pad: 0,
            };
            *want.entry(pk).or_default() += 1;
        }
        // IPv6 mappings guard their ports as well: a port published over
        // IPv6 only is still refused to host sockets of either family.
        for (k, _) in m.services6.iter().filter_map(Result::ok) {
            let pk = PortKey {
                port_be: k.host_port_be,
                proto: k.proto,
                _pad: 0,
            };
            *want.entry(pk).or_default() += 1;
        }
        let have: Vec<PortKey> = m.ports.keys().filter_map(Result::ok).collect();
        for pk in have {
            if !want.contains_key(&pk) {
                let _ = m.ports.remove(&pk);
            }
        }
        for (pk, n) in want {
            m.ports.insert(pk, n, 0).map_err(map_err(PORTS_MAP))?;
        }
        m.recount_exact()?;
        drop(m);
        let forgotten = self.sweep_nat(owned_by_none_of(keep_bindings))?
            + self.sweep_nat6(owned_by_none_of6(keep_bindings))?;
        if forgotten > 0 {
            self.forget_orphan_remaps();
            self.forget_orphan_remaps6();
            tracing::info!(
                flows = forgotten,
                "forgot tracked flows of bindings the store does not have"
            );
        }
        Ok(stale.len() + stale6)
    }

    fn set_host_addrs6(&self, addrs: &[Ipv6Addr]) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let fill = &self.status.host_addrs;
        // The first that fit (the most important); the ones left out go
        // first, making room.
        let (want, wanted) =
            super::host_addrs::fit(addrs.iter().map(Ipv6Addr::octets), fill.capacity());
        let have: HashSet<[u8; 16]> = m.host_addrs6.keys().filter_map(Result::ok).collect();
        let gone: HashSet<[u8; 16]> = have.difference(&want).copied().collect();
        for a in &gone {
            let _ = m.host_addrs6.remove(a);
        }
        // A failed insert still ends the flows of the addresses that went.
        let mut result = Ok(());
        let mut held = have.len() - gone.len();
        for a in want.difference(&have) {
            if let Err(e) = m.host_addrs6.insert(*a, 1, 0) {
                result = Err(map_err(berth_maps::HOST_ADDRS6_MAP)(e));
                break;
            }
            held += 1;
        }
        fill.record(true, wanted, held);
        if result.is_ok() && want.len() < wanted {
            result = Err(DatapathError::HostAddrsFull {
                map: berth_maps::HOST_ADDRS6_MAP,
                family: "IPv6",
                held: want.len(),
                wanted,
            });
        }
        if gone.is_empty() {
            return result;
        }
        // As for IPv4 (below): the flows a wildcard mapping let in on an
        // address the host no longer has end; an address-bound mapping's
        // stay.
        let bound: HashSet<berth_maps::ServiceKey6> = m
            .services6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.host_addr))
            .collect();
        drop(m);
        let ended = self.sweep_nat6(|k, e, _| {
            let svc = berth_maps::ServiceKey6 {
                host_addr: e.host_addr,
                host_port_be: e.host_port_be,
                proto: k.proto,
                _pad: 0,
            };
            gone.contains(&e.host_addr) && !bound.contains(&svc)
        })?;
        if ended > 0 {
            self.forget_orphan_remaps6();
            tracing::info!(flows = ended, "IPv6 flows ended with their host address");
        }
        result
    }

    fn set_host_addrs(&self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let fill = &self.status.host_addrs;
        let (want, wanted) = super::host_addrs::fit(
            addrs.iter().map(|a| u32::from_ne_bytes(a.octets())),
            fill.capacity(),
        );
        let have: HashSet<u32> = m.host_addrs.keys().filter_map(Result::ok).collect();
        let gone: HashSet<u32> = have.difference(&want).copied().collect();
        for a in &gone {
            let _ = m.host_addrs.remove(a);
        }
        // As for IPv6: the flows of the addresses that went end whatever.
        let mut result = Ok(());
        let mut held = have.len() - gone.len();
        for a in want.difference(&have) {
            if let Err(e) = m.host_addrs.insert(*a, 1, 0) {
                result = Err(map_err(HOST_ADDRS_MAP)(e));
                break;
            }
            held += 1;
        }
        fill.record(false, wanted, held);
        if result.is_ok() && want.len() < wanted {
            result = Err(DatapathError::HostAddrsFull {
                map: HOST_ADDRS_MAP,
                family: "IPv4",
                held: want.len(),
                wanted,
            });
        }
        if gone.is_empty() {
            return result;
        }
        // The datapath checks a wildcard mapping's address when a flow
        // opens, not per packet; the flows it let in on an address the
        // host no longer has end here (as conntrack's MASQUERADE entries do
        // when their address goes). An address-bound mapping never asked.
        let bound: HashSet<(u32, u16, u8)> = m
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.host_addr_be))
            .map(|k| (k.host_addr_be, k.host_port_be, k.proto))
            .collect();
        drop(m);
        let n = sweep(&self.flows, on_addrs_gone(gone.clone(), bound))?;
        if n > 0 {
            self.forget_orphan_remaps();
            let addrs: Vec<Ipv4Addr> = gone
                .iter()
                .map(|a| Ipv4Addr::from(a.to_ne_bytes()))
                .collect();
            tracing::info!(flows = n, addrs = ?addrs, "ended the flows of host addresses that went away");
        }
        result
    }

    fn set_bridge_subnets(&self, subnets: &[Ipv4Cidr]) -> Result<(), DatapathError> {
        let mut m = self.lock();
        let want: Vec<u64> = subnets
            .iter()
            .map(|c| {
                let n = c.network();
                local_net_encode(u32::from_ne_bytes(n.addr.octets()), n.prefix_len)
            })
            .collect();
        if want.len() > LOCAL_NETS_MAX as usize {
            return Err(DatapathError::Other(format!(
                "the bridge has {} IPv4 subnets; berth guards at most {LOCAL_NETS_MAX}",
                want.len()
            )));
        }
        let err = map_err(LOCAL_NETS_MAP);
        let mut slots = Vec::with_capacity(LOCAL_NETS_MAX as usize);
        for i in 0..LOCAL_NETS_MAX {
            slots.push(m.local_nets.get(&i, 0).map_err(&err)?);
        }
        for (i, v) in local_net_writes(&slots, &want) {
            m.local_nets.set(i, v, 0).map_err(&err)?;
        }
        Ok(())
    }

    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let m = self.lock();
        COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v = m
                    .counters
                    .get(&(i as u32), 0)
                    .map_err(map_err(COUNTERS_MAP))?;
                Ok((*name, v.iter().sum()))
            })
            .collect()
    }

    fn expire_flows(&self) -> Result<usize, DatapathError> {
        let t = *self
            .timeouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = monotonic_ns();
        let from_policy = sweep(&self.ct_flows, |k, v, table| {
            let timeout = flow_timeout(k.proto, v.flags, table, &t);
            now.saturating_sub(v.last_seen_ns) > timeout * 1_000_000_000
        })?;
        let from_policy6 = super::flows6::expire6(&self.ct6_flows, now, &t)?;
        let expired = self.sweep_nat(|k, v, table| flow_expired(k, v, table, now, &t))?;
        self.forget_orphan_remaps();
        let expired6 = self.sweep_nat6(|k, v, table| nat6_expired(k, v, table, now, &t))?;
        self.forget_orphan_remaps6();
        Ok(expired + expired6 + from_policy + from_policy6)
    }

    fn set_endpoint(&self, ip: Ipv4Addr, task_id: u32, policy: bool) -> Result<(), DatapathError> {
        self.policy().set_endpoint(ip, task_id, policy)
    }

    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        self.policy().remove_endpoint(ip)
    }

    fn set_policy(
        &self,
        task_id: u32,
        ingress: &[PolicyRule],
        egress: &[PolicyRule],
    ) -> Result<(), DatapathError> {
        self.policy().set_policy(task_id, ingress, egress)
    }

    fn remove_policy(&self, task_id: u32) -> Result<(), DatapathError> {
        self.policy().remove_policy(task_id)
    }

    fn set_group_members(&self, sg_id: u32, members: &[Ipv4Addr]) -> Result<(), DatapathError> {
        self.policy().set_group_members(sg_id, members)
    }

    fn retain_policy(
        &self,
        endpoints: &[Ipv4Addr],
        policies: &[u32],
        groups: &[u32],
    ) -> Result<usize, DatapathError> {
        let (n, gone) = self.policy().retain(endpoints, policies, groups);
        let forgotten = self.forget_endpoint_flows(&gone)?;
        if forgotten > 0 {
            tracing::info!(
                flows = forgotten,
                "forgot policy-tracked flows of tasks the store does not have"
            );
        }
        Ok(n)
    }

    fn set_endpoint6(&self, ip: Ipv6Addr, task_id: u32, policy: bool) -> Result<(), DatapathError> {
        self.policy().set_endpoint6(ip, task_id, policy)
    }

    fn remove_endpoint6(&self, ip: Ipv6Addr) -> Result<(), DatapathError> {
        self.policy().remove_endpoint6(ip)?;
        self.forget_endpoint_flows6(&[ip])
    }

    fn set_group_members6(&self, sg_id: u32, members: &[Ipv6Addr]) -> Result<(), DatapathError> {
        self.policy().set_group_members6(sg_id, members)
    }

    fn retain_policy6(
        &self,
        endpoints: &[Ipv6Addr],
        groups: &[u32],
    ) -> Result<usize, DatapathError> {
        let (n, gone) = self.policy().retain6(endpoints, groups);
        self.forget_endpoint_flows6(&gone)?;
        Ok(n)
    }

    fn set_port_gate(&self, on: bool) -> Result<(), DatapathError> {
        self.lock()
            .config
            .set(CONFIG_PORT_GATE, u64::from(on), 0)
            .map_err(map_err(CONFIG_MAP))
    }

    fn set_no_policy(&self, none: bool) -> Result<(), DatapathError> {
        self.lock()
            .config
            .set(berth_maps::CONFIG_NO_POLICY, u64::from(none), 0)
            .map_err(map_err(CONFIG_MAP))
    }

    fn set_flow_timeouts(&self, timeouts: FlowTimeouts) {
        *self
            .timeouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = timeouts;
    }

    fn set_datapath_log(&self, on: bool) -> Result<(), DatapathError> {
        self.write_datapath_log(on)
    }

    fn status(&self) -> Result<Option<super::DatapathStatus>, DatapathError> {
        Ok(Some(self.status.read()))
    }

    fn binding_counters(
        &self,
        bindings: &[Binding],
    ) -> Result<Vec<Option<super::BindingCounters>>, DatapathError> {
        // Outside the maps' mutex: the flow tables are scanned by batch.
        let tracked = binding_stats::tracked_per_slot(&self.flows, &self.nat6_flows)?;
        let m = self.lock();
        bindings
            .iter()
            .map(|b| {
                if b.is_ipv6() {
                    return m.counters6(b, &tracked);
                }
                let want = backend(b);
                match m.services.get(&service_key(b), 0) {
                    Ok(v)
                        if (v.addr_be, v.port_be) == (want.addr_be, want.port_be)
                            && v.binding != 0 =>
                    {
                        binding_stats::read_slot(&m.binding_stats, v.binding, &tracked).map(Some)
                    }
                    _ => Ok(None),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(third: u8, len: u8) -> u64 {
        local_net_encode(u32::from_ne_bytes([172, 17, third, 0]), len)
    }

    /// Applies the writes one by one, as packets would see them.
    fn replay(from: &[u64], want: &[u64]) {
        let mut slots = vec![0u64; LOCAL_NETS_MAX as usize];
        for (i, v) in local_net_writes(&slots.clone(), from) {
            slots[i as usize] = v;
        }
        assert_eq!(local_nets_listed(&slots), from);
        let kept: Vec<u64> = from.iter().filter(|n| want.contains(n)).copied().collect();
        for (i, v) in local_net_writes(&slots.clone(), want) {
            slots[i as usize] = v;
            let seen = local_nets_listed(&slots);
            for k in &kept {
                assert!(seen.contains(k), "{k:#x} unguarded mid-update: {seen:x?}");
            }
            assert!(seen.iter().all(|n| from.contains(n) || want.contains(n)));
        }
        let mut got = local_nets_listed(&slots);
        got.sort_unstable();
        let mut w = want.to_vec();
        w.sort_unstable();
        assert_eq!(got, w);
    }

    #[test]
    fn bridge_subnets_are_rewritten_without_a_gap() {
        let (a, b, c, d) = (net(0, 16), net(1, 24), net(2, 24), net(3, 24));
        replay(&[], &[a]);
        replay(&[a], &[]);
        replay(&[a], &[b]);
        replay(&[a, b, c], &[c]);
        replay(&[a, b, c], &[a]);
        replay(&[a, b, c], &[b, d]);
        replay(&[a, b], &[a, b]);
    }
}
