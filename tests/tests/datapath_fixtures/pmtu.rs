//! Path-MTU discovery through a published port (`ebpf/src/pmtu.rs`): a
//! client packet longer than its container route's MTU is answered, TC and
//! XDP alike, with ICMP "fragmentation needed" from the address it was
//! sent to, quoting it as the client sent it; without DF it is dropped as
//! it came. The fixture namespace's bridge (`docker0`) has MTU 1500; a
//! smaller one comes from a route to one container (`ip route ... mtu`).
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, Packet, HOST6},
    testrun::*,
};
use berth_maps::{Counter, FlowKey6, NatEntry6, XDP_HANDOFF_MAGIC};

use crate::{
    ipv6::{publish6, C1_6},
    run::{hex, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    table::{client_tcp, client_udp, publish_defaults},
};

/// The frame that must answer `about` (a client's frame, too long for
/// `mtu`): built from scratch, checksums over the whole header and
/// message. The quote is the IPv4 header and the first 8 bytes of UDP or
/// the 20-byte TCP header.
pub(crate) fn frag_needed(about: &Packet, mtu: u16) -> Vec<u8> {
    let l4 = if about.proto == pkt::TCP { 20 } else { 8 };
    let quote = 20 + about.ip_options.len() + l4;
    let [hi, lo] = mtu.to_be_bytes();
    let mut p = Packet::icmp_error(about.dst, about.src, 3, 4, [0, 0, hi, lo], about, quote);
    p.eth_dst = about.eth_src;
    p.eth_src = about.eth_dst;
    p.tos = 0xc0;
    p.ip_id = 0;
    p.frag = 0;
    p.ttl = 64;
    p.frame()
}

/// One frame through the TC and then the XDP uplink program.
fn both(env: &Env, frame: &[u8]) -> [Verdict; 2] {
    [env.tc("berth_ingress", frame), env.xdp("berth_xdp", frame)]
}

/// An XDP answer: the hand-off to `berth_deliver` (back out of the test
/// run's device) and the frame after it.
fn handed_back(v: &Verdict) -> (&[u8], &[u8]) {
    v.frame.split_at(8.min(v.frame.len()))
}

fn handoff_back() -> Vec<u8> {
    let mut m = XDP_HANDOFF_MAGIC.to_ne_bytes().to_vec();
    m.extend(ifindex("lo").to_ne_bytes());
    m
}

/// Checks `p`'s answer from both hooks.
fn assert_answered(env: &Env, p: &Packet, mtu: u16, what: &str) {
    let want = frag_needed(p, mtu);
    let [tc, xdp] = both(env, &p.frame());
    assert_eq!(tc.code, TC_ACT_REDIRECT, "tc: {what}");
    assert_eq!(hex(&tc.frame), hex(&want), "tc: {what}");
    assert_eq!(xdp.code, XDP_PASS, "xdp: {what}");
    let (meta, frame) = handed_back(&xdp);
    assert_eq!(meta, handoff_back(), "xdp hand-off: {what}");
    assert_eq!(hex(frame), hex(&want), "xdp: {what}");
}

fn nat_has(env: &mut Env, p: &Packet) -> bool {
    env.nat_entries().iter().any(|(k, _)| {
        k.dst_port_be == p.sport.to_be() && k.dst_addr_be == u32::from_ne_bytes(p.src.octets())
    })
}

#[test]
fn df_udp_datagram_over_the_bridge_mtu_is_answered_with_fragmentation_needed() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let mut p = client_udp(8053).with_payload_len(1473);
        p.frag = pkt::IP_DF;
        assert_answered(env, &p, 1500, "1501-byte DF datagram");
        assert_eq!(env.counter(Counter::FragNeededSent), 2);
        assert_eq!(env.counter(Counter::NoRoute), 0);
        // Its flow was never delivered: nothing is left open for it.
        assert!(!nat_has(env, &p), "the undelivered datagram's flow");
        // One that fits still goes to the container, the flow with it.
        let mut ok = client_udp(8053).with_payload_len(1472);
        ok.frag = pkt::IP_DF;
        assert_eq!(env.tc("berth_ingress", &ok.frame()).code, TC_ACT_REDIRECT);
        assert!(nat_has(env, &ok));
        // With IP options the quote holds them (and 8 bytes of UDP).
        let mut p = client_udp(8053).with_payload_len(1469);
        p.sport = 5001;
        p.frag = pkt::IP_DF;
        p.ip_options = vec![1, 1, 1, 0];
        assert_answered(env, &p, 1500, "1501-byte DF datagram with options");
    });
}

#[test]
fn df_tcp_segment_over_a_route_mtu_is_answered_and_its_flow_stays() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        // Only C1's route is smaller (as an overlay or VPN path is); the
        // FIB reports a route's MTU when it is locked.
        std::process::Command::new("ip")
            .args([
                "route",
                "add",
                "172.17.0.2/32",
                "dev",
                "docker0",
                "mtu",
                "lock",
                "1280",
            ])
            .status()
            .expect("ip route")
            .success()
            .then_some(())
            .expect("route with mtu 1280");
        let syn = client_tcp(8080);
        assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_REDIRECT);
        let mut p = client_tcp(8080).with_payload_len(1241);
        p.tcp_flags = pkt::ACK | pkt::PSH;
        assert_answered(env, &p, 1280, "1281-byte TCP segment");
        // The established part of the flow is the client's: it stays.
        assert!(nat_has(env, &syn));
        let mut fits = client_tcp(8080).with_payload_len(1240);
        fits.tcp_flags = pkt::ACK;
        assert_eq!(env.tc("berth_ingress", &fits.frame()).code, TC_ACT_REDIRECT);
    });
}

#[test]
fn udp_over_the_mtu_without_df_is_dropped_as_it_came() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let p = client_udp(8053).with_payload_len(1473);
        let [tc, xdp] = both(env, &p.frame());
        assert_eq!((tc.code, xdp.code), (TC_ACT_SHOT, XDP_DROP));
        assert_eq!(tc.frame, p.frame());
        assert_eq!(xdp.frame, p.frame());
        assert_eq!(env.counter(Counter::TooBigNoDf), 2);
        assert_eq!(env.counter(Counter::FragNeededSent), 0);
        assert!(!nat_has(env, &p), "the undelivered datagram's flow");
    });
}

#[test]
fn broadcast_frames_and_unanswerable_sources_get_no_icmp() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let too_big = |f: &dyn Fn(&mut Packet)| {
            let mut p = client_udp(8053).with_payload_len(1473);
            p.frag = pkt::IP_DF;
            f(&mut p);
            p
        };
        let cases: [(&str, Packet); 5] = [
            ("broadcast frame", too_big(&|p| p.eth_dst = [0xff; 6])),
            (
                "multicast frame",
                too_big(&|p| p.eth_dst = [0x01, 0, 0x5e, 0, 0, 1]),
            ),
            (
                "source in 0.0.0.0/8",
                too_big(&|p| p.src = [0, 1, 2, 3].into()),
            ),
            (
                "multicast source",
                too_big(&|p| p.src = [224, 0, 0, 9].into()),
            ),
            (
                "broadcast source",
                too_big(&|p| p.src = [255, 255, 255, 255].into()),
            ),
        ];
        for (what, p) in &cases {
            let [tc, xdp] = both(env, &p.frame());
            assert_eq!((tc.code, xdp.code), (TC_ACT_SHOT, XDP_DROP), "{what}");
            assert!(!nat_has(env, p), "{what}: its flow");
        }
        assert_eq!(
            env.counter(Counter::FragNeededSuppressed),
            2 * cases.len() as u64
        );
        assert_eq!(env.counter(Counter::FragNeededSent), 0);
    });
}

#[test]
fn fragmentation_needed_answers_are_rate_limited() {
    in_fixture_ns(|env| {
        env.host_addr(HOST);
        env.publish(&binding(
            std::net::Ipv4Addr::UNSPECIFIED,
            8053,
            C1,
            53,
            Protocol::Udp,
        ));
        let mut p = client_udp(8053).with_payload_len(1473);
        p.frag = pkt::IP_DF;
        let n = 400;
        let start = std::time::Instant::now();
        for i in 0..n {
            p.sport = 10000 + i;
            let v = env.tc("berth_ingress", &p.frame());
            assert!(v.code == TC_ACT_REDIRECT || v.code == TC_ACT_SHOT);
        }
        let (sent, held) = (
            env.counter(Counter::FragNeededSent),
            env.counter(Counter::FragNeededSuppressed),
        );
        assert_eq!(sent + held, u64::from(n));
        // At most a burst per CPU and what each earned meanwhile.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as u64;
        let earned = (start.elapsed().as_secs_f64() * berth_maps::PMTU_ICMP_PER_SEC as f64) as u64;
        let most = cpus * (berth_maps::PMTU_ICMP_BURST + earned + 1);
        assert!(sent <= most, "{sent} of {n} answered, at most {most}");
        assert!(held > 0, "{sent} of {n} answered");
    });
}

/// The frame that must answer `about` (a client's IPv6 frame, too long
/// for `mtu`): `ICMPv6` packet too big from the address it was sent to,
/// quoting its first 1 232 bytes, MACs swapped.
fn packet_too_big(about: &Ipv6Packet, mtu: u32) -> Vec<u8> {
    let mut p = Ipv6Packet::icmpv6(2, 0);
    (p.src, p.dst, p.hop_limit) = (about.dst, about.src, 64);
    p.payload = mtu.to_be_bytes().to_vec();
    p.payload
        .extend(&about.frame()[pkt::ETH_LEN..pkt::ETH_LEN + 1232]);
    let mut f = p.frame();
    let (dst, src) = (f[..6].to_vec(), f[6..12].to_vec());
    f[..6].copy_from_slice(&src);
    f[6..12].copy_from_slice(&dst);
    f
}

#[test]
fn ipv6_datagram_over_the_bridge_mtu_is_answered_with_packet_too_big() {
    in_fixture_ns(|env| {
        publish6(env, HOST6, 8053, Protocol::Udp, 53);
        env.host_addr6(HOST6);
        let mut p = Ipv6Packet::new(pkt::UDP, 8053);
        p.payload = (0..1453).map(|i| (i * 13 + 1) as u8).collect();
        assert_eq!(p.frame().len(), pkt::ETH_LEN + 1501);
        let v = env.tc("berth_ingress", &p.frame());
        assert_eq!(v.code, TC_ACT_REDIRECT);
        assert_eq!(hex(&v.frame), hex(&packet_too_big(&p, 1500)));
        assert_eq!(env.counter(Counter::FragNeededSent), 1);
        assert_eq!(env.counter(Counter::NoRoute), 0);
        let open = env.map_entries::<FlowKey6, NatEntry6>(berth_maps::NAT6_NEW_MAP);
        assert!(open.is_empty(), "the undelivered datagram's flow: {open:?}");
        // One that fits goes to the container, translated.
        p.payload.pop();
        let v = env.tc("berth_ingress", &p.frame());
        assert_eq!(v.code, TC_ACT_REDIRECT);
        assert_eq!(
            &v.frame[pkt::ETH_LEN + 24..pkt::ETH_LEN + 40],
            &C1_6.octets()
        );
        // A frame to every station is never answered.
        let mut m = Ipv6Packet::new(pkt::UDP, 8053);
        m.sport = 40001;
        m.payload = vec![7; 1453];
        let mut f = m.frame();
        f[..6].fill(0xff);
        assert_eq!(env.tc("berth_ingress", &f).code, TC_ACT_SHOT);
        assert_eq!(env.counter(Counter::FragNeededSent), 1);
        assert_eq!(env.counter(Counter::FragNeededSuppressed), 1);
    });
}
