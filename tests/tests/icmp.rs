//! ICMP errors about translated flows: `BPF_PROG_TEST_RUN` fixtures with exact
//! bytes, and end to end in namespaces.
use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
    Rig,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// An Ethernet + IPv4 + ICMP error frame quoting `quote` (an IPv4 packet,
/// cut to `quote_len` bytes), all checksums computed from scratch.
fn icmp_error(
    eth: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    (kind, code, rest): (u8, u8, u32),
    quote: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend(rest.to_be_bytes());
    icmp.extend(&quote[..quote_len.min(quote.len())]);
    let c = pkt::csum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let tot = 20 + icmp.len();
    let mut ip = vec![0x45, 0];
    ip.extend((tot as u16).to_be_bytes());
    ip.extend([0, 0, 0, 0, ttl, pkt::ICMP, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = pkt::csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = eth.0.to_vec();
    f.extend(eth.1);
    f.extend(0x0800u16.to_be_bytes());
    f.extend(ip);
    f.extend(icmp);
    f
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn publish(env: &mut Env) {
    env.host_addr(HOST);
    env.publish(&binding(Ipv4Addr::UNSPECIFIED, 8080, C1, 80, Protocol::Tcp));
    env.publish(&binding(Ipv4Addr::UNSPECIFIED, 8053, C1, 53, Protocol::Udp));
}

const PORT_UNREACH: (u8, u8, u32) = (3, 3, 0);
const FRAG_NEEDED: (u8, u8, u32) = (3, 4, 1200);

/// The client's packet as it reached the container (translated, TTL - 1).
fn delivered(p: &Packet, port: u16) -> Packet {
    let mut t = p.clone();
    t.dst = C1;
    t.dport = port;
    t.ttl -= 1;
    t
}

#[test]
fn container_port_unreachable_reaches_the_client_from_the_host_port() {
    in_fixture_ns(|env| {
        publish(env);
        for (proto, quote_len) in [
            (pkt::UDP, 28),
            (pkt::UDP, 1000),
            (pkt::TCP, 28),
            (pkt::TCP, 40),
        ] {
            let (orig, cport) = if proto == pkt::UDP {
                (Packet::udp(CLIENT, 5000, HOST, 8053), 53)
            } else {
                (Packet::tcp(CLIENT, 40000, HOST, 8080), 80)
            };
            assert_eq!(env.tc("berth_ingress", &orig.frame()).code, TC_ACT_REDIRECT);
            // What the container's stack sends back, quoting what it got.
            let err = icmp_error(
                (BRIDGE_MAC, C1_MAC),
                C1,
                CLIENT,
                64,
                PORT_UNREACH,
                &delivered(&orig, cport).ipv4(),
                quote_len,
            );
            // What the client must get: from the host, quoting what it sent.
            let mut quoted = orig.clone();
            quoted.ttl -= 1; // the quote shows the TTL the container saw
            let want = icmp_error(
                (CLIENT_MAC, UPLINK_MAC),
                HOST,
                CLIENT,
                63,
                PORT_UNREACH,
                &quoted.ipv4(),
                quote_len,
            );
            let v = env.tc("berth_reply", &err);
            assert_eq!(v.code, TC_ACT_REDIRECT, "proto {proto} quote {quote_len}");
            assert_eq!(hex(&v.frame), hex(&want), "proto {proto} quote {quote_len}");
        }
    });
}

#[test]
fn frag_needed_from_outside_reaches_the_container_about_its_own_address() {
    in_fixture_ns(|env| {
        publish(env);
        let orig = Packet::tcp(CLIENT, 40000, HOST, 8080);
        assert_eq!(env.tc("berth_ingress", &orig.frame()).code, TC_ACT_REDIRECT);
        // The container's reply as it left the host, and as the container sent it.
        let mut left = Packet::tcp(HOST, 8080, CLIENT, 40000);
        left.payload = vec![0x5a; 1400];
        left.ttl = 63;
        let mut sent = left.clone();
        sent.src = C1;
        sent.sport = 80;
        sent.ttl = 64;
        let err = icmp_error(
            (UPLINK_MAC, CLIENT_MAC),
            ROUTER,
            HOST,
            64,
            FRAG_NEEDED,
            &left.ipv4(),
            28,
        );
        let mut quoted = sent;
        quoted.ttl = 63; // the quote is of the packet as it left the host
        let want = icmp_error(
            (C1_MAC, BRIDGE_MAC),
            ROUTER,
            C1,
            63,
            FRAG_NEEDED,
            &quoted.ipv4(),
            28,
        );
        let v = env.tc("berth_ingress", &err);
        assert_eq!(v.code, TC_ACT_REDIRECT);
        assert_eq!(hex(&v.frame), hex(&want));
        let v = env.xdp("berth_xdp", &err);
        assert_eq!(v.code, XDP_PASS);
        assert_eq!(
            hex(&v.frame[8..]),
            hex(&want),
            "after the 8-byte hand-off metadata"
        );
    });
}

#[test]
fn icmp_errors_about_other_flows_pass_untouched() {
    in_fixture_ns(|env| {
        publish(env);
        // No flow tracked yet.
        let q = delivered(&Packet::udp(CLIENT, 5000, HOST, 8053), 53).ipv4();
        let from_container = icmp_error((BRIDGE_MAC, C1_MAC), C1, CLIENT, 64, PORT_UNREACH, &q, 28);
        let v = env.tc("berth_reply", &from_container);
        assert_eq!((v.code, v.frame == from_container), (TC_ACT_OK, true));
        let mut left = Packet::tcp(HOST, 8080, CLIENT, 40000);
        left.ttl = 63;
        let outside = icmp_error(
            (UPLINK_MAC, CLIENT_MAC),
            ROUTER,
            HOST,
            64,
            FRAG_NEEDED,
            &left.ipv4(),
            28,
        );
        let v = env.tc("berth_ingress", &outside);
        assert_eq!((v.code, v.frame == outside), (TC_ACT_OK, true));
        // A tracked flow, but the error quotes another host port.
        env.tc(
            "berth_ingress",
            &Packet::tcp(CLIENT, 40000, HOST, 8080).frame(),
        );
        left.sport = 8081;
        let other = icmp_error(
            (UPLINK_MAC, CLIENT_MAC),
            ROUTER,
            HOST,
            64,
            FRAG_NEEDED,
            &left.ipv4(),
            28,
        );
        let v = env.tc("berth_ingress", &other);
        assert_eq!((v.code, v.frame == other), (TC_ACT_OK, true));
    });
}

// ------------------------------------------------------------ end to end

#[test]
fn udp_to_a_port_nobody_listens_on_is_refused_at_the_client() {
    let rig = Rig::start();
    let topo = &rig.topo;
    rig.map_add("t", "172.17.0.2", &["5353:53/udp"]);
    let target = topo.host.addr(5353);
    let err = topo
        .client
        .ns
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(target)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send(b"anyone?")?;
            let mut buf = [0u8; 64];
            s.recv(&mut buf).map(|_| ())
        })
        .expect_err("nothing listens in the container");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(rig.counter("icmp_xlate"), 1);
}

/// A raw ICMP message from the client namespace (the kernel adds the IPv4
/// header; ICMP's checksum is ours to compute).
fn send_raw_icmp(dst: Ipv4Addr, mut icmp: Vec<u8>) -> std::io::Result<()> {
    let c = pkt::csum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::sendto(
            fd,
            icmp.as_ptr().cast(),
            icmp.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        libc::close(fd);
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn frag_needed_from_the_client_side_sets_the_containers_path_mtu() {
    let rig = Rig::start();
    let topo = &rig.topo;
    let _echo = rig.serve_udp_echo(&topo.container.ns, 53);
    rig.map_add("t", "172.17.0.2", &["5353:53/udp"]);
    let target = topo.host.addr(5353);
    let client_port = topo
        .client
        .ns
        .run(move || -> std::io::Result<u16> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send_to(b"hello", target)?;
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf)?;
            // A router between here and the host could not forward a
            // 1400-byte reply: tell the host so, quoting that reply.
            let port = s.local_addr()?.port();
            let mut quoted = Packet::udp(
                Ipv4Addr::new(192, 0, 2, 1),
                5353,
                Ipv4Addr::new(192, 0, 2, 2),
                port,
            );
            quoted.payload = vec![0; 1372];
            quoted.frag = pkt::IP_DF;
            let mut icmp = vec![3, 4, 0, 0, 0, 0];
            icmp.extend(1200u16.to_be_bytes());
            icmp.extend(&quoted.ipv4()[..28]);
            send_raw_icmp(Ipv4Addr::new(192, 0, 2, 1), icmp)?;
            Ok(port)
        })
        .expect("UDP exchange and ICMP injection");
    assert!(client_port > 0);
    // The container's kernel now knows the path MTU towards the client.
    let mut route = String::new();
    for _ in 0..50 {
        route = topo.container.ns.ip(["route", "get", "192.0.2.2"]).unwrap();
        if route.contains("mtu 1200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(route.contains("mtu 1200"), "container route: {route}");
}
