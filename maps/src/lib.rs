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

/// Sources that never arrive on an uplink from outside: the bridge's
/// subnets (its containers). An array, not an LPM trie, because every
/// packet on an uplink is checked against it: array lookups are inlined by
/// the verifier, a trie walk is a helper call (measured: 5 ns of a 40 ns
/// ingress hit). Slots from 0 hold one subnet each, [`local_net_encode`]d;
/// [`LOCAL_NET_MORE`] in a slot says the next slot is in use too, so the
/// usual single subnet costs one lookup. Every slot is one 8-byte value
/// written on its own, and userspace orders its writes (write a slot, then
/// link it; copy the last over a removed one, then unlink the last) so a
/// packet never sees a half-written list.
pub const LOCAL_NETS_MAP: &str = "BERTH_LOCAL_NETS";
pub const LOCAL_NETS_MAX: u32 = 16;
/// In a [`LOCAL_NETS_MAP`] slot: the next slot holds a subnet too.
pub const LOCAL_NET_MORE: u64 = 1 << 63;

/// A subnet as one [`LOCAL_NETS_MAP`] slot (without [`LOCAL_NET_MORE`]):
/// `(prefix_len + 1) << 32 | network`, the network in network byte order
/// in the low 32 bits; 0 is an unused slot.
pub const fn local_net_encode(network_be: u32, prefix_len: u8) -> u64 {
    let len = if prefix_len > 32 { 32 } else { prefix_len };
    ((len as u64 + 1) << 32) | network_be as u64
}

/// The (network, mask) of a slot, both in network byte order; `None` for
/// an unused one.
#[inline(always)]
pub fn local_net_decode(slot: u64) -> Option<(u32, u32)> {
    let len = ((slot >> 32) & 0x3f) as u32;
    if len == 0 || len > 33 {
        return None;
    }
    let bits = len - 1;
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Some((slot as u32, mask.to_be()))
}

/// Each bridge port's own IPv4 addresses, learned from the port's peer in
/// the container's network namespace: host-side ifindex -> addresses. A
/// container may send only from these when policy applies.
pub const PORT_ADDRS_MAP: &str = "BERTH_PORT_ADDRS";
/// Linux bridges take at most 1024 ports.
pub const PORT_ADDRS_CAPACITY: u32 = 4096;
pub const PORT_ADDRS_MAX: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortAddrs {
    /// Valid entries of `addrs_be`, at most [`PORT_ADDRS_MAX`].
    pub len: u32,
    pub _pad: u32,
    pub addrs_be: [u32; PORT_ADDRS_MAX],
}

/// Reverse NAT / connection tracking of established flows: the reply tuple
/// as the container sends it -> the host address and port the flow arrived
/// on. A plain hash: never evicts; when full, a flow that completes its
/// handshake (or, UDP, gets its first reply) is refused (nat_table_full).
pub const NAT_MAP: &str = "BERTH_NAT";
pub const NAT_CAPACITY: u32 = 262_144;
/// Flows not yet established (TCP: no client ACK of the container's SYN-ACK
/// yet; UDP: no reply yet); same key and value as [`NAT_MAP`]. An LRU hash:
/// a new flow is never refused, the least recently used unestablished flow
/// makes room, so a flood of SYNs or spoofed datagrams cannot fill anything
/// that matters.
pub const NAT_NEW_MAP: &str = "BERTH_NAT_NEW";
pub const NAT_NEW_CAPACITY: u32 = 131_072;
/// Flows whose reply tuple clashed with another flow's and so got another
/// client source port towards the container: the client-side tuple as on
/// the wire (client -> host address:port) -> [`NatFwd`]. Only clashing
/// flows have (and pay the lookup of) an entry. A plain hash with room for
/// one per tracked flow: an established flow's remap is never evicted.
pub const NAT_FWD_MAP: &str = "BERTH_NAT_FWD";
pub const NAT_FWD_CAPACITY: u32 = NAT_CAPACITY;

/// Host ports in use by any mapping: (protocol, port) -> number of
/// mappings. The cgroup bind hook refuses host processes these ports.
pub const PORTS_MAP: &str = "BERTH_PORTS";
pub const PORTS_CAPACITY: u32 = 131_072;

/// Settings the daemon writes once: index [`CONFIG_NETNS_COOKIE`] holds the
/// cookie of the network namespace berth serves, so the bind hook (attached
/// to a cgroup, which spans namespaces) acts in that namespace only.
pub const CONFIG_MAP: &str = "BERTH_CONFIG";
pub const CONFIG_NETNS_COOKIE: u32 = 0;
pub const CONFIG_LEN: u32 = 5;
/// BERTH_CONFIG index: non-zero when IPv4 from a bridge port without hooks
/// is refused (`berth daemon --default-sg`).
pub const CONFIG_PORT_GATE: u32 = 1;
/// BERTH_CONFIG index: the bridge's own MAC (low 48 bits); frames from it
/// were sent or translated by the host, not a port.
pub const CONFIG_BRIDGE_MAC: u32 = 2;
/// BERTH_CONFIG index: 1 once the daemon has made sure no endpoint has
/// policy; the veth hooks then skip the source check and the security-group
/// lookups, which could not refuse anything. 0 (the default, and what an
/// older daemon's pins hold) keeps them on. The daemon sets it to 0 before
/// any endpoint gets policy.
pub const CONFIG_NO_POLICY: u32 = 3;
/// BERTH_CONFIG index: 1 while every mapping is on the wildcard host
/// address; the service lookup then skips the exact-address probe, which
/// could only miss. 0 (the default, and what an older daemon's pins hold)
/// keeps it. The daemon sets it to 0 before publishing a mapping on a
/// specific address.
pub const CONFIG_WILDCARD_ONLY: u32 = 4;

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

/// Connection tracking for established flows judged by policy, keyed by
/// the flow's first packet. Never evicts: when full, a flow that completes
/// its handshake (UDP/ICMP: gets its first reply) is refused.
pub const CT_MAP: &str = "BERTH_CT";
pub const CT_CAPACITY: u32 = 262_144;
/// Policy flows not yet established, same key and value as [`CT_MAP`]; an
/// LRU hash like [`NAT_NEW_MAP`].
pub const CT_NEW_MAP: &str = "BERTH_CT_NEW";
pub const CT_NEW_CAPACITY: u32 = 131_072;
/// `CtEntry::flags` bits; the same values as the `NAT_F_*` bits, so one
/// TCP tracker serves both tables.
pub const CT_F_CLOSING: u8 = 1;
pub const CT_F_REPLIED: u8 = 2;
pub const CT_F_ESTABLISHED: u8 = 4;
pub const CT_F_SEQ_KNOWN: u8 = 8;
pub const CT_F_SEQ_FWD: u8 = 16;

/// Direction 0 is the flow's first packet's (key) direction, 1 the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub last_seen_ns: u64,
    pub flags: u8,
    pub _pad: u8,
    /// TCP window-scale shift per direction; 0xff = unknown.
    pub wscale: [u8; 2],
    /// TCP, per direction: sequence number just past the furthest segment seen.
    pub seq_end: [u32; 2],
    /// TCP, per direction: largest window (scaled) its receiver advertised.
    pub max_win: [u32; 2],
    pub _pad2: u32,
}

/// IPv4 fragments: what the first fragment of a datagram decided, for the
/// later fragments, which carry no ports. LRU and short-lived: an entry
/// older than [`FRAG_TIMEOUT_NS`] counts as absent, and losing one costs
/// only that datagram.
pub const FRAGS_MAP: &str = "BERTH_FRAGS";
pub const FRAGS_CAPACITY: u32 = 16_384;
/// Fragments of one datagram arrive within milliseconds; IP ids wrap.
pub const FRAG_TIMEOUT_NS: u64 = 10_000_000_000;
/// `FragKey::kind`: DNAT at an uplink (key: client -> host address).
pub const FRAG_K_DNAT: u8 = 1;
/// `FragKey::kind`: reply SNAT at a container's veth or the bridge (key:
/// container -> client).
pub const FRAG_K_SNAT: u8 = 2;
/// `FragKey::kind`: a security-group verdict at a container's veth.
pub const FRAG_K_POLICY: u8 = 3;
/// `FragEntry::verdict` of a policy entry.
pub const FRAG_V_DENY: u8 = 0;
pub const FRAG_V_ALLOW: u8 = 1;

/// One datagram as its fragments carry it: (source, destination, protocol,
/// IP id), and which decision it is for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub kind: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// DNAT: the container address; SNAT: the host address.
    pub addr_be: u32,
    /// Policy: [`FRAG_V_ALLOW`] or [`FRAG_V_DENY`].
    pub verdict: u8,
    pub _pad: [u8; 3],
    /// `bpf_ktime_get_ns()` when the first fragment was seen.
    pub created_ns: u64,
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
/// A RST or FIN within the sequence window was seen.
pub const NAT_F_CLOSING: u8 = 1;
/// Set once the container has answered: a UDP flow with replies is a stream.
pub const NAT_F_REPLIED: u8 = 2;
/// The flow lives in [`NAT_MAP`] (moved there when it became established).
pub const NAT_F_ESTABLISHED: u8 = 4;
/// TCP: both directions' `seq_end` / `max_win` are tracked (berth saw the
/// SYN and the SYN-ACK), so RST/FIN can be checked against the window.
pub const NAT_F_SEQ_KNOWN: u8 = 8;
/// TCP: the client direction's (0) sequence is tracked (berth saw its SYN).
pub const NAT_F_SEQ_FWD: u8 = 16;

/// Direction 0 is client -> container, 1 the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub flags: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns()` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The client's own source port; differs from the key's dst_port_be when a
    /// port clash made berth give the flow another source port towards the
    /// container.
    pub client_port_be: u16,
    /// TCP window-scale shift per direction (0 = client->container, 1 =
    /// reply), from the SYN / SYN-ACK options; 0xff = unknown.
    pub wscale: [u8; 2],
    /// TCP, per direction: sequence number just past the furthest segment seen.
    pub seq_end: [u32; 2],
    /// TCP, per direction: largest window (scaled) the receiver of that
    /// direction advertised.
    pub max_win: [u32; 2],
    pub _pad2: u32,
}

/// [`NAT_FWD_MAP`] value: the source port the clashing flow uses towards
/// the container, and the container (so userspace can find the flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatFwd {
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub remap_port_be: u16,
}

/// How many free client ports a clashing flow tries before it is dropped
/// (nat_port_remap_failed).
pub const NAT_REMAP_TRIES: u32 = 8;

/// The `attempt`-th client source port tried for a flow whose reply tuple
/// clashed: a port of the same class as the client's (1-1023 for a
/// privileged one, 1024-65535 otherwise, as netfilter keeps it), spread by a
/// hash of the client's tuple so two clients do not probe the same ports.
/// Host byte order in and out.
#[inline(always)]
pub const fn nat_remap_port(
    client_addr_be: u32,
    client_port: u16,
    host_port: u16,
    attempt: u32,
) -> u16 {
    let (lo, size) = if client_port < 1024 {
        (1u32, 1023u32)
    } else {
        (1024u32, 64512u32)
    };
    let mut h = client_addr_be ^ ((client_port as u32) << 16 | host_port as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    // An odd stride visits distinct ports within the first `size` tries.
    (lo + (h.wrapping_add(attempt.wrapping_mul(2 * 7919 + 1))) % size) as u16
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
    /// Later fragment (no ports) of a datagram nothing remembered at an
    /// uplink or the bridge; passed untouched (it may be the host's own).
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
    /// Later fragment translated like its datagram's first fragment.
    FragXlate = 13,
    /// Later fragment with no remembered first fragment where either end
    /// has policy; dropped.
    FragNoFirst = 14,
    /// Later fragment of a datagram whose first fragment policy refused,
    /// or a TCP/UDP first fragment too short to hold its header, where
    /// either end has policy; dropped.
    FragDenied = 15,
    /// ICMP other than echo that is no error about a tracked flow of an
    /// endpoint with policy; dropped.
    PolicyDeniedIcmp = 16,
    /// A container's ICMP error about a translated flow that is not its
    /// own or not addressed to that flow's client; dropped.
    IcmpForged = 17,
    /// Packet on an uplink from or to 127.0.0.0/8; dropped, never translated.
    UplinkLoopback = 18,
    /// Packet on an uplink with a source in a bridge subnet or one of the
    /// host's own addresses; dropped.
    UplinkSpoofedSource = 19,
    /// Packet from a container with a source not its own, while policy
    /// applies to the container, the claimed source or the receiver; dropped.
    ContainerSpoofedSource = 20,
    /// A new flow's reply tuple was taken: it got another client source port.
    NatPortRemap = 21,
    /// A clashing new flow found no free client port (or no room to
    /// remember it); dropped.
    NatPortRemapFailed = 22,
    /// TCP without SYN (or with ACK) to a published port, belonging to no
    /// tracked flow; dropped.
    NatNoFlow = 23,
    /// TCP RST or FIN outside the sequence window of a tracked flow:
    /// forwarded, but the flow is not marked closing.
    TcpOutOfWindow = 24,
    /// TCP without SYN between endpoints with policy, belonging to no
    /// tracked flow; dropped.
    CtNoFlow = 25,
    /// IPv4 from a bridge port not hooked yet, refused (`--default-sg`).
    UnhookedPort = 26,
}
pub const COUNTER_NAMES: [&str; 27] = [
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
    "frag_xlate",
    "frag_no_first",
    "frag_denied",
    "policy_denied_icmp",
    "icmp_forged",
    "uplink_loopback",
    "uplink_spoofed_source",
    "container_spoofed_source",
    "nat_port_remap",
    "nat_port_remap_failed",
    "nat_no_flow",
    "tcp_out_of_window",
    "ct_no_flow",
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
const _: () = assert!(core::mem::size_of::<NatEntry>() == 40);
const _: () = assert!(core::mem::size_of::<NatFwd>() == 8);
const _: () = assert!(core::mem::size_of::<XdpHandoff>() == 8);
const _: () = assert!(core::mem::size_of::<PortKey>() == 4);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 8);
const _: () = assert!(core::mem::size_of::<Rule>() == 16);
const _: () = assert!(core::mem::size_of::<Policy>() == 8 + 16 * MAX_RULES);
const _: () = assert!(core::mem::size_of::<SgMember>() == 8);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragEntry>() == 16);
const _: () = assert!(local_net_encode(0, 0) != 0);
const _: () = assert!(core::mem::size_of::<PortAddrs>() == 8 + 4 * PORT_ADDRS_MAX);

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for NatFwd {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for Policy {}
    unsafe impl aya::Pod for SgMember {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for PortAddrs {}
}
