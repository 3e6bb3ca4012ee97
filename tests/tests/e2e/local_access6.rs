//! Host-local and hairpin access over IPv6 sockets (`connect6`, `sendmsg6`,
//! `recvmsg6`, `getpeername6`). A dual-stack socket calling a v4-mapped
//! address (`::ffff:127.0.0.1`) reaches the IPv4 mapping's container and
//! sees the address it called, as `localhost` clients that prefer IPv6
//! sockets do. Callers run as `cg-probe` inside the daemon's cgroup.
use berth_integration::{HttpPeerServer, Rig, UdpEchoServer};

use super::local_access::{host_reaches, setup_on};

/// A dual-stack daemon publishing the first container's web server on 8080
/// (and on 127.0.0.1:9000) and its DNS server on 5353/udp, over IPv4.
fn setup() -> (Rig, HttpPeerServer, UdpEchoServer) {
    setup_on(Rig::builder().dual_stack())
}

#[test]
fn host_reaches_an_ipv4_mapping_through_v4_mapped_addresses() {
    let (rig, web, _dns) = setup();
    let before = rig.counter("sock_xlate");
    // The container sees the host's bridge address over IPv4.
    host_reaches(
        &rig,
        &[
            "[::ffff:127.0.0.1]:8080",
            "[::ffff:192.0.2.1]:8080",
            "[::ffff:172.17.0.1]:8080",
            "[::ffff:127.0.0.1]:9000",
        ],
    );
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

/// The dual-stack rig with the container's IPv6 servers (HTTP on 80, UDP
/// echo on 53) published over IPv6 only (`--ip6` without `--ip`) on
/// `[::]:8080`, `[::]:5353/udp`, `[::1]:9000` and `[2001:db8::1]:8081`.
fn setup6() -> (Rig, HttpPeerServer, UdpEchoServer) {
    let rig = Rig::builder().dual_stack().start();
    let web = rig.serve_http6(&rig.topo.container.ns, 80);
    let dns = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    rig.berth_words("map add --task web6 --ip6 fd00:17::2 -p 8080:80 -p 5353:53/udp -p [::1]:9000:80 -p [2001:db8::1]:8081:80");
    (rig, web, dns)
}

#[test]
fn host_reaches_an_ipv6_mapping_on_localhost_and_an_address_bound_one() {
    let (rig, web, _dns) = setup6();
    let before = rig.counter("sock_xlate");
    for target in [
        "[::1]:8080",
        "[::]:8080",
        "[::1]:9000",
        "[2001:db8::1]:8081",
    ] {
        let out = rig.cg_probe(&rig.topo.host.ns, &["http", target]);
        // getpeername() shows what was called (`::` is shown as the
        // kernel's `::`); the container sees the host's bridge address.
        assert!(
            out.starts_with(&format!("peer={target} body=[fd00:17::1]:")),
            "{target}: {out}"
        );
    }
    assert_eq!(web.peers().len(), 4);
    assert!(rig.counter("sock_xlate") >= before + 4);
}

#[test]
fn host_udp_to_an_ipv6_mapping_answers_from_the_address_called() {
    let (rig, _web, dns) = setup6();
    let out = rig.cg_probe(&rig.topo.host.ns, &["udp", "[::1]:5353", "hi"]);
    assert!(
        out.starts_with("from=[::1]:5353 text=[fd00:17::1]:"),
        "{out}"
    );
    assert!(out.ends_with(" hi"), "{out}");
    let out = rig.cg_probe(&rig.topo.host.ns, &["udp-connected", "[::1]:5353", "yo"]);
    assert!(
        out.starts_with("peer=[::1]:5353 text=[fd00:17::1]:"),
        "{out}"
    );
    assert_eq!(dns.peers().len(), 2);
}

#[test]
fn hairpin_over_ipv6_keeps_the_callers_address() {
    let (rig, _web, _dns) = setup6();
    let out = rig.cg_probe(&rig.topo.container2.ns, &["http", "[2001:db8::1]:8081"]);
    assert!(
        out.starts_with("peer=[2001:db8::1]:8081 body=[fd00:17::3]:"),
        "{out}"
    );
    // The container calling its own mapping sees itself.
    let out = rig.cg_probe(&rig.topo.container.ns, &["http", "[2001:db8::1]:8081"]);
    assert!(
        out.starts_with("peer=[2001:db8::1]:8081 body=[fd00:17::2]:"),
        "{out}"
    );
}

#[test]
fn host_processes_cannot_bind_ports_published_over_ipv6() {
    let (rig, _web, _dns) = setup6();
    let host = &rig.topo.host.ns;
    for (proto, bind) in [
        ("tcp", "[::]:8080"),
        ("tcp", "[::1]:8080"),
        ("tcp", "[::]:8081"),
        ("tcp", "[::1]:9000"),
        ("udp", "[::]:5353"),
        ("tcp", "0.0.0.0:8080"),
    ] {
        assert_eq!(
            rig.cg_probe(host, &["bind", proto, bind]),
            "EADDRINUSE",
            "{proto} {bind}"
        );
    }
    assert_eq!(rig.cg_probe(host, &["bind", "tcp", "[::]:8090"]), "ok");
}

#[test]
fn ipv6_loopback_in_a_container_is_the_container_itself() {
    let (rig, _web, _dns) = setup6();
    assert_eq!(
        rig.cg_probe(&rig.topo.container2.ns, &["http", "[::1]:8080"]),
        "ECONNREFUSED"
    );
    // A mapping bound to ::1 is the host's loopback only.
    assert_eq!(
        rig.cg_probe(&rig.topo.container2.ns, &["http", "[2001:db8::1]:9000"]),
        "ECONNREFUSED"
    );
    // An unpublished port on ::1 is the host's own.
    let _host = rig.serve_http6(&rig.topo.host.ns, 7000);
    let out = rig.cg_probe(&rig.topo.host.ns, &["http", "[::1]:7000"]);
    assert!(out.starts_with("peer=[::1]:7000 body=[::1]:"), "{out}");
}

#[test]
fn a_dual_stack_task_is_reached_on_both_loopbacks_at_one_port() {
    let rig = Rig::builder().dual_stack().start();
    let _web4 = rig.serve_http(&rig.topo.container.ns, 80);
    let _web6 = rig.serve_http6(&rig.topo.container.ns, 80);
    // A dynamic host port: one number for both families.
    rig.berth_words("map add --task both --ip 172.17.0.2 --ip6 fd00:17::2 -p 80");
    let ports: Vec<u64> = rig
        .bindings()
        .iter()
        .filter_map(|b| b["hostPort"].as_u64())
        .collect();
    assert_eq!(ports.len(), 2, "{:?}", rig.bindings());
    assert_eq!(ports[0], ports[1], "one host port for both families");
    let port = ports[0];
    let host = &rig.topo.host.ns;
    let out = rig.cg_probe(host, &["http", &format!("127.0.0.1:{port}")]);
    assert!(
        out.starts_with(&format!("peer=127.0.0.1:{port} body=172.17.0.1:")),
        "{out}"
    );
    let out = rig.cg_probe(host, &["http", &format!("[::1]:{port}")]);
    assert!(
        out.starts_with(&format!("peer=[::1]:{port} body=[fd00:17::1]:")),
        "{out}"
    );
    // v4-mapped loopback is IPv4: the IPv4 half answers.
    let out = rig.cg_probe(host, &["http", &format!("[::ffff:127.0.0.1]:{port}")]);
    assert!(
        out.starts_with(&format!("peer=[::ffff:127.0.0.1]:{port} body=172.17.0.1:")),
        "{out}"
    );
}

/// A real dockerd with `--ipv6` and berth-docker-proxy as its userland
/// proxy: `docker run -p 8080:80` publishes both families, and a host
/// process calling `[::1]:8080` reaches the container over IPv6 through
/// the socket hooks (no docker-proxy process, no ip6tables rule).
#[test]
fn a_real_dockerd_ipv6_container_is_reached_on_ipv6_localhost() {
    use berth_integration::{
        berth_bin,
        dockerd::{topology_for_dockerd6, DOCKER_BRIDGE, DOCKER_BRIDGE_CIDR6, HTTPD_IMAGE},
        Dockerd, DockerdOptions,
    };
    let topo = topology_for_dockerd6().expect("build topology");
    let rig = Rig::builder().bridge(DOCKER_BRIDGE).start_on(topo);
    let shim = berth_bin()
        .expect("find berth")
        .with_file_name("berth-docker-proxy");
    let docker = Dockerd::start(
        &rig.topo.host.ns,
        DockerdOptions {
            bridge: DOCKER_BRIDGE.into(),
            userland_proxy: Some(shim),
            env: vec![(
                "BERTH_SOCKET".into(),
                rig.daemon.socket().display().to_string(),
            )],
            ipv6_cidr: Some(DOCKER_BRIDGE_CIDR6.into()),
            ..Default::default()
        },
    )
    .expect("start dockerd --ipv6");
    docker
        .import_httpd_image(&["sh", "httpd", "printf"])
        .expect("import busybox image");
    docker
        .docker_ok([
            "run",
            "-d",
            "--stop-timeout",
            "1",
            "--name",
            "web6",
            "-p",
            "8080:80",
            HTTPD_IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .expect("docker run");
    let ip6 = docker
        .docker_ok([
            "inspect",
            "-f",
            "{{.NetworkSettings.GlobalIPv6Address}}",
            "web6",
        ])
        .expect("inspect")
        .trim()
        .to_string();
    assert!(ip6.starts_with("fd00:18::"), "{ip6:?}");
    let host = &rig.topo.host.ns;
    let before = rig.counter("sock_xlate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let out = rig.cg_probe(host, &["http", "[::1]:8080"]);
        if out.starts_with("peer=") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(out.starts_with("peer=[::1]:8080 body=hello"), "{out}");
    // Translated at the socket, not proxied.
    assert!(rig.counter("sock_xlate") > before);
    let bindings = rig.bindings();
    assert!(
        bindings
            .iter()
            .any(|b| b["hostPort"] == 8080 && b["containerIP"] == ip6.as_str()),
        "{bindings:?}"
    );
    docker.docker_ok(["rm", "-f", "web6"]).expect("docker rm");
}

/// A `[::]` mapping answers on the host's own IPv6 addresses as
/// `BERTH_HOST_ADDRS6` holds them, and on no other. The test writes the
/// address into the pinned set itself (the daemon's netif watcher fills
/// it with the host's IPv6 addresses).
#[test]
fn hairpin_to_a_wildcard_ipv6_mapping_needs_a_host_address() {
    let (rig, _web, _dns) = setup6();
    let ctr2 = &rig.topo.container2.ns;
    // The daemon keeps the host's IPv6 addresses in BERTH_HOST_ADDRS6 (read
    // every 2 s): the uplink's address serves the [::] mapping.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let out = loop {
        let out = rig.cg_probe(ctr2, &["http", "[2001:db8::1]:8080"]);
        if out.starts_with("peer=") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        out.starts_with("peer=[2001:db8::1]:8080 body=[fd00:17::3]:"),
        "{out}"
    );
    // An address merely routed through the host stays untouched (nobody
    // has it: the call fails rather than reaching the container).
    let out = rig.cg_probe(ctr2, &["http", "[2001:db8::99]:8080"]);
    assert!(!out.starts_with("peer="), "{out}");
}
