//! IPv6 layouts: published IPv6 ports and the IPv6 flow and NAT records
//! NAT66 keeps (the datapath foundation of issue 15). Each mirrors its IPv4
//! counterpart field for field, with 16-byte addresses in network order,
//! so the tracker (`ct.rs`) and userspace treat both alike.
use crate::{lru_capacity, DEFAULT_MAX_MAPPINGS, HOST_ADDRS_CAPACITY};

/// Published IPv6 ports: (protocol, host address or `::` for any, host
/// port) -> [`Backend6`]. Sized by `--max-mappings`, entries allocated on
/// insert, as [`crate::SERVICES_MAP`].
pub const SERVICES6_MAP: &str = "BERTH_SERVICES6";
pub const SERVICES6_CAPACITY: u32 = DEFAULT_MAX_MAPPINGS;

/// [`SERVICES6_MAP`] key. `host_addr` all zero: the wildcard (`[::]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ServiceKey6 {
    pub host_addr: [u8; 16],
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// [`SERVICES6_MAP`] value: where a published IPv6 port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Backend6 {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: u16,
    /// The mapping's [`crate::BINDING_STATS_MAP`] slot, as
    /// [`crate::Backend::binding`] (one slot per binding, whatever its
    /// family).
    pub binding: u32,
}

/// An IPv6 flow as seen on the wire in one direction (the IPv6
/// [`crate::FlowKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKey6 {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// A published IPv6 port's flow, keyed by its reply tuple as the container
/// sends it: [`crate::NatEntry`] with the host address widened. The same
/// `NAT_F_*` flags and tracking and flow-log fields, in the same order
/// after the address, so one tracker writes both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatEntry6 {
    pub host_addr: [u8; 16],
    pub host_port_be: u16,
    pub flags: u8,
    pub _pad: u8,
    pub _pad1: u32,
    pub last_seen_ns: u64,
    pub client_port_be: u16,
    pub wscale: [u8; 2],
    pub seq_end: [u32; 2],
    pub max_win: [u32; 2],
    pub binding: u32,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub opened_ns: u64,
    pub ifindex: u32,
    pub tcp_flags: [u8; 2],
    pub _pad3: u16,
}

/// The remapped client port of a clashing IPv6 flow ([`crate::NatFwd`]):
/// the value of [`NAT6_FWD_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatFwd6 {
    pub backend_addr: [u8; 16],
    pub backend_port_be: u16,
    pub remap_port_be: u16,
}

/// IPv6 flows whose reply tuple clashed with another flow's and so got
/// another client source port towards the container, as
/// [`crate::NAT_FWD_MAP`]: the client-side tuple as on the wire
/// ([`FlowKey6`], client -> host address:port) -> [`NatFwd6`]. A plain
/// hash, entries allocated on insert: an idle host pays for the buckets
/// only, and an established flow's remap is never evicted.
pub const NAT6_FWD_MAP: &str = "BERTH_NAT6_FWD";
pub const NAT6_FWD_CAPACITY: u32 = NAT6_CAPACITY;

/// [`crate::nat_remap_port`] for an IPv6 client: its address folded to
/// 32 bits (the four words, as stored, combined by exclusive or), so
/// clients of one `/64` still probe different ports.
#[inline(always)]
pub const fn nat_remap_port6(
    client_addr: &[u8; 16],
    client_port: u16,
    host_port: u16,
    attempt: u32,
) -> u16 {
    let a = client_addr;
    let mut folded = 0u32;
    let mut i = 0;
    while i < 16 {
        folded ^= u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        i += 4;
    }
    crate::nat_remap_port(folded, client_port, host_port, attempt)
}

/// The host's own IPv6 addresses (16 bytes, network order) -> 1: a
/// wildcard (`[::]`) mapping matches only traffic to one of these, and a
/// client claiming one is refused, as [`crate::HOST_ADDRS_MAP`] for IPv4.
pub const HOST_ADDRS6_MAP: &str = "BERTH_HOST_ADDRS6";
pub const HOST_ADDRS6_CAPACITY: u32 = HOST_ADDRS_CAPACITY;

/// Established IPv6 published-port flows, keyed by the reply tuple as the
/// container sends it ([`FlowKey6`] -> [`NatEntry6`]); never evicts, as
/// [`crate::NAT_MAP`].
pub const NAT6_MAP: &str = "BERTH_NAT6";
pub const NAT6_CAPACITY: u32 = DEFAULT_MAX_FLOWS6;
/// IPv6 flows not yet established (LRU), as [`crate::NAT_NEW_MAP`].
pub const NAT6_NEW_MAP: &str = "BERTH_NAT6_NEW";
pub const NAT6_NEW_CAPACITY: u32 = lru_capacity(DEFAULT_MAX_FLOWS6);

/// `--max-flows6` by default: IPv6 flows tracked at once in each IPv6 flow
/// table (published ports, security groups, socket translations): IPv4's
/// [`crate::DEFAULT_MAX_FLOWS`], so a dual-stack host serves as many flows
/// on either family. A host with little IPv6 lowers it to save memory (the
/// tables of unestablished flows are preallocated: about 1.2 MiB at the
/// default). Not lower by default: 2 048 (and its 256 unestablished) was
/// tried and the bench's IPv6 rows (a client opening about 7 000
/// connections/s, each flow kept while it closes) were refused: the
/// client's connections timed out.
pub const DEFAULT_MAX_FLOWS6: u32 = crate::DEFAULT_MAX_FLOWS;

/// One refused packet of a new IPv6 flow to a published port, as the
/// uplink saw it: [`crate::FlowEvent`] with 16-byte addresses. Both go to
/// one ring ([`crate::FLOW_LOG_RING`]); the kernel keeps each record's
/// length in the ring, and the two lengths differ, so the length says the
/// family (a reader takes only the lengths it knows). The ring is never
/// pinned: only the daemon that loaded the programs writing it reads it,
/// so a changed record never meets an older reader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowEvent6 {
    /// `bpf_ktime_get_coarse_ns()`.
    pub ktime_ns: u64,
    /// The client.
    pub src_addr: [u8; 16],
    /// The host address the client used.
    pub dst_addr: [u8; 16],
    /// The container the mapping points at.
    pub ctr_addr: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub ctr_port_be: u16,
    pub proto: u8,
    /// `FLOW_EV_*`.
    pub kind: u8,
    /// The uplink.
    pub ifindex: u32,
    /// The IPv6 header and payload, as the flow tables count bytes.
    pub ip_len: u16,
    pub tcp_flags: u8,
    pub _pad: u8,
}

const _: () = assert!(size_of::<ServiceKey6>() == 20);
const _: () = assert!(size_of::<Backend6>() == 24);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<NatEntry6>() == 104);
const _: () = assert!(size_of::<NatFwd6>() == 20);
const _: () = assert!(size_of::<FlowEvent6>() == 72);
// The ring tells the families apart by record length.
const _: () = assert!(size_of::<FlowEvent6>() != size_of::<crate::FlowEvent>());
