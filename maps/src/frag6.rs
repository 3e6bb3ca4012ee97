//! IPv6 fragments through NAT66 and IPv6 security groups (issue 15): the
//! IPv6 twin of [`crate::FRAGS_MAP`]. Only a datagram's first fragment
//! carries the ports; what it decided is remembered per (source,
//! destination, protocol, 32-bit identification) for the later ones, with
//! IPv4's kinds ([`crate::FRAG_K_DNAT`], [`crate::FRAG_K_SNAT`],
//! [`crate::FRAG_K_POLICY`], [`crate::FRAG_K_POLICY_OUT`]), verdicts and
//! timeout ([`crate::FRAG_TIMEOUT_NS`]). A map of its own because the key is
//! wider; LRU, so losing an entry costs one datagram.
//!
//! Unlike IPv4's, the key holds no protocol: IPv6 names a datagram by
//! (source, destination, identification) alone (RFC 8200, 4.5), and a
//! fragment header's next header is the first header of the fragmentable
//! part (destination options, say), not always the upper layer.

/// IPv6 datagrams in flight at once, not flows (as IPv4's table): the
/// allowed and translated ones, sized by `--max-flows6`
/// ([`crate::frags_capacity`]).
pub const FRAGS6_MAP: &str = "BERTH_FRAGS6";
pub const FRAGS6_CAPACITY: u32 = crate::frags_capacity(crate::DEFAULT_MAX_FLOWS6);
/// The refused ones, apart (as IPv4's [`crate::FRAGS_DENY_MAP`]): a flood
/// of refused first fragments evicts only other refusals.
pub const FRAGS6_DENY_MAP: &str = "BERTH_FRAGS6_DENY";
pub const FRAGS6_DENY_CAPACITY: u32 = crate::frags_deny_capacity(crate::DEFAULT_MAX_FLOWS6);

/// One IPv6 datagram as its fragments carry it, and which decision it is
/// for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragKey6 {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// The fragment header's identification, network order.
    pub id_be: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Policy kinds: the veth that judged the first fragment (as IPv4's
    /// `FragKey::ifindex`); 0 for the NAT kinds.
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragEntry6 {
    /// DNAT: the container address; SNAT: the host address; policy: unused.
    pub addr: [u8; 16],
    /// Policy: [`crate::FRAG_V_ALLOW`] or [`crate::FRAG_V_DENY`].
    pub verdict: u8,
    pub _pad: [u8; 7],
    /// `bpf_ktime_get_ns()` when the first fragment was seen.
    pub created_ns: u64,
}

const _: () = assert!(size_of::<FragKey6>() == 44);
const _: () = assert!(size_of::<FragEntry6>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: bytemuck::Pod (derived above: no padding, plain fields).
    unsafe impl aya::Pod for super::FragKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragEntry6 {}
}
