//! Neighbour claims judged on every container port, IPv6 as IPv4, through
//! `BPF_PROG_TEST_RUN` on `berth_from_ctr` / `berth_to_ctr`:
//! - a port's own IPv6 addresses are learned (`BERTH_PORT_ADDRS6`), and a
//!   port without policy may claim a policy container's IPv6 address only
//!   when it holds it, whatever task (or none) its IPv4 addresses belong
//!   to: until session 10 a port whose IPv4 addresses were no task's could
//!   claim any policy container's IPv6 address;
//! - with the IPv6 program's slot empty, neighbour discovery is judged all
//!   the same before it passes;
//! - ARP and neighbour discovery behind VLAN tags (VLAN 0 ones above all,
//!   which Linux reads as untagged) never leave any port.
//!
//! Each verdict and the counter are checked; no frame is rewritten.
use std::net::{Ipv4Addr, Ipv6Addr};

use berth_integration::{
    pkt::{self, neighbour_advert as na, neighbour_solicit as ns, Ipv6Packet, Packet},
    testrun::*,
};
use berth_maps::{tail, Counter, CONFIG_NO_POLICY};

const OK: u32 = 0;
const SHOT: u32 = 2;

/// C1 has policy (task 1); C3 is a task without policy (task 3).
const C3: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);
const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const C3_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
/// A container no task knows: its IPv4 and IPv6 addresses are nobody's
/// endpoints.
const PLAIN: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 5);
const PLAIN_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
/// An IPv6-only task with policy (task 8): its container's IPv4 address
/// is no task's.
const V6_ONLY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 8);
const V6_ONLY_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 8);
/// The bridge's (the gateway's) IPv6 address.
const BRIDGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

struct Ports {
    c1: u32,
    c3: u32,
    plain: u32,
    v6_only: u32,
}

fn setup(env: &mut Env) -> Ports {
    let c1 = env.add_port("pc1");
    env.port_addrs(c1, &[C1]);
    env.port_addrs6(c1, &[C1_6]);
    let c3 = env.add_port("pc3");
    env.port_addrs(c3, &[C3]);
    env.port_addrs6(c3, &[C3_6]);
    let plain = env.add_port("pc5");
    env.port_addrs(plain, &[PLAIN]);
    env.port_addrs6(plain, &[PLAIN_6]);
    let v6_only = env.add_port("pc8");
    env.port_addrs(v6_only, &[V6_ONLY]);
    env.port_addrs6(v6_only, &[V6_ONLY_6]);
    env.set_endpoint(C1, 1, true);
    env.set_endpoint6(C1_6, 1, true);
    env.set_endpoint(C3, 3, false);
    env.set_endpoint6(C3_6, 3, false);
    env.set_endpoint6(V6_ONLY_6, 8, true);
    env.host_addr6(BRIDGE6);
    Ports {
        c1,
        c3,
        plain,
        v6_only,
    }
}

fn sent(env: &Env, port: u32, frame: &[u8]) -> u32 {
    let v = env.tc_on("berth_from_ctr", frame, port);
    assert_eq!(v.frame, frame, "berth_from_ctr changed a frame");
    v.code
}

fn received(env: &Env, port: u32, frame: &[u8]) -> u32 {
    let v = env.tc_on("berth_to_ctr", frame, port);
    assert_eq!(v.frame, frame, "berth_to_ctr changed a frame");
    v.code
}

fn neigh_spoofed(env: &Env) -> u64 {
    env.counter(Counter::NeighSpoofed)
}

fn frame_refused(env: &Env) -> u64 {
    env.counter(Counter::CtrFrameRefused)
}

fn no_policy_anywhere(env: &mut Env) {
    let mut m: aya::maps::Array<&mut aya::maps::MapData, u64> =
        aya::maps::Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(CONFIG_NO_POLICY, 1, 0).unwrap();
}

/// An unsolicited advertisement of `target` from `src`.
fn advert(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    na(src, target, Some(MAC))
}

#[test]
fn an_ipv6_claim_from_a_port_without_policy_names_only_what_its_port_holds() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let allowed = [
            ("a plain container's own address", p.plain, PLAIN_6),
            ("an open task's own address", p.c3, C3_6),
            (
                "an IPv6-only policy task's own, its port of no known task",
                p.v6_only,
                V6_ONLY_6,
            ),
            ("a policy container's own", p.c1, C1_6),
        ];
        for (what, port, target) in allowed {
            let src = if port == p.plain { PLAIN_6 } else { target };
            assert_eq!(sent(env, port, &advert(src, target)), OK, "{what}");
        }
        assert_eq!(sent(env, p.plain, &ns(PLAIN_6, C1_6, MAC)), OK);
        assert_eq!(neigh_spoofed(env), 0);
        // A port whose IPv4 addresses are no task's passed these until
        // session 10: it had no known task to compare with.
        let refused = [
            ("a policy container's, from a plain one", p.plain, C1_6),
            (
                "an IPv6-only policy task's, from a plain one",
                p.plain,
                V6_ONLY_6,
            ),
            (
                "a policy container's, from an IPv6-only task's port",
                p.v6_only,
                C1_6,
            ),
            (
                "an IPv6-only policy task's, from an open task",
                p.c3,
                V6_ONLY_6,
            ),
            ("the gateway's, from a plain one", p.plain, BRIDGE6),
        ];
        for (what, port, target) in refused {
            assert_eq!(
                sent(env, port, &advert(PLAIN_6, target)),
                SHOT,
                "advert: {what}"
            );
            assert_eq!(
                sent(env, port, &ns(target, PLAIN_6, MAC)),
                SHOT,
                "solicitation: {what}"
            );
        }
        assert_eq!(neigh_spoofed(env), 2 * refused.len() as u64);
        // A policy container may claim what its port holds that is no
        // task's, as ARP's sender (one of its port's addresses).
        let extra = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x99, 2);
        assert_eq!(sent(env, p.c1, &advert(C1_6, extra)), SHOT);
        env.port_addrs6(p.c1, &[extra]);
        assert_eq!(sent(env, p.c1, &advert(C1_6, extra)), OK);
        // Once the plain port holds the address (learned from its
        // namespace, after its owner left), the claim is its own.
        env.port_addrs6(p.plain, &[V6_ONLY_6]);
        assert_eq!(sent(env, p.plain, &advert(PLAIN_6, V6_ONLY_6)), OK);
        assert_eq!(neigh_spoofed(env), 2 * refused.len() as u64 + 1);
    });
}

/// With the IPv6 program's slot empty (a daemon whose build has none
/// there), IPv6 from a port without policy passes unjudged, and so does
/// neighbour discovery from any port: what it claims is judged first, as
/// the program would have.
#[test]
fn neighbour_claims_are_judged_without_the_ipv6_program() {
    in_fixture_ns(|env| {
        let p = setup(env);
        env.clear_tail(tail::FROM_CTR6);
        env.clear_tail(tail::TO_CTR6);
        assert_eq!(sent(env, p.c3, &advert(C3_6, C3_6)), OK);
        assert_eq!(sent(env, p.c3, &ns(C3_6, BRIDGE6, MAC)), OK);
        assert_eq!(sent(env, p.c1, &advert(C1_6, C1_6)), OK);
        let data = Packet::tcp(C3, 40000, OTHER, 80).frame();
        assert_eq!(sent(env, p.c3, &data), OK);
        let mut tcp6 = Ipv6Packet::new(pkt::TCP, 80);
        (tcp6.src, tcp6.dst) = (C3_6, pkt::CLIENT6);
        assert_eq!(sent(env, p.c3, &tcp6.frame()), OK);
        assert_eq!(neigh_spoofed(env), 0);
        let refused = [
            ("a policy container's, from an open one", p.c3, C1_6),
            ("the gateway's, from an open one", p.c3, BRIDGE6),
            ("a policy container's, from a plain one", p.plain, C1_6),
            ("an open task's, from a policy one", p.c1, C3_6),
        ];
        for (what, port, target) in refused {
            assert_eq!(sent(env, port, &advert(C3_6, target)), SHOT, "{what}");
        }
        assert_eq!(neigh_spoofed(env), refused.len() as u64);
        // What a container receives is not its claim.
        assert_eq!(received(env, p.c3, &advert(BRIDGE6, BRIDGE6)), OK);
        // With policy nowhere, the host's addresses are still kept.
        no_policy_anywhere(env);
        assert_eq!(sent(env, p.c3, &advert(C3_6, C1_6)), OK);
        assert_eq!(sent(env, p.c3, &advert(C3_6, BRIDGE6)), SHOT);
        assert_eq!(neigh_spoofed(env), refused.len() as u64 + 1);
    });
}

/// `n` 802.1Q tags of VLAN 0 around `frame`.
fn vlan0(frame: &[u8], n: usize) -> Vec<u8> {
    (0..n).fold(frame.to_vec(), |f, _| pkt::vlan_tagged(&f, 0))
}

/// Linux reads a frame under a VLAN 0 (priority) tag, or an 802.1ad tag
/// of VLAN 0 outside an 802.1Q one, as untagged: a claim inside reaches
/// the host and the other containers. Tagged ARP and neighbour discovery
/// are dropped from every port, policy or not; other tagged frames from a
/// port without policy still pass (a container may trunk VLANs).
#[test]
fn tagged_arp_and_neighbour_discovery_never_leave_any_port() {
    in_fixture_ns(|env| {
        let p = setup(env);
        let arp = pkt::arp(2, MAC, C1, BRIDGE_MAC, BRIDGE_IP);
        let own_arp = pkt::arp(2, MAC, C3, BRIDGE_MAC, BRIDGE_IP);
        let nd = advert(C3_6, C1_6);
        let own_nd = advert(C3_6, C3_6);
        let mut nd_behind_ext = pkt::neighbour_advert_packet(C3_6, BRIDGE6, Some(MAC));
        nd_behind_ext.ext = vec![pkt::V6Ext::DestOpts];
        let nd_behind_ext = nd_behind_ext.frame();
        let tagged = [
            ("802.1Q VLAN 0, ARP", pkt::vlan_tagged(&arp, 0)),
            ("802.1Q VLAN 0, its own ARP", pkt::vlan_tagged(&own_arp, 0)),
            ("802.1ad 0 over 802.1Q 0, ARP", pkt::qinq_tagged(&arp, 0, 0)),
            ("802.1Q VLAN 100, ARP", pkt::vlan_tagged(&arp, 100)),
            ("802.1Q VLAN 0, an advert", pkt::vlan_tagged(&nd, 0)),
            (
                "802.1ad 0 over 802.1Q 0, an advert",
                pkt::qinq_tagged(&nd, 0, 0),
            ),
            (
                "802.1ad 0 over 802.1Q 0, its own advert",
                pkt::qinq_tagged(&own_nd, 0, 0),
            ),
            (
                "802.1ad over 802.1Q, behind options",
                pkt::qinq_tagged(&nd_behind_ext, 0, 0),
            ),
            ("eight VLAN 0 tags, ARP", vlan0(&arp, 8)),
            (
                "more tags than are looked through",
                vlan0(&Packet::tcp(C3, 1, OTHER, 80).frame(), 9),
            ),
        ];
        for port in [p.c3, p.plain] {
            for (what, f) in &tagged {
                assert_eq!(sent(env, port, f), SHOT, "{what}");
            }
        }
        assert_eq!(frame_refused(env), 2 * tagged.len() as u64);
        // Other tagged frames from a port without policy pass, IPv6 with
        // another hop limit included; what a container receives is not its
        // claim; the untagged claims themselves are judged as ever.
        let mut tcp6 = Ipv6Packet::new(pkt::TCP, 80);
        (tcp6.src, tcp6.dst) = (C3_6, pkt::CLIENT6);
        let passing = [
            pkt::qinq_tagged(&Packet::tcp(C3, 1, OTHER, 80).frame(), 0, 0),
            pkt::vlan_tagged(&tcp6.frame(), 0),
            vlan0(&Packet::udp(C3, 1, OTHER, 53).frame(), 8),
        ];
        for f in &passing {
            assert_eq!(sent(env, p.c3, f), OK);
        }
        assert_eq!(received(env, p.c3, &pkt::qinq_tagged(&arp, 0, 0)), OK);
        assert_eq!(sent(env, p.c3, &own_arp), OK);
        assert_eq!(sent(env, p.c3, &own_nd), OK);
        assert_eq!(frame_refused(env), 2 * tagged.len() as u64);
        // With policy nowhere, all the same.
        no_policy_anywhere(env);
        assert_eq!(sent(env, p.c3, &tagged[2].1), SHOT);
        assert_eq!(sent(env, p.c3, &passing[0]), OK);
        assert_eq!(frame_refused(env), 2 * tagged.len() as u64 + 1);
    });
}
