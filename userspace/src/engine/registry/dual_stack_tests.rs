//! The registry with IPv6 (issue 15): which families a spec publishes on,
//! one host port for both, conflicts and listeners per family, removal of
//! both halves, and the clear refusals.
use std::net::Ipv6Addr;

use super::*;
use crate::adapters::store::Store;
use crate::domain::cidr::Ipv4Cidr;
use crate::engine::fake::{FakeDatapath, FakeHost};

const V4: &str = "172.17.0.2";
const V6: &str = "fd00::2";

struct Fixture {
    _dir: tempfile::TempDir,
    datapath: Arc<FakeDatapath>,
    host: Arc<FakeHost>,
    registry: Registry,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    let host = Arc::new(FakeHost::default());
    let bridge = Bridge::Fixed {
        name: "br0".into(),
        subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
    };
    let registry = Registry::open(
        Store::open(dir.path()).unwrap(),
        datapath.clone(),
        bridge,
        host.clone(),
        PortPolicy::new(PortRange {
            start: 49153,
            end: 49162,
        }),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        datapath,
        host,
        registry,
    }
}

fn ips(v4: &str, v6: Option<&str>) -> ContainerIps {
    ContainerIps {
        v4: Some(v4.parse().unwrap()),
        v6: v6.map(|v| v.parse().unwrap()),
    }
}

fn specs(s: &[&str]) -> Vec<PortSpec> {
    parse_specs(s).unwrap()
}

/// (bind IP, host port, container IP, container port) of each binding.
fn shape(bs: &[Binding]) -> Vec<(String, u16, String, u16)> {
    bs.iter()
        .map(|b| {
            (
                b.bind_ip.to_string(),
                b.host_port,
                b.container_ip.to_string(),
                b.container_port,
            )
        })
        .collect()
}

fn row(bind: &str, hp: u16, ctr: &str, cp: u16) -> (String, u16, String, u16) {
    (bind.into(), hp, ctr.into(), cp)
}

impl Fixture {
    fn add(&mut self, task: &str, v6: Option<&str>, s: &[&str]) -> Result<Vec<Binding>> {
        self.registry.add(task, ips(V4, v6), &specs(s))
    }
}

#[test]
fn a_plain_spec_publishes_on_both_families_when_the_container_has_ipv6() {
    let mut f = fixture();
    let added = f.add("web", Some(V6), &["8080:80"]).unwrap();
    assert_eq!(
        shape(&added),
        [row("0.0.0.0", 8080, V4, 80), row("::", 8080, V6, 80)]
    );
    assert_eq!(f.datapath.bindings().len(), 2, "both reach the datapath");
    assert!(f.datapath.bindings().iter().any(Binding::is_ipv6));
}

#[test]
fn a_plain_spec_publishes_ipv4_only_for_a_container_without_ipv6() {
    let mut f = fixture();
    let added = f.add("web", None, &["8080:80"]).unwrap();
    assert_eq!(shape(&added), [row("0.0.0.0", 8080, V4, 80)]);
}

#[test]
fn an_explicit_family_publishes_on_that_family_only() {
    let mut f = fixture();
    let v4 = f.add("a", Some(V6), &["0.0.0.0:8080:80"]).unwrap();
    assert_eq!(shape(&v4), [row("0.0.0.0", 8080, V4, 80)]);
    let v6 = f.add("b", Some("fd00::3"), &["[::]:8081:80"]).unwrap();
    assert_eq!(shape(&v6), [row("::", 8081, "fd00::3", 80)]);
    let exact = f
        .add("c", Some("fd00::4"), &["[2001:db8::1]:8082:80/udp"])
        .unwrap();
    assert_eq!(shape(&exact), [row("2001:db8::1", 8082, "fd00::4", 80)]);
}

#[test]
fn an_ipv6_spec_for_a_container_without_ipv6_is_refused_and_changes_nothing() {
    let mut f = fixture();
    let err = f
        .add("web", None, &["8080:80", "[::]:8081:80"])
        .unwrap_err();
    assert!(matches!(err, Error::NoContainerIpv6 { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "port spec \"[::]:8081:80/tcp\" publishes over IPv6, but task web has no container IPv6 address (--ip6)"
    );
    assert!(f.registry.bindings().is_empty());
    assert!(f.datapath.bindings().is_empty());
}

#[test]
fn a_container_ipv6_address_that_is_no_containers_is_refused() {
    let mut f = fixture();
    for bad in ["::", "::1", "ff02::1", "fe80::2", "::ffff:172.17.0.2"] {
        let err = f.add("web", Some(bad), &["8080:80"]).unwrap_err();
        assert!(matches!(err, Error::BadContainerIpv6(_)), "{bad}: {err}");
    }
    assert!(f.registry.bindings().is_empty());
}

#[test]
fn a_dynamic_plain_spec_gets_one_host_port_for_both_families() {
    let mut f = fixture();
    for task in ["a", "b", "c"] {
        let added = f
            .add(task, Some("fd00::9"), &["80", "9000-9001/udp"])
            .unwrap();
        assert_eq!(added.len(), 6, "{added:?}");
        let port_of = |ip: &str, cp: u16| {
            added
                .iter()
                .find(|b| b.bind_ip.to_string() == ip && b.container_port == cp)
                .map(|b| b.host_port)
                .unwrap()
        };
        for cp in [80, 9000, 9001] {
            assert_eq!(port_of("0.0.0.0", cp), port_of("::", cp), "{task} {cp}");
        }
    }
}

#[test]
fn a_dynamic_pick_skips_a_port_mapped_on_the_other_family() {
    let mut f = fixture();
    // 49153-49162 less the nine taken by IPv6-only mappings: one is left.
    for port in 49153..=49161 {
        f.add(
            &format!("v6-{port}"),
            Some(&format!("fd00::{port:x}")),
            &[&format!("[::]:{port}:80")],
        )
        .unwrap();
    }
    let added = f.add("v4", None, &["0.0.0.0::80"]).unwrap();
    assert_eq!(added[0].host_port, 49162);
}

#[test]
fn the_same_port_on_the_same_family_is_allocated_and_on_the_other_family_is_not() {
    let mut f = fixture();
    f.add("a", Some(V6), &["[::]:8080:80"]).unwrap();
    let err = f.add("b", Some("fd00::3"), &["8080:80"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Bind for [::]:8080 failed: port is already allocated"
    );
    let err = f
        .add("b", Some("fd00::3"), &["[2001:db8::1]:8080:80"])
        .unwrap_err();
    assert!(matches!(err, Error::PortAllocated { .. }), "{err}");
    // Docker's semantics: 0.0.0.0:8080 and [::]:8080 are two sockets.
    let v4 = f.add("c", None, &["0.0.0.0:8080:80"]).unwrap();
    assert_eq!(v4.len(), 1);
}

#[test]
fn an_ipv6_listener_blocks_an_ipv6_mapping_only() {
    let mut f = fixture();
    f.host.listen(Protocol::Tcp, "[::]:8080");
    let err = f.add("a", Some(V6), &["[::]:8080:80"]).unwrap_err();
    assert!(matches!(err, Error::HostPortInUse { .. }), "{err}");
    assert!(err.to_string().contains("listen tcp6 [::]:8080"), "{err}");
    let mut g = fixture();
    g.host.listen(Protocol::Tcp, "[2001:db8::5]:8080");
    g.add("a", Some(V6), &["[2001:db8::1]:8080:80"]).unwrap();
    g.host.listen(Protocol::Tcp, "0.0.0.0:8081");
    g.add("b", Some("fd00::3"), &["[::]:8081:80"]).unwrap();
}

#[test]
fn removing_a_plain_spec_removes_both_families() {
    let mut f = fixture();
    f.add("web", Some(V6), &["8080:80", "9090:90"]).unwrap();
    let gone = f.registry.remove("web", &specs(&["8080:80"])).unwrap();
    assert_eq!(
        shape(&gone),
        [row("0.0.0.0", 8080, V4, 80), row("::", 8080, V6, 80)]
    );
    let left = f.registry.bindings();
    assert_eq!(
        shape(&left),
        [row("0.0.0.0", 9090, V4, 90), row("::", 9090, V6, 90)]
    );
    // One family by name; a dynamic spec names the container port.
    let gone = f.registry.remove("web", &specs(&["[::]::90"])).unwrap();
    assert_eq!(shape(&gone), [row("::", 9090, V6, 90)]);
    let err = f
        .registry
        .remove("web", &specs(&["[::]:9090:90"]))
        .unwrap_err();
    assert_eq!(err.to_string(), "task web has no binding [::]:9090:90/tcp");
    let gone = f.registry.remove("web", &specs(&["90"])).unwrap();
    assert_eq!(shape(&gone), [row("0.0.0.0", 9090, V4, 90)]);
}

#[test]
fn ipv6_bindings_are_restored_after_a_restart() {
    let mut f = fixture();
    f.add("web", Some(V6), &["8080:80"]).unwrap();
    let Fixture {
        _dir: dir,
        host,
        registry,
        ..
    } = f;
    drop(registry);
    let dp = Arc::new(FakeDatapath::default());
    let again = Registry::open(
        Store::open(dir.path()).unwrap(),
        dp.clone(),
        Bridge::Fixed {
            name: "br0".into(),
            subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
        },
        host,
        PortPolicy::new(PortRange {
            start: 49153,
            end: 49162,
        }),
    )
    .unwrap();
    assert_eq!(again.restore().unwrap(), 2);
    let six: Vec<Binding> = dp.bindings().into_iter().filter(Binding::is_ipv6).collect();
    assert_eq!(six.len(), 1);
    assert_eq!(
        six[0].container_ip6(),
        Some("fd00::2".parse::<Ipv6Addr>().unwrap())
    );
}

#[test]
fn an_ipv6_only_container_publishes_a_plain_spec_on_ipv6_and_refuses_an_ipv4_one() {
    let mut f = fixture();
    let only6 = ContainerIps {
        v4: None,
        v6: Some(V6.parse().unwrap()),
    };
    let added = f.registry.add("web", only6, &specs(&["8080:80"])).unwrap();
    assert_eq!(shape(&added), [row("::", 8080, V6, 80)]);
    let err = f
        .registry
        .add(
            "db",
            ContainerIps {
                v6: Some("fd00::3".parse().unwrap()),
                v4: None,
            },
            &specs(&["0.0.0.0:5432:5432"]),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "port spec \"0.0.0.0:5432:5432/tcp\" publishes over IPv4, but task db has no container IPv4 address (--ip)"
    );
    let none = ContainerIps { v4: None, v6: None };
    let err = f.registry.add("db", none, &specs(&["80"])).unwrap_err();
    assert!(matches!(err, Error::NoContainerIp(_)), "{err}");
    assert_eq!(f.registry.bindings().len(), 1);
}

#[test]
fn a_task_definition_publishes_a_container_with_ipv6_on_both_families() {
    let mut f = fixture();
    let def = TaskDefinition::from_value(&serde_json::json!({
        "containerDefinitions": [
            {"name": "web", "portMappings": [{"containerPort": 80, "hostPort": 0}]},
            {"name": "db", "portMappings": [{"containerPort": 5432, "hostPort": 5432}]}
        ]
    }))
    .unwrap();
    let ips = [
        ("web".to_owned(), V4.parse().unwrap()),
        ("db".to_owned(), "172.17.0.3".parse().unwrap()),
    ]
    .into();
    let ips6 = [("web".to_owned(), V6.parse().unwrap())].into();
    let record = f.registry.run_task_dual("t", &def, &ips, &ips6).unwrap();
    let web = &record.containers[0];
    assert_eq!(web.container_ip6, Some(V6.parse().unwrap()));
    let binds: Vec<String> = web
        .network_bindings
        .iter()
        .map(|n| n.bind_ip.to_string())
        .collect();
    assert_eq!(binds, ["0.0.0.0", "::"], "ECS lists one entry per family");
    assert_eq!(
        web.network_bindings[0].host_port,
        web.network_bindings[1].host_port
    );
    assert_eq!(
        record.containers[1].network_bindings.len(),
        1,
        "db: IPv4 only"
    );
    let all = f.registry.bindings();
    assert_eq!(all.len(), 3);
    assert_eq!(all.iter().filter(|b| b.is_ipv6()).count(), 1);
    // An IPv6 address for a container the definition does not have.
    let bad6 = [("nope".to_owned(), V6.parse().unwrap())].into();
    let err = f
        .registry
        .run_task_dual("u", &def, &ips, &bad6)
        .unwrap_err();
    assert!(matches!(err, Error::UnknownContainer { .. }), "{err}");
    assert_eq!(f.registry.bindings().len(), 3, "nothing changed");
}
