//! IPv6 refusals in the datapath log and refused fragmented datagrams
//! (trust, log6) through the real daemon and CLI on the dual-stack rig:
//! the IPv6 twins of `flow_logs::the_datapath_log_shows_a_refused_flow_…`
//! (a published port's refusal at the uplink) and
//! `security_groups::an_east_west_refusal_is_written_…` (a neighbour's
//! refusal at the receiver's veth), with RFC 5952 addresses; and a large
//! datagram a group refuses at the uplink, over both families, leaves
//! nothing in the host's reassembly queue.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{tcp_connect, NetNs, Rig};

const CTR6: &str = "fd00:17::2";

/// `web` (the first container, both families) publishes 8080:80 behind a
/// group with no rule.
fn refusing_web(rig: &Rig) {
    rig.berth(&[
        "map",
        "add",
        "--task",
        "web",
        "--ip",
        "172.17.0.2",
        "--ip6",
        CTR6,
        "-p",
        "8080:80",
    ]);
    rig.berth(&["sg", "create", "web"]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
}

/// The datapath log's lines in the daemon's log so far that hold every
/// one of `parts`.
fn lines_with(rig: &Rig, parts: &[&str]) -> usize {
    rig.daemon
        .stderr()
        .lines()
        .filter(|l| l.contains("berth::datapath") && parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Waits (5 s at most) for a line holding every one of `parts`.
fn wait_for_line(rig: &Rig, parts: &[&str]) {
    let until = Instant::now() + Duration::from_secs(5);
    while lines_with(rig, parts) == 0 {
        assert!(
            Instant::now() < until,
            "no datapath log line with {parts:?}:\n{}",
            rig.daemon.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_datapath_log_shows_a_refused_ipv6_flow_only_while_it_is_on() {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    let _web = rig.serve_http6(&rig.topo.container.ns, 80);
    refusing_web(&rig);
    let published = rig.topo.host.addr6(8080);
    let refused = || {
        rig.topo
            .client
            .ns
            .run(move || tcp_connect(published, Duration::from_millis(300)))
            .expect_err("no rule lets anyone in");
    };
    // The client's port varies; the container and its port, as IPv4's line.
    let line = [
        "policy refused a new flow: [2001:db8::2]:",
        "-> [fd00:17::2]:80 proto 6",
    ];
    refused();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(lines_with(&rig, &line), 0, "off by default");

    assert_eq!(
        rig.berth(&["log", "--datapath", "debug"]).trim(),
        "datapath log: debug"
    );
    refused();
    wait_for_line(&rig, &line);

    assert_eq!(
        rig.berth(&["log", "--datapath", "off"]).trim(),
        "datapath log: off"
    );
    thread::sleep(Duration::from_millis(300));
    let seen = lines_with(&rig, &line);
    refused();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(lines_with(&rig, &line), seen, "off again: no more lines");
}

#[test]
fn an_east_west_ipv6_refusal_is_written_to_the_datapath_log() {
    let rig = Rig::builder()
        .dual_stack()
        .wait_for_ports()
        .flags(&["--datapath-log", "debug"])
        .start();
    let _db = rig
        .topo
        .container
        .ns
        .run(|| TcpListener::bind(("::", 5432)))
        .expect("listen on [::]:5432");
    refusing_web(&rig);
    // Refused on web's veth (berth_to_ctr6) by web's ingress rules (none):
    // the line comes from berth_log, tail-called there.
    let target = SocketAddr::new(CTR6.parse().unwrap(), 5432);
    rig.topo
        .container2
        .ns
        .run(move || tcp_connect(target, Duration::from_millis(500)))
        .expect_err("web's group lets no one in");
    wait_for_line(
        &rig,
        &[
            "policy refused a new flow: [fd00:17::3]:",
            "-> [fd00:17::2]:5432 proto 6",
        ],
    );
}

/// `ReasmReqds` of `/proc/net/snmp` in the calling thread's network
/// namespace: fragments the host's IPv4 reassembly took in (netfilter's
/// defragmentation for conntrack counts there too).
fn reasm_reqds() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut ip = text.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "ReasmReqds")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Sends a 3000-byte UDP datagram from `ns` to `to` (the sender's kernel
/// cuts it in three) and says how many of its fragments went on to the
/// host: (`fragment`, berth's count of later fragments it left to the
/// host; fragments the host's IPv4 reassembly took in, `None` for IPv6).
fn sent_to_host(rig: &Rig, ns: &NetNs, to: SocketAddr) -> (u64, Option<u64>) {
    let v6 = to.is_ipv6();
    let host = &rig.topo.host.ns;
    let (left, reasm) = (rig.counter("fragment"), host.run(reasm_reqds));
    ns.run(move || {
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            [0, 0, 0, 0].into()
        };
        let s = UdpSocket::bind((any, 0)).expect("bind");
        s.send_to(&[0x6c; 3000], to).expect("send");
    });
    thread::sleep(Duration::from_millis(700));
    let reasm = (!v6).then(|| host.run(reasm_reqds) - reasm);
    (rig.counter("fragment") - left, reasm)
}

/// Before, a refused first fragment left nothing remembered and its later
/// fragments (to the host's address, as the client sent them) went on to
/// the host, whose reassembly queued them until its timeout. A datagram to
/// a port berth does not publish shows what reaching the host looks like.
/// The host's IPv6 reassembly is not observed: this host (Docker's rules,
/// conntrack) defragments IPv6 in netfilter, which keeps no counter.
#[test]
fn the_host_reassembles_nothing_of_a_datagram_refused_at_the_uplink_both_families() {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    rig.berth(&[
        "map",
        "add",
        "--task",
        "dns",
        "--ip",
        "172.17.0.2",
        "--ip6",
        CTR6,
        "-p",
        "5353:53/udp",
    ]);
    rig.berth(&["sg", "create", "dns"]);
    rig.berth(&["sg", "attach", "dns", "--task", "dns"]);
    let client = &rig.topo.client.ns;
    let host = &rig.topo.host;
    let denied = rig.counter("frag_denied");
    for (family, published, unpublished) in [
        ("IPv4", host.addr(5353), host.addr(5999)),
        ("IPv6", host.addr6(5353), host.addr6(5999)),
    ] {
        let (left, reasm) = sent_to_host(&rig, client, published);
        assert_eq!(
            left, 0,
            "{family}: later fragments of a refused datagram left to the host"
        );
        assert!(
            reasm.unwrap_or(0) == 0,
            "{family}: fragments of a refused datagram reached the host's reassembly"
        );
        let (left, reasm) = sent_to_host(&rig, client, unpublished);
        assert_eq!(left, 2, "{family}: the host's own datagram is the host's");
        assert!(
            reasm.is_none_or(|n| n >= 3),
            "{family}: the host reassembles its own datagram"
        );
    }
    assert_eq!(
        rig.counter("frag_denied"),
        denied + 4,
        "{}",
        rig.berth(&["stats"])
    );
}
