//! Frame builder for fixtures. Checksums are computed here from scratch over
//! the whole header and payload — never incrementally, never by the code
//! under test.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const GRE: u8 = 47;
pub const ESP: u8 = 50;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// IPv4 flags/fragment-offset field values.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
/// The reserved ("evil") bit: not a fragment marker.
pub const IP_RESERVED: u16 = 0x8000;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub type Mac = [u8; 6];

/// One's-complement sum of `data` (big-endian 16-bit words), complemented.
pub fn csum(data: &[u8], initial: u32) -> u16 {
    !fold(sum16(data, initial))
}

/// One's-complement sum of `data` added to `initial`, not yet folded.
pub fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u64::from(word);
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// Folds a 32-bit one's-complement sum to 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 pseudo-header sum for an L4 segment of `len` bytes.
pub fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(proto)
        + len as u32
}

/// The IPv6 pseudo-header sum for an upper-layer packet of `len` bytes.
pub fn pseudo_sum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut b = Vec::with_capacity(40);
    b.extend(src.octets());
    b.extend(dst.octets());
    b.extend((len as u32).to_be_bytes());
    b.extend([0, 0, 0, proto]);
    sum16(&b, 0)
}

/// A TCP/UDP/ICMP (or other protocol) IPv4 packet description, rendered to
/// bytes by [`Packet::frame`]. Every field is on the wire as given; lengths
/// and checksums are derived.
#[derive(Clone, Debug)]
pub struct Packet {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tos: u8,
    pub ip_id: u16,
    pub ttl: u8,
    /// Multiple of 4 bytes (IHL = 5 + len / 4).
    pub ip_options: Vec<u8>,
    /// Raw IPv4 flags+fragment offset field.
    pub frag: u16,
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_window: u16,
    pub tcp_urg: u16,
    /// Multiple of 4 bytes (data offset = 5 + len / 4).
    pub tcp_options: Vec<u8>,
    /// ICMP: type, code and the 4 bytes after the checksum (echo id/seq,
    /// the next-hop MTU of a fragmentation-needed, ...).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub icmp_rest: [u8; 4],
    /// TCP/UDP/ICMP payload; for any other protocol, the whole IP payload.
    pub payload: Vec<u8>,
    /// UDP sent without a checksum.
    pub udp_no_csum: bool,
    /// UDP only: bytes the IPv4 total length covers after the datagram that
    /// the UDP length (and checksum) does not.
    pub ip_trailer: Vec<u8>,
    /// Bytes after the IPv4 packet (Ethernet padding); not covered by the
    /// IPv4 total length.
    pub eth_pad: Vec<u8>,
}

impl Packet {
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            eth_dst: [0x02, 0, 0, 0, 0, 0x01],
            eth_src: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            proto: TCP,
            sport,
            dport,
            tos: 0,
            ip_id: 0x1234,
            ttl: 64,
            ip_options: Vec::new(),
            frag: IP_DF,
            tcp_flags: SYN,
            tcp_seq: 0x1000_0000,
            tcp_ack: 0,
            tcp_window: 64240,
            tcp_urg: 0,
            tcp_options: Vec::new(),
            icmp_type: 8,
            icmp_code: 0,
            icmp_rest: [0, 1, 0, 1],
            payload: Vec::new(),
            udp_no_csum: false,
            ip_trailer: Vec::new(),
            eth_pad: Vec::new(),
        }
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            proto: UDP,
            payload: b"ping".to_vec(),
            frag: 0,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// An ICMP message; `rest` is the 4 bytes after the checksum.
    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, rest: [u8; 4]) -> Self {
        Self {
            proto: ICMP,
            icmp_type,
            icmp_code: code,
            icmp_rest: rest,
            payload: b"abcdefgh".to_vec(),
            frag: 0,
            ..Self::tcp(src, 0, dst, 0)
        }
    }

    /// An ICMP error quoting the first `quote` bytes of `about`'s IPv4
    /// packet (RFC 792: the IP header and at least 8 bytes of data).
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
        about: &Self,
        quote: usize,
    ) -> Self {
        let inner = about.ipv4();
        Self {
            payload: inner[..quote.min(inner.len())].to_vec(),
            ..Self::icmp(src, dst, icmp_type, code, rest)
        }
    }

    /// A packet of another IP protocol whose payload is `payload`.
    pub fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: Vec<u8>) -> Self {
        Self {
            proto,
            payload,
            frag: 0,
            ..Self::tcp(src, 0, dst, 0)
        }
    }

    /// The same packet with `n` bytes of payload (a repeating pattern).
    pub fn with_payload_len(mut self, n: usize) -> Self {
        self.payload = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        self
    }

    pub fn l4(&self) -> Vec<u8> {
        match self.proto {
            TCP => {
                assert_eq!(self.tcp_options.len() % 4, 0, "TCP options pad to 4");
                let doff = 5 + self.tcp_options.len() / 4;
                let mut h = Vec::with_capacity(doff * 4 + self.payload.len());
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(self.tcp_seq.to_be_bytes());
                h.extend(self.tcp_ack.to_be_bytes());
                h.push((doff as u8) << 4);
                h.push(self.tcp_flags);
                h.extend(self.tcp_window.to_be_bytes());
                h.extend([0, 0]); // checksum
                h.extend(self.tcp_urg.to_be_bytes());
                h.extend(&self.tcp_options);
                h.extend(&self.payload);
                let c = csum(&h, pseudo_sum(self.src, self.dst, TCP, h.len()));
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            UDP => {
                let len = 8 + self.payload.len();
                let mut h = Vec::with_capacity(len);
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend((len as u16).to_be_bytes());
                h.extend([0, 0]);
                h.extend(&self.payload);
                if !self.udp_no_csum {
                    let mut c = csum(&h, pseudo_sum(self.src, self.dst, UDP, len));
                    if c == 0 {
                        c = 0xffff;
                    }
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                h
            }
            ICMP => {
                let mut h = vec![self.icmp_type, self.icmp_code, 0, 0];
                h.extend(self.icmp_rest);
                h.extend(&self.payload);
                let c = csum(&h, 0);
                h[2..4].copy_from_slice(&c.to_be_bytes());
                h
            }
            _ => self.payload.clone(),
        }
    }

    pub fn ipv4(&self) -> Vec<u8> {
        assert_eq!(self.ip_options.len() % 4, 0, "IPv4 options pad to 4");
        let mut l4 = self.l4();
        l4.extend(&self.ip_trailer);
        let ihl = 5 + self.ip_options.len() / 4;
        let tot = ihl * 4 + l4.len();
        let mut ip = Vec::with_capacity(tot);
        ip.push(0x40 | ihl as u8);
        ip.push(self.tos);
        ip.extend((tot as u16).to_be_bytes());
        ip.extend(self.ip_id.to_be_bytes());
        ip.extend(self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend([0, 0]);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        ip.extend(&self.ip_options);
        let c = csum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend(l4);
        ip
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        f.extend(ETH_P_IP.to_be_bytes());
        f.extend(self.ipv4());
        f.extend(&self.eth_pad);
        f
    }

    /// Offset of the L4 header in [`Packet::frame`].
    pub fn l4_off(&self) -> usize {
        ETH_LEN + 20 + self.ip_options.len()
    }

    /// Offset of the L4 checksum in [`Packet::frame`] (TCP, UDP or ICMP).
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off()
            + match self.proto {
                TCP => 16,
                UDP => 6,
                _ => 2,
            }
    }
}

/// One fragment of `p`'s IPv4 datagram as a frame: the `len` bytes of its
/// IPv4 payload (L4 header and data, checksummed over the whole datagram)
/// from byte `offset` (a multiple of 8), MF set when `more`. `p`'s DF and
/// reserved bits, IP id, TTL and options are kept; the total length and
/// the header checksum are computed here.
pub fn fragment(p: &Packet, offset: usize, len: usize, more: bool) -> Vec<u8> {
    assert_eq!(offset % 8, 0, "fragment offsets count 8-byte units");
    let full = p.ipv4();
    let ihl = 20 + p.ip_options.len();
    let payload = &full[ihl..];
    let chunk = &payload[offset.min(payload.len())..(offset + len).min(payload.len())];
    let mut ip = full[..ihl].to_vec();
    ip[2..4].copy_from_slice(&((ihl + chunk.len()) as u16).to_be_bytes());
    let flags = (p.frag & 0xc000) | if more { IP_MF } else { 0 } | (offset / 8) as u16;
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip[10..12].fill(0);
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend(p.eth_dst);
    f.extend(p.eth_src);
    f.extend(ETH_P_IP.to_be_bytes());
    f.extend(ip);
    f.extend(chunk);
    f.extend(&p.eth_pad);
    f
}

/// Two payload bytes that make `p`'s UDP checksum come out as zero when
/// computed (so it is sent as 0xffff), given the addresses and ports `p`
/// has. `p`'s payload must be at least 2 bytes and even-aligned at 0.
pub fn force_udp_csum_zero(p: &mut Packet) {
    assert!(p.proto == UDP && p.payload.len() >= 2);
    p.payload[0] = 0;
    p.payload[1] = 0;
    p.udp_no_csum = true;
    let l4 = p.l4();
    p.udp_no_csum = false;
    let c = csum(&l4, pseudo_sum(p.src, p.dst, UDP, l4.len()));
    // Adding the complement of the sum makes the sum 0xffff: checksum 0.
    p.payload[..2].copy_from_slice(&c.to_be_bytes());
}

/// Same for TCP: the computed checksum becomes zero (sent as 0x0000).
pub fn force_tcp_csum_zero(p: &mut Packet) {
    assert!(p.proto == TCP && p.payload.len() >= 2);
    p.payload[0] = 0;
    p.payload[1] = 0;
    let l4 = p.l4();
    let mut no_csum = l4.clone();
    no_csum[16] = 0;
    no_csum[17] = 0;
    let c = csum(&no_csum, pseudo_sum(p.src, p.dst, TCP, l4.len()));
    p.payload[..2].copy_from_slice(&c.to_be_bytes());
}

/// `f` with the big-endian `v` written at `off`.
pub fn put16(mut f: Vec<u8>, off: usize, v: u16) -> Vec<u8> {
    f[off..off + 2].copy_from_slice(&v.to_be_bytes());
    f
}

/// `f` with byte `off` set to `v`.
pub fn put8(mut f: Vec<u8>, off: usize, v: u8) -> Vec<u8> {
    f[off] = v;
    f
}

/// Recomputes the IPv4 header checksum of an Ethernet frame in place (for
/// malformed-on-purpose frames, so the stack's only complaint is the one
/// under test).
pub fn fix_ipv4_csum(mut f: Vec<u8>) -> Vec<u8> {
    let ihl = (f[ETH_LEN] & 0x0f) as usize * 4;
    let end = (ETH_LEN + ihl.max(20)).min(f.len());
    f[ETH_LEN + 10] = 0;
    f[ETH_LEN + 11] = 0;
    let c = csum(&f[ETH_LEN..end], 0);
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// `c` off by the one's-complement difference between `bad` and `good`:
/// what an incremental update does to a checksum that was wrong by that
/// much (RFC 1624 keeps the error).
pub fn keep_csum_error(c: u16, good: u16, bad: u16) -> u16 {
    // ~bad = ~good + delta  =>  delta = ~bad - ~good = ~bad + good.
    let delta = fold(u32::from(!bad) + u32::from(good));
    !fold(u32::from(!c) + u32::from(delta))
}

pub fn arp(
    op: u16,
    sender_mac: Mac,
    sender: Ipv4Addr,
    target_mac: Mac,
    target: Ipv4Addr,
) -> Vec<u8> {
    let mut f = if op == 1 {
        vec![0xff; 6]
    } else {
        target_mac.to_vec()
    };
    f.extend(sender_mac);
    f.extend(ETH_P_ARP.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4]);
    f.extend(op.to_be_bytes());
    f.extend(sender_mac);
    f.extend(sender.octets());
    f.extend(target_mac);
    f.extend(target.octets());
    f
}

pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp(1, [0x02, 0, 0, 0, 0, 0x02], sender, [0; 6], target)
}

/// An IPv6 extension header between the fixed header and the L4 header.
#[derive(Clone, Copy, Debug)]
pub enum V6Ext {
    HopByHop,
    Routing,
    Fragment { offset: u16, more: bool },
    DestOpts,
}

impl V6Ext {
    fn code(self) -> u8 {
        match self {
            Self::HopByHop => 0,
            Self::Routing => 43,
            Self::Fragment { .. } => 44,
            Self::DestOpts => 60,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // One PadN option filling the 8 bytes.
            Self::HopByHop | Self::DestOpts => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // Type 2 (mobility), no segments left, one address.
            Self::Routing => {
                let mut b = vec![next, 2, 2, 0, 0, 0, 0, 0];
                b.extend(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).octets());
                b
            }
            Self::Fragment { offset, more } => {
                let f = (offset << 3) | u16::from(more);
                let mut b = vec![next, 0];
                b.extend(f.to_be_bytes());
                b.extend(0xbe27u32.to_be_bytes());
                b
            }
        }
    }
}

/// An IPv6 packet to a port or `ICMPv6` type, possibly behind extension headers.
#[derive(Clone, Debug)]
pub struct Ipv6Packet {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub ext: Vec<V6Ext>,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// `ICMPv6` type and code.
    pub icmp: (u8, u8),
    pub payload: Vec<u8>,
}

pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

impl Ipv6Packet {
    pub fn new(proto: u8, dport: u16) -> Self {
        Self {
            src: CLIENT6,
            dst: HOST6,
            hop_limit: 64,
            ext: Vec::new(),
            proto,
            sport: 40000,
            dport,
            icmp: (128, 0),
            payload: Vec::new(),
        }
    }

    pub fn icmpv6(icmp_type: u8, code: u8) -> Self {
        Self {
            icmp: (icmp_type, code),
            payload: vec![0, 1, 0, 1],
            ..Self::new(ICMPV6, 0)
        }
    }

    pub fn with_ext(mut self, ext: &[V6Ext]) -> Self {
        self.ext = ext.to_vec();
        self
    }

    fn l4(&self) -> Vec<u8> {
        let (mut h, csum_off) = match self.proto {
            TCP => {
                let mut h = Vec::new();
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(0x1000_0000u32.to_be_bytes());
                h.extend(0u32.to_be_bytes());
                h.extend([0x50, SYN, 0xfa, 0xf0, 0, 0, 0, 0]);
                (h, 16)
            }
            UDP => {
                let mut h = Vec::new();
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                (h, 6)
            }
            ICMPV6 => (vec![self.icmp.0, self.icmp.1, 0, 0], 2),
            _ => (Vec::new(), usize::MAX),
        };
        h.extend(&self.payload);
        if csum_off != usize::MAX {
            let c = csum(&h, pseudo_sum6(self.src, self.dst, self.proto, h.len()));
            h[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
        }
        h
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |n| n.code());
            body.extend(e.bytes(next));
        }
        body.extend(self.l4());
        let first = self.ext.first().map_or(self.proto, |e| e.code());
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        f.extend(ETH_P_IPV6.to_be_bytes());
        f.extend([0x60, 0, 0, 0]);
        f.extend((body.len() as u16).to_be_bytes());
        f.extend([first, self.hop_limit]);
        f.extend(self.src.octets());
        f.extend(self.dst.octets());
        f.extend(body);
        f
    }
}

/// Neighbour discovery (RFC 4861): what a neighbour advertisement or
/// solicitation claims is judged on a container's port.
pub const ND_NEIGHBOUR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOUR_ADVERT: u8 = 136;

/// An unsolicited neighbour advertisement (override flag set, so it
/// replaces a cached link-layer address) from `src` for `target`, to all
/// nodes (`ff02::1`, hop limit 255), with a target link-layer address
/// option if `tlla`. MACs as in [`Ipv6Packet::frame`].
pub fn neighbour_advert(src: Ipv6Addr, target: Ipv6Addr, tlla: Option<Mac>) -> Vec<u8> {
    neighbour_advert_packet(src, target, tlla).frame()
}

/// The packet of [`neighbour_advert`] (to put extension headers in front).
pub fn neighbour_advert_packet(src: Ipv6Addr, target: Ipv6Addr, tlla: Option<Mac>) -> Ipv6Packet {
    let mut p = Ipv6Packet::icmpv6(ND_NEIGHBOUR_ADVERT, 0);
    (p.src, p.dst, p.hop_limit) = (src, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 255);
    p.payload = vec![0x20, 0, 0, 0];
    p.payload.extend(target.octets());
    if let Some(mac) = tlla {
        p.payload.extend([2, 1]);
        p.payload.extend(mac);
    }
    p
}

/// A neighbour solicitation from `src` for `target` (sent to `target`,
/// hop limit 255), with a source link-layer address option.
pub fn neighbour_solicit(src: Ipv6Addr, target: Ipv6Addr, slla: Mac) -> Vec<u8> {
    let mut p = Ipv6Packet::icmpv6(ND_NEIGHBOUR_SOLICIT, 0);
    (p.src, p.dst, p.hop_limit) = (src, target, 255);
    p.payload = vec![0, 0, 0, 0];
    p.payload.extend(target.octets());
    p.payload.extend([1, 1]);
    p.payload.extend(slla);
    p.frame()
}

pub fn ipv6_tcp_syn(dport: u16) -> Vec<u8> {
    Ipv6Packet::new(TCP, dport).frame()
}

/// The fragments of an IPv6 frame's datagram as a sender cuts them (RFC
/// 8200, 4.5): the unfragmentable part (the fixed header and `before`,
/// 8-byte hop-by-hop or destination options headers) in each, then a
/// fragment header with identification `id` naming the frame's first
/// header after the fixed one, then the rest of the frame (extension
/// headers it had, the L4 header and payload) cut in `chunk`-byte pieces
/// (a multiple of 8). MACs as in the frame.
pub fn fragments6(whole: &[u8], before: &[V6Ext], id: u32, chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment offsets count 8-byte units");
    let l3 = ETH_LEN + 40;
    let next = whole[ETH_LEN + 6];
    let body = &whole[l3..];
    let codes: Vec<u8> = before.iter().map(|e| e.code()).chain([44]).collect();
    let mut out = Vec::new();
    let mut off = 0;
    while off < body.len() {
        let end = (off + chunk).min(body.len());
        let more = end < body.len();
        let mut ext = Vec::new();
        for (i, e) in before.iter().enumerate() {
            assert!(matches!(e, V6Ext::HopByHop | V6Ext::DestOpts));
            ext.extend(e.bytes(codes[i + 1]));
        }
        ext.extend([next, 0]);
        // The offset in 8-byte units sits above the 3 flag bits: `off` itself.
        ext.extend(((off as u16) | u16::from(more)).to_be_bytes());
        ext.extend(id.to_be_bytes());
        let mut f = whole[..l3].to_vec();
        f[ETH_LEN + 6] = codes[0];
        let plen = (ext.len() + end - off) as u16;
        f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&plen.to_be_bytes());
        f.extend(ext);
        f.extend(&body[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// A copy of an Ethernet frame with a tag of `tpid` inserted after the MACs.
pub fn tagged(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend(tpid.to_be_bytes());
    f.extend(tci.to_be_bytes());
    f.extend(&frame[12..]);
    f
}

/// An 802.1Q-tagged copy of an Ethernet frame.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    tagged(frame, ETH_P_8021Q, vid)
}

/// An 802.1ad (`QinQ`) copy: service tag `outer`, customer tag `inner`.
pub fn qinq_tagged(frame: &[u8], outer: u16, inner: u16) -> Vec<u8> {
    tagged(&vlan_tagged(frame, inner), ETH_P_8021AD, outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_from_scratch() {
        let mut p = Packet::udp(
            Ipv4Addr::new(192, 0, 2, 2),
            5000,
            Ipv4Addr::new(192, 0, 2, 1),
            53,
        );
        force_udp_csum_zero(&mut p);
        let f = p.frame();
        assert_eq!(&f[40..42], &[0xff, 0xff], "computed zero is sent as 0xffff");
        let l4 = &f[34..];
        assert_eq!(csum(l4, pseudo_sum(p.src, p.dst, UDP, l4.len())), 0);
        let mut t = Packet::tcp(p.src, 1, p.dst, 2).with_payload_len(10);
        force_tcp_csum_zero(&mut t);
        assert_eq!(&t.frame()[50..52], &[0, 0]);
        assert_eq!(csum(&f[14..34], 0), 0, "ipv4 header verifies");
    }

    #[test]
    fn fragments_reassemble_to_the_datagram() {
        let p = Packet::udp(
            Ipv4Addr::new(192, 0, 2, 2),
            5000,
            Ipv4Addr::new(192, 0, 2, 1),
            53,
        )
        .with_payload_len(3000);
        let whole = p.ipv4();
        let first = fragment(&p, 0, 1480, true);
        let last = fragment(&p, 1480, 2000, false);
        assert_eq!(&first[ETH_LEN + 6..ETH_LEN + 8], &[0x20, 0]);
        assert_eq!(&last[ETH_LEN + 6..ETH_LEN + 8], &[0, 185]);
        assert_eq!(csum(&first[ETH_LEN..ETH_LEN + 20], 0), 0);
        assert_eq!(csum(&last[ETH_LEN..ETH_LEN + 20], 0), 0);
        let mut body = first[ETH_LEN + 20..].to_vec();
        body.extend(&last[ETH_LEN + 20..]);
        assert_eq!(body, whole[20..]);
    }

    #[test]
    fn csum_error_is_carried_like_an_incremental_update() {
        // An incremental update of a checksum that was off by delta keeps it
        // off by delta; from-scratch math on the new data agrees.
        let (good, bad) = (0x1234u16, 0x1200u16);
        assert_eq!(keep_csum_error(good, good, bad), bad);
    }
}
