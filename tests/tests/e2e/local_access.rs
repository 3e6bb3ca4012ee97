//! Host-local and hairpin access to published ports, without a proxy and
//! without NAT rules: the cgroup socket hooks point `connect()/sendmsg()` at
//! the container. Callers run as `cg-probe` inside the daemon's cgroup.
use berth_integration::{HttpPeerServer, Rig, RigBuilder, UdpEchoServer};

/// A daemon publishing the first container's web server on 8080 (and on
/// 127.0.0.1:9000) and its DNS server on 5353/udp.
fn setup() -> (Rig, HttpPeerServer, UdpEchoServer) {
    setup_on(Rig::builder())
}

/// [`setup`] on `builder`'s rig.
pub(super) fn setup_on(builder: RigBuilder) -> (Rig, HttpPeerServer, UdpEchoServer) {
    let rig = builder.start();
    let web = rig.serve_http(&rig.topo.container.ns, 80);
    let dns = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add(
        "web",
        "172.17.0.2",
        &["8080:80", "5353:53/udp", "127.0.0.1:9000:80"],
    );
    (rig, web, dns)
}

/// `cg-probe http` from the host to each of `targets`: `getpeername()`
/// shows what was called; the container sees the host's bridge address.
pub(super) fn host_reaches(rig: &Rig, targets: &[&str]) {
    for target in targets {
        let out = rig.cg_probe(&rig.topo.host.ns, &["http", target]);
        assert!(
            out.starts_with(&format!("peer={target} body=172.17.0.1:")),
            "{target}: {out}"
        );
    }
}

#[test]
fn host_reaches_a_published_port_on_localhost_and_its_own_addresses() {
    let (rig, _web, _dns) = setup();
    host_reaches(
        &rig,
        &[
            "127.0.0.1:8080",
            "192.0.2.1:8080",
            "172.17.0.1:8080",
            "127.0.0.1:9000",
        ],
    );
}

#[test]
fn host_udp_replies_come_from_the_address_the_client_sent_to() {
    let (rig, _web, _dns) = setup();
    for target in ["127.0.0.1:5353", "192.0.2.1:5353"] {
        let out = rig.cg_probe(&rig.topo.host.ns, &["udp", target, "hi"]);
        assert!(
            out.starts_with(&format!("from={target} text=172.17.0.1:")),
            "{target}: {out}"
        );
        assert!(out.ends_with(" hi"), "{out}");
        let out = rig.cg_probe(&rig.topo.host.ns, &["udp-connected", target, "yo"]);
        assert!(
            out.starts_with(&format!("peer={target} text=172.17.0.1:")),
            "{target}: {out}"
        );
    }
}

#[test]
fn hairpin_to_a_neighbour_keeps_the_callers_address() {
    let (rig, _web, _dns) = setup();
    let out = rig.cg_probe(&rig.topo.container2.ns, &["http", "192.0.2.1:8080"]);
    assert!(
        out.starts_with("peer=192.0.2.1:8080 body=172.17.0.3:"),
        "{out}"
    );
    let out = rig.cg_probe(&rig.topo.container2.ns, &["udp", "172.17.0.1:5353", "x"]);
    assert!(
        out.starts_with("from=172.17.0.1:5353 text=172.17.0.3:"),
        "{out}"
    );
}

#[test]
fn hairpin_to_itself_sees_its_own_address() {
    let (rig, _web, _dns) = setup();
    let out = rig.cg_probe(&rig.topo.container.ns, &["http", "192.0.2.1:8080"]);
    assert!(
        out.starts_with("peer=192.0.2.1:8080 body=172.17.0.2:"),
        "{out}"
    );
}

#[test]
fn loopback_inside_a_container_is_the_container_itself() {
    let (rig, _web, _dns) = setup();
    // 127.0.0.1 in container2 is container2, where nothing listens.
    assert_eq!(
        rig.cg_probe(&rig.topo.container2.ns, &["http", "127.0.0.1:8080"]),
        "ECONNREFUSED"
    );
    // A mapping bound to 127.0.0.1 is the host's loopback only.
    assert_eq!(
        rig.cg_probe(&rig.topo.container2.ns, &["http", "192.0.2.1:9000"]),
        "ECONNREFUSED"
    );
}

#[test]
fn unpublished_ports_are_not_translated() {
    let (rig, _web, _dns) = setup();
    let _host = rig.serve_http(&rig.topo.host.ns, 7000);
    let out = rig.cg_probe(&rig.topo.host.ns, &["http", "127.0.0.1:7000"]);
    assert!(
        out.starts_with("peer=127.0.0.1:7000 body=127.0.0.1:"),
        "{out}"
    );
    rig.daemon
        .cli_ok(["map", "rm", "--task", "web", "-p", "8080:80"])
        .unwrap();
    assert_eq!(
        rig.cg_probe(&rig.topo.host.ns, &["http", "127.0.0.1:8080"]),
        "ECONNREFUSED"
    );
}
