//! Names (programs, maps, counters), capacities, timeouts and key/value
//! layouts shared by the eBPF programs and userspace. Every type is
//! `#[repr(C)]` with explicit padding, which its `bytemuck::Pod` derive
//! proves; fields in network byte order end in `_be`.
#![no_std]

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

mod v6;
pub use v6::*;
pub mod tail;
pub use tail::TAILS_MAP;
mod policy6;
pub use policy6::*;
mod sock6;
pub use sock6::*;
mod frag6;
pub use frag6::*;
mod port_addrs6;
pub use port_addrs6::*;

// ---------------------------------------------------------------- names

/// The eBPF programs, by the name userspace loads, attaches and pins their
/// links under. aya names a kernel-side program after its function, so the
/// eBPF crate cannot use these: a test loads the built object and checks
/// that the two agree (userspace `datapath::names`).
pub mod program {
    /// Uplink TC ingress: DNAT of published ports.
    pub const INGRESS: &str = "berth_ingress";
    /// Uplink XDP (`--attach xdp`): DNAT, handed to [`DELIVER`].
    pub const XDP: &str = "berth_xdp";
    /// Uplink TC ingress beside [`XDP`]: delivers what it translated.
    pub const DELIVER: &str = "berth_deliver";
    /// Bridge TC ingress: reply SNAT.
    pub const REPLY: &str = "berth_reply";
    /// Bridge port TC ingress (what a container sends): security groups,
    /// source checks, reply SNAT.
    pub const FROM_CTR: &str = "berth_from_ctr";
    /// Bridge port TC egress (what a container receives): security groups.
    pub const TO_CTR: &str = "berth_to_ctr";
    /// cgroup bind4/bind6: the bind guard.
    pub const BIND4: &str = "berth_bind4";
    pub const BIND6: &str = "berth_bind6";
    /// cgroup connect4/sendmsg4/recvmsg4/getpeername4: host-local and
    /// hairpin access.
    pub const CONNECT4: &str = "berth_connect4";
    pub const SENDMSG4: &str = "berth_sendmsg4";
    pub const RECVMSG4: &str = "berth_recvmsg4";
    pub const PEERNAME4: &str = "berth_peername4";
    /// cgroup connect6/sendmsg6/recvmsg6/getpeername6: the same over IPv6
    /// (`::1`, the host's IPv6 addresses, v4-mapped addresses).
    pub const CONNECT6: &str = "berth_connect6";
    pub const SENDMSG6: &str = "berth_sendmsg6";
    pub const RECVMSG6: &str = "berth_recvmsg6";
    pub const PEERNAME6: &str = "berth_peername6";
    /// Programs that do nothing: the bench's floor.
    pub const EMPTY_TC: &str = "berth_empty_tc";
    pub const EMPTY_XDP: &str = "berth_empty_xdp";
    /// Tail-called through `BERTH_TAILS` (see [`crate::tail`]).
    pub const INGRESS6: &str = crate::tail::PROGRAM_INGRESS6;
    /// IPv6 on a container's veth, both directions: security groups
    /// (tail-called by [`FROM_CTR`] and [`TO_CTR`]).
    pub const FROM_CTR6: &str = crate::tail::PROGRAM_FROM_CTR6;
    pub const TO_CTR6: &str = crate::tail::PROGRAM_TO_CTR6;
    pub const REPLY6: &str = crate::tail::PROGRAM_REPLY6;
    pub const LOG: &str = crate::tail::PROGRAM_LOG;
    /// IPv6 later fragments through NAT66 (tail-called).
    pub const FRAG6: &str = crate::tail::PROGRAM_FRAG6;
    /// `ICMPv6` errors about NAT66 flows (tail-called by [`INGRESS6`] and
    /// [`REPLY6`]).
    pub const ICMP6: &str = crate::tail::PROGRAM_ICMP6;
    /// `ICMPv6` "packet too big" for what [`INGRESS6`] cannot deliver
    /// (tail-called).
    pub const PMTU6: &str = crate::tail::PROGRAM_PMTU6;

    /// The cgroup `sock_addr` hooks.
    pub const SOCKET_HOOKS: [&str; 10] = [
        BIND4, BIND6, CONNECT4, SENDMSG4, RECVMSG4, PEERNAME4, CONNECT6, SENDMSG6, RECVMSG6,
        PEERNAME6,
    ];
    /// Attached to every bridge port (its container's veth).
    pub const PORT_PROGRAMS: [&str; 2] = [FROM_CTR, TO_CTR];
    /// Every program of the object.
    pub const ALL: [&str; 26] = [
        INGRESS, XDP, DELIVER, REPLY, FROM_CTR, TO_CTR, BIND4, BIND6, CONNECT4, SENDMSG4, RECVMSG4,
        PEERNAME4, EMPTY_TC, EMPTY_XDP, INGRESS6, FROM_CTR6, TO_CTR6, REPLY6, CONNECT6, SENDMSG6,
        RECVMSG6, PEERNAME6, LOG, FRAG6, ICMP6, PMTU6,
    ];
}

/// Every map of the eBPF object, each pinned by this name.
pub const MAPS: [&str; 39] = [
    SERVICES_MAP,
    HOST_ADDRS_MAP,
    LOCAL_NETS_MAP,
    PORT_ADDRS_MAP,
    NAT_MAP,
    NAT_NEW_MAP,
    NAT_FWD_MAP,
    PORTS_MAP,
    CONFIG_MAP,
    HOOKED_PORTS_MAP,
    PORT_MACS_MAP,
    SOCK_REV_MAP,
    ENDPOINTS_MAP,
    POLICY_MAP,
    SG_MEMBERS_MAP,
    CT_MAP,
    CT_NEW_MAP,
    FRAGS_MAP,
    COUNTERS_MAP,
    BRIDGE_MACS_MAP,
    BINDING_STATS_MAP,
    SERVICES6_MAP,
    EXACT_PORTS_MAP,
    TAILS_MAP,
    ENDPOINTS6_MAP,
    POLICY6_MAP,
    SG_MEMBERS6_MAP,
    CT6_MAP,
    CT6_NEW_MAP,
    HOST_ADDRS6_MAP,
    NAT6_MAP,
    NAT6_NEW_MAP,
    SOCK_REV6_MAP,
    FRAGS6_MAP,
    NAT6_FWD_MAP,
    PORT_ADDRS6_MAP,
    FRAGS_DENY_MAP,
    FRAGS6_DENY_MAP,
    PORT_LIST6_MAP,
];

/// The next-hop cache (`ebpf/src/nexthop.rs`): per CPU, not pinned, so
/// each load of the programs starts it empty and no pin ever holds it.
pub const NEXT_HOPS_MAP: &str = "BERTH_NEXT_HOPS";

/// The uplink's service-answer cache for established TCP packets
/// (`ebpf/src/svc_cache.rs`): per CPU, not pinned, as [`NEXT_HOPS_MAP`].
pub const SVC_CACHE_MAP: &str = "BERTH_SVC_CACHE";

/// Maps of the eBPF object that are not pinned.
pub const UNPINNED_MAPS: [&str; 7] = [
    NEXT_HOPS_MAP,
    FLOW_LOG_RING,
    DP_LOG_MAP,
    DP_LOG_BUCKET_MAP,
    SVC_CACHE_MAP,
    PMTU_BUCKET_MAP,
    PMTU6_QUOTE_MAP,
];

/// The per-CPU token bucket of the ICMP errors an uplink sends for packets
/// too long for their container's route (`ebpf/src/pmtu.rs`, a
/// [`LogBucket`]): not pinned, as [`NEXT_HOPS_MAP`].
pub const PMTU_BUCKET_MAP: &str = "BERTH_PMTU_BUCKET";
/// Per CPU, the quote of an `ICMPv6` "packet too big" while it is summed
/// (`ebpf/src/pmtu6.rs`): not pinned.
pub const PMTU6_QUOTE_MAP: &str = "BERTH_PMTU6_QUOTE";
/// At most this many such ICMP errors per second and CPU (the kernel's
/// default `icmp_msgs_per_sec` is 1000 for the whole host)...
pub const PMTU_ICMP_PER_SEC: u64 = 100;
/// ... with bursts of up to this many.
pub const PMTU_ICMP_BURST: u64 = 50;

// ---------------------------------------------------------------- timeouts
//
// Idle timeouts of tracked flows by default, in seconds (`berth daemon
// --ct-*-timeout`). The programs stamp each flow's last packet; the daemon
// expires idle flows.

/// An established TCP flow (five days, as conntrack's).
pub const TIMEOUT_TCP_ESTABLISHED_S: u64 = 432_000;
/// A TCP flow that saw a RST or FIN.
pub const TIMEOUT_TCP_CLOSING_S: u64 = 60;
/// A TCP flow whose handshake has not completed.
pub const TIMEOUT_TCP_SYN_S: u64 = 30;
/// A UDP flow with no reply yet.
pub const TIMEOUT_UDP_SINGLE_S: u64 = 30;
/// A UDP flow that has been answered.
pub const TIMEOUT_UDP_STREAM_S: u64 = 180;
/// An ICMP echo flow.
pub const TIMEOUT_ICMP_S: u64 = 30;
/// The longest idle timeout a flag accepts.
pub const TIMEOUT_MAX_S: u64 = 432_000;

// ---------------------------------------------------------------- capacity
//
// Memory follows use. Every hash map the programs do not insert into under
// a flood is created with BPF_F_NO_PREALLOC: an entry costs memory only
// while it exists, and an empty table costs its bucket array (16 bytes per
// slot of its capacity rounded up to a power of two). LRU tables cannot
// be: they are preallocated, about 100-120 bytes per slot, so their
// capacities are kept small. The capacities below are the defaults the
// eBPF object declares; `berth daemon --max-flows` and `--max-mappings`
// set them at load.

/// `--max-flows` by default: flows tracked at once per table (published
/// ports; security groups). A host running tens of ECS tasks holds a few
/// thousand connections; a busier one raises it (16 bytes per flow of
/// capacity while empty, about 110 per flow in use, per table).
pub const DEFAULT_MAX_FLOWS: u32 = 16_384;
/// `--max-mappings` by default: published ports, one per (protocol, host
/// address, host port). Tens of tasks with a few ports each use hundreds;
/// a host publishing large port ranges raises it.
pub const DEFAULT_MAX_MAPPINGS: u32 = 4096;
/// The largest `--max-flows` and `--max-mappings` (and `--ct-max`,
/// `--nat-max`, `--ct-embryonic-max`): a 16M-slot table's buckets alone
/// take 256 MiB.
pub const MAX_CAPACITY: u32 = 16_777_216;

/// The capacity of each preallocated (LRU) flow table — unestablished
/// flows, socket translations — for a given `--max-flows`: an eighth of
/// it, at least 64 slots. A flood of new flows fills these, and only
/// churns them: their memory is fixed, and a real handshake completes as
/// long as it takes less than the table's turnover.
pub const fn lru_capacity(max_flows: u32) -> u32 {
    let n = max_flows / 8;
    if n < 64 {
        64
    } else {
        n
    }
}

/// Published ports: (protocol, host address or 0 for any, host port) -> backend.
pub const SERVICES_MAP: &str = "BERTH_SERVICES";
pub const SERVICES_CAPACITY: u32 = DEFAULT_MAX_MAPPINGS;

/// Addresses that belong to the host. A wildcard (0.0.0.0) mapping only
/// matches traffic addressed to one of these, like Docker's
/// `-m addrtype --dst-type LOCAL`.
pub const HOST_ADDRS_MAP: &str = "BERTH_HOST_ADDRS";
pub const HOST_ADDRS_CAPACITY: u32 = DEFAULT_MAX_HOST_ADDRS;
/// `berth daemon --max-host-addrs` by default: the size of both host
/// address tables. Every host-side veth of a container has an IPv6
/// link-local address, so the IPv6 table grows with the containers; this
/// holds a host of about 4 000 of them (16 bytes of capacity an entry,
/// kept small for the memory a quiet host pays; busier hosts raise it).
pub const DEFAULT_MAX_HOST_ADDRS: u32 = 4_096;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortAddrs {
    /// Valid entries of `addrs_be`, at most [`PORT_ADDRS_MAX`].
    pub len: u32,
    pub _pad: u32,
    pub addrs_be: [u32; PORT_ADDRS_MAX],
}

/// Reverse NAT / connection tracking of established flows: the reply tuple
/// as the container sends it -> the host address and port the flow arrived
/// on. A plain hash: never evicts; when full, a flow that completes its
/// handshake (or, UDP, gets its first reply) is refused (`nat_table_full`).
pub const NAT_MAP: &str = "BERTH_NAT";
pub const NAT_CAPACITY: u32 = DEFAULT_MAX_FLOWS;
/// Flows not yet established (TCP: no client ACK of the container's SYN-ACK
/// yet; UDP: no reply yet); same key and value as [`NAT_MAP`]. An LRU hash:
/// a new flow is never refused, the least recently used unestablished flow
/// makes room, so a flood of SYNs or spoofed datagrams cannot fill anything
/// that matters.
pub const NAT_NEW_MAP: &str = "BERTH_NAT_NEW";
pub const NAT_NEW_CAPACITY: u32 = lru_capacity(DEFAULT_MAX_FLOWS);
/// Flows whose reply tuple clashed with another flow's and so got another
/// client source port towards the container: the client-side tuple as on
/// the wire (client -> host address:port) -> [`NatFwd`]. Only clashing
/// flows have (and pay the lookup of) an entry. A plain hash with room for
/// one per tracked flow: an established flow's remap is never evicted.
pub const NAT_FWD_MAP: &str = "BERTH_NAT_FWD";
pub const NAT_FWD_CAPACITY: u32 = NAT_CAPACITY;

/// Host ports in use by any mapping: (protocol, port) -> number of
/// mappings. The cgroup bind hook refuses host processes these ports.
/// Never more entries than [`SERVICES_MAP`], so the same capacity.
pub const PORTS_MAP: &str = "BERTH_PORTS";
pub const PORTS_CAPACITY: u32 = SERVICES_CAPACITY;

/// Settings the daemon writes once: index [`CONFIG_NETNS_COOKIE`] holds the
/// cookie of the network namespace berth serves, so the bind hook (attached
/// to a cgroup, which spans namespaces) acts in that namespace only.
pub const CONFIG_MAP: &str = "BERTH_CONFIG";
pub const CONFIG_NETNS_COOKIE: u32 = 0;
pub const CONFIG_LEN: u32 = 7;
/// `BERTH_CONFIG` index: non-zero when IPv4 from a bridge port without hooks
/// is refused (`berth daemon --default-sg`).
pub const CONFIG_PORT_GATE: u32 = 1;
/// `BERTH_CONFIG` index 2 held the one bridge's MAC before berth served
/// several bridges; the programs now read [`BRIDGE_MACS_MAP`] and nothing
/// writes this slot (pins of layout 2 may still hold the old value).
pub const CONFIG_BRIDGE_MAC: u32 = 2;
/// `BERTH_CONFIG` index: 1 once the daemon has made sure no endpoint has
/// policy; the veth hooks then skip the source check and the security-group
/// lookups, which could not refuse anything. 0 (the default, and what an
/// older daemon's pins hold) keeps them on. The daemon sets it to 0 before
/// any endpoint gets policy.
pub const CONFIG_NO_POLICY: u32 = 3;
/// `BERTH_CONFIG` index: 1 while every mapping is on the wildcard host
/// address; the service lookup then skips the exact-address probe, which
/// could only miss. 0 (the default, and what an older daemon's pins hold)
/// keeps it. The daemon sets it to 0 before publishing a mapping on a
/// specific address.
pub const CONFIG_WILDCARD_ONLY: u32 = 4;

/// A bitmap, one bit per (protocol, host port): set while at least one
/// mapping on a specific host address publishes that port. The service
/// lookup probes the exact address only where the bit is set, so a port
/// published only on the wildcard address costs an array load, not a hash
/// probe that could only miss. The daemon sets a bit before inserting the
/// exact mapping and clears it after removing the last one; a bit set with
/// no such mapping only costs the probe.
pub const EXACT_PORTS_MAP: &str = "BERTH_EXACT_PORTS";
/// 64 ports per word, TCP's 1024 words then UDP's.
pub const EXACT_PORTS_LEN: u32 = 2 * 1024;

/// The word index and bit of `proto`/`port` (host order) in
/// [`EXACT_PORTS_MAP`]. Anything but UDP shares TCP's half: a protocol
/// with no mappings only costs a probe that misses.
#[inline(always)]
pub fn exact_ports_slot(proto: u8, port: u16) -> (u32, u64) {
    let half = if proto == PROTO_UDP { 1024 } else { 0 };
    (half + u32::from(port >> 6), 1u64 << (port & 63))
}
/// `BERTH_CONFIG` index: non-zero while a daemon reads [`FLOW_LOG_RING`]
/// (`berth daemon --flow-log`); otherwise refusals write no record.
pub const CONFIG_FLOW_LOG: u32 = 5;
/// `BERTH_CONFIG` index: the datapath log's level, [`DP_LOG_OFF`] (what a
/// new or older daemon's pins hold) or [`DP_LOG_DEBUG`] (`berth log
/// --datapath`, `berth daemon --datapath-log`).
pub const CONFIG_DP_LOG: u32 = 6;
pub const DP_LOG_OFF: u64 = 0;
pub const DP_LOG_DEBUG: u64 = 1;

/// Bridge ports whose security-group hooks are attached: ifindex -> 1.
pub const HOOKED_PORTS_MAP: &str = "BERTH_HOOKED_PORTS";
/// Linux bridges take at most 1024 ports.
pub const HOOKED_PORTS_CAPACITY: u32 = 1024;
/// The served bridges' own MACs (low 48 bits) -> the bridge's ifindex:
/// frames from one were sent or translated by the host, not a port. A hash
/// lookup where one config slot was, so several bridges cost what one did.
pub const BRIDGE_MACS_MAP: &str = "BERTH_BRIDGE_MACS";
/// `--bridge` is repeatable; nobody serves this many.
pub const BRIDGE_MACS_CAPACITY: u32 = 64;
/// Source MAC (low 48 bits) -> ifindex of the hooked port its frames came
/// in by, learned by `berth_from_ctr` (LRU): one per bridge port; an evicted
/// MAC is learned again from its next frame.
pub const PORT_MACS_MAP: &str = "BERTH_PORT_MACS";
pub const PORT_MACS_CAPACITY: u32 = 1024;

/// Socket-level translation (host-local and hairpin access): (socket
/// cookie, container address, container port) -> the host address and port
/// the application asked for, so `getpeername()` and `recvmsg()` show it.
pub const SOCK_REV_MAP: &str = "BERTH_SOCK_REV";
/// One per socket connected to a published port from the host or a
/// container (LRU): as many as the unestablished-flow tables hold.
pub const SOCK_REV_CAPACITY: u32 = lru_capacity(DEFAULT_MAX_FLOWS);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
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
/// Four addresses per bridge port.
pub const ENDPOINTS_CAPACITY: u32 = 4096;
pub const EP_F_POLICY: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Policy {
    pub len: u32,
    pub _pad: u32,
    pub rules: [Rule; MAX_RULES],
}

/// (group id, member address) -> 1.
pub const SG_MEMBERS_MAP: &str = "BERTH_SG_MEMBERS";
/// Every endpoint in four groups.
pub const SG_MEMBERS_CAPACITY: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgMember {
    pub sg_id: u32,
    pub addr_be: u32,
}

/// Connection tracking for established flows judged by policy, keyed by
/// the flow's first packet. Never evicts: when full, a flow that completes
/// its handshake (UDP/ICMP: gets its first reply) is refused.
pub const CT_MAP: &str = "BERTH_CT";
pub const CT_CAPACITY: u32 = DEFAULT_MAX_FLOWS;
/// Policy flows not yet established, same key and value as [`CT_MAP`]; an
/// LRU hash like [`NAT_NEW_MAP`].
pub const CT_NEW_MAP: &str = "BERTH_CT_NEW";
pub const CT_NEW_CAPACITY: u32 = lru_capacity(DEFAULT_MAX_FLOWS);
/// `CtEntry::flags` bits; the same values as the `NAT_F_*` bits, so one
/// TCP tracker serves both tables.
pub const CT_F_CLOSING: u8 = 1;
pub const CT_F_REPLIED: u8 = 2;
pub const CT_F_ESTABLISHED: u8 = 4;
pub const CT_F_SEQ_KNOWN: u8 = 8;
pub const CT_F_SEQ_FWD: u8 = 16;

/// Direction 0 is the flow's first packet's (key) direction, 1 the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
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
/// only that datagram. Only allowed and translated datagrams are here;
/// refused ones are in [`FRAGS_DENY_MAP`], so a flood of refused first
/// fragments churns that table and never evicts these. Sized by
/// `--max-flows` ([`frags_capacity`]).
pub const FRAGS_MAP: &str = "BERTH_FRAGS";
pub const FRAGS_CAPACITY: u32 = frags_capacity(DEFAULT_MAX_FLOWS);
/// The first fragments the datapath refused (verdict [`FRAG_V_DENY`]),
/// apart from [`FRAGS_MAP`]: a flood of them evicts only other refusals.
/// Same key and value; LRU, sized by `--max-flows` ([`lru_capacity`]).
pub const FRAGS_DENY_MAP: &str = "BERTH_FRAGS_DENY";
pub const FRAGS_DENY_CAPACITY: u32 = frags_deny_capacity(DEFAULT_MAX_FLOWS);

/// The capacity of a table of allowed fragmented datagrams in flight
/// ([`FRAGS_MAP`], `FRAGS6_MAP`) for a given `--max-flows`: a sixteenth of
/// it (96 bytes a slot for IPv4, 144 for IPv6, preallocated), and never
/// fewer than the 1024 slots it had before it followed the flag (the
/// default sizes keep 1024: the memory a quiet host pays). Datagrams in
/// flight at once, not flows: an entry is needed for the milliseconds
/// between a datagram's first and last fragment, and what evicts it early
/// is only other allowed datagrams' first fragments.
pub const fn frags_capacity(max_flows: u32) -> u32 {
    let n = max_flows / 16;
    if n < 1024 {
        1024
    } else {
        n
    }
}

/// The capacity of a table of refused first fragments ([`FRAGS_DENY_MAP`],
/// `FRAGS6_DENY_MAP`): a sixty-fourth of `--max-flows`, at least 64 (256 at
/// the default). A refusal only keeps its datagram's later fragments from
/// the host's reassembly, which drops them after its timeout in any case;
/// a flood of refusals evicts only other refusals.
pub const fn frags_deny_capacity(max_flows: u32) -> u32 {
    let n = max_flows / 64;
    if n < 64 {
        64
    } else {
        n
    }
}

/// Fragments of one datagram arrive within milliseconds; IP ids wrap.
pub const FRAG_TIMEOUT_NS: u64 = 10_000_000_000;
/// `FragKey::kind`: DNAT at an uplink (key: client -> host address).
pub const FRAG_K_DNAT: u8 = 1;
/// `FragKey::kind`: reply SNAT at a container's veth or the bridge (key:
/// container -> client).
pub const FRAG_K_SNAT: u8 = 2;
/// `FragKey::kind`: a security-group verdict at a container's veth, on
/// what it receives (`berth_to_ctr`); keyed by the veth (`ifindex`).
pub const FRAG_K_POLICY: u8 = 3;
/// `FragKey::kind`: as [`FRAG_K_POLICY`], on what the container sends
/// (`berth_from_ctr`). A verdict counts only at the hook that gave it:
/// another port's later fragments never ride it.
pub const FRAG_K_POLICY_OUT: u8 = 4;
/// `FragEntry::verdict` of a policy entry.
pub const FRAG_V_DENY: u8 = 0;
pub const FRAG_V_ALLOW: u8 = 1;

/// One datagram as its fragments carry it: (source, destination, protocol,
/// IP id), and which decision it is for, where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub kind: u8,
    /// Policy kinds: the veth that judged the first fragment; 0 for the
    /// NAT kinds, whose entry the uplink, veth and bridge hooks share.
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
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

// ---------------------------------------------------------------- flow logs

/// Ring buffer of [`FlowEvent`]s and [`FlowEvent6`]s, told apart by
/// record length (`BPF_MAP_TYPE_RINGBUF`): refused flows,
/// which leave no table entry to read. Not pinned: each load starts an
/// empty ring that the loading daemon reads. A record is reserved or
/// counted lost ([`Counter::FlowLogLost`]); the packet never waits.
pub const FLOW_LOG_RING: &str = "BERTH_FLOW_LOG";
/// 256 KiB: about 5 400 IPv4 records (3 200 IPv6) between two reads of the
/// daemon.
pub const FLOW_LOG_RING_BYTES: u32 = 256 * 1024;
/// The datapath log's ring (aya-log's, named by it), not pinned.
pub const DP_LOG_MAP: &str = "AYA_LOGS";
/// Per-CPU token bucket of the datapath log: one [`LogBucket`], not pinned.
pub const DP_LOG_BUCKET_MAP: &str = "BERTH_LOG_BUCKET";
/// Datapath log lines per second per CPU once a bucket is empty, and the
/// burst a full one allows.
pub const DP_LOG_PER_SEC: u64 = 20;
pub const DP_LOG_BURST: u64 = 40;
/// The most bytes one datapath log record reserves in its ring (aya-log
/// rounds a record up to a power of two; a fixture checks every kind fits),
/// which sizes the ring for a burst of every CPU at once.
pub const DP_LOG_RECORD_MAX: u32 = 512;

/// A token bucket: `tokens` left as of `last_ns` (coarse clock).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LogBucket {
    pub last_ns: u64,
    pub tokens: u64,
}

/// `FlowEvent::kind`: the receiving task's security groups refused the
/// flow (or its source was one of the host's own addresses).
pub const FLOW_EV_REJECT_POLICY: u8 = 1;
/// `FlowEvent::kind`: no room in a flow table (or no free client port for
/// a clashing flow).
pub const FLOW_EV_REJECT_FULL: u8 = 2;

/// One refused packet of a new flow to a published port, as the uplink saw
/// it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowEvent {
    /// `bpf_ktime_get_coarse_ns()`.
    pub ktime_ns: u64,
    /// The client.
    pub src_addr_be: u32,
    /// The host address the client used.
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// The container the mapping points at.
    pub ctr_addr_be: u32,
    pub ctr_port_be: u16,
    pub proto: u8,
    /// `FLOW_EV_*`.
    pub kind: u8,
    /// The uplink.
    pub ifindex: u32,
    /// IPv4 total length.
    pub ip_len: u16,
    pub tcp_flags: u8,
    pub _pad: u8,
    pub _pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ServiceKey {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
    /// This mapping's slot in [`BINDING_STATS_MAP`]; 0 (no slot) in pins
    /// converted from layout 2 until the daemon gives it one.
    pub binding: u32,
}

/// A flow as seen on the wire in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatEntry {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub flags: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns()` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The client's own source port; differs from the key's `dst_port_be` when a
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
    /// The mapping's [`BINDING_STATS_MAP`] slot, copied from its
    /// [`Backend`] when the flow opened, so a reply is counted without a
    /// service lookup. Layout 2's padding here: its flows read 0 (no slot).
    pub binding: u32,
    // Layout 3: flow-log counters. The programs add to them on each
    // packet of the flow (no atomics: each direction of a flow is carried
    // by one CPU at a time, so a lost increment needs two CPUs in the same
    // direction of one flow at the same instant); the daemon reads them at
    // each capture window's end and logs the difference.
    /// Packets per direction (0 = client->container, 1 = reply).
    pub packets: [u64; 2],
    /// IPv4 bytes (total length) per direction.
    pub bytes: [u64; 2],
    /// `bpf_ktime_get_coarse_ns()` of the flow's first packet.
    pub opened_ns: u64,
    /// The uplink the flow arrived on.
    pub ifindex: u32,
    /// TCP FIN, SYN and RST bits seen per direction, as a flow log's
    /// `tcp-flags` (FIN 1, SYN 2, RST 4).
    pub tcp_flags: [u8; 2],
    pub _pad3: u16,
}

/// [`NAT_FWD_MAP`] value: the source port the clashing flow uses towards
/// the container, and the container (so userspace can find the flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatFwd {
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub remap_port_be: u16,
}

/// How many free client ports a clashing flow tries before it is dropped
/// (`nat_port_remap_failed`).
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
    let mut h = client_addr_be ^ (((client_port as u32) << 16) | host_port as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    // An odd stride visits distinct ports within the first `size` tries.
    (lo + (h.wrapping_add(attempt.wrapping_mul(2 * 7919 + 1))) % size) as u16
}

/// Defines [`Counter`], each variant with its index and the name userspace
/// shows (`berth stats`), and [`COUNTER_NAMES`] from the same list: one
/// definition for both sides.
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $index:literal => $name:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant = $index,)*
        }

        impl Counter {
            /// Every counter, by index.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The name `berth stats` shows.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }

        /// Every counter's name, by index.
        pub const COUNTER_NAMES: &[&str] = &[$($name,)*];
    };
}

counters! {
    /// Ingress packet matched a mapping and was translated.
    IngressDnat = 0 => "ingress_dnat",
    /// Ingress packet matched nothing and passed untouched.
    IngressPass = 1 => "ingress_pass",
    /// Reply packet translated back to the host port.
    ReplySnat = 2 => "reply_snat",
    /// New flow refused because the tracking table is full.
    NatTableFull = 3 => "nat_table_full",
    /// Translated packet had no route; dropped.
    NoRoute = 4 => "no_route",
    /// Later fragment (no ports) of a datagram nothing remembered at an
    /// uplink or the bridge; passed untouched (it may be the host's own).
    Fragment = 5 => "fragment",
    /// Packet to a published port with TTL <= 1; dropped.
    TtlExceeded = 6 => "ttl_exceeded",
    /// A host process's `bind()` of a published port refused (EADDRINUSE).
    BindRefused = 7 => "bind_refused",
    /// `connect()`/`sendmsg()` to a published port translated at the socket.
    SockXlate = 8 => "sock_xlate",
    /// ICMP error about a translated flow, translated.
    IcmpXlate = 9 => "icmp_xlate",
    /// New flow refused by the receiving task's ingress rules.
    PolicyDeniedIngress = 10 => "policy_denied_ingress",
    /// New flow refused by the sending task's egress rules.
    PolicyDeniedEgress = 11 => "policy_denied_egress",
    /// New flow refused because the policy tracking table is full.
    CtTableFull = 12 => "ct_table_full",
    /// Later fragment translated like its datagram's first fragment.
    FragXlate = 13 => "frag_xlate",
    /// Later fragment with no remembered first fragment where either end
    /// has policy; dropped.
    FragNoFirst = 14 => "frag_no_first",
    /// Later fragment of a datagram whose first fragment policy refused,
    /// or a TCP/UDP first fragment too short to hold its header, where
    /// either end has policy; or, at an uplink, a later fragment of a
    /// datagram whose first fragment it dropped; dropped.
    FragDenied = 15 => "frag_denied",
    /// ICMP other than echo that is no error about a tracked flow of an
    /// endpoint with policy; dropped.
    PolicyDeniedIcmp = 16 => "policy_denied_icmp",
    /// A container's ICMP error about a translated flow that is not its
    /// own or not addressed to that flow's client; dropped.
    IcmpForged = 17 => "icmp_forged",
    /// Packet on an uplink from or to 127.0.0.0/8; dropped, never translated.
    UplinkLoopback = 18 => "uplink_loopback",
    /// Packet on an uplink with a source in a bridge subnet or one of the
    /// host's own addresses; dropped.
    UplinkSpoofedSource = 19 => "uplink_spoofed_source",
    /// Packet from a container with a source not its own, while policy
    /// applies to the container, the claimed source or the receiver; dropped.
    ContainerSpoofedSource = 20 => "container_spoofed_source",
    /// A new flow's reply tuple was taken: it got another client source port.
    NatPortRemap = 21 => "nat_port_remap",
    /// A clashing new flow found no free client port (or no room to
    /// remember it); dropped.
    NatPortRemapFailed = 22 => "nat_port_remap_failed",
    /// TCP without SYN (or with ACK) to a published port, belonging to no
    /// tracked flow; dropped.
    NatNoFlow = 23 => "nat_no_flow",
    /// TCP RST or FIN outside the sequence window of a tracked flow:
    /// forwarded, but the flow is not marked closing.
    TcpOutOfWindow = 24 => "tcp_out_of_window",
    /// TCP without SYN between endpoints with policy, belonging to no
    /// tracked flow; dropped.
    CtNoFlow = 25 => "ct_no_flow",
    /// IPv4 from a bridge port not hooked yet, refused (`--default-sg`).
    UnhookedPort = 26 => "unhooked_port",
    /// A flow-log record the ring buffer had no room for (the daemon
    /// reads too slowly); the record is lost, the packet is not.
    FlowLogLost = 27 => "flow_log_lost",
    /// A datapath log line over the per-CPU rate limit, or one whose
    /// logging program (`BERTH_TAILS` slot `LOG`) was missing; not written.
    DatapathLogLimited = 28 => "datapath_log_limited",
    /// New flow a receiving task's security groups let in (counted once,
    /// when the flow opens; its later packets pass as tracked).
    PolicyAcceptedIngress = 29 => "policy_accepted_ingress",
    /// New flow a sending task's security groups let out (once per flow).
    PolicyAcceptedEgress = 30 => "policy_accepted_egress",
    /// No longer counted: it counted fragmented IPv6 datagrams NAT66 passed
    /// untranslated, which it now translates (`frag6.rs`). Kept so the
    /// counters after it keep their indexes and the metric stays defined.
    Ipv6Untranslated = 31 => "ipv6_untranslated",
    /// IPv6 frame whose program's `BERTH_TAILS` slot was empty (or the
    /// tail call failed): passed untouched at an uplink or the bridge,
    /// dropped on a container's veth where policy applies to its port
    /// (neighbour discovery excepted).
    Ipv6NoProgram = 32 => "ipv6_no_program",
    /// IPv6 from or to a container with policy that no IPv6 program
    /// judged (its slot empty, or its port's addresses unknown), other
    /// than neighbour discovery; dropped (issue 15).
    Policy6Unjudged = 33 => "policy6_unjudged",
    /// A frame from or to a container with policy that is not untagged
    /// IPv4, IPv6 or ARP (VLAN-tagged, 802.1ad, raw 802.3, LLDP, ...),
    /// which no judge reads, or ARP or neighbour discovery behind VLAN
    /// tags from any container; dropped.
    CtrFrameRefused = 34 => "ctr_frame_refused",
    /// ARP, or an IPv6 neighbour advertisement or solicitation, from a
    /// container claiming an address it may not: one of the host's or a
    /// container's with policy (from any container), or anything not its
    /// own (from a container with policy); dropped.
    NeighSpoofed = 35 => "neigh_spoofed",
    /// A packet to a published port longer than its container route's MTU
    /// (IPv4 with DF set, or IPv6): answered with ICMP "fragmentation
    /// needed" / `ICMPv6` "packet too big" from the address it was sent to,
    /// and dropped (`ebpf/src/pmtu.rs`).
    FragNeededSent = 36 => "frag_needed_sent",
    /// Such a packet whose answer was not sent: over the per-CPU rate limit
    /// ([`PMTU_ICMP_PER_SEC`]), or from a source never answered (broadcast,
    /// multicast, 0.0.0.0/8, one of the host's own addresses, a frame not
    /// sent to the uplink's own MAC); dropped.
    FragNeededSuppressed = 37 => "frag_needed_suppressed",
    /// An IPv4 packet to a published port longer than its container
    /// route's MTU without DF: the datapath cannot fragment it and the
    /// sender asked not to be told; dropped (as a router that cannot
    /// fragment would).
    TooBigNoDf = 38 => "too_big_no_df",
}
pub const COUNTERS_LEN: u32 = COUNTER_NAMES.len() as u32;
// The map is indexed by the enum: indexes run 0.. in order.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// Per-mapping counters (`berth map ls --stats`, `/metrics`): per CPU,
/// indexed by [`Backend::binding`], so a translated packet costs one array
/// slot lookup and a few adds. Slot 0 belongs to no mapping (flows and
/// mappings carried over from layout 2 count there, and nothing reads it);
/// the daemon hands out slots 1..=`--max-mappings` and zeroes a slot
/// before giving it to a new mapping.
pub const BINDING_STATS_MAP: &str = "BERTH_BINDING_STATS";
pub const BINDING_STATS_CAPACITY: u32 = binding_stats_capacity(DEFAULT_MAX_MAPPINGS);

/// Slots of [`BINDING_STATS_MAP`] for a given `--max-mappings`: one per
/// mapping plus the unused slot 0.
pub const fn binding_stats_capacity(max_mappings: u32) -> u32 {
    max_mappings.saturating_add(1)
}

/// One mapping's counters on one CPU. "in" is towards the container
/// (counted at the uplink's DNAT), "out" its replies (at the reply SNAT).
/// Bytes are the IPv4 total length (L3: IP header and payload, no
/// Ethernet), as VPC Flow Logs count them. Later fragments and ICMP
/// errors translated for a flow are not counted here (their own global
/// counters are).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BindingStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// New flows tracked (a TCP SYN or a first UDP datagram let in).
    pub flows_opened: u64,
    /// Packets that would have opened a flow, refused by the task's
    /// security groups (each retried SYN counts again).
    pub flows_refused: u64,
}

/// XDP -> TC hand-off in `--attach xdp`: the XDP program translates and
/// leaves this in the packet metadata; the TC program delivers it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct XdpHandoff {
    pub magic: u32,
    pub ifindex: u32,
}
/// The XDP program set both MAC addresses: redirect as is.
pub const XDP_HANDOFF_MAGIC: u32 = 0xbe27_0001;
/// No neighbour entry yet: redirect with neighbour resolution.
pub const XDP_HANDOFF_MAGIC_NEIGH: u32 = 0xbe27_0002;

const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 12);
const _: () = assert!(size_of::<BindingStats>() == 48);
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<NatEntry>() == 88);
const _: () = assert!(size_of::<FlowEvent>() == 40);
const _: () = assert!(size_of::<NatFwd>() == 8);
const _: () = assert!(size_of::<XdpHandoff>() == 8);
const _: () = assert!(size_of::<PortKey>() == 4);
const _: () = assert!(size_of::<Endpoint>() == 8);
const _: () = assert!(size_of::<PolicyKey>() == 8);
const _: () = assert!(size_of::<Rule>() == 16);
const _: () = assert!(size_of::<Policy>() == 8 + 16 * MAX_RULES);
const _: () = assert!(size_of::<SgMember>() == 8);
const _: () = assert!(size_of::<CtEntry>() == 32);
const _: () = assert!(size_of::<SockRevKey>() == 16);
const _: () = assert!(size_of::<SockRevValue>() == 8);
const _: () = assert!(size_of::<FragKey>() == 16);
const _: () = assert!(size_of::<FragEntry>() == 16);
const _: () = assert!(local_net_encode(0, 0) != 0);
const _: () = assert!(size_of::<PortAddrs>() == 8 + 4 * PORT_ADDRS_MAX);

/// aya's `Pod` for every map key and value, each resting on its
/// `bytemuck::Pod` derive: that derive refuses a type with padding or with
/// a field that is not itself plain data, so the bytes aya hands the
/// kernel are all initialised and any bytes read back are a valid value.
#[cfg(feature = "user")]
mod user {
    use super::{
        Backend, BindingStats, CtEntry, Endpoint, FlowEvent, FlowKey, FragEntry, FragKey, NatEntry,
        NatFwd, Policy, PolicyKey, PortAddrs, PortKey, Rule, ServiceKey, SgMember, SockRevKey,
        SockRevValue,
    };

    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => {$(
            const _: () = {
                const fn proven<T: bytemuck::Pod>() {}
                proven::<$t>()
            };
            // SAFETY: bytemuck::Pod, checked just above.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    aya_pod!(
        ServiceKey,
        Backend,
        BindingStats,
        FlowKey,
        NatEntry,
        NatFwd,
        PortKey,
        Endpoint,
        PolicyKey,
        Rule,
        Policy,
        SgMember,
        CtEntry,
        SockRevKey,
        SockRevValue,
        FragKey,
        FragEntry,
        PortAddrs,
        FlowEvent,
    );
    aya_pod!(super::Rule6, super::Policy6, super::SgMember6);
    aya_pod!(
        super::ServiceKey6,
        super::Backend6,
        super::FlowKey6,
        super::NatEntry6,
        super::NatFwd6
    );
    aya_pod!(super::FlowEvent6);
    aya_pod!(super::SockRevKey6, super::SockRevValue6);
}
