//! `BERTH_TAILS`: each IPv4 TC program hands IPv6 to its program through
//! the one program array, and a slot left empty falls through as its call
//! site says — untouched at an uplink or the bridge, dropped on a
//! container's veth where policy applies to the port (neighbour discovery
//! excepted) — counted `ipv6_no_program` either way. IPv4 never goes near
//! the array.
use std::net::Ipv6Addr;

use aya::maps::{Array, MapData};
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, HOST6},
    testrun::*,
};
use berth_maps::{tail, Counter, CONFIG_MAP, CONFIG_NO_POLICY};

use crate::{ipv6::publish6, table::*};

const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;

fn tcp6() -> Vec<u8> {
    Ipv6Packet::new(pkt::TCP, 8080).frame()
}

fn set_no_policy(env: &mut Env, on: bool) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut(CONFIG_MAP).unwrap()).unwrap();
    m.set(CONFIG_NO_POLICY, u64::from(on), 0).unwrap();
}

/// (verdict, frame unchanged, `policy_denied_ingress` and
/// `ipv6_no_program` moved by) one TC run of `prog` on `ifindex` (0: the
/// test run's own).
fn run(env: &Env, prog: &str, frame: &[u8], ifindex: u32) -> (u32, bool, u64, u64) {
    let (u, n) = (
        env.counter(Counter::PolicyDeniedIngress),
        env.counter(Counter::Ipv6NoProgram),
    );
    let v = if ifindex == 0 {
        env.tc(prog, frame)
    } else {
        env.tc_on(prog, frame, ifindex)
    };
    (
        v.code,
        v.frame == frame,
        env.counter(Counter::PolicyDeniedIngress) - u,
        env.counter(Counter::Ipv6NoProgram) - n,
    )
}

#[test]
fn ipv6_at_an_uplink_reaches_its_program_and_without_it_passes_counted() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        publish6(env, Ipv6Addr::UNSPECIFIED, 8080, Protocol::Tcp, 80);
        env.host_addr6(HOST6);
        env.set_endpoint6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 7, true);
        let f = tcp6();
        for prog in ["berth_ingress", "berth_deliver"] {
            // berth_ingress6 saw it: the container has policy and no rule,
            // so it refuses the new flow.
            assert_eq!(run(env, prog, &f, 0), (TC_SHOT, true, 1, 0), "{prog}");
        }
        env.clear_tail(tail::INGRESS6);
        for prog in ["berth_ingress", "berth_deliver"] {
            assert_eq!(
                run(env, prog, &f, 0),
                (TC_OK, true, 0, 1),
                "{prog}, slot empty"
            );
        }
        // IPv4 and ARP never reach the array.
        for (what, frame) in [
            ("tcp to a mapped port", client_tcp(8080).frame()),
            ("tcp to nothing", client_tcp(9).frame()),
            ("arp", pkt::arp_request(CLIENT, HOST)),
        ] {
            for prog in ["berth_ingress", "berth_deliver"] {
                let (_, _, _, missed) = run(env, prog, &frame, 0);
                assert_eq!(missed, 0, "{prog}: {what}");
            }
        }
        assert_eq!(
            env.counter(Counter::IngressDnat),
            1,
            "the ipv4 tcp was translated"
        );
    });
}

#[test]
fn ipv6_at_the_bridge_reaches_its_program_and_without_it_passes_counted() {
    in_fixture_ns(|env| {
        let mut reply = Ipv6Packet::new(pkt::TCP, 40000);
        reply.src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        reply.dst = pkt::CLIENT6;
        reply.sport = 80;
        let f = reply.frame();
        // berth_reply6 finds no flow of it: the container's own traffic.
        assert_eq!(run(env, "berth_reply", &f, 0), (TC_OK, true, 0, 0));
        env.clear_tail(tail::REPLY6);
        assert_eq!(run(env, "berth_reply", &f, 0), (TC_OK, true, 0, 1));
        let (_, _, _, missed) = run(env, "berth_reply", &pkt::arp_request(C1, BRIDGE_IP), 0);
        assert_eq!(missed, 0, "arp");
    });
}

#[test]
fn ipv6_on_a_port_without_its_program_is_dropped_where_policy_applies() {
    in_fixture_ns(|env| {
        // The veth's IPv6 programs exist (sg6): empty their slots.
        env.clear_tail(tail::FROM_CTR6);
        env.clear_tail(tail::TO_CTR6);
        let guarded = env.add_port("ctr1");
        let open = env.add_port("ctr2");
        let unknown = env.add_port("ctr3");
        env.port_addrs(guarded, &[C1]);
        env.port_addrs(open, &[C2]);
        env.set_endpoint(C1, 1, true);
        env.set_endpoint(C2, 2, false);
        let mut from_ctr = Ipv6Packet::new(pkt::TCP, 443);
        from_ctr.src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        from_ctr.dst = HOST6;
        let data = from_ctr.frame();
        // Neighbour discovery is sent with hop limit 255 (RFC 4861), and
        // only that is let through.
        let nd = |ty| {
            let mut p = Ipv6Packet::icmpv6(ty, 0);
            p.hop_limit = 255;
            p.frame()
        };
        let (ns, ra) = (nd(135), nd(134));
        let mut routed_ns = Ipv6Packet::icmpv6(135, 0);
        routed_ns.hop_limit = 64;
        let routed_ns = routed_ns.frame();
        let echo = Ipv6Packet::icmpv6(128, 0).frame();
        let ptb = Ipv6Packet::icmpv6(2, 0).frame();
        let mut nd_behind_ext = Ipv6Packet::icmpv6(136, 0);
        nd_behind_ext.ext = vec![pkt::V6Ext::DestOpts];
        let nd_behind_ext = nd_behind_ext.frame();
        for prog in ["berth_from_ctr", "berth_to_ctr"] {
            for (what, f, verdict) in [
                ("tcp", &data, TC_SHOT),
                ("echo request", &echo, TC_SHOT),
                ("packet too big", &ptb, TC_SHOT),
                (
                    "neighbour advertisement behind options",
                    &nd_behind_ext,
                    TC_SHOT,
                ),
                ("neighbour solicitation", &ns, TC_OK),
                ("routed neighbour solicitation", &routed_ns, TC_SHOT),
                // A container advertising itself as a router is the
                // rogue-RA attack; it receives them.
                (
                    "router advertisement",
                    &ra,
                    if prog == "berth_from_ctr" {
                        TC_SHOT
                    } else {
                        TC_OK
                    },
                ),
            ] {
                assert_eq!(
                    run(env, prog, f, guarded),
                    (verdict, true, 0, 1),
                    "{prog}: {what} on the port with policy"
                );
            }
            assert_eq!(
                run(env, prog, &data, open),
                (TC_OK, true, 0, 1),
                "{prog}: tcp on the port without policy"
            );
            // A port whose addresses were not learned may carry policy.
            assert_eq!(
                run(env, prog, &data, unknown),
                (TC_SHOT, true, 0, 1),
                "{prog}: tcp on the port not learned"
            );
        }
        // The daemon vouches that no endpoint has policy: nothing to hold.
        set_no_policy(env, true);
        for prog in ["berth_from_ctr", "berth_to_ctr"] {
            assert_eq!(
                run(env, prog, &data, guarded),
                (TC_OK, true, 0, 1),
                "{prog}"
            );
        }
    });
}
