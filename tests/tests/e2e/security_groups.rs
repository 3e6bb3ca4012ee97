//! Security groups end to end: a Docker-like host in network namespaces,
//! the real `berth daemon` driven by the real CLI, real sockets. A refused
//! flow gets no answer at all, so "refused" here means a connect that times
//! out, never a reset.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use berth_integration::{
    any, http_get, peer_ip,
    rig::REQUEST_TIMEOUT as T,
    rig::VETH_POLL,
    tcp_connect,
    traffic::{recv_datagram, udp_socket_in},
    udp_request, NetNs, Rig,
};

/// How long a refused connect is given before we call it silence.
const REFUSED: Duration = Duration::from_millis(1500);

/// The daemon with `flags`, every container port hooked.
fn setup(flags: &[&str]) -> Rig {
    Rig::builder().flags(flags).wait_for_ports().start()
}

/// A new TCP connection from `ns` to `addr` gets no answer.
fn assert_refused(ns: &NetNs, addr: SocketAddr) {
    let err = ns
        .run(move || tcp_connect(addr, REFUSED))
        .expect_err("the connection should have been refused");
    assert_eq!(
        err.kind(),
        io::ErrorKind::TimedOut,
        "a refused SYN gets no answer, not a reset: {err}"
    );
}

fn get_from(ns: &NetNs, addr: SocketAddr) -> String {
    ns.run(move || http_get(addr, "/", T))
        .unwrap_or_else(|e| panic!("GET {addr}: {e:#}"))
}

/// Finishes an HTTP request on a connection opened earlier.
fn get_on(mut stream: TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send on the established connection");
    let mut out = String::new();
    stream
        .read_to_string(&mut out)
        .expect("answer on the established connection");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    body.to_string()
}

#[test]
fn allowed_client_cidr_reaches_the_published_port_and_the_other_client_does_not_tc() {
    allowed_client_cidr_only(&[]);
}

#[test]
fn allowed_client_cidr_reaches_the_published_port_and_the_other_client_does_not_xdp() {
    allowed_client_cidr_only(&["--attach", "xdp"]);
}

fn allowed_client_cidr_only(daemon_args: &[&str]) {
    let rig = setup(daemon_args);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let published = rig.topo.host.addr(8080);
    // Without a group a task is open, as with Docker.
    get_from(&rig.topo.client2.ns, published);

    rig.berth(&["sg", "create", "web", "--description", "front end"]);
    // The rule names the container port: it is judged before DNAT.
    rig.berth(&[
        "sg",
        "rule",
        "add",
        "web",
        "--ingress",
        "--proto",
        "tcp",
        "--port",
        "80",
        "--cidr",
        "192.0.2.2/32",
        "--description",
        "the office",
    ]);
    let denied = rig.counter("policy_denied_ingress");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);

    let body = get_from(&rig.topo.client.ns, published);
    assert_eq!(peer_ip(&body), "192.0.2.2", "the container sees the client");
    assert_refused(&rig.topo.client2.ns, published);
    assert!(rig.counter("policy_denied_ingress") > denied);

    let show = rig.berth(&["sg", "show", "web"]);
    assert!(
        show.contains("ingress    tcp    80     192.0.2.2/32  the office"),
        "{show}"
    );
    assert!(show.contains("host-wide drop counters"), "{show}");
    let v = rig.json(&["sg", "show", "web", "--json"]);
    assert_eq!(v["tasks"], serde_json::json!(["web"]));
    assert_eq!(v["members"], serde_json::json!(["172.17.0.2"]));
    assert!(v["hostCounters"]["policy_denied_ingress"].as_u64().unwrap() > 0);
}

#[test]
fn replies_to_a_tasks_own_connections_come_back_without_an_ingress_rule() {
    let rig = setup(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let _outside = rig.serve_http(&rig.topo.client.ns, 8000);
    let _dns = rig.serve_udp_echo(&rig.topo.client.ns, 5300);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "web"]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);

    // Nothing may come in...
    assert_refused(&rig.topo.client.ns, rig.topo.host.addr(8080));
    // ...but what the task starts is answered, TCP and UDP alike.
    let body = get_from(&rig.topo.container.ns, "192.0.2.2:8000".parse().unwrap());
    assert_eq!(peer_ip(&body), "192.0.2.1", "masqueraded as before");
    let reply = rig
        .topo
        .container
        .ns
        .run(|| udp_request("192.0.2.2:5300".parse().unwrap(), "hi", T))
        .expect("UDP answer");
    assert!(reply.text.ends_with(" hi"), "{}", reply.text);
}

#[test]
fn sg_db_is_reachable_from_sg_api_tasks_only() {
    let rig = setup(&[]);
    let other = rig.new_container("other", "172.17.0.4");
    let api2 = rig.new_container("api2", "172.17.0.5");
    let _db = rig.serve_http(&rig.topo.container2.ns, 5432);
    rig.map_add("api-1", "172.17.0.2", &["8080:80"]);
    rig.map_add("db", "172.17.0.3", &["15432:5432"]);
    rig.map_add("other", "172.17.0.4", &["8081:80"]);
    rig.berth(&["sg", "create", "sg-api"]);
    rig.berth(&["sg", "create", "sg-db"]);
    rig.berth_words("sg rule add sg-db --ingress --proto tcp --port 5432 --sg sg-api");
    rig.berth(&["sg", "attach", "sg-api", "--task", "api-1"]);
    rig.berth(&["sg", "attach", "sg-db", "--task", "db"]);
    let db = rig.topo.container2.addr(5432);

    // Container to container on the bridge: no host port involved.
    let body = get_from(&rig.topo.container.ns, db);
    assert_eq!(peer_ip(&body), "172.17.0.2");
    assert_refused(&other.ns, db);

    // A second API task: refused until it joins sg-api, then at once.
    rig.map_add("api-2", "172.17.0.5", &["8082:80"]);
    assert_refused(&api2.ns, db);
    rig.berth(&["sg", "attach", "sg-api", "--task", "api-2"]);
    let body = get_from(&api2.ns, db);
    assert_eq!(peer_ip(&body), "172.17.0.5");
    let v = rig.json(&["sg", "show", "sg-api", "--json"]);
    assert_eq!(
        v["members"],
        serde_json::json!(["172.17.0.2", "172.17.0.5"])
    );

    // Leaving the group, or stopping the task, takes it out again.
    rig.berth(&["sg", "detach", "sg-api", "--task", "api-2"]);
    assert_refused(&api2.ns, db);
    rig.berth(&["map", "rm", "--task", "api-1"]);
    assert_refused(&rig.topo.container.ns, db);
    let v = rig.json(&["sg", "show", "sg-api", "--json"]);
    assert_eq!(v["members"], serde_json::json!([]));
    assert_eq!(v["tasks"], serde_json::json!([]));
}

/// A TCP connection from `ns` to `addr` opened while `rule` (what follows
/// `berth sg rule add`) allows it; then the rule is removed and a new
/// connection checked refused. Returns the connection opened before.
fn connected_before_the_rule_goes(
    rig: &Rig,
    rule: &str,
    ns: &NetNs,
    addr: SocketAddr,
) -> TcpStream {
    let open = ns
        .run(move || tcp_connect(addr, T))
        .expect("connect while the rule allows it");
    rig.berth_words(&format!("sg rule rm {rule}"));
    assert_refused(ns, addr);
    open
}

#[test]
fn an_established_flow_survives_removal_of_its_rule_while_a_new_one_is_refused() {
    let rig = setup(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "web"]);
    let rule = "web --ingress --proto tcp --port 80 --cidr 192.0.2.0/24";
    rig.berth_words(&format!("sg rule add {rule}"));
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    let published = rig.topo.host.addr(8080);
    let open = connected_before_the_rule_goes(&rig, rule, &rig.topo.client.ns, published);
    let body = get_on(open);
    assert_eq!(peer_ip(&body), "192.0.2.2", "the tracked flow goes on");
}

#[test]
fn an_established_east_west_flow_survives_removal_of_its_rule() {
    let rig = setup(&[]);
    let _db = rig.serve_http(&rig.topo.container2.ns, 5432);
    rig.map_add("api", "172.17.0.2", &["8080:80"]);
    rig.map_add("db", "172.17.0.3", &["15432:5432"]);
    rig.berth(&["sg", "create", "api"]);
    rig.berth(&["sg", "create", "db"]);
    let rule = "db --ingress --proto tcp --port 5432 --sg api";
    rig.berth_words(&format!("sg rule add {rule}"));
    rig.berth(&["sg", "attach", "api", "--task", "api"]);
    rig.berth(&["sg", "attach", "db", "--task", "db"]);
    let db = rig.topo.container2.addr(5432);
    let open = connected_before_the_rule_goes(&rig, rule, &rig.topo.container.ns, db);
    assert_eq!(peer_ip(&get_on(open)), "172.17.0.2");
}

/// A UDP socket bound in `ns`.
fn udp_in(ns: &NetNs, bind: SocketAddr) -> UdpSocket {
    udp_socket_in(ns, bind, Duration::from_secs(1))
}

fn recv(sock: &UdpSocket) -> Option<(String, SocketAddr)> {
    recv_datagram(sock).map(|(data, from)| (String::from_utf8_lossy(&data).into_owned(), from))
}

#[test]
fn an_unanswered_udp_flow_expires_after_the_configured_timeout() {
    let rig = setup(&["--ct-udp-timeout", "2", "--ct-udp-stream-timeout", "8"]);
    rig.map_add("app", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "app"]);
    rig.berth(&["sg", "attach", "app", "--task", "app"]);
    // The peer is an open container; the app's group lets nothing in.
    let peer = udp_in(&rig.topo.container2.ns, any(7000));
    let answered = udp_in(&rig.topo.container.ns, any(40001));
    let quiet = udp_in(&rig.topo.container.ns, any(40002));
    let peer_addr = rig.topo.container2.addr(7000);

    answered.send_to(b"hello", peer_addr).unwrap();
    let (_, from) = recv(&peer).expect("the peer gets the first datagram");
    assert_eq!(from, rig.topo.container.addr(40001));
    peer.send_to(b"answer", from).unwrap();
    assert_eq!(recv(&answered).map(|r| r.0).as_deref(), Some("answer"));

    quiet.send_to(b"hello", peer_addr).unwrap();
    let (_, quiet_from) = recv(&peer).expect("the peer gets the second datagram");

    // Past the 2 s timeout of a flow nobody answered (plus one expiry
    // pass), within the 8 s of one that was answered.
    thread::sleep(Duration::from_millis(4500));
    let denied = rig.counter("policy_denied_ingress");
    peer.send_to(b"still there?", from).unwrap();
    assert_eq!(
        recv(&answered).map(|r| r.0).as_deref(),
        Some("still there?"),
        "the answered flow is a stream: 8 s"
    );
    peer.send_to(b"late", quiet_from).unwrap();
    assert_eq!(recv(&quiet), None, "the expired flow is a new, refused one");
    assert!(rig.counter("policy_denied_ingress") > denied);
}

/// The established table holds 3 flows: a 4th completes its handshake in
/// the (LRU) table of unestablished flows, but its promotion is refused, so
/// nothing of it gets through; the 3 established flows keep working.
#[test]
fn a_full_tracking_table_refuses_new_flows_and_keeps_established_ones() {
    let rig = setup(&["--ct-max", "3"]);
    let _peer = rig.serve_http(&rig.topo.container2.ns, 80);
    rig.map_add("app", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "app"]);
    rig.berth(&["sg", "attach", "app", "--task", "app"]);
    let target = rig.topo.container2.addr(80);
    let full_before = rig.counter("ct_table_full");

    let open: Vec<TcpStream> = (0..3)
        .map(|_| {
            rig.topo
                .container
                .ns
                .run(move || tcp_connect(target, REFUSED))
                .expect("room for 3 established flows")
        })
        .collect();
    let mut fourth = rig
        .topo
        .container
        .ns
        .run(move || tcp_connect(target, REFUSED))
        .expect("the handshake itself is tracked unestablished");
    fourth.set_read_timeout(Some(REFUSED)).unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let got = fourth.read_to_string(&mut out);
    assert!(
        got.is_err() && out.is_empty(),
        "the 4th flow is refused: {got:?} {out:?}"
    );
    assert!(rig.counter("ct_table_full") > full_before);
    for stream in open {
        assert_eq!(peer_ip(&get_on(stream)), "172.17.0.2");
    }
}

#[test]
fn the_default_group_closes_tasks_that_have_none() {
    let rig = setup(&["--default-sg", "base"]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let published = rig.topo.host.addr(8080);
    assert_refused(&rig.topo.client.ns, published);
    let ls = rig.berth(&["sg", "ls"]);
    assert!(ls.contains("base (default)"), "{ls}");

    rig.berth_words("sg rule add base --ingress --proto tcp --port 80 --cidr 0.0.0.0/0");
    get_from(&rig.topo.client.ns, published);
    // A group of its own replaces the default.
    rig.berth(&["sg", "create", "web"]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    assert_refused(&rig.topo.client.ns, published);
}

#[test]
fn groups_and_their_effect_survive_a_daemon_restart() {
    let mut rig = setup(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "web"]);
    rig.berth_words("sg rule add web --ingress --proto tcp --port 80 --cidr 192.0.2.2/32");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    let before = rig.json(&["sg", "ls", "--json"]);
    rig.daemon.restart().expect("restart");
    assert_eq!(rig.json(&["sg", "ls", "--json"]), before);
    let published = rig.topo.host.addr(8080);
    get_from(&rig.topo.client.ns, published);
    assert_refused(&rig.topo.client2.ns, published);

    // After a reboot the pins are gone: the new daemon pushes it all again.
    rig.daemon.stop().expect("stop");
    std::fs::remove_dir_all(rig.daemon.bpffs().join("berth")).expect("remove the pins");
    rig.daemon.start_again().expect("start");
    thread::sleep(VETH_POLL);
    get_from(&rig.topo.client.ns, published);
    assert_refused(&rig.topo.client2.ns, published);
}

#[test]
fn bad_input_is_one_line_and_changes_nothing() {
    let rig = setup(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "web"]);
    rig.berth_words("sg rule add web --ingress --proto tcp --port 80 --cidr 192.0.2.2/32");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    for g in ["g1", "g2", "g3", "g4"] {
        rig.berth(&["sg", "create", g]);
        rig.berth(&["sg", "attach", g, "--task", "web"]);
    }
    rig.berth(&["sg", "create", "g5"]);
    let state = || {
        let mut show = rig.json(&["sg", "show", "web", "--json"]);
        show.as_object_mut().unwrap().remove("hostCounters");
        (
            rig.json(&["sg", "ls", "--json"]),
            show,
            rig.json(&["map", "ls", "--json"]),
        )
    };
    let before = state();

    let long = "x".repeat(256);
    let rule = |extra: &[&'static str]| -> Vec<String> {
        ["sg", "rule", "add", "web", "--ingress"]
            .iter()
            .chain(extra)
            .map(ToString::to_string)
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            rule(&["--proto", "tcp", "--port", "80", "--cidr", "10.0.0.1/8"]),
            "berth: 10.0.0.1/8 is not a canonical CIDR (host bits are set); did you mean 10.0.0.0/8?",
        ),
        (
            rule(&["--proto", "tcp", "--port", "90-80", "--cidr", "10.0.0.0/8"]),
            "berth: port range 90-80 is reversed",
        ),
        (
            rule(&["--proto", "icmp", "--port", "8", "--cidr", "10.0.0.0/8"]),
            "berth: protocol icmp has no ports; --port applies to tcp and udp",
        ),
        (
            rule(&["--proto", "tcp", "--cidr", "10.0.0.0/8"]),
            "berth: protocol tcp needs a port or port range (--port P or P-Q)",
        ),
        (
            rule(&["--proto", "sctp", "--port", "80", "--cidr", "10.0.0.0/8"]),
            "berth: unknown protocol \"sctp\"; use tcp, udp, icmp, icmpv6, all or a number 1-254",
        ),
        (
            rule(&["--proto", "tcp", "--port", "80", "--sg", "nope"]),
            "berth: no such security group: nope",
        ),
        (
            rule(&["--proto", "tcp", "--port", "80", "--cidr", "192.0.2.2/32"]),
            "berth: security group web already has the rule ingress tcp 80 from 192.0.2.2/32 \
             (InvalidPermission.Duplicate)",
        ),
        (
            vec!["sg".into(), "create".into(), "web".into()],
            "berth: security group web already exists",
        ),
        (
            vec![
                "sg".into(),
                "create".into(),
                "x".into(),
                "--description".into(),
                long,
            ],
            "berth: description is 256 characters long; at most 255 are allowed",
        ),
        (
            vec!["sg".into(), "rm".into(), "web".into()],
            "berth: security group web is attached to task web; detach it first \
             (DependencyViolation)",
        ),
        (
            vec!["sg".into(), "attach".into(), "web".into(), "--task".into(), "nope".into()],
            "berth: no such task: nope",
        ),
        (
            vec!["sg".into(), "attach".into(), "g5".into(), "--task".into(), "web".into()],
            "berth: task web already has 5 security groups, the most a task may have \
             (berth daemon --max-sgs-per-task)",
        ),
        (
            vec!["sg".into(), "show".into(), "nope".into()],
            "berth: no such security group: nope",
        ),
    ];
    for (args, message) in &cases {
        let out = rig.daemon.cli(args).expect("run berth");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.trim_end(), *message, "{args:?}");
        assert_eq!(state(), before, "{args:?} changed something");
    }
    // clap's own refusals are one line too.
    for args in [
        vec![
            "sg",
            "rule",
            "add",
            "web",
            "--proto",
            "all",
            "--cidr",
            "0.0.0.0/0",
        ],
        vec![
            "sg",
            "rule",
            "add",
            "web",
            "--ingress",
            "--proto",
            "all",
            "--cidr",
            "0.0.0.0/0",
            "--sg",
            "web",
        ],
    ] {
        let out = rig.daemon.cli(&args).expect("run berth");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    assert_eq!(state(), before);
    get_from(&rig.topo.client.ns, rig.topo.host.addr(8080));
    assert_refused(&rig.topo.client2.ns, rig.topo.host.addr(8080));
}

#[test]
fn an_east_west_refusal_is_written_to_the_datapath_log() {
    let rig = setup(&["--datapath-log", "debug"]);
    let other = rig.new_container("other", "172.17.0.4");
    let _db = rig.serve_http(&rig.topo.container2.ns, 5432);
    rig.map_add("db", "172.17.0.3", &["15432:5432"]);
    rig.map_add("other", "172.17.0.4", &["8081:80"]);
    rig.berth(&["sg", "create", "sg-db"]);
    rig.berth(&["sg", "attach", "sg-db", "--task", "db"]);
    // Refused on other's veth (berth_from_ctr), by db's ingress rules
    // (none): the line comes from berth_log, tail-called there.
    assert_refused(&other.ns, rig.topo.container2.addr(5432));
    let wanted = |l: &&str| {
        l.contains("berth::datapath")
            && l.contains("policy refused a new flow: 172.17.0.4:")
            && l.contains("-> 172.17.0.3:5432 proto 6")
    };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !rig.daemon.stderr().lines().any(|l| wanted(&l)) {
        assert!(
            std::time::Instant::now() < until,
            "no datapath log line:\n{}",
            rig.daemon.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
}
