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

/// The remapped client port of a clashing IPv6 flow ([`crate::NatFwd`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatFwd6 {
    pub backend_addr: [u8; 16],
    pub backend_port_be: u16,
    pub remap_port_be: u16,
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
/// table (published ports, security groups, socket translations). An
/// eighth of [`crate::DEFAULT_MAX_FLOWS`]: most hosts carry little or no
/// IPv6, and the tables of unestablished flows are preallocated, so sizing
/// them like IPv4's cost every host about 1.2 MiB for traffic it never
/// sees (issue 11). A host with more IPv6 flows raises it.
pub const DEFAULT_MAX_FLOWS6: u32 = 2048;

const _: () = assert!(size_of::<ServiceKey6>() == 20);
const _: () = assert!(size_of::<Backend6>() == 24);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<NatEntry6>() == 104);
const _: () = assert!(size_of::<NatFwd6>() == 20);
