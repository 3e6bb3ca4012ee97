//! In-memory [`Datapath`] and [`Host`] for unit tests and the API fuzz
//! target (feature `fake`), with injectable failures.
use std::{
    collections::BTreeSet,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use crate::{
    domain::error::DatapathError,
    domain::model::{Binding, Protocol},
    engine::datapath::Datapath,
    engine::host::Host,
};

/// Compiled rules of a task: (ingress, egress).
pub type FakePolicy = (
    Vec<crate::engine::datapath::PolicyRule>,
    Vec<crate::engine::datapath::PolicyRule>,
);

/// What the fake was asked to do, for tests of ordering.
// A test log: boxing the binding would only add noise to every match.
#[expect(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeOp {
    Insert(Binding),
    /// A sweep finished, with these bindings.
    Forgot(Vec<Binding>),
}

#[derive(Default)]
pub struct FakeDatapath {
    pub endpoints: Mutex<std::collections::BTreeMap<Ipv4Addr, (u32, bool)>>,
    pub policies: Mutex<std::collections::BTreeMap<u32, FakePolicy>>,
    pub members: Mutex<std::collections::BTreeMap<u32, Vec<Ipv4Addr>>>,
    pub endpoints6: Mutex<std::collections::BTreeMap<Ipv6Addr, (u32, bool)>>,
    pub members6: Mutex<std::collections::BTreeMap<u32, Vec<Ipv6Addr>>>,
    fail_endpoint6: Mutex<Option<Ipv6Addr>>,
    pub timeouts: Mutex<Option<crate::engine::datapath::FlowTimeouts>>,
    bindings: Mutex<BTreeSet<Binding>>,
    host_addrs: Mutex<Vec<Ipv4Addr>>,
    host_addrs6: Mutex<Vec<Ipv6Addr>>,
    bridge_subnets: Mutex<Vec<crate::domain::cidr::Ipv4Cidr>>,
    fail_insert_port: Mutex<Option<u16>>,
    fail_remove_port: Mutex<Option<u16>>,
    fail_endpoint: Mutex<Option<Ipv4Addr>>,
    /// `set_host_addrs6` refuses, as a full `BERTH_HOST_ADDRS6` would.
    fail_host_addrs6: AtomicBool,
    /// `set_host_addrs6` keeps this many, as a table of that size would.
    host_addrs6_capacity: Mutex<Option<usize>>,
    host_addr6_updates: AtomicUsize,
    removes: AtomicUsize,
    host_addr_updates: AtomicUsize,
    expire_calls: AtomicUsize,
    /// Each `forget_flows` call's bindings, in order.
    forgotten: Mutex<Vec<Vec<Binding>>>,
    /// Each `forget_endpoint_flows` call's addresses, in order.
    forgotten_endpoints: Mutex<Vec<Vec<Ipv4Addr>>>,
    /// Inserts and sweeps in the order they happened.
    journal: Mutex<Vec<FakeOp>>,
    /// How long `forget_flows` takes, as a sweep of a full table would.
    forget_delay: Mutex<std::time::Duration>,
    pub port_gate: AtomicBool,
    /// The veth hooks' "no endpoint has policy" flag.
    pub no_policy: AtomicBool,
    /// `set_datapath_log`'s last word.
    pub datapath_log: AtomicBool,
    /// An endpoint got policy while that flag was set.
    pub policy_while_flagged: AtomicBool,
    /// The datapath's counters, by index; 0 unless a test counts.
    counts: Mutex<std::collections::BTreeMap<u32, u64>>,
}

impl FakeDatapath {
    /// Counts `n` packets under `counter`, as the programs would.
    pub fn count(&self, counter: berth_maps::Counter, n: u64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(counter as u32)
            .or_default() += n;
    }
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().unwrap().iter().cloned().collect()
    }
    pub fn host_addrs(&self) -> Vec<Ipv4Addr> {
        self.host_addrs.lock().unwrap().clone()
    }
    pub fn host_addrs6(&self) -> Vec<Ipv6Addr> {
        self.host_addrs6.lock().unwrap().clone()
    }
    pub fn bridge_subnets(&self) -> Vec<crate::domain::cidr::Ipv4Cidr> {
        self.bridge_subnets.lock().unwrap().clone()
    }
    pub fn fail_host_addrs6(&self) {
        self.fail_host_addrs6.store(true, Ordering::SeqCst);
    }
    pub fn limit_host_addrs6(&self, capacity: usize) {
        *self.host_addrs6_capacity.lock().unwrap() = Some(capacity);
    }
    pub fn host_addr6_updates(&self) -> usize {
        self.host_addr6_updates.load(Ordering::SeqCst)
    }
    pub fn fail_insert_of_host_port(&self, port: u16) {
        *self.fail_insert_port.lock().unwrap() = Some(port);
    }
    pub fn fail_remove_of_host_port(&self, port: u16) {
        *self.fail_remove_port.lock().unwrap() = Some(port);
    }
    /// Inserts and removes of every port work again.
    pub fn stop_failing_bindings(&self) {
        *self.fail_insert_port.lock().unwrap() = None;
        *self.fail_remove_port.lock().unwrap() = None;
    }
    pub fn removes(&self) -> usize {
        self.removes.load(Ordering::SeqCst)
    }
    pub fn host_addr_updates(&self) -> usize {
        self.host_addr_updates.load(Ordering::SeqCst)
    }
    /// Makes setting the IPv6 endpoint of `ip` fail (`None`: stop failing).
    pub fn fail_endpoint6_of(&self, ip: Option<Ipv6Addr>) {
        *self.fail_endpoint6.lock().unwrap() = ip;
    }

    /// Makes setting the endpoint of `ip` fail (`None`: stop failing).
    pub fn fail_endpoint_of(&self, ip: Option<Ipv4Addr>) {
        *self.fail_endpoint.lock().unwrap() = ip;
    }
    pub fn expire_calls(&self) -> usize {
        self.expire_calls.load(Ordering::SeqCst)
    }
    pub fn forgotten(&self) -> Vec<Vec<Binding>> {
        self.forgotten.lock().unwrap().clone()
    }
    pub fn set_forget_delay(&self, delay: std::time::Duration) {
        *self.forget_delay.lock().unwrap() = delay;
    }
    pub fn forgotten_endpoints(&self) -> Vec<Vec<Ipv4Addr>> {
        self.forgotten_endpoints.lock().unwrap().clone()
    }
    pub fn journal(&self) -> Vec<FakeOp> {
        self.journal.lock().unwrap().clone()
    }
}

fn injected(map: &'static str) -> DatapathError {
    DatapathError::Map {
        map,
        reason: "injected failure".into(),
    }
}

impl Datapath for FakeDatapath {
    fn set_datapath_log(&self, on: bool) -> Result<(), DatapathError> {
        self.datapath_log.store(on, Ordering::SeqCst);
        Ok(())
    }

    fn set_endpoint(&self, ip: Ipv4Addr, task_id: u32, policy: bool) -> Result<(), DatapathError> {
        if *self.fail_endpoint.lock().unwrap() == Some(ip) {
            return Err(injected("BERTH_ENDPOINTS"));
        }
        if policy && self.no_policy.load(Ordering::SeqCst) {
            self.policy_while_flagged.store(true, Ordering::SeqCst);
        }
        self.endpoints.lock().unwrap().insert(ip, (task_id, policy));
        Ok(())
    }
    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        self.endpoints.lock().unwrap().remove(&ip);
        Ok(())
    }
    fn set_policy(
        &self,
        task_id: u32,
        ingress: &[crate::engine::datapath::PolicyRule],
        egress: &[crate::engine::datapath::PolicyRule],
    ) -> Result<(), DatapathError> {
        self.policies
            .lock()
            .unwrap()
            .insert(task_id, (ingress.to_vec(), egress.to_vec()));
        Ok(())
    }
    fn remove_policy(&self, task_id: u32) -> Result<(), DatapathError> {
        self.policies.lock().unwrap().remove(&task_id);
        Ok(())
    }
    fn set_group_members(&self, sg_id: u32, members: &[Ipv4Addr]) -> Result<(), DatapathError> {
        self.members.lock().unwrap().insert(sg_id, members.to_vec());
        Ok(())
    }
    fn retain_policy(
        &self,
        endpoints: &[Ipv4Addr],
        policies: &[u32],
        groups: &[u32],
    ) -> Result<usize, DatapathError> {
        let mut n = 0;
        let mut e = self.endpoints.lock().unwrap();
        let before = e.len();
        e.retain(|ip, _| endpoints.contains(ip));
        n += before - e.len();
        let mut p = self.policies.lock().unwrap();
        let before = p.len();
        p.retain(|id, _| policies.contains(id));
        n += before - p.len();
        let mut m = self.members.lock().unwrap();
        let before = m.len();
        m.retain(|id, _| groups.contains(id));
        n += before - m.len();
        Ok(n)
    }
    fn set_endpoint6(&self, ip: Ipv6Addr, task_id: u32, policy: bool) -> Result<(), DatapathError> {
        if *self.fail_endpoint6.lock().unwrap() == Some(ip) {
            return Err(injected("BERTH_ENDPOINTS6"));
        }
        if policy && self.no_policy.load(Ordering::SeqCst) {
            self.policy_while_flagged.store(true, Ordering::SeqCst);
        }
        self.endpoints6
            .lock()
            .unwrap()
            .insert(ip, (task_id, policy));
        Ok(())
    }
    fn remove_endpoint6(&self, ip: Ipv6Addr) -> Result<(), DatapathError> {
        self.endpoints6.lock().unwrap().remove(&ip);
        Ok(())
    }
    fn set_group_members6(&self, sg_id: u32, members: &[Ipv6Addr]) -> Result<(), DatapathError> {
        self.members6
            .lock()
            .unwrap()
            .insert(sg_id, members.to_vec());
        Ok(())
    }
    fn retain_policy6(
        &self,
        endpoints: &[Ipv6Addr],
        groups: &[u32],
    ) -> Result<usize, DatapathError> {
        let mut e = self.endpoints6.lock().unwrap();
        let before = e.len();
        e.retain(|ip, _| endpoints.contains(ip));
        let mut n = before - e.len();
        let mut m = self.members6.lock().unwrap();
        let before = m.len();
        m.retain(|id, _| groups.contains(id));
        n += before - m.len();
        Ok(n)
    }
    fn set_port_gate(&self, on: bool) -> Result<(), DatapathError> {
        self.port_gate.store(on, Ordering::SeqCst);
        Ok(())
    }
    fn set_no_policy(&self, none: bool) -> Result<(), DatapathError> {
        let v6 = self.endpoints6.lock().unwrap().values().any(|e| e.1);
        if none && (v6 || self.endpoints.lock().unwrap().values().any(|e| e.1)) {
            self.policy_while_flagged.store(true, Ordering::SeqCst);
        }
        self.no_policy.store(none, Ordering::SeqCst);
        Ok(())
    }
    fn set_flow_timeouts(&self, timeouts: crate::engine::datapath::FlowTimeouts) {
        *self.timeouts.lock().unwrap() = Some(timeouts);
    }
    fn retain(&self, keep: &[Binding]) -> Result<usize, DatapathError> {
        let mut b = self.bindings.lock().unwrap();
        let before = b.len();
        b.retain(|x| keep.contains(x));
        Ok(before - b.len())
    }

    fn insert(&self, binding: &Binding) -> Result<(), DatapathError> {
        if *self.fail_insert_port.lock().unwrap() == Some(binding.host_port) {
            return Err(injected("BINDINGS"));
        }
        self.bindings.lock().unwrap().insert(binding.clone());
        self.journal
            .lock()
            .unwrap()
            .push(FakeOp::Insert(binding.clone()));
        Ok(())
    }
    fn publishes(&self, binding: &Binding) -> Result<bool, DatapathError> {
        Ok(self.bindings.lock().unwrap().contains(binding))
    }
    fn remove(&self, binding: &Binding) -> Result<(), DatapathError> {
        if *self.fail_remove_port.lock().unwrap() == Some(binding.host_port) {
            return Err(injected("BINDINGS"));
        }
        self.removes.fetch_add(1, Ordering::SeqCst);
        self.bindings.lock().unwrap().remove(binding);
        Ok(())
    }
    fn forget_flows(&self, gone: &[Binding]) -> Result<usize, DatapathError> {
        let delay = *self.forget_delay.lock().unwrap();
        std::thread::sleep(delay);
        self.forgotten.lock().unwrap().push(gone.to_vec());
        self.journal
            .lock()
            .unwrap()
            .push(FakeOp::Forgot(gone.to_vec()));
        Ok(0)
    }
    fn forget_endpoint_flows(&self, addrs: &[Ipv4Addr]) -> Result<usize, DatapathError> {
        self.forgotten_endpoints
            .lock()
            .unwrap()
            .push(addrs.to_vec());
        Ok(0)
    }
    fn set_host_addrs(&self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
        self.host_addr_updates.fetch_add(1, Ordering::SeqCst);
        *self.host_addrs.lock().unwrap() = addrs.to_vec();
        Ok(())
    }
    fn set_host_addrs6(&self, addrs: &[Ipv6Addr]) -> Result<(), DatapathError> {
        if self.fail_host_addrs6.load(Ordering::SeqCst) {
            return Err(DatapathError::Other("BERTH_HOST_ADDRS6 is full".into()));
        }
        self.host_addr6_updates.fetch_add(1, Ordering::SeqCst);
        let held = self
            .host_addrs6_capacity
            .lock()
            .unwrap()
            .unwrap_or(usize::MAX)
            .min(addrs.len());
        *self.host_addrs6.lock().unwrap() = addrs[..held].to_vec();
        if held < addrs.len() {
            return Err(DatapathError::HostAddrsFull {
                map: berth_maps::HOST_ADDRS6_MAP,
                family: "IPv6",
                held,
                wanted: addrs.len(),
            });
        }
        Ok(())
    }
    fn set_bridge_subnets(
        &self,
        subnets: &[crate::domain::cidr::Ipv4Cidr],
    ) -> Result<(), DatapathError> {
        *self.bridge_subnets.lock().unwrap() = subnets.to_vec();
        Ok(())
    }
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let counts = self.counts.lock().unwrap();
        Ok(berth_maps::Counter::ALL
            .iter()
            .map(|c| (c.name(), counts.get(&(*c as u32)).copied().unwrap_or(0)))
            .collect())
    }
    fn expire_flows(&self) -> Result<usize, DatapathError> {
        self.expire_calls.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// An in-memory [`Host`]: a reserved-ports sysctl, bound sockets and a
/// clock that tests set, with injectable sysctl write failures.
#[derive(Default)]
pub struct FakeHost {
    reserved: Mutex<BTreeSet<u16>>,
    bound: Mutex<Vec<(Protocol, u16)>>,
    listeners: Mutex<Vec<(Protocol, std::net::SocketAddr)>>,
    now: AtomicU64,
    holders: Mutex<Vec<HeldListener>>,
    fail_writes: AtomicBool,
    writes: AtomicUsize,
}

/// A listener and the processes holding it.
type HeldListener = (
    Protocol,
    std::net::SocketAddr,
    Vec<crate::engine::host::Holder>,
);

impl FakeHost {
    pub fn reserved(&self) -> BTreeSet<u16> {
        self.reserved.lock().unwrap().clone()
    }
    pub fn set_reserved(&self, ports: &[u16]) {
        *self.reserved.lock().unwrap() = ports.iter().copied().collect();
    }
    pub fn bind(&self, protocol: Protocol, port: u16) {
        self.bound.lock().unwrap().push((protocol, port));
    }
    /// A host process listening (TCP) or bound (UDP) on `addr`.
    pub fn listen(&self, protocol: Protocol, addr: &str) {
        let addr = addr.parse().unwrap();
        self.listeners.lock().unwrap().push((protocol, addr));
    }
    /// [`FakeHost::listen`] by the processes `holders`.
    pub fn listen_held(
        &self,
        protocol: Protocol,
        addr: &str,
        holders: &[crate::engine::host::Holder],
    ) {
        self.listen(protocol, addr);
        self.holders
            .lock()
            .unwrap()
            .push((protocol, addr.parse().unwrap(), holders.to_vec()));
    }
    pub fn unbind_all(&self) {
        self.bound.lock().unwrap().clear();
    }
    pub fn set_now(&self, secs: u64) {
        self.now.store(secs, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

impl Host for FakeHost {
    fn reserved_ports(&self) -> io::Result<BTreeSet<u16>> {
        Ok(self.reserved())
    }
    fn set_reserved_ports(&self, ports: &BTreeSet<u16>) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        *self.reserved.lock().unwrap() = ports.clone();
        Ok(())
    }
    fn bound_ports(&self, protocol: Protocol) -> io::Result<BTreeSet<u16>> {
        Ok(self
            .bound
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, port)| *port)
            .collect())
    }
    fn listeners(&self, protocol: Protocol) -> io::Result<Vec<std::net::SocketAddr>> {
        Ok(self
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
            .collect())
    }
    fn holders(
        &self,
        protocol: Protocol,
        local: std::net::SocketAddr,
    ) -> io::Result<Vec<crate::engine::host::Holder>> {
        Ok(self
            .holders
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, a, _)| *p == protocol && *a == local)
            .flat_map(|(_, _, h)| h.clone())
            .collect())
    }
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
