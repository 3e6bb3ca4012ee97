//! Frame builder for fixtures. Checksums are computed here from scratch over
//! the whole header and payload — never incrementally, never by the code
//! under test.
use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

pub type Mac = [u8; 6];

/// One's-complement sum of `data` (big-endian 16-bit words).
pub fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u16::from_be_bytes([s[0], s[1]]) as u32
        + u16::from_be_bytes([s[2], s[3]]) as u32
        + u16::from_be_bytes([d[0], d[1]]) as u32
        + u16::from_be_bytes([d[2], d[3]]) as u32
        + proto as u32
        + len as u32
}

/// A TCP/UDP/IPv4 packet description, rendered to bytes by [`Packet::frame`].
#[derive(Clone, Debug)]
pub struct Packet {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub ip_options: Vec<u8>,
    /// Raw IPv4 flags+fragment offset field.
    pub frag: u16,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    /// UDP sent without a checksum.
    pub udp_no_csum: bool,
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
            ttl: 64,
            ip_options: Vec::new(),
            frag: 0x4000, // DF
            tcp_flags: SYN,
            payload: Vec::new(),
            udp_no_csum: false,
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

    pub fn l4(&self) -> Vec<u8> {
        match self.proto {
            TCP => {
                let mut h = Vec::with_capacity(20 + self.payload.len());
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(0x1000_0000u32.to_be_bytes()); // seq
                h.extend(0u32.to_be_bytes()); // ack
                h.push(5 << 4);
                h.push(self.tcp_flags);
                h.extend(64240u16.to_be_bytes());
                h.extend([0, 0]); // checksum
                h.extend([0, 0]); // urgent
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
            _ => {
                // ICMP echo request
                let mut h = vec![8, 0, 0, 0, 0, 1, 0, 1];
                h.extend(&self.payload);
                let c = csum(&h, 0);
                h[2..4].copy_from_slice(&c.to_be_bytes());
                h
            }
        }
    }

    pub fn ipv4(&self) -> Vec<u8> {
        let l4 = self.l4();
        let ihl = 5 + self.ip_options.len() / 4;
        let tot = ihl * 4 + l4.len();
        let mut ip = Vec::with_capacity(tot);
        ip.push(0x40 | ihl as u8);
        ip.push(0);
        ip.extend((tot as u16).to_be_bytes());
        ip.extend(0x1234u16.to_be_bytes());
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
        f.extend(0x0800u16.to_be_bytes());
        f.extend(self.ipv4());
        f
    }
}

pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x02]);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend([0x02, 0, 0, 0, 0, 0x02]);
    f.extend(sender.octets());
    f.extend([0; 6]);
    f.extend(target.octets());
    f
}

pub fn ipv6_tcp_syn(dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend(0x86ddu16.to_be_bytes());
    f.extend([0x60, 0, 0, 0, 0, 20, TCP, 64]);
    f.extend(
        [0x20, 0x01, 0x0d, 0xb8]
            .iter()
            .chain([0u8; 11].iter())
            .chain([2u8].iter()),
    );
    f.extend(
        [0x20, 0x01, 0x0d, 0xb8]
            .iter()
            .chain([0u8; 11].iter())
            .chain([1u8].iter()),
    );
    f.extend(40000u16.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0u8; 8]);
    f.extend([0x50, SYN, 0xfa, 0xf0, 0, 0, 0, 0]);
    f
}

/// An 802.1Q-tagged copy of an Ethernet frame.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend(0x8100u16.to_be_bytes());
    f.extend(vid.to_be_bytes());
    f.extend(&frame[12..]);
    f
}
