//! Ways past a security group below TCP/UDP, end to end against the real
//! daemon and CLI: tunnel protocols (GRE, IP-in-IP) from a container whose
//! group allows only TCP 80, VLAN-tagged frames, ARP claiming a
//! neighbour's address, and IPv6 flows outliving the task that opened them. Frames are injected with a packet socket in a
//! container's namespace and watched for on the receivers' interfaces, so
//! "not delivered" means nothing reached the wire there.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr::{CONTAINER2_IP, CONTAINER_IP},
    pkt::{self, Packet},
    rawsock::RawSocket,
    NetNs, Rig,
};

/// How long a receiver is watched after an injection.
const WATCH: Duration = Duration::from_secs(1);

/// t1 (the first container) in `sg-web`, which allows TCP 80 in and out
/// only (the default "all out" rule removed); t2 (the second) has no
/// groups.
fn setup() -> Rig {
    let rig = Rig::builder().wait_for_ports().start();
    rig.map_add("t1", "172.17.0.2", &["8080:80"]);
    rig.map_add("t2", "172.17.0.3", &["8081:80"]);
    rig.berth(&["sg", "create", "sg-web"]);
    sg_rule(
        &rig,
        &["rm", "sg-web", "--egress", "--proto", "all"],
        "0.0.0.0/0",
    );
    for dir in ["--ingress", "--egress"] {
        let args = ["add", "sg-web", dir, "--proto", "tcp", "--port", "80"];
        sg_rule(&rig, &args, "0.0.0.0/0");
    }
    rig.berth(&["sg", "attach", "sg-web", "--task", "t1"]);
    rig
}

fn sg_rule(rig: &Rig, args: &[&str], cidr: &str) {
    let mut all = vec!["sg", "rule"];
    all.extend(args);
    all.extend(["--cidr", cidr]);
    rig.berth(&all);
}

/// A frame of IP protocol `proto` from `src` to `dst`, between the MACs
/// of the two containers' interfaces, carrying `marker`.
fn probe(
    rig: &Rig,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    proto: u8,
    marker: &[u8],
    to_second: bool,
) -> Vec<u8> {
    let (a, b) = (&rig.topo.container, &rig.topo.container2);
    let (from, to) = if to_second { (a, b) } else { (b, a) };
    let mut p = Packet::raw(src, dst, proto, marker.to_vec());
    p.eth_src = from.link().unwrap().mac;
    p.eth_dst = to.link().unwrap().mac;
    p.frame()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends `frame` on `out` and reports whether a frame carrying `marker`
/// arrived on `watch` (tagged or not: the kernel strips a tag to aux data).
fn delivered(out: &RawSocket, watch: &RawSocket, frame: &[u8], marker: &[u8]) -> bool {
    thread::scope(|s| {
        let w = s.spawn(|| {
            watch
                .collect(WATCH, |f| contains(f, marker))
                .expect("watching")
        });
        thread::sleep(Duration::from_millis(100));
        out.send(frame).expect("inject");
        !w.join().unwrap().is_empty()
    })
}

#[test]
fn a_tunnel_from_a_container_allowed_only_tcp_80_reaches_no_one_until_a_rule_names_it() {
    let rig = setup();
    let ctr1 = RawSocket::open_in(&rig.topo.container.ns, "eth0").unwrap();
    let ctr2 = RawSocket::open_in(&rig.topo.container2.ns, "eth0").unwrap();
    let out = (CONTAINER_IP, CONTAINER2_IP);
    let back = (CONTAINER2_IP, CONTAINER_IP);
    let denied = rig.counter("policy_denied_egress");
    for (proto, marker) in [(pkt::GRE, b"gre-1"), (4, b"ipip1")] {
        let f = probe(&rig, out, proto, marker, true);
        assert!(
            !delivered(&ctr1, &ctr2, &f, marker),
            "protocol {proto} got out"
        );
    }
    assert!(rig.counter("policy_denied_egress") >= denied + 2);
    // Nor in: t2 (open) sends GRE to t1, which admits TCP 80 only.
    let f = probe(&rig, back, pkt::GRE, b"gre-in", false);
    assert!(!delivered(&ctr2, &ctr1, &f, b"gre-in"));

    // A rule for protocol 47 lets GRE out, and its reply in; IP-in-IP
    // stays out.
    sg_rule(
        &rig,
        &["add", "sg-web", "--egress", "--protocol", "47"],
        "0.0.0.0/0",
    );
    let shown = rig.berth(&["sg", "show", "sg-web"]);
    assert!(shown.contains("47"), "{shown}");
    let f = probe(&rig, out, pkt::GRE, b"gre-2", true);
    assert!(
        delivered(&ctr1, &ctr2, &f, b"gre-2"),
        "GRE with a rule for 47"
    );
    let f = probe(&rig, back, pkt::GRE, b"gre-reply", false);
    assert!(
        delivered(&ctr2, &ctr1, &f, b"gre-reply"),
        "the tracked reply"
    );
    let f = probe(&rig, out, 4, b"ipip2", true);
    assert!(!delivered(&ctr1, &ctr2, &f, b"ipip2"));
    // "all" lets every protocol out.
    sg_rule(
        &rig,
        &["add", "sg-web", "--egress", "--proto", "all"],
        "0.0.0.0/0",
    );
    let f = probe(&rig, out, 4, b"ipip3", true);
    assert!(delivered(&ctr1, &ctr2, &f, b"ipip3"), "IP-in-IP with all");
}

#[test]
fn a_numbered_protocol_rule_is_checked_by_the_cli_and_survives_a_restart() {
    let mut rig = setup();
    let err = rig.berth_err(&[
        "sg",
        "rule",
        "add",
        "sg-web",
        "--egress",
        "--protocol",
        "47",
        "--port",
        "80",
        "--cidr",
        "0.0.0.0/0",
    ]);
    assert_eq!(
        err.trim(),
        "berth: protocol 47 has no ports, ICMP type or code: a rule for it allows all of it \
         (--port applies to tcp and udp)"
    );
    let err = rig.berth_err(&[
        "sg",
        "rule",
        "add",
        "sg-web",
        "--egress",
        "--protocol",
        "256",
        "--cidr",
        "0.0.0.0/0",
    ]);
    assert_eq!(
        err.trim(),
        "berth: unknown protocol \"256\"; use tcp, udp, icmp, icmpv6, all or a number 1-254"
    );
    sg_rule(
        &rig,
        &["add", "sg-web", "--ingress", "--protocol", "132"],
        "10.0.0.0/8",
    );
    // Stored as written, and read back by a restarted daemon.
    rig.daemon.restart().unwrap();
    let rules = rig.json(&["sg", "show", "sg-web", "--json"]);
    let text = rules.to_string();
    assert!(text.contains(r#""protocol":"132""#), "{text}");
    // Removing it by the same number works; a second add is a duplicate.
    let dup = rig.berth_err(&[
        "sg",
        "rule",
        "add",
        "sg-web",
        "--ingress",
        "--proto",
        "132",
        "--cidr",
        "10.0.0.0/8",
    ]);
    assert!(
        dup.contains("already has the rule ingress protocol 132"),
        "{dup}"
    );
    sg_rule(
        &rig,
        &["rm", "sg-web", "--ingress", "--protocol", "132"],
        "10.0.0.0/8",
    );
    let text = rig.json(&["sg", "show", "sg-web", "--json"]).to_string();
    assert!(!text.contains(r#""protocol":"132""#), "{text}");
}

#[test]
fn vlan_tagged_frames_never_cross_a_port_with_policy() {
    let rig = setup();
    let ctr1 = RawSocket::open_in(&rig.topo.container.ns, "eth0").unwrap();
    let ctr2 = RawSocket::open_in(&rig.topo.container2.ns, "eth0").unwrap();
    // Allowed untagged (TCP 80 out): the control.
    let tcp = |marker: &[u8], vid: Option<u16>| {
        let mut p = Packet::tcp(CONTAINER_IP, 40000, CONTAINER2_IP, 80);
        p.eth_src = rig.topo.container.link().unwrap().mac;
        p.eth_dst = rig.topo.container2.link().unwrap().mac;
        p.payload = marker.to_vec();
        let f = p.frame();
        match vid {
            Some(v) => pkt::vlan_tagged(&f, v),
            None => f,
        }
    };
    assert!(delivered(&ctr1, &ctr2, &tcp(b"plain", None), b"plain"));
    let refused = rig.counter("ctr_frame_refused");
    assert!(!delivered(
        &ctr1,
        &ctr2,
        &tcp(b"tag-100", Some(100)),
        b"tag-100"
    ));
    let qinq = pkt::qinq_tagged(&tcp(b"qinq", None), 200, 100);
    assert!(!delivered(&ctr1, &ctr2, &qinq, b"qinq"));
    // Towards t1, from the host through the bridge (untagged, its TCP 80
    // is let in): dropped at t1's port.
    let host = &rig.topo.host;
    let br = RawSocket::open_in(&host.ns, host.bridge).unwrap();
    let to_ctr1 = |marker: &[u8], vid: Option<u16>| {
        let mut p = Packet::tcp(host.bridge_ip, 40001, CONTAINER_IP, 80);
        p.eth_src = host.bridge_link().unwrap().mac;
        p.eth_dst = rig.topo.container.link().unwrap().mac;
        p.payload = marker.to_vec();
        let f = p.frame();
        match vid {
            Some(v) => pkt::vlan_tagged(&f, v),
            None => f,
        }
    };
    assert!(delivered(
        &br,
        &ctr1,
        &to_ctr1(b"in-plain", None),
        b"in-plain"
    ));
    let f = to_ctr1(b"in-tagged", Some(100));
    assert!(!delivered(&br, &ctr1, &f, b"in-tagged"));
    assert!(rig.counter("ctr_frame_refused") >= refused + 3);
}

#[test]
fn a_container_with_policy_cannot_take_a_neighbours_address_by_arp() {
    let rig = setup();
    let host = &rig.topo.host;
    let ctr2_mac = rig.topo.container2.link().unwrap().mac;
    let ctr1_mac = rig.topo.container.link().unwrap().mac;
    let bridge_mac = host.bridge_link().unwrap().mac;
    // The host learns t2's MAC.
    host.ns
        .ip([
            "neigh",
            "replace",
            "172.17.0.3",
            "lladdr",
            &mac_text(ctr2_mac),
            "dev",
            host.bridge,
            "nud",
            "stale",
        ])
        .unwrap();
    let neigh = || {
        host.ns
            .ip(["neigh", "show", "172.17.0.3", "dev", host.bridge])
            .unwrap()
    };
    assert!(neigh().contains(&mac_text(ctr2_mac)), "{}", neigh());
    // t1 answers for t2's address with its own MAC, twice a second apart
    // (the kernel ignores a second update within its lock time).
    let ctr1 = RawSocket::open_in(&rig.topo.container.ns, "eth0").unwrap();
    let spoofed = pkt::arp(2, ctr1_mac, CONTAINER2_IP, bridge_mac, host.bridge_ip);
    let before = rig.counter("neigh_spoofed");
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        ctr1.send(&spoofed).unwrap();
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        neigh().contains(&mac_text(ctr2_mac)),
        "t1 took t2's address: {}",
        neigh()
    );
    let spoofed_count = rig.counter("neigh_spoofed");
    assert!(spoofed_count >= before + 4, "{spoofed_count}");
    // Its own address it may announce.
    let own = pkt::arp(2, ctr1_mac, CONTAINER_IP, bridge_mac, host.bridge_ip);
    ctr1.send(&own).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.counter("neigh_spoofed"), spoofed_count);
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A datagram from `from` (bound at `src`) to `to`; whether `on` (bound at
/// `to`) receives it.
fn udp6_arrives(from: &NetNs, src: SocketAddr, on: &NetNs, to: SocketAddr) -> bool {
    let rx = on
        .run(move || UdpSocket::bind(to))
        .expect("bind the receiver");
    rx.set_read_timeout(Some(WATCH)).unwrap();
    from.run(move || {
        let tx = UdpSocket::bind(src)?;
        tx.send_to(b"probe", to)
    })
    .expect("send");
    let mut buf = [0u8; 64];
    rx.recv_from(&mut buf).is_ok()
}

/// A task removed and published again at its IPv6 address, on the same
/// container port, starts from its own groups: the flows its predecessor's
/// groups allowed (`BERTH_CT6`) are forgotten when its endpoint goes, as
/// IPv4's are.
#[test]
fn an_ipv6_task_published_again_does_not_inherit_its_predecessors_flows() {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    let (ctr, host) = (&rig.topo.container.ns, &rig.topo.host.ns);
    let publish =
        || rig.berth_words("map add --task t1 --ip 172.17.0.2 --ip6 fd00:17::2 -p 8080:80");
    publish();
    // sg-out: nothing in, everything out (a new group's rules).
    rig.berth(&["sg", "create", "sg-out"]);
    rig.berth(&["sg", "attach", "sg-out", "--task", "t1"]);
    let me: SocketAddr = "[fd00:17::2]:5000".parse().unwrap();
    let peer: SocketAddr = "[fd00:17::1]:6000".parse().unwrap();
    // The container opens a flow; the peer's answer comes back as its reply.
    assert!(udp6_arrives(ctr, me, host, peer), "t1 sends out");
    assert!(udp6_arrives(host, peer, ctr, me), "the reply is let in");
    // The task goes and comes back at the same addresses with the same
    // group: the old flow must not answer for it.
    rig.berth(&["map", "rm", "--task", "t1"]);
    publish();
    rig.berth(&["sg", "attach", "sg-out", "--task", "t1"]);
    assert!(
        !udp6_arrives(host, peer, ctr, me),
        "the predecessor's flow let the peer in"
    );
    assert!(
        rig.daemon
            .stderr()
            .contains("forgot IPv6 policy-tracked flows"),
        "{}",
        rig.daemon.stderr()
    );
}
