//! Security groups over IPv6 end to end (issue 15): the Docker-like host
//! with IPv6 on docker0 and a container, the real daemon and CLI, real
//! sockets. A task's groups hold for IPv6 as for IPv4: no IPv6 flow to or
//! from a task with groups passes without being judged, while neighbour
//! discovery keeps working.
use std::{
    io,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use berth_integration::{rig::REQUEST_TIMEOUT as T, tcp_connect, NetNs, Rig};

const REFUSED: Duration = Duration::from_millis(1500);
const BRIDGE6: &str = "fd00:17::1";
const CTR6: &str = "fd00:17::2";

/// The rig with IPv6 on docker0 and in the first container (the Rig's
/// containers start with IPv6 off; no duplicate address detection, so the
/// addresses are usable at once).
fn setup() -> Rig {
    let rig = Rig::builder().wait_for_ports().start();
    let host = &rig.topo.host;
    host.ns
        .ip([
            "-6",
            "addr",
            "add",
            &format!("{BRIDGE6}/64"),
            "dev",
            host.bridge,
            "nodad",
        ])
        .expect("IPv6 on the bridge");
    let ctr = &rig.topo.container;
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net/ipv6/conf/eth0/disable_ipv6",
    ] {
        ctr.ns
            .set_sysctl(key, "0")
            .expect("IPv6 on in the container");
    }
    ctr.ns
        .ip([
            "-6",
            "addr",
            "add",
            &format!("{CTR6}/64"),
            "dev",
            ctr.ifname,
            "nodad",
        ])
        .expect("IPv6 in the container");
    rig
}

fn listen(ns: &NetNs, port: u16) -> TcpListener {
    ns.run(move || TcpListener::bind(("::", port)))
        .unwrap_or_else(|e| panic!("listen on [::]:{port}: {e}"))
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A new TCP connection from `ns` to `addr` gets no answer (a refused SYN
/// is dropped, never reset).
fn assert_refused(ns: &NetNs, addr: SocketAddr) {
    let err = ns
        .run(move || tcp_connect(addr, REFUSED))
        .expect_err("the IPv6 connection should have been refused");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}

fn assert_connects(ns: &NetNs, addr: SocketAddr) {
    ns.run(move || tcp_connect(addr, T))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
}

#[test]
fn ipv6_to_a_task_with_a_group_is_judged_and_an_ipv4_cidr_does_not_admit_it() {
    let rig = setup();
    let _srv = listen(&rig.topo.container.ns, 8081);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let host = &rig.topo.host.ns;
    // Without a group, IPv6 is as open as Docker leaves it.
    assert_connects(host, addr(CTR6, 8081));

    rig.berth(&["sg", "create", "web"]);
    rig.berth(&[
        "sg",
        "rule",
        "add",
        "web",
        "--ingress",
        "--proto",
        "tcp",
        "--port",
        "8081",
        "--cidr",
        "0.0.0.0/0",
    ]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    // The IPv4 rule admits IPv4 only.
    assert_refused(host, addr(CTR6, 8081));
    assert!(rig.counter("policy6_unjudged") > 0);
    // Neighbour discovery still went both ways: the host knows the
    // container's link-layer address.
    let neigh = host
        .ip(["-6", "neigh", "show", CTR6, "dev", rig.topo.host.bridge])
        .expect("ip neigh");
    assert!(neigh.contains("lladdr"), "no neighbour entry: {neigh:?}");
}

#[test]
fn ipv6_from_a_task_with_a_group_is_refused_once_its_egress_rule_is_removed() {
    let rig = setup();
    let _srv = listen(&rig.topo.host.ns, 8082);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let ctr = &rig.topo.container.ns;
    assert_connects(ctr, addr(BRIDGE6, 8082));

    rig.berth(&["sg", "create", "web"]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    // A new group allows everything out, both families: the IPv6 rule is
    // its own, and goes with the IPv4 one.
    let show = rig.berth(&["sg", "show", "web"]);
    assert!(show.contains("egress     all    all    ::/0"), "{show}");
    for cidr in ["0.0.0.0/0", "::/0"] {
        rig.berth(&[
            "sg", "rule", "rm", "web", "--egress", "--proto", "all", "--cidr", cidr,
        ]);
    }
    assert_refused(ctr, addr(BRIDGE6, 8082));
    assert!(rig.counter("policy6_unjudged") > 0);
}
