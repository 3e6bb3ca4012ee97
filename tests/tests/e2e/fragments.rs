//! Fragmented datagrams and forged ICMP errors, end to end: a Docker-like
//! host in network namespaces, the real `berth daemon` driven by the real
//! CLI, real sockets. Every datagram here is larger than the 1500-byte MTU,
//! so the sender's kernel fragments it and the receiver's reassembles it.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    thread,
    time::Duration,
};

use berth_integration::{
    any,
    pkt::{self, Packet},
    rawsock::{ipv4_tuple, RawSocket},
    rig::REQUEST_TIMEOUT as T,
    traffic::{recv_datagram, udp_socket_in, UdpEchoServer},
    udp_request, Mode, NetNs, Rig,
};

/// How long a datagram is waited for before we call it lost.
const LOST: Duration = Duration::from_millis(1500);

/// The daemon attached by `mode`, every container port hooked.
fn setup(mode: Mode) -> Rig {
    Rig::builder().mode(mode).wait_for_ports().start()
}

fn udp_in(ns: &NetNs, bind: SocketAddr) -> UdpSocket {
    udp_socket_in(ns, bind, LOST)
}

/// The next datagram on `sock`, or `None` when nothing comes in time.
fn recv(sock: &UdpSocket) -> Option<Vec<u8>> {
    recv_datagram(sock).map(|(data, _)| data)
}

fn datagram(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

/// Sends `payload` from `from` to `to` and says whether it arrived whole.
fn arrives(from: &UdpSocket, to: &UdpSocket, target: SocketAddr, payload: &[u8]) -> bool {
    from.send_to(payload, target).expect("send");
    match recv(to) {
        Some(got) => {
            assert_eq!(got, payload, "a datagram arrived, but not the one sent");
            true
        }
        None => false,
    }
}

#[test]
fn a_large_datagram_refused_by_the_senders_egress_rules_is_not_reassembled() {
    let rig = setup(Mode::Default);
    rig.map_add("app", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "app"]);
    // Only udp 7000 may leave.
    rig.berth_words("sg rule rm app --egress --proto all --cidr 0.0.0.0/0");
    rig.berth_words("sg rule add app --egress --proto udp --port 7000 --cidr 172.17.0.0/16");
    rig.berth(&["sg", "attach", "app", "--task", "app"]);
    let open = udp_in(&rig.topo.container2.ns, any(7000));
    let closed = udp_in(&rig.topo.container2.ns, any(7001));
    let sender = udp_in(&rig.topo.container.ns, any(40000));
    let (to_open, to_closed) = (
        rig.topo.container2.addr(7000),
        rig.topo.container2.addr(7001),
    );
    let denied = rig.counter("frag_denied");

    assert!(
        arrives(&sender, &open, to_open, b"small"),
        "allowed and small"
    );
    assert!(
        arrives(&sender, &open, to_open, &datagram(4000, 0x61)),
        "allowed and fragmented"
    );
    assert!(!arrives(&sender, &closed, to_closed, b"small"), "refused");
    assert!(
        !arrives(&sender, &closed, to_closed, &datagram(4000, 0x62)),
        "a refused datagram must not get through in fragments"
    );
    assert!(rig.counter("frag_denied") > denied);
    // The allowed port still works afterwards.
    assert!(arrives(&sender, &open, to_open, b"still"));
}

#[test]
fn a_large_datagram_refused_by_the_receivers_ingress_rules_is_not_reassembled() {
    let rig = setup(Mode::Default);
    rig.map_add("db", "172.17.0.3", &["15432:5432"]);
    rig.berth(&["sg", "create", "db"]);
    rig.berth_words("sg rule add db --ingress --proto udp --port 7000 --cidr 172.17.0.0/16");
    rig.berth(&["sg", "attach", "db", "--task", "db"]);
    // The sender has no groups: only the receiver's rules judge.
    let open = udp_in(&rig.topo.container2.ns, any(7000));
    let closed = udp_in(&rig.topo.container2.ns, any(7001));
    let sender = udp_in(&rig.topo.container.ns, any(40000));
    let (to_open, to_closed) = (
        rig.topo.container2.addr(7000),
        rig.topo.container2.addr(7001),
    );

    assert!(arrives(&sender, &open, to_open, b"small"));
    assert!(arrives(&sender, &open, to_open, &datagram(4000, 0x63)));
    assert!(!arrives(&sender, &closed, to_closed, b"small"));
    assert!(
        !arrives(&sender, &closed, to_closed, &datagram(4000, 0x64)),
        "a refused datagram must not get through in fragments"
    );
    assert!(arrives(&sender, &open, to_open, b"still"));
}

/// `len` bytes of letters: no two neighbouring 16-bit words alike, so a
/// fragment with its words swapped differs and sums the same.
pub(super) fn letters(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// Sends a 3000-byte datagram from the client to `target`, a published
/// port of `echo`, and checks that it is answered whole, from `target`,
/// the container having seen the client's own address (`client`, as a
/// socket address prints it). Returns how many later fragments were
/// translated meanwhile (`frag_xlate`), for the caller to judge.
pub(super) fn a_large_datagram_is_answered_whole(
    rig: &Rig,
    target: SocketAddr,
    client: &str,
    echo: &UdpEchoServer,
) -> u64 {
    let translated = rig.counter("frag_xlate");
    let payload = letters(3000);
    let p = payload.clone();
    let reply = rig
        .topo
        .client
        .ns
        .run(move || udp_request(target, &p, T))
        .unwrap_or_else(|e| {
            panic!(
                "no answer to a 3000-byte datagram to {target}: {e:#}\nserver saw {:?}\n{}",
                echo.peers(),
                rig.berth(&["stats"])
            )
        });
    assert_eq!(reply.from, target, "the answer comes from the host port");
    let (peer, echoed) = reply.text.split_once(' ').expect("peer and payload");
    assert!(
        peer.starts_with(&format!("{client}:")),
        "the container saw {peer}"
    );
    assert_eq!(echoed.len(), payload.len(), "the whole datagram came back");
    assert_eq!(echoed, payload);
    rig.counter("frag_xlate") - translated
}

fn large_datagram_to_a_published_port_gets_its_answer(mode: Mode) {
    let rig = setup(mode);
    let dns = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let target = rig.topo.host.addr(5353);
    assert!(
        a_large_datagram_is_answered_whole(&rig, target, "192.0.2.2", &dns) > 0,
        "later fragments were translated at the uplink"
    );
    // Small datagrams keep working on the same port.
    let small = rig.client_udp(5353, "ping").expect("a small answer");
    assert!(small.text.ends_with(" ping"), "{}", small.text);
}

#[test]
fn a_3000_byte_datagram_to_a_published_udp_port_gets_its_answer_tc() {
    large_datagram_to_a_published_port_gets_its_answer(Mode::Default);
}

#[test]
fn a_3000_byte_datagram_to_a_published_udp_port_gets_its_answer_xdp() {
    large_datagram_to_a_published_port_gets_its_answer(Mode::Xdp);
}

/// Sends a complete IPv4 packet (header included) from the calling
/// thread's namespace.
fn send_raw_ipv4(packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    // SAFETY: plain socket calls on a descriptor owned here; the address
    // and buffer outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let r = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if r < 0 {
            return Err(err);
        }
    }
    Ok(())
}

#[test]
fn a_container_forging_an_icmp_error_about_another_containers_flow_does_not_reach_the_client() {
    let rig = setup(Mode::Default);
    let _dns = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let target = rig.topo.host.addr(5353);
    let client = udp_in(&rig.topo.client.ns, any(0));
    client.connect(target).unwrap();
    client.send(b"hello").unwrap();
    assert!(recv(&client).is_some(), "the flow is set up");
    let SocketAddr::V4(local) = client.local_addr().unwrap() else {
        unreachable!()
    };

    // The other container claims the first one's port is unreachable.
    let mut quoted = Packet::udp(
        Ipv4Addr::new(192, 0, 2, 2),
        local.port(),
        Ipv4Addr::new(172, 17, 0, 2),
        53,
    );
    quoted.ttl = 63;
    let client_ip = Ipv4Addr::new(192, 0, 2, 2);
    let forged = Packet::icmp_error(
        Ipv4Addr::new(172, 17, 0, 3),
        client_ip,
        3,
        3,
        [0; 4],
        &quoted,
        28,
    )
    .ipv4();
    let forged_before = rig.counter("icmp_forged");
    rig.topo
        .container2
        .ns
        .run(move || send_raw_ipv4(&forged, client_ip))
        .expect("send the forged error");

    // Translated, it would reach the client's socket as ECONNREFUSED.
    let mut buf = [0u8; 1500];
    match client.recv(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Err(e) => panic!("the forged error reached the client: {e}"),
        Ok(n) => panic!("unexpected datagram: {:?}", &buf[..n]),
    }
    assert!(rig.counter("icmp_forged") > forged_before);
    client.send(b"again").unwrap();
    let answer = recv(&client).expect("the flow goes on");
    assert!(answer.ends_with(b" again"));
}

#[test]
fn a_container_with_groups_gets_icmp_errors_about_its_flows_and_other_icmp_by_its_rules() {
    let rig = setup(Mode::Default);
    let _dns = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    rig.berth(&["sg", "create", "dns"]);
    rig.berth_words("sg rule add dns --ingress --proto udp --port 53 --cidr 0.0.0.0/0");
    rig.berth(&["sg", "attach", "dns", "--task", "dns"]);
    let target = rig.topo.host.addr(5353);
    let client = udp_in(&rig.topo.client.ns, any(0));
    client.send_to(b"hello", target).unwrap();
    assert!(recv(&client).is_some(), "the flow is set up");
    let SocketAddr::V4(local) = client.local_addr().unwrap() else {
        unreachable!()
    };
    let (host, client_ip) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    let denied = rig.counter("policy_denied_icmp");

    // A router on the client's side could not forward a 1400-byte reply:
    // the error about the tracked flow reaches the container.
    let mut reply = Packet::udp(host, 5353, client_ip, local.port()).with_payload_len(1372);
    reply.frag = pkt::IP_DF;
    let frag_needed =
        Packet::icmp_error(client_ip, host, 3, 4, [0, 0, 0x04, 0xb0], &reply, 28).ipv4();
    rig.topo
        .client
        .ns
        .run(move || send_raw_ipv4(&frag_needed, host))
        .expect("send fragmentation needed");
    let mut route = String::new();
    for _ in 0..50 {
        route = rig
            .topo
            .container
            .ns
            .ip(["route", "get", "192.0.2.2"])
            .unwrap();
        if route.contains("mtu 1200") {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(route.contains("mtu 1200"), "container route: {route}");

    // A timestamp request from a neighbour is neither echo nor an error:
    // the group's rules decide, and they open no ICMP yet.
    let (c1, c2) = (Ipv4Addr::new(172, 17, 0, 2), Ipv4Addr::new(172, 17, 0, 3));
    let at_c2 = RawSocket::open_in(&rig.topo.container2.ns, "eth0").expect("packet socket");
    let is_ts_answer = move |f: &[u8]| {
        matches!(ipv4_tuple(f), Some((pkt::ICMP, src, dst, _, _)) if src == c1 && dst == c2)
            && f.get(pkt::ETH_LEN + 20) == Some(&14)
    };
    let ts = Packet::icmp(c2, c1, 13, 0, [0, 1, 0, 1]).ipv4();
    let ingress_denied = rig.counter("policy_denied_ingress");
    let send_ts = |ts: Vec<u8>| {
        rig.topo
            .container2
            .ns
            .run(move || send_raw_ipv4(&ts, c1))
            .expect("send timestamp request")
    };
    send_ts(ts.clone());
    let answers = at_c2.collect(LOST, is_ts_answer).unwrap();
    assert!(answers.is_empty(), "answered without a rule");
    assert!(rig.counter("policy_denied_ingress") > ingress_denied);
    // An error about a flow the container never had.
    let never = Packet::udp(c1, 53, c2, 40999);
    let forged = Packet::icmp_error(c2, c1, 3, 3, [0; 4], &never, 28).ipv4();
    rig.topo
        .container2
        .ns
        .run(move || send_raw_ipv4(&forged, c1))
        .expect("send port unreachable");
    let mut now = rig.counter("policy_denied_icmp");
    for _ in 0..50 {
        if now > denied {
            break;
        }
        thread::sleep(Duration::from_millis(20));
        now = rig.counter("policy_denied_icmp");
    }
    assert!(
        now > denied,
        "the forged error dropped at the veth: {denied} -> {now}"
    );

    // A rule for timestamps opens them (as in AWS); the answer leaves by
    // the group's egress (everything, in a new group).
    rig.berth_words("sg rule add dns --ingress --proto icmp --icmp-type 13 --cidr 172.17.0.0/16");
    send_ts(ts);
    let answers = at_c2.collect(LOST, is_ts_answer).unwrap();
    assert_eq!(answers.len(), 1, "one timestamp reply");

    // The container pings the client with TTL 1: the host, a hop on the
    // way, says time exceeded, quoting the tracked ping.
    let at_c1 = RawSocket::open_in(&rig.topo.container.ns, "eth0").expect("packet socket");
    let mut ping = Packet::icmp(c1, client_ip, 8, 0, [0x51, 0x7e, 0, 1]);
    ping.ttl = 1;
    let ping = ping.ipv4();
    rig.topo
        .container
        .ns
        .run(move || send_raw_ipv4(&ping, client_ip))
        .expect("send ping");
    let exceeded = at_c1
        .collect(LOST, move |f| {
            matches!(ipv4_tuple(f), Some((pkt::ICMP, _, dst, _, _)) if dst == c1)
                && f.get(pkt::ETH_LEN + 20) == Some(&11)
        })
        .unwrap();
    assert_eq!(exceeded.len(), 1, "the time-exceeded reaches the pinger");
}
