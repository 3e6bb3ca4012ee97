//! Dynamic host ports, the reserved-ports sysctl, cool-downs, events and
//! `berth reset`, end to end: the real daemon in the host namespace of a
//! Docker-like topology, driven by the real CLI.
use std::{
    collections::{BTreeSet, VecDeque},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    os::unix::net::UnixStream,
    thread,
    time::Duration,
};

use berth_integration::{Daemon, NetNs, Rig, Topology};
use serde_json::Value;

/// `net.ipv4.ip_local_reserved_ports` of `ns`, read in one `read`: the
/// kernel answers a read at a non-zero offset with end of file, so reading
/// in small pieces (as `fs::read_to_string` starts with) cuts the list.
fn reserved_ports_sysctl(ns: &NetNs) -> String {
    ns.run(|| {
        let mut buf = vec![0u8; 256 * 1024];
        let n = std::fs::File::open("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .and_then(|mut f| f.read(&mut buf))
            .expect("read ip_local_reserved_ports");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    })
}

/// The kernel's list format: `22,8000-8002`.
fn parse_port_list(text: &str) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for item in text.trim().split(',').filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => ports.extend(a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()),
            None => {
                ports.insert(item.parse().unwrap());
            }
        }
    }
    ports
}

/// The host ports `map ls` shows for `task`.
fn host_ports(rig: &Rig, task: &str) -> Vec<u16> {
    rig.bindings()
        .iter()
        .filter(|b| b["task"] == task)
        .map(|b| b["hostPort"].as_u64().unwrap() as u16)
        .collect()
}

fn reserved_ports(rig: &Rig) -> BTreeSet<u16> {
    parse_port_list(&reserved_ports_sysctl(&rig.topo.host.ns))
}

fn set(ports: &[u16]) -> BTreeSet<u16> {
    ports.iter().copied().collect()
}

#[test]
fn a_dynamic_host_port_is_picked_shown_and_reachable() {
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "41000-41999"])
        .start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let out = rig.map_add("web", "172.17.0.2", &["80"]);
    let ports = host_ports(&rig, "web");
    assert_eq!(ports.len(), 1);
    let port = ports[0];
    assert!((41000..=41999).contains(&port), "{port}");
    assert!(out.contains(&port.to_string()), "map add prints it:\n{out}");
    let body = rig.client_get(port).expect("GET through the dynamic port");
    assert!(body.starts_with("192.0.2.2:"), "{body}");
}

#[test]
fn the_default_range_is_the_namespaces_ephemeral_range() {
    let topo = Topology::build().expect("topology");
    topo.host
        .ns
        .set_sysctl("net.ipv4.ip_local_port_range", "45000 45009")
        .unwrap();
    let rig = Rig::builder().flags(&[]).start_on(topo);
    rig.map_add("web", "172.17.0.2", &["80", "81", "53/udp"]);
    for port in host_ports(&rig, "web") {
        assert!((45000..=45009).contains(&port), "{port}");
    }
}

#[test]
fn a_port_range_gets_a_contiguous_block_that_forwards() {
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "42000-42099"])
        .start();
    let _a = rig.serve_http(&rig.topo.container.ns, 9000);
    let _b = rig.serve_http(&rig.topo.container.ns, 9004);
    rig.map_add("web", "172.17.0.2", &["9000-9004"]);
    let b = rig.bindings();
    let pairs: Vec<(u64, u64)> = b
        .iter()
        .map(|b| {
            (
                b["hostPort"].as_u64().unwrap(),
                b["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let first = pairs[0].0;
    assert_eq!(
        pairs,
        (0..5).map(|i| (first + i, 9000 + i)).collect::<Vec<_>>()
    );
    rig.client_get(first as u16)
        .expect("first port of the block");
    rig.client_get(first as u16 + 4)
        .expect("last port of the block");
}

#[test]
fn exhausting_the_range_is_one_clear_line_and_changes_nothing() {
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "43000-43002"])
        .start();
    rig.map_add("a", "172.17.0.2", &["9000-9001"]);
    let before = rig.bindings();
    let reserved = reserved_ports(&rig);
    let err = rig.map_add_err("b", "172.17.0.3", &["8443:443", "80", "81"]);
    assert_eq!(
        err,
        "berth: no free host port in 43000-43002 for 0.0.0.0/tcp (0 reserved, 3 in use, 0 cooling down)"
    );
    let err = rig.map_add_err("b", "172.17.0.3", &["7000-7001/udp", "7002-7003/udp"]);
    assert_eq!(
        err,
        "berth: no free block of 2 contiguous host ports in 43000-43002 for 0.0.0.0/udp \
         (0 reserved, 2 in use, 0 cooling down)"
    );
    assert_eq!(rig.bindings(), before, "nothing published");
    assert_eq!(reserved_ports(&rig), reserved, "nothing reserved");
    // Another protocol has its own ports.
    rig.map_add("c", "172.17.0.3", &["53/udp"]);
}

#[test]
fn a_taken_port_conflicts_in_dockers_words_dynamic_or_not() {
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "44000-44999"])
        .start();
    rig.map_add("a", "172.17.0.2", &["80"]);
    let port = host_ports(&rig, "a")[0];
    let err = rig.map_add_err("b", "172.17.0.3", &[&format!("{port}:81")]);
    assert_eq!(
        err,
        format!("berth: Bind for 0.0.0.0:{port} failed: port is already allocated")
    );
    assert_eq!(rig.bindings().len(), 1);
}

#[test]
fn a_listening_host_socket_or_reserved_port_is_never_handed_out() {
    let topo = Topology::build().expect("topology");
    let listener = topo
        .host
        .ns
        .run(|| TcpListener::bind("0.0.0.0:46000"))
        .expect("listen on 46000");
    let rig = Rig::builder()
        .flags(&[
            "--dynamic-ports",
            "46000-46002",
            "--reserved-ports",
            "46001",
        ])
        .start_on(topo);
    rig.map_add("web", "172.17.0.2", &["80"]);
    assert_eq!(host_ports(&rig, "web"), [46002]);
    let err = rig.map_add_err("api", "172.17.0.3", &["80"]);
    assert!(
        err.ends_with("(1 reserved, 2 in use, 0 cooling down)"),
        "{err}"
    );
    drop(listener);
    rig.map_add("api", "172.17.0.3", &["80"]);
    assert_eq!(host_ports(&rig, "api"), [46000]);
}

#[test]
fn a_released_port_cools_down_across_restarts() {
    let mut rig = Rig::builder()
        .flags(&["--dynamic-ports", "47000-47000", "--port-cooldown", "300"])
        .start();
    rig.map_add("a", "172.17.0.2", &["80"]);
    assert_eq!(host_ports(&rig, "a"), [47000]);
    rig.daemon.cli_ok(["map", "rm", "--task", "a"]).unwrap();
    let err = rig.map_add_err("b", "172.17.0.3", &["80"]);
    assert_eq!(
        err,
        "berth: no free host port in 47000 for 0.0.0.0/tcp (0 reserved, 0 in use, 1 cooling down)"
    );
    rig.daemon.restart().expect("restart");
    let err = rig.map_add_err("b", "172.17.0.3", &["80"]);
    assert!(
        err.ends_with("1 cooling down)"),
        "the store remembers: {err}"
    );
    // Asking for it by number is the operator's call.
    rig.map_add("c", "172.17.0.4", &["47000:80"]);
}

#[test]
fn a_released_port_comes_back_after_the_cool_down() {
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "47100-47100", "--port-cooldown", "2"])
        .start();
    rig.map_add("a", "172.17.0.2", &["80"]);
    rig.daemon
        .cli_ok(["map", "rm", "--task", "a", "-p", "80"])
        .unwrap();
    assert!(rig
        .map_add_err("b", "172.17.0.3", &["80"])
        .contains("1 cooling down"));
    thread::sleep(Duration::from_millis(3100));
    rig.map_add("b", "172.17.0.3", &["80"]);
    assert_eq!(host_ports(&rig, "b"), [47100]);
}

#[test]
fn reserved_ports_follow_mappings_and_the_operators_survive_rm_and_reset() {
    let topo = Topology::build().expect("topology");
    topo.host
        .ns
        .set_sysctl("net.ipv4.ip_local_reserved_ports", "8443,30000-30001")
        .unwrap();
    let mut rig = Rig::builder()
        .flags(&["--dynamic-ports", "48000-48999"])
        .start_on(topo);
    let operators = set(&[8443, 30000, 30001]);
    assert_eq!(reserved_ports(&rig), operators);

    rig.map_add(
        "web",
        "172.17.0.2",
        &["8080:80", "8443:443", "80", "53:53/udp"],
    );
    let dynamic = host_ports(&rig, "web")[2];
    assert_eq!(
        reserved_ports(&rig),
        set(&[53, 8080, 8443, 30000, 30001, dynamic])
    );
    rig.daemon
        .cli_ok([
            "map", "rm", "--task", "web", "-p", "8080:80", "-p", "8443:443",
        ])
        .unwrap();
    assert_eq!(
        reserved_ports(&rig),
        set(&[53, 8443, 30000, 30001, dynamic])
    );
    rig.daemon.cli_ok(["map", "rm", "--task", "web"]).unwrap();
    assert_eq!(
        reserved_ports(&rig),
        operators,
        "map rm leaves the operator's"
    );

    // A restart re-reserves what the sysctl lost.
    rig.map_add("db", "172.17.0.3", &["5432:5432"]);
    rig.topo
        .host
        .ns
        .set_sysctl("net.ipv4.ip_local_reserved_ports", "8443,30000-30001")
        .unwrap();
    rig.daemon.restart().unwrap();
    assert_eq!(reserved_ports(&rig), set(&[5432, 8443, 30000, 30001]));

    // Reset refuses while the daemon runs, then removes what berth added.
    let out = rig.reset();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "berth: a berth daemon is answering on {}; stop it before resetting",
            rig.daemon.socket().display()
        )
    );
    assert_eq!(reserved_ports(&rig), set(&[5432, 8443, 30000, 30001]));
    rig.daemon.stop().unwrap();
    let out = rig.reset();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("berth reset: released reserved ports 5432; removed pins "),
        "{said}"
    );
    assert_eq!(
        reserved_ports(&rig),
        operators,
        "reset leaves the operator's"
    );
    let entries = rig.bpffs.entries().unwrap();
    assert!(
        !entries.contains(&"berth".into()),
        "no pins left: {entries:?}"
    );
    assert!(!rig.daemon.state_dir().join("berth.redb").exists());
    // A fresh start has nothing.
    rig.daemon.start_again().unwrap();
    assert!(rig.bindings().is_empty());
    assert_eq!(reserved_ports(&rig), operators);
}

#[test]
fn daemon_teardown_is_reset() {
    let mut rig = Rig::start();
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    assert_eq!(reserved_ports(&rig), set(&[8080]));
    rig.daemon.stop().unwrap();
    let state = rig.daemon.state_dir().display().to_string();
    let bpffs = rig.daemon.bpffs().display().to_string();
    let out = rig
        .daemon
        .cli_ok([
            "daemon",
            "--teardown",
            "--state-dir",
            &state,
            "--bpffs",
            &bpffs,
        ])
        .unwrap();
    assert!(out.contains("released reserved ports 8080"), "{out}");
    assert!(reserved_ports(&rig).is_empty());
    assert!(!rig.bpffs.entries().unwrap().contains(&"berth".into()));
}

/// `GET /v1/events` read from a raw connection.
struct Events {
    r: BufReader<UnixStream>,
    pending: VecDeque<Value>,
}

impl Events {
    /// Returns once the response head is in, which is when the daemon has
    /// subscribed the stream.
    fn open(d: &Daemon) -> Self {
        let mut s = UnixStream::connect(d.socket()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut chunked = false;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
            if line == "\r\n" {
                break;
            }
        }
        assert!(chunked, "a stream of unknown length is chunked");
        Self {
            r,
            pending: VecDeque::new(),
        }
    }

    /// The next event (newline-delimited JSON inside HTTP chunks).
    fn next(&mut self) -> Value {
        while self.pending.is_empty() {
            let mut size = String::new();
            self.r.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            assert!(size > 0, "the stream ended");
            let mut data = vec![0u8; size + 2];
            self.r.read_exact(&mut data).expect("chunk");
            let text = String::from_utf8(data[..size].to_vec()).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.pending
                    .push_back(serde_json::from_str(line).expect("an event is JSON"));
            }
        }
        self.pending.pop_front().unwrap()
    }
}

#[test]
fn events_report_every_added_and_removed_binding() {
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "49500-49599"])
        .start();
    let mut stream = Events::open(&rig.daemon);
    rig.map_add("web", "172.17.0.2", &["8080:80", "80/udp"]);
    rig.daemon
        .cli_ok(["map", "rm", "--task", "web", "-p", "8080:80"])
        .unwrap();
    let dynamic = host_ports(&rig, "web")[0];
    let got: Vec<(String, u64, String)> = (0..3)
        .map(|_| {
            let e = stream.next();
            assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
            (
                e["event"].as_str().unwrap().to_string(),
                e["binding"]["hostPort"].as_u64().unwrap(),
                e["binding"]["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("added".into(), 8080, "tcp".into()),
            ("added".into(), u64::from(dynamic), "udp".into()),
            ("removed".into(), 8080, "tcp".into()),
        ]
    );

    // The CLI: the current bindings first, then live ones, then exit.
    let out = thread::scope(|sc| {
        let follower = sc.spawn(|| rig.daemon.cli_ok(["events", "--existing", "--count", "2"]));
        // Whether `events` subscribes before or after this add, it shows
        // up exactly once (live or in the snapshot).
        rig.map_add("api", "172.17.0.3", &["9090:90"]);
        follower.join().unwrap().unwrap()
    });
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ports: BTreeSet<u64> = lines
        .iter()
        .map(|e| e["binding"]["hostPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [u64::from(dynamic), 9090].into());
    assert!(lines.iter().all(|e| e["event"] == "added"));
}

#[test]
fn a_host_range_for_one_container_port_takes_its_first_free_port() {
    // Docker's `-p 9000-9009:80`: one host port out of the range, the first
    // that is neither mapped nor held by a host socket.
    let rig = Rig::builder()
        .flags(&["--dynamic-ports", "44000-44099"])
        .start();
    let _one = rig.serve_http(&rig.topo.container.ns, 80);
    let _two = rig.serve_http(&rig.topo.container2.ns, 80);
    let held = rig
        .topo
        .host
        .ns
        .run(|| TcpListener::bind("0.0.0.0:9001"))
        .expect("a host process on 9001");
    rig.map_add("a", "172.17.0.2", &["9000-9009:80"]);
    rig.map_add("b", "172.17.0.3", &["9000-9009:80"]);
    assert_eq!(host_ports(&rig, "a"), [9000]);
    assert_eq!(host_ports(&rig, "b"), [9002], "9000 mapped, 9001 held");
    let body = rig.client_get(9002).expect("GET through the picked port");
    assert!(body.starts_with("192.0.2.2:"), "{body}");
    drop(held);

    // `map rm -p` with the same pool removes the port it placed.
    rig.berth(&["map", "rm", "--task", "b", "-p", "9000-9009:80"]);
    assert_eq!(host_ports(&rig, "b"), Vec::<u16>::new());
    assert!(rig.client_get(9002).is_err(), "unpublished");

    // A container port range still needs host ports of its length.
    let err = rig.map_add_err("c", "172.17.0.3", &["9000-9009:80-81"]);
    assert_eq!(
        err,
        "berth: port spec \"9000-9009:80-81\": host ports 9000-9009 (10) and container ports 80-81 (2) differ in length"
    );
}
