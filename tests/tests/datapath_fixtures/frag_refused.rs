//! A datagram whose first fragment an uplink refuses is dropped whole
//! there, both families, TC and XDP: the refusal is remembered under the
//! datagram's DNAT key (`frag.rs`, `frag6.rs`), and its later fragments
//! are dropped (`frag_denied`) instead of being handed to the host, whose
//! reassembly would queue them until they time out (they used to pass,
//! counted `fragment`). A later fragment of a datagram nothing was
//! remembered for still goes to the host (`frag66`, `ingress` tables).
use std::net::Ipv6Addr;

use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, Packet, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::Counter;

use crate::{
    ipv6::publish6,
    run::{TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    table::publish_defaults,
};

const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// A 3000-byte UDP datagram from the client to `dport` on the host, in
/// three fragments (the first, a middle and the last one).
fn fragments4(sport: u16, dport: u16, id: u16) -> [Vec<u8>; 3] {
    let mut p = Packet::udp(CLIENT, sport, HOST, dport).with_payload_len(3000);
    p.ip_id = id;
    p.frag = 0;
    [
        pkt::fragment(&p, 0, 1480, true),
        pkt::fragment(&p, 1480, 1480, true),
        pkt::fragment(&p, 2960, 1480, false),
    ]
}

/// The same over IPv6, to the host's `2001:db8::1`.
fn fragments6(sport: u16, dport: u16, id: u32) -> Vec<Vec<u8>> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport) = (CLIENT6, HOST6, sport);
    p.payload = (0..3000).map(|i| (i % 251) as u8).collect();
    pkt::fragments6(&p.frame(), &[], id, 1232)
}

/// Each fragment through the TC or XDP uplink program: (verdict, whether
/// the frame came out as it went in).
fn run(env: &Env, xdp: bool, frags: &[Vec<u8>]) -> Vec<(u32, bool)> {
    frags
        .iter()
        .map(|f| {
            let v = if xdp {
                env.xdp("berth_xdp", f)
            } else {
                env.tc("berth_ingress", f)
            };
            (v.code, v.frame == *f)
        })
        .collect()
}

/// C1's task has policy and no rule: every new IPv4 flow to it is refused.
#[test]
fn later_ipv4_fragments_of_a_datagram_refused_at_the_uplink_are_dropped_there() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        env.set_endpoint(C1, 1, true);
        for (xdp, drop, id) in [(false, TC_ACT_SHOT, 0x7001), (true, XDP_DROP, 0x7002)] {
            let hook = if xdp { "xdp" } else { "tc" };
            let (denied, orphans) = (
                env.counter(Counter::FragDenied),
                env.counter(Counter::Fragment),
            );
            let frags = fragments4(40000, 8053, id);
            assert_eq!(
                run(env, xdp, &frags),
                [(drop, true); 3],
                "{hook}: the refused first fragment and both later ones"
            );
            assert_eq!(env.counter(Counter::FragDenied), denied + 2, "{hook}");
            assert_eq!(env.counter(Counter::Fragment), orphans, "{hook}");
            // Another datagram of the same client (another id), whose
            // first nobody saw: still the host's, as before.
            let other = fragments4(40000, 8053, id + 0x100);
            let pass = if xdp { XDP_PASS } else { TC_ACT_OK };
            assert_eq!(run(env, xdp, &other[1..]), [(pass, true); 2], "{hook}");
            assert_eq!(env.counter(Counter::Fragment), orphans + 2, "{hook}");
        }
    });
}

/// The same over IPv6 (`berth_ingress` -> `berth_ingress6` ->
/// `berth_frag6`); XDP leaves IPv6 to TC.
#[test]
fn later_ipv6_fragments_of_a_datagram_refused_at_the_uplink_are_dropped_there() {
    in_fixture_ns(|env| {
        publish6(env, HOST6, 8053, Protocol::Udp, 53);
        env.host_addr6(HOST6);
        env.set_endpoint6(C1_6, 7, true);
        let denied = env.counter(Counter::FragDenied);
        let frags = fragments6(5353, 8053, 0x0a0b_0c0d);
        assert_eq!(frags.len(), 3);
        assert_eq!(run(env, false, &frags), [(TC_ACT_SHOT, true); 3]);
        assert_eq!(env.counter(Counter::FragDenied), denied + 2);
        assert_eq!(env.counter(Counter::Fragment), 0);
        assert_eq!(env.counter(Counter::PolicyDeniedIngress), 1);
        // A client's spoofed source (the host's own address) is refused
        // too, and its datagram with it.
        let mut spoofed = fragments6(5354, 8053, 0x0a0b_0c0e);
        for f in &mut spoofed {
            f[pkt::ETH_LEN + 8..pkt::ETH_LEN + 24].copy_from_slice(&HOST6.octets());
        }
        assert_eq!(run(env, false, &spoofed), [(TC_ACT_SHOT, true); 3]);
        assert_eq!(env.counter(Counter::FragDenied), denied + 4);
        // Another datagram, whose first nobody saw: the host's.
        let other = fragments6(5353, 8053, 0x0a0b_0c0f);
        assert_eq!(run(env, false, &other[1..]), [(TC_ACT_OK, true); 2]);
        assert_eq!(env.counter(Counter::Fragment), 2);
    });
}
