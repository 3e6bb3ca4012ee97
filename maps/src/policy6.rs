//! Security groups over IPv6 (issue 15): the IPv6 twins of the policy maps.
//! A task's rules are compiled once; those that apply to IPv6 (an IPv6
//! CIDR, `ICMPv6`, or a group peer with any other protocol) go to
//! [`POLICY6_MAP`] under the same [`crate::PolicyKey`] as IPv4's.
//!
//! Each veth hook judges its own container's side of an IPv6 flow only:
//! `berth_from_ctr6` the sender's egress rules, `berth_to_ctr6` the
//! receiver's ingress rules, and each tracks what it allowed under its own
//! side ([`CT6_SIDE_EGRESS`], [`CT6_SIDE_INGRESS`] in the key), so one
//! port's verdict never stands in for another's.
use crate::{lru_capacity, Endpoint, FlowKey6, DEFAULT_MAX_FLOWS6, MAX_RULES};

pub const PROTO_ICMPV6: u8 = 58;

/// A container's IPv6 address -> its task ([`Endpoint`], as IPv4's). A
/// container with policy may send only from its own IPv6 addresses (and
/// link-local ones).
pub const ENDPOINTS6_MAP: &str = "BERTH_ENDPOINTS6";
pub const ENDPOINTS6_CAPACITY: u32 = crate::ENDPOINTS_CAPACITY;

/// (task, direction) -> that task's IPv6 rules.
pub const POLICY6_MAP: &str = "BERTH_POLICY6";
pub const POLICY6_CAPACITY: u32 = crate::POLICY_CAPACITY;

/// One IPv6 allow rule: [`crate::Rule`] with a 16-byte network and mask.
/// Ports in host order, inclusive; `kind` and the ICMP wildcard as IPv4's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Rule6 {
    pub proto: u8,
    pub kind: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    /// [`crate::RULE_PEER_SG`]: the group's id.
    pub sg_id: u32,
    /// [`crate::RULE_PEER_CIDR`]: network and mask, network order.
    pub addr: [u8; 16],
    pub mask: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Policy6 {
    pub len: u32,
    pub _pad: u32,
    pub rules: [Rule6; MAX_RULES],
}

/// (group id, member's IPv6 address) -> 1.
pub const SG_MEMBERS6_MAP: &str = "BERTH_SG_MEMBERS6";
pub const SG_MEMBERS6_CAPACITY: u32 = crate::SG_MEMBERS_CAPACITY;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgMember6 {
    pub sg_id: u32,
    pub addr: [u8; 16],
}

/// IPv6 flows security groups allowed, established ([`crate::CT_MAP`]'s
/// rules: never evicts) and not yet ([`crate::CT_NEW_MAP`]'s: LRU), keyed
/// by the flow's first packet with its side in `_pad[0]`.
pub const CT6_MAP: &str = "BERTH_CT6";
/// Sized by `--max-flows6` ([`DEFAULT_MAX_FLOWS6`]).
pub const CT6_CAPACITY: u32 = DEFAULT_MAX_FLOWS6;
pub const CT6_NEW_MAP: &str = "BERTH_CT6_NEW";
pub const CT6_NEW_CAPACITY: u32 = lru_capacity(DEFAULT_MAX_FLOWS6);
/// `FlowKey6::_pad[0]` of a flow a container opened, judged by its egress
/// rules at its veth's ingress.
pub const CT6_SIDE_EGRESS: u8 = 1;
/// ... of a flow towards a container, judged by its ingress rules at its
/// veth's egress.
pub const CT6_SIDE_INGRESS: u8 = 2;

const _: () = assert!(size_of::<Rule6>() == 44);
const _: () = assert!(size_of::<Policy6>() == 8 + 44 * MAX_RULES);
const _: () = assert!(size_of::<SgMember6>() == 20);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<Endpoint>() == 8);
