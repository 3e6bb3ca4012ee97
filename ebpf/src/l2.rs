//! What a container's port carries below IP, where policy applies to the
//! port's container: which frames are judged at all, and whose addresses
//! a container may claim to its neighbours.
//!
//! - Frames: only untagged IPv4, IPv6 and ARP cross the port. The judges
//!   read those three; anything else would pass unjudged: a VLAN-tagged
//!   frame (802.1Q, or 802.1ad outside 802.1Q: the kernel strips one tag
//!   into the skb before TC, so the tag shows as `vlan_present`), which a
//!   VLAN device on the far side delivers into another network; raw 802.3,
//!   LLDP, MPLS, `PPPoE`, ... A container needs none of them to talk IP
//!   (ARP resolves IPv4, neighbour discovery IPv6; STP is the bridge's own
//!   business), so they are dropped (`ctr_frame_refused`).
//! - Neighbour claims: ARP from a container with policy must name one of
//!   its port's addresses as sender (or 0.0.0.0, a probe), as IPv4's
//!   source check does for packets (a container without policy keeps ARP
//!   as Docker leaves it); an IPv6 neighbour advertisement must
//!   be for one of its task's addresses, a solicitation from one (or from
//!   `::`, duplicate address detection). Otherwise it could take over the
//!   gateway's or a neighbour's address on the bridge, and the traffic
//!   for it (`neigh_spoofed`). Its own link-local address is not known to
//!   the datapath: a link-local claim must be the modified EUI-64 address
//!   of the link-layer address it announces (the kernel's default), so
//!   claiming the gateway's link-local address can only announce the
//!   gateway's own MAC.
use berth_maps::{Counter, Endpoint};

use crate::{
    maps::{count, BERTH_PORT_ADDRS},
    parse::{ptr_at, ETH_LEN, ETH_P_IP_BE},
    parse6::{ETH_P_IPV6_BE, IP6_HDR_LEN},
    policy::nowhere,
    policy6::port_may_have_policy,
    rules6::endpoint6_with_policy,
    spoof::port_owns,
};

const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();
const ETH_TYPE_OFF: usize = 12;
const ETH_SRC_OFF: usize = 6;

/// The frame's ethertype (network order), if it has a whole Ethernet
/// header.
#[inline(always)]
fn ethertype(data: usize, data_end: usize) -> Option<u16> {
    ptr_at::<u16>(data, data_end, ETH_TYPE_OFF).map(|t| unsafe { core::ptr::read_unaligned(t) })
}

/// Whether a frame on container port `port` is one the judges cannot read
/// while policy may apply to the port's container (counted). The common
/// case costs a load and compares; the rest is a separate subprogram, as
/// the veth programs have no stack to spare.
#[inline(always)]
pub(crate) fn frame_refused(data: usize, data_end: usize, vlan_present: u32, port: u32) -> bool {
    let Some(ty) = ethertype(data, data_end) else {
        // No whole Ethernet header: nothing the stack would take either.
        return false;
    };
    if vlan_present == 0 && (ty == ETH_P_IP_BE || ty == ETH_P_IPV6_BE || ty == ETH_P_ARP_BE) {
        return false;
    }
    other_frame_refused(port)
}

#[inline(never)]
fn other_frame_refused(port: u32) -> bool {
    if nowhere() || !port_may_have_policy(port) {
        return false;
    }
    count(Counter::CtrFrameRefused);
    true
}

/// ARP header (Ethernet, IPv4) through the sender's protocol address.
const ARP_SPA_END: usize = 8 + 6 + 4;

/// Whether an ARP frame a container sent on port `port` claims an IPv4
/// address that is not the port's own, while policy applies (counted).
#[inline(always)]
pub(crate) fn arp_spoofed(data: usize, data_end: usize, port: u32) -> bool {
    ethertype(data, data_end) == Some(ETH_P_ARP_BE) && arp_claim_spoofed(data, data_end, port)
}

#[inline(never)]
fn arp_claim_spoofed(data: usize, data_end: usize, port: u32) -> bool {
    if nowhere() {
        return false;
    }
    let Some(arp) = ptr_at::<[u8; ARP_SPA_END]>(data, data_end, ETH_LEN) else {
        // Too short for Ethernet/IPv4 ARP: the stack ignores it.
        return false;
    };
    let arp = unsafe { &*arp };
    let spa = u32::from_ne_bytes([arp[14], arp[15], arp[16], arp[17]]);
    if spa == 0 {
        return false;
    }
    // Only a port whose container has policy: one without keeps ARP as
    // Docker leaves it (`policy_fixtures::no_source_check_without_policy_
    // on_either_end`), and one whose addresses are not learned yet (a
    // container just started) owns none to check against.
    let Some(p) = (unsafe { BERTH_PORT_ADDRS.get(&port) }) else {
        return false;
    };
    if port_owns(p, spa) || !crate::spoof::port_has_policy(p) {
        return false;
    }
    count(Counter::NeighSpoofed);
    true
}

const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// Options looked at for the link-layer address (real messages carry one
/// or two).
const ND_MAX_OPTS: usize = 4;
/// `ICMPv6` header (4) + reserved/flags (4) + target (16).
const ND_BODY: usize = 24;

/// Whether neighbour discovery a container with policy (`ep`) sent claims
/// an address that is not its own (counted): a neighbour advertisement's
/// target, a solicitation's source. Call for frames `policy6` already
/// found to be neighbour discovery (hop limit 255, `ICMPv6` right after
/// the fixed header, or MLD).
#[inline(never)]
pub(crate) fn nd_spoofed(data: usize, data_end: usize, ep: Endpoint) -> bool {
    let Some(ip) = ptr_at::<[u8; IP6_HDR_LEN + ND_BODY]>(data, data_end, ETH_LEN) else {
        return false;
    };
    let ip = unsafe { &*ip };
    let (claimed_off, lla_opt) = match ip[IP6_HDR_LEN] {
        ND_NEIGHBOUR_ADVERT if ip[6] == 58 => (IP6_HDR_LEN + 8, ND_OPT_TARGET_LL),
        ND_NEIGHBOUR_SOLICIT if ip[6] == 58 => (8, ND_OPT_SOURCE_LL),
        _ => return false,
    };
    let mut claimed = [0u8; 16];
    claimed.copy_from_slice(&ip[claimed_off..claimed_off + 16]);
    // Duplicate address detection: a solicitation from `::` claims nothing.
    if claimed == [0u8; 16] && lla_opt == ND_OPT_SOURCE_LL {
        return false;
    }
    let ok = if claimed[0] == 0xfe && claimed[1] & 0xc0 == 0x80 {
        link_local_matches(data, data_end, &claimed, lla_opt)
    } else {
        matches!(endpoint6_with_policy(&claimed), Some(own) if own.task_id == ep.task_id)
    };
    if !ok {
        count(Counter::NeighSpoofed);
    }
    !ok
}

/// Whether a link-local address is the modified EUI-64 one (RFC 4291
/// appendix A) of the link-layer address the message announces: its
/// `lla_opt` option's, else the frame's source MAC.
#[inline(always)]
fn link_local_matches(data: usize, data_end: usize, ll: &[u8; 16], lla_opt: u8) -> bool {
    let mut mac = match ptr_at::<[u8; 6]>(data, data_end, ETH_SRC_OFF) {
        Some(m) => unsafe { *m },
        None => return false,
    };
    let mut off = ETH_LEN + IP6_HDR_LEN + ND_BODY;
    let mut i = 0;
    while i < ND_MAX_OPTS {
        let Some(opt) = ptr_at::<[u8; 8]>(data, data_end, off) else {
            break;
        };
        let opt = unsafe { &*opt };
        if opt[1] == 0 {
            // A zero length is invalid (RFC 4861 4.6): the stack drops it.
            return false;
        }
        if opt[0] == lla_opt {
            mac.copy_from_slice(&opt[2..8]);
            break;
        }
        off += usize::from(opt[1]) * 8;
        i += 1;
    }
    ll[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0]
        && ll[8] == mac[0] ^ 0x02
        && ll[9] == mac[1]
        && ll[10] == mac[2]
        && ll[11] == 0xff
        && ll[12] == 0xfe
        && ll[13] == mac[3]
        && ll[14] == mac[4]
        && ll[15] == mac[5]
}
