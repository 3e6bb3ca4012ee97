//! Security groups over IPv6 at a container's veth (issue 15), through
//! `BPF_PROG_TEST_RUN`: the maps are written as the control plane would,
//! frames go through `berth_from_ctr` / `berth_to_ctr` on a given bridge
//! port, and each verdict and the frame are checked (policy never
//! rewrites a frame).
//!
//! Without its IPv6 program, IPv6 from or to a container with policy is
//! dropped by the IPv4 programs and counted (`policy6_unjudged`),
//! neighbour discovery excepted; a container without policy keeps IPv6 as
//! Docker gives it. `berth_from_ctr6` / `berth_to_ctr6` judge it: each its
//! own container's side (egress rules where it leaves, ingress rules where
//! it arrives), each flow tracked at the port that allowed it.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, HashMap, MapData};
use berth::datapath::{PolicyRule, RulePeer, RuleProto};
use berth_integration::{
    pkt::{self, Ipv6Packet, V6Ext},
    testrun::*,
};
use berth_maps::{tail, Counter, SgMember6, CONFIG_NO_POLICY, DIR_EGRESS, DIR_INGRESS};

const OK: i32 = 0;
const SHOT: i32 = 2;
/// A task with a group (C1), one without (C3).
const C3: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);
const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const C3_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
const ROUTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// `ICMPv6` types of neighbour discovery and echo.
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

/// As [`setup`], with the judges' `BERTH_TAILS` slots emptied: what the
/// IPv4 programs do when the tail call falls through.
fn without_judges(env: &mut Env) -> Ports {
    env.clear_tail(tail::FROM_CTR6);
    env.clear_tail(tail::TO_CTR6);
    setup(env)
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
        let p = without_judges(env);
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
        let p = without_judges(env);
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
        let p = without_judges(env);
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
        // others. (Router solicitations reach it as every bridge port:
        // harmless.)
        assert_eq!(
            sent(env, p.with_policy, &icmp6(RA, C1_6, ALL_NODES).frame()),
            SHOT
        );
        assert_eq!(
            sent(env, p.with_policy, &icmp6(REDIRECT, C1_6, C3_6).frame()),
            SHOT
        );
        // A redirect towards it is not neighbour discovery it needs.
        assert_eq!(
            received(
                env,
                p.with_policy,
                &icmp6(REDIRECT, ROUTER_LL, C1_6).frame()
            ),
            SHOT
        );
        assert_eq!(
            received(env, p.with_policy, &icmp6(RS, C3_6, ALL_NODES).frame()),
            OK
        );
        assert_eq!(unjudged(env), 3);
    });
}

#[test]
fn only_real_neighbour_discovery_is_let_through() {
    in_fixture_ns(|env| {
        let p = without_judges(env);
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
        without_judges(env);
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
        let p = without_judges(env);
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

// ------------------------------------------------------------ the judges

const FROM6: &str = "berth_from_ctr6";
const TO6: &str = "berth_to_ctr6";
const C2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 7);
const C1_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const DB8: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);

fn add_member6(env: &mut Env, sg_id: u32, ip: Ipv6Addr) {
    let mut m: HashMap<&mut MapData, SgMember6, u32> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_SG_MEMBERS6").unwrap()).unwrap();
    let k = SgMember6 {
        sg_id,
        addr: ip.octets(),
    };
    m.insert(k, 1, 0).unwrap();
}

struct Judged {
    c1: u32,
    c2: u32,
}

/// C1 (task 1): TCP 80 from `2001:db8::/32` and from `0.0.0.0/0` (IPv4's,
/// which must not admit IPv6), echo requests from anywhere, UDP 5353
/// from group 7; out: UDP 53 to `2001:db8::/32` only. C2 (task 2): groups
/// with no rules. Both IPv6 addresses known.
fn judged(env: &mut Env) -> Judged {
    let p = setup(env);
    let c2 = env.add_port("pc2");
    env.port_addrs(c2, &[C2]);
    env.set_endpoint(C2, 2, true);
    env.set_endpoint6(C1_6, 1, true);
    env.set_endpoint6(C2_6, 2, true);
    let tcp = Some(RuleProto::Tcp);
    env.set_rules6(
        1,
        DIR_INGRESS,
        &[
            rule(tcp, (80, 80), RulePeer::Cidr6(DB8, 32)),
            rule(tcp, (80, 80), RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0)),
            PolicyRule {
                icmp_type: Some(128),
                ..rule(
                    Some(RuleProto::Icmp6),
                    (0, 0),
                    RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0),
                )
            },
            rule(Some(RuleProto::Udp), (5353, 5353), RulePeer::Group(7)),
        ],
    );
    env.set_rules6(
        1,
        DIR_EGRESS,
        &[rule(
            Some(RuleProto::Udp),
            (53, 53),
            RulePeer::Cidr6(DB8, 32),
        )],
    );
    env.set_rules6(2, DIR_INGRESS, &[]);
    env.set_rules6(2, DIR_EGRESS, &[]);
    Judged {
        c1: p.with_policy,
        c2,
    }
}

fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = tcp(src, dst, dport);
    // Ipv6Packet renders a SYN from port 40000; set the ports and flags,
    // then the checksum again.
    let l4 = pkt::ETH_LEN + 40;
    f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    f[l4 + 13] = flags;
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = pkt::csum(&f[l4..], pkt::pseudo_sum6(src, dst, pkt::TCP, f.len() - l4));
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport, p.payload) = (src, dst, sport, b"q".to_vec());
    p.frame()
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8) -> Vec<u8> {
    let mut p = Ipv6Packet::icmpv6(ty, 0);
    (p.src, p.dst) = (src, dst);
    p.frame()
}

/// An `ICMPv6` error from `src` to `dst` quoting `about` (a frame).
fn error6(ty: u8, src: Ipv6Addr, dst: Ipv6Addr, about: &[u8]) -> Vec<u8> {
    let mut p = Ipv6Packet::icmpv6(ty, 0);
    (p.src, p.dst) = (src, dst);
    p.payload = vec![0, 0, 0x05, 0x00];
    p.payload.extend(&about[pkt::ETH_LEN..pkt::ETH_LEN + 48]);
    p.frame()
}

fn counter(env: &Env, c: Counter) -> u64 {
    env.counter(c)
}

#[test]
fn ingress_rules_admit_their_ipv6_cidr_only_and_replies_follow() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let client = pkt::CLIENT6;
        assert_eq!(
            on(env, TO6, j.c1, &tcp6(client, 40000, C1_6, 80, pkt::SYN)),
            OK
        );
        // The reply leaves as tracked, whatever the egress rules say.
        let syn_ack = tcp6(C1_6, 80, client, 40000, pkt::SYN | pkt::ACK);
        assert_eq!(on(env, FROM6, j.c1, &syn_ack), OK);
        assert_eq!(
            on(env, TO6, j.c1, &tcp6(client, 40000, C1_6, 80, pkt::ACK)),
            OK
        );
        let denied = counter(env, Counter::PolicyDeniedIngress);
        // Outside 2001:db8::/32 (IPv4's 0.0.0.0/0 admits no IPv6), or
        // another port.
        assert_eq!(
            on(env, TO6, j.c1, &tcp6(STRANGER6, 40001, C1_6, 80, pkt::SYN)),
            SHOT
        );
        assert_eq!(
            on(env, TO6, j.c1, &tcp6(client, 40002, C1_6, 81, pkt::SYN)),
            SHOT
        );
        assert_eq!(counter(env, Counter::PolicyDeniedIngress), denied + 2);
        // Not a SYN, and no flow: dropped.
        let no_flow = counter(env, Counter::CtNoFlow);
        assert_eq!(
            on(env, TO6, j.c1, &tcp6(client, 40003, C1_6, 80, pkt::ACK)),
            SHOT
        );
        assert_eq!(counter(env, Counter::CtNoFlow), no_flow + 1);
        // Neighbour discovery needs no rule.
        let ns = icmp6(NS, C1_LL, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2));
        assert_eq!(on(env, FROM6, j.c1, &ns.frame()), OK);
    });
}

#[test]
fn egress_rules_and_the_source_check_hold_for_ipv6() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        assert_eq!(on(env, FROM6, j.c1, &udp6(C1_6, 5000, dns, 53)), OK);
        assert_eq!(
            on(env, TO6, j.c1, &udp6(dns, 53, C1_6, 5000)),
            OK,
            "the answer"
        );
        // From its link-local address too.
        assert_eq!(on(env, FROM6, j.c1, &udp6(C1_LL, 5001, dns, 53)), OK);
        let denied = counter(env, Counter::PolicyDeniedEgress);
        assert_eq!(on(env, FROM6, j.c1, &udp6(C1_6, 5002, STRANGER6, 53)), SHOT);
        assert_eq!(
            on(env, FROM6, j.c1, &tcp6(C1_6, 5003, dns, 53, pkt::SYN)),
            SHOT
        );
        assert_eq!(counter(env, Counter::PolicyDeniedEgress), denied + 2);
        // Someone else's address, or one nobody owns: a spoofed source.
        let spoofed = counter(env, Counter::ContainerSpoofedSource);
        assert_eq!(on(env, FROM6, j.c1, &udp6(C2_6, 5004, dns, 53)), SHOT);
        let nobody = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);
        assert_eq!(on(env, FROM6, j.c1, &udp6(nobody, 5005, dns, 53)), SHOT);
        assert_eq!(counter(env, Counter::ContainerSpoofedSource), spoofed + 2);
    });
}

#[test]
fn an_address_routed_to_the_port_answers_its_flows_but_opens_none() {
    in_fixture_ns(|env| {
        let j = judged(env);
        // An address of C1 berth has not been told about (a second one,
        // or one from router advertisements): what arrives for it is
        // judged by C1's ingress rules, and the answers leave.
        let unlisted = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x22);
        let client = pkt::CLIENT6;
        let syn = tcp6(client, 41000, unlisted, 80, pkt::SYN);
        assert_eq!(on(env, TO6, j.c1, &syn), OK);
        let syn_ack = tcp6(unlisted, 80, client, 41000, pkt::SYN | pkt::ACK);
        assert_eq!(on(env, FROM6, j.c1, &syn_ack), OK);
        // But nothing new leaves from it, not even what the rules allow.
        let spoofed = counter(env, Counter::ContainerSpoofedSource);
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        assert_eq!(on(env, FROM6, j.c1, &udp6(unlisted, 5000, dns, 53)), SHOT);
        let other = tcp6(unlisted, 80, client, 41001, pkt::SYN | pkt::ACK);
        assert_eq!(on(env, FROM6, j.c1, &other), SHOT);
        assert_eq!(counter(env, Counter::ContainerSpoofedSource), spoofed + 2);
    });
}

#[test]
fn a_verdict_holds_only_at_the_port_that_gave_it() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        assert_eq!(on(env, FROM6, j.c1, &udp6(C1_6, 5000, dns, 53)), OK);
        // The same answer towards C2's port is no answer to C2: C2 has no
        // rules and opened nothing.
        assert_eq!(on(env, TO6, j.c2, &udp6(dns, 53, C1_6, 5000)), SHOT);
        // Nor may C2 send on C1's tracked flow (its source is C1's).
        assert_eq!(on(env, FROM6, j.c2, &udp6(C1_6, 5000, dns, 53)), SHOT);
        assert_eq!(on(env, TO6, j.c1, &udp6(dns, 53, C1_6, 5000)), OK);
    });
}

#[test]
fn a_group_peer_matches_its_ipv6_members() {
    in_fixture_ns(|env| {
        let j = judged(env);
        assert_eq!(on(env, TO6, j.c1, &udp6(C2_6, 6000, C1_6, 5353)), SHOT);
        add_member6(env, 7, C2_6);
        assert_eq!(on(env, TO6, j.c1, &udp6(C2_6, 6001, C1_6, 5353)), OK);
    });
}

#[test]
fn icmpv6_echo_is_tracked_and_errors_pass_only_about_tracked_flows() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let client = pkt::CLIENT6;
        assert_eq!(on(env, TO6, j.c1, &echo6(client, C1_6, 128)), OK);
        assert_eq!(on(env, FROM6, j.c1, &echo6(C1_6, client, 129)), OK);
        // C1 may not ping out: no egress rule for it.
        assert_eq!(on(env, FROM6, j.c1, &echo6(C1_6, client, 128)), SHOT);
        // Packet too big about C1's tracked DNS query reaches C1...
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        let query = udp6(C1_6, 5000, dns, 53);
        assert_eq!(on(env, FROM6, j.c1, &query), OK);
        let router = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
        assert_eq!(on(env, TO6, j.c1, &error6(2, router, C1_6, &query)), OK);
        // ...one about a flow nobody tracks, or addressed to another end
        // than the quoted sender, does not.
        let icmp = counter(env, Counter::PolicyDeniedIcmp);
        let other = udp6(C1_6, 5999, dns, 53);
        assert_eq!(on(env, TO6, j.c1, &error6(2, router, C1_6, &other)), SHOT);
        assert_eq!(on(env, TO6, j.c1, &error6(1, router, C2_6, &query)), SHOT);
        assert_eq!(counter(env, Counter::PolicyDeniedIcmp), icmp + 2);
        // C1's own error about a packet it received on a tracked flow.
        let answer = udp6(dns, 53, C1_6, 5000);
        assert_eq!(on(env, FROM6, j.c1, &error6(1, C1_6, dns, &answer)), OK);
    });
}

#[test]
fn the_ipv6_judges_leave_open_ports_alone_and_close_unknown_ones() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let _ = j;
        let open = env.add_port("pc4");
        env.port_addrs(open, &[C3]);
        assert_eq!(on(env, FROM6, open, &udp6(C3_6, 1, STRANGER6, 9)), OK);
        assert_eq!(on(env, TO6, open, &udp6(STRANGER6, 9, C3_6, 1)), OK);
        let unknown = env.add_port("pc9");
        assert_eq!(on(env, TO6, unknown, &udp6(STRANGER6, 9, C3_6, 1)), SHOT);
    });
}

#[test]
fn the_ipv4_programs_hand_ipv6_to_the_judges() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        let missed = counter(env, Counter::Ipv6NoProgram);
        // Allowed by C1's egress rule: no fall-through would let it pass.
        assert_eq!(
            on(env, "berth_from_ctr", j.c1, &udp6(C1_6, 5000, dns, 53)),
            OK
        );
        assert_eq!(
            on(env, "berth_to_ctr", j.c1, &udp6(dns, 53, C1_6, 5000)),
            OK
        );
        // And refused by them as the judges refuse it.
        let denied = counter(env, Counter::PolicyDeniedEgress);
        assert_eq!(
            on(
                env,
                "berth_from_ctr",
                j.c1,
                &udp6(C1_6, 5001, STRANGER6, 53)
            ),
            SHOT
        );
        assert_eq!(counter(env, Counter::PolicyDeniedEgress), denied + 1);
        assert_eq!(counter(env, Counter::Ipv6NoProgram), missed);
        assert_eq!(unjudged(env), 0);
    });
}

#[test]
fn multicast_listener_discovery_passes_but_only_as_it_is_sent() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let mld_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
        let report = |src, dst, hop_limit| {
            let mut p = Ipv6Packet::icmpv6(143, 0).with_ext(&[V6Ext::HopByHop]);
            (p.src, p.dst, p.hop_limit) = (src, dst, hop_limit);
            p.frame()
        };
        let before = counter(env, Counter::PolicyDeniedEgress);
        // A report of C1's groups, and a query towards it.
        assert_eq!(on(env, FROM6, j.c1, &report(C1_LL, mld_routers, 1)), OK);
        assert_eq!(
            on(
                env,
                FROM6,
                j.c1,
                &report(Ipv6Addr::UNSPECIFIED, mld_routers, 1)
            ),
            OK
        );
        let mut query = Ipv6Packet::icmpv6(130, 0).with_ext(&[V6Ext::HopByHop]);
        (query.src, query.dst, query.hop_limit) = (ROUTER_LL, ALL_NODES, 1);
        assert_eq!(on(env, TO6, j.c1, &query.frame()), OK);
        assert_eq!(counter(env, Counter::PolicyDeniedEgress), before);
        // Routed, from a global address, or to a unicast one: any packet
        // behind a hop-by-hop header, which C1's rules do not allow.
        assert_eq!(on(env, FROM6, j.c1, &report(C1_LL, mld_routers, 2)), SHOT);
        assert_eq!(on(env, FROM6, j.c1, &report(C1_6, mld_routers, 1)), SHOT);
        assert_eq!(on(env, FROM6, j.c1, &report(C1_LL, ROUTER_LL, 1)), SHOT);
        assert_eq!(counter(env, Counter::PolicyDeniedEgress), before + 3);
    });
}

// ------------------------------------------------------------ fragments
//
// A first fragment is judged like any packet and its verdict kept for the
// datagram (`frag6.rs`); a later fragment (no ports) follows it and is
// never judged on its own.

/// A `len`-byte UDP datagram `src:sport -> dst:dport` in 1232-byte fragments.
fn udp_frags(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    len: usize,
    id: u32,
) -> Vec<Vec<u8>> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport, p.payload) = (src, dst, sport, vec![0x66; len]);
    pkt::fragments6(&p.frame(), &[], id, 1232)
}

#[test]
fn later_fragments_follow_their_first_fragments_verdict_at_the_veth() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let client = pkt::CLIENT6;
        add_member6(env, 7, client);
        // UDP 5353 from group 7 is let in: the whole datagram passes.
        let allowed = udp_frags(client, 6000, C1_6, 5353, 3000, 1);
        assert_eq!(allowed.len(), 3);
        for (i, f) in allowed.iter().enumerate() {
            assert_eq!(on(env, TO6, j.c1, f), OK, "allowed fragment {i}");
        }
        // UDP 5354 is not: neither the first nor any later fragment.
        let refused = udp_frags(client, 6000, C1_6, 5354, 3000, 2);
        let denied = counter(env, Counter::FragDenied);
        for (i, f) in refused.iter().enumerate() {
            assert_eq!(on(env, TO6, j.c1, f), SHOT, "refused fragment {i}");
        }
        assert_eq!(counter(env, Counter::FragDenied), denied + 2);
        // A later fragment whose first nobody saw (or that another source
        // claims) is dropped, whatever the rules would say.
        let no_first = counter(env, Counter::FragNoFirst);
        let orphan = udp_frags(client, 6000, C1_6, 5353, 3000, 3);
        assert_eq!(on(env, TO6, j.c1, &orphan[1]), SHOT);
        let spoofed = udp_frags(STRANGER6, 6000, C1_6, 5353, 3000, 1);
        assert_eq!(on(env, TO6, j.c1, &spoofed[2]), SHOT);
        assert_eq!(counter(env, Counter::FragNoFirst), no_first + 2);
        // Out of the container: its egress rules (UDP 53 to
        // 2001:db8::/32) judge the first fragment.
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        for f in &udp_frags(C1_6, 5000, dns, 53, 2000, 4) {
            assert_eq!(on(env, FROM6, j.c1, f), OK);
        }
        for f in &udp_frags(C1_6, 5000, STRANGER6, 53, 2000, 5) {
            assert_eq!(on(env, FROM6, j.c1, f), SHOT);
        }
    });
}

/// IPv6 has no source check for what a container sends (its flows are
/// tracked per port instead), so a fragment's verdict must be per port
/// too: a container with groups that forges the later fragments of a
/// datagram another port let in finds no verdict at its own port, and a
/// verdict counts only in the direction that gave it.
#[test]
fn a_container_cannot_slip_forged_fragments_into_a_datagram_another_port_allowed() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let client = pkt::CLIENT6;
        add_member6(env, 7, client);
        // The client's datagram to C1's UDP 5353: C1's port lets it in.
        let real = udp_frags(client, 6000, C1_6, 5353, 3000, 0x77);
        assert_eq!(on(env, TO6, j.c1, &real[0]), OK, "the first fragment");
        // C2 forges the rest (its own bytes, the client's source and id).
        let forged = udp_frags(client, 6000, C1_6, 5353, 3000, 0x77)
            .into_iter()
            .map(|mut f| {
                let n = f.len();
                f[n - 8..].copy_from_slice(b"injected");
                f
            })
            .collect::<Vec<_>>();
        let no_first = counter(env, Counter::FragNoFirst);
        assert_eq!(on(env, FROM6, j.c2, &forged[1]), SHOT, "out of C2");
        assert_eq!(on(env, FROM6, j.c2, &forged[2]), SHOT, "out of C2");
        // Nor would it pass into C2, or out of C1 (the other direction).
        assert_eq!(on(env, TO6, j.c2, &real[1]), SHOT, "into C2");
        assert_eq!(on(env, FROM6, j.c1, &real[1]), SHOT, "out of C1");
        assert_eq!(counter(env, Counter::FragNoFirst), no_first + 4);
        // The client's own later fragments still follow into C1.
        assert_eq!(on(env, TO6, j.c1, &real[1]), OK);
        assert_eq!(on(env, TO6, j.c1, &real[2]), OK);
    });
}

#[test]
fn a_first_fragment_hiding_its_ports_or_of_another_protocol_is_refused_whole() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let client = pkt::CLIENT6;
        // TCP 80 from 2001:db8::/32 is allowed, but a first fragment too
        // short for the TCP header (RFC 1858's tiny fragment) is not.
        let mut p = Ipv6Packet::new(pkt::TCP, 80);
        (p.src, p.dst, p.payload) = (client, C1_6, vec![0; 1500]);
        let frags = pkt::fragments6(&p.frame(), &[], 9, 8);
        let denied = counter(env, Counter::FragDenied);
        assert_eq!(on(env, TO6, j.c1, &frags[0]), SHOT, "tiny first");
        assert_eq!(
            on(env, TO6, j.c1, &frags[1]),
            SHOT,
            "the rest of the header"
        );
        assert_eq!(counter(env, Counter::FragDenied), denied + 2);
        // A fragmented echo request: behind the fragment header it is
        // judged as another protocol (C1 has no rule for all), and its
        // later fragments follow.
        let mut p = Ipv6Packet::icmpv6(128, 0);
        (p.src, p.dst, p.payload) = (client, C1_6, vec![1; 2000]);
        for f in &pkt::fragments6(&p.frame(), &[], 10, 1232) {
            assert_eq!(on(env, TO6, j.c1, f), SHOT);
        }
        // An atomic fragment is a whole packet, judged as one.
        let mut p = Ipv6Packet::new(pkt::UDP, 5353).with_ext(&[V6Ext::Fragment {
            offset: 0,
            more: false,
        }]);
        add_member6(env, 7, client);
        (p.src, p.dst, p.payload) = (client, C1_6, b"atomic".to_vec());
        assert_eq!(on(env, TO6, j.c1, &p.frame()), OK);
    });
}

// ------------------------------------------------- the datapath log (IPv6)

fn dp_log_records(env: &mut Env) -> Vec<Vec<u8>> {
    let mut ring =
        aya::maps::RingBuf::try_from(env.ebpf.map_mut(berth_maps::DP_LOG_MAP).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(item.to_vec());
    }
    out
}

/// The one line a refusal wrote: `message`, each of `addrs` as 16 octets
/// (aya-log's `{:i}` of an IPv6 address) and each of `numbers`.
fn one_line6(env: &mut Env, message: &str, addrs: &[Ipv6Addr], numbers: &[u32]) {
    let recs = dp_log_records(env);
    assert_eq!(recs.len(), 1, "one line per refusal: {message:?}");
    let r = &recs[0];
    let text = String::from_utf8_lossy(r);
    let has = |part: &[u8]| r.windows(part.len()).any(|w| w == part);
    assert!(has(message.as_bytes()), "{message:?} not in {text:?}");
    for a in addrs {
        assert!(has(&a.octets()), "{a} not in {text:?}");
    }
    for n in numbers {
        assert!(has(&n.to_ne_bytes()), "{n} not in {text:?}");
    }
    assert!(r.len() <= berth_maps::DP_LOG_RECORD_MAX as usize);
}

/// IPv4's veth lines (`policy_fixtures::container_veth_refusals_…`) for
/// IPv6: written by `berth_log`, tail-called by the IPv6 judges (no stack
/// left in them for a line of their own), with IPv4's wording.
#[test]
fn ipv6_veth_refusals_are_written_by_the_tail_called_log_program() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let closed = tcp6(STRANGER6, 40001, C1_6, 81, pkt::SYN);
        assert_eq!(on(env, TO6, j.c1, &closed), SHOT);
        assert!(dp_log_records(env).is_empty(), "the log is off by default");

        let mut m: Array<&mut MapData, u64> =
            Array::try_from(env.ebpf.map_mut(berth_maps::CONFIG_MAP).unwrap()).unwrap();
        m.set(berth_maps::CONFIG_DP_LOG, berth_maps::DP_LOG_DEBUG, 0)
            .unwrap();
        // By C1's ingress rules (TCP 80 from 2001:db8::/32 only).
        assert_eq!(on(env, TO6, j.c1, &closed), SHOT);
        one_line6(
            env,
            "policy refused a new flow: [",
            &[STRANGER6, C1_6],
            &[40001, 81, 6],
        );
        // By its egress rules (UDP 53 to 2001:db8::/32 only).
        let out = udp6(C1_6, 5000, STRANGER6, 53);
        assert_eq!(on(env, FROM6, j.c1, &out), SHOT);
        one_line6(
            env,
            "policy refused a new flow by its sender's egress rules: [",
            &[C1_6, STRANGER6],
            &[5000, 53, 17],
        );
        // C1 claims C2's address.
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        let spoofed = udp6(C2_6, 5001, dns, 53);
        assert_eq!(on(env, FROM6, j.c1, &spoofed), SHOT);
        one_line6(
            env,
            "spoofed source dropped on container port ",
            &[C2_6, dns],
            &[j.c1],
        );
        // What its rules allow writes nothing.
        assert_eq!(on(env, FROM6, j.c1, &udp6(C1_6, 5002, dns, 53)), OK);
        assert!(dp_log_records(env).is_empty());
    });
}

/// Refused first fragments are remembered apart from allowed ones
/// (`BERTH_FRAGS6_DENY`, `frag6.rs`): more of them than that table holds,
/// from strangers to a port C1's groups refuse, never evict the verdict an
/// allowed datagram's first fragment left at C1's port, whose later
/// fragments then still pass (they used to find none: `frag_no_first`).
#[test]
fn a_flood_of_refused_ipv6_first_fragments_never_evicts_an_allowed_verdict() {
    in_fixture_ns(|env| {
        let j = judged(env);
        let client = pkt::CLIENT6;
        add_member6(env, 7, client);
        let allowed = udp_frags(client, 6000, C1_6, 5353, 3000, 0x5151);
        assert_eq!(allowed.len(), 3);
        assert_eq!(
            on(env, TO6, j.c1, &allowed[0]),
            OK,
            "allowed first fragment"
        );
        let n = berth_maps::FRAGS6_CAPACITY.max(berth_maps::FRAGS6_DENY_CAPACITY) + 256;
        let stranger = |i: u32| {
            let mut a = STRANGER6.octets();
            a[12..].copy_from_slice(&i.to_be_bytes());
            Ipv6Addr::from(a)
        };
        let refused = counter(env, Counter::PolicyDeniedIngress);
        let mut last = Vec::new();
        for i in 0..n {
            let f = udp_frags(stranger(i), 1024 + (i % 60000) as u16, C1_6, 5354, 3000, i);
            assert_eq!(
                on(env, TO6, j.c1, &f[0]),
                SHOT,
                "refused first fragment {i}"
            );
            last = f;
        }
        assert_eq!(
            counter(env, Counter::PolicyDeniedIngress),
            refused + u64::from(n)
        );
        let no_first = counter(env, Counter::FragNoFirst);
        assert_eq!(
            on(env, TO6, j.c1, &allowed[1]),
            OK,
            "middle after the flood"
        );
        assert_eq!(on(env, TO6, j.c1, &allowed[2]), OK, "last after the flood");
        assert_eq!(counter(env, Counter::FragNoFirst), no_first);
        // The newest refusal still holds for its datagram.
        let denied = counter(env, Counter::FragDenied);
        assert_eq!(on(env, TO6, j.c1, &last[1]), SHOT);
        assert_eq!(counter(env, Counter::FragDenied), denied + 1);
    });
}

/// A task registered with IPv6 only (`--ip6`, no `--ip`): its container's
/// IPv4 address (`172.17.0.20`) is no task's, its learned IPv6 address
/// (`fd00::20`) is task 5's, with policy. Task 5 allows nothing in and UDP
/// 53 to `2001:db8::/32` out.
fn ipv6_only_task(env: &mut Env) -> u32 {
    setup(env);
    let port = env.add_port("pc20");
    env.port_addrs(port, &[Ipv4Addr::new(172, 17, 0, 20)]);
    env.port_addrs6(port, &[V6_ONLY]);
    env.set_endpoint6(V6_ONLY, 5, true);
    env.set_rules6(5, DIR_INGRESS, &[]);
    env.set_rules6(
        5,
        DIR_EGRESS,
        &[rule(
            Some(RuleProto::Udp),
            (53, 53),
            RulePeer::Cidr6(DB8, 32),
        )],
    );
    port
}

const V6_ONLY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20);

#[test]
fn a_task_known_by_its_ipv6_address_only_is_judged_at_its_port() {
    in_fixture_ns(|env| {
        let port = ipv6_only_task(env);
        // In: another container's SYN to port 80, which no rule admits,
        // through the IPv4 program's hand-off and the judge itself.
        let syn = tcp6(C3_6, 40000, V6_ONLY, 80, pkt::SYN);
        let denied = counter(env, Counter::PolicyDeniedIngress);
        assert_eq!(received(env, port, &syn), SHOT);
        assert_eq!(on(env, TO6, port, &syn), SHOT);
        assert_eq!(counter(env, Counter::PolicyDeniedIngress), denied + 2);
        // Out: what its egress rules refuse, and what they allow.
        let dns = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53);
        assert_eq!(
            on(env, FROM6, port, &udp6(V6_ONLY, 5000, STRANGER6, 53)),
            SHOT
        );
        assert_eq!(
            on(env, FROM6, port, &tcp6(V6_ONLY, 5001, dns, 80, pkt::SYN)),
            SHOT
        );
        assert_eq!(on(env, FROM6, port, &udp6(V6_ONLY, 5002, dns, 53)), OK);
        // A property of the port: from an address it does not hold (no
        // task's, or one without policy) it escapes nothing.
        let spoofed = counter(env, Counter::ContainerSpoofedSource);
        let nobody = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);
        assert_eq!(
            on(env, FROM6, port, &udp6(nobody, 5003, STRANGER6, 53)),
            SHOT
        );
        assert_eq!(on(env, FROM6, port, &udp6(C3_6, 5004, STRANGER6, 53)), SHOT);
        assert_eq!(counter(env, Counter::ContainerSpoofedSource), spoofed + 2);
        // Once a rule admits the peer, the same SYN passes.
        env.set_rules6(
            5,
            DIR_INGRESS,
            &[rule(
                Some(RuleProto::Tcp),
                (80, 80),
                RulePeer::Cidr6(C3_6, 128),
            )],
        );
        assert_eq!(on(env, TO6, port, &syn), OK);
    });
}

#[test]
fn a_port_is_open_only_when_none_of_its_addresses_has_policy() {
    in_fixture_ns(|env| {
        ipv6_only_task(env);
        let stranger = udp6(STRANGER6, 9, C3_6, 1);
        // No IPv4 address at all (an entry of none), IPv6 with policy.
        let v6_only = env.add_port("pc21");
        env.port_addrs(v6_only, &[]);
        env.port_addrs6(v6_only, &[V6_ONLY]);
        assert_eq!(on(env, TO6, v6_only, &stranger), SHOT);
        // IPv6 learned before IPv4: judged by the IPv6 address.
        let v6_first = env.add_port("pc22");
        env.port_addrs6(v6_first, &[V6_ONLY]);
        assert_eq!(on(env, TO6, v6_first, &stranger), SHOT);
        // Addresses learned, none with policy: open.
        let open = env.add_port("pc23");
        env.port_addrs(open, &[]);
        env.port_addrs6(open, &[C3_6]);
        assert_eq!(on(env, TO6, open, &stranger), OK);
        let none = env.add_port("pc24");
        env.port_addrs(none, &[]);
        assert_eq!(on(env, TO6, none, &stranger), OK);
    });
}
