//! Dynamic host ports, reserved-ports sysctl, cool-downs, task definitions
//! and events, on a fake datapath and a fake host.
use serde_json::json;

use super::*;
use crate::engine::fake::{FakeDatapath, FakeHost};
use crate::{
    adapters::store::Store,
    domain::{cidr::Ipv4Cidr, events::EventKind},
};

const T0: u64 = 1_700_000_000;

struct Env {
    dir: tempfile::TempDir,
    datapath: Arc<FakeDatapath>,
    host: Arc<FakeHost>,
    policy: PortPolicy,
    registry: Option<Registry>,
}

fn range(start: u16, end: u16) -> PortRange {
    PortRange { start, end }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn bridge() -> Bridge {
    Bridge::Fixed {
        name: "br0".into(),
        subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
    }
}

impl Env {
    /// Dynamic range `start-end`, nothing reserved, a 300 s cool-down.
    fn new(start: u16, end: u16) -> Self {
        let policy = PortPolicy {
            range: range(start, end),
            reserved: BTreeSet::new(),
            cooldown_secs: 300,
        };
        Self::with_policy(policy)
    }

    fn with_policy(policy: PortPolicy) -> Self {
        let host = Arc::new(FakeHost::default());
        host.set_now(T0);
        let mut env = Self {
            dir: tempfile::tempdir().unwrap(),
            datapath: Arc::new(FakeDatapath::default()),
            host,
            policy,
            registry: None,
        };
        env.open();
        env
    }

    fn open(&mut self) {
        let store = Store::open(self.dir.path()).unwrap();
        let mut r = Registry::open(
            store,
            self.datapath.clone(),
            bridge(),
            self.host.clone(),
            self.policy.clone(),
        )
        .unwrap();
        r.seed(7);
        r.restore().unwrap();
        r.reconcile_reserved_ports().unwrap();
        self.registry = Some(r);
    }

    /// What a daemon restart does: reload everything from the store.
    fn restart(&mut self) {
        self.registry = None;
        self.open();
    }

    fn r(&mut self) -> &mut Registry {
        self.registry.as_mut().unwrap()
    }

    fn add(&mut self, task: &str, container_ip: &str, specs: &[&str]) -> Result<Vec<Binding>> {
        let specs = parse_specs(specs).unwrap();
        self.r().add(task, ip(container_ip), &specs)
    }

    fn ports(bindings: &[Binding]) -> Vec<u16> {
        bindings.iter().map(|b| b.host_port).collect()
    }

    /// Store, memory and datapath hold the same bindings.
    fn assert_consistent(&mut self) {
        let mut mem = self.r().bindings();
        mem.sort();
        let stored = self.r().store.load_all().unwrap();
        let mut stored: Vec<Binding> = stored.tasks.into_values().flatten().collect();
        stored.sort();
        assert_eq!(mem, stored, "memory vs store");
        assert_eq!(self.datapath.bindings(), mem, "datapath");
    }
}

fn set(ports: &[u16]) -> BTreeSet<u16> {
    ports.iter().copied().collect()
}

#[test]
fn a_dynamic_spec_gets_a_port_from_the_range_and_reports_it() {
    let mut env = Env::new(49153, 49162);
    let added = env.add("web", "172.17.0.2", &["80", "53/udp"]).unwrap();
    assert_eq!(added.len(), 2);
    for b in &added {
        assert!((49153..=49162).contains(&b.host_port), "{b:?}");
    }
    assert_eq!(added[0].container_port, 80);
    assert_eq!(added[1].protocol, Protocol::Udp);
    assert_eq!(env.r().bindings(), added);
    env.assert_consistent();
}

#[test]
fn every_dynamic_form_is_accepted() {
    let mut env = Env::new(49153, 49200);
    let added = env
        .add(
            "web",
            "172.17.0.2",
            &[
                "80",
                "0:81",
                "10.0.0.1::82",
                "10.0.0.1:0:83/udp",
                "9000-9009",
            ],
        )
        .unwrap();
    assert_eq!(added.len(), 14);
    assert_eq!(added[2].bind_ip, ip("10.0.0.1"));
    assert_eq!(added[3].protocol, Protocol::Udp);
}

#[test]
fn a_range_without_host_ports_gets_a_contiguous_block_paired_in_order() {
    let mut env = Env::new(49153, 49200);
    let added = env.add("web", "172.17.0.2", &["9000-9009"]).unwrap();
    let first = added[0].host_port;
    for (i, b) in added.iter().enumerate() {
        assert_eq!(b.host_port, first + i as u16);
        assert_eq!(b.container_port, 9000 + i as u16);
    }
    assert!(first + 9 <= 49200);
}

#[test]
fn a_pool_spec_takes_the_first_free_port_of_its_range() {
    // Docker's `-p 9000-9003:80`: one host port out of 9000-9003, the first
    // that is neither mapped nor held by a socket; the pool lies outside
    // the dynamic range and ignores cool-downs.
    let mut env = Env::new(49153, 49162);
    let a = env.add("a", "172.17.0.2", &["9000-9003:80"]).unwrap();
    assert_eq!((a[0].host_port, a[0].container_port), (9000, 80));
    env.host.bind(Protocol::Tcp, 9001);
    let b = env.add("b", "172.17.0.3", &["9000-9003:80"]).unwrap();
    assert_eq!(b[0].host_port, 9002);
    env.r().remove("b", &[]).unwrap();
    let c = env.add("c", "172.17.0.4", &["9000-9003:8080"]).unwrap();
    assert_eq!(
        c[0].host_port, 9002,
        "a released port is not cooling for a pool"
    );
    // UDP is counted apart from TCP.
    let u = env.add("u", "172.17.0.5", &["9000-9003:53/udp"]).unwrap();
    assert_eq!(u[0].host_port, 9000);
    env.assert_consistent();
}

#[test]
fn a_full_pool_is_refused_and_changes_nothing() {
    let mut env = Env::new(49153, 49162);
    env.add("a", "172.17.0.2", &["9000-9001:80"]).unwrap();
    env.add("b", "172.17.0.3", &["9000-9001:80"]).unwrap();
    let before = env.r().bindings();
    let err = env.add("c", "172.17.0.4", &["9000-9001:80"]).unwrap_err();
    assert!(matches!(err, Error::PortsExhausted { .. }), "{err}");
    assert!(
        err.to_string().contains("no free host port in 9000-9001"),
        "{err}"
    );
    assert_eq!(env.r().bindings(), before);
    env.assert_consistent();
}

#[test]
fn a_pool_spec_removes_the_mapping_it_placed() {
    let mut env = Env::new(49153, 49162);
    env.add("web", "172.17.0.2", &["9000-9009:80", "7000:80"])
        .unwrap();
    let gone = env
        .r()
        .remove("web", &parse_specs(&["9000-9009:80"]).unwrap())
        .unwrap();
    assert_eq!(Env::ports(&gone), [9000]);
    assert_eq!(Env::ports(&env.r().bindings()), [7000]);
    env.r()
        .remove("web", &parse_specs(&["9000-9009:80"]).unwrap())
        .unwrap_err();
    env.assert_consistent();
}

#[test]
fn copies_get_different_ports_and_picks_spread_over_the_range() {
    let mut env = Env::new(40000, 60000);
    let mut seen = BTreeSet::new();
    for i in 0..20u8 {
        let added = env
            .add(
                &format!("copy{i}"),
                &format!("172.17.0.{}", 10 + i),
                &["80"],
            )
            .unwrap();
        assert!(seen.insert(added[0].host_port), "{seen:?}");
    }
    // Random starting points, not the first twenty ports of the range.
    assert!(seen.iter().any(|&p| p > 40100), "{seen:?}");
}

#[test]
fn dynamic_never_takes_a_port_named_statically_in_the_same_request() {
    let mut env = Env::new(49153, 49154);
    let added = env
        .add("web", "172.17.0.2", &["80", "49153:81", "82"])
        .unwrap_err();
    // Two dynamic ports do not fit in what the static one leaves.
    assert!(matches!(added, Error::PortsExhausted { .. }), "{added}");
    let added = env.add("web", "172.17.0.2", &["80", "49153:81"]).unwrap();
    assert_eq!(Env::ports(&added), [49154, 49153]);
}

#[test]
fn mapped_reserved_listening_and_cooling_ports_are_skipped() {
    let mut env = Env::with_policy(PortPolicy {
        range: range(100, 105),
        reserved: set(&[101]),
        cooldown_secs: 300,
    });
    env.add("a", "172.17.0.2", &["100:80"]).unwrap();
    env.host.bind(Protocol::Tcp, 102);
    env.add("b", "172.17.0.3", &["103:80"]).unwrap();
    env.r().remove("b", &[]).unwrap();
    // 100 mapped, 101 reserved, 102 listening, 103 cooling: 104 and 105.
    let added = env.add("c", "172.17.0.4", &["80", "81"]).unwrap();
    assert_eq!(set(&Env::ports(&added)), set(&[104, 105]));
    let err = env.add("d", "172.17.0.5", &["80"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free host port in 100-105 for 0.0.0.0/tcp (1 reserved, 4 in use, 1 cooling down)"
    );
    assert_eq!(err.http_status(), 409);
}

#[test]
fn the_same_port_is_free_for_another_protocol_or_a_disjoint_bind_ip() {
    let mut env = Env::new(100, 100);
    env.add("a", "172.17.0.2", &["10.0.0.1::80"]).unwrap();
    let udp = env.add("b", "172.17.0.3", &["80/udp"]).unwrap();
    assert_eq!(udp[0].host_port, 100);
    let other_ip = env.add("c", "172.17.0.4", &["10.0.0.2::80"]).unwrap();
    assert_eq!(other_ip[0].host_port, 100);
    // The wildcard overlaps both.
    env.add("d", "172.17.0.5", &["80"]).unwrap_err();
}

#[test]
fn exhaustion_changes_nothing_and_says_why() {
    let mut env = Env::new(49153, 49155);
    env.host.set_reserved(&[22]);
    let before = env.add("a", "172.17.0.2", &["49153:80"]).unwrap();
    let writes = env.host.writes();
    let err = env.add("b", "172.17.0.3", &["80", "81", "82"]).unwrap_err();
    // The request's own earlier picks count as in use.
    assert_eq!(
        err.to_string(),
        "no free host port in 49153-49155 for 0.0.0.0/tcp (0 reserved, 3 in use, 0 cooling down)"
    );
    let err = env.add("b", "172.17.0.3", &["9000-9002"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free block of 3 contiguous host ports in 49153-49155 for 0.0.0.0/tcp \
         (0 reserved, 1 in use, 0 cooling down)"
    );
    assert_eq!(env.r().bindings(), before);
    assert_eq!(env.host.reserved(), set(&[22, 49153]));
    assert_eq!(env.host.writes(), writes, "the sysctl was not touched");
    env.assert_consistent();
}

#[test]
fn a_released_port_cools_down_then_comes_back() {
    let mut env = Env::new(49153, 49153);
    env.add("a", "172.17.0.2", &["80"]).unwrap();
    env.r().remove("a", &[]).unwrap();
    let err = env.add("b", "172.17.0.3", &["80"]).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("(0 reserved, 0 in use, 1 cooling down)"),
        "{err}"
    );
    // A static request may still name it: the operator asked for it.
    env.add("s", "172.17.0.4", &["49153:80"]).unwrap();
    env.r().remove("s", &[]).unwrap();
    env.host.advance(299);
    env.add("b", "172.17.0.3", &["80"]).unwrap_err();
    env.host.advance(1);
    let added = env.add("b", "172.17.0.3", &["80"]).unwrap();
    assert_eq!(added[0].host_port, 49153);
}

#[test]
fn cool_downs_survive_a_restart() {
    let mut env = Env::new(49153, 49153);
    env.add("a", "172.17.0.2", &["80"]).unwrap();
    env.r().remove("a", &[]).unwrap();
    env.restart();
    env.host.advance(100);
    env.add("b", "172.17.0.3", &["80"]).unwrap_err();
    env.host.advance(200);
    env.restart();
    env.add("b", "172.17.0.3", &["80"]).unwrap();
}

#[test]
fn finished_cool_downs_are_forgotten_by_the_store() {
    let mut env = Env::new(49153, 49160);
    env.add("a", "172.17.0.2", &["80", "81"]).unwrap();
    env.r().remove("a", &[]).unwrap();
    assert_eq!(env.r().store.load_all().unwrap().cooldowns.len(), 2);
    env.host.advance(301);
    env.restart();
    assert!(env.r().store.load_all().unwrap().cooldowns.is_empty());
}

#[test]
fn zero_cool_down_reuses_at_once() {
    let mut env = Env::with_policy(PortPolicy {
        range: range(49153, 49153),
        reserved: BTreeSet::new(),
        cooldown_secs: 0,
    });
    env.add("a", "172.17.0.2", &["80"]).unwrap();
    env.r().remove("a", &[]).unwrap();
    env.add("b", "172.17.0.3", &["80"]).unwrap();
}

#[test]
fn mapped_ports_are_reserved_while_mapped_and_the_operators_stay() {
    let mut env = Env::new(49153, 49160);
    env.host.set_reserved(&[22, 8443]);
    let web = env
        .add("web", "172.17.0.2", &["8080:80", "8443:443", "80"])
        .unwrap();
    let dynamic = web[2].host_port;
    assert_eq!(env.host.reserved(), set(&[22, 8080, 8443, dynamic]));
    assert_eq!(env.r().reserved_by_berth(), &set(&[8080, dynamic]));
    env.r()
        .remove("web", &parse_specs(&["8443:443"]).unwrap())
        .unwrap();
    assert_eq!(env.host.reserved(), set(&[22, 8080, 8443, dynamic]));
    env.r().remove("web", &[]).unwrap();
    assert_eq!(env.host.reserved(), set(&[22, 8443]), "only berth's went");
    assert!(env.r().reserved_by_berth().is_empty());
}

#[test]
fn a_port_stays_reserved_until_its_last_binding_goes() {
    let mut env = Env::new(49153, 49160);
    env.add("tcp", "172.17.0.2", &["5000:5000"]).unwrap();
    env.add("udp", "172.17.0.3", &["5000:5000/udp"]).unwrap();
    env.r().remove("tcp", &[]).unwrap();
    assert_eq!(env.host.reserved(), set(&[5000]));
    env.r().remove("udp", &[]).unwrap();
    assert_eq!(env.host.reserved(), set(&[]));
}

#[test]
fn a_failed_sysctl_write_on_publish_changes_nothing() {
    let mut env = Env::new(49153, 49160);
    env.host.fail_writes(true);
    let err = env.add("web", "172.17.0.2", &["8080:80"]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("writing /proc/sys/net/ipv4/ip_local_reserved_ports: "),
        "{err}"
    );
    assert_eq!(err.http_status(), 500);
    assert!(env.r().bindings().is_empty());
    env.assert_consistent();
    assert!(env.r().store.load_all().unwrap().reserved.is_empty());
    env.host.fail_writes(false);
    env.add("web", "172.17.0.2", &["8080:80"]).unwrap();
}

#[test]
fn a_failed_sysctl_write_on_unpublish_is_repaired_at_the_next_start() {
    let mut env = Env::new(49153, 49160);
    env.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    env.host.fail_writes(true);
    env.r().remove("web", &[]).unwrap();
    assert!(env.r().bindings().is_empty());
    assert_eq!(env.host.reserved(), set(&[8080]), "could not be released");
    env.host.fail_writes(false);
    env.restart();
    assert_eq!(env.host.reserved(), set(&[]));
    assert!(env.r().reserved_by_berth().is_empty());
}

#[test]
fn start_reserves_what_is_mapped_and_releases_what_is_not() {
    let mut env = Env::new(49153, 49160);
    env.add("web", "172.17.0.2", &["8080:80", "9090:90"])
        .unwrap();
    // A reboot cleared the sysctl; the operator reserved 22 meanwhile.
    env.host.set_reserved(&[22]);
    env.restart();
    assert_eq!(env.host.reserved(), set(&[22, 8080, 9090]));
    // A store that lost task web (say, restored from a backup) but still
    // records its ports as berth's: they are released, 22 stays.
    env.r()
        .store
        .commit(&Commit {
            tasks: vec![("web".into(), vec![])],
            ..Default::default()
        })
        .unwrap();
    env.restart();
    assert_eq!(env.host.reserved(), set(&[22]));
    assert!(env.datapath.bindings().is_empty(), "stale entries removed");
}

#[test]
fn remove_by_container_port_finds_dynamic_bindings() {
    let mut env = Env::new(49153, 49200);
    let all = env
        .add("web", "172.17.0.2", &["80", "9000-9002/udp", "8443:443"])
        .unwrap();
    let gone = env
        .r()
        .remove("web", &parse_specs(&["80", "9000-9001/udp"]).unwrap())
        .unwrap();
    assert_eq!(gone, [all[0].clone(), all[1].clone(), all[2].clone()]);
    let err = env
        .r()
        .remove("web", &parse_specs(&["80"]).unwrap())
        .unwrap_err();
    assert_eq!(err.to_string(), "task web has no binding 0.0.0.0::80/tcp");
    env.assert_consistent();
}

fn task_def(v: serde_json::Value) -> TaskDefinition {
    TaskDefinition::from_value(&v).unwrap()
}

fn shop() -> TaskDefinition {
    task_def(json!({
        "family": "shop",
        "networkMode": "bridge",
        "containerDefinitions": [
            {"name": "web", "portMappings": [
                {"containerPort": 80, "hostPort": 0},
                {"containerPortRange": "8000-8002", "protocol": "tcp"}
            ]},
            {"name": "dns", "portMappings": [{"containerPort": 53, "protocol": "udp"}]},
            {"name": "log-router"}
        ]
    }))
}

fn ips(pairs: &[(&str, &str)]) -> BTreeMap<String, Ipv4Addr> {
    pairs.iter().map(|(n, i)| (n.to_string(), ip(i))).collect()
}

#[test]
fn run_task_publishes_every_container_and_reports_ecs_network_bindings() {
    let mut env = Env::new(49153, 49200);
    let record = env
        .r()
        .run_task(
            "shop-1",
            &shop(),
            &ips(&[("web", "172.17.0.2"), ("dns", "172.17.0.3")]),
        )
        .unwrap();
    let bindings = env.r().bindings();
    assert_eq!(bindings.len(), 5);
    let web80 = bindings.iter().find(|b| b.container_port == 80).unwrap();
    let range_start = bindings
        .iter()
        .find(|b| b.container_port == 8000)
        .unwrap()
        .host_port;
    let dns = bindings.iter().find(|b| b.container_port == 53).unwrap();
    assert_eq!(
        serde_json::to_value(record.without_ips()).unwrap(),
        json!({"containers": [
            {"name": "web", "networkBindings": [
                {"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": web80.host_port, "protocol": "tcp"},
                {"bindIP": "0.0.0.0", "protocol": "tcp", "containerPortRange": "8000-8002",
                 "hostPortRange": format!("{}-{}", range_start, range_start + 2)}
            ]},
            {"name": "dns", "networkBindings": [
                {"bindIP": "0.0.0.0", "containerPort": 53, "hostPort": dns.host_port, "protocol": "udp"}
            ]},
            {"name": "log-router", "networkBindings": []}
        ]})
    );
    assert_eq!(record.containers[0].container_ip, Some(ip("172.17.0.2")));
    assert_eq!(env.r().task_records(), [("shop-1".into(), record)]);
    assert_eq!(env.r().container_of(dns).as_deref(), Some("dns"));
    env.assert_consistent();
}

#[test]
fn two_copies_of_one_definition_get_their_own_ports() {
    let mut env = Env::new(49153, 49200);
    env.r()
        .run_task(
            "a",
            &shop(),
            &ips(&[("web", "172.17.0.2"), ("dns", "172.17.0.3")]),
        )
        .unwrap();
    env.r()
        .run_task(
            "b",
            &shop(),
            &ips(&[("web", "172.17.0.4"), ("dns", "172.17.0.5")]),
        )
        .unwrap();
    let mut ports: Vec<(Protocol, u16)> = env
        .r()
        .bindings()
        .iter()
        .map(|b| (b.protocol, b.host_port))
        .collect();
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n, "no port handed out twice");
    assert_eq!(n, 10);
}

#[test]
fn a_failing_task_publishes_nothing() {
    let mut env = Env::new(49153, 49155);
    let err = env
        .r()
        .run_task(
            "a",
            &shop(),
            &ips(&[("web", "172.17.0.2"), ("dns", "172.17.0.3")]),
        )
        .unwrap_err();
    // web:80 and dns:53 would fit, the 3-port block not with web:80 taken.
    assert!(matches!(err, Error::PortsExhausted { .. }), "{err}");
    assert!(env.r().bindings().is_empty());
    assert!(env.r().task_records().is_empty());
    assert!(env.host.reserved().is_empty());
    env.assert_consistent();
}

#[test]
fn task_names_are_unique_across_both_kinds() {
    let mut env = Env::new(49153, 49200);
    let def = task_def(json!({"containerDefinitions": [
        {"name": "web", "portMappings": [{"containerPort": 80}]}]}));
    let web = ips(&[("web", "172.17.0.2")]);
    env.add("manual", "172.17.0.9", &["8080:80"]).unwrap();
    env.r().run_task("ecs", &def, &web).unwrap();
    let err = env.r().run_task("ecs", &def, &web).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task ecs already exists; stop it first or choose another --name"
    );
    assert_eq!(err.http_status(), 409);
    assert!(matches!(
        env.r().run_task("manual", &def, &web),
        Err(Error::TaskExists(_))
    ));
    let err = env.add("ecs", "172.17.0.2", &["81"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task ecs was started from a task definition; stop it with `berth task stop ecs`"
    );
    assert!(matches!(
        env.r().remove("ecs", &[]),
        Err(Error::TaskFromDefinition(_))
    ));
    let err = env.r().stop_task("manual").unwrap_err();
    assert_eq!(
        err.to_string(),
        "task manual was published with `berth map add`; remove it with `berth map rm --task manual`"
    );
    assert_eq!(
        env.r().stop_task("nope").unwrap_err().to_string(),
        "no such task: nope"
    );
}

#[test]
fn stop_task_releases_everything_and_survives_restarts() {
    let mut env = Env::new(49153, 49200);
    env.r()
        .run_task(
            "a",
            &shop(),
            &ips(&[("web", "172.17.0.2"), ("dns", "172.17.0.3")]),
        )
        .unwrap();
    env.restart();
    assert_eq!(env.r().task_records().len(), 1, "records are stored");
    let (record, gone) = env.r().stop_task("a").unwrap();
    assert_eq!(record.containers.len(), 3);
    assert_eq!(gone.len(), 5);
    assert!(env.r().bindings().is_empty());
    assert!(env.r().task_records().is_empty());
    assert!(env.host.reserved().is_empty());
    env.restart();
    assert!(env.r().task_records().is_empty());
    env.assert_consistent();
}

#[test]
fn container_ips_are_checked_against_the_bridge() {
    let mut env = Env::new(49153, 49200);
    let err = env
        .r()
        .run_task(
            "a",
            &shop(),
            &ips(&[("web", "10.9.9.9"), ("dns", "172.17.0.3")]),
        )
        .unwrap_err();
    assert!(matches!(err, Error::NotInBridgeSubnet { .. }), "{err}");
}

#[test]
fn events_follow_every_change_with_container_names() {
    let mut env = Env::new(49153, 49200);
    let mut rx = env.r().subscribe();
    env.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    env.r()
        .run_task(
            "a",
            &shop(),
            &ips(&[("web", "172.17.0.4"), ("dns", "172.17.0.3")]),
        )
        .unwrap();
    env.r().remove("web", &[]).unwrap();
    env.r().stop_task("a").unwrap();
    // A refused request emits nothing.
    env.add("x", "10.9.9.9", &["80"]).unwrap_err();
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push((e.event, e.binding.task.clone(), e.container.clone()));
        assert!(e.time.ends_with('Z'));
    }
    let added_web = (EventKind::Added, "web".to_string(), None);
    assert_eq!(got.len(), 1 + 5 + 1 + 5);
    assert_eq!(got[0], added_web);
    assert_eq!(got[1].2.as_deref(), Some("web"));
    assert_eq!(got[6], (EventKind::Removed, "web".to_string(), None));
    assert!(got[7..].iter().all(|e| e.0 == EventKind::Removed));
    assert_eq!(got[11].2.as_deref(), Some("dns"));
}

mod properties {
    //! Random interleavings of allocate / release / restart / time passing
    //! / sockets appearing, against an independent model.
    use proptest::prelude::*;

    use super::*;

    const START: u16 = 40_000;
    const END: u16 = 40_015;
    const RESERVED: u16 = 40_005;
    const COOLDOWN: u64 = 30;
    /// Reserved by the operator in the sysctl: must survive everything.
    const OPERATORS: [u16; 2] = [22, 40_010];

    #[derive(Clone, Debug)]
    enum Op {
        Add {
            task: u8,
            count: u8,
            udp: bool,
            specific_ip: bool,
        },
        Remove {
            task: u8,
        },
        Restart,
        Wait(u8),
        Listen {
            port: u16,
            udp: bool,
        },
        StopListening,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..6u8, 1..4u8, any::<bool>(), any::<bool>()).prop_map(
                |(task, count, udp, specific_ip)| Op::Add { task, count, udp, specific_ip }
            ),
            3 => (0..6u8).prop_map(|task| Op::Remove { task }),
            1 => Just(Op::Restart),
            2 => (0..40u8).prop_map(Op::Wait),
            1 => (START..=END, any::<bool>()).prop_map(|(port, udp)| Op::Listen { port, udp }),
            1 => Just(Op::StopListening),
        ]
    }

    /// The model: what is held, when each port was released, what listens.
    #[derive(Default)]
    struct Model {
        held: BTreeMap<String, Vec<Binding>>,
        released: BTreeMap<(Protocol, u16), u64>,
        bound: BTreeSet<(Protocol, u16)>,
    }

    impl Model {
        fn taken(&self, protocol: Protocol, bind_ip: Ipv4Addr, port: u16, now: u64) -> bool {
            port == RESERVED
                || self.held.values().flatten().any(|b| {
                    b.protocol == protocol
                        && b.host_port == port
                        && bind_ips_overlap(b.bind_ip, bind_ip.into())
                })
                || self.bound.contains(&(protocol, port))
                || self
                    .released
                    .get(&(protocol, port))
                    .is_some_and(|&at| now < at + COOLDOWN)
        }

        fn has_block(&self, protocol: Protocol, bind_ip: Ipv4Addr, count: u16, now: u64) -> bool {
            (START..=END + 1 - count)
                .any(|s| (s..s + count).all(|p| !self.taken(protocol, bind_ip, p, now)))
        }
    }

    fn run(ops: Vec<Op>) {
        let mut env = Env::with_policy(PortPolicy {
            range: range(START, END),
            reserved: set(&[RESERVED]),
            cooldown_secs: COOLDOWN,
        });
        env.host.set_reserved(&OPERATORS);
        let mut m = Model::default();
        for op in ops {
            let now = env.host.now();
            match op {
                Op::Add {
                    task,
                    count,
                    udp,
                    specific_ip,
                } => {
                    let task = format!("t{task}");
                    let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                    let bind_ip = if specific_ip {
                        ip("10.0.0.1")
                    } else {
                        Ipv4Addr::UNSPECIFIED
                    };
                    let spec = format!(
                        "{bind_ip}::9000-{}/{}",
                        9000 + u16::from(count) - 1,
                        protocol.as_str()
                    );
                    let possible = m.has_block(protocol, bind_ip, count.into(), now);
                    match env.add(&task, "172.17.0.2", &[&spec]) {
                        Ok(added) => {
                            assert!(possible, "allocated where the model has no room");
                            let first = added[0].host_port;
                            for (i, b) in added.iter().enumerate() {
                                let p = b.host_port;
                                assert_eq!(p, first + i as u16, "contiguous");
                                assert!((START..=END).contains(&p), "in range: {p}");
                                assert!(!m.taken(protocol, bind_ip, p, now), "{p} was not free");
                            }
                            m.held.entry(task).or_default().extend(added);
                        }
                        Err(Error::PortsExhausted { .. }) => {
                            assert!(!possible, "refused although a block was free");
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                Op::Remove { task } => {
                    let task = format!("t{task}");
                    match env.r().remove(&task, &[]) {
                        Ok(gone) => {
                            assert_eq!(Some(&gone), m.held.get(&task));
                            m.held.remove(&task);
                            for b in gone {
                                m.released.insert((b.protocol, b.host_port), now);
                            }
                        }
                        Err(Error::NoSuchTask(_)) => assert!(!m.held.contains_key(&task)),
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                Op::Restart => env.restart(),
                Op::Wait(secs) => env.host.advance(secs.into()),
                Op::Listen { port, udp } => {
                    let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                    env.host.bind(protocol, port);
                    m.bound.insert((protocol, port));
                }
                Op::StopListening => {
                    env.host.unbind_all();
                    m.bound.clear();
                }
            }
            check(&mut env, &m);
        }
        // Nothing leaks: once everything is released and cooled down, the
        // whole range but the reserved port is free again.
        let tasks: Vec<String> = m.held.keys().cloned().collect();
        for task in tasks {
            env.r().remove(&task, &[]).unwrap();
        }
        env.host.unbind_all();
        env.host.advance(COOLDOWN);
        env.restart();
        let all = env
            // The big block first: only 40006-40015 holds ten.
            .add("all", "172.17.0.2", &["9005-9014", "9000-9004"])
            .unwrap();
        assert_eq!(all.len(), usize::from(END - START));
        assert_eq!(env.host.reserved().len(), OPERATORS.len() + all.len() - 1);
    }

    /// Held ports are unique per protocol and bind IP overlap, everywhere
    /// consistent, and the sysctl holds exactly them and the operator's.
    fn check(env: &mut Env, m: &Model) {
        let mut mem = env.r().bindings();
        mem.sort();
        let mut model: Vec<Binding> = m.held.values().flatten().cloned().collect();
        model.sort();
        assert_eq!(mem, model, "registry vs model");
        env.assert_consistent();
        for (i, a) in model.iter().enumerate() {
            for b in &model[i + 1..] {
                assert!(
                    !(a.protocol == b.protocol
                        && a.host_port == b.host_port
                        && bind_ips_overlap(a.bind_ip, b.bind_ip)),
                    "{a:?} and {b:?} share a port"
                );
            }
        }
        let mut want: BTreeSet<u16> = OPERATORS.into_iter().collect();
        want.extend(model.iter().map(|b| b.host_port));
        assert_eq!(env.host.reserved(), want, "reserved ports");
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            // Shrunk failures are printed; no regression files in the tree.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn allocation_never_duplicates_leaks_or_breaks_a_rule(ops in prop::collection::vec(op(), 1..40)) {
            run(ops);
        }
    }
}
