//! Map names, capacities and key/value layouts shared by the eBPF programs and
//! userspace. Every type is `#[repr(C)]` with explicit padding; fields in
//! network byte order end in `_be`.
#![no_std]

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Published ports: (protocol, host address or 0 for any, host port) -> backend.
pub const SERVICES_MAP: &str = "BERTH_SERVICES";
/// Two protocols times every port, so a full 1-65535 range fits for each.
pub const SERVICES_CAPACITY: u32 = 131_072;

/// Addresses that belong to the host. A wildcard (0.0.0.0) mapping only
/// matches traffic addressed to one of these, like Docker's
/// `-m addrtype --dst-type LOCAL`.
pub const HOST_ADDRS_MAP: &str = "BERTH_HOST_ADDRS";
pub const HOST_ADDRS_CAPACITY: u32 = 1024;

/// Reverse NAT / connection tracking: the reply tuple as the container sends it
/// -> the host address and port the flow arrived on.
pub const NAT_MAP: &str = "BERTH_NAT";
pub const NAT_CAPACITY: u32 = 262_144;

/// Host ports in use by any mapping: (protocol, port) -> number of
/// mappings. The cgroup bind hook refuses host processes these ports.
pub const PORTS_MAP: &str = "BERTH_PORTS";
pub const PORTS_CAPACITY: u32 = 131_072;

/// Settings the daemon writes once: index [`CONFIG_NETNS_COOKIE`] holds the
/// cookie of the network namespace berth serves, so the bind hook (attached
/// to a cgroup, which spans namespaces) acts in that namespace only.
pub const CONFIG_MAP: &str = "BERTH_CONFIG";
pub const CONFIG_NETNS_COOKIE: u32 = 0;
pub const CONFIG_LEN: u32 = 4;
/// BERTH_CONFIG index: non-zero when IPv4 from a bridge port without hooks
/// is refused (`berth daemon --default-sg`).
pub const CONFIG_PORT_GATE: u32 = 1;
/// BERTH_CONFIG index: the bridge's own MAC (low 48 bits); frames from it
/// were sent or translated by the host, not a port.
pub const CONFIG_BRIDGE_MAC: u32 = 2;

/// Bridge ports whose security-group hooks are attached: ifindex -> 1.
pub const HOOKED_PORTS_MAP: &str = "BERTH_HOOKED_PORTS";
pub const HOOKED_PORTS_CAPACITY: u32 = 16_384;
/// Source MAC (low 48 bits) -> ifindex of the hooked port its frames came
/// in by, learned by berth_from_ctr (LRU).
pub const PORT_MACS_MAP: &str = "BERTH_PORT_MACS";
pub const PORT_MACS_CAPACITY: u32 = 16_384;

/// Socket-level translation (host-local and hairpin access): (socket
/// cookie, container address, container port) -> the host address and port
/// the application asked for, so getpeername() and recvmsg() show it.
pub const SOCK_REV_MAP: &str = "BERTH_SOCK_REV";
pub const SOCK_REV_CAPACITY: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

// ---------------------------------------------------------------- policy
//
// Security groups, compiled per task by the control plane: every container
// IP of a task with at least one group is an endpoint with policy; its
// ingress and egress rules are the union of its groups' rules. A rule's peer
// is a CIDR or a group (its members' IPs, in SG_MEMBERS). Flows allowed by
// policy are tracked in CT, so replies pass whatever the rules say.

/// Container IP -> task and whether policy applies to it.
pub const ENDPOINTS_MAP: &str = "BERTH_ENDPOINTS";
pub const ENDPOINTS_CAPACITY: u32 = 16_384;
pub const EP_F_POLICY: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub task_id: u32,
    pub flags: u32,
}

/// (task, direction) -> that task's rules.
pub const POLICY_MAP: &str = "BERTH_POLICY";
pub const POLICY_CAPACITY: u32 = 8_192;
pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;
/// 16 groups of 60 rules: the largest configurable union.
pub const MAX_RULES: usize = 960;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub task_id: u32,
    pub dir: u32,
}

/// `Rule::proto` for "all protocols".
pub const RULE_PROTO_ALL: u8 = 0;
/// `Rule::kind`: the peer is `addr_be`/`mask_be`.
pub const RULE_PEER_CIDR: u8 = 0;
/// `Rule::kind`: the peer is group `addr_be` (its id).
pub const RULE_PEER_SG: u8 = 1;
/// `Rule::icmp_type` / `icmp_code` wildcard (-1 in AWS terms).
pub const RULE_ICMP_ANY: u8 = 0xff;

/// One allow rule. Ports are in host byte order, inclusive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub proto: u8,
    pub kind: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    /// CIDR network (network order) or group id.
    pub addr_be: u32,
    pub mask_be: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub len: u32,
    pub _pad: u32,
    pub rules: [Rule; MAX_RULES],
}

/// (group id, member address) -> 1.
pub const SG_MEMBERS_MAP: &str = "BERTH_SG_MEMBERS";
pub const SG_MEMBERS_CAPACITY: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SgMember {
    pub sg_id: u32,
    pub addr_be: u32,
}

/// Connection tracking for flows judged by policy, keyed by the flow's
/// first packet. Never evicts: when full, new flows are refused.
pub const CT_MAP: &str = "BERTH_CT";
pub const CT_CAPACITY: u32 = 262_144;
pub const CT_F_CLOSING: u8 = 1;
pub const CT_F_REPLIED: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub last_seen_ns: u64,
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// Per-CPU counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "BERTH_COUNTERS";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

/// A flow as seen on the wire in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `NatEntry::flags` bits.
pub const NAT_F_CLOSING: u8 = 1;
/// Set once the container has answered: a UDP flow with replies is a stream.
pub const NAT_F_REPLIED: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub flags: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns()` of the last packet in either direction.
    pub last_seen_ns: u64,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Ingress packet matched a mapping and was translated.
    IngressDnat = 0,
    /// Ingress packet matched nothing and passed untouched.
    IngressPass = 1,
    /// Reply packet translated back to the host port.
    ReplySnat = 2,
    /// New flow refused because the tracking table is full.
    NatTableFull = 3,
    /// Translated packet had no route; dropped.
    NoRoute = 4,
    /// Fragment of a published port's protocol; passed untouched.
    Fragment = 5,
    /// Packet to a published port with TTL <= 1; dropped.
    TtlExceeded = 6,
    /// A host process's bind() of a published port refused (EADDRINUSE).
    BindRefused = 7,
    /// connect()/sendmsg() to a published port translated at the socket.
    SockXlate = 8,
    /// ICMP error about a translated flow, translated.
    IcmpXlate = 9,
    /// New flow refused by the receiving task's ingress rules.
    PolicyDeniedIngress = 10,
    /// New flow refused by the sending task's egress rules.
    PolicyDeniedEgress = 11,
    /// New flow refused because the policy tracking table is full.
    CtTableFull = 12,
    /// IPv4 from a bridge port not hooked yet, refused (`--default-sg`).
    UnhookedPort = 13,
}
pub const COUNTER_NAMES: [&str; 14] = [
    "ingress_dnat",
    "ingress_pass",
    "reply_snat",
    "nat_table_full",
    "no_route",
    "fragment",
    "ttl_exceeded",
    "bind_refused",
    "sock_xlate",
    "icmp_xlate",
    "policy_denied_ingress",
    "policy_denied_egress",
    "ct_table_full",
    "unhooked_port",
];
pub const COUNTERS_LEN: u32 = COUNTER_NAMES.len() as u32;

/// XDP -> TC hand-off in `--attach xdp`: the XDP program translates and
/// leaves this in the packet metadata; the TC program delivers it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpHandoff {
    pub magic: u32,
    pub ifindex: u32,
}
/// The XDP program set both MAC addresses: redirect as is.
pub const XDP_HANDOFF_MAGIC: u32 = 0xbe27_0001;
/// No neighbour entry yet: redirect with neighbour resolution.
pub const XDP_HANDOFF_MAGIC_NEIGH: u32 = 0xbe27_0002;

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 16);
const _: () = assert!(core::mem::size_of::<XdpHandoff>() == 8);
const _: () = assert!(core::mem::size_of::<PortKey>() == 4);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 8);
const _: () = assert!(core::mem::size_of::<Rule>() == 16);
const _: () = assert!(core::mem::size_of::<Policy>() == 8 + 16 * MAX_RULES);
const _: () = assert!(core::mem::size_of::<SgMember>() == 8);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for Policy {}
    unsafe impl aya::Pod for SgMember {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
}
