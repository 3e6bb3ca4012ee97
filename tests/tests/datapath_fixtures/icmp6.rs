//! `ICMPv6` errors about NAT66 flows (`berth_icmp6`, tail-called by
//! `berth_ingress6` and `berth_reply6`): frame in -> verdict and exact
//! frame out. Every expected error is built from scratch: the quoted
//! packet as the other side of the NAT sees it (its TCP/UDP checksum over
//! its own pseudo header), then the error around it (`ICMPv6` checksum
//! over the outer pseudo header), so no checksum the program updates
//! incrementally is taken from it.
use std::net::Ipv6Addr;

use aya::maps::{Array, MapData};
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::{Counter, CONFIG_MAP, CONFIG_NO_POLICY};

use crate::{
    ipv6::publish6,
    nat66::{expect, macs},
    run::TC_ACT_REDIRECT,
};

const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const C2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
/// A router on the client's side of the uplink.
pub(crate) const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const L4: usize = pkt::ETH_LEN + 40;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
pub(crate) const PACKET_TOO_BIG: u8 = 2;
pub(crate) const DEST_UNREACH: u8 = 1;
const TIME_EXCEEDED: u8 = 3;
pub(crate) const PORT_UNREACH: u8 = 4;

/// `[::]:8080` -> `[fd00::2]:80` (TCP), `[2001:db8::1]:8053` -> `:53`
/// (UDP); `2001:db8::1` is the host's; nobody has policy.
fn setup(env: &mut Env) {
    publish6(env, Ipv6Addr::UNSPECIFIED, 8080, Protocol::Tcp, 80);
    publish6(env, HOST6, 8053, Protocol::Udp, 53);
    env.host_addr6(HOST6);
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut(CONFIG_MAP).unwrap()).unwrap();
    m.set(CONFIG_NO_POLICY, 1, 0).unwrap();
}

/// A TCP segment with 100 bytes of data (checksum over all of it).
pub(crate) fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::TCP, dport);
    (p.src, p.dst, p.sport, p.hop_limit) = (src, dst, sport, 63);
    p.payload = vec![0x5a; 100];
    let mut f = p.frame();
    f[L4 + 13] = flags;
    f[L4 + 16..L4 + 18].copy_from_slice(&[0, 0]);
    let c = pkt::csum(&f[L4..], pkt::pseudo_sum6(src, dst, pkt::TCP, f.len() - L4));
    f[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, hop: u8) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport, p.hop_limit) = (src, dst, sport, hop);
    p.payload = b"query over ipv6".to_vec();
    p.frame()
}

/// An `ICMPv6` error `ty`/`code` from `src` to `dst` quoting the first
/// `quote` bytes of `about`'s IPv6 packet (all of it if shorter); hop
/// limit 64.
pub(crate) fn error6(
    (ty, code): (u8, u8),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    about: &[u8],
    quote: usize,
) -> Ipv6Packet {
    let mut p = Ipv6Packet::icmpv6(ty, code);
    (p.src, p.dst) = (src, dst);
    // Packet too big carries the MTU (1400) here; the others, zeroes.
    p.payload = if ty == PACKET_TOO_BIG {
        1400u32.to_be_bytes().to_vec()
    } else {
        vec![0; 4]
    };
    let ip = &about[pkt::ETH_LEN..];
    p.payload.extend(&ip[..quote.min(ip.len())]);
    p
}

pub(crate) fn frame(p: &Ipv6Packet, hop: u8) -> Vec<u8> {
    let mut p = p.clone();
    p.hop_limit = hop;
    p.frame()
}

/// Opens the TCP flow client:40000 -> [::]:8080 (the container's :80).
fn open_tcp(env: &Env) {
    let syn = tcp(CLIENT6, 40000, HOST6, 8080, pkt::SYN);
    assert_eq!(env.tc("berth_ingress", &syn).code, TC_ACT_REDIRECT, "syn");
}

#[test]
fn packet_too_big_about_a_reply_reaches_the_container_about_its_own_flow() {
    in_fixture_ns(|env| {
        setup(env);
        open_tcp(env);
        // The reply as it left, and as the container sent it.
        let left = tcp(HOST6, 8080, CLIENT6, 40000, pkt::ACK);
        let sent = tcp(C1_6, 80, CLIENT6, 40000, pkt::ACK);
        // Whole, cut inside the payload (past the TCP checksum), and cut
        // right after the ports (no checksum to fix).
        for quote in [usize::MAX, 70, 48] {
            let ptb = error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &left, quote);
            let want = error6((PACKET_TOO_BIG, 0), ROUTER6, C1_6, &sent, quote);
            let out = macs(frame(&want, 63), C1_MAC, BRIDGE_MAC);
            let what = format!("packet too big quoting {quote} bytes");
            expect(
                env,
                "berth_ingress",
                &frame(&ptb, 64),
                TC_ACT_REDIRECT,
                &out,
                &what,
            );
            // XDP leaves IPv6 to the TC program beside it.
            expect(
                env,
                "berth_deliver",
                &frame(&ptb, 64),
                TC_ACT_REDIRECT,
                &out,
                &what,
            );
        }
        assert_eq!(env.counter(Counter::IcmpXlate), 6);
        // Time exceeded and destination unreachable alike.
        for ty in [(TIME_EXCEEDED, 0), (DEST_UNREACH, 3)] {
            let e = error6(ty, ROUTER6, HOST6, &left, usize::MAX);
            let want = error6(ty, ROUTER6, C1_6, &sent, usize::MAX);
            let out = macs(frame(&want, 63), C1_MAC, BRIDGE_MAC);
            expect(
                env,
                "berth_ingress",
                &frame(&e, 64),
                TC_ACT_REDIRECT,
                &out,
                &format!("{ty:?}"),
            );
        }
    });
}

#[test]
fn port_unreachable_from_the_container_leaves_from_the_host_port() {
    in_fixture_ns(|env| {
        setup(env);
        let q = udp(CLIENT6, 5353, HOST6, 8053, 64);
        assert_eq!(env.tc("berth_ingress", &q).code, TC_ACT_REDIRECT);
        // What the container got (hop limit 63), and what the client sent
        // with that hop limit.
        let got = udp(CLIENT6, 5353, C1_6, 53, 63);
        let sent = udp(CLIENT6, 5353, HOST6, 8053, 63);
        let unreach = error6(
            (DEST_UNREACH, PORT_UNREACH),
            C1_6,
            CLIENT6,
            &got,
            usize::MAX,
        );
        let want = error6(
            (DEST_UNREACH, PORT_UNREACH),
            HOST6,
            CLIENT6,
            &sent,
            usize::MAX,
        );
        expect(
            env,
            "berth_reply",
            &frame(&unreach, 64),
            TC_ACT_REDIRECT,
            &macs(frame(&want, 63), CLIENT_MAC, UPLINK_MAC),
            "port unreachable",
        );
        assert_eq!(env.counter(Counter::IcmpXlate), 1);
        // One about a flow nobody tracks is the container's own business.
        let other = udp(CLIENT6, 5999, C1_6, 53, 63);
        let f = frame(
            &error6(
                (DEST_UNREACH, PORT_UNREACH),
                C1_6,
                CLIENT6,
                &other,
                usize::MAX,
            ),
            64,
        );
        expect(env, "berth_reply", &f, TC_OK, &f, "no flow");
    });
}

#[test]
fn forged_errors_are_dropped_and_counted() {
    in_fixture_ns(|env| {
        setup(env);
        open_tcp(env);
        let q = udp(CLIENT6, 5353, HOST6, 8053, 64);
        assert_eq!(env.tc("berth_ingress", &q).code, TC_ACT_REDIRECT);
        let got = udp(CLIENT6, 5353, C1_6, 53, 63);
        // Another container speaks for C1's flow, or C1 to someone else.
        for (src, dst) in [(C2_6, CLIENT6), (C1_6, ROUTER6)] {
            let f = frame(
                &error6((DEST_UNREACH, PORT_UNREACH), src, dst, &got, usize::MAX),
                64,
            );
            expect(
                env,
                "berth_reply",
                &f,
                TC_SHOT,
                &f,
                &format!("{src} -> {dst}"),
            );
        }
        assert_eq!(env.counter(Counter::IcmpForged), 2);
        // From outside, about a reply of a published port no flow sent.
        let never = tcp(HOST6, 8080, CLIENT6, 40999, pkt::ACK);
        let f = frame(
            &error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &never, usize::MAX),
            64,
        );
        expect(env, "berth_ingress", &f, TC_SHOT, &f, "no such flow");
        assert_eq!(env.counter(Counter::IcmpForged), 3);
        // Claiming to come from the host itself.
        let left = tcp(HOST6, 8080, CLIENT6, 40000, pkt::ACK);
        let f = frame(
            &error6((PACKET_TOO_BIG, 0), HOST6, HOST6, &left, usize::MAX),
            64,
        );
        expect(env, "berth_ingress", &f, TC_SHOT, &f, "host source");
        assert_eq!(env.counter(Counter::UplinkSpoofedSource), 1);
        // Forwarding would expire it.
        let f = frame(
            &error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &left, usize::MAX),
            1,
        );
        expect(env, "berth_ingress", &f, TC_SHOT, &f, "hop limit 1");
        assert_eq!(env.counter(Counter::TtlExceeded), 1);
        assert_eq!(env.counter(Counter::IcmpXlate), 0);
    });
}

#[test]
fn what_is_not_an_error_about_a_flow_is_left_alone() {
    in_fixture_ns(|env| {
        setup(env);
        open_tcp(env);
        let left = tcp(HOST6, 8080, CLIENT6, 40000, pkt::ACK);
        let mut cases = vec![
            // The host's own traffic: a port nothing is published on.
            (
                "unpublished port",
                frame(
                    &error6(
                        (PACKET_TOO_BIG, 0),
                        ROUTER6,
                        HOST6,
                        &tcp(HOST6, 22, CLIENT6, 40000, pkt::ACK),
                        usize::MAX,
                    ),
                    64,
                ),
            ),
            // Addressed to someone else than the quoted sender.
            (
                "not to the sender",
                frame(
                    &error6((PACKET_TOO_BIG, 0), ROUTER6, CLIENT6, &left, usize::MAX),
                    64,
                ),
            ),
            // Quotes too short to hold both ports.
            (
                "quote of 44 bytes",
                frame(&error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &left, 44), 64),
            ),
            // A ping to the published address: the host answers it.
            ("echo request", {
                let mut p = Ipv6Packet::icmpv6(128, 0);
                (p.src, p.dst) = (CLIENT6, HOST6);
                p.frame()
            }),
        ];
        // A quote behind an extension header (not translated: decided).
        let mut hidden = frame(
            &error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &left, usize::MAX),
            64,
        );
        hidden[L4 + 8 + 6] = 60;
        cases.push(("quoted next header not tcp/udp", hidden));
        for (what, f) in cases {
            expect(env, "berth_ingress", &f, TC_OK, &f, what);
        }
        assert_eq!(env.counter(Counter::IcmpXlate), 0);
        assert_eq!(env.counter(Counter::IcmpForged), 0);
    });
}
