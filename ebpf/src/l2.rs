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
//!   From a port without policy tagged frames pass (a container may trunk
//!   VLANs), but not tagged ARP or neighbour discovery (an IPv6 frame with
//!   hop limit 255 carrying `ICMPv6` or an extension header), under any
//!   number of tags: Linux strips a VLAN 0 (priority) tag and reads what is
//!   inside as untagged, so a claim there would reach the host and the
//!   bridge unjudged (`ctr_frame_refused` too). A container needs neither:
//!   it resolves its neighbours untagged.
//! - Neighbour claims (ARP's sender address, a neighbour advertisement's
//!   target, a solicitation's source), from every container port, policy
//!   or not: whoever answers for an address on the bridge gets the traffic
//!   for it, past the security groups of the container that owns it. As no
//!   ENI can take another's address in a VPC, and no Cilium endpoint can
//!   spoof, a claim is refused (`neigh_spoofed`) when it names
//!   - one of the host's own addresses (the gateway's above all), from any
//!     port;
//!   - an address of a container with policy that is not the claimer's
//!     own, from any port (a port whose addresses are not learned yet owns
//!     none, as for the IPv4 source check);
//!   - from a container with policy, anything not its own: ARP must name
//!     one of its port's addresses, neighbour discovery one of its port's
//!     or its task's.
//!
//!   A port's own addresses are those the daemon learned from its veth
//!   peer in the container's namespace: IPv4 ones in `BERTH_PORT_ADDRS`,
//!   IPv6 ones in `BERTH_PORT_ADDRS6` (one entry per port and address), so
//!   IPv6 claims are judged as IPv4's: whose task a port carries does not
//!   matter to a port without policy, only what it holds.
//!
//!   Probes claim nothing: ARP from 0.0.0.0, a solicitation from `::`
//!   (duplicate address detection). Containers without policy still claim
//!   each other's addresses as Docker lets them (a container routing or
//!   proxying for others keeps working). Link-local addresses are not known
//!   to the datapath: a container with policy may claim only the modified
//!   EUI-64 address of the link-layer address it announces (the kernel's
//!   default), any other port no EUI-64 address but the one of its own
//!   announced MAC, so the gateway's or a container's default link-local
//!   address can only ever be announced with its owner's MAC (the host's
//!   own link-local addresses are host addresses in any case).
//!
//!   Neighbour discovery is looked for behind hop-by-hop, routing and
//!   destination options headers too, where Linux takes it (policy6's
//!   judges see `ICMPv6` there as an upper layer judged by `all` rules, so
//!   a container with policy allowed all egress could hide a claim there).
//! - Cost: IPv4 data never reaches these checks (the ethertype is compared
//!   already); IPv6 data from a container pays one one-byte compare (hop
//!   limit 255, which neighbour discovery must carry); map lookups happen
//!   for ARP and neighbour discovery only, in subprograms of their own.
use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, macros::map, maps::HashMap};
use berth_maps::{Counter, PortAddr6, PORT_ADDRS6_CAPACITY};

use crate::{
    maps::{count, BERTH_HOST_ADDRS6, BERTH_PORT_ADDRS},
    parse::{ptr_at, ETH_LEN, ETH_P_IP_BE},
    parse6::{ETH_P_IPV6_BE, IP6_HDR_LEN, NEXTHDR_DEST, NEXTHDR_HOP, NEXTHDR_ROUTING},
    policy::{endpoint_with_policy, nowhere},
    policy6::{port_endpoint, port_may_have_policy, PortEp},
    rules6::endpoint6_with_policy,
    service::is_host_addr,
    spoof::{port_has_policy, port_owns},
};

const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();
const ETH_TYPE_OFF: usize = 12;
const ETH_SRC_OFF: usize = 6;
/// VLAN tags looked through for ARP or neighbour discovery inside; a frame
/// a container sends with more is refused, from every port.
const MAX_TAGS: usize = 8;

/// Each bridge port's own IPv6 addresses (`berth_maps::PORT_ADDRS6_MAP`).
#[map]
pub(crate) static BERTH_PORT_ADDRS6: HashMap<PortAddr6, u32> =
    HashMap::pinned(PORT_ADDRS6_CAPACITY, BPF_F_NO_PREALLOC);

/// The frame's ethertype (network order), if it has a whole Ethernet
/// header.
#[inline(always)]
fn ethertype(data: usize, data_end: usize) -> Option<u16> {
    ptr_at::<u16>(data, data_end, ETH_TYPE_OFF).map(|t| unsafe { core::ptr::read_unaligned(t) })
}

/// Whether a frame a container on port `port` sends (`from`) or receives
/// is one the judges cannot read while policy may apply to the port's
/// container, or one it sends with ARP or neighbour discovery behind VLAN
/// tags (counted). The common case costs a load and compares; the rest is
/// a separate subprogram, as the veth programs have no stack to spare.
#[inline(always)]
pub(crate) fn frame_refused(
    data: usize,
    data_end: usize,
    vlan_present: u32,
    port: u32,
    from: bool,
) -> bool {
    let Some(ty) = ethertype(data, data_end) else {
        // No whole Ethernet header: nothing the stack would take either.
        return false;
    };
    if vlan_present == 0 && (ty == ETH_P_IP_BE || ty == ETH_P_IPV6_BE || ty == ETH_P_ARP_BE) {
        return false;
    }
    other_frame_refused(data, data_end, port, u32::from(from))
}

#[inline(never)]
fn other_frame_refused(data: usize, data_end: usize, port: u32, from: u32) -> bool {
    let refused = (!nowhere() && port_may_have_policy(port))
        || (from != 0 && tagged_neighbour(data, data_end));
    if refused {
        count(Counter::CtrFrameRefused);
    }
    refused
}

/// Whether a frame that is not plain IPv4, IPv6 or ARP carries ARP or
/// neighbour discovery behind VLAN tags: one the kernel stripped
/// (`vlan_present`, the frame's ethertype then is what was inside) and any
/// left in the frame (802.1Q or 802.1ad), or more tags than are looked
/// through. An untagged frame gets here only with another ethertype.
#[inline(always)]
fn tagged_neighbour(data: usize, data_end: usize) -> bool {
    let mut off = ETH_TYPE_OFF;
    let mut i = 0;
    // The ethertype behind each of up to `MAX_TAGS` tags.
    while i <= MAX_TAGS {
        let Some(t) = ptr_at::<u16>(data, data_end, off) else {
            return false;
        };
        let ty = unsafe { core::ptr::read_unaligned(t) };
        if ty == ETH_P_ARP_BE {
            return true;
        }
        if ty == ETH_P_IPV6_BE {
            // Next header and hop limit: neighbour discovery carries 255
            // and `ICMPv6`, right away or behind extension headers.
            let Some(ip) = ptr_at::<[u8; 2]>(data, data_end, off + 2 + 6) else {
                return false;
            };
            let ip = unsafe { &*ip };
            return ip[1] == 255
                && matches!(
                    ip[0],
                    NEXTHDR_ICMPV6 | NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST
                );
        }
        if ty != ETH_P_8021Q_BE && ty != ETH_P_8021AD_BE {
            return false;
        }
        off += 4;
        i += 1;
    }
    true
}

/// ARP header (Ethernet, IPv4) through the sender's protocol address.
const ARP_SPA_END: usize = 8 + 6 + 4;

/// Whether an ARP frame a container sent on port `port` claims an IPv4
/// address it may not (counted; see the module's doc).
#[inline(always)]
pub(crate) fn arp_spoofed(data: usize, data_end: usize, port: u32) -> bool {
    ethertype(data, data_end) == Some(ETH_P_ARP_BE) && arp_claim_spoofed(data, data_end, port)
}

#[inline(never)]
fn arp_claim_spoofed(data: usize, data_end: usize, port: u32) -> bool {
    let Some(arp) = ptr_at::<[u8; ARP_SPA_END]>(data, data_end, ETH_LEN) else {
        // Too short for Ethernet/IPv4 ARP: the stack ignores it.
        return false;
    };
    let arp = unsafe { &*arp };
    let spa = u32::from_ne_bytes([arp[14], arp[15], arp[16], arp[17]]);
    if spa == 0 {
        return false;
    }
    let p = unsafe { BERTH_PORT_ADDRS.get(&port) };
    if p.is_some_and(|p| port_owns(p, spa)) {
        return false;
    }
    let taken = is_host_addr(spa)
        || (!nowhere() && (endpoint_with_policy(spa).is_some() || p.is_some_and(port_has_policy)));
    if taken {
        count(Counter::NeighSpoofed);
    }
    taken
}

const NEXTHDR_ICMPV6: u8 = 58;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// Options looked at for the link-layer address (real messages carry one
/// or two).
const ND_MAX_OPTS: usize = 4;
/// `ICMPv6` header (4) + reserved/flags (4) + target (16).
const ND_BODY: usize = 24;

/// Extension headers looked through for neighbour discovery behind them.
const ND_MAX_EXT: usize = 4;

/// Whether an IPv6 frame a container sent on port `port` is a neighbour
/// advertisement or solicitation claiming an address it may not (counted;
/// see the module's doc). Every IPv6 frame a container sends comes here:
/// all but those with neighbour discovery's hop limit leave after one
/// compare.
#[inline(always)]
pub(crate) fn nd_spoofed(data: usize, data_end: usize, port: u32) -> bool {
    // RFC 4861 makes receivers drop neighbour discovery with another hop
    // limit: nothing else is believed as a claim.
    let Some(hop_limit) = ptr_at::<u8>(data, data_end, ETH_LEN + 7) else {
        return false;
    };
    if unsafe { *hop_limit } != 255 {
        return false;
    }
    nd_claim_spoofed(data, data_end, port)
}

/// The frame offset of the `ICMPv6` header right after the fixed header or
/// behind hop-by-hop, routing and destination options headers: Linux
/// takes neighbour discovery behind them (not behind a fragment header,
/// RFC 6980), so a claim must not hide there.
#[inline(always)]
fn icmp6_offset(data: usize, data_end: usize) -> Option<usize> {
    let mut next = unsafe { *ptr_at::<u8>(data, data_end, ETH_LEN + 6)? };
    let mut off = ETH_LEN + IP6_HDR_LEN;
    let mut i = 0;
    while i < ND_MAX_EXT {
        match next {
            NEXTHDR_ICMPV6 => return Some(off),
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let h = unsafe { &*ptr_at::<[u8; 2]>(data, data_end, off)? };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            _ => return None,
        }
        i += 1;
    }
    (next == NEXTHDR_ICMPV6).then_some(off)
}

#[inline(never)]
fn nd_claim_spoofed(data: usize, data_end: usize, port: u32) -> bool {
    let Some(icmp) = icmp6_offset(data, data_end) else {
        return false;
    };
    let Some(msg) = ptr_at::<[u8; ND_BODY]>(data, data_end, icmp) else {
        return false;
    };
    let msg = unsafe { &*msg };
    let mut claimed = [0u8; 16];
    let lla_opt = match msg[0] {
        ND_NEIGHBOUR_ADVERT => {
            claimed.copy_from_slice(&msg[8..24]);
            ND_OPT_TARGET_LL
        }
        ND_NEIGHBOUR_SOLICIT => {
            let Some(ip) = ptr_at::<[u8; IP6_HDR_LEN]>(data, data_end, ETH_LEN) else {
                return false;
            };
            let ip = unsafe { &*ip };
            claimed.copy_from_slice(&ip[8..24]);
            ND_OPT_SOURCE_LL
        }
        _ => return false,
    };
    // Duplicate address detection: a solicitation from `::` claims nothing.
    if claimed == [0u8; 16] && lla_opt == ND_OPT_SOURCE_LL {
        return false;
    }
    // With no policy anywhere no port has any, and no address is a policy
    // container's: only the host's addresses are to be kept.
    let anywhere = !nowhere();
    let own = match anywhere.then(|| port_endpoint(port)) {
        Some(PortEp::Policy(ep)) => Some(ep.task_id),
        _ => None,
    };
    let ok = if unsafe { BERTH_HOST_ADDRS6.get(&claimed) }.is_some() {
        false
    } else if claimed[0] == 0xfe && claimed[1] & 0xc0 == 0x80 {
        // A container with policy has no other link-local address to
        // claim; any other port may use a non-EUI-64 one of its choosing.
        (own.is_none() && !eui64(&claimed))
            || link_local_matches(data, data_end, &claimed, lla_opt, icmp + ND_BODY)
    } else if !anywhere || port_owns6(port, &claimed) {
        // One of the port's own addresses (learned from its container's
        // namespace), as ARP's sender.
        true
    } else {
        match (endpoint6_with_policy(&claimed), own) {
            (Some(ep), Some(task)) => ep.task_id == task,
            // Another container's with policy, from a port that does not
            // hold it (or whose addresses are not learned yet: it owns
            // nothing, as in the source check).
            (Some(_), None) => false,
            (None, own) => own.is_none(),
        }
    };
    if !ok {
        count(Counter::NeighSpoofed);
    }
    !ok
}

/// Whether `addr` is one of port `port`'s own (learned) IPv6 addresses.
#[inline(always)]
fn port_owns6(port: u32, addr: &[u8; 16]) -> bool {
    let key = PortAddr6 {
        ifindex: port,
        addr: *addr,
    };
    unsafe { BERTH_PORT_ADDRS6.get(&key) }.is_some()
}

/// Whether an interface identifier is a modified EUI-64 one (RFC 4291
/// appendix A: `ff:fe` in its middle), i.e. names a link-layer address.
#[inline(always)]
fn eui64(a: &[u8; 16]) -> bool {
    a[11] == 0xff && a[12] == 0xfe
}

/// Whether a link-local address is the modified EUI-64 one (RFC 4291
/// appendix A) of the link-layer address the message announces: its
/// `lla_opt` option's (options from frame offset `opts`), else the
/// frame's source MAC.
#[inline(always)]
fn link_local_matches(
    data: usize,
    data_end: usize,
    ll: &[u8; 16],
    lla_opt: u8,
    opts: usize,
) -> bool {
    let mut mac = match ptr_at::<[u8; 6]>(data, data_end, ETH_SRC_OFF) {
        Some(m) => unsafe { *m },
        None => return false,
    };
    let mut off = opts;
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
