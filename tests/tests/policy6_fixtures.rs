//! Security groups over IPv6 at a container's veth (issue 15), through
//! `BPF_PROG_TEST_RUN`: the maps are written as the control plane would,
//! frames go through `berth_from_ctr` / `berth_to_ctr` on a given bridge
//! port, and each verdict and the frame are checked (policy never
//! rewrites a frame).
//!
//! No IPv6 program judges a container's IPv6 yet, so IPv6 from or to a
//! container with policy is dropped and counted (`policy6_unjudged`),
//! neighbour discovery excepted; a container without policy keeps IPv6 as
//! Docker gives it.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, MapData};
use berth_integration::{
    pkt::{self, Ipv6Packet, V6Ext},
    testrun::*,
};
use berth_maps::{Counter, CONFIG_NO_POLICY};

const OK: i32 = 0;
const SHOT: i32 = 2;
/// A task with a group (C1), one without (C3).
const C3: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);
const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const C3_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
const ROUTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// ICMPv6 types of neighbour discovery and echo.
const RS: u8 = 133;
const RA: u8 = 134;
const NS: u8 = 135;
const NA: u8 = 136;
const REDIRECT: u8 = 137;
const ECHO: u8 = 128;

struct Ports {
    with_policy: u32,
    without: u32,
}

/// C1 (policy) and C3 (no groups), each on a port whose IPv4 address the
/// daemon learned.
fn setup(env: &mut Env) -> Ports {
    let with_policy = env.add_port("pc1");
    env.port_addrs(with_policy, &[C1]);
    let without = env.add_port("pc3");
    env.port_addrs(without, &[C3]);
    env.set_endpoint(C1, 1, true);
    env.set_endpoint(C3, 3, false);
    Ports {
        with_policy,
        without,
    }
}

fn tcp(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::TCP, dport);
    (p.src, p.dst) = (src, dst);
    p.frame()
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.payload) = (src, dst, b"dns?".to_vec());
    p.frame()
}

/// An `ICMPv6` message as neighbour discovery sends it: hop limit 255.
fn icmp6(ty: u8, src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6Packet {
    let mut p = Ipv6Packet::icmpv6(ty, 0);
    (p.src, p.dst, p.hop_limit) = (src, dst, 255);
    p
}

/// The verdict of `prog` for `frame` on bridge port `port`; the frame
/// must come out as it went in.
fn on(env: &Env, prog: &str, port: u32, frame: &[u8]) -> i32 {
    let v = env.tc_on(prog, frame, port);
    assert_eq!(v.frame, frame, "{prog} changed a frame");
    v.code as i32
}

fn sent(env: &Env, port: u32, frame: &[u8]) -> i32 {
    on(env, "berth_from_ctr", port, frame)
}

fn received(env: &Env, port: u32, frame: &[u8]) -> i32 {
    on(env, "berth_to_ctr", port, frame)
}

fn unjudged(env: &Env) -> u64 {
    env.counter(Counter::Policy6Unjudged)
}

#[test]
fn ipv6_of_a_container_with_policy_never_passes_unjudged() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let out = [
            tcp(C1_6, C3_6, 80),
            udp(C1_6, C3_6, 53),
            icmp6(ECHO, C1_6, C3_6).frame(),
        ];
        for f in &out {
            assert_eq!(sent(env, p.with_policy, f), SHOT);
        }
        assert_eq!(unjudged(env), 3);
        // Whatever source it claims, and whatever the receiver is.
        assert_eq!(sent(env, p.with_policy, &tcp(C3_6, C1_6, 80)), SHOT);
        // Towards it, from anywhere (the uplink's IPv6 passes to the
        // stack, which forwards it to the container's port).
        let client = pkt::CLIENT6;
        for f in [
            tcp(client, C1_6, 80),
            udp(C3_6, C1_6, 53),
            icmp6(ECHO, client, C1_6).frame(),
        ] {
            assert_eq!(received(env, p.with_policy, &f), SHOT);
        }
        assert_eq!(unjudged(env), 7);
        // Behind extension headers and as fragments just the same.
        let frag = Ipv6Packet::new(pkt::UDP, 53).with_ext(&[
            V6Ext::HopByHop,
            V6Ext::Fragment {
                offset: 8,
                more: false,
            },
        ]);
        assert_eq!(received(env, p.with_policy, &frag.frame()), SHOT);
        assert_eq!(unjudged(env), 8);
    });
}

#[test]
fn a_container_without_policy_keeps_ipv6_as_docker_gives_it() {
    in_fixture_ns(|env| {
        let p = setup(env);
        assert_eq!(sent(env, p.without, &tcp(C3_6, pkt::CLIENT6, 443)), OK);
        assert_eq!(received(env, p.without, &tcp(pkt::CLIENT6, C3_6, 80)), OK);
        assert_eq!(received(env, p.without, &udp(C1_6, C3_6, 53)), OK);
        assert_eq!(
            sent(env, p.without, &icmp6(RA, ROUTER_LL, ALL_NODES).frame()),
            OK
        );
        assert_eq!(unjudged(env), 0);
    });
}

#[test]
fn neighbour_discovery_passes_a_container_with_policy_but_not_a_rogue_router() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
        // Resolving and answering neighbours, soliciting routers.
        assert_eq!(
            sent(env, p.with_policy, &icmp6(NS, C1_6, solicited).frame()),
            OK
        );
        assert_eq!(
            sent(env, p.with_policy, &icmp6(NA, C1_6, ROUTER_LL).frame()),
            OK
        );
        assert_eq!(
            sent(env, p.with_policy, &icmp6(RS, C1_6, ALL_NODES).frame()),
            OK
        );
        assert_eq!(
            received(env, p.with_policy, &icmp6(NS, ROUTER_LL, solicited).frame()),
            OK
        );
        assert_eq!(
            received(env, p.with_policy, &icmp6(NA, ROUTER_LL, C1_6).frame()),
            OK
        );
        assert_eq!(
            received(env, p.with_policy, &icmp6(RA, ROUTER_LL, ALL_NODES).frame()),
            OK
        );
        assert_eq!(unjudged(env), 0);
        // A container with policy posing as a router, or redirecting
        // others; router solicitations are not for it to receive.
        assert_eq!(
            sent(env, p.with_policy, &icmp6(RA, C1_6, ALL_NODES).frame()),
            SHOT
        );
        assert_eq!(
            sent(env, p.with_policy, &icmp6(REDIRECT, C1_6, C3_6).frame()),
            SHOT
        );
        assert_eq!(
            received(env, p.with_policy, &icmp6(RS, C3_6, ALL_NODES).frame()),
            SHOT
        );
        assert_eq!(unjudged(env), 3);
    });
}

#[test]
fn only_real_neighbour_discovery_is_let_through() {
    in_fixture_ns(|env| {
        let p = setup(env);
        // Routed (hop limit below 255): not neighbour discovery.
        let mut routed = icmp6(NS, C1_6, C3_6);
        routed.hop_limit = 254;
        assert_eq!(sent(env, p.with_policy, &routed.frame()), SHOT);
        // Behind an extension header.
        let hidden = icmp6(NA, C1_6, C3_6).with_ext(&[V6Ext::DestOpts]);
        assert_eq!(sent(env, p.with_policy, &hidden.frame()), SHOT);
        // Cut short before the type.
        let mut cut = icmp6(NS, C1_6, C3_6).frame();
        cut.truncate(pkt::ETH_LEN + 40);
        assert_eq!(sent(env, p.with_policy, &cut), SHOT);
        assert_eq!(unjudged(env), 3);
    });
}

#[test]
fn a_port_whose_addresses_are_unknown_may_carry_policy() {
    in_fixture_ns(|env| {
        setup(env);
        let unknown = env.add_port("pc9");
        assert_eq!(sent(env, unknown, &tcp(C3_6, pkt::CLIENT6, 443)), SHOT);
        assert_eq!(received(env, unknown, &tcp(pkt::CLIENT6, C3_6, 80)), SHOT);
        assert_eq!(unjudged(env), 2);
        // Learned, and without policy: open.
        env.port_addrs(unknown, &[Ipv4Addr::new(172, 17, 0, 9)]);
        assert_eq!(sent(env, unknown, &tcp(C3_6, pkt::CLIENT6, 443)), OK);
    });
}

#[test]
fn with_no_policy_anywhere_ipv6_is_not_looked_at() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let mut m: Array<&mut MapData, u64> =
            Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
        m.set(CONFIG_NO_POLICY, 1, 0).unwrap();
        let unknown = env.add_port("pc9");
        for port in [p.with_policy, unknown] {
            assert_eq!(sent(env, port, &tcp(C1_6, pkt::CLIENT6, 443)), OK);
            assert_eq!(received(env, port, &tcp(pkt::CLIENT6, C1_6, 80)), OK);
        }
        assert_eq!(unjudged(env), 0);
    });
}
