//! Host-local and hairpin access to published ports, without a proxy and
//! without NAT rules: the cgroup socket hooks point connect()/sendmsg() at
//! the container. Callers run as `cg-probe` inside the daemon's cgroup.
use std::process::Command;

use berth_integration::{berth_bin, Bpffs, Daemon, HttpPeerServer, NetNs, Topology, UdpEchoServer};

struct Setup {
    daemon: Daemon,
    _bpffs: Bpffs,
    topo: Topology,
}

fn setup() -> (Setup, HttpPeerServer, UdpEchoServer) {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let daemon = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    let web = HttpPeerServer::start_in(&topo.container.ns, "0.0.0.0:80".parse().unwrap()).unwrap();
    let dns = UdpEchoServer::start_in(&topo.container.ns, "0.0.0.0:53".parse().unwrap()).unwrap();
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
            "5353:53/udp",
            "-p",
            "127.0.0.1:9000:80",
        ])
        .unwrap();
    (
        Setup {
            daemon,
            _bpffs: bpffs,
            topo,
        },
        web,
        dns,
    )
}

impl Setup {
    /// Runs `cg-probe` in `ns`, inside the daemon's cgroup.
    fn probe(&self, ns: &NetNs, args: &[&str]) -> String {
        let bin = berth_bin().unwrap().with_file_name("cg-probe");
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin)
            .arg(self.daemon.cgroup().procs_file())
            .args(args)
            .output()
            .expect("run cg-probe");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[test]
fn host_reaches_a_published_port_on_localhost_and_its_own_addresses() {
    let (s, _web, _dns) = setup();
    for target in [
        "127.0.0.1:8080",
        "192.0.2.1:8080",
        "172.17.0.1:8080",
        "127.0.0.1:9000",
    ] {
        let out = s.probe(&s.topo.host.ns, &["http", target]);
        assert!(
            out.starts_with(&format!("peer={target} body=172.17.0.1:")),
            "{target}: {out}"
        );
    }
}

#[test]
fn host_udp_replies_come_from_the_address_the_client_sent_to() {
    let (s, _web, _dns) = setup();
    for target in ["127.0.0.1:5353", "192.0.2.1:5353"] {
        let out = s.probe(&s.topo.host.ns, &["udp", target, "hi"]);
        assert!(
            out.starts_with(&format!("from={target} text=172.17.0.1:")),
            "{target}: {out}"
        );
        assert!(out.ends_with(" hi"), "{out}");
        let out = s.probe(&s.topo.host.ns, &["udp-connected", target, "yo"]);
        assert!(
            out.starts_with(&format!("peer={target} text=172.17.0.1:")),
            "{target}: {out}"
        );
    }
}

#[test]
fn hairpin_to_a_neighbour_keeps_the_callers_address() {
    let (s, _web, _dns) = setup();
    let out = s.probe(&s.topo.container2.ns, &["http", "192.0.2.1:8080"]);
    assert!(
        out.starts_with("peer=192.0.2.1:8080 body=172.17.0.3:"),
        "{out}"
    );
    let out = s.probe(&s.topo.container2.ns, &["udp", "172.17.0.1:5353", "x"]);
    assert!(
        out.starts_with("from=172.17.0.1:5353 text=172.17.0.3:"),
        "{out}"
    );
}

#[test]
fn hairpin_to_itself_sees_its_own_address() {
    let (s, _web, _dns) = setup();
    let out = s.probe(&s.topo.container.ns, &["http", "192.0.2.1:8080"]);
    assert!(
        out.starts_with("peer=192.0.2.1:8080 body=172.17.0.2:"),
        "{out}"
    );
}

#[test]
fn loopback_inside_a_container_is_the_container_itself() {
    let (s, _web, _dns) = setup();
    // 127.0.0.1 in container2 is container2, where nothing listens.
    assert_eq!(
        s.probe(&s.topo.container2.ns, &["http", "127.0.0.1:8080"]),
        "ECONNREFUSED"
    );
    // A mapping bound to 127.0.0.1 is the host's loopback only.
    assert_eq!(
        s.probe(&s.topo.container2.ns, &["http", "192.0.2.1:9000"]),
        "ECONNREFUSED"
    );
}

#[test]
fn unpublished_ports_are_not_translated() {
    let (s, _web, _dns) = setup();
    let _host = HttpPeerServer::start_in(&s.topo.host.ns, "0.0.0.0:7000".parse().unwrap()).unwrap();
    let out = s.probe(&s.topo.host.ns, &["http", "127.0.0.1:7000"]);
    assert!(
        out.starts_with("peer=127.0.0.1:7000 body=127.0.0.1:"),
        "{out}"
    );
    s.daemon
        .cli_ok(["map", "rm", "--task", "web", "-p", "8080:80"])
        .unwrap();
    assert_eq!(
        s.probe(&s.topo.host.ns, &["http", "127.0.0.1:8080"]),
        "ECONNREFUSED"
    );
}
