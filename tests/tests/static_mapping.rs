//! Static port mappings end to end: a Docker-like host in network
//! namespaces (Docker's iptables rules included), the real `berth daemon`,
//! driven by the real CLI, real sockets on both ends.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use berth_integration::{
    http_get, tcp_connect, udp_request, Bpffs, Daemon, DaemonOptions, HttpPeerServer, NetNs,
    Topology, UdpEchoServer,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

/// Guards drop in field order: daemon, then bpffs, then namespaces.
struct Setup {
    daemon: Daemon,
    _bpffs: Bpffs,
    topo: Topology,
}

fn setup(attach: Option<&str>) -> Setup {
    let topo = Topology::build().expect("build topology");
    let bpffs = Bpffs::new().expect("bpffs");
    let opts = DaemonOptions {
        attach: attach.map(str::to_string),
        ..Default::default()
    };
    let daemon = Daemon::start_with(&topo.host.ns, &bpffs, opts).expect("start daemon");
    Setup {
        daemon,
        _bpffs: bpffs,
        topo,
    }
}

impl Setup {
    fn map_add(&self, task: &str, ip: &str, specs: &[&str]) -> String {
        let mut args = vec!["map", "add", "--task", task, "--ip", ip];
        for s in specs {
            args.extend(["-p", s]);
        }
        self.daemon.cli_ok(args).expect("map add")
    }

    fn client_get(&self, port: u16) -> anyhow::Result<String> {
        let addr = self.topo.host.addr(port);
        self.topo.client.ns.run(move || http_get(addr, "/", T))
    }

    fn bindings(&self) -> Vec<Value> {
        let out = self
            .daemon
            .cli_ok(["map", "ls", "--json"])
            .expect("map ls --json");
        let v: Value = serde_json::from_str(&out).expect("map ls --json is JSON");
        v.as_array().expect("an array").clone()
    }
}

fn peer_ip(body: &str) -> String {
    body.rsplit_once(':')
        .map(|(ip, _)| ip.to_string())
        .unwrap_or_default()
}

fn http_through_static_mapping(attach: Option<&str>) {
    let s = setup(attach);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    let out = s.map_add("web", "172.17.0.2", &["8080:80"]);
    assert!(out.contains("8080"), "map add prints the binding: {out}");
    for _ in 0..3 {
        let body = s.client_get(8080).expect("GET through the mapping");
        assert_eq!(
            peer_ip(&body),
            "192.0.2.2",
            "the container sees the client's real IP"
        );
    }
}

#[test]
fn http_request_reaches_container_with_client_ip_tc() {
    http_through_static_mapping(Some("tc"));
}

#[test]
fn http_request_reaches_container_with_client_ip_xdp() {
    http_through_static_mapping(Some("xdp"));
}

fn udp_through_static_mapping(attach: Option<&str>) {
    let s = setup(attach);
    let _dns =
        UdpEchoServer::start_in(&s.topo.container.ns, "0.0.0.0:53".parse().unwrap()).unwrap();
    s.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let target = s.topo.host.addr(5353);
    let reply = s
        .topo
        .client
        .ns
        .run(move || udp_request(target, "hello", T))
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
    udp_through_static_mapping(Some("tc"));
}

#[test]
fn udp_echo_replies_from_host_port_xdp() {
    udp_through_static_mapping(Some("xdp"));
}

#[test]
fn two_host_ports_reach_one_container_port() {
    let s = setup(None);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    s.map_add("web", "172.17.0.2", &["8080:80", "8081:80"]);
    for port in [8080, 8081, 8080, 8081] {
        let body = s
            .client_get(port)
            .unwrap_or_else(|e| panic!("GET :{port}: {e:#}"));
        assert_eq!(peer_ip(&body), "192.0.2.2");
    }
}

#[test]
fn two_containers_each_get_their_mapping_and_a_port_range_works() {
    let s = setup(None);
    let _a = HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    let _b1 =
        HttpPeerServer::start_in(&s.topo.container2.ns, "0.0.0.0:9000".parse().unwrap()).unwrap();
    let _b2 =
        HttpPeerServer::start_in(&s.topo.container2.ns, "0.0.0.0:9002".parse().unwrap()).unwrap();
    s.map_add("a", "172.17.0.2", &["8080:80"]);
    s.map_add("b", "172.17.0.3", &["7000-7002:9000-9002"]);
    assert_eq!(s.bindings().len(), 4);
    s.client_get(8080).expect("container a");
    s.client_get(7000)
        .expect("container b, first port of the range");
    s.client_get(7002)
        .expect("container b, last port of the range");
}

#[test]
fn unmapped_port_and_host_services_are_untouched() {
    let s = setup(None);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    let _host_svc =
        HttpPeerServer::start_in(&s.topo.host.ns, "0.0.0.0:9000".parse().unwrap()).unwrap();
    s.map_add("web", "172.17.0.2", &["8080:80"]);
    let body = s
        .client_get(9000)
        .expect("host service on an unmapped port");
    assert_eq!(peer_ip(&body), "192.0.2.2");
    // A port nothing listens on is refused by the host as before.
    let addr = s.topo.host.addr(9999);
    let err = s
        .topo
        .client
        .ns
        .run(move || tcp_connect(addr, T))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn container_outbound_connections_are_still_masqueraded() {
    let s = setup(None);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    s.map_add("web", "172.17.0.2", &["8080:80"]);
    let _outside =
        HttpPeerServer::start_in(&s.topo.client.ns, "0.0.0.0:8443".parse().unwrap()).unwrap();
    let target: SocketAddr = "192.0.2.2:8443".parse().unwrap();
    let body = s
        .topo
        .container
        .ns
        .run(move || http_get(target, "/", T))
        .expect("container reaches the outside");
    assert_eq!(
        peer_ip(&body),
        "192.0.2.1",
        "the host's MASQUERADE rule applies"
    );
}

#[test]
fn map_rm_stops_new_connections() {
    let s = setup(None);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    s.map_add("web", "172.17.0.2", &["8080:80", "8081:80"]);
    s.client_get(8080).expect("before rm");
    s.daemon
        .cli_ok(["map", "rm", "--task", "web", "-p", "8080:80"])
        .expect("map rm one");
    assert!(
        s.client_get(8080).is_err(),
        "8080 no longer reaches the container"
    );
    s.client_get(8081).expect("the task's other binding stays");
    s.daemon
        .cli_ok(["map", "rm", "--task", "web"])
        .expect("map rm all");
    assert!(s.client_get(8081).is_err());
    assert!(s.bindings().is_empty());
}

#[test]
fn map_ls_json_uses_ecs_network_binding_names() {
    let s = setup(None);
    s.map_add(
        "web",
        "172.17.0.2",
        &["192.0.2.1:8080:80/tcp", "5353:53/udp"],
    );
    let mut got: Vec<Value> = s.bindings();
    got.sort_by_key(|b| b["hostPort"].as_u64());
    assert_eq!(
        got,
        vec![
            serde_json::json!({"task":"web","containerIP":"172.17.0.2","bindIP":"0.0.0.0","hostPort":5353,"containerPort":53,"protocol":"udp"}),
            serde_json::json!({"task":"web","containerIP":"172.17.0.2","bindIP":"192.0.2.1","hostPort":8080,"containerPort":80,"protocol":"tcp"}),
        ]
    );
    let table = s.daemon.cli_ok(["map", "ls"]).unwrap();
    assert!(table.lines().count() >= 3, "header and two rows:\n{table}");
}

#[test]
fn taken_host_port_fails_in_dockers_words_and_changes_nothing() {
    let s = setup(None);
    s.map_add("a", "172.17.0.2", &["8080:80"]);
    let before = s.bindings();
    let out = s
        .daemon
        .cli([
            "map",
            "add",
            "--task",
            "b",
            "--ip",
            "172.17.0.3",
            "-p",
            "9090:90",
            "-p",
            "8080:80",
        ])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "berth: Bind for 0.0.0.0:8080 failed: port is already allocated"
    );
    assert_eq!(
        s.bindings(),
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
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
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
    let s = setup(None);
    let _echo = echo_server(&s.topo.container.ns, 7);
    let _web =
        HttpPeerServer::start_in(&s.topo.container2.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    s.map_add("echo", "172.17.0.2", &["7007:7"]);
    s.map_add("web", "172.17.0.3", &["8080:80"]);
    let addr = s.topo.host.addr(7007);
    let mut conn = s
        .topo
        .client
        .ns
        .run(move || tcp_connect(addr, T))
        .expect("connect");
    assert_eq!(echo(&mut conn, "one"), "one");
    let before = s.bindings();

    let bad: &[&[&str]] = &[
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:0",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "70000:80",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "9010-9000:80-90",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "9000-9010:80-81",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "9000:80/sctp",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "1.2.3:9000:80",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.999.2",
            "-p",
            "9000:80",
        ],
        &[
            "map", "add", "--task", "x", "--ip", "10.9.9.9", "-p", "9000:80",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "65536",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "garbage",
        ],
        &[
            "map",
            "add",
            "--task",
            "x",
            "--ip",
            "172.17.0.2",
            "-p",
            "7007:7",
        ],
        &["map", "rm", "--task", "nosuchtask"],
        &["map", "rm", "--task", "echo", "-p", "9999:9"],
    ];
    for args in bad {
        let out = s.daemon.cli(*args).unwrap();
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
            s.bindings(),
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
        let r = s.daemon.api("POST", "/v1/bindings", Some(body)).unwrap();
        assert!((400..500).contains(&r.status), "{body} -> {}", r.status);
    }
    assert_eq!(s.bindings(), before);
    assert_eq!(
        echo(&mut conn, "two"),
        "two",
        "the established flow still works"
    );
    s.client_get(8080).expect("new connections still work");
}

#[test]
fn concurrent_map_adds_from_many_processes_all_land_once() {
    let s = setup(None);
    let daemon = &s.daemon;
    // 12 processes: 10 distinct ports, and two that race for port 9500.
    let outcomes: Vec<(u16, bool)> = thread::scope(|sc| {
        let handles: Vec<_> = (0..12u16)
            .map(|i| {
                sc.spawn(move || {
                    let port = if i < 10 { 9000 + i } else { 9500 };
                    let spec = format!("{port}:80");
                    let task = format!("t{i}");
                    let out = daemon
                        .cli([
                            "map",
                            "add",
                            "--task",
                            &task,
                            "--ip",
                            "172.17.0.2",
                            "-p",
                            &spec,
                        ])
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
    let ports: Vec<u64> = s
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
    let bpffs = Bpffs::new().unwrap();
    let daemon = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    daemon
        .cli_ok([
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:80",
            "-p",
            "53:53/udp",
        ])
        .unwrap();
    assert_eq!(rules(&topo.host.iptables_save().unwrap()), before);
    assert_eq!(
        topo.host.ns.exec("nft", ["list", "ruleset"]).unwrap(),
        nft_before
    );
}

#[test]
fn mappings_survive_a_daemon_restart_and_forward_while_it_is_down() {
    let mut s = setup(None);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    s.map_add("web", "172.17.0.2", &["8080:80"]);
    let before = s.bindings();
    s.daemon.kill().expect("SIGKILL the daemon");
    s.client_get(8080)
        .expect("forwarding continues while the daemon is down");
    s.daemon.start_again().expect("restart");
    assert_eq!(s.bindings(), before, "the store brought every binding back");
    s.client_get(8080).expect("after restart");
    s.daemon.stop().expect("SIGTERM");
    s.daemon.start_again().expect("restart after a clean stop");
    s.client_get(8080).expect("after a clean restart");
}

#[test]
fn daemon_refuses_to_start_with_one_clear_line() {
    let topo = Topology::build().expect("topology");
    let bpffs = Bpffs::new().unwrap();
    let opts = DaemonOptions {
        uplinks: vec!["nosuch0".into()],
        startup_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let err = Daemon::start_with(&topo.host.ns, &bpffs, opts).expect_err("must not start");
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
fn bulk_transfer_with_offloads(attach: &str) {
    let topo = Topology::build_with(berth_integration::TopologyOptions {
        tx_checksum_off: false,
        ..Default::default()
    })
    .expect("topology");
    let bpffs = Bpffs::new().unwrap();
    let daemon = Daemon::start_with(
        &topo.host.ns,
        &bpffs,
        DaemonOptions {
            attach: Some(attach.into()),
            ..Default::default()
        },
    )
    .unwrap();
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
    daemon
        .cli_ok([
            "map",
            "add",
            "--task",
            "bulk",
            "--ip",
            "172.17.0.2",
            "-p",
            "9000:9000",
        ])
        .unwrap();
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
    bulk_transfer_with_offloads("tc");
}

#[test]
fn bulk_transfer_with_offloads_xdp() {
    bulk_transfer_with_offloads("xdp");
}
