//! Host-local and hairpin access over IPv6 sockets (`connect6`, `sendmsg6`,
//! `recvmsg6`, `getpeername6`). A dual-stack socket calling a v4-mapped
//! address (`::ffff:127.0.0.1`) reaches the IPv4 mapping's container and
//! sees the address it called, as `localhost` clients that prefer IPv6
//! sockets do. Callers run as `cg-probe` inside the daemon's cgroup.
use berth_integration::{HttpPeerServer, Rig, UdpEchoServer};

/// A dual-stack daemon publishing the first container's web server on 8080
/// (and on 127.0.0.1:9000) and its DNS server on 5353/udp, over IPv4.
fn setup() -> (Rig, HttpPeerServer, UdpEchoServer) {
    let rig = Rig::builder().dual_stack().start();
    let web = rig.serve_http(&rig.topo.container.ns, 80);
    let dns = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add(
        "web",
        "172.17.0.2",
        &["8080:80", "5353:53/udp", "127.0.0.1:9000:80"],
    );
    (rig, web, dns)
}

#[test]
fn host_reaches_an_ipv4_mapping_through_v4_mapped_addresses() {
    let (rig, web, _dns) = setup();
    let before = rig.counter("sock_xlate");
    for target in [
        "[::ffff:127.0.0.1]:8080",
        "[::ffff:192.0.2.1]:8080",
        "[::ffff:172.17.0.1]:8080",
        "[::ffff:127.0.0.1]:9000",
    ] {
        let out = rig.cg_probe(&rig.topo.host.ns, &["http", target]);
        // getpeername() shows what was called; the container sees the
        // host's bridge address over IPv4.
        assert!(
            out.starts_with(&format!("peer={target} body=172.17.0.1:")),
            "{target}: {out}"
        );
    }
    assert_eq!(web.peers().len(), 4);
    assert!(rig.counter("sock_xlate") >= before + 4);
}

#[test]
fn host_udp_over_v4_mapped_addresses_answers_from_the_address_called() {
    let (rig, _web, dns) = setup();
    // Unconnected: the kernel sends a v4-mapped datagram down the IPv4
    // path (sendmsg4 translates it); recvmsg6 shows the reply v4-mapped.
    let out = rig.cg_probe(&rig.topo.host.ns, &["udp", "[::ffff:127.0.0.1]:5353", "hi"]);
    assert!(
        out.starts_with("from=[::ffff:127.0.0.1]:5353 text=172.17.0.1:"),
        "{out}"
    );
    assert!(out.ends_with(" hi"), "{out}");
    // Connected: connect6 translates it.
    let out = rig.cg_probe(
        &rig.topo.host.ns,
        &["udp-connected", "[::ffff:192.0.2.1]:5353", "yo"],
    );
    assert!(
        out.starts_with("peer=[::ffff:192.0.2.1]:5353 text=172.17.0.1:"),
        "{out}"
    );
    assert_eq!(dns.peers().len(), 2);
}

#[test]
fn hairpin_over_a_v4_mapped_host_address_keeps_the_callers_address() {
    let (rig, _web, _dns) = setup();
    let out = rig.cg_probe(
        &rig.topo.container2.ns,
        &["http", "[::ffff:192.0.2.1]:8080"],
    );
    assert!(
        out.starts_with("peer=[::ffff:192.0.2.1]:8080 body=172.17.0.3:"),
        "{out}"
    );
}

#[test]
fn v4_mapped_loopback_in_a_container_and_unpublished_ports_are_left_alone() {
    let (rig, _web, _dns) = setup();
    // ::ffff:127.0.0.1 in container2 is container2 itself.
    assert_eq!(
        rig.cg_probe(
            &rig.topo.container2.ns,
            &["http", "[::ffff:127.0.0.1]:8080"]
        ),
        "ECONNREFUSED"
    );
    // A host server on an unpublished port is reached as it is.
    let _host = rig.serve_http(&rig.topo.host.ns, 7000);
    let out = rig.cg_probe(&rig.topo.host.ns, &["http", "[::ffff:127.0.0.1]:7000"]);
    assert!(
        out.starts_with("peer=[::ffff:127.0.0.1]:7000 body=127.0.0.1:"),
        "{out}"
    );
    // Once the mapping goes, the port is the host's again (nothing there).
    rig.berth(&["map", "rm", "--task", "web", "-p", "8080:80"]);
    assert_eq!(
        rig.cg_probe(&rig.topo.host.ns, &["http", "[::ffff:127.0.0.1]:8080"]),
        "ECONNREFUSED"
    );
}
