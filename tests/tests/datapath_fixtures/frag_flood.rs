//! A flood of refused first fragments never evicts what an allowed
//! datagram's first fragment left at an uplink (`frag.rs`, `frag6.rs`):
//! refusals are remembered in tables of their own (`BERTH_FRAGS_DENY`,
//! `BERTH_FRAGS6_DENY`), so anyone on the LAN sending more refused first
//! fragments than those tables hold (random IP ids, spoofed sources, ports
//! the groups refuse) only churns them. An allowed datagram's later
//! fragments, arriving after such a flood, are still translated to its
//! container, exactly as without it; before, one table held both, and
//! they went to the host untranslated (`fragment`).
use std::net::{Ipv4Addr, Ipv6Addr};

use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, Packet, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::{
    Counter, FRAGS6_CAPACITY, FRAGS6_DENY_CAPACITY, FRAGS_CAPACITY, FRAGS_DENY_CAPACITY,
};

use crate::{
    ipv6::publish6,
    nat66::{expect, to_ctr},
    run::{run_tc, run_xdp, Failures, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP},
    table::{client_udp, dnat, publish_defaults, Case, Expect},
};

const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// C2's UDP port published on the host; C2's task has groups and no rule.
const REFUSED_PORT: u16 = 8091;

/// More refused first fragments than either table holds.
fn flood_len(allowed: u32, denied: u32) -> u32 {
    allowed.max(denied) + 256
}

/// A 3000-byte UDP datagram from spoofed source number `i` (198.51.100.0
/// onwards, its IP id from `i` too) to the refused port.
fn refused4(i: u32) -> Packet {
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + i);
    let mut p =
        Packet::udp(src, 1024 + (i % 60000) as u16, HOST, REFUSED_PORT).with_payload_len(3000);
    p.ip_id = 0x6000u16.wrapping_add(i as u16);
    p
}

/// The client's datagram to `[::]:8053` (C1's UDP 53) is allowed, C2's UDP
/// 91 (host port 8091) refused: through TC, then XDP, its first fragment is
/// translated, `flood_len` refused first fragments follow, then its middle
/// and last fragments, which must leave as they would have without them.
#[test]
fn refused_ipv4_first_fragments_never_evict_a_translated_datagram() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        env.publish(&binding(
            Ipv4Addr::UNSPECIFIED,
            REFUSED_PORT,
            C2,
            91,
            Protocol::Udp,
        ));
        env.set_endpoint(C2, 2, true);
        let docker0 = ifindex("docker0");
        let n = flood_len(FRAGS_CAPACITY, FRAGS_DENY_CAPACITY);
        for (round, xdp) in [(0u32, false), (1, true)] {
            let hook = if xdp { "xdp" } else { "tc" };
            let mut p = client_udp(8053).with_payload_len(3000);
            p.ip_id = 0x5001 + round as u16;
            let out = dnat(&p, C1, 53, true);
            let case = |name: &str, off: usize, len: usize, more: bool| Case {
                name: format!("{hook}: {name}"),
                frame: pkt::fragment(&p, off, len, more),
                expect: Expect::Nat {
                    want: pkt::fragment(&out, off, len, more),
                    neigh: false,
                },
            };
            let run = |f: &mut Failures, c: &Case| {
                if xdp {
                    run_xdp(env, f, c, docker0);
                } else {
                    run_tc(env, f, "berth_ingress", c);
                }
            };
            let mut f = Failures(Vec::new());
            run(&mut f, &case("allowed first fragment", 0, 1480, true));
            assert!(f.0.is_empty(), "{}", f.0.join("\n"));

            let refused = env.counter(Counter::PolicyDeniedIngress);
            let drop = if xdp { XDP_DROP } else { TC_ACT_SHOT };
            let verdict = |frame: &[u8]| {
                if xdp {
                    env.xdp("berth_xdp", frame).code
                } else {
                    env.tc("berth_ingress", frame).code
                }
            };
            for i in round * n..(round + 1) * n {
                let first = pkt::fragment(&refused4(i), 0, 1480, true);
                assert_eq!(verdict(&first), drop, "{hook}: refused first fragment {i}");
            }
            assert_eq!(
                env.counter(Counter::PolicyDeniedIngress),
                refused + u64::from(n),
                "{hook}: every one refused by C2's groups"
            );

            let orphans = env.counter(Counter::Fragment);
            run(
                &mut f,
                &case("middle fragment after the flood", 1480, 1480, true),
            );
            run(
                &mut f,
                &case("last fragment after the flood", 2960, 48, false),
            );
            assert!(f.0.is_empty(), "{}", f.0.join("\n"));
            assert_eq!(
                env.counter(Counter::Fragment),
                orphans,
                "{hook}: none left to the host"
            );
            // The newest refusals still hold: the last refused datagram's
            // later fragment is dropped, not handed to the host.
            let denied = env.counter(Counter::FragDenied);
            let later = pkt::fragment(&refused4((round + 1) * n - 1), 1480, 1480, true);
            let code = verdict(&later);
            assert_eq!(code, drop, "{hook}: a refused datagram's later fragment");
            assert_eq!(env.counter(Counter::FragDenied), denied + 1, "{hook}");
        }
    });
}

/// The same over IPv6: the client's datagram to `[2001:db8::1]:8053`
/// (C1's UDP 53, no groups) is translated; the flood claims the host's own
/// address as its source (refused as spoofed), each with another
/// identification.
#[test]
fn refused_ipv6_first_fragments_never_evict_a_translated_datagram() {
    in_fixture_ns(|env| {
        publish6(env, HOST6, 8053, Protocol::Udp, 53);
        env.host_addr6(HOST6);
        let datagram = |src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, hop: u8, id: u32| {
            let mut p = Ipv6Packet::new(pkt::UDP, dport);
            (p.src, p.dst, p.sport, p.hop_limit) = (src, dst, sport, hop);
            p.payload = (0..3000).map(|i| (i % 251) as u8).collect();
            pkt::fragments6(&p.frame(), &[], id, 1232)
        };
        let id = 0x5151_0001;
        let sent = datagram(CLIENT6, 5353, HOST6, 8053, 64, id);
        let want = datagram(CLIENT6, 5353, C1_6, 53, 63, id);
        assert_eq!(sent.len(), 3);
        expect(
            env,
            "berth_ingress",
            &sent[0],
            TC_ACT_REDIRECT,
            &to_ctr(want[0].clone()),
            "the allowed first fragment",
        );
        let n = flood_len(FRAGS6_CAPACITY, FRAGS6_DENY_CAPACITY);
        let mut last = Vec::new();
        for i in 0..n {
            let spoofed = datagram(
                HOST6,
                1024 + (i % 60000) as u16,
                HOST6,
                8053,
                64,
                0x7000_0000 + i,
            );
            let v = env.tc("berth_ingress", &spoofed[0]);
            assert_eq!(v.code, TC_ACT_SHOT, "refused first fragment {i}");
            last = spoofed;
        }
        let orphans = env.counter(Counter::Fragment);
        for i in 1..3 {
            expect(
                env,
                "berth_ingress",
                &sent[i],
                TC_ACT_REDIRECT,
                &to_ctr(want[i].clone()),
                &format!("later fragment {i} after the flood"),
            );
        }
        assert_eq!(
            env.counter(Counter::Fragment),
            orphans,
            "none left to the host"
        );
        // The newest refusal still holds.
        let denied = env.counter(Counter::FragDenied);
        assert_eq!(env.tc("berth_ingress", &last[1]).code, TC_ACT_SHOT);
        assert_eq!(env.counter(Counter::FragDenied), denied + 1);
    });
}
