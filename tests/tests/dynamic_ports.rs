//! Dynamic host ports, the reserved-ports sysctl, cool-downs, events and
//! `berth reset`, end to end: the real daemon in the host namespace of a
//! Docker-like topology, driven by the real CLI.
use std::{
    collections::{BTreeSet, VecDeque},
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::net::UnixStream,
    thread,
    time::Duration,
};

use berth_integration::{http_get, Bpffs, Daemon, DaemonOptions, HttpPeerServer, NetNs, Topology};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

/// Guards drop in field order: daemon, then bpffs, then namespaces.
struct Setup {
    daemon: Daemon,
    bpffs: Bpffs,
    topo: Topology,
}

fn setup(extra_args: &[&str]) -> Setup {
    let topo = Topology::build().expect("build topology");
    setup_in(topo, extra_args)
}

fn setup_in(topo: Topology, extra_args: &[&str]) -> Setup {
    let bpffs = Bpffs::new().expect("bpffs");
    let opts = DaemonOptions {
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let daemon = Daemon::start_with(&topo.host.ns, &bpffs, opts).expect("start daemon");
    Setup {
        daemon,
        bpffs,
        topo,
    }
}

impl Setup {
    fn map_add(&self, task: &str, ip: &str, specs: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["map", "add", "--task", task, "--ip", ip];
        for s in specs {
            args.extend(["-p", s]);
        }
        self.daemon.cli_ok(args)
    }

    /// `map add` expected to fail: its one stderr line.
    fn map_add_err(&self, task: &str, ip: &str, specs: &[&str]) -> String {
        let mut args = vec!["map", "add", "--task", task, "--ip", ip];
        for s in specs {
            args.extend(["-p", s]);
        }
        let out = self.daemon.cli(&args).unwrap();
        assert!(
            !out.status.success(),
            "`berth {}` must fail",
            args.join(" ")
        );
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        err
    }

    fn bindings(&self) -> Vec<Value> {
        let out = self.daemon.cli_ok(["map", "ls", "--json"]).expect("map ls");
        serde_json::from_str::<Value>(&out)
            .expect("JSON")
            .as_array()
            .expect("array")
            .clone()
    }

    fn host_ports(&self, task: &str) -> Vec<u16> {
        self.bindings()
            .iter()
            .filter(|b| b["task"] == task)
            .map(|b| b["hostPort"].as_u64().unwrap() as u16)
            .collect()
    }

    fn client_get(&self, port: u16) -> anyhow::Result<String> {
        let addr = self.topo.host.addr(port);
        self.topo.client.ns.run(move || http_get(addr, "/", T))
    }

    fn reserved_ports(&self) -> BTreeSet<u16> {
        parse_port_list(&reserved_ports_sysctl(&self.topo.host.ns))
    }

    fn reset(&self) -> std::process::Output {
        let state = self.daemon.state_dir().display().to_string();
        let bpffs = self.daemon.bpffs().display().to_string();
        self.daemon
            .cli(["reset", "--state-dir", &state, "--bpffs", &bpffs])
            .unwrap()
    }
}

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

fn set(ports: &[u16]) -> BTreeSet<u16> {
    ports.iter().copied().collect()
}

#[test]
fn a_dynamic_host_port_is_picked_shown_and_reachable() {
    let s = setup(&["--dynamic-ports", "41000-41999"]);
    let _web =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    let out = s.map_add("web", "172.17.0.2", &["80"]).unwrap();
    let ports = s.host_ports("web");
    assert_eq!(ports.len(), 1);
    let port = ports[0];
    assert!((41000..=41999).contains(&port), "{port}");
    assert!(out.contains(&port.to_string()), "map add prints it:\n{out}");
    let body = s.client_get(port).expect("GET through the dynamic port");
    assert!(body.starts_with("192.0.2.2:"), "{body}");
}

#[test]
fn the_default_range_is_the_namespaces_ephemeral_range() {
    let topo = Topology::build().expect("topology");
    topo.host
        .ns
        .set_sysctl("net.ipv4.ip_local_port_range", "45000 45009")
        .unwrap();
    let s = setup_in(topo, &[]);
    s.map_add("web", "172.17.0.2", &["80", "81", "53/udp"])
        .unwrap();
    for port in s.host_ports("web") {
        assert!((45000..=45009).contains(&port), "{port}");
    }
}

#[test]
fn a_port_range_gets_a_contiguous_block_that_forwards() {
    let s = setup(&["--dynamic-ports", "42000-42099"]);
    let _a =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:9000".parse().unwrap()).unwrap();
    let _b =
        HttpPeerServer::start_in(&s.topo.container.ns, "0.0.0.0:9004".parse().unwrap()).unwrap();
    s.map_add("web", "172.17.0.2", &["9000-9004"]).unwrap();
    let b = s.bindings();
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
    s.client_get(first as u16).expect("first port of the block");
    s.client_get(first as u16 + 4)
        .expect("last port of the block");
}

#[test]
fn exhausting_the_range_is_one_clear_line_and_changes_nothing() {
    let s = setup(&["--dynamic-ports", "43000-43002"]);
    s.map_add("a", "172.17.0.2", &["9000-9001"]).unwrap();
    let before = s.bindings();
    let reserved = s.reserved_ports();
    let err = s.map_add_err("b", "172.17.0.3", &["8443:443", "80", "81"]);
    assert_eq!(
        err,
        "berth: no free host port in 43000-43002 for 0.0.0.0/tcp (0 reserved, 3 in use, 0 cooling down)"
    );
    let err = s.map_add_err("b", "172.17.0.3", &["7000-7001/udp", "7002-7003/udp"]);
    assert_eq!(
        err,
        "berth: no free block of 2 contiguous host ports in 43000-43002 for 0.0.0.0/udp \
         (0 reserved, 2 in use, 0 cooling down)"
    );
    assert_eq!(s.bindings(), before, "nothing published");
    assert_eq!(s.reserved_ports(), reserved, "nothing reserved");
    // Another protocol has its own ports.
    s.map_add("c", "172.17.0.3", &["53/udp"]).unwrap();
}

#[test]
fn a_taken_port_conflicts_in_dockers_words_dynamic_or_not() {
    let s = setup(&["--dynamic-ports", "44000-44999"]);
    s.map_add("a", "172.17.0.2", &["80"]).unwrap();
    let port = s.host_ports("a")[0];
    let err = s.map_add_err("b", "172.17.0.3", &[&format!("{port}:81")]);
    assert_eq!(
        err,
        format!("berth: Bind for 0.0.0.0:{port} failed: port is already allocated")
    );
    assert_eq!(s.bindings().len(), 1);
}

#[test]
fn a_listening_host_socket_or_reserved_port_is_never_handed_out() {
    let topo = Topology::build().expect("topology");
    let listener = topo
        .host
        .ns
        .run(|| TcpListener::bind("0.0.0.0:46000"))
        .expect("listen on 46000");
    let s = setup_in(
        topo,
        &[
            "--dynamic-ports",
            "46000-46002",
            "--reserved-ports",
            "46001",
        ],
    );
    s.map_add("web", "172.17.0.2", &["80"]).unwrap();
    assert_eq!(s.host_ports("web"), [46002]);
    let err = s.map_add_err("api", "172.17.0.3", &["80"]);
    assert!(
        err.ends_with("(1 reserved, 2 in use, 0 cooling down)"),
        "{err}"
    );
    drop(listener);
    s.map_add("api", "172.17.0.3", &["80"]).unwrap();
    assert_eq!(s.host_ports("api"), [46000]);
}

#[test]
fn a_released_port_cools_down_across_restarts() {
    let mut s = setup(&["--dynamic-ports", "47000-47000", "--port-cooldown", "300"]);
    s.map_add("a", "172.17.0.2", &["80"]).unwrap();
    assert_eq!(s.host_ports("a"), [47000]);
    s.daemon.cli_ok(["map", "rm", "--task", "a"]).unwrap();
    let err = s.map_add_err("b", "172.17.0.3", &["80"]);
    assert_eq!(
        err,
        "berth: no free host port in 47000 for 0.0.0.0/tcp (0 reserved, 0 in use, 1 cooling down)"
    );
    s.daemon.restart().expect("restart");
    let err = s.map_add_err("b", "172.17.0.3", &["80"]);
    assert!(
        err.ends_with("1 cooling down)"),
        "the store remembers: {err}"
    );
    // Asking for it by number is the operator's call.
    s.map_add("c", "172.17.0.4", &["47000:80"]).unwrap();
}

#[test]
fn a_released_port_comes_back_after_the_cool_down() {
    let s = setup(&["--dynamic-ports", "47100-47100", "--port-cooldown", "2"]);
    s.map_add("a", "172.17.0.2", &["80"]).unwrap();
    s.daemon
        .cli_ok(["map", "rm", "--task", "a", "-p", "80"])
        .unwrap();
    assert!(s
        .map_add_err("b", "172.17.0.3", &["80"])
        .contains("1 cooling down"));
    thread::sleep(Duration::from_millis(3100));
    s.map_add("b", "172.17.0.3", &["80"]).unwrap();
    assert_eq!(s.host_ports("b"), [47100]);
}

#[test]
fn reserved_ports_follow_mappings_and_the_operators_survive_rm_and_reset() {
    let topo = Topology::build().expect("topology");
    topo.host
        .ns
        .set_sysctl("net.ipv4.ip_local_reserved_ports", "8443,30000-30001")
        .unwrap();
    let mut s = setup_in(topo, &["--dynamic-ports", "48000-48999"]);
    let operators = set(&[8443, 30000, 30001]);
    assert_eq!(s.reserved_ports(), operators);

    s.map_add(
        "web",
        "172.17.0.2",
        &["8080:80", "8443:443", "80", "53:53/udp"],
    )
    .unwrap();
    let dynamic = s.host_ports("web")[2];
    assert_eq!(
        s.reserved_ports(),
        set(&[53, 8080, 8443, 30000, 30001, dynamic])
    );
    s.daemon
        .cli_ok([
            "map", "rm", "--task", "web", "-p", "8080:80", "-p", "8443:443",
        ])
        .unwrap();
    assert_eq!(s.reserved_ports(), set(&[53, 8443, 30000, 30001, dynamic]));
    s.daemon.cli_ok(["map", "rm", "--task", "web"]).unwrap();
    assert_eq!(
        s.reserved_ports(),
        operators,
        "map rm leaves the operator's"
    );

    // A restart re-reserves what the sysctl lost.
    s.map_add("db", "172.17.0.3", &["5432:5432"]).unwrap();
    s.topo
        .host
        .ns
        .set_sysctl("net.ipv4.ip_local_reserved_ports", "8443,30000-30001")
        .unwrap();
    s.daemon.restart().unwrap();
    assert_eq!(s.reserved_ports(), set(&[5432, 8443, 30000, 30001]));

    // Reset refuses while the daemon runs, then removes what berth added.
    let out = s.reset();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "berth: a berth daemon is answering on {}; stop it before resetting",
            s.daemon.socket().display()
        )
    );
    assert_eq!(s.reserved_ports(), set(&[5432, 8443, 30000, 30001]));
    s.daemon.stop().unwrap();
    let out = s.reset();
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
    assert_eq!(s.reserved_ports(), operators, "reset leaves the operator's");
    let entries = s.bpffs.entries().unwrap();
    assert!(
        !entries.contains(&"berth".into()),
        "no pins left: {entries:?}"
    );
    assert!(!s.daemon.state_dir().join("berth.redb").exists());
    // A fresh start has nothing.
    s.daemon.start_again().unwrap();
    assert!(s.bindings().is_empty());
    assert_eq!(s.reserved_ports(), operators);
}

#[test]
fn daemon_teardown_is_reset() {
    let mut s = setup(&[]);
    s.map_add("web", "172.17.0.2", &["8080:80"]).unwrap();
    assert_eq!(s.reserved_ports(), set(&[8080]));
    s.daemon.stop().unwrap();
    let state = s.daemon.state_dir().display().to_string();
    let bpffs = s.daemon.bpffs().display().to_string();
    let out = s
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
    assert!(s.reserved_ports().is_empty());
    assert!(!s.bpffs.entries().unwrap().contains(&"berth".into()));
}

/// `GET /v1/events` read from a raw connection.
struct Events {
    r: BufReader<UnixStream>,
    pending: VecDeque<Value>,
}

impl Events {
    /// Returns once the response head is in, which is when the daemon has
    /// subscribed the stream.
    fn open(d: &Daemon) -> Events {
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
        Events {
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
    let s = setup(&["--dynamic-ports", "49500-49599"]);
    let mut stream = Events::open(&s.daemon);
    s.map_add("web", "172.17.0.2", &["8080:80", "80/udp"])
        .unwrap();
    s.daemon
        .cli_ok(["map", "rm", "--task", "web", "-p", "8080:80"])
        .unwrap();
    let dynamic = s.host_ports("web")[0];
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
        let follower = sc.spawn(|| s.daemon.cli_ok(["events", "--existing", "--count", "2"]));
        // Whether `events` subscribes before or after this add, it shows
        // up exactly once (live or in the snapshot).
        s.map_add("api", "172.17.0.3", &["9090:90"]).unwrap();
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
