//! The maps, pinned by name so a restarted daemon adopts them. Plain hash
//! maps allocate each entry when it is inserted (`BPF_F_NO_PREALLOC)`: an
//! idle host pays for its bucket arrays only (see `berth_maps`' capacity
//! notes). LRU maps are always preallocated.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use berth_maps::{
    Backend, BindingStats, CtEntry, Endpoint, FlowKey, FragEntry, FragKey, NatEntry, NatFwd,
    Policy, PolicyKey, PortAddrs, PortKey, ServiceKey, SgMember, SockRevKey, SockRevValue,
    BINDING_STATS_CAPACITY, BRIDGE_MACS_CAPACITY, CONFIG_LEN, COUNTERS_LEN, CT_CAPACITY,
    CT_NEW_CAPACITY, ENDPOINTS_CAPACITY, EXACT_PORTS_LEN, FLOW_LOG_RING_BYTES, FRAGS_CAPACITY,
    HOOKED_PORTS_CAPACITY, HOST_ADDRS_CAPACITY, LOCAL_NETS_MAX, NAT_CAPACITY, NAT_FWD_CAPACITY,
    NAT_NEW_CAPACITY, POLICY_CAPACITY, PORTS_CAPACITY, PORT_ADDRS_CAPACITY, PORT_MACS_CAPACITY,
    SERVICES_CAPACITY, SG_MEMBERS_CAPACITY, SOCK_REV_CAPACITY,
};

#[map]
pub(crate) static BERTH_SERVICES: HashMap<ServiceKey, Backend> =
    HashMap::pinned(SERVICES_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_HOST_ADDRS: HashMap<u32, u32> =
    HashMap::pinned(HOST_ADDRS_CAPACITY, BPF_F_NO_PREALLOC);

/// The bridge's subnets: sources that never come from outside.
#[map]
pub(crate) static BERTH_LOCAL_NETS: Array<u64> = Array::pinned(LOCAL_NETS_MAX, 0);

/// Each bridge port's own addresses (host-side ifindex -> addresses).
#[map]
pub(crate) static BERTH_PORT_ADDRS: HashMap<u32, PortAddrs> =
    HashMap::pinned(PORT_ADDRS_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_NAT: HashMap<FlowKey, NatEntry> =
    HashMap::pinned(NAT_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_NAT_NEW: LruHashMap<FlowKey, NatEntry> =
    LruHashMap::pinned(NAT_NEW_CAPACITY, 0);

#[map]
pub(crate) static BERTH_NAT_FWD: HashMap<FlowKey, NatFwd> =
    HashMap::pinned(NAT_FWD_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_PORTS: HashMap<PortKey, u32> =
    HashMap::pinned(PORTS_CAPACITY, BPF_F_NO_PREALLOC);

/// LRU: losing an entry only costs the original address in `getpeername()`
/// or a UDP reply's source; it never breaks forwarding.
#[map]
pub(crate) static BERTH_SOCK_REV: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(SOCK_REV_CAPACITY, 0);

#[map]
pub(crate) static BERTH_ENDPOINTS: HashMap<u32, Endpoint> =
    HashMap::pinned(ENDPOINTS_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_POLICY: HashMap<PolicyKey, Policy> =
    HashMap::pinned(POLICY_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_SG_MEMBERS: HashMap<SgMember, u32> =
    HashMap::pinned(SG_MEMBERS_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_CT: HashMap<FlowKey, CtEntry> =
    HashMap::pinned(CT_CAPACITY, BPF_F_NO_PREALLOC);

/// LRU: losing an entry costs one fragmented datagram.
#[map]
pub(crate) static BERTH_FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::pinned(FRAGS_CAPACITY, 0);

#[map]
pub(crate) static BERTH_CT_NEW: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::pinned(CT_NEW_CAPACITY, 0);

/// Bridge ports with security-group hooks, by ifindex (see `gate`).
#[map]
pub(crate) static BERTH_HOOKED_PORTS: HashMap<u32, u32> =
    HashMap::pinned(HOOKED_PORTS_CAPACITY, BPF_F_NO_PREALLOC);

/// The served bridges' MACs -> their ifindex (see `gate`).
#[map]
pub(crate) static BERTH_BRIDGE_MACS: HashMap<u64, u32> =
    HashMap::pinned(BRIDGE_MACS_CAPACITY, BPF_F_NO_PREALLOC);

/// Source MAC -> the hooked port its frames came in by (see `gate`).
#[map]
pub(crate) static BERTH_PORT_MACS: LruHashMap<u64, u32> = LruHashMap::pinned(PORT_MACS_CAPACITY, 0);

#[map]
pub(crate) static BERTH_CONFIG: Array<u64> = Array::pinned(CONFIG_LEN, 0);

#[map]
pub(crate) static BERTH_EXACT_PORTS: Array<u64> = Array::pinned(EXACT_PORTS_LEN, 0);

#[map]
pub(crate) static BERTH_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

/// Per-mapping counters, by `Backend::binding` (see `stats`).
#[map]
pub(crate) static BERTH_BINDING_STATS: PerCpuArray<BindingStats> =
    PerCpuArray::pinned(BINDING_STATS_CAPACITY, 0);

/// Refused flows for the flow log (`flowlog.rs`); not pinned.
#[map]
pub(crate) static BERTH_FLOW_LOG: RingBuf = RingBuf::with_byte_size(FLOW_LOG_RING_BYTES, 0);

/// Whether `addr_be` is in one of the bridge's subnets.
#[inline(always)]
pub(crate) fn in_local_nets(addr_be: u32) -> bool {
    let mut i = 0;
    while i < LOCAL_NETS_MAX {
        let Some(slot) = BERTH_LOCAL_NETS.get(i) else {
            return false;
        };
        let slot = *slot;
        match berth_maps::local_net_decode(slot) {
            Some((net, mask)) if addr_be & mask == net => return true,
            Some(_) => {}
            None => return false,
        }
        if slot & berth_maps::LOCAL_NET_MORE == 0 {
            return false;
        }
        i += 1;
    }
    false
}

#[inline(always)]
pub(crate) fn count(counter: berth_maps::Counter) {
    if let Some(v) = BERTH_COUNTERS.get_ptr_mut(counter as u32) {
        unsafe {
            *v += 1;
        }
    }
}

/// Published IPv6 ports (`berth_maps::SERVICES6_MAP`).
#[map]
pub(crate) static BERTH_SERVICES6: HashMap<berth_maps::ServiceKey6, berth_maps::Backend6> =
    HashMap::pinned(berth_maps::SERVICES6_CAPACITY, BPF_F_NO_PREALLOC);

/// The IPv6 (and log) programs the IPv4 ones tail-call (`tails.rs`).
#[map]
pub(crate) static BERTH_TAILS: ProgramArray = ProgramArray::pinned(berth_maps::tail::LEN, 0);

/// The host's IPv6 addresses (`berth_maps::HOST_ADDRS6_MAP`).
#[map]
pub(crate) static BERTH_HOST_ADDRS6: HashMap<[u8; 16], u32> =
    HashMap::pinned(berth_maps::HOST_ADDRS6_CAPACITY, BPF_F_NO_PREALLOC);

/// IPv6 published-port flows, established (`berth_maps::NAT6_MAP`).
#[map]
pub(crate) static BERTH_NAT6: HashMap<berth_maps::FlowKey6, berth_maps::NatEntry6> =
    HashMap::pinned(berth_maps::NAT6_CAPACITY, BPF_F_NO_PREALLOC);

/// IPv6 published-port flows not yet established (LRU).
#[map]
pub(crate) static BERTH_NAT6_NEW: LruHashMap<berth_maps::FlowKey6, berth_maps::NatEntry6> =
    LruHashMap::pinned(berth_maps::NAT6_NEW_CAPACITY, 0);

/// IPv6 socket-level translation (`berth_maps::SOCK_REV6_MAP`); LRU as
/// [`BERTH_SOCK_REV`].
#[map]
pub(crate) static BERTH_SOCK_REV6: LruHashMap<berth_maps::SockRevKey6, berth_maps::SockRevValue6> =
    LruHashMap::pinned(berth_maps::SOCK_REV6_CAPACITY, 0);

/// Clash-remapped IPv6 flows (`berth_maps::NAT6_FWD_MAP`), as
/// [`BERTH_NAT_FWD`].
#[map]
pub(crate) static BERTH_NAT6_FWD: HashMap<berth_maps::FlowKey6, berth_maps::NatFwd6> =
    HashMap::pinned(berth_maps::NAT6_FWD_CAPACITY, BPF_F_NO_PREALLOC);
