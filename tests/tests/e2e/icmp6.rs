//! `ICMPv6` errors about NAT66 flows through the real daemon (issue 15,
//! icmp6): a datagram to a published IPv6 port the container has no
//! socket on makes the container's kernel answer port unreachable, which
//! must reach the client from the address and port it called, so its
//! connected socket reports the refusal; and a router's Packet Too Big
//! about a download's reply must reach the container, so path-MTU
//! discovery works over IPv6 through NAT66.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{addr, traffic::udp_socket_in, NetNs, Rig};

#[test]
fn udp_to_a_closed_port_over_ipv6_is_refused_from_the_host_port() {
    let rig = Rig::builder().dual_stack().start();
    // Nothing listens on the container's port 53.
    rig.berth_words("map add --task closed6 --ip6 fd00:17::2 -p 5353:53/udp");
    let target = rig.topo.host.addr6(5353);
    let any6: SocketAddr = "[::]:0".parse().unwrap();
    let client = udp_socket_in(&rig.topo.client.ns, any6, Duration::from_secs(3));
    client.connect(target).expect("connect");
    let before = rig.counter("icmp_xlate");
    client.send(b"anyone there?").expect("send");
    let mut buf = [0u8; 64];
    match client.recv(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!("expected the port unreachable as ECONNREFUSED, got {other:?}"),
    }
    assert!(rig.counter("icmp_xlate") > before, "translated by berth");
}

/// The far client behind the router, on a /64 of its own.
const FAR_IP6: &str = "2001:db8:1::2";
/// The router's address on the wan (the host's next hop to `FAR_IP6`).
const ROUTER_WAN_IP6: &str = "2001:db8::9";
/// The MTU of the router's link toward the far client.
const NARROW_MTU: &str = "1400";
/// Bytes the container sends: well over the initial window, so full-size
/// segments keep coming after the first Packet Too Big.
const DOWNLOAD: usize = 200 * 1024;
/// How long the download may take; without path-MTU discovery every
/// full-size segment is lost and it never completes.
const STALL: Duration = Duration::from_secs(20);

fn byte_at(i: usize) -> u8 {
    (i % 251) as u8
}

/// `ip -6 …` in `ns`, panicking with the command's error.
fn ip6(ns: &NetNs, args: &[&str]) {
    let mut all = vec!["-6"];
    all.extend_from_slice(args);
    ns.ip(&all).unwrap_or_else(|e| panic!("ip {all:?}: {e:#}"));
}

/// A router namespace on the wan (`ROUTER_WAN_IP6`) and a client namespace
/// behind it whose link from the router has MTU 1400, while the client's
/// own end keeps 1500, so the client advertises a full MSS and only the
/// router can tell the sender the path is narrower. Returned as
/// (router, far client); dropping them removes their links.
fn router_and_far_client(rig: &Rig) -> (NetNs, NetNs) {
    let router = NetNs::new("rtr6").expect("router namespace");
    let far = NetNs::new("far6").expect("far client namespace");
    for ns in [&router, &far] {
        ns.set_sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
        ns.set_sysctl("net.ipv6.conf.default.accept_dad", "0")
            .unwrap();
    }
    let wan = &rig.topo.wan;
    wan.ip([
        "link",
        "add",
        "wp-rtr6",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        router.name(),
    ])
    .unwrap();
    wan.ip(["link", "set", "wp-rtr6", "master", addr::WAN_BRIDGE, "up"])
        .unwrap();
    router
        .ip([
            "link",
            "add",
            "far0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            far.name(),
        ])
        .unwrap();
    router.ip(["link", "set", "eth0", "up"]).unwrap();
    router
        .ip(["link", "set", "far0", "mtu", NARROW_MTU, "up"])
        .unwrap();
    ip6(
        &router,
        &[
            "addr",
            "add",
            &format!("{ROUTER_WAN_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    ip6(
        &router,
        &["addr", "add", "2001:db8:1::1/64", "dev", "far0", "nodad"],
    );
    router
        .set_sysctl("net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    far.ip(["link", "set", "eth0", "up"]).unwrap();
    ip6(
        &far,
        &[
            "addr",
            "add",
            &format!("{FAR_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    ip6(
        &far,
        &[
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
            "dev",
            "eth0",
        ],
    );
    ip6(
        &rig.topo.host.ns,
        &[
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            ROUTER_WAN_IP6,
            "dev",
            addr::UPLINK,
        ],
    );
    (router, far)
}

#[test]
fn a_download_over_ipv6_through_a_narrower_link_teaches_the_container_the_path_mtu() {
    let rig = Rig::builder().dual_stack().start();
    let (_router, far) = router_and_far_client(&rig);
    let listener = rig
        .topo
        .container
        .ns
        .run(|| TcpListener::bind("[::]:9000"))
        .expect("listen in the container");
    let server = thread::spawn(move || -> io::Result<()> {
        let (mut c, _) = listener.accept()?;
        c.set_write_timeout(Some(STALL))?;
        let data: Vec<u8> = (0..DOWNLOAD).map(byte_at).collect();
        c.write_all(&data)
    });
    rig.berth_words("map add --task pmtu6 --ip6 fd00:17::2 -p 9000:9000");
    let before = rig.counter("icmp_xlate");
    let target = rig.topo.host.addr6(9000);
    let started = Instant::now();
    let got = far
        .run(move || -> io::Result<Vec<u8>> {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            c.set_read_timeout(Some(STALL))?;
            let mut got = Vec::with_capacity(DOWNLOAD);
            c.read_to_end(&mut got)?;
            Ok(got)
        })
        .unwrap_or_else(|e| {
            panic!(
                "download through the 1400-byte link after {:?}: {e}",
                started.elapsed()
            )
        });
    server.join().unwrap().expect("server side");
    assert_eq!(got.len(), DOWNLOAD, "download length");
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == byte_at(i)),
        "download intact"
    );
    let route = rig
        .topo
        .container
        .ns
        .ip(["-6", "route", "get", FAR_IP6])
        .unwrap();
    assert!(
        route.contains(&format!("mtu {NARROW_MTU}")),
        "container route: {route}"
    );
    assert!(rig.counter("icmp_xlate") > before, "translated by berth");
}
