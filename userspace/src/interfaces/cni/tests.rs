//! berth-cni end to end in one process: the plugin's `run` against the
//! real API router and registry over a Unix socket, on the in-memory
//! datapath. What the runtime sees (stdout, exit) and what berth holds.
use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

use serde_json::{json, Value};

use super::*;
use crate::{
    adapters::store::Store,
    domain::cidr::Ipv4Cidr,
    domain::spec::PortRange,
    engine::allocator::PortPolicy,
    engine::datapath::Datapath as _,
    engine::fake::{FakeDatapath, FakeHost},
    engine::registry::{Berth, Bridge, Registry},
    interfaces::api::router,
};

/// A daemon on a socket in a temp dir, served from its own thread.
struct Daemon {
    dir: tempfile::TempDir,
    datapath: Arc<FakeDatapath>,
    berth: Berth,
    rt: tokio::runtime::Runtime,
}

impl Daemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let datapath = Arc::new(FakeDatapath::default());
        let bridge = Bridge::Fixed {
            name: "cni0".into(),
            subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(10, 88, 0, 1), 16)],
        };
        let store = Store::open(&dir.path().join("state")).unwrap();
        let policy = PortPolicy::new(PortRange {
            start: 49153,
            end: 49162,
        });
        let registry = Registry::open(
            store,
            datapath.clone(),
            bridge,
            Arc::new(FakeHost::default()),
            policy,
        )
        .unwrap();
        let berth = Berth::new(registry);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(dir.path().join("berth.sock")).unwrap()
        };
        let app = router(berth.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Self {
            dir,
            datapath,
            berth,
            rt,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("berth.sock")
    }

    fn bindings(&self) -> Vec<crate::domain::model::Binding> {
        self.rt.block_on(self.berth.bindings())
    }
}

const CONTAINER: &str = "f00dcafe01";

fn prev_result(ip: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
            {"name": "veth0abc", "mac": "aa:bb:cc:00:00:02"},
            {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/run/netns/c1"}
        ],
        "ips": [{"address": format!("{ip}/16"), "gateway": "10.88.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn conf(socket: &std::path::Path, version: &str, mappings: Value, prev: Option<Value>) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": "kube",
        "type": "berth-cni",
        "socket": socket,
        "runtimeConfig": {"portMappings": mappings},
    });
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    c
}

fn web() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}
    ])
}

fn invoke(command: &str, container: &str, stdin: &Value) -> Outcome {
    let vars = [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container.to_owned()),
        ("CNI_NETNS", "/run/netns/c1".to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/usr/lib/cni".to_owned()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0".to_owned(),
        ),
    ];
    let stdin = stdin.to_string().into_bytes();
    run(
        |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
        move || Ok(stdin),
    )
}

fn error_of(out: &Outcome) -> (u64, String) {
    assert!(!out.ok, "must fail: {}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    (
        v["code"].as_u64().unwrap(),
        v["msg"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn version_lists_every_supported_version() {
    let out = run(
        |k| (k == "CNI_COMMAND").then(|| "VERSION".to_owned()),
        || panic!("VERSION reads no stdin"),
    );
    assert!(out.ok);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"cniVersion": "1.1.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn add_publishes_under_the_container_id_and_passes_the_result_on() {
    let d = Daemon::start();
    for version in ["0.3.1", "1.0.0"] {
        let prev = result::convert(&prev_result("10.88.0.5"), version);
        let out = invoke(
            "ADD",
            CONTAINER,
            &conf(&d.socket(), version, web(), Some(prev.clone())),
        );
        assert!(out.ok, "{}", out.stdout);
        let printed: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(printed, prev, "the result passes through in {version}");
        let bindings = d.bindings();
        assert_eq!(bindings.len(), 2);
        for b in &bindings {
            assert_eq!(b.task, CONTAINER);
            assert_eq!(b.container_ip, Ipv4Addr::new(10, 88, 0, 5));
            let att = b.cni.as_ref().unwrap();
            assert_eq!(
                (att.network.as_str(), att.ifname.as_str()),
                ("kube", "eth0")
            );
            assert_eq!(att.pod().as_deref(), Some("shop/web-0"));
            assert!(d.datapath.publishes(b).unwrap());
        }
        let del = conf(&d.socket(), version, web(), Some(prev));
        assert!(invoke("DEL", CONTAINER, &del).ok);
        assert!(d.bindings().is_empty());
    }
}

#[test]
fn add_without_port_mappings_only_passes_the_result_on() {
    // No daemon at all: nothing to publish needs none.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = invoke(
        "ADD",
        CONTAINER,
        &conf(&sock, "1.0.0", json!([]), Some(prev_result("10.88.0.5"))),
    );
    assert!(out.ok, "{}", out.stdout);
    assert!(invoke("DEL", CONTAINER, &conf(&sock, "1.0.0", json!([]), None)).ok);
}

#[test]
fn a_second_add_of_one_attachment_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.0.0", web(), Some(prev_result("10.88.0.5")));
    assert!(invoke("ADD", CONTAINER, &c).ok);
    let before = d.bindings();
    let (code, msg) = error_of(&invoke("ADD", CONTAINER, &c));
    assert_eq!(code, 100);
    assert_eq!(msg, "container f00dcafe01 interface eth0 on network kube already has port mappings in berth: ADD without a DEL before it");
    assert_eq!(d.bindings(), before);
}

#[test]
fn a_taken_host_port_fails_add_in_dockers_words() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.0.0", web(), Some(prev_result("10.88.0.5")));
    assert!(invoke("ADD", CONTAINER, &c).ok);
    let other = conf(
        &d.socket(),
        "1.0.0",
        json!([{"hostPort": 8080, "containerPort": 8000, "protocol": "tcp"}]),
        Some(prev_result("10.88.0.6")),
    );
    let (code, msg) = error_of(&invoke("ADD", "beef02", &other));
    assert_eq!(code, 100);
    assert_eq!(
        msg,
        "Bind for 0.0.0.0:8080 failed: port is already allocated"
    );
    assert!(d.bindings().iter().all(|b| b.task == CONTAINER));
}

#[test]
fn del_is_idempotent_and_knows_nothing_is_success() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.0.0", web(), Some(prev_result("10.88.0.5")));
    // Never added; then added, deleted twice; DEL without prevResult too.
    assert!(invoke("DEL", CONTAINER, &c).ok);
    assert!(invoke("ADD", CONTAINER, &c).ok);
    let bare = conf(&d.socket(), "1.0.0", web(), None);
    for _ in 0..2 {
        let out = invoke("DEL", CONTAINER, &bare);
        assert!(out.ok, "{}", out.stdout);
        assert_eq!(out.stdout, "");
        assert!(d.bindings().is_empty());
    }
}

#[test]
fn del_removes_the_attachment_even_when_its_config_lost_the_mappings() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.0.0", web(), Some(prev_result("10.88.0.5")));
    assert!(invoke("ADD", CONTAINER, &c).ok);
    let out = invoke(
        "DEL",
        CONTAINER,
        &conf(&d.socket(), "1.0.0", json!([]), None),
    );
    assert!(out.ok, "{}", out.stdout);
    assert!(d.bindings().is_empty());
}

#[test]
fn del_with_the_daemon_unreachable_asks_the_runtime_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(&dir.path().join("gone.sock"), "1.0.0", web(), None);
    let (code, msg) = error_of(&invoke("DEL", CONTAINER, &c));
    assert_eq!(code, 11);
    assert!(
        msg.starts_with("cannot reach the berth daemon at "),
        "{msg}"
    );
}

#[test]
fn check_passes_while_published_and_fails_when_the_datapath_lost_it() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.0.0", web(), Some(prev_result("10.88.0.5")));
    assert!(invoke("ADD", CONTAINER, &c).ok);
    let out = invoke("CHECK", CONTAINER, &c);
    assert!(out.ok, "{}", out.stdout);
    let lost = d
        .bindings()
        .into_iter()
        .find(|b| b.host_port == 5353)
        .unwrap();
    d.datapath.remove(&lost).unwrap();
    let (code, msg) = error_of(&invoke("CHECK", CONTAINER, &c));
    assert_eq!(code, 101);
    assert_eq!(msg, "port mapping 192.0.2.1:5353:53/udp -> 10.88.0.5 is in berth's store but not in its datapath");
    // Another container's CHECK finds nothing of its own.
    let (code, msg) = error_of(&invoke("CHECK", "beef02", &c));
    assert_eq!(code, 101);
    assert!(
        msg.ends_with("of container beef02 is not published by berth"),
        "{msg}"
    );
    // CHECK needs 0.4.0.
    let old = conf(&d.socket(), "0.3.1", web(), Some(prev_result("10.88.0.5")));
    assert_eq!(error_of(&invoke("CHECK", CONTAINER, &old)).0, 1);
}

#[test]
fn gc_removes_only_this_networks_unlisted_attachments() {
    let d = Daemon::start();
    let one = |port: u16| json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]);
    for (id, port, ip) in [("aaa1", 8001, "10.88.0.11"), ("bbb2", 8002, "10.88.0.12")] {
        let c = conf(&d.socket(), "1.1.0", one(port), Some(prev_result(ip)));
        assert!(invoke("ADD", id, &c).ok);
    }
    let mut elsewhere = conf(
        &d.socket(),
        "1.1.0",
        one(8003),
        Some(prev_result("10.88.0.13")),
    );
    elsewhere["name"] = json!("other-net");
    assert!(invoke("ADD", "ccc3", &elsewhere).ok);
    d.rt.block_on(d.berth.add(
        "by-hand".into(),
        Ipv4Addr::new(10, 88, 0, 14),
        crate::domain::task::parse_specs(&["8004:80"]).unwrap(),
    ))
    .unwrap();

    let mut gc = conf(&d.socket(), "1.1.0", json!([]), None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "aaa1", "ifname": "eth0"}]);
    let out = invoke("GC", "", &gc);
    assert!(out.ok, "{}", out.stdout);
    let mut tasks: Vec<String> = d.bindings().into_iter().map(|b| b.task).collect();
    tasks.sort();
    assert_eq!(tasks, ["aaa1", "by-hand", "ccc3"]);

    let mut bare = conf(&d.socket(), "1.1.0", json!([]), None);
    bare.as_object_mut().unwrap().remove("runtimeConfig");
    let (code, msg) = error_of(&invoke("GC", "", &bare));
    assert_eq!(code, 7);
    assert_eq!(msg, "GC without cni.dev/valid-attachments: nothing removed");
    assert_eq!(d.bindings().len(), 3);
    // GC needs 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(error_of(&invoke("GC", "", &old)).0, 1);
}

#[test]
fn status_is_code_50_while_the_daemon_is_unreachable() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.1.0", json!([]), None);
    let out = invoke("STATUS", "", &c);
    assert!(out.ok, "{}", out.stdout);
    let dir = tempfile::tempdir().unwrap();
    let gone = conf(&dir.path().join("gone.sock"), "1.1.0", json!([]), None);
    let (code, msg) = error_of(&invoke("STATUS", "", &gone));
    assert_eq!(code, 50);
    assert!(
        msg.starts_with("berth-cni cannot publish ports: cannot reach the berth daemon"),
        "{msg}"
    );
}

#[test]
fn bad_config_is_one_error_and_changes_nothing() {
    let d = Daemon::start();
    let prev = Some(prev_result("10.88.0.5"));
    for (c, want) in [
        (conf(&d.socket(), "1.0.0", web(), None), "must be called as a chained plugin: prevResult missing"),
        (
            conf(&d.socket(), "1.0.0", json!([{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]), prev.clone()),
            "invalid host port number: 0",
        ),
        (
            conf(&d.socket(), "1.0.0", json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]), prev),
            "port mapping 80:80: unsupported protocol \"sctp\"; berth publishes tcp and udp",
        ),
        (
            conf(&d.socket(), "1.0.0", web(), Some(json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}]}))),
            "prevResult has no IPv4 address on the sandbox interface eth0; berth publishes IPv4 only",
        ),
    ] {
        let (code, msg) = error_of(&invoke("ADD", CONTAINER, &c));
        assert_eq!((code, msg.as_str()), (7, want));
    }
    // A container outside the bridge's subnet: berth's own refusal.
    let outside = conf(
        &d.socket(),
        "1.0.0",
        web(),
        Some(prev_result("192.168.9.9")),
    );
    let (code, msg) = error_of(&invoke("ADD", CONTAINER, &outside));
    assert_eq!(code, 100);
    assert!(
        msg.starts_with("container IP 192.168.9.9 is not in the subnet of bridge cni0"),
        "{msg}"
    );
    assert!(d.bindings().is_empty());
}

#[test]
fn a_cni_task_is_the_runtimes() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "1.0.0", web(), Some(prev_result("10.88.0.5")));
    assert!(invoke("ADD", CONTAINER, &c).ok);
    let err =
        d.rt.block_on(d.berth.add(
            CONTAINER.into(),
            Ipv4Addr::new(10, 88, 0, 5),
            crate::domain::task::parse_specs(&["9090:90"]).unwrap(),
        ))
        .unwrap_err();
    assert_eq!(err.to_string(), format!("task {CONTAINER} belongs to a CNI attachment; the runtime removes it (CNI DEL), or `berth map rm --task {CONTAINER}`"));
    // And a task made by hand is not taken over by an ADD of that name.
    d.rt.block_on(d.berth.add(
        "hand01".into(),
        Ipv4Addr::new(10, 88, 0, 7),
        crate::domain::task::parse_specs(&["9091:90"]).unwrap(),
    ))
    .unwrap();
    let mine = conf(
        &d.socket(),
        "1.0.0",
        json!([{"hostPort": 9092, "containerPort": 90}]),
        Some(prev_result("10.88.0.7")),
    );
    let (code, msg) = error_of(&invoke("ADD", "hand01", &mine));
    assert_eq!(
        (code, msg.as_str()),
        (
            100,
            "task hand01 already exists and is not this CNI attachment's"
        )
    );
}

#[test]
fn errors_speak_the_requests_version() {
    let d = Daemon::start();
    let c = conf(&d.socket(), "0.4.0", web(), None);
    let out = invoke("ADD", CONTAINER, &c);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(!out.ok);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever a runtime (or an attacker with the plugin's stdin) sends,
    /// the answer is one CNI error object or a result, never a panic.
    #[test]
    fn any_stdin_gets_one_cni_answer(
        body in "[{}\\[\\]\":,a-zA-Z0-9 .]{0,200}",
        command in proptest::sample::select(vec!["ADD", "DEL", "CHECK", "GC", "STATUS"]),
    ) {
        let gone = std::env::temp_dir().join("berth-cni-proptest-none.sock");
        let with_socket = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","socket":"{}","runtimeConfig":{{"portMappings":[{}]}}}}"#,
            gone.display(),
            body
        );
        for stdin in [body, with_socket] {
            let vars = [("CNI_COMMAND", command), ("CNI_CONTAINERID", CONTAINER),
                ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")];
            let bytes = stdin.into_bytes();
            let got = run(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()), move || Ok(bytes));
            if !got.ok {
                let v: Value = serde_json::from_str(&got.stdout).expect("an error object");
                proptest::prop_assert!(v["code"].as_u64().is_some() && v["msg"].is_string(), "{}", got.stdout);
                proptest::prop_assert_eq!(got.stdout.lines().count(), 1);
            }
        }
    }
}
