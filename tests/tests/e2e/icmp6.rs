//! `ICMPv6` errors about NAT66 flows through the real daemon (issue 15,
//! icmp6): a datagram to a published IPv6 port the container has no
//! socket on makes the container's kernel answer port unreachable, which
//! must reach the client from the address and port it called, so its
//! connected socket reports the refusal.
use std::{io, net::SocketAddr, time::Duration};

use berth_integration::{traffic::udp_socket_in, Rig};

#[test]
fn udp_to_a_closed_port_over_ipv6_is_refused_from_the_host_port() {
    let rig = Rig::builder().dual_stack().start();
    // Nothing listens on the container's port 53.
    rig.berth(&[
        "map",
        "add",
        "--task",
        "closed6",
        "--ip6",
        "fd00:17::2",
        "-p",
        "5353:53/udp",
    ]);
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
