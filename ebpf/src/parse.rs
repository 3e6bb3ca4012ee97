//! Header parsing: one parse of a frame into one description
//! ([`Parsed`]) that NAT, ICMP translation and security groups all consume.
//! The IPv4 header is read by [`parse_ipv4`], the frame's own and the one
//! an ICMP error quotes alike; ports by [`l4_ports`] / [`echo_ports`]
//! (`icmp.rs` reads an error's quote from the `Parsed::Ip` description).
//! One bounds check right before each header access.
//!
//! Decisions for odd packets (documented in the README):
//! - Only Ethernet II + IPv4 is looked at; VLAN-tagged frames, ARP and IPv6
//!   pass untouched.
//! - IPv4 options are allowed: the L4 header is found from IHL. IHL < 5,
//!   a version other than 4, a total length shorter than the headers or
//!   longer than the frame, and the destination 0.0.0.0 pass untouched (the
//!   stack drops them).
//! - UDP with a length < 8 or past the IPv4 payload passes untouched (a
//!   first fragment carries only part of the datagram, so its UDP length
//!   only has to be >= 8).
//! - Fragments: the first fragment (offset 0, MF set) carries the ports and
//!   is a [`Flow`] like any packet, marked `first_frag`; it must hold the
//!   whole TCP/UDP header. A later fragment (offset != 0, any protocol) is a
//!   [`Frag`]: it has no ports, so it follows what its datagram's first
//!   fragment decided, remembered per (source, destination, protocol, IP
//!   id) in `BERTH_FRAGS` (see `frag.rs`): translated the same way at an
//!   uplink, a container's veth or the bridge, passed or dropped the same
//!   way by security groups. A later fragment nothing was remembered for
//!   is not translated: it passes (it may be the host's own traffic; a
//!   datagram for a published port whose later fragment outran its first
//!   is lost, counted in `fragment`), except at a container's veth when
//!   either end has policy: dropped (`frag_no_first`).
//! - TCP with a data offset < 5 passes untouched.
use berth_maps::FlowKey;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// ICMP types berth tells apart.
pub(crate) const ICMP_ECHO_REPLY: u8 = 0;
pub(crate) const ICMP_DEST_UNREACH: u8 = 3;
pub(crate) const ICMP_ECHO: u8 = 8;
pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(crate) const ICMP_PARAMETERPROB: u8 = 12;

pub(crate) const ETH_LEN: usize = EthHdr::LEN;
pub(crate) const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
pub(crate) const IP_CSUM_OFF: usize = ETH_LEN + 10;
pub(crate) const IP_TTL_OFF: usize = ETH_LEN + 8;
pub(crate) const IP_SRC_OFF: usize = ETH_LEN + 12;
pub(crate) const IP_DST_OFF: usize = ETH_LEN + 16;
const IP_OFFSET_MASK_BE: u16 = 0x1fffu16.to_be();
const IP_MF_BE: u16 = 0x2000u16.to_be();
pub(crate) const TCP_FLAG_FIN: u8 = 0x01;
pub(crate) const TCP_FLAG_SYN: u8 = 0x02;
pub(crate) const TCP_FLAG_RST: u8 = 0x04;
pub(crate) const TCP_FLAG_ACK: u8 = 0x10;

/// The one flow-key constructor (network byte order; `FlowKey`s are built
/// nowhere else). Built from a zeroed key, so the padding costs two stores
/// rather than a call to `memset` for three bytes.
#[inline(always)]
pub(crate) fn flow_key(
    src_be: u32,
    dst_be: u32,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
) -> FlowKey {
    let mut k: FlowKey = unsafe { core::mem::zeroed() };
    k.src_addr_be = src_be;
    k.dst_addr_be = dst_be;
    k.src_port_be = sport_be;
    k.dst_port_be = dport_be;
    k.proto = proto;
    k
}

/// The key of the same flow's packets travelling the other way.
#[inline(always)]
pub(crate) fn reverse_key(k: &FlowKey) -> FlowKey {
    flow_key(
        k.dst_addr_be,
        k.src_addr_be,
        k.dst_port_be,
        k.src_port_be,
        k.proto,
    )
}

/// Pointer to a `T` at `off`, or `None` if the packet is too short.
#[inline(always)]
pub(crate) fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// The five-tuple and the facts the NAT needs about an IPv4 TCP/UDP packet.
#[derive(Clone, Copy)]
pub(crate) struct Flow {
    pub proto: u8,
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub ttl: u8,
    pub tcp_flags: u8,
    /// TCP header length in bytes (data offset * 4); 0 for UDP. (The
    /// sequence numbers are read by the tracker only, for tracked flows.)
    pub tcp_hdr_len: u8,
    /// IPv4 total length in host order (for the FIB MTU check).
    pub tot_len: u16,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// UDP datagram sent without a checksum (must stay 0).
    pub udp_csum_zero: bool,
    /// The first fragment of a datagram (MF set, offset 0).
    pub first_frag: bool,
    /// IPv4 identification (names the datagram a fragment belongs to).
    pub ip_id_be: u16,
}

/// A later fragment (offset != 0) of an IPv4 datagram: no L4 header.
#[derive(Clone, Copy)]
pub(crate) struct Frag {
    pub proto: u8,
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub ip_id_be: u16,
    pub ttl: u8,
    /// IPv4 total length in host order (for the FIB MTU check).
    pub tot_len: u16,
}

impl Flow {
    /// This packet's flow key, as it travels.
    #[inline(always)]
    pub(crate) fn key(&self) -> FlowKey {
        flow_key(
            self.src_addr_be,
            self.dst_addr_be,
            self.src_port_be,
            self.dst_port_be,
            self.proto,
        )
    }

    /// TCP payload length (what the sequence number advances by, before
    /// SYN and FIN).
    #[inline(always)]
    pub(crate) fn tcp_payload_len(&self) -> u32 {
        let l3_len = (self.l4_off - ETH_LEN) as u32 + u32::from(self.tcp_hdr_len);
        u32::from(self.tot_len).saturating_sub(l3_len)
    }

    #[inline(always)]
    pub(crate) fn l4_csum_off(&self) -> usize {
        if self.proto == berth_maps::PROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

/// An IPv4 header as [`parse_ipv4`] read it: the outer header of a frame,
/// or the header an ICMP error quotes.
#[derive(Clone, Copy)]
pub(crate) struct Ip {
    pub proto: u8,
    pub ttl: u8,
    /// Header length in 32-bit words (5..=15).
    pub ihl: u8,
    /// Flags and fragment offset, network byte order.
    pub frags_be: u16,
    pub id_be: u16,
    /// Total length, host order.
    pub tot_len: u16,
    pub src_be: u32,
    pub dst_be: u32,
}

impl Ip {
    #[inline(always)]
    pub(crate) fn hdr_len(&self) -> usize {
        (self.ihl & 0x0f) as usize * 4
    }

    /// A fragment other than the first (it has no L4 header).
    #[inline(always)]
    pub(crate) fn later_frag(&self) -> bool {
        self.frags_be & IP_OFFSET_MASK_BE != 0
    }

    /// Part of a fragmented datagram: more fragments follow, or an offset.
    #[inline(always)]
    pub(crate) fn fragmented(&self) -> bool {
        self.frags_be & (IP_OFFSET_MASK_BE | IP_MF_BE) != 0
    }

    /// More fragments follow (the first fragment, unless `later_frag`).
    #[inline(always)]
    pub(crate) fn more_frags(&self) -> bool {
        self.frags_be & IP_MF_BE != 0
    }
}

/// The one packet description every program consumes.
pub(crate) enum Parsed {
    /// Not Ethernet II + IPv4 (or an IPv4 header with IHL < 5): leave it
    /// to the stack.
    NotIpv4,
    /// IPv4 that is none of the below: ICMP (see `icmp.rs` for its errors
    /// and echo), other protocols, TCP/UDP with a header the parser
    /// refused, an inconsistent total length, destination 0.0.0.0.
    Ip(Ip),
    /// A later fragment of an IPv4 datagram of any protocol.
    Fragment(Frag),
    Flow(Flow),
}

/// The IPv4 header at `off` (a frame's, or one an ICMP error quotes):
/// version 4, IHL >= 5, its fixed 20 bytes present.
#[inline(always)]
pub(crate) fn parse_ipv4(data: usize, data_end: usize, off: usize) -> Option<Ip> {
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(data, data_end, off)? };
    let ihl = ip.vihl & 0x0f;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    Some(Ip {
        proto: ip.proto,
        ttl: ip.ttl,
        ihl,
        frags_be: u16::from_ne_bytes(ip.frags),
        id_be: u16::from_ne_bytes(ip.id),
        tot_len: u16::from_be_bytes(ip.tot_len),
        src_be: u32::from_ne_bytes(ip.src_addr),
        dst_be: u32::from_ne_bytes(ip.dst_addr),
    })
}

/// Source and destination port of a TCP or UDP header's first bytes.
#[inline(always)]
pub(crate) fn l4_ports(h: &[u8; 8]) -> (u16, u16) {
    (
        u16::from_ne_bytes([h[0], h[1]]),
        u16::from_ne_bytes([h[2], h[3]]),
    )
}

/// What flow an ICMP echo header belongs to, keyed as ports: the request's
/// identifier as its source "port", a reply's as its destination, so a
/// reply's reverse key is its request's key. `None`: not echo.
#[inline(always)]
pub(crate) fn echo_ports(h: &[u8; 8]) -> Option<(u16, u16)> {
    let id = u16::from_ne_bytes([h[4], h[5]]);
    match h[0] {
        ICMP_ECHO => Some((id, 0)),
        ICMP_ECHO_REPLY => Some((0, id)),
        _ => None,
    }
}

/// Whether the frame is an IPv4 fragment (MF set or a non-zero offset):
/// one load for the common case of a whole packet.
#[inline(always)]
pub(crate) fn ipv4_fragment(data: usize, data_end: usize) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return false;
    };
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return false;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, data_end, ETH_LEN) else {
        return false;
    };
    u16::from_ne_bytes(unsafe { (*ip).frags }) & (IP_OFFSET_MASK_BE | IP_MF_BE) != 0
}

/// Parse Ethernet + IPv4 + the TCP/UDP ports of the frame in `[data,
/// data_end)`; `frame_len` is the whole frame's length (TC may see only the
/// linear part of it).
#[inline(always)]
pub(crate) fn parse_packet(data: usize, data_end: usize, frame_len: usize) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return Parsed::NotIpv4;
    };
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Parsed::NotIpv4;
    }
    let Some(ip) = parse_ipv4(data, data_end, ETH_LEN) else {
        return Parsed::NotIpv4;
    };
    let ip_hdr_len = ip.hdr_len();
    let tot_len = ip.tot_len;
    // Ethernet pads short frames, so the frame may be longer; never shorter.
    if ETH_LEN + tot_len as usize > frame_len || (tot_len as usize) < ip_hdr_len {
        return Parsed::Ip(ip);
    }
    if ip.dst_be == 0 {
        return Parsed::Ip(ip);
    }
    let proto = ip.proto;
    if ip.later_frag() {
        return Parsed::Fragment(Frag {
            proto,
            src_addr_be: ip.src_be,
            dst_addr_be: ip.dst_be,
            ip_id_be: ip.id_be,
            ttl: ip.ttl,
            tot_len,
        });
    }
    if proto != berth_maps::PROTO_TCP && proto != berth_maps::PROTO_UDP {
        return Parsed::Ip(ip);
    }
    let l4_off = ETH_LEN + ip_hdr_len;
    let flow = Flow {
        proto,
        src_addr_be: ip.src_be,
        dst_addr_be: ip.dst_be,
        src_port_be: 0,
        dst_port_be: 0,
        ttl: ip.ttl,
        tcp_flags: 0,
        tcp_hdr_len: 0,
        tot_len,
        l4_off,
        udp_csum_zero: false,
        first_frag: ip.more_frags(),
        ip_id_be: ip.id_be,
    };
    let parsed = if proto == berth_maps::PROTO_TCP {
        parse_tcp(data, data_end, flow, ip_hdr_len)
    } else {
        parse_udp(data, data_end, flow, ip_hdr_len)
    };
    match parsed {
        Some(f) => Parsed::Flow(f),
        None => Parsed::Ip(ip),
    }
}

#[inline(always)]
fn parse_tcp(data: usize, data_end: usize, mut flow: Flow, ip_hdr_len: usize) -> Option<Flow> {
    // source(2) dest(2) seq(4) ack(4) doff/flags(2) window(2) check(2) urg(2)
    let tcp = ptr_at::<[u8; 20]>(data, data_end, flow.l4_off)?;
    let tcp = unsafe { &*tcp };
    let doff = (tcp[12] >> 4) as usize;
    if doff < 5 || (flow.tot_len as usize) < ip_hdr_len + doff * 4 {
        return None;
    }
    flow.src_port_be = u16::from_ne_bytes([tcp[0], tcp[1]]);
    flow.dst_port_be = u16::from_ne_bytes([tcp[2], tcp[3]]);
    flow.tcp_flags = tcp[13];
    flow.tcp_hdr_len = (doff * 4) as u8;
    Some(flow)
}

#[inline(always)]
fn parse_udp(data: usize, data_end: usize, mut flow: Flow, ip_hdr_len: usize) -> Option<Flow> {
    let udp = ptr_at::<[u8; 8]>(data, data_end, flow.l4_off)?;
    let udp = unsafe { &*udp };
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    // A first fragment holds the header and part of the datagram.
    let in_packet = if flow.first_frag { 8 } else { udp_len };
    if udp_len < 8 || (flow.tot_len as usize) < ip_hdr_len + in_packet {
        return None;
    }
    (flow.src_port_be, flow.dst_port_be) = l4_ports(udp);
    flow.udp_csum_zero = udp[6] == 0 && udp[7] == 0;
    Some(flow)
}
