//! BPF_PROG_TEST_RUN tables: frame in -> verdict and exact frame out, for
//! `berth_ingress` and `berth_xdp` (one table, both hooks), `berth_reply`
//! and `berth_deliver`. The expected frames are built from scratch by
//! `pkt`, which computes every checksum over the whole packet; the programs
//! update them incrementally. Every failure of a table is reported at once.
//! Needs root (loads eBPF, makes private namespaces).
//!
//! A case that shows a datapath bug stays in its table and is named in
//! [`KNOWN_BUGS`]: the table tests skip it, `known_datapath_bugs` (ignored)
//! runs only those, so a fix shows up as that test passing.
mod icmp;
mod ingress;
mod reply;
mod run;
mod table;

use std::collections::HashSet;

use berth_integration::{
    pkt::{self, Ipv6Packet, Packet},
    testrun::*,
};
use berth_maps::XDP_HANDOFF_MAGIC;

use crate::{ingress::ingress_cases, reply::*, run::*, table::*};

/// Cases whose expectation the datapath does not meet yet: (case name, why
/// the expectation stands). See the module comment.
const KNOWN_BUGS: &[(&str, &str)] = &[
    // The exact-address lookup runs before the host-address check, and a
    // wildcard mapping's key has address 0: a packet *to* 0.0.0.0 finds
    // it. The stack drops such a packet (martian destination); berth
    // delivers it to the container.
    ("tcp wildcard port to 0.0.0.0", DST_ZERO),
    ("udp wildcard port to 0.0.0.0", DST_ZERO),
    // The IPv4 total length is never compared with the frame: a packet
    // longer than what arrived is translated and forwarded (or, past the
    // route MTU, translated and dropped) where the stack would drop it.
    (
        "tcp frame cut at 54 bytes: tcp header without its payload",
        TOT_LEN_PAST_FRAME,
    ),
    (
        "tcp frame cut at 57 bytes: payload less one byte",
        TOT_LEN_PAST_FRAME,
    ),
    (
        "udp frame cut at 42 bytes: udp header without its payload",
        TOT_LEN_PAST_FRAME,
    ),
    (
        "tcp total length one more than the frame",
        TOT_LEN_PAST_FRAME,
    ),
    ("tcp total length 65535", TOT_LEN_PAST_FRAME),
    (
        "udp total length one more than the frame",
        TOT_LEN_PAST_FRAME,
    ),
    (
        "tracked reply with total length past the frame",
        TOT_LEN_PAST_FRAME,
    ),
    // The UDP length field is never checked: a datagram the stack drops
    // (udp length < 8 or past the IPv4 payload) is translated.
    ("udp length 0", BAD_UDP_LEN),
    ("udp length 7", BAD_UDP_LEN),
    ("udp length one more than the datagram", BAD_UDP_LEN),
    ("udp length 65535", BAD_UDP_LEN),
    ("tracked udp reply with udp length 0", BAD_UDP_LEN),
    (
        "tracked udp reply with udp length past the datagram",
        BAD_UDP_LEN,
    ),
    // ICMP errors (parse_icmp_error): the quote is bounded by the frame's
    // end, never by the IPv4 total length, and a quoted fragment's offset
    // is not looked at.
    (
        "icmp error followed by bytes past its total length",
        ICMP_PAST_TOT_LEN,
    ),
    (
        "container's icmp error followed by bytes past its total length",
        ICMP_PAST_TOT_LEN,
    ),
    (
        "icmp error whose total length cuts the quoted ports",
        ICMP_SHORT_TOT_LEN,
    ),
    (
        "icmp error whose total length ends at the icmp header",
        ICMP_SHORT_TOT_LEN,
    ),
    (
        "container's icmp error whose total length cuts the quoted ports",
        ICMP_SHORT_TOT_LEN,
    ),
    (
        "icmp error quoting a later fragment with port-like bytes",
        ICMP_QUOTED_FRAGMENT,
    ),
    (
        "container's icmp error quoting a later fragment",
        ICMP_QUOTED_FRAGMENT,
    ),
];
const ICMP_PAST_TOT_LEN: &str = "bytes after an ICMP error's IPv4 total length are rewritten as \
     quoted checksum, and the ICMP checksum then no longer verifies";
const ICMP_SHORT_TOT_LEN: &str =
    "an ICMP error whose total length does not cover the quoted header and ports is translated";
const ICMP_QUOTED_FRAGMENT: &str = "a quoted non-first fragment has no ports: its payload bytes \
     are taken for ports and rewritten";
const DST_ZERO: &str = "a packet to 0.0.0.0 matches wildcard mappings";
const TOT_LEN_PAST_FRAME: &str = "an IPv4 total length past the frame's end is translated";
const BAD_UDP_LEN: &str = "a UDP length < 8 or past the IPv4 payload is translated";

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
    run_ingress(without_known_bugs(ingress_cases()));
}

#[test]
fn reply_table() {
    run_reply(without_known_bugs(reply_cases()));
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

#[test]
#[ignore = "datapath bugs found by the fixture tables (KNOWN_BUGS); passes once they are fixed"]
fn known_datapath_bugs() {
    assert!(
        !KNOWN_BUGS.is_empty(),
        "no known bugs: remove this test's #[ignore]"
    );
    let ingress = only_known_bugs(ingress_cases());
    let reply = only_known_bugs(reply_cases());
    let ok_ingress = std::panic::catch_unwind(|| {
        if !ingress.is_empty() {
            run_ingress(ingress)
        }
    });
    if !reply.is_empty() {
        run_reply(reply);
    }
    if let Err(e) = ok_ingress {
        std::panic::resume_unwind(e);
    }
}

/// The tables hold at least 150 distinct frame shapes, every case name is
/// unique, and every known bug names a case that exists.
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
    for (bug, _) in KNOWN_BUGS {
        assert!(names.contains(*bug), "KNOWN_BUGS names no case {bug:?}");
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
