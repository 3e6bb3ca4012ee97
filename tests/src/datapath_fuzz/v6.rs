//! The NAT invariants for NAT66 output in the mutation run, as the IPv4
//! ones (`check_nat`): a translated IPv6 frame differs from its input only
//! in what NAT66 may change — MACs, hop limit - 1, the one rewritten
//! address and port (to what the mappings or the tracked flow say), the
//! client port only as the flow's clash remap says (`BERTH_NAT6_FWD`,
//! the flow's entry), the L4 checksum; for an `ICMPv6` error the outer
//! address, the quoted address and ports and the checksums covering them;
//! of a later fragment only the address its first fragment got — and each
//! checksum it touches changes by exactly what the translation changed in
//! what it covers. Nothing with a loopback or host source is translated at
//! an uplink. The checker walks the extension headers on its own.
use std::net::Ipv6Addr;

use berth_maps::{FlowKey6, NatEntry6, NatFwd6, NAT6_FWD_MAP, NAT6_MAP, NAT6_NEW_MAP};

use super::{bad, csum_kept, Dir, Run, Violation};
use crate::{
    mutate::be16,
    pkt::{self, ETH_LEN},
    testrun::Env,
};

const L3: usize = ETH_LEN;
const SRC: usize = L3 + 8;
const DST: usize = L3 + 24;
/// At most this many extension headers are walked (as `parse6`).
const MAX_EXT: usize = 8;

/// The run's IPv6 container and its published ports: (host address or
/// `::`, host port, protocol) -> container port.
pub(super) const CTR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub(super) const MAPPINGS6: [(Ipv6Addr, u16, u8, u16); 3] = [
    (Ipv6Addr::UNSPECIFIED, 8080, pkt::TCP, 80),
    (Ipv6Addr::UNSPECIFIED, 8081, pkt::TCP, 80),
    (pkt::HOST6, 8053, pkt::UDP, 53),
];

/// A datagram as IPv6 names it (source, destination, identification),
/// with the direction it was seen in.
pub(super) type Datagram6 = (bool, [u8; 16], [u8; 16], u32);

fn addr(f: &[u8], off: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&f[off..off + 16]).unwrap())
}

/// The container port a host address and port lead to; a `::` mapping
/// serves the host's own address only.
fn lookup6(proto: u8, dst: Ipv6Addr, port: u16) -> Option<u16> {
    MAPPINGS6
        .iter()
        .find(|(h, p, pr, _)| {
            *pr == proto && *p == port && (*h == dst || h.is_unspecified() && dst == pkt::HOST6)
        })
        .map(|m| m.3)
}

fn key6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, proto: u8) -> FlowKey6 {
    FlowKey6 {
        src_addr: src.octets(),
        dst_addr: dst.octets(),
        src_port_be: sport.to_be(),
        dst_port_be: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn nat6(env: &Env, k: &FlowKey6) -> Option<NatEntry6> {
    env.map_get(NAT6_MAP, k)
        .or_else(|| env.map_get(NAT6_NEW_MAP, k))
}

fn fwd6(env: &Env, wire: &FlowKey6) -> Option<NatFwd6> {
    env.map_get(NAT6_FWD_MAP, wire)
}

/// The sum of the IPv6 pseudo header of the packet in `f` (addresses as
/// they are there) for an upper-layer packet of `len` bytes.
fn pseudo6(f: &[u8], proto: u8, len: usize) -> u32 {
    pkt::pseudo_sum6(addr(f, SRC), addr(f, DST), proto, len)
}

/// What the walk of the extension headers found: the upper-layer protocol
/// and offset, and the fragment header's (offset, more, id) if any.
struct Walk {
    proto: u8,
    l4: usize,
    frag: Option<(u16, bool, u32)>,
}

fn walk(f: &[u8]) -> Option<Walk> {
    let mut next = f[L3 + 6];
    let mut off = L3 + 40;
    let mut frag = None;
    for _ in 0..MAX_EXT {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*f.get(off + 1)?) + 1) * 8;
                next = f[off];
                off += len;
            }
            44 => {
                let fo = be16(f, off + 2)?;
                let id = u32::from_be_bytes(f.get(off + 4..off + 8)?.try_into().ok()?);
                frag = Some((fo >> 3, fo & 1 == 1, id));
                next = f[off];
                off += 8;
            }
            _ => break,
        }
    }
    Some(Walk {
        proto: next,
        l4: off,
        frag,
    })
}

impl Run<'_> {
    /// The NAT66 translation rules; `out` is the frame as it leaves.
    pub(super) fn check_nat6(
        &mut self,
        env: &Env,
        dir: Dir,
        f: &[u8],
        out: &[u8],
    ) -> Result<(), Violation> {
        if f.len() < L3 + 40 || f[L3] >> 4 != 6 {
            return Err(bad("translated an IPv6 frame with a bad version or length"));
        }
        let hop = f[L3 + 7];
        if hop <= 1 {
            return Err(bad("translated an IPv6 packet with hop limit <= 1"));
        }
        if out[L3 + 7] != hop - 1 {
            return Err(bad("hop limit not decremented by one"));
        }
        let (src, dst) = (addr(f, SRC), addr(f, DST));
        if dir == Dir::Ingress && (src.is_loopback() || src == pkt::HOST6 || dst.is_loopback()) {
            return Err(Violation {
                kind: "translated a loopback or spoofed-local IPv6 source on an uplink".into(),
                detail: format!("{src} -> {dst}"),
            });
        }
        let end = L3 + 40 + usize::from(be16(f, L3 + 4).unwrap());
        if end > f.len() {
            return Err(bad(
                "translated an IPv6 packet whose payload length is past the frame",
            ));
        }
        let Some(w) = walk(f).filter(|w| w.l4 <= end) else {
            return Err(bad(
                "translated an IPv6 packet whose extension headers overrun it",
            ));
        };
        let mut allowed: Vec<std::ops::Range<usize>> = vec![0..12, L3 + 7..L3 + 8];
        let addr_off = match dir {
            Dir::Ingress => DST,
            Dir::Reply => SRC,
        };
        let datagram = w
            .frag
            .map(|(_, _, id)| (dir == Dir::Ingress, src.octets(), dst.octets(), id));
        match (w.frag, datagram) {
            (Some((offset, _, _)), Some(d)) if offset != 0 => {
                let Some(&want) = self.frags6.get(&d) else {
                    return Err(bad(
                        "translated a later IPv6 fragment whose datagram's first fragment was not",
                    ));
                };
                allowed.push(addr_off..addr_off + 16);
                if out[addr_off..addr_off + 16] != want {
                    return Err(bad(
                        "later IPv6 fragment translated to another address than its first",
                    ));
                }
            }
            _ => {
                match w.proto {
                    pkt::TCP | pkt::UDP => {
                        check_l4_6(env, dir, f, out, &w, end, &mut allowed)?;
                    }
                    pkt::ICMPV6 if w.frag.is_none() => {
                        check_icmp6(env, dir, f, out, w.l4, end, &mut allowed)?;
                    }
                    p => return Err(bad(format!("NAT66 translated next header {p}"))),
                }
                if let Some(d) = datagram {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&out[addr_off..addr_off + 16]);
                    self.frags6.insert(d, a);
                }
            }
        }
        for (i, (a, b)) in f.iter().zip(out).enumerate() {
            if a != b && !allowed.iter().any(|r| r.contains(&i)) {
                return Err(Violation {
                    kind: "NAT66 changed a byte a NAT may not".into(),
                    detail: format!("byte {i}: {a:#04x} -> {b:#04x}"),
                });
            }
        }
        Ok(())
    }
}

/// A translated TCP/UDP packet (not a later fragment), for
/// [`Run::check_nat6`].
fn check_l4_6(
    env: &Env,
    dir: Dir,
    f: &[u8],
    out: &[u8],
    w: &Walk,
    end: usize,
    allowed: &mut Vec<std::ops::Range<usize>>,
) -> Result<(), Violation> {
    let (proto, l4) = (w.proto, w.l4);
    let hdr = if proto == pkt::TCP { 20 } else { 8 };
    if l4 + hdr > end {
        return Err(bad("NAT66 translated a truncated L4 header"));
    }
    let csum_off = l4 + if proto == pkt::TCP { 16 } else { 6 };
    let (addr_off, port_off, client_off) = match dir {
        Dir::Ingress => (DST, l4 + 2, l4),
        Dir::Reply => (SRC, l4, l4 + 2),
    };
    allowed.extend([
        csum_off..csum_off + 2,
        addr_off..addr_off + 16,
        port_off..port_off + 2,
        client_off..client_off + 2,
    ]);
    let (src, dst) = (addr(f, SRC), addr(f, DST));
    let (sport, dport) = (be16(f, l4).unwrap(), be16(f, l4 + 2).unwrap());
    // Where the packet must go, and the client port as the flow's
    // remap says (towards the container) or the client's own (back).
    let (want, want_client) = match dir {
        Dir::Ingress => {
            let Some(to_port) = lookup6(proto, dst, dport) else {
                return Err(bad("NAT66 translated a packet that matches no mapping"));
            };
            let remap = fwd6(env, &key6(src, dst, sport, dport, proto))
                .map(|r| u16::from_be(r.remap_port_be));
            ((CTR6, to_port), remap.unwrap_or(sport))
        }
        Dir::Reply => {
            let Some(e) = nat6(env, &key6(src, dst, sport, dport, proto)) else {
                return Err(bad("NAT66 translated a reply of no tracked flow"));
            };
            (
                (Ipv6Addr::from(e.host_addr), u16::from_be(e.host_port_be)),
                u16::from_be(e.client_port_be),
            )
        }
    };
    let got_client = be16(out, client_off).unwrap();
    if got_client != want_client {
        return Err(Violation {
            kind: "NAT66 changed the client port other than by the flow's remap".into(),
            detail: format!("{got_client}, want {want_client}"),
        });
    }
    let got = (addr(out, addr_off), be16(out, port_off).unwrap());
    if got != want {
        return Err(Violation {
            kind: "NAT66 translated to the wrong address or port".into(),
            detail: format!("[{}]:{}, want [{}]:{}", got.0, got.1, want.0, want.1),
        });
    }
    let (c_in, c_out) = (be16(f, csum_off).unwrap(), be16(out, csum_off).unwrap());
    if proto == pkt::UDP && c_in == 0 {
        return if c_out == 0 {
            Ok(())
        } else {
            Err(bad("IPv6 UDP without checksum got one"))
        };
    }
    if proto == pkt::UDP && c_out == 0 {
        return Err(bad("IPv6 UDP checksum became 0 (\"none\")"));
    }
    // Over what is here (a first fragment's checksum covers more; the
    // incremental update keeps the sum over this part all the same).
    let len = end - l4;
    let what = if proto == pkt::TCP {
        "IPv6 TCP"
    } else {
        "IPv6 UDP"
    };
    csum_kept(
        what,
        (&f[l4..end], pseudo6(f, proto, len)),
        (&out[l4..end], pseudo6(out, proto, len)),
    )
}

/// A translated `ICMPv6` error, for [`Run::check_nat6`].
fn check_icmp6(
    env: &Env,
    dir: Dir,
    f: &[u8],
    out: &[u8],
    l4: usize,
    end: usize,
    allowed: &mut Vec<std::ops::Range<usize>>,
) -> Result<(), Violation> {
    let q = l4 + 8;
    if !(1..=4).contains(&f[l4]) || q + 40 + 8 > end {
        return Err(bad(
            "NAT66 translated an ICMPv6 message that is not an error quoting ports",
        ));
    }
    let qproto = f[q + 6];
    if f[q] >> 4 != 6 || !matches!(qproto, pkt::TCP | pkt::UDP) {
        return Err(bad(
            "NAT66 translated an ICMPv6 error quoting no TCP/UDP header",
        ));
    }
    let ql4 = q + 40;
    let (outer, quoted, port, client_port) = match dir {
        Dir::Ingress => (DST, q + 8, ql4, ql4 + 2),
        Dir::Reply => (SRC, q + 24, ql4 + 2, ql4),
    };
    let qcsum = ql4 + if qproto == pkt::TCP { 16 } else { 6 };
    allowed.extend([
        outer..outer + 16,
        l4 + 2..l4 + 4,
        quoted..quoted + 16,
        port..port + 2,
        client_port..client_port + 2,
        qcsum..qcsum + 2,
    ]);
    let (qsrc, qdst) = (addr(f, q + 8), addr(f, q + 24));
    let (qsport, qdport) = (be16(f, ql4).unwrap(), be16(f, ql4 + 2).unwrap());
    // Ingress: the quote is a reply as it left (host -> client);
    // reply: what the client sent as the container got it.
    let (want, want_client) = match dir {
        Dir::Ingress => {
            let Some(to_port) = lookup6(qproto, qsrc, qsport) else {
                return Err(bad("NAT66 translated an ICMPv6 error about no mapping"));
            };
            let remap = fwd6(env, &key6(qdst, qsrc, qdport, qsport, qproto))
                .map(|r| u16::from_be(r.remap_port_be));
            ((CTR6, to_port), remap.unwrap_or(qdport))
        }
        Dir::Reply => {
            let Some(e) = nat6(env, &key6(qdst, qsrc, qdport, qsport, qproto)) else {
                return Err(bad(
                    "NAT66 translated an ICMPv6 error about no tracked flow",
                ));
            };
            (
                (Ipv6Addr::from(e.host_addr), u16::from_be(e.host_port_be)),
                u16::from_be(e.client_port_be),
            )
        }
    };
    let got_client = be16(out, client_port).unwrap();
    if got_client != want_client {
        return Err(Violation {
            kind: "ICMPv6 error's quoted client port changed other than by the flow's remap".into(),
            detail: format!("{got_client}, want {want_client}"),
        });
    }
    let got = (
        addr(out, outer),
        addr(out, quoted),
        be16(out, port).unwrap(),
    );
    if got != (want.0, want.0, want.1) {
        return Err(Violation {
            kind: "ICMPv6 error translated to the wrong address or port".into(),
            detail: format!(
                "outer {} quoted [{}]:{}, want [{}]:{}",
                got.0, got.1, got.2, want.0, want.1
            ),
        });
    }
    // The quoted L4 checksum, when the whole quoted packet is there.
    let qend = q + 40 + usize::from(be16(f, q + 4).unwrap());
    if qend <= end && ql4 + 8 <= qend {
        let c_in = be16(f, qcsum).unwrap_or(0);
        if !(qproto == pkt::UDP && c_in == 0) && qcsum + 2 <= qend {
            let qlen = qend - ql4;
            let p = |fr: &[u8]| pkt::pseudo_sum6(addr(fr, q + 8), addr(fr, q + 24), qproto, qlen);
            csum_kept(
                "quoted IPv6 L4",
                (&f[ql4..qend], p(f)),
                (&out[ql4..qend], p(out)),
            )?;
        }
    }
    if (end..f.len()).any(|i| f[i] != out[i]) {
        return Err(bad("changed bytes past the ICMPv6 error's payload length"));
    }
    let len = end - l4;
    csum_kept(
        "ICMPv6",
        (&f[l4..end], pseudo6(f, pkt::ICMPV6, len)),
        (&out[l4..end], pseudo6(out, pkt::ICMPV6, len)),
    )
}

/// Whether an IPv6 frame carries a fragment header (in the walk's reach).
pub(super) fn is_fragment(f: &[u8]) -> bool {
    f.len() >= L3 + 40 && walk(f).is_some_and(|w| w.frag.is_some())
}

/// The client port the clash of client:40000 -> `[::]:8081` gets.
fn remapped_port() -> u16 {
    berth_maps::nat_remap_port6(&pkt::CLIENT6.octets(), 40000, 8081, 0)
}

/// Forgets every IPv6 flow and remap, then opens the seeds' flows again:
/// client:40000 to 8080 (TCP) and 8053 (UDP), and to 8081 (TCP), whose
/// reply tuple the first holds, so it is remapped.
pub(super) fn reset_flows6(env: &mut Env) {
    env.clear_map::<FlowKey6, NatEntry6>(NAT6_MAP);
    env.clear_map::<FlowKey6, NatEntry6>(NAT6_NEW_MAP);
    env.clear_map::<FlowKey6, NatFwd6>(NAT6_FWD_MAP);
    for (proto, port) in [(pkt::TCP, 8080), (pkt::UDP, 8053), (pkt::TCP, 8081)] {
        let f = pkt::Ipv6Packet::new(proto, port).frame();
        let v = env.tc("berth_ingress", &f);
        assert_eq!(
            v.code,
            super::TC_ACT_REDIRECT,
            "setting up IPv6 {proto}/{port}"
        );
    }
    let wire = key6(pkt::CLIENT6, pkt::HOST6, 40000, 8081, pkt::TCP);
    assert_eq!(
        fwd6(env, &wire).map(|r| u16::from_be(r.remap_port_be)),
        Some(remapped_port()),
        "the clashing IPv6 seed flow is remapped"
    );
}

/// An `ICMPv6` error `ty`/`code` from `src` to `dst` quoting all of
/// `about`'s IPv6 packet.
fn error6(ty: u8, code: u8, src: Ipv6Addr, dst: Ipv6Addr, about: &pkt::Ipv6Packet) -> Vec<u8> {
    let mut e = pkt::Ipv6Packet::icmpv6(ty, code);
    (e.src, e.dst) = (src, dst);
    e.payload = vec![0, 0, 5, 0x78];
    e.payload.extend(&about.frame()[L3..]);
    e.frame()
}

fn packet6(proto: u8, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> pkt::Ipv6Packet {
    let mut p = pkt::Ipv6Packet::new(proto, dport);
    (p.src, p.sport, p.dst, p.hop_limit) = (src, sport, dst, 63);
    p.payload = vec![0x36; 24];
    p
}

/// Client packets of the seeds' IPv6 flows (the remapped one among them)
/// and routers' errors about their replies.
pub(super) fn ingress_seeds6() -> Vec<Vec<u8>> {
    let (client, host) = (pkt::CLIENT6, pkt::HOST6);
    let router: Ipv6Addr = "2001:db8::fe".parse().unwrap();
    let mut s = Vec::new();
    for (proto, port) in [(pkt::TCP, 8081), (pkt::TCP, 8080), (pkt::UDP, 8053)] {
        let mut p = packet6(proto, client, 40000, host, port);
        p.hop_limit = 64;
        s.push(p.frame());
    }
    for port in [8080, 8081] {
        let left = packet6(pkt::TCP, host, port, client, 40000);
        s.push(error6(2, 0, router, host, &left));
    }
    let left = packet6(pkt::UDP, host, 8053, client, 40000);
    s.push(error6(1, 4, client, host, &left));
    s
}

/// The container's packets of the seeds' IPv6 flows (to the remapped
/// port among them) and its errors about what their clients sent.
pub(super) fn reply_seeds6() -> Vec<Vec<u8>> {
    let client = pkt::CLIENT6;
    let r = remapped_port();
    let mut s = Vec::new();
    for (proto, sport, dport) in [
        (pkt::TCP, 80, 40000),
        (pkt::TCP, 80, r),
        (pkt::UDP, 53, 40000),
    ] {
        let mut p = packet6(proto, CTR6, sport, client, dport);
        p.hop_limit = 64;
        s.push(p.frame());
    }
    for (proto, sport, dport) in [(pkt::UDP, 40000, 53), (pkt::TCP, r, 80)] {
        let got = packet6(proto, client, sport, CTR6, dport);
        s.push(error6(1, 4, CTR6, client, &got));
    }
    s
}
