//! NAT66 (`berth_ingress6` and `berth_reply6`, tail-called by
//! `berth_ingress` and `berth_reply`): frame in -> verdict and exact frame
//! out. Every expected frame is built from scratch by `pkt` (checksums
//! over the whole packet with the IPv6 pseudo header); the programs update
//! them incrementally. The fixture namespace routes `2001:db8::/64` on the
//! uplink and `fd00::/64` on the bridge, neighbours resolved.
use std::net::Ipv6Addr;

use aya::maps::{Array, MapData};
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::{
    Counter, FlowKey6, NatEntry6, CONFIG_MAP, CONFIG_NO_POLICY, NAT6_MAP, NAT6_NEW_MAP,
};

use crate::{ipv6::publish6, run::TC_ACT_REDIRECT};

pub(crate) const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
const L4: usize = pkt::ETH_LEN + 40;
const TC_OK: u32 = 0;
pub(crate) const TC_SHOT: u32 = 2;

fn no_policy(env: &mut Env, on: bool) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut(CONFIG_MAP).unwrap()).unwrap();
    m.set(CONFIG_NO_POLICY, u64::from(on), 0).unwrap();
}

/// `[::]:8080` -> `[fd00::2]:80` (TCP), `[2001:db8::1]:8053` -> `:53`
/// (UDP); `2001:db8::1` is the host's; nobody has policy.
pub(crate) fn setup(env: &mut Env) {
    publish6(env, Ipv6Addr::UNSPECIFIED, 8080, Protocol::Tcp, 80);
    publish6(env, HOST6, 8053, Protocol::Udp, 53);
    env.host_addr6(HOST6);
    no_policy(env, true);
}

/// A TCP segment with these flags (sequence number `0x1000_0000`, ack
/// `0x2000_0000`), its checksum computed over the whole segment.
pub(crate) fn tcp(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    hop: u8,
    flags: u8,
) -> Vec<u8> {
    seg(
        src,
        sport,
        dst,
        dport,
        hop,
        flags,
        (0x1000_0000, 0x2000_0000),
    )
}

/// [`tcp`] with these (sequence, acknowledgement) numbers.
pub(crate) fn seg(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    hop: u8,
    flags: u8,
    (seq, ack): (u32, u32),
) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::TCP, dport);
    (p.src, p.dst, p.sport, p.hop_limit) = (src, dst, sport, hop);
    let mut f = p.frame();
    f[L4 + 13] = flags;
    f[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
    f[L4 + 8..L4 + 12].copy_from_slice(&ack.to_be_bytes());
    f[L4 + 16..L4 + 18].copy_from_slice(&[0, 0]);
    let c = pkt::csum(&f[L4..], pkt::pseudo_sum6(src, dst, pkt::TCP, f.len() - L4));
    f[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

pub(crate) fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, hop: u8) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport, p.hop_limit) = (src, dst, sport, hop);
    p.payload = b"hello over ipv6".to_vec();
    p.frame()
}

/// `f` as sent to `dst` from `src` (the MACs the FIB's next hop gives).
pub(crate) fn macs(mut f: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

pub(crate) fn to_ctr(f: Vec<u8>) -> Vec<u8> {
    macs(f, C1_MAC, BRIDGE_MAC)
}

pub(crate) fn to_client(f: Vec<u8>) -> Vec<u8> {
    macs(f, CLIENT_MAC, UPLINK_MAC)
}

pub(crate) fn key(proto: u8, ctr_port: u16, client_port: u16) -> FlowKey6 {
    FlowKey6 {
        src_addr: C1_6.octets(),
        dst_addr: CLIENT6.octets(),
        src_port_be: ctr_port.to_be(),
        dst_port_be: client_port.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// (established?, entry) of a tracked IPv6 flow.
pub(crate) fn flow(env: &Env, k: &FlowKey6) -> Option<(bool, NatEntry6)> {
    env.map_get::<FlowKey6, NatEntry6>(NAT6_MAP, k)
        .map(|e| (true, e))
        .or_else(|| env.map_get(NAT6_NEW_MAP, k).map(|e| (false, e)))
}

/// Runs `prog` on `input`: verdict `code` and exactly `out` (`what` names
/// the case).
pub(crate) fn expect(env: &Env, prog: &str, input: &[u8], code: u32, out: &[u8], what: &str) {
    let v = env.tc(prog, input);
    assert_eq!(v.code, code, "{what}: verdict");
    assert!(
        v.frame == out,
        "{what}: frame\n got  {:02x?}\n want {:02x?}",
        v.frame,
        out
    );
}

#[test]
fn a_tcp_handshake_is_translated_both_ways_and_tracked_to_established() {
    in_fixture_ns(|env| {
        setup(env);
        let (syn, ack, synack) = (pkt::SYN, pkt::ACK, pkt::SYN | pkt::ACK);
        expect(
            env,
            "berth_ingress",
            &tcp(CLIENT6, 40000, HOST6, 8080, 64, syn),
            TC_ACT_REDIRECT,
            &to_ctr(tcp(CLIENT6, 40000, C1_6, 80, 63, syn)),
            "syn",
        );
        let k = key(pkt::TCP, 80, 40000);
        let (est, e) = flow(env, &k).expect("the syn opened a flow");
        assert!(!est, "unestablished until the handshake completes");
        assert_eq!(e.host_addr, HOST6.octets());
        assert_eq!(u16::from_be(e.host_port_be), 8080);
        assert_eq!(u16::from_be(e.client_port_be), 40000);
        // The container's SYN-ACK answers the client's SYN (seq + 1).
        let answer = (0x3000_0000, 0x1000_0001);
        expect(
            env,
            "berth_reply",
            &seg(C1_6, 80, CLIENT6, 40000, 64, synack, answer),
            TC_ACT_REDIRECT,
            &to_client(seg(HOST6, 8080, CLIENT6, 40000, 63, synack, answer)),
            "syn-ack",
        );
        let last_ack = seg(
            CLIENT6,
            40000,
            HOST6,
            8080,
            64,
            ack,
            (0x1000_0001, 0x3000_0001),
        );
        let v = env.tc("berth_ingress", &last_ack);
        assert_eq!(v.code, TC_ACT_REDIRECT, "the handshake's ack");
        let (est, e) = flow(env, &k).expect("still tracked");
        assert!(est, "established after the client's ack");
        assert_eq!(e.packets, [2, 1]);
        assert_eq!(env.counter(Counter::IngressDnat), 2);
        assert_eq!(env.counter(Counter::ReplySnat), 1);
        // XDP leaves IPv6 alone; its TC partner translates.
        let f = tcp(CLIENT6, 40000, HOST6, 8080, 64, ack);
        let x = env.xdp("berth_xdp", &f);
        assert_eq!(
            (x.code, x.frame == f),
            (2, true),
            "xdp passes ipv6 untouched"
        );
        expect(
            env,
            "berth_deliver",
            &f,
            TC_ACT_REDIRECT,
            &to_ctr(tcp(CLIENT6, 40000, C1_6, 80, 63, ack)),
            "berth_deliver beside xdp",
        );
    });
}

#[test]
fn udp_is_translated_both_ways_and_its_first_reply_establishes_it() {
    in_fixture_ns(|env| {
        setup(env);
        expect(
            env,
            "berth_ingress",
            &udp(CLIENT6, 5353, HOST6, 8053, 64),
            TC_ACT_REDIRECT,
            &to_ctr(udp(CLIENT6, 5353, C1_6, 53, 63)),
            "datagram",
        );
        let k = key(pkt::UDP, 53, 5353);
        assert_eq!(flow(env, &k).map(|f| f.0), Some(false));
        expect(
            env,
            "berth_reply",
            &udp(C1_6, 53, CLIENT6, 5353, 64),
            TC_ACT_REDIRECT,
            &to_client(udp(HOST6, 8053, CLIENT6, 5353, 63)),
            "reply",
        );
        assert_eq!(flow(env, &k).map(|f| f.0), Some(true), "established");
        // Published on 2001:db8::1 only: another address of the port is
        // not the mapping's.
        let f = udp(CLIENT6, 5353, OTHER6, 8053, 64);
        expect(env, "berth_ingress", &f, TC_OK, &f, "another address");
    });
}

#[test]
fn what_may_not_open_a_flow_is_refused_or_left_alone() {
    in_fixture_ns(|env| {
        setup(env);
        let syn = pkt::SYN;
        // Only a SYN opens a TCP flow.
        for flags in [pkt::ACK, pkt::SYN | pkt::ACK, pkt::RST, pkt::FIN | pkt::ACK] {
            let f = tcp(CLIENT6, 40001, HOST6, 8080, 64, flags);
            expect(
                env,
                "berth_ingress",
                &f,
                TC_SHOT,
                &f,
                &format!("flags {flags:#x}"),
            );
        }
        assert_eq!(env.counter(Counter::NatNoFlow), 4);
        // The wildcard covers the host's addresses only: routed traffic is
        // the kernel's.
        let f = tcp(CLIENT6, 40002, OTHER6, 8080, 64, syn);
        expect(
            env,
            "berth_ingress",
            &f,
            TC_OK,
            &f,
            "wildcard, not the host's address",
        );
        // A client claiming the host's address, or loopback.
        for src in [HOST6, Ipv6Addr::LOCALHOST] {
            let f = tcp(src, 40003, HOST6, 8080, 64, syn);
            expect(
                env,
                "berth_ingress",
                &f,
                TC_SHOT,
                &f,
                &format!("source {src}"),
            );
        }
        assert_eq!(env.counter(Counter::UplinkSpoofedSource), 2);
        // Forwarding would expire it.
        let f = tcp(CLIENT6, 40004, HOST6, 8080, 1, syn);
        expect(env, "berth_ingress", &f, TC_SHOT, &f, "hop limit 1");
        assert_eq!(env.counter(Counter::TtlExceeded), 1);
        // A reply of no flow is the container's own traffic.
        let f = tcp(C1_6, 80, CLIENT6, 49999, 64, pkt::SYN | pkt::ACK);
        expect(env, "berth_reply", &f, TC_OK, &f, "reply of no flow");
        // The container's task has policy and no IPv6 rule lets it in.
        no_policy(env, false);
        env.set_endpoint6(C1_6, 7, true);
        let f = tcp(CLIENT6, 40005, HOST6, 8080, 64, syn);
        expect(
            env,
            "berth_ingress",
            &f,
            TC_SHOT,
            &f,
            "refused by its security groups",
        );
        assert_eq!(env.counter(Counter::PolicyDeniedIngress), 1);
        assert_eq!(env.counter(Counter::IngressDnat), 0);
        assert!(
            env.map_entries::<FlowKey6, NatEntry6>(NAT6_NEW_MAP)
                .is_empty()
                && env.map_entries::<FlowKey6, NatEntry6>(NAT6_MAP).is_empty(),
            "nothing tracked"
        );
    });
}
