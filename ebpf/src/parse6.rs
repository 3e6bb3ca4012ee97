//! IPv6 header parsing: the IPv6 half of the one packet description
//! (`parse.rs` holds the IPv4 half and the rules both follow). Called only
//! where the frame is not IPv4 (`Parsed::NotIpv4`), so the IPv4 path pays
//! nothing for it. Addresses stay 16 bytes in network order.
//!
//! Decisions for odd packets (documented in the README), mirroring IPv4's:
//! - Extension headers are walked, at most [`MAX_EXT_HDRS`] of them:
//!   hop-by-hop (first only, as RFC 8200 requires), routing, destination
//!   options and fragment. AH, ESP, "no next header", a hop-by-hop header
//!   anywhere but first, or a longer chain end the walk: the packet passes
//!   untouched, as an IPv4 protocol berth does not translate does.
//! - A payload length of 0 (a jumbogram), one longer than the frame, or one
//!   shorter than the headers it announces, and the destination `::`, pass
//!   untouched (the stack drops them), as IPv4's inconsistent total length
//!   and 0.0.0.0 do. So does any header cut short by the frame (or by TC's
//!   linear part).
//! - `ICMPv6` (neighbour discovery above all) and other protocols pass
//!   untouched; a whole packet of one is a [`Parsed6::Upper`] naming the
//!   protocol behind the extension headers, so security groups judge GRE
//!   behind a destination options header by the rules for GRE.
//! - Fragments: the fragment header with offset 0 and M set is a first
//!   fragment, a [`Flow6`] marked `first_frag` that must hold the whole
//!   TCP/UDP header; offset 0 with M clear (an atomic fragment) is a whole
//!   packet; a non-zero offset is a [`Frag6`] with no ports, named by
//!   (source, destination, protocol, 32-bit identification) as an IPv4
//!   later fragment is. A first fragment no flow is parsed from (another
//!   protocol, or TCP/UDP whose header it cuts short) is a
//!   [`Parsed6::FirstFrag`], so security groups can remember its verdict
//!   for the later fragments (`frag6.rs`); NAT66 leaves it alone.
//! - TCP with a data offset < 5, UDP with a length < 8 or past the payload
//!   (only the header has to fit in a first fragment) pass untouched.
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::parse::{l4_ports, ptr_at, ETH_LEN};

pub(crate) const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// The fixed IPv6 header.
pub(crate) const IP6_HDR_LEN: usize = 40;

pub(crate) const NEXTHDR_HOP: u8 = 0;
pub(crate) const NEXTHDR_ROUTING: u8 = 43;
pub(crate) const NEXTHDR_FRAGMENT: u8 = 44;
pub(crate) const NEXTHDR_DEST: u8 = 60;

/// Extension headers walked before the packet is left to the stack: the
/// bound of the walk's loop. Real traffic carries one or two.
pub(crate) const MAX_EXT_HDRS: usize = 6;
/// No header past this offset is looked at (bounds every offset the walk
/// computes for the verifier: 6 headers of at most 2 KiB each fit).
const MAX_L4_OFF: usize = 16 * 1024;

const FRAG_OFFSET_MASK: u16 = 0xfff8;
const FRAG_MF: u16 = 0x0001;

/// The five-tuple and the facts the NAT needs about an IPv6 TCP/UDP packet
/// (the IPv6 counterpart of `parse::Flow`).
#[derive(Clone, Copy)]
pub(crate) struct Flow6 {
    pub proto: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub hop_limit: u8,
    pub tcp_flags: u8,
    /// TCP header length in bytes; 0 for UDP.
    pub tcp_hdr_len: u8,
    /// IPv6 payload length in host order (extension headers included).
    pub payload_len: u16,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// UDP datagram with a zero checksum (invalid over IPv6; left to the
    /// stack's judgement, never rewritten into a valid one).
    pub udp_csum_zero: bool,
    /// The first fragment of a datagram (fragment header: offset 0, M set).
    pub first_frag: bool,
    /// The fragment header's identification (network order), 0 when the
    /// packet has none.
    pub frag_id_be: u32,
}

/// A later fragment (offset != 0) of an IPv6 datagram: no L4 header.
#[derive(Clone, Copy)]
pub(crate) struct Frag6 {
    pub proto: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub frag_id_be: u32,
    pub hop_limit: u8,
    pub payload_len: u16,
}

/// The IPv6 packet description.
pub(crate) enum Parsed6 {
    /// Not IPv6, or IPv6 the rules above refuse (TCP/UDP the parser
    /// refused included); berth leaves it to the stack.
    Pass,
    /// A whole packet of an upper-layer protocol but TCP and UDP
    /// (`ICMPv6`, GRE, ESP, ...), behind the extension headers walked;
    /// berth leaves it to the stack.
    Upper(u8),
    /// A later fragment.
    Fragment(Frag6),
    /// A first fragment (M set, offset 0) no [`Flow6`] was parsed from:
    /// not TCP/UDP, or a TCP/UDP header it does not hold whole.
    FirstFrag(Frag6),
    Flow(Flow6),
}

/// Where the walk of the extension headers ended.
struct Upper {
    proto: u8,
    off: usize,
    /// The fragment header's offset/flags word (host order) and id, if any.
    frag: Option<(u16, u32)>,
}

/// Walk the extension headers from the fixed header's `next`, within the
/// payload that ends at `end` (frame offset). `None`: pass untouched.
#[inline(always)]
fn walk_ext(data: usize, data_end: usize, mut next: u8, end: usize) -> Option<Upper> {
    let mut off = ETH_LEN + IP6_HDR_LEN;
    let mut frag = None;
    let mut first = true;
    for _ in 0..MAX_EXT_HDRS {
        match next {
            NEXTHDR_HOP if !first => return None,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let h = unsafe { &*ptr_at::<[u8; 2]>(data, data_end, off)? };
                let len = (h[1] as usize + 1) * 8;
                next = h[0];
                off += len;
            }
            NEXTHDR_FRAGMENT => {
                // A second fragment header is nonsense: leave it.
                if frag.is_some() {
                    return None;
                }
                let h = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, off)? };
                next = h[0];
                frag = Some((
                    u16::from_be_bytes([h[2], h[3]]),
                    u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
                ));
                off += 8;
            }
            _ => {
                if off > end {
                    return None;
                }
                return Some(Upper {
                    proto: next,
                    off: off_merged(off),
                    frag,
                });
            }
        }
        first = false;
        if off > end || off > MAX_L4_OFF {
            return None;
        }
    }
    // The chain is longer than the bound: what follows the last header
    // walked is still an extension header (or the upper layer, if it ended
    // exactly at the bound).
    if matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
    ) {
        return None;
    }
    Some(Upper {
        proto: next,
        off: off_merged(off),
        frag,
    })
}

/// The L4 offset, unchanged (every header counts 8-byte units and the walk
/// stops at [`MAX_L4_OFF`]), but with the bounds the verifier keeps for it
/// the same on every path through the walk: each chain of headers would
/// otherwise carry its own range into everything after the parse, and the
/// verifier walk that again for each (a fragment header anywhere in a
/// chain multiplied `berth_ingress6`'s verified instructions sevenfold).
#[inline(always)]
fn off_merged(off: usize) -> usize {
    const FIXED: usize = ETH_LEN + IP6_HDR_LEN;
    const _: () = assert!(MAX_L4_OFF - FIXED <= EXT_LEN_MASK);
    FIXED + ((off - FIXED) & EXT_LEN_MASK)
}

/// Masks a multiple of 8 below 16 KiB to itself.
const EXT_LEN_MASK: usize = 0x3ff8;

/// Parse Ethernet + IPv6 + its extension headers + the TCP/UDP ports of
/// the frame in `[data, data_end)`; `frame_len` as for `parse_packet`.
#[inline(always)]
pub(crate) fn parse_packet6(data: usize, data_end: usize, frame_len: usize) -> Parsed6 {
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return Parsed6::Pass;
    };
    if unsafe { (*eth).ether_type } != ETH_P_IPV6_BE {
        return Parsed6::Pass;
    }
    let Some(ip) = ptr_at::<Ipv6Hdr>(data, data_end, ETH_LEN) else {
        return Parsed6::Pass;
    };
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Parsed6::Pass;
    }
    let payload_len = u16::from_be_bytes(ip.payload_len);
    let end = ETH_LEN + IP6_HDR_LEN + payload_len as usize;
    // Ethernet pads short frames, so the frame may be longer; never shorter.
    if payload_len == 0 || end > frame_len {
        return Parsed6::Pass;
    }
    let (src_addr, dst_addr) = (ip.src_addr, ip.dst_addr);
    if dst_addr == [0; 16] {
        return Parsed6::Pass;
    }
    let hop_limit = ip.hop_limit;
    let Some(up) = walk_ext(data, data_end, ip.next_hdr, end) else {
        return Parsed6::Pass;
    };
    let frag = |id| Frag6 {
        proto: up.proto,
        src_addr,
        dst_addr,
        frag_id_be: id,
        hop_limit,
        payload_len,
    };
    let (first_frag, frag_id_be) = match up.frag {
        Some((word, id)) if word & FRAG_OFFSET_MASK != 0 => {
            return Parsed6::Fragment(frag(id));
        }
        Some((word, id)) => (word & FRAG_MF != 0, id),
        None => (false, 0),
    };
    // What no flow is parsed from: a first fragment, or left to the stack.
    let not_a_flow = || {
        if first_frag {
            Parsed6::FirstFrag(frag(frag_id_be))
        } else {
            Parsed6::Pass
        }
    };
    if up.proto != berth_maps::PROTO_TCP && up.proto != berth_maps::PROTO_UDP {
        if first_frag {
            return not_a_flow();
        }
        return Parsed6::Upper(up.proto);
    }
    let flow = Flow6 {
        proto: up.proto,
        src_addr,
        dst_addr,
        src_port_be: 0,
        dst_port_be: 0,
        hop_limit,
        tcp_flags: 0,
        tcp_hdr_len: 0,
        payload_len,
        l4_off: up.off,
        udp_csum_zero: false,
        first_frag,
        frag_id_be,
    };
    // Bytes of this packet from the L4 header on.
    let l4_len = end - up.off;
    let parsed = if up.proto == berth_maps::PROTO_TCP {
        parse_tcp6(data, data_end, flow, l4_len)
    } else {
        parse_udp6(data, data_end, flow, l4_len)
    };
    match parsed {
        Some(f) => Parsed6::Flow(f),
        None => not_a_flow(),
    }
}

#[inline(always)]
fn parse_tcp6(data: usize, data_end: usize, mut flow: Flow6, l4_len: usize) -> Option<Flow6> {
    let tcp = unsafe { &*ptr_at::<[u8; 20]>(data, data_end, flow.l4_off)? };
    let doff = (tcp[12] >> 4) as usize;
    if doff < 5 || l4_len < doff * 4 {
        return None;
    }
    flow.src_port_be = u16::from_ne_bytes([tcp[0], tcp[1]]);
    flow.dst_port_be = u16::from_ne_bytes([tcp[2], tcp[3]]);
    flow.tcp_flags = tcp[13];
    flow.tcp_hdr_len = (doff * 4) as u8;
    Some(flow)
}

#[inline(always)]
fn parse_udp6(data: usize, data_end: usize, mut flow: Flow6, l4_len: usize) -> Option<Flow6> {
    let udp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, flow.l4_off)? };
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    // A first fragment holds the header and part of the datagram.
    let in_packet = if flow.first_frag { 8 } else { udp_len };
    if udp_len < 8 || l4_len < in_packet {
        return None;
    }
    (flow.src_port_be, flow.dst_port_be) = l4_ports(udp);
    flow.udp_csum_zero = udp[6] == 0 && udp[7] == 0;
    Some(flow)
}
