//! `BPF_PROG_TEST_RUN` tables: frame in -> verdict and exact frame out, for
//! `berth_ingress` and `berth_xdp` (one table, both hooks), `berth_reply`
//! and `berth_deliver`. The expected frames are built from scratch by
//! `pkt`, which computes every checksum over the whole packet; the programs
//! update them incrementally. Every failure of a table is reported at once.
//! Needs root (loads eBPF, makes private namespaces).
mod binding_stats;
mod dplog6;
mod exact_ports;
mod flowlog;
mod flowlog6;
mod frag66;
mod frag_flood;
mod frag_refused;
mod host_addrs;
mod icmp;
mod icmp6;
mod ingress;
mod ipv6;
mod migrated;
mod nat66;
mod nexthop;
mod pmtu;
mod remap66;
mod reply;
mod run;
mod svc_cache;
mod table;
mod tails;
mod tracking;
mod wildcard;

use std::collections::HashSet;

use berth_integration::{
    pkt::{self, Ipv6Packet, Packet},
    testrun::*,
};
use berth_maps::XDP_HANDOFF_MAGIC;

use crate::{ingress::ingress_cases, reply::*, run::*, table::*};

// ---------------------------------------------------------------- deliver

/// Without XDP metadata (a TC test run cannot carry any) the deliver hook
/// must leave everything alone.
fn deliver_cases() -> Vec<Case> {
    let mut t = Table::default();
    t.pass("deliver: tcp to a mapped port", client_tcp(8080).frame());
    t.pass("deliver: udp to a mapped port", client_udp(8053).frame());
    t.pass("deliver: arp", pkt::arp_request(CLIENT, HOST));
    t.pass("deliver: ipv6", Ipv6Packet::new(pkt::TCP, 8080).frame());
    let mut f = vec![0u8; 14];
    f[..4].copy_from_slice(&XDP_HANDOFF_MAGIC.to_ne_bytes());
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    t.pass("deliver: frame starting with the hand-off magic", f);
    let mut p = client_tcp(8080);
    p.payload = [XDP_HANDOFF_MAGIC.to_ne_bytes(), 3u32.to_ne_bytes()].concat();
    t.pass("deliver: hand-off bytes in the payload", p.frame());
    t.cases
}

#[test]
fn ingress_table_tc_and_xdp() {
    run_ingress(ingress_cases());
}

#[test]
fn reply_table() {
    run_reply(reply_cases());
}

#[test]
fn deliver_table() {
    let cases = deliver_cases();
    in_fixture_ns(move |env| {
        let mut f = Failures(Vec::new());
        for c in &cases {
            run_tc(env, &mut f, "berth_deliver", c);
        }
        assert!(f.0.is_empty(), "{}", f.0.join("\n"));
    });
}

/// The tables hold at least 150 distinct frame shapes, every case name is
/// unique.
#[test]
fn fixture_tables_cover_at_least_150_shapes() {
    let tables = [
        ("ingress", ingress_cases()),
        ("reply", reply_cases()),
        ("deliver", deliver_cases()),
    ];
    let mut names = HashSet::new();
    let mut shapes = HashSet::new();
    for (table, cases) in &tables {
        for c in cases {
            assert!(
                names.insert(c.name.clone()),
                "duplicate case name {:?}",
                c.name
            );
            shapes.insert((*table, c.frame.clone()));
        }
    }
    let counts: Vec<String> = tables
        .iter()
        .map(|(t, c)| format!("{t} {}", c.len()))
        .collect();
    println!("fixture shapes: {} ({})", shapes.len(), counts.join(", "));
    assert!(shapes.len() >= 150, "only {} frame shapes", shapes.len());
}

#[test]
fn ingress_tracks_each_flow_once_with_the_host_side_tuple() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let f = Packet::tcp(CLIENT, 40000, HOST, 8080).frame();
        for _ in 0..3 {
            env.tc("berth_ingress", &f);
        }
        env.tc(
            "berth_ingress",
            &Packet::tcp(CLIENT, 40000, HOST, 9999).frame(),
        );
        let entries = env.nat_entries();
        assert_eq!(entries.len(), 1, "one flow, one entry: {entries:?}");
        let (k, v) = entries[0];
        assert_eq!(k.src_addr_be, u32::from_ne_bytes(C1.octets()));
        assert_eq!(k.dst_addr_be, u32::from_ne_bytes(CLIENT.octets()));
        assert_eq!(u16::from_be(k.src_port_be), 80);
        assert_eq!(u16::from_be(k.dst_port_be), 40000);
        assert_eq!(v.host_addr_be, u32::from_ne_bytes(HOST.octets()));
        assert_eq!(u16::from_be(v.host_port_be), 8080);
        assert_eq!(v.flags & berth_maps::NAT_F_CLOSING, 0);
        let mut fin = Packet::tcp(CLIENT, 40000, HOST, 8080);
        fin.tcp_flags = pkt::FIN | pkt::ACK;
        env.tc("berth_ingress", &fin.frame());
        assert_ne!(
            env.nat_entries()[0].1.flags & berth_maps::NAT_F_CLOSING,
            0,
            "FIN marks the flow closing"
        );
    });
}

#[test]
fn reply_before_any_flow_passes_untouched() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        // The container answers a flow berth never translated.
        for p in [
            c1_reply(40000),
            from_container(C1, 53, CLIENT, 5000, pkt::UDP),
        ] {
            let f = p.frame();
            let v = env.tc("berth_reply", &f);
            assert_eq!((v.code, v.frame == f), (TC_ACT_OK, true), "{p:?}");
        }
    });
}
