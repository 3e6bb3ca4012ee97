//! Security groups over IPv6 end to end (issue 15): the Docker-like host
//! with IPv6 on docker0 and a container, the real daemon and CLI, real
//! sockets. A task's groups hold for IPv6 as for IPv4, by its IPv6 rules
//! (`berth_from_ctr6` / `berth_to_ctr6`), while neighbour discovery keeps
//! working.
use std::{
    io,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener},
    time::Duration,
};

use berth_integration::{rig::REQUEST_TIMEOUT as T, tcp_connect, NetNs, Rig};

const REFUSED: Duration = Duration::from_millis(1500);
pub(super) const BRIDGE6: &str = "fd00:17::1";
pub(super) const CTR6: &str = "fd00:17::2";
/// Link-local addresses of the bridge and the container (a container with
/// policy may always send from its link-local address).
const BRIDGE_LL: &str = "fe80::17:1";
const CTR_LL: &str = "fe80::17:2";

/// The rig with IPv6 on docker0 and in the first container (the Rig's
/// containers start with IPv6 off; no duplicate address detection, so the
/// addresses are usable at once).
pub(super) fn setup() -> Rig {
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
    host.ns
        .ip([
            "-6",
            "addr",
            "add",
            &format!("{BRIDGE_LL}/64"),
            "dev",
            host.bridge,
            "nodad",
        ])
        .expect("a link-local address on the bridge");
    let ctr = &rig.topo.container;
    ipv6_in(&ctr.ns, ctr.ifname, CTR6, CTR_LL);
    rig
}

/// IPv6 on in a container and its global and link-local addresses.
pub(super) fn ipv6_in(ns: &NetNs, ifname: &str, global: &str, link_local: &str) {
    for key in [
        "net.ipv6.conf.all.disable_ipv6".to_owned(),
        format!("net/ipv6/conf/{ifname}/disable_ipv6"),
    ] {
        ns.set_sysctl(&key, "0").expect("IPv6 on in the container");
    }
    for a in [global, link_local] {
        ns.ip([
            "-6",
            "addr",
            "add",
            &format!("{a}/64"),
            "dev",
            ifname,
            "nodad",
        ])
        .expect("an IPv6 address in the container");
    }
}

pub(super) fn listen(ns: &NetNs, port: u16) -> TcpListener {
    ns.run(move || TcpListener::bind(("::", port)))
        .unwrap_or_else(|e| panic!("listen on [::]:{port}: {e}"))
}

pub(super) fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A new TCP connection from `ns` to `addr` gets no answer (a refused SYN
/// is dropped, never reset).
pub(super) fn assert_refused(ns: &NetNs, addr: SocketAddr) {
    let err = ns
        .run(move || tcp_connect(addr, REFUSED))
        .expect_err("the IPv6 connection should have been refused");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}

pub(super) fn assert_connects(ns: &NetNs, addr: SocketAddr) {
    ns.run(move || tcp_connect(addr, T))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
}

#[test]
fn ipv6_to_a_task_is_judged_by_its_ipv6_rules_and_an_ipv4_cidr_admits_none() {
    let rig = setup();
    let _srv = listen(&rig.topo.container.ns, 8081);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let host = &rig.topo.host.ns;
    // Without a group, IPv6 is as open as Docker leaves it.
    assert_connects(host, addr(CTR6, 8081));

    rig.berth(&["sg", "create", "web"]);
    let rule = |cidr: &'static str| {
        [
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
            cidr,
        ]
    };
    rig.berth(&rule("0.0.0.0/0"));
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    let denied = rig.counter("policy_denied_ingress");
    // The IPv4 rule admits IPv4 only.
    assert_refused(host, addr(CTR6, 8081));
    assert!(rig.counter("policy_denied_ingress") > denied);
    // Neighbour discovery still went both ways: the host knows the
    // container's link-layer address.
    let neigh = host
        .ip(["-6", "neigh", "show", CTR6, "dev", rig.topo.host.bridge])
        .expect("ip neigh");
    assert!(neigh.contains("lladdr"), "no neighbour entry: {neigh:?}");
    // An IPv6 rule for the host's prefix: in, and the answers out.
    rig.berth(&rule("fd00:17::/64"));
    assert_connects(host, addr(CTR6, 8081));
    // The veth's IPv6 programs judged it all (the bridge's own IPv6 slot
    // is NAT66's).
    assert_eq!(rig.counter("policy6_unjudged"), 0);
}

#[test]
fn ipv6_egress_follows_the_groups_ipv6_rule_and_stops_when_it_is_removed() {
    let rig = setup();
    let _srv = listen(&rig.topo.host.ns, 8082);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let ctr = &rig.topo.container;
    let eth0 = ctr.ns.link(ctr.ifname).expect("eth0").ifindex;
    let bridge = SocketAddr::V6(SocketAddrV6::new(
        BRIDGE_LL.parse::<Ipv6Addr>().unwrap(),
        8082,
        0,
        eth0,
    ));
    assert_connects(&ctr.ns, bridge);

    rig.berth(&["sg", "create", "web"]);
    // A new group allows everything out, both families: the IPv6 rule is
    // its own.
    let show = rig.berth(&["sg", "show", "web"]);
    assert!(show.contains("egress     all    all    ::/0"), "{show}");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    assert_connects(&ctr.ns, bridge);
    rig.berth(&[
        "sg", "rule", "rm", "web", "--egress", "--proto", "all", "--cidr", "::/0",
    ]);
    let denied = rig.counter("policy_denied_egress");
    assert_refused(&ctr.ns, bridge);
    assert!(rig.counter("policy_denied_egress") > denied);
    // IPv4's own rule still lets IPv4 out.
    let _v4 = rig.serve_http(&rig.topo.host.ns, 8083);
    assert_connects(&ctr.ns, "172.17.0.1:8083".parse().unwrap());
}

/// The second container's addresses.
pub(super) const CTR2_6: &str = "fd00:17::3";
pub(super) const CTR2_LL: &str = "fe80::17:3";

/// `berth map add` of a dual-stack task (`--ip6`).
fn map_add6(rig: &Rig, task: &str, ip: &str, ip6: &str, spec: &str) {
    rig.berth(&[
        "map", "add", "--task", task, "--ip", ip, "--ip6", ip6, "-p", spec,
    ]);
}

#[test]
fn a_task_with_ip6_and_a_group_opens_ipv6_flows_from_its_global_address() {
    let rig = setup();
    let _srv = listen(&rig.topo.host.ns, 8084);
    let ctr = &rig.topo.container;
    rig.berth(&["sg", "create", "web"]);
    // Without --ip6 berth does not know the global address: a task with
    // policy may not open flows from it (only from its link-local one).
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    assert_refused(&ctr.ns, addr(BRIDGE6, 8084));
    // With it, the address is the task's: the group's ::/0 egress rule
    // lets it out, and the answers back in.
    map_add6(&rig, "web", "172.17.0.2", CTR6, "[::]:8086:86");
    let show = rig.berth(&["sg", "show", "web"]);
    assert!(show.contains(CTR6), "IPv6 member listed: {show}");
    assert_connects(&ctr.ns, addr(BRIDGE6, 8084));
    // Its IPv6 binding gone, the address is no longer the task's.
    rig.berth(&["map", "rm", "--task", "web", "-p", "[::]:8086:86"]);
    assert_refused(&ctr.ns, addr(BRIDGE6, 8084));
}

#[test]
fn a_group_peer_rule_admits_its_members_ipv6_addresses_and_refuses_others() {
    let rig = setup();
    let ctr2 = &rig.topo.container2;
    ipv6_in(&ctr2.ns, ctr2.ifname, CTR2_6, CTR2_LL);
    let _srv = listen(&rig.topo.container.ns, 8085);
    map_add6(&rig, "web", "172.17.0.2", CTR6, "8080:80");
    map_add6(&rig, "client", "172.17.0.3", CTR2_6, "9090:90");
    rig.berth(&["sg", "create", "web"]);
    rig.berth(&["sg", "create", "clients"]);
    rig.berth_words("sg rule add web --ingress --proto tcp --port 8085 --sg clients");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    let denied = rig.counter("policy_denied_ingress");
    // Neither the other task (not a member yet) nor the host is one.
    assert_refused(&ctr2.ns, addr(CTR6, 8085));
    assert_refused(&rig.topo.host.ns, addr(CTR6, 8085));
    assert!(rig.counter("policy_denied_ingress") > denied);
    // The client task joins the group: its IPv6 address is a member.
    rig.berth(&["sg", "attach", "clients", "--task", "client"]);
    assert_connects(&ctr2.ns, addr(CTR6, 8085));
    // The host still is not.
    assert_refused(&rig.topo.host.ns, addr(CTR6, 8085));
    // It leaves: its new flows are refused again.
    rig.berth(&["sg", "detach", "clients", "--task", "client"]);
    assert_refused(&ctr2.ns, addr(CTR6, 8085));
    assert_eq!(rig.counter("policy6_unjudged"), 0);
}
