//! Several bridges (`--bridge cni0 --bridge docker0`) and bridges that
//! appear after the daemon started: a second bridge beside docker0, as a
//! CNI network's bridge plugin makes `cni0`, with containers of its own.
//! Every check goes through the real daemon and CLI with real sockets.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    peer_ip,
    rig::{REQUEST_TIMEOUT as T, VETH_POLL},
    tcp_connect,
    topology::{add_bridge, BridgeNet},
    Container, NetNs, Rig, Topology,
};
use serde_json::Value;

/// The second bridge of most tests, and its network.
const CNI: BridgeNet<'static> = BridgeNet {
    bridge: "cni0",
    gateway: Ipv4Addr::new(10, 88, 0, 1),
    prefix_len: 16,
};
const CNI_CTR: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const CNI_CTR2: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);

/// A bridge created while the daemon runs.
const LATE: BridgeNet<'static> = BridgeNet {
    bridge: "br-late",
    gateway: Ipv4Addr::new(10, 99, 0, 1),
    prefix_len: 24,
};
const LATE_CTR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fn container_on(topo: &Topology, net: BridgeNet<'_>, role: &str, ip: Ipv4Addr) -> Container {
    Container::attach_to(&topo.host, net, role, ip, topo.options())
        .unwrap_or_else(|e| panic!("attach {role} to {}: {e:#}", net.bridge))
}

/// The standard topology plus cni0 with two containers, and a daemon
/// serving both bridges.
fn two_bridges(flags: &[&str]) -> (Rig, Container, Container) {
    let topo = Topology::build().expect("build the topology");
    add_bridge(&topo.host, CNI.bridge, CNI.gateway, CNI.prefix_len).expect("add cni0");
    // The host runs Docker's rules (FORWARD policy DROP, br_netfilter): let
    // cni0's own traffic through, as CNI's firewall plugin does.
    topo.host
        .ns
        .exec(
            "iptables",
            ["-w", "-A", "FORWARD", "-i", CNI.bridge, "-j", "ACCEPT"],
        )
        .expect("accept cni0's traffic");
    let c1 = container_on(&topo, CNI, "cni_a", CNI_CTR);
    let c2 = container_on(&topo, CNI, "cni_b", CNI_CTR2);
    let mut all = vec!["--bridge", CNI.bridge];
    all.extend(flags);
    let rig = Rig::builder().flags(&all).wait_for_ports().start_on(topo);
    (rig, c1, c2)
}

/// `berth status --json`'s entry for `bridge`.
fn bridge_status(rig: &Rig, bridge: &str) -> Value {
    let v = rig.json(&["status", "--json"]);
    v["datapath"]["bridges"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == bridge).cloned())
        .unwrap_or_else(|| panic!("no bridge {bridge} in {v}"))
}

/// Waits (up to 5 s) until `bridge` shows `state` with `ports` hooked
/// ports; returns its status.
fn wait_bridge(rig: &Rig, bridge: &str, state: &str, ports: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let b = bridge_status(rig, bridge);
        if b["state"] == state && b["ports"] == ports {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{bridge} never became {state} with {ports} ports: {b}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn get(ns: &NetNs, addr: SocketAddr) -> String {
    ns.run(move || berth_integration::http_get(addr, "/", T))
        .unwrap_or_else(|e| panic!("GET {addr}: {e:#}"))
}

/// A new TCP connection from `ns` to `addr` gets no answer.
fn assert_refused(ns: &NetNs, addr: SocketAddr) {
    let err = ns
        .run(move || tcp_connect(addr, Duration::from_millis(1500)))
        .expect_err("the connection should have been refused");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}

#[test]
fn containers_of_two_bridges_are_published_with_the_clients_address() {
    let (rig, cni_a, _cni_b) = two_bridges(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let _cni_web = rig.serve_http(&cni_a.ns, 80);
    let _cni_dns = rig.serve_udp_echo(&cni_a.ns, 53);
    rig.map_add("docker-web", "172.17.0.2", &["8080:80"]);
    rig.map_add("cni-web", &CNI_CTR.to_string(), &["8081:80", "5353:53/udp"]);

    for port in [8080, 8081] {
        let body = get(&rig.topo.client.ns, rig.topo.host.addr(port));
        assert_eq!(peer_ip(&body), "192.0.2.2", "port {port}: {body}");
    }
    let reply = rig.client_udp(5353, "hi").expect("UDP through cni0");
    assert!(
        reply.text.starts_with("192.0.2.2:") && reply.text.ends_with(" hi"),
        "{}",
        reply.text
    );
    assert_eq!(
        reply.from,
        rig.topo.host.addr(5353),
        "the reply leaves as the host port"
    );

    // Each bridge is attached, with its own subnet and its own ports.
    let docker0 = bridge_status(&rig, "docker0");
    assert_eq!(docker0["state"], "attached", "{docker0}");
    assert_eq!(docker0["subnets"], serde_json::json!(["172.17.0.0/16"]));
    assert_eq!(docker0["ports"], 2, "{docker0}");
    let cni0 = bridge_status(&rig, "cni0");
    assert_eq!(cni0["state"], "attached", "{cni0}");
    assert_eq!(cni0["subnets"], serde_json::json!(["10.88.0.0/16"]));
    assert_eq!(cni0["ports"], 2, "{cni0}");
    let text = rig.berth(&["status"]);
    assert!(
        text.contains("bridge     cni0 attached (ifindex "),
        "{text}"
    );
    let ls = rig.berth(&["map", "ls"]);
    let row = |task: &str| {
        ls.lines()
            .find(|l| l.starts_with(task))
            .unwrap_or_else(|| panic!("no {task} in {ls}"))
            .to_owned()
    };
    assert!(ls.lines().next().unwrap().ends_with("BRIDGE"), "{ls}");
    assert!(row("docker-web").ends_with("docker0"), "{ls}");
    assert!(row("cni-web ").ends_with("cni0"), "{ls}");

    // An address on neither bridge is refused, naming both.
    let err = rig.map_add_err("stray", "192.168.7.7", &["8090:80"]);
    assert_eq!(
        err,
        "berth: container IP 192.168.7.7 is not in the subnet of any bridge berth serves \
         (docker0 172.17.0.0/16, cni0 10.88.0.0/16)"
    );
}

#[test]
fn hairpin_works_within_each_bridge() {
    let (rig, cni_a, cni_b) = two_bridges(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let _cni_web = rig.serve_http(&cni_a.ns, 80);
    rig.map_add("docker-web", "172.17.0.2", &["8080:80"]);
    rig.map_add("cni-web", &CNI_CTR.to_string(), &["8081:80"]);
    let out = rig.cg_probe(&rig.topo.container2.ns, &["http", "192.0.2.1:8080"]);
    assert!(
        out.starts_with("peer=192.0.2.1:8080 body=172.17.0.3:"),
        "{out}"
    );
    let out = rig.cg_probe(&cni_b.ns, &["http", "192.0.2.1:8081"]);
    assert!(
        out.starts_with("peer=192.0.2.1:8081 body=10.88.0.3:"),
        "{out}"
    );
    let out = rig.cg_probe(&cni_a.ns, &["http", "10.88.0.1:8081"]);
    assert!(
        out.starts_with("peer=10.88.0.1:8081 body=10.88.0.2:"),
        "{out}"
    );
}

#[test]
fn security_groups_guard_a_container_of_the_second_bridge() {
    let (rig, cni_a, cni_b) = two_bridges(&[]);
    let _cni_web = rig.serve_http(&cni_a.ns, 80);
    rig.map_add("cni-web", &CNI_CTR.to_string(), &["8081:80"]);
    let direct = SocketAddr::from((CNI_CTR, 80));
    assert_eq!(peer_ip(&get(&cni_b.ns, direct)), "10.88.0.3", "open before");
    rig.berth(&["sg", "create", "office"]);
    rig.berth_words("sg rule add office --ingress --proto tcp --port 80 --cidr 192.0.2.2/32");
    rig.berth(&["sg", "attach", "office", "--task", "cni-web"]);
    let published = rig.topo.host.addr(8081);
    assert_eq!(peer_ip(&get(&rig.topo.client.ns, published)), "192.0.2.2");
    assert_refused(&rig.topo.client2.ns, published);
    // East-west on cni0 is judged at the container's own port too.
    assert_refused(&cni_b.ns, direct);
}

#[test]
fn the_unhooked_port_gate_knows_the_second_bridge() {
    // --default-sg: a port not hooked may not talk, and what the host sends
    // from cni0's MAC is the host's. A published port on cni0 still works.
    let (rig, cni_a, _cni_b) = two_bridges(&["--default-sg", "open"]);
    rig.berth_words("sg rule add open --ingress --proto tcp --port 80 --cidr 0.0.0.0/0");
    let _cni_web = rig.serve_http(&cni_a.ns, 80);
    rig.map_add("cni-web", &CNI_CTR.to_string(), &["8081:80"]);
    let body = get(&rig.topo.client.ns, rig.topo.host.addr(8081));
    assert_eq!(peer_ip(&body), "192.0.2.2");
    assert_eq!(rig.counter("unhooked_port"), 0);
}

#[test]
fn a_bridge_created_after_the_daemon_started_is_served_without_a_restart() {
    let rig = Rig::builder().flags(&["--bridge", LATE.bridge]).start();
    let pid = rig.daemon.pid();
    let b = bridge_status(&rig, LATE.bridge);
    assert_eq!(b["state"], "waiting", "{b}");
    assert!(
        rig.berth(&["status"])
            .contains("bridge     br-late waiting (does not exist yet)\n"),
        "the text says so too"
    );
    assert!(
        rig.daemon.stderr().contains("bridge does not exist yet"),
        "one log line says so"
    );
    // No subnet yet: a container IP of it cannot be published.
    let err = rig.map_add_err("late", &LATE_CTR.to_string(), &["8082:80"]);
    assert!(err.contains("br-late no IPv4 address"), "{err}");

    add_bridge(&rig.topo.host, LATE.bridge, LATE.gateway, LATE.prefix_len).expect("add br-late");
    let ctr = container_on(&rig.topo, LATE, "late", LATE_CTR);
    let b = wait_bridge(&rig, LATE.bridge, "attached", 1);
    assert_eq!(b["subnets"], serde_json::json!(["10.99.0.0/24"]), "{b}");
    let _web = rig.serve_http(&ctr.ns, 80);
    thread::sleep(VETH_POLL);
    rig.map_add("late", &LATE_CTR.to_string(), &["8082:80"]);
    let body = get(&rig.topo.client.ns, rig.topo.host.addr(8082));
    assert_eq!(peer_ip(&body), "192.0.2.2");
    assert_eq!(rig.daemon.pid(), pid, "no restart");
}

#[test]
fn a_bridge_deleted_and_created_again_is_served_again() {
    let topo = Topology::build().expect("build the topology");
    add_bridge(&topo.host, LATE.bridge, LATE.gateway, LATE.prefix_len).expect("add br-late");
    let ctr = container_on(&topo, LATE, "late", LATE_CTR);
    let rig = Rig::builder()
        .flags(&["--bridge", LATE.bridge])
        .wait_for_ports()
        .start_on(topo);
    let _web = rig.serve_http(&ctr.ns, 80);
    rig.map_add("late", &LATE_CTR.to_string(), &["8082:80"]);
    assert_eq!(
        peer_ip(&get(&rig.topo.client.ns, rig.topo.host.addr(8082))),
        "192.0.2.2"
    );
    let first = wait_bridge(&rig, LATE.bridge, "attached", 1);
    let reply_pin = |rig: &Rig| {
        rig.json(&["status", "--json"])["datapath"]["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["target"] == LATE.bridge && a["program"] == "berth_reply")
            .cloned()
            .collect::<Vec<Value>>()
    };
    assert_eq!(reply_pin(&rig).len(), 1);

    rig.topo
        .host
        .ns
        .ip(["link", "del", LATE.bridge])
        .expect("delete br-late");
    wait_bridge(&rig, LATE.bridge, "waiting", 0);
    assert!(reply_pin(&rig).is_empty(), "its link pin went with it");

    add_bridge(&rig.topo.host, LATE.bridge, LATE.gateway, LATE.prefix_len).expect("re-add");
    rig.topo
        .host
        .ns
        .ip(["link", "set", &ctr.host_veth, "master", LATE.bridge, "up"])
        .expect("join the container again");
    let second = wait_bridge(&rig, LATE.bridge, "attached", 1);
    assert_ne!(
        second["ifindex"], first["ifindex"],
        "a new bridge: {second}"
    );
    let pins = reply_pin(&rig);
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0]["attached"], true, "{pins:?}");
    thread::sleep(VETH_POLL);
    assert_eq!(
        peer_ip(&get(&rig.topo.client.ns, rig.topo.host.addr(8082))),
        "192.0.2.2"
    );
}

#[test]
fn a_link_that_is_no_bridge_or_is_the_uplink_refuses_the_start() {
    for (bridge, want) in [
        ("lo", "berth: interface lo is not a bridge; --bridge names a Linux bridge (docker0, cni0, ...)"),
        ("up0", "berth: --uplink and --bridge both name up0; the uplink must be another interface"),
    ] {
        let err = Rig::builder()
            .flags(&["--bridge", bridge])
            .try_start()
            .expect_err("must not start");
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{bridge}: {msg}");
    }
}

#[test]
fn a_restarted_daemon_adopts_both_bridges_and_drops_a_gone_ones_link() {
    let (mut rig, cni_a, _cni_b) = two_bridges(&[]);
    let _cni_web = rig.serve_http(&cni_a.ns, 80);
    rig.map_add("cni-web", &CNI_CTR.to_string(), &["8081:80"]);
    let published = rig.topo.host.addr(8081);
    rig.daemon.stop().expect("stop");
    // The pins keep cni0's programs attached while no daemon runs...
    assert_eq!(peer_ip(&get(&rig.topo.client.ns, published)), "192.0.2.2");
    rig.daemon.start_again().expect("start");
    // ...and a new daemon swaps its programs in and serves both again.
    assert_eq!(
        wait_bridge(&rig, "cni0", "attached", 2)["state"],
        "attached"
    );
    wait_bridge(&rig, "docker0", "attached", 2);
    assert_eq!(peer_ip(&get(&rig.topo.client.ns, published)), "192.0.2.2");

    // cni0 deleted while no daemon runs: the next one waits for it and
    // shows no link of it.
    rig.daemon.stop().expect("stop");
    rig.topo
        .host
        .ns
        .ip(["link", "del", CNI.bridge])
        .expect("delete cni0");
    rig.daemon.start_again().expect("start");
    wait_bridge(&rig, "cni0", "waiting", 0);
    let v = rig.json(&["status", "--json"]);
    let links: Vec<&Value> = v["datapath"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target"] == CNI.bridge)
        .collect();
    assert!(links.is_empty(), "{links:?}");
}
