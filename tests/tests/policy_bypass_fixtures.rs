//! Ways past a security group below TCP/UDP, through `BPF_PROG_TEST_RUN`
//! on the container veth programs: other IP protocols (GRE, IP-in-IP,
//! SCTP, ESP) judged by "all" and numbered rules and tracked; frames the
//! judges cannot read (VLAN tags, other ethertypes) dropped; ARP and
//! neighbour discovery claiming an address not the sender's dropped (from a
//! container with policy any such claim, from any container the host's and
//! policy containers' addresses);
//! IPv6 tracking reading the window scale as IPv4's. Each verdict, the frame (never rewritten) and the counter are checked.
use std::net::{Ipv4Addr, Ipv6Addr};

use berth::datapath::{PolicyRule, RulePeer, RuleProto};
use berth_integration::{
    pkt::{
        self, neighbour_advert as na, neighbour_solicit as ns, Ipv6Packet, Packet, V6Ext,
        ND_NEIGHBOUR_SOLICIT as NS,
    },
    testrun::*,
};
use berth_maps::{Counter, FlowKey, FlowKey6, CONFIG_NO_POLICY, DIR_EGRESS, DIR_INGRESS};

const OK: u32 = 0;
const SHOT: u32 = 2;
/// C1 and C2 have policy (tasks 1 and 2), C3 none (task 3).
const C3: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);
const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const C2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const C3_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
const IPIP: u8 = 4;

struct Ports {
    c1: u32,
    c2: u32,
    c3: u32,
}

fn any4() -> RulePeer {
    RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0)
}

fn any6() -> RulePeer {
    RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0)
}

fn tcp80(peer: RulePeer) -> PolicyRule {
    rule(Some(RuleProto::Tcp), (80, 80), peer)
}

/// A numbered rule as the engine compiles it (all ports).
fn numbered(n: u8, peer: RulePeer) -> PolicyRule {
    rule(Some(RuleProto::Number(n)), (0, u16::MAX), peer)
}

/// C1 (task 1): TCP 80 in and out only, both families. C2 (task 2): no
/// rules. C3: no groups. Each on a port whose IPv4 address is learned.
fn setup(env: &mut Env) -> Ports {
    let c1 = env.add_port("pc1");
    env.port_addrs(c1, &[C1]);
    let c2 = env.add_port("pc2");
    env.port_addrs(c2, &[C2]);
    let c3 = env.add_port("pc3");
    env.port_addrs(c3, &[C3]);
    env.set_endpoint(C1, 1, true);
    env.set_endpoint(C2, 2, true);
    env.set_endpoint(C3, 3, false);
    env.set_endpoint6(C1_6, 1, true);
    env.set_endpoint6(C2_6, 2, true);
    env.set_endpoint6(C3_6, 3, false);
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        env.set_rules(1, dir, &[tcp80(any4())]);
        env.set_rules6(1, dir, &[tcp80(any6())]);
    }
    Ports { c1, c2, c3 }
}

/// The verdict of `prog` for `frame` on bridge port `port`; the frame
/// must come out as it went in.
fn on(env: &Env, prog: &str, port: u32, frame: &[u8]) -> u32 {
    let v = env.tc_on(prog, frame, port);
    assert_eq!(v.frame, frame, "{prog} changed a frame");
    v.code
}

fn sent(env: &Env, port: u32, frame: &[u8]) -> u32 {
    on(env, "berth_from_ctr", port, frame)
}

fn received(env: &Env, port: u32, frame: &[u8]) -> u32 {
    on(env, "berth_to_ctr", port, frame)
}

/// An IPv4 packet of protocol `proto` (a GRE-ish payload).
fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Vec<u8> {
    Packet::raw(src, dst, proto, vec![0, 0, 0x08, 0, 0x45, 0, 0, 20]).frame()
}

fn raw6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Vec<u8> {
    let mut p = Ipv6Packet::new(proto, 0);
    (p.src, p.dst, p.payload) = (src, dst, vec![0, 0, 0x86, 0xdd, 0, 0, 0, 0]);
    p.frame()
}

fn ct_key(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> FlowKey {
    FlowKey {
        src_addr_be: u32::from_ne_bytes(src.octets()),
        dst_addr_be: u32::from_ne_bytes(dst.octets()),
        src_port_be: 0,
        dst_port_be: 0,
        proto,
        _pad: [0; 3],
    }
}

#[test]
fn other_ipv4_protocols_pass_a_container_with_policy_only_by_its_rules() {
    in_fixture_ns(|env| {
        let p = setup(env);
        // C1 allows TCP 80 only: no tunnel out, whoever receives it.
        let egress = env.counter(Counter::PolicyDeniedEgress);
        for proto in [pkt::GRE, IPIP, pkt::SCTP, pkt::ESP] {
            assert_eq!(sent(env, p.c1, &raw(C1, C3, proto)), SHOT, "proto {proto}");
            assert_eq!(sent(env, p.c1, &raw(C1, OTHER, proto)), SHOT);
        }
        assert_eq!(env.counter(Counter::PolicyDeniedEgress), egress + 8);
        // Nor in: from the open C3 (judged at C3's send and at C1's
        // port), from the host or the outside.
        let ingress = env.counter(Counter::PolicyDeniedIngress);
        assert_eq!(sent(env, p.c3, &raw(C3, C1, pkt::GRE)), SHOT);
        for src in [C3, BRIDGE_IP, OTHER] {
            assert_eq!(received(env, p.c1, &raw(src, C1, pkt::GRE)), SHOT);
        }
        assert_eq!(env.counter(Counter::PolicyDeniedIngress), ingress + 4);
        // A task without groups keeps every protocol.
        assert_eq!(sent(env, p.c3, &raw(C3, OTHER, pkt::GRE)), OK);
        assert_eq!(received(env, p.c3, &raw(OTHER, C3, IPIP)), OK);
        // Nothing was tracked for what was refused.
        assert!(env.ct_lookup(&ct_key(C1, C3, pkt::GRE)).is_none());
    });
}

#[test]
fn a_numbered_or_all_rule_opens_its_protocol_and_the_reply_is_tracked() {
    in_fixture_ns(|env| {
        let p = setup(env);
        env.set_rules(1, DIR_EGRESS, &[numbered(pkt::GRE, any4())]);
        // GRE out to C3: allowed and tracked; IP-in-IP still refused.
        assert_eq!(sent(env, p.c1, &raw(C1, C3, pkt::GRE)), OK);
        assert_eq!(
            env.ct_lookup(&ct_key(C1, C3, pkt::GRE)).map(|e| e.0),
            Some(false)
        );
        assert_eq!(sent(env, p.c1, &raw(C1, C3, IPIP)), SHOT);
        // The reply comes in with no ingress rule for GRE, and establishes
        // the flow; GRE from a peer C1 never sent to does not.
        assert_eq!(received(env, p.c1, &raw(C3, C1, pkt::GRE)), OK);
        assert_eq!(
            env.ct_lookup(&ct_key(C1, C3, pkt::GRE)).map(|e| e.0),
            Some(true)
        );
        assert_eq!(received(env, p.c1, &raw(OTHER, C1, pkt::GRE)), SHOT);
        // An ingress rule for the number admits it unsolicited.
        env.set_rules(1, DIR_INGRESS, &[numbered(pkt::SCTP, any4())]);
        assert_eq!(received(env, p.c1, &raw(OTHER, C1, pkt::SCTP)), OK);
        assert_eq!(received(env, p.c1, &raw(OTHER, C1, pkt::ESP)), SHOT);
        // "all" takes every protocol; a TCP rule on every port does not.
        env.set_rules(
            1,
            DIR_EGRESS,
            &[rule(Some(RuleProto::Tcp), (0, 65535), any4())],
        );
        assert_eq!(sent(env, p.c1, &raw(C1, OTHER, pkt::ESP)), SHOT);
        env.set_rules(1, DIR_EGRESS, &[rule(None, (0, 65535), any4())]);
        assert_eq!(sent(env, p.c1, &raw(C1, OTHER, pkt::ESP)), OK);
        // East-west, both ends judged: C2 has no rules at all.
        assert_eq!(sent(env, p.c1, &raw(C1, C2, IPIP)), SHOT);
        // A numbered rule never matches TCP with port 0.
        env.set_rules(1, DIR_EGRESS, &[numbered(pkt::GRE, any4())]);
        let tcp0 = Packet::tcp(C1, 0, C3, 0).frame();
        assert_eq!(sent(env, p.c1, &tcp0), SHOT);
    });
}

#[test]
fn a_first_fragment_of_another_protocol_decides_for_its_datagram() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let gre = Packet::raw(C1, C3, pkt::GRE, vec![7; 64]);
        let first = pkt::fragment(&gre, 0, 32, true);
        let later = pkt::fragment(&gre, 32, 32, false);
        assert_eq!(sent(env, p.c1, &first), SHOT);
        assert_eq!(sent(env, p.c1, &later), SHOT);
        env.set_rules(1, DIR_EGRESS, &[numbered(pkt::GRE, any4())]);
        let gre = Packet {
            ip_id: 0x4242,
            ..gre
        };
        assert_eq!(sent(env, p.c1, &pkt::fragment(&gre, 0, 32, true)), OK);
        assert_eq!(sent(env, p.c1, &pkt::fragment(&gre, 32, 32, false)), OK);
    });
}

#[test]
fn other_ipv6_next_headers_pass_only_by_their_rules_and_are_tracked() {
    in_fixture_ns(|env| {
        let p = setup(env);
        for proto in [pkt::GRE, IPIP, 41, pkt::SCTP, pkt::ESP] {
            assert_eq!(
                sent(env, p.c1, &raw6(C1_6, C3_6, proto)),
                SHOT,
                "proto {proto}"
            );
            assert_eq!(received(env, p.c1, &raw6(C3_6, C1_6, proto)), SHOT);
        }
        // A numbered rule (and its IPv4 twin, which must not count).
        env.set_rules6(1, DIR_EGRESS, &[numbered(pkt::GRE, any6())]);
        env.set_rules(1, DIR_INGRESS, &[numbered(pkt::GRE, any4())]);
        assert_eq!(sent(env, p.c1, &raw6(C1_6, C3_6, pkt::GRE)), OK);
        assert_eq!(sent(env, p.c1, &raw6(C1_6, C3_6, 41)), SHOT);
        // Its reply is tracked at C1's port; a stranger's GRE is not.
        assert_eq!(received(env, p.c1, &raw6(C3_6, C1_6, pkt::GRE)), OK);
        assert_eq!(
            received(env, p.c1, &raw6(pkt::CLIENT6, C1_6, pkt::GRE)),
            SHOT
        );
        // "all" takes any next header.
        env.set_rules6(1, DIR_EGRESS, &[rule(None, (0, 65535), any6())]);
        assert_eq!(sent(env, p.c1, &raw6(C1_6, C3_6, pkt::SCTP)), OK);
        // C2 with no rules refuses what C1 may send it.
        assert_eq!(received(env, p.c2, &raw6(C1_6, C2_6, pkt::SCTP)), SHOT);
    });
}

/// What the daemon writes when no endpoint has policy.
fn no_policy_anywhere(env: &mut Env) {
    let mut m: aya::maps::Array<&mut aya::maps::MapData, u64> =
        aya::maps::Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(CONFIG_NO_POLICY, 1, 0).unwrap();
}

/// An IPv6 packet of protocol `proto` behind the extension headers `ext`.
fn behind(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, ext: &[V6Ext]) -> Vec<u8> {
    let mut p = Ipv6Packet::new(proto, 0).with_ext(ext);
    (p.src, p.dst, p.payload) = (src, dst, vec![0, 0, 0x86, 0xdd, 0, 0, 0, 0]);
    p.frame()
}

/// A protocol behind hop-by-hop, routing or destination options headers
/// is the protocol it is: its numbered rule judges it and its flow is
/// tracked as when it follows the fixed header (only a rule for all
/// protocols took it before, so a task could not allow GRE without
/// allowing everything behind an 8-byte header).
#[test]
fn an_ipv6_protocol_behind_extension_headers_is_judged_by_its_numbered_rule() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let chains: [&[V6Ext]; 3] = [
            &[V6Ext::DestOpts],
            &[V6Ext::HopByHop],
            &[V6Ext::HopByHop, V6Ext::Routing, V6Ext::DestOpts],
        ];
        // No rule for GRE: refused behind any chain.
        for ext in chains {
            assert_eq!(sent(env, p.c1, &behind(C1_6, C3_6, pkt::GRE, ext)), SHOT);
        }
        env.set_rules6(1, DIR_EGRESS, &[numbered(pkt::GRE, any6())]);
        let egress = env.counter(Counter::PolicyDeniedEgress);
        for ext in chains {
            assert_eq!(
                sent(env, p.c1, &behind(C1_6, C3_6, pkt::GRE, ext)),
                OK,
                "GRE behind {ext:?}"
            );
            // Another number is still refused.
            assert_eq!(sent(env, p.c1, &behind(C1_6, C3_6, pkt::ESP, ext)), SHOT);
        }
        assert_eq!(env.counter(Counter::PolicyDeniedEgress), egress + 3);
        // Tracked under its protocol: the reply passes, plain or not, with
        // no ingress rule for GRE; a stranger's GRE does not.
        assert_eq!(received(env, p.c1, &raw6(C3_6, C1_6, pkt::GRE)), OK);
        let reply = behind(C3_6, C1_6, pkt::GRE, &[V6Ext::DestOpts]);
        assert_eq!(received(env, p.c1, &reply), OK);
        let stranger = behind(pkt::CLIENT6, C1_6, pkt::GRE, &[V6Ext::DestOpts]);
        assert_eq!(received(env, p.c1, &stranger), SHOT);
        // An ingress rule for its number admits it unsolicited.
        env.set_rules6(1, DIR_INGRESS, &[numbered(pkt::SCTP, any6())]);
        let sctp = behind(pkt::CLIENT6, C1_6, pkt::SCTP, &[V6Ext::Routing]);
        assert_eq!(received(env, p.c1, &sctp), OK);
        let esp = behind(pkt::CLIENT6, C1_6, pkt::ESP, &[V6Ext::Routing]);
        assert_eq!(received(env, p.c1, &esp), SHOT);
    });
}

fn frame_refused(env: &Env) -> u64 {
    env.counter(Counter::CtrFrameRefused)
}

#[test]
fn tagged_and_unknown_frames_never_cross_a_port_with_policy() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let tcp = Packet::tcp(C1, 40000, C3, 80).frame();
        assert_eq!(sent(env, p.c1, &tcp), OK);
        let mut lldp = tcp.clone();
        lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        // A raw 802.3 frame: a length where the ethertype goes.
        let mut llc = tcp.clone();
        llc[12..14].copy_from_slice(&((tcp.len() - 14) as u16).to_be_bytes());
        let bad = [
            pkt::vlan_tagged(&tcp, 100),
            pkt::qinq_tagged(&tcp, 200, 100),
            pkt::tagged(&tcp, pkt::ETH_P_8021AD, 100),
            pkt::vlan_tagged(&pkt::arp_request(C1, BRIDGE_IP), 100),
            pkt::vlan_tagged(&raw6(C1_6, C3_6, pkt::TCP), 100),
            lldp,
            llc,
        ];
        for f in &bad {
            assert_eq!(sent(env, p.c1, f), SHOT);
            assert_eq!(received(env, p.c1, f), SHOT);
        }
        assert_eq!(frame_refused(env), 2 * bad.len() as u64);
        // ARP, IPv4 and IPv6 are judged as before.
        assert_eq!(sent(env, p.c1, &pkt::arp_request(C1, BRIDGE_IP)), OK);
        assert_eq!(received(env, p.c1, &pkt::arp_request(BRIDGE_IP, C1)), OK);
        // A port without policy, or no policy anywhere: left alone, but for
        // tagged ARP (or neighbour discovery) it sends, refused from every
        // port since session 10 (`neighbour6_fixtures`).
        let tagged_arp = &bad[3];
        for f in &bad {
            let want = if f == tagged_arp { SHOT } else { OK };
            assert_eq!(sent(env, p.c3, f), want);
            assert_eq!(received(env, p.c3, f), OK);
        }
        no_policy_anywhere(env);
        assert_eq!(sent(env, p.c1, &bad[0]), OK);
        assert_eq!(frame_refused(env), 2 * bad.len() as u64 + 1);
    });
}

#[test]
fn a_port_whose_addresses_are_unknown_refuses_tagged_frames() {
    in_fixture_ns(|env| {
        setup(env);
        let unknown = env.add_port("pc9");
        let tagged = pkt::vlan_tagged(&Packet::udp(C3, 1, OTHER, 53).frame(), 7);
        assert_eq!(sent(env, unknown, &tagged), SHOT);
        assert_eq!(frame_refused(env), 1);
    });
}

fn neigh_spoofed(env: &Env) -> u64 {
    env.counter(Counter::NeighSpoofed)
}

#[test]
fn arp_from_a_container_with_policy_claims_only_its_own_address() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let mac = [0x02, 0x42, 0xac, 0x11, 0, 0x02];
        // Its own address, requests and replies, and a probe (0.0.0.0).
        assert_eq!(
            sent(env, p.c1, &pkt::arp(1, mac, C1, [0; 6], BRIDGE_IP)),
            OK
        );
        assert_eq!(
            sent(env, p.c1, &pkt::arp(2, mac, C1, BRIDGE_MAC, BRIDGE_IP)),
            OK
        );
        let probe = pkt::arp(1, mac, Ipv4Addr::UNSPECIFIED, [0; 6], C1);
        assert_eq!(sent(env, p.c1, &probe), OK);
        assert_eq!(neigh_spoofed(env), 0);
        // The gateway's, a neighbour's, a stranger's: dropped.
        for claimed in [BRIDGE_IP, C2, C3, OTHER] {
            let reply = pkt::arp(2, mac, claimed, BRIDGE_MAC, BRIDGE_IP);
            assert_eq!(sent(env, p.c1, &reply), SHOT, "{claimed}");
            let gratuitous = pkt::arp(1, mac, claimed, [0; 6], claimed);
            assert_eq!(sent(env, p.c1, &gratuitous), SHOT);
        }
        assert_eq!(neigh_spoofed(env), 8);
        // A container without policy may still claim an address that is
        // neither the host's nor a container's with policy (as Docker lets
        // it), and so may a port whose addresses are not learned yet. Until
        // session 9 it could claim the gateway's here too (this line sent
        // BRIDGE_IP from C3): no longer, see
        // `arp_from_any_container_never_claims_the_hosts_or_a_policy_containers_address`.
        assert_eq!(
            sent(env, p.c3, &pkt::arp(2, mac, OTHER, BRIDGE_MAC, C1)),
            OK
        );
        let unknown = env.add_port("pc9");
        assert_eq!(
            sent(env, unknown, &pkt::arp(1, mac, C3, [0; 6], BRIDGE_IP)),
            OK
        );
        assert_eq!(neigh_spoofed(env), 8);
        // What a container receives is not its claim.
        assert_eq!(
            received(env, p.c1, &pkt::arp(2, BRIDGE_MAC, BRIDGE_IP, mac, C1)),
            OK
        );
    });
}

/// The frame source MAC `Ipv6Packet` writes, and its EUI-64 link-local.
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0x00ff, 0xfe00, 0x0002);
const GATEWAY_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0042, 0xff, 0xfe00, 0x0001);

#[test]
fn neighbour_discovery_from_a_container_with_policy_claims_only_its_own_addresses() {
    in_fixture_ns(|env| {
        let p = setup(env);
        // Its own global address; its EUI-64 link-local, whether the MAC
        // is the frame's or the option's.
        assert_eq!(sent(env, p.c1, &na(C1_6, C1_6, Some(SRC_MAC))), OK);
        assert_eq!(sent(env, p.c1, &na(SRC_LL, SRC_LL, None)), OK);
        assert_eq!(sent(env, p.c1, &na(SRC_LL, SRC_LL, Some(SRC_MAC))), OK);
        assert_eq!(sent(env, p.c1, &ns(C1_6, C2_6, SRC_MAC)), OK);
        assert_eq!(sent(env, p.c1, &ns(SRC_LL, GATEWAY_LL, SRC_MAC)), OK);
        // Duplicate address detection: from `::`, no option.
        assert_eq!(sent(env, p.c1, &dad(C1_6)), OK);
        assert_eq!(neigh_spoofed(env), 0);
        // Another task's address, the open C3's, the gateway's link-local
        // (announced with the container's MAC), or a link-local that is not
        // the announced MAC's.
        let spoofed = [
            na(C1_6, C2_6, Some(SRC_MAC)),
            na(C1_6, C3_6, Some(SRC_MAC)),
            na(SRC_LL, GATEWAY_LL, Some(SRC_MAC)),
            na(SRC_LL, GATEWAY_LL, None),
            na(SRC_LL, SRC_LL, Some([0x02, 0x42, 0, 0, 0, 1])),
            ns(C2_6, C1_6, SRC_MAC),
            ns(GATEWAY_LL, C1_6, SRC_MAC),
        ];
        for f in &spoofed {
            assert_eq!(sent(env, p.c1, f), SHOT);
        }
        assert_eq!(neigh_spoofed(env), spoofed.len() as u64);
        // What a container receives is not its claim.
        assert_eq!(received(env, p.c1, &na(GATEWAY_LL, GATEWAY_LL, None)), OK);
        assert_eq!(neigh_spoofed(env), spoofed.len() as u64);
        // A container without policy announcing the gateway's link-local
        // address with its own MAC passed until session 9 (this asserted
        // OK); it is now refused on every port: see
        // `neighbour_discovery_from_any_container_never_claims_the_hosts_or_a_policy_containers_addresses`.
        assert_eq!(sent(env, p.c3, &na(C3_6, GATEWAY_LL, Some(SRC_MAC))), SHOT);
        assert_eq!(neigh_spoofed(env), spoofed.len() as u64 + 1);
    });
}

/// Any container, with policy or without, and a port whose addresses are
/// not learned yet, is refused the host's addresses (the gateway's above
/// all) and the addresses of containers with policy: whoever answers for
/// them on the bridge gets their traffic, past the owner's groups. Until
/// session 9 only a container with policy was judged. What is no one's
/// with policy a container without may still claim, as Docker lets it
/// (a container routing for others).
#[test]
fn arp_from_any_container_never_claims_the_hosts_or_a_policy_containers_address() {
    in_fixture_ns(|env| {
        let p = setup(env);
        // As the daemon does: every address of the host, the bridge's too.
        env.host_addr(BRIDGE_IP);
        env.host_addr(HOST);
        let unknown = env.add_port("pc9");
        let mac = [0x02, 0x42, 0xac, 0x11, 0, 0x04];
        let reply = |claimed| pkt::arp(2, mac, claimed, BRIDGE_MAC, BRIDGE_IP);
        let gratuitous = |claimed| pkt::arp(1, mac, claimed, [0; 6], claimed);
        let allowed = [
            ("its own address", p.c3, reply(C3)),
            (
                "resolving a container with policy",
                p.c3,
                pkt::arp(1, mac, C3, [0; 6], C1),
            ),
            (
                "resolving the gateway",
                p.c3,
                pkt::arp(1, mac, C3, [0; 6], BRIDGE_IP),
            ),
            (
                "a probe",
                p.c3,
                pkt::arp(1, mac, Ipv4Addr::UNSPECIFIED, [0; 6], C3),
            ),
            ("a stranger's address", p.c3, reply(OTHER)),
            ("not learned, an open task's address", unknown, reply(C3)),
        ];
        for (what, port, f) in &allowed {
            assert_eq!(sent(env, *port, f), OK, "{what}");
        }
        assert_eq!(neigh_spoofed(env), 0);
        let refused = [
            ("the gateway's", p.c3, BRIDGE_IP),
            ("the host's uplink address", p.c3, HOST),
            ("a container's with policy", p.c3, C1),
            ("another container's with policy", p.c3, C2),
            ("not learned, a container's with policy", unknown, C1),
            ("not learned, the gateway's", unknown, BRIDGE_IP),
        ];
        for (what, port, claimed) in refused {
            assert_eq!(sent(env, port, &reply(claimed)), SHOT, "reply: {what}");
            assert_eq!(
                sent(env, port, &gratuitous(claimed)),
                SHOT,
                "gratuitous: {what}"
            );
        }
        assert_eq!(neigh_spoofed(env), 2 * refused.len() as u64);
        // With policy nowhere, only the host's addresses are left to keep.
        no_policy_anywhere(env);
        assert_eq!(sent(env, p.c3, &reply(C1)), OK);
        assert_eq!(sent(env, p.c3, &reply(BRIDGE_IP)), SHOT);
        assert_eq!(neigh_spoofed(env), 2 * refused.len() as u64 + 1);
    });
}

/// The bridge's IPv6 address in these fixtures, and a link-local address
/// of the host's that is no EUI-64 one (set by hand).
const BRIDGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const BRIDGE_LL_MANUAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x17, 1);
/// C1's EUI-64 link-local address (its MAC 02:42:ac:11:00:02).
const C1_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0042, 0xacff, 0xfe11, 0x0002);

/// Duplicate address detection for `addr`: a solicitation from `::`.
fn dad(addr: Ipv6Addr) -> Vec<u8> {
    let mut p = Ipv6Packet::icmpv6(NS, 0);
    (p.src, p.dst, p.hop_limit) = (Ipv6Addr::UNSPECIFIED, addr, 255);
    p.payload = vec![0, 0, 0, 0];
    p.payload.extend(addr.octets());
    p.frame()
}

/// IPv6's twin of the ARP fixture above: an advertisement's target and a
/// solicitation's source are claims, judged on every port.
#[test]
fn neighbour_discovery_from_any_container_never_claims_the_hosts_or_a_policy_containers_addresses()
{
    in_fixture_ns(|env| {
        let p = setup(env);
        for a in [BRIDGE6, GATEWAY_LL, BRIDGE_LL_MANUAL] {
            env.host_addr6(a);
        }
        let unknown = env.add_port("pc9");
        // An IPv6-only task with policy whose container's IPv4 address is
        // no task's endpoint: its port belongs to no known task, and its
        // own claims pass as its port holds the address (since session 10
        // ports learn their IPv6 addresses too; see neighbour6_fixtures).
        let v6_only = env.add_port("pc8");
        env.port_addrs(v6_only, &[Ipv4Addr::new(172, 17, 0, 8)]);
        let v6_only_addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 8);
        env.port_addrs6(v6_only, &[v6_only_addr]);
        env.set_endpoint6(v6_only_addr, 8, true);
        let chosen_ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x17, 4);
        let stranger = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);
        let mut echo = Ipv6Packet::icmpv6(128, 0);
        (echo.src, echo.dst, echo.hop_limit) = (C3_6, C1_6, 255);
        let allowed = [
            ("its own address", p.c3, na(C3_6, C3_6, Some(SRC_MAC))),
            ("its EUI-64 link-local", p.c3, na(SRC_LL, SRC_LL, None)),
            (
                "a link-local of its choosing",
                p.c3,
                na(chosen_ll, chosen_ll, Some(SRC_MAC)),
            ),
            (
                "resolving a container with policy",
                p.c3,
                ns(C3_6, C1_6, SRC_MAC),
            ),
            (
                "resolving the gateway",
                p.c3,
                ns(SRC_LL, GATEWAY_LL, SRC_MAC),
            ),
            ("duplicate address detection", p.c3, dad(C3_6)),
            (
                "a stranger's address",
                p.c3,
                na(C3_6, stranger, Some(SRC_MAC)),
            ),
            (
                "not learned, an open task's address",
                unknown,
                na(C3_6, C3_6, Some(SRC_MAC)),
            ),
            ("no neighbour discovery, hop limit 255", p.c3, echo.frame()),
            (
                "an IPv6-only task's own address, its port of no known task",
                v6_only,
                na(v6_only_addr, v6_only_addr, Some(SRC_MAC)),
            ),
        ];
        for (what, port, f) in &allowed {
            assert_eq!(sent(env, *port, f), OK, "{what}");
        }
        assert_eq!(neigh_spoofed(env), 0);
        let refused = [
            (
                "a container's with policy",
                p.c3,
                na(C3_6, C1_6, Some(SRC_MAC)),
            ),
            (
                "an IPv6-only policy task's, from a known task's port",
                p.c3,
                na(C3_6, v6_only_addr, Some(SRC_MAC)),
            ),
            (
                "another container's with policy",
                p.c3,
                na(C3_6, C2_6, Some(SRC_MAC)),
            ),
            (
                "soliciting from one with policy",
                p.c3,
                ns(C1_6, C2_6, SRC_MAC),
            ),
            ("the gateway's", p.c3, na(C3_6, BRIDGE6, Some(SRC_MAC))),
            (
                "soliciting from the gateway's",
                p.c3,
                ns(BRIDGE6, C1_6, SRC_MAC),
            ),
            (
                "the gateway's link-local",
                p.c3,
                na(SRC_LL, GATEWAY_LL, Some(SRC_MAC)),
            ),
            (
                "the host's own link-local",
                p.c3,
                na(SRC_LL, BRIDGE_LL_MANUAL, Some(SRC_MAC)),
            ),
            (
                "C1's EUI-64 link-local, another MAC",
                p.c3,
                na(SRC_LL, C1_LL, Some(SRC_MAC)),
            ),
            (
                "an EUI-64 link-local not its MAC's",
                p.c3,
                na(SRC_LL, SRC_LL, Some(C1_MAC)),
            ),
            (
                "not learned, a container's with policy",
                unknown,
                na(C3_6, C1_6, Some(SRC_MAC)),
            ),
            (
                "not learned, the gateway's",
                unknown,
                na(C3_6, BRIDGE6, Some(SRC_MAC)),
            ),
        ];
        for (what, port, f) in &refused {
            assert_eq!(sent(env, *port, f), SHOT, "{what}");
        }
        assert_eq!(neigh_spoofed(env), refused.len() as u64);
        // With policy nowhere, only the host's addresses are left to keep.
        no_policy_anywhere(env);
        assert_eq!(sent(env, p.c3, &na(C3_6, C1_6, Some(SRC_MAC))), OK);
        assert_eq!(sent(env, p.c3, &na(C3_6, BRIDGE6, Some(SRC_MAC))), SHOT);
        assert_eq!(neigh_spoofed(env), refused.len() as u64 + 1);
    });
}

/// Linux takes neighbour discovery behind hop-by-hop, routing and
/// destination options headers: a claim there is judged as one right after
/// the fixed header, from a port without policy and from one with policy
/// whose egress allows all (whose judges see `ICMPv6` behind extension
/// headers as an upper layer that `all` admits).
#[test]
fn a_neighbour_claim_behind_extension_headers_is_judged_all_the_same() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let all = rule(None, (0, u16::MAX), any6());
        env.set_rules6(1, DIR_EGRESS, &[all]);
        let behind = |src, target, ext: &[V6Ext]| {
            pkt::neighbour_advert_packet(src, target, Some(SRC_MAC))
                .with_ext(ext)
                .frame()
        };
        let chains: [&[V6Ext]; 3] = [
            &[V6Ext::DestOpts],
            &[V6Ext::HopByHop, V6Ext::Routing],
            &[V6Ext::HopByHop, V6Ext::Routing, V6Ext::DestOpts],
        ];
        for ext in chains {
            assert_eq!(
                sent(env, p.c3, &behind(C3_6, C3_6, ext)),
                OK,
                "own, {ext:?}"
            );
            assert_eq!(
                sent(env, p.c1, &behind(C1_6, C1_6, ext)),
                OK,
                "own, {ext:?}"
            );
        }
        assert_eq!(neigh_spoofed(env), 0);
        for ext in chains {
            let from_open = behind(C3_6, C1_6, ext);
            assert_eq!(sent(env, p.c3, &from_open), SHOT, "C3 claims C1, {ext:?}");
            let from_policy = behind(C1_6, C2_6, ext);
            assert_eq!(sent(env, p.c1, &from_policy), SHOT, "C1 claims C2, {ext:?}");
        }
        assert_eq!(neigh_spoofed(env), 2 * chains.len() as u64);
    });
}

/// An IPv6 TCP segment with a window-scale option of `wscale` (on a SYN).
fn tcp6_seg(
    (src, sport): (Ipv6Addr, u16),
    (dst, dport): (Ipv6Addr, u16),
    flags: u8,
    (seq, ack): (u32, u32),
    wscale: Option<u8>,
) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    let opts: Vec<u8> = match wscale {
        Some(w) => vec![1, 3, 3, w],
        None => Vec::new(),
    };
    tcp.push(((20 + opts.len()) as u8 / 4) << 4);
    tcp.push(flags);
    tcp.extend(1000u16.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    tcp.extend(opts);
    let c = pkt::csum(&tcp, pkt::pseudo_sum6(src, dst, pkt::TCP, tcp.len()));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend(pkt::ETH_P_IPV6.to_be_bytes());
    f.extend([0x60, 0, 0, 0]);
    f.extend((tcp.len() as u16).to_be_bytes());
    f.extend([pkt::TCP, 64]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(tcp);
    f
}

/// IPv6 security-group tracking reads the window scale as IPv4's does: a
/// RST from the container beyond its peer's unscaled window but within
/// the scaled one marks the flow closing; one beyond that does not.
#[test]
fn ipv6_flows_are_tracked_with_their_window_scale() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let client = (pkt::CLIENT6, 40000);
        let server = (C1_6, 80);
        let syn = tcp6_seg(client, server, pkt::SYN, (100, 0), Some(7));
        assert_eq!(received(env, p.c1, &syn), OK);
        let syn_ack = tcp6_seg(server, client, pkt::SYN | pkt::ACK, (900, 101), Some(7));
        assert_eq!(sent(env, p.c1, &syn_ack), OK);
        let ack = tcp6_seg(client, server, pkt::ACK, (101, 901), None);
        assert_eq!(received(env, p.c1, &ack), OK);
        let mut key = FlowKey6 {
            src_addr: pkt::CLIENT6.octets(),
            dst_addr: C1_6.octets(),
            src_port_be: 40000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            proto: pkt::TCP,
            _pad: [0; 3],
        };
        key._pad[0] = berth_maps::CT6_SIDE_INGRESS;
        let flags = |env: &Env| {
            env.map_get::<FlowKey6, berth_maps::CtEntry>("BERTH_CT6", &key)
                .expect("established")
                .flags
        };
        assert_eq!(flags(env) & berth_maps::CT_F_CLOSING, 0);
        // The client's window is 1000 << 7 = 128 000 bytes.
        let oow = env.counter(Counter::TcpOutOfWindow);
        let far = tcp6_seg(server, client, pkt::RST, (901 + 200_000, 0), None);
        assert_eq!(sent(env, p.c1, &far), OK, "forwarded");
        assert_eq!(flags(env) & berth_maps::CT_F_CLOSING, 0);
        assert_eq!(env.counter(Counter::TcpOutOfWindow), oow + 1);
        let near = tcp6_seg(server, client, pkt::RST, (901 + 50_000, 0), None);
        assert_eq!(sent(env, p.c1, &near), OK);
        assert_ne!(
            flags(env) & berth_maps::CT_F_CLOSING,
            0,
            "within the scaled window"
        );
    });
}
