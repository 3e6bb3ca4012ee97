//! ICMP errors about tracked flows, both ways (see `run_ingress` and
//! `run_reply` for the flows), and the odd ones that must pass.
use std::net::Ipv4Addr;

use berth_integration::{
    pkt::{self, Packet, ETH_LEN},
    testrun::*,
};

use crate::{
    reply::{remapped_tcp_flow, remapped_udp_flow},
    table::*,
};

pub(crate) const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub(crate) const FRAG_NEEDED: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x78]);
pub(crate) const PORT_UNREACH: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);
pub(crate) const TTL_EXCEEDED: (u8, u8, [u8; 4]) = (11, 0, [0; 4]);

/// An ICMP error from `src` to `dst` quoting the first `quote` bytes of
/// `about`, with the given MACs and outer TTL.
pub(crate) fn icmp_err(
    eth: (pkt::Mac, pkt::Mac),
    (src, dst, ttl): (Ipv4Addr, Ipv4Addr, u8),
    (ty, code, rest): (u8, u8, [u8; 4]),
    about: &Packet,
    quote: usize,
) -> Packet {
    let mut p = Packet::icmp_error(src, dst, ty, code, rest, about, quote);
    (p.eth_dst, p.eth_src, p.ttl) = (eth.0, eth.1, ttl);
    p
}

/// The first 28 bytes of a non-first fragment (offset 1480) of a
/// `src -> dst` packet whose payload there starts like `ports`, as an ICMP
/// error would quote it.
pub(crate) fn later_fragment(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ports: [u16; 2]) -> Vec<u8> {
    let mut body = [ports[0].to_be_bytes(), ports[1].to_be_bytes()].concat();
    body.extend([0, 0, 0, 1]);
    let mut p = Packet::raw(src, dst, 0xfd, body);
    p.frag = 185;
    p.ttl = 63;
    let mut ip = p.ipv4();
    ip[9] = proto;
    ip[10..12].fill(0);
    let c = pkt::csum(&ip[..20], 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// A reply of a tracked flow as it left the uplink (what an outside
/// router quotes), and the same packet as the container sent it.
pub(crate) fn left_and_sent(tcp: bool) -> (Packet, Packet) {
    let mut left = if tcp {
        Packet::tcp(HOST, 8080, CLIENT, 40000)
    } else {
        Packet::udp(HOST, 8053, CLIENT, 5000)
    };
    left.tcp_flags = pkt::ACK;
    left.ttl = 63;
    let mut sent = left.clone();
    sent.src = C1;
    sent.sport = if tcp { 80 } else { 53 };
    (left, sent)
}

/// ICMP errors from outside about replies of tracked flows (see
/// `run_ingress` for the flows): translated towards the container, outer
/// and quoted headers. Odd ones pass.
pub(crate) fn ingress_icmp_errors(t: &mut Table) {
    let from_router = (UPLINK_MAC, CLIENT_MAC);
    let to_c1 = (C1_MAC, BRIDGE_MAC);
    for (tcp, kind, what, quote) in [
        (true, FRAG_NEEDED, "fragmentation needed", 28),
        (true, FRAG_NEEDED, "fragmentation needed", 40),
        (true, TTL_EXCEEDED, "time exceeded", 28),
        (false, FRAG_NEEDED, "fragmentation needed", 28),
        (false, PORT_UNREACH, "port unreachable", 36),
    ] {
        let (left, sent) = left_and_sent(tcp);
        let p = icmp_err(from_router, (ROUTER, HOST, 64), kind, &left, quote);
        let want = icmp_err(to_c1, (ROUTER, C1, 63), kind, &sent, quote);
        let proto = if tcp { "tcp" } else { "udp" };
        t.add(
            format!("icmp {what} about a tracked {proto} reply, {quote}-byte quote"),
            p.frame(),
            Expect::Nat {
                want: want.frame(),
                neigh: false,
            },
        );
    }
    let (left, sent) = left_and_sent(true);
    let mut opt_left = left.clone();
    opt_left.ip_options = record_route(8);
    let mut opt_sent = sent.clone();
    opt_sent.ip_options = record_route(8);
    let p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &opt_left, 36);
    let want = icmp_err(to_c1, (ROUTER, C1, 63), FRAG_NEEDED, &opt_sent, 36);
    t.add(
        "icmp error quoting a header with ipv4 options",
        p.frame(),
        Expect::Nat {
            want: want.frame(),
            neigh: false,
        },
    );
    let mut p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &left, 28);
    let mut want = icmp_err(to_c1, (ROUTER, C1, 63), FRAG_NEEDED, &sent, 28);
    p.ip_options = vec![1, 1, 1, 0];
    want.ip_options = vec![1, 1, 1, 0];
    t.add(
        "icmp error with outer ipv4 options",
        p.frame(),
        Expect::Nat {
            want: want.frame(),
            neigh: false,
        },
    );
    // Bytes after the IPv4 packet that happen to continue the quoted TCP
    // header are not the packet's: they stay, and the checksums cover
    // only the packet.
    let mut p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &left, 28);
    let mut want = icmp_err(to_c1, (ROUTER, C1, 63), FRAG_NEEDED, &sent, 28);
    p.eth_pad = left.ipv4()[28..40].to_vec();
    want.eth_pad = p.eth_pad.clone();
    t.add(
        "icmp error followed by bytes past its total length",
        p.frame(),
        Expect::Nat {
            want: want.frame(),
            neigh: false,
        },
    );

    for ttl in [0, 1] {
        let p = icmp_err(from_router, (ROUTER, HOST, ttl), FRAG_NEEDED, &left, 28);
        t.drop(
            format!("icmp error about a tracked flow with ttl {ttl}"),
            p.frame(),
        );
    }
    let full = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &left, 28).frame();
    let tot = (full.len() - ETH_LEN) as u16;
    t.pass(
        "icmp error whose total length cuts the quoted ports",
        pkt::fix_ipv4_csum(pkt::put16(full.clone(), ETH_LEN + 2, tot - 6)),
    );
    t.pass(
        "icmp error whose total length ends at the icmp header",
        pkt::fix_ipv4_csum(pkt::put16(full.clone(), ETH_LEN + 2, 28)),
    );
    let mut p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &left, 28);
    p.frag = pkt::IP_MF;
    t.pass("fragment of an icmp error about a tracked flow", p.frame());
    let q = ETH_LEN + 28; // the quoted IPv4 header
    t.pass("icmp error quoting ihl 4", pkt::put8(full.clone(), q, 0x44));
    t.pass("icmp error quoting ip version 6", pkt::put8(full, q, 0x65));
    // A quoted later fragment has no ports: its payload bytes may look
    // like a tracked flow's.
    let mut p = icmp_err(from_router, (ROUTER, HOST, 64), TTL_EXCEEDED, &left, 28);
    p.payload = later_fragment(HOST, CLIENT, pkt::TCP, [8080, 40000]);
    t.pass(
        "icmp error quoting a later fragment with port-like bytes",
        p.frame(),
    );
    let mut other = left.clone();
    other.sport = MANY_FIRST + 1;
    let p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &other, 28);
    t.pass("icmp error quoting another host port", p.frame());
    let mut other = left.clone();
    other.dport = 40999;
    let p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &other, 28);
    t.pass("icmp error quoting another client port", p.frame());
    let p = icmp_err(from_router, (ROUTER, HOST2, 64), FRAG_NEEDED, &left, 28);
    t.pass(
        "icmp error to another address than the quote's source",
        p.frame(),
    );
    // About the reply of a remapped flow: the container must see it about
    // the client port it knows the flow by.
    for (flow, c_port) in [(remapped_tcp_flow(), 80), (remapped_udp_flow(), 53)] {
        let mut left = flow.clone();
        (left.src, left.dst, left.sport, left.dport) = (flow.dst, flow.src, flow.dport, flow.sport);
        left.tcp_flags = pkt::ACK;
        left.ttl = 63;
        let mut sent = left.clone();
        (sent.src, sent.sport, sent.dport) = (C1, c_port, remapped_port(&flow));
        let p = icmp_err(from_router, (ROUTER, HOST, 64), FRAG_NEEDED, &left, 28);
        let want = icmp_err(to_c1, (ROUTER, C1, 63), FRAG_NEEDED, &sent, 28);
        t.add(
            format!(
                "icmp error about a remapped flow's reply (proto {})",
                flow.proto
            ),
            p.frame(),
            Expect::Nat {
                want: want.frame(),
                neigh: false,
            },
        );
    }
    let mut echo = Packet::icmp(HOST, CLIENT, 8, 0, [0, 1, 0, 1]);
    echo.ttl = 63;
    let p = icmp_err(from_router, (ROUTER, HOST, 64), TTL_EXCEEDED, &echo, 28);
    t.pass("icmp error quoting an icmp echo", p.frame());
}

/// A container's ICMP errors about what a tracked client sent it: they
/// leave from the host address and port the client used.
pub(crate) fn reply_icmp_errors(t: &mut Table) {
    let from_c1 = (BRIDGE_MAC, C1_MAC);
    let to_client = (CLIENT_MAC, UPLINK_MAC);
    // What the container got (translated, TTL - 1) and what the client
    // sent, which the translated error must quote.
    let got_and_sent = |tcp: bool| {
        let mut sent = if tcp {
            Packet::tcp(CLIENT, 40000, HOST, 8080)
        } else {
            Packet::udp(CLIENT, 5000, HOST, 8053)
        };
        sent.ttl = 63;
        let mut got = sent.clone();
        got.dst = C1;
        got.dport = if tcp { 80 } else { 53 };
        (got, sent)
    };
    for (tcp, kind, what, quote) in [
        (false, PORT_UNREACH, "port unreachable", 28),
        (false, PORT_UNREACH, "port unreachable", 36),
        (true, PORT_UNREACH, "port unreachable", 28),
        (true, PORT_UNREACH, "port unreachable", 40),
        (true, FRAG_NEEDED, "fragmentation needed", 28),
    ] {
        let (got, sent) = got_and_sent(tcp);
        let p = icmp_err(from_c1, (C1, CLIENT, 64), kind, &got, quote);
        let want = icmp_err(to_client, (HOST, CLIENT, 63), kind, &sent, quote);
        let proto = if tcp { "tcp" } else { "udp" };
        t.add(
            format!("container's icmp {what} about a tracked {proto} flow, {quote}-byte quote"),
            p.frame(),
            Expect::Nat {
                want: want.frame(),
                neigh: false,
            },
        );
    }
    let (got, sent) = got_and_sent(true);
    let mut p = icmp_err(from_c1, (C1, CLIENT, 64), PORT_UNREACH, &got, 28);
    let mut want = icmp_err(to_client, (HOST, CLIENT, 63), PORT_UNREACH, &sent, 28);
    p.eth_pad = got.ipv4()[28..40].to_vec();
    want.eth_pad = p.eth_pad.clone();
    t.add(
        "container's icmp error followed by bytes past its total length",
        p.frame(),
        Expect::Nat {
            want: want.frame(),
            neigh: false,
        },
    );
    let p = icmp_err(from_c1, (C1, CLIENT, 1), PORT_UNREACH, &got, 28);
    t.drop("container's icmp error with ttl 1", p.frame());
    let full = icmp_err(from_c1, (C1, CLIENT, 64), PORT_UNREACH, &got, 28).frame();
    t.pass(
        "container's icmp error whose total length cuts the quoted ports",
        pkt::fix_ipv4_csum(pkt::put16(full, ETH_LEN + 2, 20 + 8 + 20 + 2)),
    );
    // About what a remapped flow's client sent: the client must see it
    // about its own port and the host port it used.
    for (flow, c_port, quote) in [(remapped_tcp_flow(), 80, 40), (remapped_udp_flow(), 53, 36)] {
        let mut sent = flow.clone();
        sent.ttl = 63;
        let mut got = sent.clone();
        (got.dst, got.dport, got.sport) = (C1, c_port, remapped_port(&flow));
        let p = icmp_err(from_c1, (C1, CLIENT, 64), PORT_UNREACH, &got, quote);
        let want = icmp_err(to_client, (HOST, CLIENT, 63), PORT_UNREACH, &sent, quote);
        t.add(
            format!(
                "container's icmp error about a remapped flow (proto {})",
                flow.proto
            ),
            p.frame(),
            Expect::Nat {
                want: want.frame(),
                neigh: false,
            },
        );
    }
    let mut other = got.clone();
    other.sport = 5999;
    let p = icmp_err(from_c1, (C1, CLIENT, 64), PORT_UNREACH, &other, 28);
    t.pass("container's icmp error about an untracked flow", p.frame());
    let mut p = icmp_err(from_c1, (C1, CLIENT, 64), TTL_EXCEEDED, &got, 28);
    p.payload = later_fragment(CLIENT, C1, pkt::UDP, [5000, 53]);
    t.pass("container's icmp error quoting a later fragment", p.frame());
    // Only the flow's container may speak for it, and only to its client.
    let (got, _) = got_and_sent(false);
    let from_c2 = (BRIDGE_MAC, [0x02, 0x42, 0xac, 0x11, 0, 0x03]);
    let p = icmp_err(from_c2, (C2, CLIENT, 64), PORT_UNREACH, &got, 28);
    t.drop(
        "another container's icmp error about a tracked flow (forged) is dropped",
        p.frame(),
    );
    let p = icmp_err(from_c1, (C1, OTHER, 64), PORT_UNREACH, &got, 28);
    t.drop(
        "container's icmp error about its flow to another address than the client is dropped",
        p.frame(),
    );
    let p = icmp_err(from_c1, (C1, HOST, 64), PORT_UNREACH, &got, 28);
    t.drop(
        "container's icmp error about its flow to the host address is dropped",
        p.frame(),
    );
}
