//! The registry on a fake datapath and host: publishing, removing, rollback, restart.
use super::*;
use crate::engine::fake::{FakeDatapath, FakeHost, FakeOp};
use crate::{adapters::store::Store, domain::cidr::Ipv4Cidr};

struct Fixture {
    _dir: tempfile::TempDir,
    datapath: Arc<FakeDatapath>,
    registry: Registry,
}

/// 49153-49162, the default reserved list, a 300 s cool-down.
fn policy() -> PortPolicy {
    PortPolicy::new(PortRange {
        start: 49153,
        end: 49162,
    })
}

fn open(store: Store, datapath: Arc<FakeDatapath>) -> Registry {
    Registry::open(
        store,
        datapath,
        bridge(),
        Arc::new(FakeHost::default()),
        policy(),
    )
    .unwrap()
}

fn bridge() -> Bridge {
    Bridge::Fixed {
        name: "br0".into(),
        subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    let store = Store::open(dir.path()).unwrap();
    let registry = open(store, datapath.clone());
    Fixture {
        _dir: dir,
        datapath,
        registry,
    }
}

fn specs(s: &[&str]) -> Vec<PortSpec> {
    parse_specs(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

impl Fixture {
    fn add(&mut self, task: &str, container_ip: &str, s: &[&str]) -> Result<Vec<Binding>> {
        self.registry.add(task, ip(container_ip), &specs(s))
    }
    fn stored(&self) -> Vec<Binding> {
        self.registry
            .store
            .load_all()
            .unwrap()
            .tasks
            .into_values()
            .flatten()
            .collect()
    }
    fn assert_everywhere(&self, expected: &[Binding]) {
        let mut expected = expected.to_vec();
        expected.sort();
        let mut mem = self.registry.bindings();
        mem.sort();
        let mut stored = self.stored();
        stored.sort();
        assert_eq!(mem, expected, "in memory");
        assert_eq!(stored, expected, "in the store");
        assert_eq!(self.datapath.bindings(), expected, "in the datapath");
    }
}

#[test]
fn add_publishes_to_memory_store_and_datapath() {
    let mut f = fixture();
    let added = f
        .add("web", "172.17.0.2", &["8080:80", "10.0.0.1:53:53/udp"])
        .unwrap();
    assert_eq!(
        added,
        [
            Binding::for_test("web", ip("172.17.0.2"), 8080),
            Binding {
                bind_ip: ip("10.0.0.1").into(),
                container_port: 53,
                protocol: Protocol::Udp,
                ..Binding::for_test("web", ip("172.17.0.2"), 53)
            },
        ]
    );
    f.assert_everywhere(&added);
}

#[test]
fn ranges_expand_into_one_binding_per_port() {
    let mut f = fixture();
    let added = f
        .add("web", "172.17.0.2", &["8000-8009:9000-9009"])
        .unwrap();
    assert_eq!(added.len(), 10);
    assert_eq!((added[9].host_port, added[9].container_port), (8009, 9009));
}

#[test]
fn container_ip_outside_the_bridge_subnet_is_refused() {
    let mut f = fixture();
    let err = f.add("web", "10.9.9.9", &["8080:80"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "container IP 10.9.9.9 is not in the subnet of bridge br0 (172.17.0.1/16)"
    );
    assert_eq!(err.http_status(), 400);
    f.assert_everywhere(&[]);
}

#[test]
fn bridge_without_ipv4_refuses_every_container_ip() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::Fixed {
        name: "br0".into(),
        subnets: vec![],
    };
    let store = Store::open(dir.path()).unwrap();
    let mut r = Registry::open(
        store,
        Arc::new(FakeDatapath::default()),
        bridge,
        Arc::new(FakeHost::default()),
        policy(),
    )
    .unwrap();
    let err = r
        .add("web", ip("172.17.0.2"), &specs(&["8080:80"]))
        .unwrap_err();
    assert!(matches!(err, Error::BridgeWithoutIpv4(_)), "{err}");
}

#[test]
fn same_port_on_every_address_conflicts_in_docker_words() {
    let mut f = fixture();
    let first = f.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    let err = f.add("api", "172.17.0.3", &["8080:81"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Bind for 0.0.0.0:8080 failed: port is already allocated"
    );
    assert_eq!(err.http_status(), 409);
    f.assert_everywhere(&first);
}

#[test]
fn wildcard_conflicts_with_a_specific_bind_ip_both_ways() {
    let mut f = fixture();
    f.add("a", "172.17.0.2", &["10.0.0.1:8080:80"]).unwrap();
    let err = f.add("b", "172.17.0.3", &["8080:80"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Bind for 0.0.0.0:8080 failed: port is already allocated"
    );

    let mut f = fixture();
    f.add("a", "172.17.0.2", &["8080:80"]).unwrap();
    let err = f.add("b", "172.17.0.3", &["10.0.0.1:8080:80"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Bind for 10.0.0.1:8080 failed: port is already allocated"
    );
}

#[test]
fn different_bind_ips_or_protocols_share_a_host_port() {
    let mut f = fixture();
    f.add("a", "172.17.0.2", &["10.0.0.1:8080:80"]).unwrap();
    f.add("b", "172.17.0.3", &["10.0.0.2:8080:80"]).unwrap();
    f.add("c", "172.17.0.4", &["8080:80/udp"]).unwrap();
    assert_eq!(f.registry.bindings().len(), 3);
}

#[test]
fn a_port_dockerd_holds_for_events_mode_is_published_only_when_marked_so() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::default());
    host.listen_held(Protocol::Tcp, "0.0.0.0:8080", &[dockerd()]);
    let datapath = Arc::new(FakeDatapath::default());
    let store = Store::open(dir.path()).unwrap();
    let mut r = Registry::open(store, datapath.clone(), bridge(), host.clone(), policy()).unwrap();
    r.add("web", ip("172.17.0.2"), &specs(&["8080:80"]))
        .unwrap_err();
    r.add_held_by_docker(
        "web",
        ip("172.17.0.2"),
        &specs(&["8080:80"]),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(datapath.bindings().len(), 1);
    // The exemption lasts for that one request.
    host.listen(Protocol::Tcp, "0.0.0.0:9090");
    r.add("api", ip("172.17.0.3"), &specs(&["9090:80"]))
        .unwrap_err();
}

#[test]
fn a_static_port_a_host_process_listens_on_is_refused_in_dockers_words() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::default());
    host.listen(Protocol::Tcp, "0.0.0.0:2222");
    host.listen(Protocol::Udp, "[::]:5353");
    host.listen(Protocol::Tcp, "192.0.2.1:7000");
    let datapath = Arc::new(FakeDatapath::default());
    let store = Store::open(dir.path()).unwrap();
    let mut r = Registry::open(store, datapath.clone(), bridge(), host.clone(), policy()).unwrap();
    let refused = [
        (&["8080:80", "2222:80"][..], "listen tcp4 0.0.0.0:2222"),
        (
            &["127.0.0.1:2220-2229:80-89"][..],
            "listen tcp4 127.0.0.1:2222",
        ),
        (&["5353:53/udp"][..], "listen udp4 0.0.0.0:5353"),
        (&["7000:80"][..], "listen tcp4 0.0.0.0:7000"),
        (&["192.0.2.1:7000:80"][..], "listen tcp4 192.0.2.1:7000"),
    ];
    for (spec, what) in refused {
        let err = r.add("web", ip("172.17.0.2"), &specs(spec)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Error starting userland proxy: {what}: bind: address already in use")
        );
        assert!(r.bindings().is_empty() && datapath.bindings().is_empty());
        assert!(host.reserved().is_empty(), "{spec:?} reserved a port");
    }
    // Another address, another protocol, or a dynamic port: no collision.
    r.add(
        "web",
        ip("172.17.0.2"),
        &specs(&["127.0.0.1:7000:80", "2222:80/udp", "5353:53", "80"]),
    )
    .unwrap();
    assert_eq!(r.bindings().len(), 4);
}

#[test]
fn conflicts_inside_one_request_are_refused() {
    let mut f = fixture();
    let err = f
        .add("web", "172.17.0.2", &["8000-8005:9000-9005", "8005:80"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Bind for 0.0.0.0:8005 failed: port is already allocated"
    );
    f.assert_everywhere(&[]);
}

#[test]
fn re_adding_an_identical_binding_to_the_same_task_conflicts() {
    let mut f = fixture();
    let first = f.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    let err = f.add("web", "172.17.0.2", &["8080:80"]).unwrap_err();
    assert!(matches!(err, Error::PortAllocated { .. }));
    f.assert_everywhere(&first);
}

#[test]
fn a_task_can_grow_over_several_requests() {
    let mut f = fixture();
    let mut all = f.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    all.extend(f.add("web", "172.17.0.3", &["8443:443"]).unwrap());
    f.assert_everywhere(&all);
    assert_eq!(f.registry.tasks["web"].len(), 2);
}

#[test]
fn task_names_are_checked() {
    let mut f = fixture();
    for bad in ["", "a b", "web/1", "ü", &"x".repeat(256)] {
        let err = f.add(bad, "172.17.0.2", &["8080:80"]).unwrap_err();
        assert!(matches!(err, Error::TaskName { .. }), "{bad:?}: {err}");
        assert_eq!(err.http_status(), 400);
    }
    for good in ["web", "A-b_c.1", &"x".repeat(255)] {
        validate_task_name(good).unwrap();
    }
    assert_eq!(
        validate_task_name("a b").unwrap_err().to_string(),
        "invalid task name \"a b\": only letters, digits, '_', '.' and '-' are allowed"
    );
}

#[test]
fn add_without_ports_is_refused() {
    let mut f = fixture();
    assert!(matches!(
        f.add("web", "172.17.0.2", &[]),
        Err(Error::NoPorts)
    ));
}

#[test]
fn failed_datapath_insert_rolls_back_the_inserted_ones() {
    let mut f = fixture();
    let before = f.add("db", "172.17.0.9", &["5432:5432"]).unwrap();
    f.datapath.fail_insert_of_host_port(8003);
    let err = f
        .add("web", "172.17.0.2", &["8000-8005:9000-9005"])
        .unwrap_err();
    assert!(matches!(err, Error::Datapath(_)), "{err}");
    f.assert_everywhere(&before);
    // Three went in and came out again.
    assert_eq!(f.datapath.removes(), 3);
}

#[test]
fn failed_datapath_remove_re_inserts_the_removed_ones() {
    let mut f = fixture();
    let all = f
        .add("web", "172.17.0.2", &["8000-8005:9000-9005"])
        .unwrap();
    f.datapath.fail_remove_of_host_port(8004);
    let err = f.registry.remove("web", &[]).unwrap_err();
    assert!(matches!(err, Error::Datapath(_)), "{err}");
    f.assert_everywhere(&all);
}

/// The registry applies a computed state: a failed step is undone by
/// pushing the state in memory again, and when that fails part-way too,
/// the datapath is marked diverged and the next request converges it whole
/// first (no revert path of its own to give up on).
#[test]
fn a_rollback_that_fails_part_way_is_finished_by_the_next_request() {
    let mut f = fixture();
    let web = f
        .add("web", "172.17.0.2", &["8000-8005:9000-9005"])
        .unwrap();
    // Removing the task fails at 8004, after 8000-8003 went; putting those
    // back fails at 8002.
    f.datapath.fail_remove_of_host_port(8004);
    f.datapath.fail_insert_of_host_port(8002);
    let err = f.registry.remove("web", &[]).unwrap_err();
    assert!(matches!(err, Error::Datapath(_)), "{err}");
    let ports =
        |f: &Fixture| -> Vec<u16> { f.datapath.bindings().iter().map(|b| b.host_port).collect() };
    assert_eq!(ports(&f), [8000, 8001, 8004, 8005], "stuck part-way back");
    let mut mem = f.registry.bindings();
    mem.sort();
    assert_eq!(mem, web, "the request changed nothing in memory");
    assert_eq!(f.stored().len(), 6, "nor in the store");

    f.datapath.stop_failing_bindings();
    let db = f.add("db", "172.17.0.9", &["5432:5432"]).unwrap();
    f.assert_everywhere(&[web, db].concat());
    // And the request that failed works now.
    f.registry.remove("web", &[]).unwrap();
    assert_eq!(ports(&f), [5432]);
}

#[test]
fn remove_of_listed_specs_keeps_the_rest() {
    let mut f = fixture();
    let all = f
        .add("web", "172.17.0.2", &["8080:80", "8443:443", "53:53/udp"])
        .unwrap();
    let gone = f
        .registry
        .remove("web", &specs(&["8443:443", "53:53/udp"]))
        .unwrap();
    assert_eq!(gone, all[1..]);
    f.assert_everywhere(&all[..1]);
}

#[test]
fn remove_without_specs_removes_the_whole_task() {
    let mut f = fixture();
    let all = f
        .add("web", "172.17.0.2", &["8080:80", "8443:443"])
        .unwrap();
    let other = f.add("db", "172.17.0.3", &["5432:5432"]).unwrap();
    assert_eq!(f.registry.remove("web", &[]).unwrap(), all);
    f.assert_everywhere(&other);
    assert!(!f.registry.tasks.contains_key("web"));
}

#[test]
fn remove_of_an_unknown_task_is_404() {
    let mut f = fixture();
    let err = f.registry.remove("nope", &[]).unwrap_err();
    assert_eq!(err.to_string(), "no such task: nope");
    assert_eq!(err.http_status(), 404);
}

#[test]
fn remove_of_a_spec_the_task_lacks_changes_nothing() {
    let mut f = fixture();
    let all = f
        .add("web", "172.17.0.2", &["8080:80", "8000-8001:9000-9001"])
        .unwrap();
    let err = f
        .registry
        .remove("web", &specs(&["8080:80", "8000-8002:9000-9002"]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task web has no binding 0.0.0.0:8002:9002/tcp"
    );
    f.assert_everywhere(&all);
    // The bind IP is part of the binding: 8080:80 is not 10.0.0.1:8080:80.
    let err = f
        .registry
        .remove("web", &specs(&["10.0.0.1:8080:80"]))
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchBinding { .. }));
}

#[test]
fn freed_ports_can_be_published_again() {
    let mut f = fixture();
    f.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    f.registry.remove("web", &[]).unwrap();
    f.add("api", "172.17.0.3", &["8080:80"]).unwrap();
}

#[test]
fn reopened_registry_reloads_and_restores_every_binding() {
    let dir = tempfile::tempdir().unwrap();
    let added = {
        let store = Store::open(dir.path()).unwrap();
        let mut r = open(store, Arc::new(FakeDatapath::default()));
        let mut added = r
            .add("web", ip("172.17.0.2"), &specs(&["8080:80"]))
            .unwrap();
        added.extend(
            r.add("db", ip("172.17.0.3"), &specs(&["5432:5432"]))
                .unwrap(),
        );
        r.add("gone", ip("172.17.0.4"), &specs(&["9999:9999"]))
            .unwrap();
        r.remove("gone", &[]).unwrap();
        added
    };
    let store = Store::open(dir.path()).unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    let r = open(store, datapath.clone());
    let mut expected = added;
    expected.sort();
    assert_eq!(r.restore().unwrap(), 2);
    assert_eq!(datapath.bindings(), expected);
    // Restoring again changes nothing (inserts are idempotent).
    r.restore().unwrap();
    assert_eq!(datapath.bindings(), expected);
}

#[test]
fn restore_failure_names_the_binding() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path())
        .unwrap()
        .put_task("web", &[Binding::for_test("web", ip("172.17.0.2"), 8080)])
        .unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    datapath.fail_insert_of_host_port(8080);
    let r = open(Store::open(dir.path()).unwrap(), datapath);
    let err = r.restore().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("restoring web 0.0.0.0:8080/tcp -> 172.17.0.2:80: "),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_requests_for_one_port_admit_exactly_one() {
    let f = fixture();
    let berth = Berth::new(f.registry);
    let mut handles = Vec::new();
    for i in 0..8u8 {
        let berth = berth.clone();
        handles.push(tokio::spawn(async move {
            berth
                .add(
                    format!("t{i}"),
                    Ipv4Addr::new(172, 17, 0, 10 + i),
                    specs(&["8080:80"]),
                )
                .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(err) => assert!(matches!(err, Error::PortAllocated { .. }), "{err}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(berth.bindings().await.len(), 1);
    assert_eq!(f.datapath.bindings().len(), 1);
}
#[test]
fn requests_are_bounded_before_they_are_expanded() {
    let mut f = fixture();
    f.registry.set_port_limits(PortLimits {
        per_request: 100,
        per_task: 150,
    });
    // A whole port space in one spec is refused from its size alone.
    let err = f
        .add("web", "172.17.0.2", &["1-65535:1-65535"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "this request names 65535 ports; the daemon allows at most 100 per request \
         (berth daemon --max-ports-per-request)"
    );
    assert_eq!(err.http_status(), 400);
    let err = f
        .add("web", "172.17.0.2", &["1000-1050:1000-1050", "2000-2049"])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyPortsInRequest {
                count: 101,
                max: 100
            }
        ),
        "{err}"
    );
    f.add("web", "172.17.0.2", &["1000-1099:1000-1099"])
        .unwrap();
    let err = f
        .add("web", "172.17.0.2", &["2000-2050:2000-2050"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task web would have 151 ports; the daemon allows at most 150 per task \
         (berth daemon --max-ports-per-task)"
    );
    assert_eq!(err.http_status(), 409);
    f.add("web", "172.17.0.2", &["2000-2049:2000-2049"])
        .unwrap();
    // Removal specs count too; the task's own size does not.
    let err = f
        .registry
        .remove("web", &specs(&["1-65535:1-65535"]))
        .unwrap_err();
    assert!(matches!(err, Error::TooManyPortsInRequest { .. }), "{err}");
    assert_eq!(f.registry.bindings().len(), 150, "refusals change nothing");
    assert_eq!(f.registry.remove("web", &[]).unwrap().len(), 150);
}

#[test]
fn a_task_definition_is_bounded_before_it_is_expanded() {
    let mut f = fixture();
    f.registry.set_port_limits(PortLimits {
        per_request: 10,
        per_task: 10,
    });
    let def = TaskDefinition::from_value(&serde_json::json!({"containerDefinitions": [
        {"name": "web", "portMappings": [{"containerPortRange": "1-60000"}]}
    ]}))
    .unwrap();
    let ips = [("web".to_owned(), ip("172.17.0.2"))].into();
    let err = f.registry.run_task("t", &def, &ips).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyPortsInRequest {
                count: 60000,
                max: 10
            }
        ),
        "{err}"
    );
    assert!(f.datapath.bindings().is_empty());
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// Publishes through the async front, as the API does.
async fn publish(berth: &Berth, task: &str, container_ip: &str, s: &[&str]) -> Vec<Binding> {
    berth
        .add(task.into(), ip(container_ip), specs(s))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_removal_answers_before_its_flows_are_forgotten_in_one_sweep() {
    let f = fixture();
    let datapath = f.datapath.clone();
    let berth = Berth::new(f.registry);
    let added = publish(&berth, "web", "172.17.0.2", &["9000-9999:9000-9999"]).await;
    publish(&berth, "db", "172.17.0.3", &["5432:5432"]).await;
    // A sweep of a full table takes a while; nobody waits for it.
    datapath.set_forget_delay(ms(1500));
    let started = std::time::Instant::now();
    let gone = berth.remove("web".into(), vec![]).await.unwrap();
    assert!(
        started.elapsed() < ms(500),
        "the removal waited {:?} for its sweep",
        started.elapsed()
    );
    assert_eq!(gone, added);
    assert!(datapath.bindings().iter().all(|b| b.task == "db"));
    assert_eq!(berth.bindings().await.len(), 1);
    assert!(datapath.forgotten().is_empty(), "still sweeping");
    assert_eq!(berth.sweeper.pending(), 1000);
    // Another task's requests do not wait for it either.
    let started = std::time::Instant::now();
    publish(&berth, "db", "172.17.0.3", &["5433:5433"]).await;
    assert!(started.elapsed() < ms(500), "an unrelated publish waited");
    berth.finish_sweeps().await;
    // One sweep for the whole request, with every removed binding, and
    // the task's address: it has no task any more.
    assert_eq!(datapath.forgotten(), vec![added]);
    assert_eq!(datapath.forgotten_endpoints(), vec![vec![ip("172.17.0.2")]]);
}

#[tokio::test]
async fn a_republish_of_a_removed_binding_lands_after_its_sweep() {
    let f = fixture();
    let datapath = f.datapath.clone();
    let berth = Berth::new(f.registry);
    let old = publish(&berth, "dns", "172.17.0.2", &["5353:53/udp"]).await;
    datapath.set_forget_delay(ms(400));
    berth.remove("dns".into(), vec![]).await.unwrap();
    // The replaced container: same address and port. Publishing before
    // the sweep would let it inherit the old flows or lose its own.
    let started = std::time::Instant::now();
    let new = publish(&berth, "dns", "172.17.0.2", &["5353:53/udp"]).await;
    assert!(started.elapsed() >= ms(300), "the publish did not wait");
    assert_eq!(new, old);
    let journal = datapath.journal();
    let forgot = journal
        .iter()
        .position(|op| *op == FakeOp::Forgot(old.clone()))
        .expect("the old binding's flows were forgotten");
    let inserted = journal
        .iter()
        .rposition(|op| *op == FakeOp::Insert(new[0].clone()))
        .unwrap();
    assert!(forgot < inserted, "{journal:?}");
    assert_eq!(datapath.bindings(), new);
}

#[test]
fn a_removal_slipping_in_before_a_republish_still_orders_the_two() {
    // The registry itself waits (inside its lock) when no pre-check ran.
    let mut f = fixture();
    let old = f.add("dns", "172.17.0.2", &["5353:53/udp"]).unwrap();
    f.datapath.set_forget_delay(ms(300));
    f.registry.remove("dns", &[]).unwrap();
    let new = f.add("dns", "172.17.0.2", &["5353:53/udp"]).unwrap();
    let journal = f.datapath.journal();
    assert_eq!(
        &journal[journal.len() - 2..],
        &[FakeOp::Forgot(old), FakeOp::Insert(new[0].clone())]
    );
}

#[test]
fn only_addresses_no_task_has_any_more_lose_their_policy_flows() {
    let mut f = fixture();
    f.add("web", "172.17.0.2", &["8080:80", "8443:443"])
        .unwrap();
    f.add("sidecar", "172.17.0.2", &["9090:9090"]).unwrap();
    f.add("db", "172.17.0.3", &["5432:5432"]).unwrap();
    let sweeper = f.registry.sweeper().clone();
    // Part of a task: it keeps its address.
    f.registry.remove("web", &specs(&["8443:443"])).unwrap();
    // A whole task whose address another task still has.
    f.registry.remove("web", &[]).unwrap();
    // A whole task alone at its address.
    f.registry.remove("db", &[]).unwrap();
    sweeper.close();
    assert_eq!(
        f.datapath.forgotten().concat().len(),
        3,
        "every removed binding is swept"
    );
    assert_eq!(
        f.datapath.forgotten_endpoints().concat(),
        vec![ip("172.17.0.3")]
    );
}

#[tokio::test]
async fn shutdown_finishes_the_pending_sweeps() {
    let f = fixture();
    let datapath = f.datapath.clone();
    let berth = Berth::new(f.registry);
    let a = publish(&berth, "a", "172.17.0.2", &["8080:80"]).await;
    let b = publish(&berth, "b", "172.17.0.3", &["8081:80"]).await;
    datapath.set_forget_delay(ms(300));
    berth.remove("a".into(), vec![]).await.unwrap();
    berth.remove("b".into(), vec![]).await.unwrap();
    assert!(datapath.forgotten().is_empty());
    berth.finish_sweeps().await;
    assert_eq!(datapath.forgotten().concat(), [a, b].concat());
    assert_eq!(berth.sweeper.pending(), 0);
}

/// A store whose commits fail once `ok` of them have landed.
struct FlakyLedger {
    inner: Store,
    ok: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ledger for FlakyLedger {
    fn load_all(&self) -> Result<crate::engine::ledger::Stored> {
        self.inner.load_all()
    }
    fn commit(&self, c: &Commit) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.ok.load(SeqCst) == 0 {
            return Err(Error::io("committing", std::io::Error::other("injected")));
        }
        self.ok.fetch_sub(1, SeqCst);
        self.inner.commit(c)
    }
    fn load_sgs(&self) -> Result<crate::engine::sg_book::SgBook> {
        self.inner.load_sgs()
    }
    fn commit_sgs(&self, c: &crate::engine::sg_book::SgChanges) -> Result<()> {
        self.inner.commit_sgs(c)
    }
}

/// A failed sysctl write after the store took a publish, whose store
/// put-back fails too: the store is left diverged, and the next request
/// converges it to what memory holds before its own change.
#[test]
fn a_store_left_apart_by_a_failed_put_back_is_converged_by_the_next_request() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    let host = Arc::new(FakeHost::default());
    // The publish's commit lands; its put-back does not.
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let ledger = FlakyLedger {
        inner: Store::open(dir.path()).unwrap(),
        ok: ok.clone(),
    };
    let mut r = Registry::open(ledger, datapath.clone(), bridge(), host.clone(), policy()).unwrap();
    host.fail_writes(true);
    let err = r
        .add("web", ip("172.17.0.2"), &specs(&["8080:80"]))
        .unwrap_err();
    assert!(err.to_string().starts_with("writing "), "{err}");
    assert!(r.bindings().is_empty() && datapath.bindings().is_empty());
    let left = r.store.load_all().unwrap();
    assert_eq!(left.tasks.len(), 1, "the store is left apart");
    assert_eq!(left.reserved, [8080].into());

    host.fail_writes(false);
    ok.store(10, SeqCst);
    let db = r
        .add("db", ip("172.17.0.9"), &specs(&["5432:5432"]))
        .unwrap();
    let stored = r.store.load_all().unwrap();
    assert_eq!(stored.tasks.into_values().flatten().collect::<Vec<_>>(), db);
    assert_eq!(stored.reserved, [5432].into());
    assert_eq!(host.reserved(), [5432].into());
    assert_eq!(datapath.bindings(), db);
}

fn events() -> FromDocker {
    FromDocker {
        events: true,
        ..FromDocker::default()
    }
}

#[test]
fn docker_events_mode_neither_joins_nor_removes_a_task_it_did_not_make() {
    let mut f = fixture();
    let hand = f.add("web", "172.17.0.2", &["8080:80"]).unwrap();
    let err = f
        .registry
        .add_held_by_docker("web", ip("172.17.0.9"), &specs(&["8081:80"]), &events())
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskNotFromDocker(t) if t == "web"),
        "{err}"
    );
    let err = f.registry.remove_owned("web", &[], true).unwrap_err();
    assert!(matches!(err, Error::TaskNotFromDocker(_)), "{err}");
    assert_eq!(err.http_status(), 409);
    f.assert_everywhere(&hand);
    // berth-docker-proxy's held ports make no owned task either.
    f.registry
        .add_held_by_docker(
            "api",
            ip("172.17.0.3"),
            &specs(&["9090:80"]),
            &FromDocker::default(),
        )
        .unwrap();
    assert!(!f.registry.docker_owned("api"));
    f.registry.remove_owned("api", &[], true).unwrap_err();
}

#[test]
fn a_task_docker_events_mode_made_is_marked_in_the_store_and_refuses_a_hand_add() {
    let mut f = fixture();
    let made = f
        .registry
        .add_held_by_docker("web", ip("172.17.0.2"), &specs(&["8080:80"]), &events())
        .unwrap();
    assert!(made.iter().all(|b| b.docker_events));
    assert!(
        f.stored().iter().all(|b| b.docker_events),
        "kept in the store"
    );
    assert!(f.registry.docker_owned("web"));
    let err = f.add("web", "172.17.0.2", &["8081:81"]).unwrap_err();
    assert!(
        matches!(&err, Error::TaskFromDocker(t) if t == "web"),
        "{err}"
    );
    f.assert_everywhere(&made);
    // An operator may still unpublish it by hand; the follower may too.
    assert_eq!(f.registry.remove("web", &[]).unwrap(), made);
    f.registry
        .add_held_by_docker("web", ip("172.17.0.2"), &specs(&["8080:80"]), &events())
        .unwrap();
    f.registry.remove_owned("web", &[], true).unwrap();
    f.assert_everywhere(&[]);
}

#[test]
fn a_stored_binding_without_the_docker_mark_loads_as_not_dockers() {
    let old = r#"{"task":"web","containerIP":"172.17.0.2","bindIP":"0.0.0.0","hostPort":8080,"containerPort":80,"protocol":"tcp"}"#;
    let b: Binding = serde_json::from_str(old).unwrap();
    assert!(!b.docker_events);
    assert!(!serde_json::to_string(&b).unwrap().contains("dockerEvents"));
    let marked = Binding {
        docker_events: true,
        ..b
    };
    let json = serde_json::to_value(&marked).unwrap();
    assert_eq!(json["dockerEvents"], true);
    assert_eq!(serde_json::from_value::<Binding>(json).unwrap(), marked);
}

fn dockerd() -> crate::engine::host::Holder {
    crate::engine::host::Holder {
        pid: 100,
        uid: 0,
        exe: "/usr/sbin/dockerd".into(),
        berth_proxy: false,
    }
}

#[test]
fn held_by_docker_is_refused_for_a_port_only_another_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::default());
    let nc = crate::engine::host::Holder {
        pid: 200,
        uid: 0,
        exe: "/usr/bin/nc.openbsd".into(),
        berth_proxy: false,
    };
    host.listen_held(Protocol::Tcp, "0.0.0.0:8080", std::slice::from_ref(&nc));
    host.listen(Protocol::Tcp, "127.0.0.1:8081");
    host.listen_held(Protocol::Tcp, "0.0.0.0:8082", &[nc, dockerd()]);
    let datapath = Arc::new(FakeDatapath::default());
    let store = Store::open(dir.path()).unwrap();
    let mut r = Registry::open(store, datapath.clone(), bridge(), host, policy()).unwrap();
    for from in [FromDocker::default(), events()] {
        let err = r
            .add_held_by_docker("web", ip("172.17.0.2"), &specs(&["8080:80"]), &from)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "heldByDocker refused: 0.0.0.0:8080/tcp is held by pid 200 (/usr/bin/nc.openbsd, uid 0), not by dockerd or docker-proxy"
        );
        assert_eq!(err.http_status(), 409);
    }
    let err = r
        .add_held_by_docker("web", ip("172.17.0.2"), &specs(&["8081:80"]), &events())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is held by a process berth cannot see"),
        "{err}"
    );
    assert!(datapath.bindings().is_empty(), "nothing changed");
    assert!(r.bindings().is_empty());
    // Nothing listening, or Docker among the holders: published.
    r.add_held_by_docker(
        "web",
        ip("172.17.0.2"),
        &specs(&["8082:80", "8083:81"]),
        &events(),
    )
    .unwrap();
    assert_eq!(datapath.bindings().len(), 2);
}
