//! Flow logs end to end: the real daemon with `--flow-log`, real traffic
//! through a published port, and the records it writes parsed field by
//! field. Windows are the shortest a user may ask for (10 s), so each test
//! waits for one or two window ends.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use berth_integration::{
    addr, berth_bin, http_get,
    names::TempDir,
    peer_ip,
    rig::REQUEST_TIMEOUT as T,
    tcp_connect,
    traffic::{recv_datagram, udp_socket_in},
    Rig, RigBuilder,
};

/// Two windows and some slack: a flow split by a window end shows up in
/// both, and the test sums them.
const WAIT: Duration = Duration::from_secs(35);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn with_flow_log(extra: &[&str]) -> (Rig, PathBuf, TempDir) {
    start_with_flow_log(Rig::builder(), extra)
}

/// `builder`'s rig, every port hooked, with `--flow-log` to a file of its
/// own in 10 s windows and `extra` flags: the rig, the log's path and the
/// directory that holds it (removed when dropped).
pub(super) fn start_with_flow_log(builder: RigBuilder, extra: &[&str]) -> (Rig, PathBuf, TempDir) {
    let dir = TempDir::new("flowlog").expect("a temporary directory");
    let path = dir.path().join("flows.log");
    let p = path.display().to_string();
    let mut flags = vec!["--flow-log", p.as_str(), "--flow-log-interval", "10"];
    flags.extend_from_slice(extra);
    let rig = builder.flags(&flags).wait_for_ports().start();
    (rig, path, dir)
}

fn lines(path: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

/// Polls the log until `done` holds for its records, or panics with them.
pub(super) fn wait_for(
    path: &Path,
    what: &str,
    done: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let until = Instant::now() + WAIT;
    loop {
        let l = lines(path);
        if done(&l) {
            return l;
        }
        assert!(
            Instant::now() < until,
            "{what}: not in the flow log after {WAIT:?}:\n{}",
            fs::read_to_string(path).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// A default-format record, each field checked for its shape.
#[derive(Debug)]
struct Rec {
    interface: String,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
    start: u64,
    end: u64,
    action: String,
}

/// Flow records of the default format; NODATA/SKIPDATA lines are checked
/// and left out.
fn flow_records(l: &[Vec<String>]) -> Vec<Rec> {
    let mut out = Vec::new();
    for f in l {
        assert_eq!(f.len(), 14, "14 fields: {f:?}");
        assert_eq!(f[0], "2", "version: {f:?}");
        assert_eq!(f[1], "-", "account-id: {f:?}");
        if f[13] != "OK" {
            assert!(["NODATA", "SKIPDATA"].contains(&f[13].as_str()), "{f:?}");
            assert!(f[3..10].iter().all(|v| v == "-"), "{f:?}");
            assert_eq!(f[12], "-", "{f:?}");
            continue;
        }
        let r = Rec {
            interface: f[2].clone(),
            src: f[3].parse().unwrap(),
            dst: f[4].parse().unwrap(),
            sport: f[5].parse().unwrap(),
            dport: f[6].parse().unwrap(),
            proto: f[7].parse().unwrap(),
            packets: f[8].parse().unwrap(),
            bytes: f[9].parse().unwrap(),
            start: f[10].parse().unwrap(),
            end: f[11].parse().unwrap(),
            action: f[12].clone(),
        };
        assert!(r.start <= r.end, "{f:?}");
        assert!(
            r.end <= unix_now() + 1 && r.start + 3600 > unix_now(),
            "{f:?}"
        );
        assert!(r.packets > 0, "{f:?}");
        out.push(r);
    }
    out
}

/// Sums of (packets, bytes) over the records matching `m`.
fn totals(recs: &[Rec], m: impl Fn(&Rec) -> bool) -> (u64, u64) {
    recs.iter()
        .filter(|r| m(r))
        .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
}

#[test]
fn udp_flow_records_count_exactly_what_each_side_sent() {
    let (rig, log, _dir) = with_flow_log(&[]);
    let _echo = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add("dns", "172.17.0.2", &["8053:53/udp"]);
    let sock = udp_socket_in(&rig.topo.client.ns, SocketAddr::from(([0, 0, 0, 0], 0)), T);
    let client_port = sock.local_addr().unwrap().port();
    let target = rig.topo.host.addr(8053);
    const N: u64 = 5;
    let payload = [b'x'; 100];
    let mut reply_bytes = 0;
    for _ in 0..N {
        sock.send_to(&payload, target).unwrap();
        let (reply, from) = recv_datagram(&sock).expect("an echo through the mapping");
        assert_eq!(from, target, "the reply comes from the host port");
        // IPv4 + UDP headers around each datagram.
        reply_bytes += 28 + reply.len() as u64;
    }
    let sent_bytes = N * (28 + payload.len() as u64);
    let host = addr::HOST_IP;
    let client = addr::CLIENT_IP;
    let ingress = |r: &Rec| r.src == client && r.sport == client_port;
    let egress = |r: &Rec| r.dst == client && r.dport == client_port;
    let l = wait_for(&log, "both directions' full counts", |l| {
        let recs = flow_records(l);
        totals(&recs, ingress).0 == N && totals(&recs, egress).0 == N
    });
    let recs = flow_records(&l);
    for r in recs.iter().filter(|r| ingress(r) || egress(r)) {
        assert_eq!(r.interface, "up0", "{r:?}");
        assert_eq!(r.proto, 17, "{r:?}");
        assert_eq!(r.action, "ACCEPT", "{r:?}");
        if ingress(r) {
            assert_eq!((r.dst, r.dport), (host, 8053), "{r:?}");
        } else {
            assert_eq!((r.src, r.sport), (host, 8053), "{r:?}");
        }
    }
    assert_eq!(totals(&recs, ingress), (N, sent_bytes));
    assert_eq!(totals(&recs, egress), (N, reply_bytes));
    // A window with no traffic says so, per uplink.
    let l = wait_for(&log, "a NODATA window", |l| {
        l.iter()
            .any(|f| f.get(13).map(String::as_str) == Some("NODATA"))
    });
    let nodata = l.iter().find(|f| f[13] == "NODATA").unwrap();
    assert_eq!(nodata[2], "up0");
}

#[test]
fn a_custom_format_shows_the_container_address_tcp_flags_and_ecs_fields() {
    let format = [
        "version",
        "srcaddr",
        "dstaddr",
        "srcport",
        "dstport",
        "protocol",
        "packets",
        "bytes",
        "action",
        "pkt-srcaddr",
        "pkt-dstaddr",
        "tcp-flags",
        "flow-direction",
        "ecs-task-arn",
        "ecs-task-id",
        "ecs-cluster-name",
        "vpc-id",
    ]
    .map(|f| format!("${{{f}}}"))
    .join(" ");
    let (rig, log, _dir) = with_flow_log(&["--flow-log-format", &format]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let arn = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef";
    let body = format!(
        r#"{{"task":"web","containerIP":"172.17.0.2","ports":["8080:80"],"heldByDocker":true,"ecsTaskArn":"{arn}","ecsContainerName":"nginx"}}"#
    );
    let r = rig.daemon.api("POST", "/v1/bindings", Some(&body)).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let got = rig.client_get(8080).expect("GET through the mapping");
    assert_eq!(peer_ip(&got), "192.0.2.2");
    let l = wait_for(&log, "both directions of the GET", |l| {
        let ours = |dir: &str| {
            l.iter()
                .any(|f| f.len() == 17 && f[12] == dir && f[5] == "6")
        };
        ours("ingress") && ours("egress")
    });
    for f in l.iter().filter(|f| f.len() == 17 && f[5] == "6") {
        assert_eq!(f[0], "7", "the highest version of the fields: {f:?}");
        assert_eq!(f[8], "ACCEPT");
        assert_eq!(f[13], arn, "{f:?}");
        assert_eq!(f[14], "0123456789abcdef", "{f:?}");
        assert_eq!(f[15], "prod", "{f:?}");
        assert_eq!(f[16], "-", "no VPC here: {f:?}");
        let packets: u64 = f[6].parse().unwrap();
        let bytes: u64 = f[7].parse().unwrap();
        assert!(bytes >= 40 * packets, "{f:?}");
        let flags: u8 = f[11].parse().unwrap();
        match f[12].as_str() {
            "ingress" => {
                assert_eq!(
                    (f[1].as_str(), f[2].as_str(), f[4].as_str()),
                    ("192.0.2.2", "192.0.2.1", "8080")
                );
                assert_eq!(f[9], "192.0.2.2", "pkt-srcaddr: {f:?}");
                assert_eq!(f[10], "172.17.0.2", "pkt-dstaddr is the container: {f:?}");
                // The SYN, request and ACKs at least.
                assert!(packets >= 3, "{f:?}");
            }
            "egress" => {
                assert_eq!(
                    (f[1].as_str(), f[2].as_str(), f[3].as_str()),
                    ("192.0.2.1", "192.0.2.2", "8080")
                );
                assert_eq!(f[9], "172.17.0.2", "pkt-srcaddr is the container: {f:?}");
                assert_eq!(f[10], "192.0.2.2", "{f:?}");
                assert!(packets >= 2, "{f:?}");
            }
            other => panic!("flow-direction {other:?}"),
        }
        // The window that saw the handshake: SYN in, SYN-ACK out.
        let opening = l
            .iter()
            .find(|g| g.len() == 17 && g[12] == f[12] && g[5] == "6");
        if opening == Some(f) {
            let want = if f[12] == "ingress" { 2 } else { 18 };
            assert_eq!(flags & want, want, "tcp-flags {flags}: {f:?}");
        }
    }
}

#[test]
fn a_flow_refused_by_a_security_group_is_a_reject_record() {
    let (rig, log, _dir) = with_flow_log(&[]);
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "web"]);
    rig.berth_words("sg rule add web --ingress --proto tcp --port 80 --cidr 192.0.2.2/32");
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    let published = rig.topo.host.addr(8080);
    rig.topo
        .client2
        .ns
        .run(move || tcp_connect(published, Duration::from_millis(1500)))
        .expect_err("client2 is not allowed");
    let got = rig
        .topo
        .client
        .ns
        .run(move || http_get(published, "/", T))
        .expect("client is allowed");
    assert_eq!(peer_ip(&got), "192.0.2.2");
    let client2 = addr::CLIENT2_IP;
    let l = wait_for(&log, "the refused flow", |l| {
        flow_records(l)
            .iter()
            .any(|r| r.src == client2 && r.action == "REJECT")
    });
    let recs = flow_records(&l);
    let rejected: Vec<&Rec> = recs.iter().filter(|r| r.src == client2).collect();
    assert!(!rejected.is_empty());
    for r in &rejected {
        assert_eq!(
            r.action, "REJECT",
            "nothing of client2's is accepted: {r:?}"
        );
        assert_eq!((r.dst, r.dport, r.proto), (addr::HOST_IP, 8080, 6), "{r:?}");
        assert_eq!(r.interface, "up0");
        // Each SYN is 60 bytes or less with options; at least 40.
        assert!(
            r.bytes >= 40 * r.packets && r.bytes <= 80 * r.packets,
            "{r:?}"
        );
    }
    assert!(
        recs.iter()
            .any(|r| r.src == addr::CLIENT_IP && r.action == "ACCEPT"),
        "the allowed client's flow is accepted"
    );
}

#[test]
fn the_log_file_rotates_when_it_would_grow_past_its_size() {
    let tmp = TempDir::new("flowlog").expect("a temporary directory");
    let dir = tmp.path();
    let path = dir.join("flows.log");
    // 16 bytes short of 1 MiB: the first window's records rotate it.
    fs::write(&path, "old\n".repeat(262_140)).unwrap();
    let p = path.display().to_string();
    let rig = Rig::builder()
        .flags(&[
            "--flow-log",
            &p,
            "--flow-log-interval",
            "10",
            "--flow-log-max-size",
            "1",
            "--flow-log-max-files",
            "2",
        ])
        .start();
    let _ = &rig;
    let rotated = dir.join("flows.log.1");
    let l = wait_for(&path, "a window after the rotation", |l| {
        !l.is_empty() && l[0] != ["old"]
    });
    flow_records(&l);
    assert_eq!(
        fs::read_to_string(&rotated).unwrap(),
        "old\n".repeat(262_140),
        "the old file kept whole as flows.log.1"
    );
    assert!(!dir.join("flows.log.2").exists(), "two files kept");
}

#[test]
fn bad_flow_log_flags_are_refused_in_one_line() {
    let bin = berth_bin().unwrap();
    for (args, want) in [
        (
            vec!["--flow-log", "-", "--flow-log-interval", "9"],
            "a capture window is at least 10 seconds",
        ),
        (
            vec![
                "--flow-log",
                "-",
                "--flow-log-format",
                "${srcaddr} ${bogus}",
            ],
            "flow-log format: unknown field ${bogus}",
        ),
    ] {
        let out = Command::new(&bin)
            .args(["daemon", "--uplink", "lo", "--bridge", "lo"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains(want), "{args:?}: {err}");
    }
}

/// The datapath log's lines about client2's refused flows in the daemon's
/// log so far.
fn refusal_lines(rig: &Rig) -> usize {
    rig.daemon
        .stderr()
        .lines()
        .filter(|l| {
            l.contains("policy refused a new flow: 192.0.2.3:") && l.contains("-> 172.17.0.2:80")
        })
        .count()
}

#[test]
fn the_datapath_log_shows_a_refused_flow_only_while_it_is_on() {
    let rig = Rig::builder().wait_for_ports().start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8080:80"]);
    rig.berth(&["sg", "create", "web"]);
    rig.berth(&["sg", "attach", "web", "--task", "web"]);
    let published = rig.topo.host.addr(8080);
    let refused = || {
        rig.topo
            .client2
            .ns
            .run(move || tcp_connect(published, Duration::from_millis(300)))
            .expect_err("no rule lets anyone in");
    };
    refused();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(refusal_lines(&rig), 0, "off by default");

    assert_eq!(
        rig.berth(&["log", "--datapath", "debug"]).trim(),
        "datapath log: debug"
    );
    refused();
    let until = Instant::now() + Duration::from_secs(5);
    while refusal_lines(&rig) == 0 {
        assert!(
            Instant::now() < until,
            "no datapath log line:\n{}",
            rig.daemon.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let line = rig
        .daemon
        .stderr()
        .lines()
        .find(|l| l.contains("policy refused a new flow"))
        .unwrap()
        .to_string();
    assert!(line.contains("berth::datapath"), "{line}");
    assert!(line.contains("proto 6"), "{line}");

    assert_eq!(
        rig.berth(&["log", "--datapath", "off"]).trim(),
        "datapath log: off"
    );
    thread::sleep(Duration::from_millis(300));
    let seen = refusal_lines(&rig);
    refused();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(refusal_lines(&rig), seen, "off again: no more lines");
    let err = rig.berth_err(&["log", "--datapath", "loud"]);
    assert!(err.contains("loud"), "{err}");
}
