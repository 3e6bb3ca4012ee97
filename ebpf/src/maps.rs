//! The maps, pinned by name so a restarted daemon adopts them.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use berth_maps::{
    Backend, CtEntry, Endpoint, FlowKey, NatEntry, Policy, PolicyKey, PortKey, ServiceKey,
    SgMember, SockRevKey, SockRevValue, CONFIG_LEN, COUNTERS_LEN, CT_CAPACITY, ENDPOINTS_CAPACITY,
    HOOKED_PORTS_CAPACITY, HOST_ADDRS_CAPACITY, NAT_CAPACITY, POLICY_CAPACITY, PORTS_CAPACITY,
    PORT_MACS_CAPACITY, SERVICES_CAPACITY, SG_MEMBERS_CAPACITY, SOCK_REV_CAPACITY,
};

#[map]
pub static BERTH_SERVICES: HashMap<ServiceKey, Backend> = HashMap::pinned(SERVICES_CAPACITY, 0);

#[map]
pub static BERTH_HOST_ADDRS: HashMap<u32, u32> = HashMap::pinned(HOST_ADDRS_CAPACITY, 0);

#[map]
pub static BERTH_NAT: HashMap<FlowKey, NatEntry> = HashMap::pinned(NAT_CAPACITY, 0);

#[map]
pub static BERTH_PORTS: HashMap<PortKey, u32> = HashMap::pinned(PORTS_CAPACITY, 0);

/// LRU: losing an entry only costs the original address in getpeername()
/// or a UDP reply's source; it never breaks forwarding.
#[map]
pub static BERTH_SOCK_REV: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(SOCK_REV_CAPACITY, 0);

#[map]
pub static BERTH_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(ENDPOINTS_CAPACITY, 0);

/// Values are large (every rule of a task): allocate only what exists.
#[map]
pub static BERTH_POLICY: HashMap<PolicyKey, Policy> =
    HashMap::pinned(POLICY_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub static BERTH_SG_MEMBERS: HashMap<SgMember, u32> = HashMap::pinned(SG_MEMBERS_CAPACITY, 0);

#[map]
pub static BERTH_CT: HashMap<FlowKey, CtEntry> = HashMap::pinned(CT_CAPACITY, 0);

/// Bridge ports with security-group hooks, by ifindex (see `gate`).
#[map]
pub static BERTH_HOOKED_PORTS: HashMap<u32, u32> = HashMap::pinned(HOOKED_PORTS_CAPACITY, 0);

/// Source MAC -> the hooked port its frames came in by (see `gate`).
#[map]
pub static BERTH_PORT_MACS: LruHashMap<u64, u32> = LruHashMap::pinned(PORT_MACS_CAPACITY, 0);

#[map]
pub static BERTH_CONFIG: Array<u64> = Array::pinned(CONFIG_LEN, 0);

#[map]
pub static BERTH_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

#[inline(always)]
pub fn count(counter: berth_maps::Counter) {
    if let Some(v) = BERTH_COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *v += 1 };
    }
}
