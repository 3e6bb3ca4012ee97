//! Flow logs of IPv6 flows end to end (issue 15): the real daemon with
//! `--flow-log` on a dual-stack host, real traffic through a port published
//! over IPv6, and the records it writes checked line by line against what
//! a packet socket on the client's own interface saw cross the wire (each
//! frame's IPv6 header and payload), so the counts are checked exactly,
//! independently of the datapath's own counters.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use berth_integration::{
    addr, names::TempDir, peer_ip, pkt, rawsock::RawSocket, tcp_connect, Mode, NetNs, Rig,
};

use super::flow_logs::{start_with_flow_log, wait_for};

/// Every field a record of an IPv6 flow has something in.
const FORMAT: &str = "${version} ${interface-id} ${type} ${srcaddr} ${dstaddr} ${srcport} \
                      ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} \
                      ${log-status} ${pkt-srcaddr} ${pkt-dstaddr} ${tcp-flags} ${flow-direction}";
const CTR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);
const ETH_P_IPV6: u16 = 0x86dd;

/// A dual-stack rig in `mode` with `--flow-log` (10 s windows, `extra`
/// flags), the container's IPv6 HTTP server on 80 published on `[::]:8080`
/// only.
fn rig6(mode: Mode, extra: &[&str]) -> (Rig, std::path::PathBuf, TempDir) {
    let (rig, path, dir) = start_with_flow_log(Rig::builder().dual_stack().mode(mode), extra);
    rig.berth_words("map add --task web6 --ip6 fd00:17::2 -p 8080:80");
    (rig, path, dir)
}

/// One IPv6 TCP segment seen on a client's interface.
#[derive(Debug, Clone, Copy)]
struct Seen {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    /// IPv6 header and payload: what a flow log counts.
    ip_len: u64,
}

/// The IPv6 TCP segments (no extension headers) among `frames`.
fn tcp6(frames: &[Vec<u8>]) -> Vec<Seen> {
    let e = pkt::ETH_LEN;
    frames
        .iter()
        .filter(|f| f.len() >= e + 40 + 20)
        .filter(|f| u16::from_be_bytes([f[12], f[13]]) == ETH_P_IPV6 && f[e + 6] == pkt::TCP)
        .map(|f| {
            let ip = &f[e..];
            let l4 = &ip[40..];
            let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap());
            Seen {
                src: a(8),
                dst: a(24),
                sport: u16::from_be_bytes([l4[0], l4[1]]),
                dport: u16::from_be_bytes([l4[2], l4[3]]),
                flags: l4[13],
                ip_len: 40 + u64::from(u16::from_be_bytes([ip[4], ip[5]])),
            }
        })
        .collect()
}

/// Opens a packet socket on `ns`'s `ifname`; what it sees is read later.
fn capture(ns: &NetNs, ifname: &str) -> RawSocket {
    RawSocket::open_in(ns, ifname).expect("a packet socket on the client's interface")
}

/// The segments `sock` saw, once the wire has been quiet for a while.
fn captured(sock: &RawSocket) -> Vec<Seen> {
    tcp6(
        &sock
            .collect(Duration::from_millis(1500), |_| true)
            .expect("reading the packet socket"),
    )
}

/// A record of [`FORMAT`], each field checked for its shape.
#[derive(Debug)]
struct Rec6 {
    interface: String,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
    action: String,
    pkt_src: IpAddr,
    pkt_dst: IpAddr,
    tcp_flags: u8,
    direction: String,
}

/// The flow records of [`FORMAT`]; NODATA/SKIPDATA lines are checked and
/// left out.
fn records6(l: &[Vec<String>]) -> Vec<Rec6> {
    let mut out = Vec::new();
    for f in l {
        assert_eq!(f.len(), 18, "18 fields: {f:?}");
        assert_eq!(f[0], "5", "the highest version of the fields: {f:?}");
        if f[13] != "OK" {
            assert!(["NODATA", "SKIPDATA"].contains(&f[13].as_str()), "{f:?}");
            assert!(f[2..10].iter().all(|v| v == "-"), "{f:?}");
            continue;
        }
        assert_eq!(f[2], "IPv6", "type: {f:?}");
        let (start, end): (u64, u64) = (f[10].parse().unwrap(), f[11].parse().unwrap());
        assert!(start <= end, "{f:?}");
        let r = Rec6 {
            interface: f[1].clone(),
            src: f[3].parse().unwrap(),
            dst: f[4].parse().unwrap(),
            sport: f[5].parse().unwrap(),
            dport: f[6].parse().unwrap(),
            proto: f[7].parse().unwrap(),
            packets: f[8].parse().unwrap(),
            bytes: f[9].parse().unwrap(),
            action: f[12].clone(),
            pkt_src: f[14].parse().unwrap(),
            pkt_dst: f[15].parse().unwrap(),
            tcp_flags: f[16].parse().unwrap(),
            direction: f[17].clone(),
        };
        assert!(r.packets > 0, "{f:?}");
        // As AWS writes them: RFC 5952 text, which is how Rust prints them.
        for (text, a) in [
            (&f[3], r.src),
            (&f[4], r.dst),
            (&f[14], r.pkt_src),
            (&f[15], r.pkt_dst),
        ] {
            assert!(a.is_ipv6() && *text == a.to_string(), "{f:?}");
        }
        out.push(r);
    }
    out
}

/// Packets, bytes and the OR of the TCP flags over `recs` matching `m`.
fn sums<T>(
    recs: &[T],
    m: impl Fn(&T) -> bool,
    of: impl Fn(&T) -> (u64, u64, u8),
) -> (u64, u64, u8) {
    recs.iter()
        .filter(|r| m(r))
        .map(of)
        .fold((0, 0, 0), |(p, b, f), (p2, b2, f2)| {
            (p + p2, b + b2, f | f2)
        })
}

#[test]
fn a_tcp_flow_over_ipv6_is_logged_with_exactly_what_crossed_the_wire_each_way_tc() {
    a_tcp_flow_is_logged_with_what_crossed_the_wire(Mode::Tc);
}

/// XDP passes IPv6 to its TC partner (`berth_deliver`), which translates
/// and counts it: the same records.
#[test]
fn a_tcp_flow_over_ipv6_is_logged_with_exactly_what_crossed_the_wire_each_way_xdp() {
    a_tcp_flow_is_logged_with_what_crossed_the_wire(Mode::Xdp);
}

fn a_tcp_flow_is_logged_with_what_crossed_the_wire(mode: Mode) {
    let (rig, log, _dir) = rig6(mode, &["--flow-log-format", FORMAT]);
    let _web = rig.serve_http6(&rig.topo.container.ns, 80);
    let client = &rig.topo.client;
    let wire = capture(&client.ns, client.ifname);
    let got = rig
        .client_get6(8080)
        .expect("GET over IPv6 through the mapping");
    assert_eq!(peer_ip(&got), addr::CLIENT_IP6.to_string());
    let (c6, h6) = (addr::CLIENT_IP6, addr::HOST_IP6);
    let seen = captured(&wire);
    let to_host: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.src == c6 && s.dst == h6 && s.dport == 8080)
        .collect();
    assert!(
        !to_host.is_empty(),
        "the GET's segments on the wire: {seen:?}"
    );
    let cport = to_host[0].sport;
    assert!(
        to_host.iter().all(|s| s.sport == cport),
        "one connection: {seen:?}"
    );
    // What the client sent and got, as a flow log counts it (AWS reports
    // the SYN-ACK as 18).
    let (syn, synack) = (0x02, 0x12);
    let wire_in = sums(
        &seen,
        |s| s.src == c6 && s.dst == h6 && s.sport == cport && s.dport == 8080,
        |s| (1, s.ip_len, s.flags & 0x07),
    );
    let wire_out = sums(
        &seen,
        |s| s.src == h6 && s.dst == c6 && s.sport == 8080 && s.dport == cport,
        |s| {
            (
                1,
                s.ip_len,
                (s.flags & 0x07) | if s.flags & 0x12 == synack { 0x10 } else { 0 },
            )
        },
    );
    assert!(
        wire_in.0 >= 4 && wire_out.0 >= 2,
        "handshake, request, answer, close: {seen:?}"
    );
    assert_eq!(wire_in.2 & syn, syn, "{seen:?}");

    let ingress = |r: &Rec6| r.src == IpAddr::V6(c6) && r.sport == cport;
    let egress = |r: &Rec6| r.dst == IpAddr::V6(c6) && r.dport == cport;
    let of = |r: &Rec6| (r.packets, r.bytes, r.tcp_flags);
    let l = wait_for(&log, "both directions' full counts", |l| {
        let recs = records6(l);
        sums(&recs, ingress, of).0 == wire_in.0 && sums(&recs, egress, of).0 == wire_out.0
    });
    let recs = records6(&l);
    assert_eq!(
        sums(&recs, ingress, of),
        wire_in,
        "packets, bytes, flags in"
    );
    assert_eq!(
        sums(&recs, egress, of),
        wire_out,
        "packets, bytes, flags out"
    );
    let (h6, ctr6) = (IpAddr::V6(h6), IpAddr::V6(CTR6));
    for r in recs.iter().filter(|r| ingress(r) || egress(r)) {
        assert_eq!(
            (r.interface.as_str(), r.proto, r.action.as_str()),
            ("up0", 6, "ACCEPT"),
            "{r:?}"
        );
        if ingress(r) {
            assert_eq!(
                (r.dst, r.dport, r.direction.as_str()),
                (h6, 8080, "ingress"),
                "{r:?}"
            );
            assert_eq!(
                (r.pkt_src, r.pkt_dst),
                (IpAddr::V6(c6), ctr6),
                "the container inside: {r:?}"
            );
        } else {
            assert_eq!(
                (r.src, r.sport, r.direction.as_str()),
                (h6, 8080, "egress"),
                "{r:?}"
            );
            assert_eq!((r.pkt_src, r.pkt_dst), (ctr6, IpAddr::V6(c6)), "{r:?}");
        }
    }
}

#[test]
fn an_ipv6_flow_a_security_group_refuses_is_a_reject_record() {
    let (rig, log, _dir) = rig6(Mode::Default, &[]);
    let _web = rig.serve_http6(&rig.topo.container.ns, 80);
    rig.berth(&["sg", "create", "web"]);
    rig.berth_words("sg rule add web --ingress --proto tcp --port 80 --cidr 2001:db8::2/128");
    rig.berth(&["sg", "attach", "web", "--task", "web6"]);
    let published = SocketAddr::from((addr::HOST_IP6, 8080));
    let client2 = &rig.topo.client2;
    let wire = capture(&client2.ns, client2.ifname);
    client2
        .ns
        .run(move || tcp_connect(published, Duration::from_millis(1500)))
        .expect_err("client2 is not allowed");
    let syns = sums(
        &captured(&wire),
        |s| s.src == addr::CLIENT2_IP6 && s.dport == 8080,
        |s| (1, s.ip_len, 0),
    );
    assert!(syns.0 >= 1, "client2's SYNs on the wire");
    let got = rig.client_get6(8080).expect("client is allowed");
    assert_eq!(peer_ip(&got), addr::CLIENT_IP6.to_string());

    // The default format: version-2 fields, IPv6 addresses in both.
    let c2 = IpAddr::V6(addr::CLIENT2_IP6);
    let rejected = |l: &[Vec<String>]| -> Vec<Vec<String>> {
        l.iter()
            .filter(|f| f.len() == 14 && f[3].parse::<IpAddr>().ok() == Some(c2))
            .cloned()
            .collect()
    };
    let total = |recs: &[Vec<String>]| {
        recs.iter().fold((0u64, 0u64), |(p, b), f| {
            (
                p + f[8].parse::<u64>().unwrap(),
                b + f[9].parse::<u64>().unwrap(),
            )
        })
    };
    let l = wait_for(&log, "client2's refused SYNs", |l| {
        total(&rejected(l)).0 == syns.0
    });
    let recs = rejected(&l);
    assert_eq!(
        total(&recs),
        (syns.0, syns.1),
        "every refused SYN, each with its length"
    );
    for f in &recs {
        assert_eq!(
            (
                f[0].as_str(),
                f[2].as_str(),
                f[4].as_str(),
                f[6].as_str(),
                f[7].as_str()
            ),
            ("2", "up0", "2001:db8::1", "8080", "6"),
            "{f:?}"
        );
        assert_eq!(
            (f[12].as_str(), f[13].as_str()),
            ("REJECT", "OK"),
            "nothing of client2's is accepted: {f:?}"
        );
    }
    let c1 = addr::CLIENT_IP6.to_string();
    let l = wait_for(&log, "the allowed client's flow", |l| {
        l.iter()
            .any(|f| f.len() == 14 && f[3] == c1 && f[12] == "ACCEPT")
    });
    assert!(
        !l.iter()
            .any(|f| f.len() == 14 && f[3] == c1 && f[12] == "REJECT"),
        "the allowed client is never refused"
    );
}
