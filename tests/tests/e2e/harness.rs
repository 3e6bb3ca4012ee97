//! Tests of the test harness itself: the topology is what the berth tests
//! assume, guards clean up, helpers time out. Root only.
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::ExitStatusExt as _,
    path::Path,
    time::{Duration, Instant},
};

use berth_integration::{
    addr, bpffs::is_bpffs_mount, http_get, netns::current_netns_inode, tcp_connect, udp_request,
    Bpffs, Daemon, DaemonOptions, HttpPeerServer, NetNs, Topology, TopologyOptions, UdpEchoServer,
};

const T: Duration = Duration::from_secs(5);

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn topology_has_the_documented_addresses_and_links() {
    let topo = Topology::build().expect("topology");

    assert_eq!(
        topo.host.ns.ipv4_addrs(addr::UPLINK).unwrap(),
        vec![(addr::HOST_IP, 24)]
    );
    assert_eq!(
        topo.host.ns.ipv4_addrs(addr::BRIDGE).unwrap(),
        vec![(addr::BRIDGE_IP, 16)]
    );
    assert_eq!(
        topo.client.ns.ipv4_addrs("eth0").unwrap(),
        vec![(addr::CLIENT_IP, 24)]
    );
    assert_eq!(
        topo.client2.ns.ipv4_addrs("eth0").unwrap(),
        vec![(addr::CLIENT2_IP, 24)]
    );
    assert_eq!(
        topo.container.ns.ipv4_addrs("eth0").unwrap(),
        vec![(addr::CONTAINER_IP, 16)]
    );
    assert_eq!(
        topo.container2.ns.ipv4_addrs("eth0").unwrap(),
        vec![(addr::CONTAINER2_IP, 16)]
    );

    for c in [&topo.container, &topo.container2] {
        let veth = c.host_veth_link(&topo.host).unwrap();
        assert!(c.host_veth.starts_with("veth"), "{}", c.host_veth);
        assert_eq!(veth.master.as_deref(), Some(addr::BRIDGE));
        let route = c.ns.ip(["route", "show", "default"]).unwrap();
        assert!(route.contains("via 172.17.0.1"), "{route}");
    }
    let route = topo.client.ns.ip(["route", "show", "default"]).unwrap();
    assert!(route.contains("via 192.0.2.1"), "{route}");

    let bridge = topo.host.bridge_link().unwrap();
    assert!(bridge.ifindex > 0);
    assert_ne!(bridge.mac, [0; 6]);
    assert_eq!(topo.host.uplink_link().unwrap().operstate, "UP");

    assert_eq!(topo.host.ns.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        topo.container
            .ns
            .sysctl("net.ipv6.conf.all.disable_ipv6")
            .unwrap(),
        "1"
    );

    let rules = topo.host.iptables_save().unwrap();
    for want in [
        ":FORWARD DROP",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-FORWARD",
        "-A DOCKER ! -i docker0 -o docker0 -j DROP",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
    ] {
        assert!(rules.contains(want), "missing {want:?} in:\n{rules}");
    }
}

#[test]
fn tx_checksum_offload_is_off_in_clients_and_containers() {
    let topo = Topology::build().expect("topology");
    for ns in [
        &topo.client.ns,
        &topo.client2.ns,
        &topo.container.ns,
        &topo.container2.ns,
    ] {
        let k = ns.exec("ethtool", ["-k", "eth0"]).unwrap();
        assert!(k.contains("tx-checksumming: off"), "{}: {k}", ns.name());
    }
}

#[test]
fn tx_checksum_offload_can_stay_on() {
    let topo = Topology::build_with(TopologyOptions {
        tx_checksum_off: false,
        ..Default::default()
    })
    .expect("topology");
    let k = topo.client.ns.exec("ethtool", ["-k", "eth0"]).unwrap();
    assert!(k.contains("tx-checksumming: on"), "{k}");
}

#[test]
fn both_clients_reach_the_host_uplink_over_tcp_and_udp() {
    let topo = Topology::build().expect("topology");
    let http = HttpPeerServer::start_in(&topo.host.ns, topo.host.addr(0)).unwrap();
    let udp = UdpEchoServer::start_in(&topo.host.ns, topo.host.addr(0)).unwrap();

    for client in [&topo.client, &topo.client2] {
        let body = client
            .ns
            .run(|| http_get(http.local_addr(), "/", T))
            .expect("http");
        let peer: SocketAddr = body.parse().unwrap();
        assert_eq!(peer.ip(), client.ip);

        let reply = client
            .ns
            .run(|| udp_request(udp.local_addr(), "ping", T))
            .expect("udp");
        assert_eq!(reply.from, udp.local_addr());
        let (peer, payload) = reply.text.split_once(' ').unwrap();
        assert_eq!(peer.parse::<SocketAddr>().unwrap().ip(), client.ip);
        assert_eq!(payload, "ping");
    }
    assert_eq!(http.peers().len(), 2);
    assert_eq!(udp.peers().len(), 2);
}

#[test]
fn container_reaches_the_host_bridge_ip() {
    let topo = Topology::build().expect("topology");
    let http = HttpPeerServer::start_in(&topo.host.ns, topo.host.bridge_addr(0)).unwrap();
    let body = topo
        .container
        .ns
        .run(|| http_get(http.local_addr(), "/", T))
        .expect("http");
    assert!(body.starts_with("172.17.0.2:"), "{body}");
}

#[test]
fn containers_reach_each_other_over_docker0() {
    let topo = Topology::build().expect("topology");
    let http = HttpPeerServer::start_in(&topo.container2.ns, any(80)).unwrap();
    let body = topo
        .container
        .ns
        .run(|| http_get(topo.container2.addr(80), "/", T))
        .expect("http");
    assert!(body.starts_with("172.17.0.2:"), "{body}");
    assert_eq!(http.peers().len(), 1);
}

#[test]
fn docker_rules_drop_direct_client_to_container_traffic() {
    let topo = Topology::build().expect("topology");
    let _server = HttpPeerServer::start_in(&topo.container.ns, any(80)).unwrap();
    let before = topo.host.docker_drop_packets().unwrap();

    let started = Instant::now();
    let err = topo
        .client
        .ns
        .run(|| tcp_connect(topo.container.addr(80), Duration::from_millis(700)))
        .expect_err("FORWARD must drop a client's SYN to an unpublished container port");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let after = topo.host.docker_drop_packets().unwrap();
    assert!(
        after > before,
        "DOCKER chain DROP counter did not move ({before} -> {after})"
    );
}

#[test]
fn without_docker_rules_client_reaches_container_directly() {
    // The control for the test above: routing alone would deliver it.
    let topo = Topology::build_with(TopologyOptions {
        docker_iptables: false,
        ..Default::default()
    })
    .expect("topology");
    let _server = HttpPeerServer::start_in(&topo.container.ns, any(80)).unwrap();
    let body = topo
        .client
        .ns
        .run(|| http_get(topo.container.addr(80), "/", T))
        .expect("http");
    assert!(body.starts_with("192.0.2.2:"), "{body}");
}

#[test]
fn container_egress_is_masqueraded_to_the_uplink_ip() {
    let topo = Topology::build().expect("topology");
    let http = HttpPeerServer::start_in(&topo.client.ns, topo.client.addr(0)).unwrap();
    let body = topo
        .container
        .ns
        .run(|| http_get(http.local_addr(), "/", T))
        .expect("http");
    let peer: SocketAddr = body.parse().unwrap();
    assert_eq!(
        peer.ip(),
        addr::HOST_IP,
        "MASQUERADE should hide 172.17.0.2"
    );
}

#[test]
fn extra_containers_come_and_go() {
    let topo = Topology::build().expect("topology");
    let c3 = topo
        .new_container("ctr3", Ipv4Addr::new(172, 17, 0, 4))
        .unwrap();
    let veth = c3.host_veth.clone();
    let http = HttpPeerServer::start_in(&topo.host.ns, topo.host.bridge_addr(0)).unwrap();
    let body = c3.ns.run(|| http_get(http.local_addr(), "/", T)).unwrap();
    assert!(body.starts_with("172.17.0.4:"), "{body}");

    drop(c3);
    // The kernel destroys a namespace asynchronously; its veth follows.
    let deadline = Instant::now() + T;
    while topo.host.ns.link(&veth).is_ok() {
        assert!(Instant::now() < deadline, "{veth} outlived its container");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn namespaces_are_gone_after_drop_also_on_panic() {
    let topo = Topology::build().expect("topology");
    let paths: Vec<_> = topo
        .namespaces()
        .iter()
        .map(|ns| ns.path().to_path_buf())
        .collect();
    assert_eq!(paths.len(), 6);
    assert!(paths.iter().all(|p| p.exists()));
    drop(topo);
    for p in &paths {
        assert!(!p.exists(), "{} survived", p.display());
    }

    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::build().expect("topology");
        names.extend(topo.namespaces().iter().map(|ns| ns.path().to_path_buf()));
        panic!("test failure with a live topology");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 6);
    for p in &names {
        assert!(!p.exists(), "{} survived a panic", p.display());
    }
}

fn root_ns_snapshot() -> String {
    let sh = |program: &str, args: &[&str]| -> String {
        let out = berth_integration::cmd::run(program, args).unwrap_or_else(|e| format!("{e}"));
        // iptables-save stamps its output with the time.
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    [
        sh("ip", &["-d", "link", "show"]),
        sh("ip", &["-br", "addr", "show"]),
        sh("ip", &["route", "show", "table", "all"]),
        sh("ip", &["rule", "show"]),
        sh("iptables-save", &[]),
        sh("nft", &["list", "ruleset"]),
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
    ]
    .join("\n----\n")
}

#[test]
fn the_root_namespace_is_left_untouched() {
    let before = root_ns_snapshot();
    let topo = Topology::build().expect("topology");
    let _server = HttpPeerServer::start_in(&topo.host.ns, topo.host.addr(0)).unwrap();
    let during = root_ns_snapshot();
    drop(topo);
    let after = root_ns_snapshot();
    assert_eq!(
        before, during,
        "building the topology changed the root namespace"
    );
    assert_eq!(
        before, after,
        "tearing down the topology changed the root namespace"
    );
}

#[test]
fn run_keeps_the_calling_thread_where_it_is() {
    let ns = NetNs::new("probe").unwrap();
    let mine = current_netns_inode().unwrap();
    let inside = ns.run(|| current_netns_inode().unwrap());
    assert_eq!(inside, ns.inode().unwrap());
    assert_ne!(inside, mine);
    assert_eq!(current_netns_inode().unwrap(), mine);

    // Only lo exists in a fresh namespace, and it is up.
    let lo = ns.link("lo").unwrap();
    assert!(lo.operstate == "UNKNOWN" || lo.operstate == "UP", "{lo:?}");
    let links = ns.ip(["-br", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
}

#[test]
fn run_passes_panics_back_to_the_caller() {
    let ns = NetNs::new("panics").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("inside"));
    }));
    assert!(r.is_err());
}

#[test]
fn exec_failures_quote_stderr() {
    let ns = NetNs::new("exec").unwrap();
    let err = ns
        .exec("ip", ["link", "show", "dev", "nope0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope0"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    ns.exec("true", std::iter::empty::<&str>()).unwrap();
}

#[test]
fn spawned_children_are_stopped_on_drop() {
    let ns = NetNs::new("spawn").unwrap();
    let mut child = ns.spawn("sleep", ["1000"]).unwrap();
    let pid = child.pid();
    assert!(child.is_running());
    // `ip netns exec` execs the program: the pid is sleep's, in the namespace.
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(
        link.to_string_lossy(),
        format!("net:[{}]", ns.inode().unwrap())
    );
    drop(child);
    assert!(!pid_exists(pid), "pid {pid} still exists");
}

#[test]
fn children_ignoring_sigterm_get_sigkill() {
    let ns = NetNs::new("stubborn").unwrap();
    // SIG_IGN survives exec, so sleep itself ignores SIGTERM.
    let mut child = ns
        .spawn("sh", ["-c", "trap '' TERM; exec sleep 1000"])
        .unwrap();
    child.set_stop_timeout(Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let status = child.stop().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn child_output_is_captured() {
    let ns = NetNs::new("output").unwrap();
    let mut child = ns.spawn("sh", ["-c", "echo out; echo err >&2"]).unwrap();
    let st = child.wait_timeout(T).unwrap().expect("exits");
    assert!(st.success());
    assert_eq!(child.stdout(), "out\n");
    assert_eq!(child.stderr(), "err\n");
}

#[test]
fn bpffs_is_mounted_and_removed() {
    let bpffs = Bpffs::new().unwrap();
    let path = bpffs.path().to_path_buf();
    assert!(
        is_bpffs_mount(&path),
        "{} is not a bpffs mount",
        path.display()
    );
    // A fresh instance holds at most the kernel's preloaded iterators.
    assert!(!bpffs.entries().unwrap().contains(&"berth".to_string()));
    std::fs::create_dir(path.join("berth")).unwrap(); // bpffs allows dirs
    assert!(bpffs.entries().unwrap().contains(&"berth".to_string()));
    drop(bpffs);
    assert!(!is_bpffs_mount(&path));
    assert!(!path.exists(), "{} survived", path.display());
}

fn fake_daemon_options(extra: &[&str]) -> DaemonOptions {
    DaemonOptions {
        bin: Some(env!("CARGO_BIN_EXE_fake-berth").into()),
        extra_args: extra.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

#[test]
fn daemon_runs_in_the_host_namespace_and_answers_health() {
    let host = NetNs::new("host").unwrap();
    let bpffs = Bpffs::new().unwrap();
    let d = Daemon::start_with(
        &host,
        &bpffs,
        fake_daemon_options(&["--slow-start-ms", "300"]),
    )
    .expect("daemon");
    let (status, health) = d.api_json("GET", "/v1/health", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(health["ok"], true);
    assert_eq!(health["netns"], format!("net:[{}]", host.inode().unwrap()));
    let stderr = d.stderr();
    for want in [
        "daemon",
        "--uplink up0",
        "--bridge docker0",
        "--state-dir",
        &format!("--bpffs {}", bpffs.path().display()),
    ] {
        assert!(stderr.contains(want), "{want:?} not in {stderr}");
    }
    let r = d.api("GET", "/v1/nothing", None).unwrap();
    assert_eq!((r.status, r.body.as_str()), (404, "no route"));
}

#[test]
fn daemon_cli_runs_against_its_socket() {
    let host = NetNs::new("host").unwrap();
    let bpffs = Bpffs::new().unwrap();
    let d = Daemon::start_with(&host, &bpffs, fake_daemon_options(&[])).expect("daemon");
    let out = d.cli_ok(["map", "ls"]).unwrap();
    assert_eq!(
        out.trim(),
        format!("fake-berth cli: --socket {} map ls", d.socket().display())
    );
    let failed = d.cli(["fail"]).unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let err = d.cli_ok(["fail"]).unwrap_err().to_string();
    assert!(err.contains("Error: nope"), "{err}");
}

#[test]
fn daemon_startup_failure_shows_its_stderr() {
    let host = NetNs::new("host").unwrap();
    let bpffs = Bpffs::new().unwrap();
    let err = Daemon::start_with(&host, &bpffs, fake_daemon_options(&["--fail-startup"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited during startup"), "{err}");
    assert!(err.contains("no such uplink"), "{err}");
}

#[test]
fn daemon_that_never_gets_healthy_times_out() {
    let host = NetNs::new("host").unwrap();
    let bpffs = Bpffs::new().unwrap();
    let opts = DaemonOptions {
        startup_timeout: Duration::from_millis(400),
        stop_timeout: Duration::from_millis(300),
        ..fake_daemon_options(&["--slow-start-ms", "10000"])
    };
    let started = Instant::now();
    let err = Daemon::start_with(&host, &bpffs, opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not healthy within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn daemon_stops_restarts_and_is_stopped_on_drop() {
    let host = NetNs::new("host").unwrap();
    let bpffs = Bpffs::new().unwrap();
    let mut d = Daemon::start_with(&host, &bpffs, fake_daemon_options(&[])).expect("daemon");
    let first = d.pid().unwrap();
    let st = d.stop().unwrap();
    assert!(st.success(), "{st}");
    assert!(!d.is_running());
    assert!(d.stderr().contains("SIGTERM, exiting"));

    d.start_again().unwrap();
    let second = d.pid().unwrap();
    assert_ne!(first, second);
    d.restart().unwrap();
    let third = d.pid().unwrap();
    assert!(d.stderr().contains("start #3"));

    d.kill().unwrap();
    d.start_again().unwrap();
    let fourth = d.pid().unwrap();
    assert_ne!(third, fourth);
    drop(d);
    assert!(!pid_exists(fourth));
}

#[test]
fn daemon_ignoring_sigterm_is_killed() {
    let host = NetNs::new("host").unwrap();
    let bpffs = Bpffs::new().unwrap();
    let opts = DaemonOptions {
        stop_timeout: Duration::from_millis(300),
        ..fake_daemon_options(&["--ignore-sigterm"])
    };
    let mut d = Daemon::start_with(&host, &bpffs, opts).expect("daemon");
    let st = d.stop().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL));
}

#[test]
fn berth_binary_is_found_next_to_the_test_executable() {
    // target/<profile>/deps/harness-… → target/<profile>/berth, if built.
    match berth_integration::berth_bin() {
        Ok(p) => assert!(p.ends_with("berth"), "{}", p.display()),
        Err(e) => assert!(
            e.to_string().contains("cargo build -p berth"),
            "unhelpful error: {e}"
        ),
    }
}

#[test]
fn sysctl_reads_long_values_whole() {
    // ip_local_reserved_ports answers EOF to reads past offset 0; a value
    // longer than a small first read must still come back whole.
    let ns = NetNs::new("sysctl").unwrap();
    let list = (0..40)
        .map(|i| (20000 + i * 7).to_string())
        .collect::<Vec<_>>()
        .join(",");
    ns.set_sysctl("net.ipv4.ip_local_reserved_ports", &list)
        .unwrap();
    assert_eq!(ns.sysctl("net.ipv4.ip_local_reserved_ports").unwrap(), list);
}

/// The dual-stack topology: every documented IPv6 address in place and
/// usable at once (no duplicate-address detection), the host forwarding
/// IPv6 under Docker's ip6tables rules, containers reaching the wan through
/// the masquerade and the host reaching containers directly.
#[test]
fn dual_stack_topology_has_the_documented_ipv6_addresses_and_routes() {
    let topo = Topology::build_with(TopologyOptions::dual_stack()).expect("topology");
    let host = &topo.host.ns;
    assert_eq!(
        host.ipv6_addrs(addr::UPLINK).unwrap(),
        vec![(addr::HOST_IP6, 64)]
    );
    assert_eq!(
        host.ipv6_addrs(addr::BRIDGE).unwrap(),
        vec![(addr::BRIDGE_IP6, 64)]
    );
    for (ns, ip6) in [
        (&topo.client.ns, addr::CLIENT_IP6),
        (&topo.client2.ns, addr::CLIENT2_IP6),
        (&topo.container.ns, addr::CONTAINER_IP6),
        (&topo.container2.ns, addr::CONTAINER2_IP6),
    ] {
        assert_eq!(
            ns.ipv6_addrs("eth0").unwrap(),
            vec![(ip6, 64)],
            "{}",
            ns.name()
        );
        let out = ns.ip(["-6", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(!out.contains("tentative"), "{}: {out}", ns.name());
    }
    assert_eq!(topo.container.ip6, Some(addr::CONTAINER_IP6));
    assert_eq!(topo.client.ip6, Some(addr::CLIENT_IP6));
    assert_eq!(host.sysctl("net.ipv6.conf.all.forwarding").unwrap(), "1");
    let route = topo
        .container
        .ns
        .ip(["-6", "route", "show", "default"])
        .unwrap();
    assert!(route.contains("via fd00:17::1"), "{route}");
    let route = topo
        .client
        .ns
        .ip(["-6", "route", "show", "default"])
        .unwrap();
    assert!(route.contains("via 2001:db8::1"), "{route}");
    let rules = host
        .exec("ip6tables-save", std::iter::empty::<&str>())
        .unwrap();
    for want in [
        ":FORWARD DROP",
        "-A DOCKER ! -i docker0 -o docker0 -j DROP",
        "-A POSTROUTING -s fd00:17::/64 ! -o docker0 -j MASQUERADE",
    ] {
        assert!(rules.contains(want), "missing {want:?} in:\n{rules}");
    }

    // Container -> wan client over IPv6: forwarded and masqueraded, as
    // Docker does for a ULA subnet.
    let web = HttpPeerServer::start_in(&topo.client.ns, topo.client.addr6(0)).unwrap();
    let body = topo
        .container
        .ns
        .run(|| http_get(web.local_addr(), "/", T))
        .expect("container to client over IPv6");
    let peer: SocketAddr = body.parse().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V6(addr::HOST_IP6), "{body}");

    // Host -> container over IPv6, TCP and UDP; the IPv4 server on the same
    // port stays apart (IPv6 servers are v6-only).
    let web4 = HttpPeerServer::start_in(&topo.container.ns, any(8000)).unwrap();
    let web6 = HttpPeerServer::start_in(&topo.container.ns, topo.container.addr6(8000)).unwrap();
    let udp6 = UdpEchoServer::start_in(&topo.container.ns, topo.container.addr6(53)).unwrap();
    let body = host
        .run(|| http_get(web6.local_addr(), "/", T))
        .expect("host to container over IPv6");
    assert!(body.starts_with("[fd00:17::1]:"), "{body}");
    let reply = host
        .run(|| udp_request(udp6.local_addr(), "six", T))
        .expect("udp over IPv6");
    assert_eq!(reply.from, topo.container.addr6(53));
    assert!(reply.text.starts_with("[fd00:17::1]:"), "{}", reply.text);
    assert!(web4.peers().is_empty());

    // An IPv4-only topology keeps containers without IPv6.
    drop((web, web4, web6, udp6));
    let v4 = Topology::build().expect("topology");
    assert_eq!(v4.container.ip6, None);
    assert_eq!(v4.host.uplink_ip6, None);
}
