//! berth-cni beside the reference: the same cases, driven the way a
//! runtime drives CNI plugins (bridge + host-local, then the port-mapping
//! plugin), through Debian's `portmap` (iptables in the test's host
//! namespace) and through `berth-cni` and the real daemon, for every
//! cniVersion both speak. berth must pass every case the reference passes.
//!
//! The daemon starts with `--bridge cni0` before `cni0` exists: the bridge
//! plugin creates it (with its gateway address and a fixed MAC) on the
//! first ADD, and the daemon attaches it then. The topology has no Docker
//! rules: the bridge plugin adds no FORWARD accept, so portmap's DNAT'd
//! packets would meet Docker's `FORWARD DROP`.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    any,
    cni::{bridge_conflist, Attachment, CniRuntime},
    http_get, peer_ip,
    rig::{REQUEST_TIMEOUT, VETH_POLL},
    udp_request, HttpPeerServer, NetNs, Rig, Topology, TopologyOptions, UdpEchoServer,
};
use serde_json::{json, Value};

/// The versions Debian's plugins (1.1.1: up to 1.0.0) and berth-cni share.
const SHARED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
const SUBNET: &str = "10.88.0.0/16";
const HOST_IP: &str = "192.0.2.1";
const CLIENT_IP: &str = "192.0.2.2";
const NETWORK: &str = "kube";
const HAIRPIN_ADDRESS: &str = "hairpin keeps the caller's address";
const CHECK_PASSES: &str = "CHECK passes while published";
const DEL_AFTER_REFUSAL: &str = "DEL after a refused ADD cleans up";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Portmap,
    Berth,
}

/// One test host: the topology (the bridge plugin adds `cni0`), and for
/// berth the daemon serving `cni0`.
struct Node {
    backend: Backend,
    rig: Option<Rig>,
    bare: Option<Topology>,
}

impl Node {
    fn start(backend: Backend) -> Self {
        let topo = Topology::build_with(TopologyOptions {
            docker_iptables: false,
            ..TopologyOptions::default()
        })
        .expect("build the topology");
        match backend {
            Backend::Portmap => Self {
                backend,
                rig: None,
                bare: Some(topo),
            },
            Backend::Berth => Self {
                backend,
                rig: Some(Rig::builder().bridge("cni0").start_on(topo)),
                bare: None,
            },
        }
    }

    fn topo(&self) -> &Topology {
        match (&self.rig, &self.bare) {
            (Some(r), _) => &r.topo,
            (None, Some(t)) => t,
            (None, None) => unreachable!("a node has a topology"),
        }
    }

    fn rig(&self) -> &Rig {
        self.rig.as_ref().expect("a berth node")
    }

    /// The network at `version`, chained to this node's port plugin.
    fn runtime(&self, version: &str) -> CniRuntime {
        let (ty, extra) = match self.backend {
            Backend::Portmap => ("portmap", json!({})),
            Backend::Berth => ("berth-cni", json!({"socket": self.rig().daemon.socket()})),
        };
        CniRuntime::new(
            &self.topo().host.ns,
            bridge_conflist(NETWORK, version, SUBNET, ty, extra),
        )
        .expect("a CNI runtime")
    }

    /// GET from the host itself to 127.0.0.1:`port`: the body (the peer
    /// the server saw). berth's path is the socket hooks, which apply to
    /// processes in the daemon's cgroup (`cg-probe`).
    fn host_get(&self, port: u16) -> Result<String, String> {
        self.get_in(&self.topo().host.ns, &format!("127.0.0.1:{port}"))
    }

    fn get_in(&self, ns: &NetNs, target: &str) -> Result<String, String> {
        match self.backend {
            Backend::Portmap => {
                let addr: SocketAddr = target.parse().expect("an address");
                ns.run(move || http_get(addr, "/", REQUEST_TIMEOUT))
                    .map_err(|e| format!("{e:#}"))
            }
            Backend::Berth => {
                let out = self.rig().cg_probe(ns, &["http", target]);
                out.split_once(" body=")
                    .map(|(_, body)| body.to_owned())
                    .ok_or(out)
            }
        }
    }

    fn client_get(&self, port: u16) -> Result<String, String> {
        let addr: SocketAddr = format!("{HOST_IP}:{port}").parse().expect("an address");
        self.topo()
            .client
            .ns
            .run(move || http_get(addr, "/", REQUEST_TIMEOUT))
            .map_err(|e| format!("{e:#}"))
    }
}

/// The sandbox IPv4 address in an ADD result.
fn result_ip(result: &Value) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

fn tcp_udp(tcp: u16, udp: u16) -> Value {
    json!([
        {"hostPort": tcp, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": udp, "containerPort": 53, "protocol": "udp"}
    ])
}

type Outcomes = BTreeMap<String, Result<(), String>>;

fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

/// A client that sends a datagram every 20 ms from one source port until
/// dropped, as a DNS or game client keeps doing across a redeploy.
struct SteadySender {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SteadySender {
    fn start(ns: &NetNs, from: u16, to: SocketAddr) -> Self {
        let sock: UdpSocket = ns
            .run(move || UdpSocket::bind(any(from)))
            .expect("bind the steady sender");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = sock.send_to(b"tick", to);
                thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SteadySender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(what: impl Fn() -> bool, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if what() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Every case at one version; ports differ per version (`slot`) so the
/// versions run one after another on one node.
fn cases_at(node: &Node, version: &str, slot: u16) -> Outcomes {
    let mut out = Outcomes::new();
    let rt = node.runtime(version);
    let tag = version.replace('.', "");
    let (tcp, udp) = (8080 + slot, 5300 + slot);
    let topo = node.topo();

    let a_ns = NetNs::new("cnia").expect("a container namespace");
    let b_ns = NetNs::new("cnib").expect("a container namespace");
    let a = Attachment::new(&format!("a{tag}"), &a_ns, tcp_udp(tcp, udp));
    let b = Attachment::new(&format!("b{tag}"), &b_ns, json!([]));
    let _web = HttpPeerServer::start_in(&a_ns, any(80)).expect("web server");
    let _dns = UdpEchoServer::start_in(&a_ns, any(53)).expect("udp server");

    let added = rt.add(&a).map_err(|e| e.to_string());
    let b_added = rt.add(&b).map_err(|e| e.to_string());
    thread::sleep(VETH_POLL);
    out.insert(
        "add".into(),
        match (&added, &b_added) {
            (Ok(r), Ok(_)) => check(
                r["cniVersion"] == version && !result_ip(r).is_empty(),
                || format!("result {r}"),
            ),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        },
    );
    let (Ok(result), Ok(b_result)) = (added, b_added) else {
        return out;
    };

    out.insert(
        "client reaches hostIP:hostPort with its own address".into(),
        node.client_get(tcp).and_then(|body| {
            check(peer_ip(&body) == CLIENT_IP, || {
                format!("the server saw {body}")
            })
        }),
    );
    let target: SocketAddr = format!("{HOST_IP}:{udp}").parse().unwrap();
    out.insert(
        "client reaches hostIP:hostPort/udp".into(),
        topo.client
            .ns
            .run(move || udp_request(target, "hi", REQUEST_TIMEOUT))
            .map_err(|e| format!("{e:#}"))
            .and_then(|r| {
                check(
                    r.from == target && r.text.starts_with(&format!("{CLIENT_IP}:")),
                    || format!("{r:?}"),
                )
            }),
    );
    out.insert(
        "host reaches 127.0.0.1:hostPort".into(),
        node.host_get(tcp).map(drop),
    );
    let b_ip = result_ip(&b_result);
    out.insert(
        "container reaches hostIP:hostPort (hairpin)".into(),
        node.get_in(&b_ns, &format!("{HOST_IP}:{tcp}")).map(drop),
    );
    out.insert(
        HAIRPIN_ADDRESS.into(),
        node.get_in(&b_ns, &format!("{HOST_IP}:{tcp}"))
            .and_then(|body| {
                check(peer_ip(&body) == b_ip, || {
                    format!("the server saw {body}, the caller is {b_ip}")
                })
            }),
    );
    out.insert(
        "a container reaches its own hostIP:hostPort".into(),
        node.get_in(&a_ns, &format!("{HOST_IP}:{tcp}")).map(drop),
    );
    if version >= "0.4.0" {
        out.insert(
            CHECK_PASSES.into(),
            rt.check(&a, &result).map_err(|e| e.to_string()),
        );
    }
    out.insert(
        "DEL unpublishes".into(),
        rt.del(&a, Some(&result))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                check(node.client_get(tcp).is_err(), || {
                    "the port still answers after DEL".into()
                })
            }),
    );
    out.insert(
        "DEL twice succeeds".into(),
        rt.del(&a, None).map_err(|e| e.to_string()),
    );
    let _ = rt.del(&b, Some(&b_result));

    let (refused, del_after) = refused_add(node, &rt, &format!("z{tag}"), tcp);
    out.insert(
        "ADD with hostPort 0 fails and publishes nothing".into(),
        refused,
    );
    out.insert(DEL_AFTER_REFUSAL.into(), del_after);
    out.insert(
        "a replacement container gets a steady UDP client's traffic".into(),
        stale_udp(node, &rt, &tag, 6000 + slot, 41000 + slot),
    );
    out
}

/// An ADD asking for host port 0 (portmap refuses it: "Invalid host port
/// number: 0"; Kubernetes drops such entries before CNI) must fail, and
/// its container's own port must stay unpublished; then the runtime's DEL
/// must clean up. The outcomes of the ADD and of that DEL.
fn refused_add(
    node: &Node,
    rt: &CniRuntime,
    id: &str,
    port: u16,
) -> (Result<(), String>, Result<(), String>) {
    let ns = NetNs::new("cnie").expect("a container namespace");
    let _web = HttpPeerServer::start_in(&ns, any(80)).expect("web server");
    let att = Attachment::new(
        id,
        &ns,
        json!([
            {"hostPort": port, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 0, "containerPort": 81, "protocol": "tcp"}
        ]),
    );
    let added = rt.add(&att);
    thread::sleep(VETH_POLL);
    let refused = match added {
        Ok(r) => Err(format!("ADD succeeded: {r}")),
        Err(err) => check(
            err.code.is_some() && err.msg.contains("host port number: 0"),
            || format!("not one clear error: {err}"),
        )
        .and_then(|()| {
            check(node.client_get(port).is_err(), || {
                format!("{port} answers after a refused ADD")
            })
        }),
    };
    (refused, rt.del(&att, None).map_err(|e| e.to_string()))
}

/// Container one serves `port`/udp to a client that keeps sending from one
/// source port; DEL removes it and ADD brings container two on the same host
/// port: the client's next datagrams must reach container two (the stale
/// conntrack entry Docker and old portmap users hit).
fn stale_udp(node: &Node, rt: &CniRuntime, tag: &str, port: u16, from: u16) -> Result<(), String> {
    let topo = node.topo();
    let client: SocketAddr = format!("{CLIENT_IP}:{from}").parse().unwrap();
    let mapping = json!([{"hostPort": port, "containerPort": 53, "protocol": "udp"}]);
    let one_ns = NetNs::new("cnic").expect("a container namespace");
    let two_ns = NetNs::new("cnid").expect("a container namespace");
    let one = Attachment::new(&format!("c{tag}"), &one_ns, mapping.clone());
    let two = Attachment::new(&format!("d{tag}"), &two_ns, mapping);
    let echo_one = UdpEchoServer::start_in(&one_ns, any(53)).expect("udp server");
    let echo_two = UdpEchoServer::start_in(&two_ns, any(53)).expect("udp server");

    let r1 = rt.add(&one).map_err(|e| e.to_string())?;
    thread::sleep(VETH_POLL);
    let target: SocketAddr = format!("{HOST_IP}:{port}").parse().unwrap();
    let _sender = SteadySender::start(&topo.client.ns, from, target);
    if !wait_for(
        || echo_one.peers().contains(&client),
        Duration::from_secs(5),
    ) {
        return Err(format!(
            "container one never heard {client}: {:?}",
            echo_one.peers()
        ));
    }
    rt.del(&one, Some(&r1)).map_err(|e| e.to_string())?;
    // Let the client's flow outlive its container for a while.
    thread::sleep(Duration::from_millis(500));
    let r2 = rt.add(&two).map_err(|e| e.to_string())?;
    let heard = wait_for(
        || echo_two.peers().contains(&client),
        Duration::from_secs(5),
    );
    let _ = rt.del(&two, Some(&r2));
    check(heard, || {
        format!("container two never heard {client} within 5 s after its ADD")
    })
}

fn run_all(backend: Backend) -> Outcomes {
    let node = Node::start(backend);
    let mut all = Outcomes::new();
    for (slot, version) in SHARED_VERSIONS.iter().enumerate() {
        for (case, outcome) in cases_at(&node, version, slot as u16) {
            all.insert(format!("{version} {case}"), outcome);
        }
    }
    all
}

#[test]
fn berth_cni_passes_every_case_portmap_passes() {
    let (reference, berth) = thread::scope(|s| {
        let reference = s.spawn(|| run_all(Backend::Portmap));
        let berth = s.spawn(|| run_all(Backend::Berth));
        (reference.join().unwrap(), berth.join().unwrap())
    });
    let mut table = String::new();
    for (case, outcome) in &berth {
        let r = reference.get(case);
        table.push_str(&format!(
            "{case}: portmap {} | berth-cni {}\n",
            r.map_or("-".into(), |r| r
                .clone()
                .err()
                .map_or("ok".into(), |e| format!("FAIL {e}"))),
            outcome
                .clone()
                .err()
                .map_or("ok".into(), |e| format!("FAIL {e}"))
        ));
    }
    eprintln!("{table}");
    assert_eq!(
        berth.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "the same cases on both"
    );
    for (case, outcome) in &berth {
        assert!(outcome.is_ok(), "berth-cni fails {case}:\n{table}");
    }
    // The comparison means something only while the reference works here:
    // it passes everything but three cases. portmap masquerades hairpin
    // traffic to the bridge's address; 1.1.1's CHECK also looks for the
    // IPv6 DNAT chain whenever ip6tables works, which its ADD made only for
    // an IPv6 address ("could not check ipv6 dnat: chain … not found"); and
    // its DEL parses the port mappings as its ADD does, so the DEL after a
    // refused ADD fails too, and the chain's DEL never reaches the bridge
    // (the container's lease and veth stay).
    let known = [HAIRPIN_ADDRESS, CHECK_PASSES, DEL_AFTER_REFUSAL];
    for (case, outcome) in &reference {
        if !known.iter().any(|k| case.ends_with(k)) {
            assert!(
                outcome.is_ok(),
                "the reference portmap fails {case}:\n{table}"
            );
        }
    }
}

/// Runs only `ty` of the runtime's list (the others' work is in `prev`).
fn exec_only(
    rt: &CniRuntime,
    ty: &str,
    command: &str,
    att: &Attachment,
    prev: &Value,
) -> Result<Option<Value>, Box<berth_integration::cni::PluginError>> {
    let plugin = json!({"type": ty, "capabilities": {"portMappings": true}});
    let mut req = json!({
        "cniVersion": rt.version(),
        "name": NETWORK,
        "type": ty,
        "runtimeConfig": {"portMappings": att.port_mappings},
        "prevResult": prev,
    });
    if ty == "berth-cni" {
        req["socket"] = json!(rt.socket());
    }
    rt.exec(&plugin, command, Some(att), &req)
}

#[test]
fn a_taken_host_port_or_a_second_add_fails_add_and_changes_nothing() {
    let node = Node::start(Backend::Berth);
    let bridge = || {
        let v = node.rig().json(&["status", "--json"]);
        v["datapath"]["bridges"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == "cni0").cloned())
            .unwrap_or_else(|| panic!("no cni0 in {v}"))
    };
    // The daemon started first; the bridge plugin makes cni0 on the first ADD.
    node.topo().host.ns.link("cni0").expect_err("no cni0 yet");
    assert_eq!(bridge()["state"], "waiting", "{}", bridge());
    let rt = node.runtime("1.0.0");
    let x_ns = NetNs::new("cnix").unwrap();
    let y_ns = NetNs::new("cniy").unwrap();
    let _web = HttpPeerServer::start_in(&x_ns, any(80)).unwrap();
    let x = Attachment::new(
        "xxx1",
        &x_ns,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    let x_result = rt.add(&x).expect("ADD x");
    thread::sleep(VETH_POLL);
    assert_eq!(bridge()["state"], "attached", "{}", bridge());

    let y = Attachment::new(
        "yyy1",
        &y_ns,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    let err = rt.add(&y).expect_err("8080 is x's");
    assert_eq!((err.plugin.as_str(), err.code), ("berth-cni", Some(100)));
    assert_eq!(
        err.msg,
        "Bind for 0.0.0.0:8080 failed: port is already allocated"
    );
    // As a runtime does after a failed ADD.
    rt.del(&y, None).expect("DEL after a failed ADD");

    // A host process on the port: refused in Docker's words too.
    let _squatter = node
        .topo()
        .host
        .ns
        .run(|| std::net::TcpListener::bind(any(9090)))
        .unwrap();
    let z = Attachment::new(
        "yyy1",
        &y_ns,
        json!([{"hostPort": 9090, "containerPort": 80}]),
    );
    let err = rt.add(&z).expect_err("a host process holds 9090");
    assert_eq!(err.code, Some(100));
    assert!(
        err.msg
            .contains("0.0.0.0:9090: bind: address already in use"),
        "{err}"
    );
    rt.del(&z, None).expect("DEL after a failed ADD");

    // The same attachment twice: the bridge plugin refuses (eth0 exists),
    // and so does berth-cni on its own.
    let err = exec_only(&rt, "berth-cni", "ADD", &x, &x_result).expect_err("ADD twice");
    assert_eq!(err.code, Some(100));
    assert_eq!(
        err.msg,
        "container xxx1 interface eth0 on network kube already has port mappings in berth: ADD without a DEL before it"
    );

    let tasks: Vec<String> = node
        .rig()
        .bindings()
        .iter()
        .map(|b| format!("{} {}", b["task"], b["hostPort"]))
        .collect();
    assert_eq!(tasks, ["\"xxx1\" 8080"]);
    let body = node.client_get(8080).expect("x still serves 8080");
    assert_eq!(peer_ip(&body), CLIENT_IP);
    rt.del(&x, Some(&x_result)).unwrap();
}

#[test]
fn del_waits_for_the_daemon_and_works_after_its_restart() {
    let mut node = Node::start(Backend::Berth);
    let rt = node.runtime("1.0.0");
    let status_rt = node.runtime("1.1.0");
    let ns = NetNs::new("cnir").unwrap();
    let _web = HttpPeerServer::start_in(&ns, any(80)).unwrap();
    let mut att = Attachment::new(
        "rrr1",
        &ns,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    att.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0".into();
    let result = rt.add(&att).expect("ADD");
    thread::sleep(VETH_POLL);

    let table = node.rig().berth(&["map", "ls"]);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(table.lines().next().unwrap().ends_with("POD"), "{table}");
    assert!(
        row.starts_with("rrr1 ") && row.ends_with("shop/web-0"),
        "{table}"
    );
    let berth_status = |rt: &CniRuntime| rt.status().into_iter().find(|e| e.plugin == "berth-cni");
    assert!(
        berth_status(&status_rt).is_none(),
        "STATUS with the daemon up"
    );

    node.rig.as_mut().unwrap().daemon.stop().unwrap();
    let down = berth_status(&status_rt).expect("STATUS fails with the daemon down");
    assert_eq!(down.code, Some(50), "{down}");
    assert!(down.msg.contains("cannot reach the berth daemon"), "{down}");
    let err = rt
        .del(&att, Some(&result))
        .expect_err("DEL needs the daemon");
    assert_eq!((err.plugin.as_str(), err.code), ("berth-cni", Some(11)));
    // Nothing was lost: the datapath keeps forwarding meanwhile.
    node.client_get(8080)
        .expect("still published while the daemon is down");

    node.rig.as_mut().unwrap().daemon.start_again().unwrap();
    rt.del(&att, Some(&result)).expect("DEL after the restart");
    assert!(node.rig().bindings().is_empty());
    node.client_get(8080).expect_err("unpublished");
    rt.del(&att, None)
        .expect("DEL of what the daemon no longer knows");
}

#[test]
fn gc_removes_the_attachments_the_runtime_no_longer_lists() {
    let node = Node::start(Backend::Berth);
    let rt = node.runtime("1.0.0");
    let gc_rt = node.runtime("1.1.0");
    let live_ns = NetNs::new("cnil").unwrap();
    let gone_ns = NetNs::new("cnig").unwrap();
    let _live_web = HttpPeerServer::start_in(&live_ns, any(80)).unwrap();
    let _gone_web = HttpPeerServer::start_in(&gone_ns, any(80)).unwrap();
    let live = Attachment::new(
        "live1",
        &live_ns,
        json!([{"hostPort": 8081, "containerPort": 80}]),
    );
    let gone = Attachment::new(
        "gone1",
        &gone_ns,
        json!([{"hostPort": 8082, "containerPort": 80}]),
    );
    rt.add(&live).unwrap();
    rt.add(&gone).unwrap();
    thread::sleep(VETH_POLL);
    node.client_get(8082).expect("published before GC");

    let errors = gc_rt.gc(&[("live1", "eth0")]);
    // Debian's bridge (CNI up to 1.0.0) has no GC; berth-cni's succeeds.
    let failed: Vec<&str> = errors.iter().map(|e| e.plugin.as_str()).collect();
    assert_eq!(failed, ["bridge"], "{errors:?}");
    let tasks: Vec<Value> = node
        .rig()
        .bindings()
        .iter()
        .map(|b| b["task"].clone())
        .collect();
    assert_eq!(tasks, [json!("live1")]);
    node.client_get(8081).expect("a listed attachment stays");
    node.client_get(8082).expect_err("an unlisted one is gone");
}

#[test]
fn the_reference_portmap_has_no_gc_or_status() {
    let host = NetNs::new("cnihost").unwrap();
    let rt = CniRuntime::new(
        &host,
        bridge_conflist(NETWORK, "1.1.0", SUBNET, "portmap", json!({})),
    )
    .unwrap();
    // Debian's 1.1.1 knows neither verb: its skel asks for CNI_CONTAINERID
    // ("missing containerID"), so the reference has no case to compare.
    for errors in [rt.gc(&[]), rt.status()] {
        assert!(
            errors.iter().any(|e| e.plugin == "portmap"),
            "Debian's portmap would answer GC/STATUS: {errors:?}"
        );
    }
}
