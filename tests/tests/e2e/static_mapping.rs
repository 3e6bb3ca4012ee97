//! Static port mappings end to end: a Docker-like host in network
//! namespaces (Docker's iptables rules included), the real `berth daemon`,
//! driven by the real CLI, real sockets on both ends.
use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use berth_integration::{
    peer_ip, rig::map_add_args, rig::REQUEST_TIMEOUT as T, tcp_connect, DaemonOptions, Mode, NetNs,
    Rig, Topology, TopologyOptions,
};
use serde_json::Value;

fn http_through_static_mapping(mode: Mode) {
    let rig = Rig::builder().mode(mode).start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let out = rig.map_add("web", "172.17.0.2", &["8080:80"]);
    assert!(out.contains("8080"), "map add prints the binding: {out}");
    for _ in 0..3 {
        let body = rig.client_get(8080).expect("GET through the mapping");
        assert_eq!(
            peer_ip(&body),
            "192.0.2.2",
            "the container sees the client's real IP"
        );
    }
}

#[test]
fn http_request_reaches_container_with_client_ip_tc() {
    http_through_static_mapping(Mode::Tc);
}

#[test]
fn http_request_reaches_container_with_client_ip_xdp() {
    http_through_static_mapping(Mode::Xdp);
}

fn udp_through_static_mapping(mode: Mode) {
    let rig = Rig::builder().mode(mode).start();
    let _dns = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let target = rig.topo.host.addr(5353);
    let reply = rig
        .client_udp(5353, "hello")
        .expect("UDP echo through the mapping");
    assert_eq!(
        reply.from, target,
        "the reply comes from the host address and port"
    );
    assert!(
        reply.text.starts_with("192.0.2.2:"),
        "server saw the client's IP: {}",
        reply.text
    );
    assert!(reply.text.ends_with(" hello"), "{}", reply.text);
}

#[test]
fn udp_echo_replies_from_host_port_tc() {
    udp_through_static_mapping(Mode::Tc);
}

#[test]
fn udp_echo_replies_from_host_port_xdp() {
    udp_through_static_mapping(Mode::Xdp);
}

#[test]
fn two_host_ports_reach_one_container_port() {
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80", "8081:80"]);
    for port in [8080, 8081, 8080, 8081] {
        let body = rig
            .client_get(port)
            .unwrap_or_else(|e| panic!("GET :{port}: {e:#}"));
        assert_eq!(peer_ip(&body), "192.0.2.2");
    }
}

#[test]
fn two_containers_each_get_their_mapping_and_a_port_range_works() {
    let rig = Rig::start();
    let _a = rig.serve_http(&rig.topo.container.ns, 80);
    let _b1 = rig.serve_http(&rig.topo.container2.ns, 9000);
    let _b2 = rig.serve_http(&rig.topo.container2.ns, 9002);
    rig.map_add("a", "172.17.0.2", &["8080:80"]);
    rig.map_add("b", "172.17.0.3", &["7000-7002:9000-9002"]);
    assert_eq!(rig.bindings().len(), 4);
    rig.client_get(8080).expect("container a");
    rig.client_get(7000)
        .expect("container b, first port of the range");
    rig.client_get(7002)
        .expect("container b, last port of the range");
}

#[test]
fn unmapped_port_and_host_services_are_untouched() {
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let _host_svc = rig.serve_http(&rig.topo.host.ns, 9000);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let body = rig
        .client_get(9000)
        .expect("host service on an unmapped port");
    assert_eq!(peer_ip(&body), "192.0.2.2");
    // A port nothing listens on is refused by the host as before.
    let addr = rig.topo.host.addr(9999);
    let err = rig
        .topo
        .client
        .ns
        .run(move || tcp_connect(addr, T))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn container_outbound_connections_are_still_masqueraded() {
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let _outside = rig.serve_http(&rig.topo.client.ns, 8443);
    let target: SocketAddr = "192.0.2.2:8443".parse().unwrap();
    let body = rig
        .get_from(&rig.topo.container.ns, target)
        .expect("container reaches the outside");
    assert_eq!(
        peer_ip(&body),
        "192.0.2.1",
        "the host's MASQUERADE rule applies"
    );
}

#[test]
fn map_rm_stops_new_connections() {
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80", "8081:80"]);
    rig.client_get(8080).expect("before rm");
    rig.berth(&["map", "rm", "--task", "web", "-p", "8080:80"]);
    assert!(
        rig.client_get(8080).is_err(),
        "8080 no longer reaches the container"
    );
    rig.client_get(8081)
        .expect("the task's other binding stays");
    rig.berth(&["map", "rm", "--task", "web"]);
    rig.client_get(8081).unwrap_err();
    assert!(rig.bindings().is_empty());
}

#[test]
fn map_ls_json_uses_ecs_network_binding_names() {
    let rig = Rig::start();
    rig.map_add(
        "web",
        "172.17.0.2",
        &["192.0.2.1:8080:80/tcp", "5353:53/udp"],
    );
    let mut got: Vec<Value> = rig.bindings();
    got.sort_by_key(|b| b["hostPort"].as_u64());
    assert_eq!(
        got,
        vec![
            serde_json::json!({"task":"web","containerIP":"172.17.0.2","bindIP":"0.0.0.0","hostPort":5353,"containerPort":53,"protocol":"udp"}),
            serde_json::json!({"task":"web","containerIP":"172.17.0.2","bindIP":"192.0.2.1","hostPort":8080,"containerPort":80,"protocol":"tcp"}),
        ]
    );
    let table = rig.berth(&["map", "ls"]);
    assert!(table.lines().count() >= 3, "header and two rows:\n{table}");
}

#[test]
fn taken_host_port_fails_in_dockers_words_and_changes_nothing() {
    let rig = Rig::start();
    rig.map_add("a", "172.17.0.2", &["8080:80"]);
    let before = rig.bindings();
    let out = rig.berth_output(&map_add_args("b", "172.17.0.3", &["9090:90", "8080:80"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "berth: Bind for 0.0.0.0:8080 failed: port is already allocated"
    );
    assert_eq!(
        rig.bindings(),
        before,
        "the request's other port was not published either"
    );
}

/// A TCP echo server that keeps connections open.
fn echo_server(ns: &NetNs, port: u16) -> thread::JoinHandle<()> {
    let listener = ns
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .expect("bind echo server");
    thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        if let Ok((mut c, _)) = listener.accept() {
            c.set_read_timeout(Some(Duration::from_mins(1))).unwrap();
            let mut buf = [0u8; 256];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    })
}

fn echo(conn: &mut TcpStream, msg: &str) -> String {
    conn.write_all(msg.as_bytes()).expect("write");
    let mut buf = vec![0u8; msg.len()];
    conn.read_exact(&mut buf).expect("echo back");
    String::from_utf8(buf).unwrap()
}

#[test]
fn bad_cli_input_changes_nothing_and_keeps_flows() {
    let rig = Rig::start();
    let _echo = echo_server(&rig.topo.container.ns, 7);
    let _web = rig.serve_http(&rig.topo.container2.ns, 80);
    rig.map_add("echo", "172.17.0.2", &["7007:7"]);
    rig.map_add("web", "172.17.0.3", &["8080:80"]);
    let addr = rig.topo.host.addr(7007);
    let mut conn = rig
        .topo
        .client
        .ns
        .run(move || tcp_connect(addr, T))
        .expect("connect");
    assert_eq!(echo(&mut conn, "one"), "one");
    let before = rig.bindings();

    let mut bad: Vec<Vec<&str>> = [
        ("172.17.0.2", "8080:0"),
        ("172.17.0.2", "70000:80"),
        ("172.17.0.2", "9010-9000:80-90"),
        ("172.17.0.2", "9000-9010:80-81"),
        ("172.17.0.2", "9000:80/sctp"),
        ("172.17.0.2", "1.2.3:9000:80"),
        ("172.17.999.2", "9000:80"),
        ("10.9.9.9", "9000:80"),
        ("172.17.0.2", "65536"),
        ("172.17.0.2", "garbage"),
        ("172.17.0.2", "7007:7"),
    ]
    .iter()
    .map(|(ip, spec)| map_add_args("x", ip, &[spec]))
    .collect();
    bad.push(vec!["map", "rm", "--task", "nosuchtask"]);
    bad.push(vec!["map", "rm", "--task", "echo", "-p", "9999:9"]);
    for args in &bad {
        let out = rig.berth_output(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "`berth {}` must fail",
            args.join(" ")
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one line for `berth {}`: {err:?}",
            args.join(" ")
        );
        assert!(err.starts_with("berth: "), "{err:?}");
        assert_eq!(
            rig.bindings(),
            before,
            "`berth {}` changed the bindings",
            args.join(" ")
        );
    }
    // Raw API abuse too.
    for body in [
        "{",
        "[]",
        r#"{"task":"x","containerIP":"172.17.0.2","ports":[7]}"#,
    ] {
        let r = rig.daemon.api("POST", "/v1/bindings", Some(body)).unwrap();
        assert!((400..500).contains(&r.status), "{body} -> {}", r.status);
    }
    assert_eq!(rig.bindings(), before);
    assert_eq!(
        echo(&mut conn, "two"),
        "two",
        "the established flow still works"
    );
    rig.client_get(8080).expect("new connections still work");
}

#[test]
fn concurrent_map_adds_from_many_processes_all_land_once() {
    let rig = Rig::start();
    let daemon = &rig.daemon;
    // 12 processes: 10 distinct ports, and two that race for port 9500.
    let outcomes: Vec<(u16, bool)> = thread::scope(|sc| {
        let handles: Vec<_> = (0..12u16)
            .map(|i| {
                sc.spawn(move || {
                    let port = if i < 10 { 9000 + i } else { 9500 };
                    let spec = format!("{port}:80");
                    let task = format!("t{i}");
                    let out = daemon
                        .cli(map_add_args(&task, "172.17.0.2", &[&spec]))
                        .unwrap();
                    (port, out.status.success())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        outcomes
            .iter()
            .filter(|(p, _)| *p < 9500)
            .all(|(_, ok)| *ok),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|(p, ok)| *p == 9500 && *ok).count(),
        1,
        "exactly one wins 9500"
    );
    let ports: Vec<u64> = rig
        .bindings()
        .iter()
        .map(|b| b["hostPort"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<u64> = ports.iter().copied().collect();
    assert_eq!(ports.len(), 11, "no lost or duplicated binding: {ports:?}");
    assert_eq!(unique.len(), 11);
}

/// The rules themselves: no comments (timestamps), no counters.
fn rules(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn berth_adds_no_netfilter_rules() {
    let topo = Topology::build().expect("topology");
    let before = rules(&topo.host.iptables_save().unwrap());
    let nft_before = topo.host.ns.exec("nft", ["list", "ruleset"]).unwrap();
    let rig = Rig::builder().start_on(topo);
    rig.map_add("web", "172.17.0.2", &["8080:80", "53:53/udp"]);
    let host = &rig.topo.host;
    assert_eq!(rules(&host.iptables_save().unwrap()), before);
    assert_eq!(
        host.ns.exec("nft", ["list", "ruleset"]).unwrap(),
        nft_before
    );
}

#[test]
fn mappings_survive_a_daemon_restart_and_forward_while_it_is_down() {
    let mut rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let before = rig.bindings();
    rig.daemon.kill().expect("SIGKILL the daemon");
    rig.client_get(8080)
        .expect("forwarding continues while the daemon is down");
    rig.daemon.start_again().expect("restart");
    assert_eq!(
        rig.bindings(),
        before,
        "the store brought every binding back"
    );
    rig.client_get(8080).expect("after restart");
    rig.daemon.stop().expect("SIGTERM");
    rig.daemon
        .start_again()
        .expect("restart after a clean stop");
    rig.client_get(8080).expect("after a clean restart");
}

#[test]
fn daemon_refuses_to_start_with_one_clear_line() {
    let opts = DaemonOptions {
        uplinks: vec!["nosuch0".into()],
        startup_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let err = Rig::builder()
        .daemon_options(opts)
        .try_start()
        .expect_err("must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("berth: interface nosuch0 does not exist"),
        "{msg}"
    );
}

const BULK: usize = 16 << 20;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Reads until EOF, checking every byte against [`pattern`]; returns the count.
fn read_pattern(c: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0;
    loop {
        let k = c.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        for (j, b) in buf[..k].iter().enumerate() {
            if *b != pattern(n + j) {
                return Err(std::io::Error::other(format!("byte {} corrupted", n + j)));
            }
        }
        n += k;
    }
}

fn write_pattern(c: &mut TcpStream, len: usize) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..len).map(pattern).collect();
    c.write_all(&chunk)
}

/// 16 MiB each way through a mapping, with the senders' checksum and
/// segmentation offloads on (as on a real host): GSO packets far above the
/// MTU cross the datapath.
fn bulk_transfer_with_offloads(mode: Mode) {
    let rig = Rig::builder()
        .topology(TopologyOptions {
            tx_checksum_off: false,
            ..Default::default()
        })
        .mode(mode)
        .start();
    let topo = &rig.topo;
    let listener = topo
        .container
        .ns
        .run(|| TcpListener::bind("0.0.0.0:9000"))
        .unwrap();
    let server = thread::spawn(move || -> std::io::Result<usize> {
        let (mut c, _) = listener.accept()?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        c.set_write_timeout(Some(Duration::from_secs(30)))?;
        let got = read_pattern(&mut c)?;
        write_pattern(&mut c, BULK)?;
        Ok(got)
    });
    rig.map_add("bulk", "172.17.0.2", &["9000:9000"]);
    let addr = topo.host.addr(9000);
    let back = topo
        .client
        .ns
        .run(move || -> std::io::Result<usize> {
            let mut c = TcpStream::connect_timeout(&addr, T)?;
            c.set_read_timeout(Some(Duration::from_secs(30)))?;
            c.set_write_timeout(Some(Duration::from_secs(30)))?;
            write_pattern(&mut c, BULK)?;
            c.shutdown(std::net::Shutdown::Write)?;
            read_pattern(&mut c)
        })
        .expect("client side of the transfer");
    assert_eq!(
        server.join().unwrap().expect("server side"),
        BULK,
        "upload intact"
    );
    assert_eq!(back, BULK, "download intact");
}

#[test]
fn bulk_transfer_with_offloads_tc() {
    bulk_transfer_with_offloads(Mode::Tc);
}

#[test]
fn bulk_transfer_with_offloads_xdp() {
    bulk_transfer_with_offloads(Mode::Xdp);
}

/// A container re-created at the address of one just removed (a new MAC
/// behind the same IP, as a restarted ECS task or `docker run --ip` gets)
/// is reached at once. The host's neighbour entry still names the old
/// container's MAC and stays REACHABLE for 15-45 s; the daemon forgets it
/// when the address shows up on a new bridge port.
#[test]
fn a_container_recreated_at_a_freed_address_is_reached_at_once() {
    let rig = Rig::start();
    let ip = "172.17.0.7";
    let old = rig.new_container("old", ip);
    let old_web = rig.serve_http(&old.ns, 80);
    rig.map_add("web", ip, &["8090:80"]);
    rig.client_get(8090).expect("GET the first container");
    let old_mac = old
        .link()
        .unwrap()
        .mac
        .map(|b| format!("{b:02x}"))
        .join(":");
    let neigh = rig.topo.host.ns.ip(["neigh", "show", ip]).unwrap();
    assert!(
        neigh.contains(&old_mac) && neigh.contains("REACHABLE"),
        "the host resolved the first container: {neigh}"
    );
    drop(old_web);
    drop(old);
    let new = rig.new_container("new", ip);
    let _web = rig.serve_http(&new.ns, 80);
    let neigh = rig.topo.host.ns.ip(["neigh", "show", ip]).unwrap();
    assert!(
        !neigh.contains(&old_mac),
        "the old container's MAC is forgotten: {neigh}"
    );
    let t = std::time::Instant::now();
    let body = rig
        .client_get(8090)
        .expect("GET the re-created container within the request timeout");
    assert_eq!(peer_ip(&body), "192.0.2.2");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "reached only after {:?}",
        t.elapsed()
    );
}

/// Established packets find their mapping in a per-CPU cache (README "The
/// service answer of an established TCP flow is cached"); a new connection
/// never does: a port moved to another container while a connection to
/// the first is busy serves the next connection from the new one at once.
fn a_port_moved_under_a_busy_connection(mode: Mode) {
    let rig = Rig::builder().mode(mode).start();
    let _echo = echo_server(&rig.topo.container.ns, 7);
    let _web = rig.serve_http(&rig.topo.container2.ns, 80);
    rig.map_add("echo", "172.17.0.2", &["8080:7"]);
    let addr = rig.topo.host.addr(8080);
    let mut conn = rig
        .topo
        .client
        .ns
        .run(move || tcp_connect(addr, T))
        .expect("connect");
    for _ in 0..20 {
        assert_eq!(echo(&mut conn, "ping"), "ping");
    }
    rig.berth(&["map", "rm", "--task", "echo"]);
    rig.map_add("web", "172.17.0.3", &["8080:80"]);
    let body = rig
        .client_get(8080)
        .expect("the next connection reaches the new container");
    assert_eq!(peer_ip(&body), "192.0.2.2");
}

#[test]
fn a_port_moved_under_a_busy_connection_serves_the_next_one_from_the_new_container_tc() {
    a_port_moved_under_a_busy_connection(Mode::Tc);
}

#[test]
fn a_port_moved_under_a_busy_connection_serves_the_next_one_from_the_new_container_xdp() {
    a_port_moved_under_a_busy_connection(Mode::Xdp);
}
