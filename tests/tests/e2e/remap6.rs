//! The NAT66 client-port clash remap end to end (issue 15), as IPv4's in
//! `flow_tracking.rs`: one client port to two host ports of one container
//! port over IPv6, through the real daemon and CLI and real sockets. Each
//! flow gets its own reply tuple (the second another client port towards
//! the container), each answer comes from the host port asked, and both
//! stay usable. A remap is forgotten with its flow.
use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use berth_integration::{rig::REQUEST_TIMEOUT as T, Rig};

use super::flow_tracking::{
    ask, connect_from, one_client_port_to_two_host_ports, start_line_echo_on,
};

/// A dual-stack rig (daemon `flags`) with `web` (`fd00:17::2`) published
/// on `ports` over IPv6 only.
fn rig_flags(flags: &[&str], ports: &[&str]) -> Rig {
    let rig = Rig::builder().dual_stack().flags(flags).start();
    let mut args = vec![
        "map",
        "add",
        "--task",
        "web",
        "--ip",
        "172.17.0.2",
        "--ip6",
        "fd00:17::2",
    ];
    for p in ports {
        args.extend(["-p", p]);
    }
    rig.berth(&args);
    rig
}

fn rig_with(ports: &[&str]) -> Rig {
    rig_flags(&[], ports)
}

#[test]
fn udp6_one_client_port_to_two_host_ports_gets_each_reply_from_the_port_it_asked() {
    let rig = rig_with(&["[::]:5353:53/udp", "[::]:5354:53/udp"]);
    let _echo = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    one_client_port_to_two_host_ports(
        &rig,
        "[::]:0",
        |p| rig.topo.host.addr6(p),
        |p| rig.topo.client.addr6(p),
    );
    assert_eq!(rig.counter("nat_port_remap_failed"), 0);
}

#[test]
fn tcp6_one_client_port_to_two_host_ports_connects_both() {
    let rig = rig_with(&["[::]:8085:80", "[::]:8086:80"]);
    start_line_echo_on(&rig.topo.container.ns, "::", 80);
    let local = rig.topo.client.addr6(45000);
    let (h1, h2) = (rig.topo.host.addr6(8085), rig.topo.host.addr6(8086));
    let (mut a, mut b) = rig.topo.client.ns.run(move || {
        let a = connect_from(local, h1).expect("connect to 8085");
        let b = connect_from(local, h2).expect("connect to 8086 from the same port");
        (a, b)
    });
    assert_eq!(a.peer_addr().unwrap(), h1);
    assert_eq!(b.peer_addr().unwrap(), h2);
    let pa = ask(&mut a, "to 8085");
    let pb = ask(&mut b, "to 8086");
    assert_eq!(pa, local, "the first flow keeps the client's port");
    assert_eq!(pb.ip(), local.ip());
    assert_ne!(pb.port(), 45000, "the second got another client port");
    // Both stay usable, interleaved.
    assert_eq!(ask(&mut a, "again a"), pa);
    assert_eq!(ask(&mut b, "again b"), pb);
    assert!(rig.counter("nat_port_remap") >= 1);
    assert_eq!(rig.counter("nat_port_remap_failed"), 0);
}

/// How many entries the pinned map `name` (keyed by `FlowKey6`) holds.
fn entries6(rig: &Rig, name: &str) -> usize {
    use berth::datapath::sys;
    let fd = sys::obj_get(&rig.bpffs.path().join("berth").join(name)).expect("pinned");
    sys::map_keys(&fd, size_of::<berth_maps::FlowKey6>())
        .expect("keys")
        .len()
}

#[test]
fn a_remap_is_forgotten_with_its_flow() {
    let rig = rig_flags(
        &["--ct-udp-timeout", "1", "--ct-udp-stream-timeout", "1"],
        &["[::]:5353:53/udp", "[::]:5354:53/udp"],
    );
    let _echo = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    let sock = rig
        .topo
        .client
        .ns
        .run(|| UdpSocket::bind("[::]:0").expect("bind"));
    sock.set_read_timeout(Some(T)).unwrap();
    for port in [5353, 5354] {
        sock.send_to(b"q", rig.topo.host.addr6(port)).unwrap();
        let mut buf = [0u8; 512];
        sock.recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no reply through {port}: {e}"));
    }
    assert_eq!(entries6(&rig, "BERTH_NAT6"), 2, "both flows established");
    assert_eq!(
        entries6(&rig, "BERTH_NAT6_FWD"),
        1,
        "the second one remapped"
    );
    // Idle past the UDP timeout: each flow expires, and its remap with it.
    let start = Instant::now();
    while entries6(&rig, "BERTH_NAT6") + entries6(&rig, "BERTH_NAT6_FWD") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "flows {} remaps {} left",
            entries6(&rig, "BERTH_NAT6"),
            entries6(&rig, "BERTH_NAT6_FWD")
        );
        thread::sleep(Duration::from_millis(200));
    }
}
