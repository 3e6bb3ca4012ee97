//! Mutation engine for the datapath's randomized run: a small deterministic
//! PRNG and mutations of Ethernet frames, blind (bit flips, byte sets,
//! truncation, extension) and field-aware (IPv4 IHL, lengths, flags,
//! addresses, TCP/UDP ports, flags and lengths, checksums, tags), with an
//! optional final pass that recomputes checksums so the frame looks
//! legitimate to whatever checks them.
//!
//! Everything derives from one `u64` seed: the same seed gives the same
//! frames, whatever the machine.
use crate::pkt::{self, ETH_LEN};

/// `SplitMix64`: tiny, fast, and good enough to pick mutations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        (self.next_u64() % u64::from(den)) < u64::from(num)
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// Values worth trying in address and port fields: the ones the datapath
/// has mappings and flows for, and the odd ones.
#[derive(Clone, Debug, Default)]
pub struct Dictionary {
    pub addrs: Vec<[u8; 4]>,
    pub ports: Vec<u16>,
}

/// Where the headers of a frame are, read from its current bytes as far as
/// they make sense (mutations aim at fields even when the frame is odd).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Offset of the IPv4 header, when the (possibly tagged) ethertype is IPv4.
    pub l3: Option<usize>,
    /// Offset of the L4 header according to IHL (may lie past the end).
    pub l4: Option<usize>,
    pub proto: u8,
}

impl Layout {
    pub fn of(f: &[u8]) -> Self {
        let mut off = 12;
        // Skip up to two VLAN tags.
        for _ in 0..2 {
            match be16(f, off) {
                Some(pkt::ETH_P_8021Q | pkt::ETH_P_8021AD) => off += 4,
                _ => break,
            }
        }
        let none = Self {
            l3: None,
            l4: None,
            proto: 0,
        };
        if be16(f, off) != Some(pkt::ETH_P_IP) {
            return none;
        }
        let l3 = off + 2;
        let Some(&vihl) = f.get(l3) else {
            return Self {
                l3: Some(l3),
                ..none
            };
        };
        let ihl = (vihl & 0x0f) as usize * 4;
        Self {
            l3: Some(l3),
            l4: Some(l3 + ihl.max(20)),
            proto: f.get(l3 + 9).copied().unwrap_or(0),
        }
    }
}

pub fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

fn put16(f: &mut [u8], off: usize, v: u16) {
    if off + 2 <= f.len() {
        f[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
}

fn put8(f: &mut [u8], off: usize, v: u8) {
    if let Some(b) = f.get_mut(off) {
        *b = v;
    }
}

/// The mutations, by name (failures list the ones a frame went through).
pub const MUTATIONS: &[&str] = &[
    "bit-flip",
    "byte-set",
    "truncate",
    "extend",
    "ihl",
    "ip-version",
    "ip-tot-len",
    "ip-proto",
    "ip-frag",
    "ip-ttl",
    "ip-tos-id",
    "ip-addr",
    "l4-port",
    "tcp-flags",
    "tcp-doff",
    "udp-len",
    "checksum",
    "ethertype",
    "vlan-tag",
    "icmp-quote",
];

/// Frames never grow past this (`BPF_PROG_TEST_RUN` for skb refuses frames
/// near a page).
pub const MAX_FRAME: usize = 1600;

pub struct Mutator {
    pub dict: Dictionary,
}

impl Mutator {
    /// A mutated copy of `seed`: one to four mutations, then, more often
    /// than not, checksums recomputed. Returns the frame and what was done.
    pub fn mutate(&self, rng: &mut Rng, seed: &[u8]) -> (Vec<u8>, Vec<&'static str>) {
        let mut f = seed.to_vec();
        let mut done = Vec::new();
        let n = 1 + rng.below(4);
        for _ in 0..n {
            let m = rng.below(MUTATIONS.len());
            self.apply(rng, &mut f, m);
            done.push(MUTATIONS[m]);
        }
        if rng.chance(2, 3) {
            fix_checksums(&mut f);
            done.push("fix-checksums");
        }
        (f, done)
    }

    fn apply(&self, rng: &mut Rng, f: &mut Vec<u8>, m: usize) {
        let lay = Layout::of(f);
        let l3 = lay.l3.unwrap_or(ETH_LEN);
        let l4 = lay.l4.unwrap_or(l3 + 20);
        match MUTATIONS[m] {
            "bit-flip" => {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    f[i] ^= 1 << rng.below(8);
                }
            }
            "byte-set" => {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    let r = rng.byte();
                    f[i] = rng.pick(&[0, 1, 0x7f, 0x80, 0xff, r]);
                }
            }
            "truncate" => {
                // Mostly near header boundaries, where parsers slip.
                let edges = [ETH_LEN, l3 + 20, l4, l4 + 4, l4 + 8, l4 + 20, l4 + 28];
                let to = if rng.chance(2, 3) {
                    let e = rng.pick(&edges) as isize + rng.below(5) as isize - 2;
                    e.max(0) as usize
                } else {
                    rng.below(f.len() + 1)
                };
                f.truncate(to.min(f.len()));
            }
            "extend" => {
                let room = MAX_FRAME.saturating_sub(f.len());
                let n = rng.below(64.min(room) + 1);
                let fill = rng.chance(1, 2);
                for _ in 0..n {
                    f.push(if fill { 0 } else { rng.byte() });
                }
            }
            "ihl" => {
                if let Some(b) = f.get_mut(l3) {
                    *b = (*b & 0xf0) | rng.below(16) as u8;
                }
            }
            "ip-version" => {
                if let Some(b) = f.get_mut(l3) {
                    *b = (*b & 0x0f) | (rng.pick(&[0u8, 4, 4, 5, 6, 15]) << 4);
                }
            }
            "ip-tot-len" => {
                let actual = f.len().saturating_sub(l3) as u16;
                let cur = be16(f, l3 + 2).unwrap_or(actual);
                let v = match rng.below(6) {
                    0 => 0,
                    1 => 0xffff,
                    2 => actual.wrapping_add(rng.below(9) as u16).wrapping_sub(4),
                    3 => cur.wrapping_add(rng.below(9) as u16).wrapping_sub(4),
                    4 => (l4 - l3) as u16 + rng.below(24) as u16,
                    _ => rng.u16(),
                };
                put16(f, l3 + 2, v);
            }
            "ip-proto" => {
                let r = rng.byte();
                put8(f, l3 + 9, rng.pick(&[pkt::TCP, pkt::UDP, pkt::ICMP, 0, r]));
            }
            "ip-frag" => {
                let v = match rng.below(5) {
                    0 => pkt::IP_MF,
                    1 => rng.u16() & 0x1fff,
                    2 => pkt::IP_DF,
                    3 => pkt::IP_RESERVED,
                    _ => rng.u16(),
                };
                put16(f, l3 + 6, v);
            }
            "ip-ttl" => {
                let r = rng.byte();
                put8(f, l3 + 8, rng.pick(&[0, 1, 2, 255, r]));
            }
            "ip-tos-id" => {
                if rng.chance(1, 2) {
                    put8(f, l3 + 1, rng.byte());
                } else {
                    let r = rng.u16();
                    put16(f, l3 + 4, rng.pick(&[0, 0xffff, r]));
                }
            }
            "ip-addr" => {
                let off = l3 + rng.pick(&[12, 16]);
                let a = if rng.chance(3, 4) && !self.dict.addrs.is_empty() {
                    rng.pick(&self.dict.addrs)
                } else {
                    (rng.next_u64() as u32).to_be_bytes()
                };
                if off + 4 <= f.len() {
                    f[off..off + 4].copy_from_slice(&a);
                }
            }
            "l4-port" => {
                let off = l4 + rng.pick(&[0, 2]);
                let p = if rng.chance(3, 4) && !self.dict.ports.is_empty() {
                    rng.pick(&self.dict.ports)
                } else {
                    rng.u16()
                };
                put16(f, off, p);
            }
            "tcp-flags" => put8(f, l4 + 13, rng.byte()),
            "tcp-doff" => {
                if let Some(b) = f.get_mut(l4 + 12) {
                    *b = (*b & 0x0f) | ((rng.below(16) as u8) << 4);
                }
            }
            "udp-len" => {
                let actual = f.len().saturating_sub(l4) as u16;
                let r = rng.u16();
                let v = rng.pick(&[0, 7, 8, actual, actual + 1, actual.wrapping_sub(1), r]);
                put16(f, l4 + 4, v);
            }
            "checksum" => {
                let off = match rng.below(3) {
                    0 => l3 + 10,
                    1 => l4 + 16,
                    _ => l4 + 6,
                };
                let r = rng.u16();
                put16(f, off, rng.pick(&[0, 0xffff, r]));
            }
            "ethertype" => {
                let r = rng.u16();
                let t = rng.pick(&[
                    pkt::ETH_P_IP,
                    pkt::ETH_P_IPV6,
                    pkt::ETH_P_ARP,
                    pkt::ETH_P_8021Q,
                    pkt::ETH_P_8021AD,
                    r,
                ]);
                put16(f, 12, t);
            }
            "vlan-tag" => {
                if f.len() >= ETH_LEN && f.len() + 4 <= MAX_FRAME {
                    let tpid = rng.pick(&[pkt::ETH_P_8021Q, pkt::ETH_P_8021AD]);
                    let tagged = pkt::tagged(f, tpid, rng.u16());
                    *f = tagged;
                }
            }
            "icmp-quote" => {
                // The quoted header of an ICMP error: its IHL, protocol,
                // addresses, ports or length.
                let q = l4 + 8;
                let qihl = f.get(q).map_or(20, |b| (b & 0x0f) as usize * 4);
                match rng.below(5) {
                    0 => put8(f, q, 0x40 | rng.below(16) as u8),
                    1 => {
                        let r = rng.byte();
                        put8(f, q + 9, rng.pick(&[pkt::TCP, pkt::UDP, pkt::ICMP, r]));
                    }
                    2 => {
                        let off = q + rng.pick(&[12, 16]);
                        if off + 4 <= f.len() && !self.dict.addrs.is_empty() {
                            let a = rng.pick(&self.dict.addrs);
                            f[off..off + 4].copy_from_slice(&a);
                        }
                    }
                    3 => {
                        let off = q + qihl + rng.pick(&[0, 2]);
                        let p = rng.pick(&self.dict.ports);
                        put16(f, off, p);
                    }
                    _ => put16(f, q + 6, rng.pick(&[pkt::IP_MF, 1, 0])),
                }
            }
            other => unreachable!("mutation {other}"),
        }
    }
}

/// Recomputes, where the frame's own fields allow, the IPv4 header
/// checksum, the TCP/UDP/ICMP checksum (over the IPv4 payload as the total
/// length bounds it) and, for an ICMP error, the quoted IPv4 header's.
pub fn fix_checksums(f: &mut [u8]) {
    let lay = Layout::of(f);
    let Some(l3) = lay.l3 else { return };
    let Some(&vihl) = f.get(l3) else { return };
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl >= 20 && l3 + ihl <= f.len() {
        put16(f, l3 + 10, 0);
        let c = pkt::csum(&f[l3..l3 + ihl], 0);
        put16(f, l3 + 10, c);
    }
    let Some(seg) = l4_segment(f, l3) else { return };
    let (start, end) = seg;
    let src = [f[l3 + 12], f[l3 + 13], f[l3 + 14], f[l3 + 15]];
    let dst = [f[l3 + 16], f[l3 + 17], f[l3 + 18], f[l3 + 19]];
    let proto = f[l3 + 9];
    match proto {
        pkt::TCP if end - start >= 20 => {
            put16(f, start + 16, 0);
            let c = pkt::csum(&f[start..end], pseudo(src, dst, proto, end - start));
            put16(f, start + 16, c);
        }
        pkt::UDP if end - start >= 8 => {
            if be16(f, start + 6) == Some(0) {
                return; // no checksum stays none
            }
            put16(f, start + 6, 0);
            let mut c = pkt::csum(&f[start..end], pseudo(src, dst, proto, end - start));
            if c == 0 {
                c = 0xffff;
            }
            put16(f, start + 6, c);
        }
        pkt::ICMP if end - start >= 4 => {
            // The quote first: the ICMP checksum covers it.
            let q = start + 8;
            if let Some(&qv) = f.get(q) {
                let qihl = (qv & 0x0f) as usize * 4;
                if qihl >= 20 && q + qihl <= end {
                    put16(f, q + 10, 0);
                    let c = pkt::csum(&f[q..q + qihl], 0);
                    put16(f, q + 10, c);
                }
            }
            put16(f, start + 2, 0);
            let c = pkt::csum(&f[start..end], 0);
            put16(f, start + 2, c);
        }
        _ => {}
    }
}

pub fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    pkt::pseudo_sum(src.into(), dst.into(), proto, len)
}

/// `[start, end)` of the L4 segment of the IPv4 packet at `l3`, as IHL and
/// the total length bound it, when both are sane and inside the frame.
pub fn l4_segment(f: &[u8], l3: usize) -> Option<(usize, usize)> {
    let ihl = (*f.get(l3)? & 0x0f) as usize * 4;
    let tot = be16(f, l3 + 2)? as usize;
    if ihl < 20 || tot < ihl || l3 + tot > f.len() {
        return None;
    }
    Some((l3 + ihl, l3 + tot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkt::Packet;

    #[test]
    fn same_seed_same_frames() {
        let m = Mutator {
            dict: Dictionary {
                addrs: vec![[192, 0, 2, 1]],
                ports: vec![8080],
            },
        };
        let seed = Packet::tcp([192, 0, 2, 2].into(), 1, [192, 0, 2, 1].into(), 8080).frame();
        let run = |s| {
            let mut r = Rng::new(s);
            (0..200)
                .map(|_| m.mutate(&mut r, &seed).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn fixing_checksums_restores_a_built_frame() {
        let p = Packet::udp([192, 0, 2, 2].into(), 5000, [192, 0, 2, 1].into(), 53);
        let want = p.frame();
        let mut f = want.clone();
        f[24] ^= 0x55; // ip checksum
        f[40] ^= 0x55; // udp checksum
        fix_checksums(&mut f);
        assert_eq!(f, want);
    }
}
