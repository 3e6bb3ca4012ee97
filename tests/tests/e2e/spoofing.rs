//! Forged addresses end to end: frames no socket API would send, injected
//! with a packet socket from a client or a container namespace, against the
//! real daemon. What arrives is watched with packet sockets on the
//! receivers' interfaces, so "not delivered" means nothing reached the wire
//! there, not just that no socket accepted it.
use std::{
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr::{BRIDGE_IP, CLIENT_IP, CONTAINER2_IP, CONTAINER_IP, HOST_IP},
    pkt::Packet,
    rawsock::{ipv4_tuple, RawSocket},
    rig::REQUEST_TIMEOUT as T,
    rig::VETH_POLL,
    udp_request, Rig,
};

/// How long a receiver is watched after an injection.
const WATCH: Duration = Duration::from_millis(1200);
/// Known ports' addresses are read again every 2 s.
const ADDR_REFRESH: Duration = Duration::from_millis(2600);
const CONTAINER3_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);

/// The default daemon, every container port hooked.
fn setup() -> Rig {
    Rig::builder().wait_for_ports().start()
}

/// A frame from the client to the host's uplink MAC.
fn client_frame(rig: &Rig, mut p: Packet) -> Vec<u8> {
    p.eth_src = rig.topo.client.link().unwrap().mac;
    p.eth_dst = rig.topo.host.uplink_link().unwrap().mac;
    p.frame()
}

/// Sends `frame` on `out` while watching each of `watch`; returns, per
/// watched socket, the IPv4 frames carrying the probe's source port (the
/// probe itself, translated or not, or an answer to it). The probe's own
/// copy on `out` is not counted.
fn inject(out: &RawSocket, frame: &[u8], watch: &[&RawSocket]) -> Vec<Vec<Vec<u8>>> {
    let (proto, src, _, sport, _) = ipv4_tuple(frame).expect("an IPv4 probe");
    thread::scope(|s| {
        let watchers: Vec<_> = watch
            .iter()
            .map(|w| {
                s.spawn(move || {
                    w.collect(WATCH, |f| {
                        f != frame
                            && ipv4_tuple(f).is_some_and(|(p, fs, _, a, b)| {
                                p == proto && ((a == sport && fs == src) || b == sport)
                            })
                    })
                    .expect("watching")
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(100));
        out.send(frame).expect("inject");
        watchers.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

#[test]
fn a_lan_frame_to_loopback_reaches_no_container() {
    let rig = setup();
    let _lo = rig.serve_http(&rig.topo.container.ns, 9000);
    let _any = rig.serve_http(&rig.topo.container.ns, 9001);
    rig.map_add("web", "172.17.0.2", &["127.0.0.1:9000:9000", "9001:9001"]);
    let client = RawSocket::open_in(&rig.topo.client.ns, "eth0").unwrap();
    let ctr = RawSocket::open_in(&rig.topo.container.ns, "eth0").unwrap();

    // The injection path works: a SYN to the host's address is translated
    // and the container's SYN-ACK comes back from the host port.
    let syn = client_frame(&rig, Packet::tcp(CLIENT_IP, 41000, HOST_IP, 9001));
    let seen = inject(&client, &syn, &[&client, &ctr]);
    assert!(!seen[1].is_empty(), "the container got the control SYN");
    let answer = seen[0].iter().find_map(|f| ipv4_tuple(f));
    assert_eq!(
        answer.map(|(_, src, _, sport, _)| (src, sport)),
        Some((HOST_IP, 9001)),
        "control SYN answered from the host port"
    );

    // 127.0.0.1 from the LAN: on the loopback-bound mapping and on the
    // wildcard one, nothing reaches the container and nothing answers.
    for (sport, dport) in [(41001, 9000), (41002, 9001)] {
        let syn = client_frame(
            &rig,
            Packet::tcp(CLIENT_IP, sport, Ipv4Addr::LOCALHOST, dport),
        );
        let seen = inject(&client, &syn, &[&client, &ctr]);
        assert!(
            seen[1].is_empty(),
            "127.0.0.1:{dport} reached the container: {:?}",
            seen[1]
        );
        assert!(
            seen[0].is_empty(),
            "127.0.0.1:{dport} was answered: {:?}",
            seen[0]
        );
    }
    assert!(rig.counter("uplink_loopback") >= 2);
}

/// t1 (172.17.0.2, group sg-a) and t2 (172.17.0.3, group sg-b, UDP 53
/// published): sg-b lets sg-a's members in on UDP 53, and what `control`
/// says (`--port P --cidr C` of one more UDP ingress rule).
fn t2_admits_t1s_group(rig: &Rig, control: &str) {
    rig.map_add("t1", "172.17.0.2", &["8080:80"]);
    rig.map_add("t2", "172.17.0.3", &["5353:53/udp"]);
    rig.berth(&["sg", "create", "sg-a"]);
    rig.berth(&["sg", "create", "sg-b"]);
    rig.berth_words("sg rule add sg-b --ingress --proto udp --port 53 --sg sg-a");
    rig.berth_words(&format!("sg rule add sg-b --ingress --proto udp {control}"));
    rig.berth(&["sg", "attach", "sg-a", "--task", "t1"]);
    rig.berth(&["sg", "attach", "sg-b", "--task", "t2"]);
}

/// A datagram from t1's own namespace to t2's port 53 is answered.
fn t1_reaches_t2(rig: &Rig, what: &str) {
    let reply = rig
        .topo
        .container
        .ns
        .run(|| udp_request(SocketAddr::from((CONTAINER2_IP, 53)), "hi", T))
        .expect(what);
    assert!(reply.text.contains("hi"), "{reply:?}");
}

#[test]
fn a_datagram_with_a_local_source_from_the_lan_is_not_delivered() {
    let rig = setup();
    let echo = rig.serve_udp_echo(&rig.topo.container2.ns, 53);
    // t2 answers t1's group, and the client's own address (the control).
    t2_admits_t1s_group(&rig, "--port 53 --cidr 192.0.2.2/32");
    let client = RawSocket::open_in(&rig.topo.client.ns, "eth0").unwrap();
    let ctr2 = RawSocket::open_in(&rig.topo.container2.ns, "eth0").unwrap();

    let control = client_frame(&rig, Packet::udp(CLIENT_IP, 5000, HOST_IP, 5353));
    let seen = inject(&client, &control, &[&ctr2]);
    assert!(
        !seen[0].is_empty(),
        "the client's own datagram is delivered"
    );

    // t1's address, the host's own addresses, loopback: none of them can
    // come from the LAN, whatever the groups would say about them.
    for (src, sport) in [
        (CONTAINER_IP, 5001),
        (Ipv4Addr::new(172, 17, 99, 9), 5002),
        (HOST_IP, 5003),
        (BRIDGE_IP, 5004),
        (Ipv4Addr::LOCALHOST, 5005),
    ] {
        let f = client_frame(&rig, Packet::udp(src, sport, HOST_IP, 5353));
        let seen = inject(&client, &f, &[&ctr2]);
        assert!(
            seen[0].is_empty(),
            "a datagram from {src} was delivered: {:?}",
            seen[0]
        );
    }
    assert_eq!(
        echo.peers(),
        vec![SocketAddr::from((CLIENT_IP, 5000))],
        "only the control datagram arrived"
    );
    assert!(rig.counter("uplink_spoofed_source") >= 4);
    assert!(rig.counter("uplink_loopback") >= 1);

    // The same identity from where it lives is admitted.
    t1_reaches_t2(&rig, "t1 reaches t2 from its own address");
}

#[test]
fn a_container_cannot_spoof_a_group_member_to_reach_a_third() {
    let rig = setup();
    let ctr3 = rig.topo.new_container("ctr3", CONTAINER3_IP).unwrap();
    thread::sleep(VETH_POLL);
    let echo53 = rig.serve_udp_echo(&rig.topo.container2.ns, 53);
    let echo54 = rig.serve_udp_echo(&rig.topo.container2.ns, 54);
    rig.map_add("t3", "172.17.0.4", &["8083:80"]);
    // t2 admits t1's group on 53, and t3's own address on 54 (the control).
    t2_admits_t1s_group(&rig, "--port 54 --cidr 172.17.0.4/32");

    let out = RawSocket::open_in(&ctr3.ns, "eth0").unwrap();
    let ctr2 = RawSocket::open_in(&rig.topo.container2.ns, "eth0").unwrap();
    let frame = |src: Ipv4Addr, sport: u16, dport: u16| {
        let mut p = Packet::udp(src, sport, CONTAINER2_IP, dport);
        p.eth_src = ctr3.link().unwrap().mac;
        p.eth_dst = rig.topo.container2.link().unwrap().mac;
        p.payload = b"who am i".to_vec();
        p.frame()
    };

    let seen = inject(&out, &frame(CONTAINER3_IP, 6000, 54), &[&ctr2]);
    assert!(
        !seen[0].is_empty(),
        "t3's datagram from its own address is delivered"
    );
    // Borrowing t1's address (a member of the group t2 admits) or an
    // unassigned one gets t3 nowhere.
    for (src, sport) in [(CONTAINER_IP, 6001), (Ipv4Addr::new(172, 17, 99, 9), 6002)] {
        let seen = inject(&out, &frame(src, sport, 53), &[&ctr2]);
        assert!(
            seen[0].is_empty(),
            "t3 posing as {src} reached t2: {:?}",
            seen[0]
        );
    }
    assert!(echo53.peers().is_empty(), "{:?}", echo53.peers());
    assert_eq!(
        echo54.peers(),
        vec![SocketAddr::from((CONTAINER3_IP, 6000))]
    );
    assert!(rig.counter("container_spoofed_source") >= 2);

    // t1 itself still gets through.
    t1_reaches_t2(&rig, "t1 reaches t2");

    // With CAP_NET_ADMIN, t3 gives itself t1's address: the daemon sees
    // the claim but the address stays with the port that had it.
    ctr3.ns
        .ip(["addr", "add", "172.17.0.2/16", "dev", "eth0"])
        .unwrap();
    thread::sleep(ADDR_REFRESH);
    let seen = inject(&out, &frame(CONTAINER_IP, 6003, 53), &[&ctr2]);
    assert!(
        seen[0].is_empty(),
        "t3 took over t1's address: {:?}",
        seen[0]
    );
    assert_eq!(
        echo53.peers().len(),
        1,
        "only t1's own: {:?}",
        echo53.peers()
    );
    assert!(
        rig.daemon
            .stderr()
            .contains("claimed by more than one bridge port"),
        "{}",
        rig.daemon.stderr()
    );
}

/// From the moment `ip addr add` returned in `ns`, how long until a
/// datagram from `src` to `to` got through: one probe every 2 ms, each
/// numbered; the first answer names the probe that passed.
fn first_passing_probe(ns: &berth_integration::NetNs, src: Ipv4Addr, to: SocketAddr) -> Duration {
    ns.run(|| {
        let t0 = Instant::now();
        let sock = std::net::UdpSocket::bind((src, 0)).expect("bind the new address");
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let mut sent = Vec::new();
        let mut buf = [0u8; 512];
        while t0.elapsed() < Duration::from_secs(4) {
            sock.send_to(format!("probe {}", sent.len()).as_bytes(), to)
                .expect("send");
            sent.push(t0.elapsed());
            if let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let i: usize = text
                    .rsplit(' ')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("odd answer {text:?}"));
                return sent[i];
            }
        }
        panic!("nothing from {src} got through in 4 s");
    })
}

/// A container whose address is set after its veth joined the bridge (as
/// CNI plugins and Docker do) may send, under policy, within milliseconds
/// of the address being set: the daemon follows address events in the
/// containers' namespaces instead of waiting for its next poll (250 ms
/// for a port without addresses, 2 s for one that has some).
#[test]
fn a_container_can_send_within_milliseconds_of_its_address_being_set() {
    let rig = setup();
    let _echo = rig.serve_udp_echo(&rig.topo.container2.ns, 53);
    // The receiver has groups, so every sender's source is checked.
    rig.map_add("t2", "172.17.0.3", &["5353:53/udp"]);
    rig.berth(&["sg", "create", "sg-dns"]);
    rig.berth_words("sg rule add sg-dns --ingress --proto udp --port 53 --cidr 172.17.0.0/16");
    rig.berth(&["sg", "attach", "sg-dns", "--task", "t2"]);

    // A container's veth, enslaved and up, its end still without address.
    let late = berth_integration::NetNs::new("late").unwrap();
    rig.topo
        .host
        .ns
        .ip([
            "link",
            "add",
            "vethlate",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            late.name(),
        ])
        .unwrap();
    rig.topo
        .host
        .ns
        .ip(["link", "set", "vethlate", "master", "docker0", "up"])
        .unwrap();
    late.ip(["link", "set", "eth0", "up"]).unwrap();
    late.exec("ethtool", ["-K", "eth0", "tx", "off"]).unwrap();
    // Hooked, and polled at least once while it had no address.
    thread::sleep(VETH_POLL);

    let to = SocketAddr::from((CONTAINER2_IP, 53));
    let first = Ipv4Addr::new(172, 17, 0, 9);
    late.ip(["addr", "add", "172.17.0.9/16", "dev", "eth0"])
        .unwrap();
    let took_first = first_passing_probe(&late, first, to);
    // A second address on a port whose addresses are known.
    let second = Ipv4Addr::new(172, 17, 0, 10);
    late.ip(["addr", "add", "172.17.0.10/16", "dev", "eth0"])
        .unwrap();
    let took_second = first_passing_probe(&late, second, to);
    println!("first address usable after {took_first:?}, a second one after {took_second:?}");
    for (what, took) in [("first", took_first), ("second", took_second)] {
        assert!(
            took < Duration::from_millis(50),
            "the {what} address was usable only after {took:?}"
        );
    }
}
