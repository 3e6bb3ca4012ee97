//! Per-binding counters, `/metrics` and `berth top` end to end: the counters
//! equal what the test sent, counted independently (datagram sizes the test
//! chose; for TCP, the container namespace's own IP counters), and the
//! Prometheus text parses and passes `promtool check metrics`.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use berth_integration::{
    any, http_get,
    rig::REQUEST_TIMEOUT as T,
    tcp_connect,
    traffic::{recv_datagram, udp_socket_in},
    NetNs, Rig,
};
use serde_json::Value;

/// IPv4 and UDP headers: a datagram's IP total length is its payload plus this.
const UDP_OVERHEAD: u64 = 20 + 8;

/// The one binding of `task` from `berth stats --task T --json`.
fn stats_of(rig: &Rig, task: &str) -> Value {
    let rows = rig.json(&["stats", "--task", task, "--json"]);
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0]["stats"].clone()
}

pub(super) fn counters(v: &Value) -> [u64; 7] {
    [
        "packetsIn",
        "bytesIn",
        "packetsOut",
        "bytesOut",
        "flowsOpened",
        "flowsRefused",
        "flowsTracked",
    ]
    .map(|k| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}")))
}

/// Sends datagrams of `sizes` bytes from `client` to `target` (one flow),
/// then answers with `replies` bytes from the container's `server`, each
/// checked to arrive whole; returns where each answer came from.
pub(super) fn udp_exchange(
    client: &UdpSocket,
    server: &UdpSocket,
    target: SocketAddr,
    sizes: &[usize],
    replies: &[usize],
) -> Vec<SocketAddr> {
    let mut from = None;
    for &n in sizes {
        client.send_to(&vec![b'x'; n], target).unwrap();
        let (got, peer) = recv_datagram(server).expect("datagram reaches the container");
        assert_eq!(got.len(), n);
        from = Some(peer);
    }
    let peer = from.expect("at least one datagram");
    replies
        .iter()
        .map(|&n| {
            server.send_to(&vec![b'y'; n], peer).unwrap();
            let (got, reply_from) = recv_datagram(client).expect("reply reaches the client");
            assert_eq!(got.len(), n);
            reply_from
        })
        .collect()
}

/// The cells of host port `port`'s row in `berth map ls --stats`, whose
/// counter columns must read `want`.
pub(super) fn stats_columns(rig: &Rig, port: u16, want: [u64; 7]) -> Vec<String> {
    let table = rig.berth(&["map", "ls", "--stats"]);
    let row = table
        .lines()
        .find(|l| l.contains(&port.to_string()))
        .expect(&table);
    let cells: Vec<String> = row.split_whitespace().map(str::to_owned).collect();
    assert_eq!(cells[6..], want.map(|n| n.to_string()), "{table}");
    cells
}

/// `N` datagrams of known sizes from one client socket (one flow), `M`
/// replies from the container: packets and bytes each way exactly.
#[test]
fn udp_counters_equal_what_was_sent_each_way() {
    let rig = Rig::builder().wait_for_ports().start();
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let server = udp_socket_in(&rig.topo.container.ns, any(53), T);
    let client = udp_socket_in(&rig.topo.client.ns, any(0), T);
    let target = rig.topo.host.addr(5353);
    let (sizes, replies) = ([1usize, 100, 333, 1000, 1400], [7usize, 700]);
    udp_exchange(&client, &server, target, &sizes, &replies);
    let want_in: u64 = sizes.iter().map(|n| *n as u64 + UDP_OVERHEAD).sum();
    let want_out: u64 = replies.iter().map(|n| *n as u64 + UDP_OVERHEAD).sum();
    let want = [5, want_in, 2, want_out, 1, 0, 1];
    assert_eq!(
        counters(&stats_of(&rig, "dns")),
        want,
        "packets, bytes in; packets, bytes out; flows opened, refused, tracked"
    );
    // `map ls --stats` shows the same, as columns and in JSON.
    stats_columns(&rig, 5353, want);
    let json = rig.json(&["map", "ls", "--stats", "--json"]);
    assert_eq!(json[0]["hostPort"], 5353);
    assert_eq!(json[0]["stats"]["bytesIn"], want_in);
}

/// One IPv4 counter of the calling thread's network namespace.
fn ip_counter(field: &str) -> u64 {
    for file in [
        "/proc/thread-self/net/snmp",
        "/proc/thread-self/net/netstat",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let (names, values) = (pair[0], pair[1]);
            let (prefix, names) = names.split_once(':').unwrap();
            if !matches!(prefix, "Ip" | "IpExt") {
                continue;
            }
            let values = values.split_once(':').unwrap().1;
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if format!("{prefix}{n}") == field {
                    return v.parse().unwrap();
                }
            }
        }
    }
    panic!("no {field}")
}

/// (packets, bytes) of IPv4 received in `ns`. Receive side: a sender's IP
/// layer counts a segmentation-offload burst as one packet, berth and the
/// receiver see its segments.
fn received(ns: &NetNs) -> [u64; 2] {
    ns.run(|| [ip_counter("IpInReceives"), ip_counter("IpExtInOctets")])
}

/// A whole TCP connection (handshake, a request, a reply, both FINs):
/// the binding counted exactly the IPv4 packets and octets the container
/// received and the client received back, by the kernels' own counts.
/// Bytes are IP total lengths (L3), packets as on the wire.
#[test]
fn tcp_counters_equal_what_each_end_received() {
    let rig = Rig::builder().wait_for_ports().start();
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    let listener = rig
        .topo
        .container
        .ns
        .run(|| std::net::TcpListener::bind(any(80)).unwrap());
    let (ctr, client) = (&rig.topo.container.ns, &rig.topo.client.ns);
    let before = [received(ctr), received(client)].concat();
    let target = rig.topo.host.addr(8080);
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 5];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[b'z'; 3000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
    });
    rig.topo.client.ns.run(|| {
        let mut c = tcp_connect(target, T).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 3000);
    });
    server.join().unwrap();
    // The last ACK is on its way.
    thread::sleep(Duration::from_millis(300));
    let after = [received(ctr), received(client)].concat();
    let want: Vec<u64> = (0..4).map(|i| after[i] - before[i]).collect();
    let got = counters(&stats_of(&rig, "web"));
    assert_eq!(got[..4], want[..], "packets/bytes in, packets/bytes out");
    assert!(want[0] >= 5 && want[2] >= 3, "{want:?}");
    assert_eq!(got[4], 1, "one flow opened");
    assert_eq!(got[5], 0, "none refused");
}

/// A security group with no rule refuses the flow: counted as refused,
/// nothing forwarded, nothing opened.
#[test]
fn a_flow_a_security_group_refuses_is_counted_as_refused() {
    let rig = Rig::builder().wait_for_ports().start();
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    rig.berth(&["sg", "create", "closed"]);
    rig.berth(&["sg", "attach", "closed", "--task", "dns"]);
    let server = udp_socket_in(&rig.topo.container.ns, any(53), Duration::from_millis(500));
    let client = udp_socket_in(&rig.topo.client.ns, any(0), T);
    client.send_to(b"knock", rig.topo.host.addr(5353)).unwrap();
    assert!(recv_datagram(&server).is_none(), "the group refuses it");
    assert_eq!(counters(&stats_of(&rig, "dns")), [0, 0, 0, 0, 0, 1, 0]);
}

#[test]
fn stats_of_an_unknown_task_is_one_clear_error() {
    let rig = Rig::start();
    let err = rig.berth_err(&["stats", "--task", "nope"]);
    assert_eq!(err, "berth: no such task: nope");
}

/// Parses `text` as the Prometheus text format and runs `promtool check
/// metrics` on it.
pub(super) fn check_exposition(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask bootstrap`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    scrape
}

/// `GET /metrics` on the daemon's API socket, with curl.
pub(super) fn metrics_of(rig: &Rig) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(rig.daemon.socket())
        .arg("http://berth/metrics")
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

pub(super) fn value_of(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

/// `/metrics` on the API socket (fetched with curl) and on
/// `--metrics-listen` parse, pass promtool, and carry the per-binding
/// counters and the API's latency by route template.
#[test]
fn metrics_on_the_socket_and_on_tcp_parse_and_pass_promtool() {
    let listen: SocketAddr = "127.0.0.1:9475".parse().unwrap();
    let rig = Rig::builder()
        .flags(&["--metrics-listen", &listen.to_string()])
        .wait_for_ports()
        .start();
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let _echo = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    let reply = rig.client_udp(5353, "ping").expect("echo");
    rig.berth(&["stats", "--task", "dns"]);
    let sock = rig.daemon.socket().to_owned();
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&sock)
        .arg("http://berth/metrics")
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let scrape = check_exposition(&text);
    let labels = [("task", "dns"), ("host_port", "5353"), ("protocol", "udp")];
    let with = |dir| {
        let mut l = labels.to_vec();
        l.push(("direction", dir));
        l
    };
    assert_eq!(
        value_of(&scrape, "berth_forwarded_packets_total", &with("in")),
        1.0
    );
    assert_eq!(
        value_of(&scrape, "berth_forwarded_bytes_total", &with("in")),
        (4 + UDP_OVERHEAD) as f64
    );
    assert_eq!(
        value_of(&scrape, "berth_forwarded_bytes_total", &with("out")),
        (reply.text.len() as u64 + UDP_OVERHEAD) as f64
    );
    assert_eq!(value_of(&scrape, "berth_flows_opened_total", &labels), 1.0);
    assert_eq!(value_of(&scrape, "berth_mappings", &[]), 1.0);
    assert_eq!(
        value_of(
            &scrape,
            "berth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value_of(
            &scrape,
            "berth_map_capacity_entries",
            &[("map", "BERTH_SERVICES")]
        ),
        f64::from(berth_maps::SERVICES_CAPACITY)
    );
    assert_eq!(
        value_of(&scrape, "berth_map_entries", &[("map", "BERTH_SERVICES")]),
        1.0
    );
    assert!(
        text.contains(
            "berth_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/bindings/stats\"}"
        ),
        "latency by route template: {text}"
    );
    assert!(!text.contains("?task="), "never the raw path");

    let tcp = rig
        .topo
        .host
        .ns
        .run(move || http_get(listen, "/metrics", T))
        .expect("GET /metrics on --metrics-listen");
    let scrape = check_exposition(&tcp);
    assert_eq!(
        value_of(&scrape, "berth_forwarded_packets_total", &with("out")),
        1.0
    );
    // Only /metrics is served there.
    let api = rig
        .topo
        .host
        .ns
        .run(move || http_get(listen, "/v1/bindings", T));
    assert!(api.is_err(), "the API is not on TCP: {api:?}");
}

#[test]
fn per_binding_labels_can_be_turned_off() {
    let rig = Rig::builder()
        .flags(&["--metrics-per-binding=false"])
        .wait_for_ports()
        .start();
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let _echo = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.client_udp(5353, "ping").expect("echo");
    let text = metrics_of(&rig);
    let scrape = check_exposition(&text);
    assert!(!text.contains("task=\"dns\""), "{text}");
    assert_eq!(
        value_of(
            &scrape,
            "berth_forwarded_packets_total",
            &[("protocol", "udp"), ("direction", "in")]
        ),
        1.0
    );
}

#[test]
fn a_bad_metrics_address_stops_the_daemon_in_one_line() {
    let rig = Rig::start();
    let out = rig.berth_output(&[
        "daemon",
        "--uplink",
        "x",
        "--bridge",
        "y",
        "--metrics-listen",
        "localhost",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("\"localhost\" is not an IP address and port"),
        "{err}"
    );
}

/// `berth top --once` while datagrams flow: the binding's row shows
/// non-zero packet and bit rates.
#[test]
fn top_once_shows_the_binding_with_rates_while_traffic_flows() {
    let rig = Rig::builder().wait_for_ports().start();
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    let _echo = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    let target = rig.topo.host.addr(5353);
    let stop = AtomicBool::new(false);
    let client = udp_socket_in(&rig.topo.client.ns, any(0), T);
    let out = thread::scope(|sc| {
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = client.send_to(&[b'p'; 200], target);
                thread::sleep(Duration::from_millis(5));
            }
        });
        let out = rig.berth(&["top", "--once", "--interval", "1"]);
        stop.store(true, Ordering::Relaxed);
        out
    });
    let row = out
        .lines()
        .find(|l| l.contains("0.0.0.0:5353/udp"))
        .unwrap_or_else(|| panic!("no binding row: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let rate = |i: usize| -> f64 {
        let c = cells[i];
        let (num, mul) = match c.chars().last() {
            Some('k') => (&c[..c.len() - 1], 1e3),
            Some('M') => (&c[..c.len() - 1], 1e6),
            _ => (c, 1.0),
        };
        num.parse::<f64>().unwrap() * mul
    };
    assert!(rate(1) > 10.0, "packets/s in: {row}");
    assert!(rate(2) > 10.0, "packets/s out: {row}");
    assert!(rate(3) > 10.0 * 8.0 * 228.0, "bit/s in: {row}");
    assert!(
        out.lines().any(|l| l.starts_with("dns ")),
        "task row: {out}"
    );
    assert!(out.contains("sampled over"), "{out}");
}

/// Counters live in pinned maps: a restarted daemon keeps counting in the
/// same slot. With every slot taken once (`--max-mappings 2`), a new
/// binding gets a removed one's slot, and starts from zero.
#[test]
fn counters_survive_a_restart_and_a_reused_slot_starts_from_zero() {
    let mut rig = Rig::builder()
        .flags(&["--max-mappings", "2"])
        .wait_for_ports()
        .start();
    rig.map_add("a", "172.17.0.2", &["5353:53/udp"]);
    rig.map_add("b", "172.17.0.2", &["5354:54/udp"]);
    let _echo = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    for _ in 0..2 {
        rig.client_udp(5353, "x").expect("echo");
    }
    assert_eq!(counters(&stats_of(&rig, "a"))[0], 2);
    rig.daemon.restart().unwrap();
    rig.client_udp(5353, "x").expect("echo after the restart");
    assert_eq!(
        counters(&stats_of(&rig, "a"))[0],
        3,
        "kept across the restart"
    );
    rig.berth(&["map", "rm", "--task", "a"]);
    rig.map_add("c", "172.17.0.2", &["5355:53/udp"]);
    assert_eq!(
        counters(&stats_of(&rig, "c")),
        [0; 7],
        "the reused slot was zeroed"
    );
    rig.client_udp(5355, "x")
        .expect("echo through the new binding");
    assert_eq!(counters(&stats_of(&rig, "c"))[..2], [1, 1 + UDP_OVERHEAD]);
}

/// A `--metrics-listen` address already in use stops the start in one
/// line, before the datapath is touched: here the first daemon holds it.
#[test]
fn a_metrics_port_in_use_stops_the_daemon_in_one_line() {
    let rig = Rig::builder()
        .flags(&["--metrics-listen", "127.0.0.1:9477"])
        .start();
    let dir = berth_integration::names::TempDir::new("metrics_busy").unwrap();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", rig.topo.host.ns.name()])
        .arg(berth_integration::berth_bin().unwrap())
        .args(["daemon", "--uplink", "up0", "--bridge", "docker0"])
        .arg("--socket")
        .arg(dir.path().join("berth.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--bpffs")
        .arg(dir.path().join("bpffs"))
        .args(["--metrics-listen", "127.0.0.1:9477"]);
    let out = berth_integration::cmd::output_with_timeout(&mut c, Duration::from_secs(30)).unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("berth: binding --metrics-listen 127.0.0.1:9477: ")
            && last.contains("in use"),
        "{err}"
    );
    assert!(
        !dir.path().join("bpffs/berth").exists(),
        "nothing pinned by the refused daemon"
    );
    // The first daemon still serves.
    let listen: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    rig.topo
        .host
        .ns
        .run(move || http_get(listen, "/metrics", T))
        .expect("the first daemon's /metrics");
}

/// Security-group verdicts in `/metrics`: a flow the group lets in counts
/// once as accepted however many packets it carries; a client the group
/// does not let in counts as rejected.
#[test]
fn security_group_verdicts_count_accepted_flows_once_and_rejections() {
    let rig = Rig::builder().wait_for_ports().start();
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    rig.berth(&["sg", "create", "dns"]);
    rig.berth_words("sg rule add dns --ingress --proto udp --port 53 --cidr 192.0.2.2/32");
    rig.berth(&["sg", "attach", "dns", "--task", "dns"]);
    let server = udp_socket_in(&rig.topo.container.ns, any(53), T);
    let client = udp_socket_in(&rig.topo.client.ns, any(0), T);
    let target = rig.topo.host.addr(5353);
    for _ in 0..3 {
        client.send_to(b"ping", target).unwrap();
        recv_datagram(&server).expect("the group lets the client in");
    }
    let client2 = udp_socket_in(&rig.topo.client2.ns, any(0), T);
    client2.send_to(b"knock", target).unwrap();
    assert!(
        recv_datagram(&server).is_none(),
        "the group keeps client2 out"
    );
    let text = metrics_of(&rig);
    let scrape = check_exposition(&text);
    let verdict = |name, dir| value_of(&scrape, name, &[("direction", dir)]);
    assert_eq!(
        verdict("berth_security_group_accepted_flows_total", "ingress"),
        1.0,
        "one flow, three packets: {text}"
    );
    assert_eq!(
        verdict("berth_security_group_rejected_flows_total", "ingress"),
        1.0
    );
    assert_eq!(
        verdict("berth_security_group_accepted_flows_total", "egress"),
        0.0
    );
}
