//! Tasks and their bindings: validation, conflict detection, and keeping the
//! store and the datapath in step. [`Registry`] is the synchronous core;
//! [`Berth`] serializes requests to it behind one async mutex.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use crate::{
    datapath::Datapath,
    error::{Error, Result},
    model::{Binding, Protocol},
    netif::{self, Ipv4Cidr},
    spec::{PortMapping, PortSpec},
    store::Store,
};

pub const MAX_TASK_NAME_LEN: usize = 255;

/// Task names: non-empty, at most 255 of `[A-Za-z0-9_.-]`.
pub fn validate_task_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_TASK_NAME_LEN {
        "longer than 255 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "only letters, digits, '_', '.' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::TaskName {
        name: name.to_owned(),
        reason,
    })
}

/// Parses every spec, failing on the first bad one.
pub fn parse_specs<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortSpec>> {
    specs
        .iter()
        .map(|s| {
            let s = s.as_ref();
            s.parse().map_err(|reason| Error::Spec {
                spec: s.to_owned(),
                reason,
            })
        })
        .collect()
}

pub fn parse_container_ip(ip: &str) -> Result<Ipv4Addr> {
    ip.parse()
        .map_err(|_| Error::MalformedContainerIp(ip.to_owned()))
}

/// The container bridge whose subnets container IPs must be in.
#[derive(Clone, Debug)]
pub enum Bridge {
    /// Read the interface's addresses on every check, so a re-addressed
    /// bridge is picked up without a restart.
    System { name: String },
    /// Fixed subnets, for tests and for callers that already know them.
    Fixed {
        name: String,
        subnets: Vec<Ipv4Cidr>,
    },
}

impl Bridge {
    pub fn name(&self) -> &str {
        match self {
            Bridge::System { name } | Bridge::Fixed { name, .. } => name,
        }
    }

    pub fn subnets(&self) -> Result<Vec<Ipv4Cidr>> {
        match self {
            Bridge::System { name } => netif::interface_subnets(name)
                .map_err(|e| Error::io(format!("reading the addresses of {name}"), e)),
            Bridge::Fixed { subnets, .. } => Ok(subnets.clone()),
        }
    }

    fn check_contains(&self, ip: Ipv4Addr) -> Result<()> {
        let subnets = self.subnets()?;
        if subnets.is_empty() {
            return Err(Error::BridgeWithoutIpv4(self.name().to_owned()));
        }
        if subnets.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        Err(Error::NotInBridgeSubnet {
            ip,
            bridge: self.name().to_owned(),
            subnets,
        })
    }
}

fn mapping_of(b: &Binding) -> PortMapping {
    PortMapping {
        bind_ip: b.bind_ip,
        host_port: b.host_port,
        container_port: b.container_port,
        protocol: b.protocol,
    }
}

/// For logs: `web 0.0.0.0:8080/tcp -> 172.17.0.2:80`.
pub fn describe(b: &Binding) -> String {
    format!(
        "{} {}:{}/{} -> {}:{}",
        b.task,
        b.bind_ip,
        b.host_port,
        b.protocol.as_str(),
        b.container_ip,
        b.container_port
    )
}

/// Two bindings collide when a packet could match both: same protocol and
/// host port, and the same bind IP or either one on every address.
fn bind_ips_overlap(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

pub struct Registry {
    store: Store,
    datapath: Arc<dyn Datapath>,
    bridge: Bridge,
    tasks: BTreeMap<String, Vec<Binding>>,
}

impl Registry {
    /// Loads the stored tasks; the datapath is not touched until
    /// [`Registry::restore`].
    pub fn open(store: Store, datapath: Arc<dyn Datapath>, bridge: Bridge) -> Result<Self> {
        let tasks = store.load()?;
        Ok(Registry {
            store,
            datapath,
            bridge,
            tasks,
        })
    }

    /// Re-inserts every stored binding (inserts are idempotent), so a
    /// datapath that lost or never had them matches the store again.
    /// Returns how many bindings were inserted.
    pub fn restore(&self) -> Result<usize> {
        let mut n = 0;
        for b in self.tasks.values().flatten() {
            self.datapath.insert(b).map_err(|reason| Error::Restore {
                binding: describe(b),
                reason,
            })?;
            n += 1;
        }
        Ok(n)
    }

    pub fn datapath(&self) -> &Arc<dyn Datapath> {
        &self.datapath
    }

    /// Every binding, by task name, each task's in the order added.
    pub fn bindings(&self) -> Vec<Binding> {
        self.tasks.values().flatten().cloned().collect()
    }

    /// Publishes `specs` for `task` at `container_ip`. All or nothing: on
    /// any error neither the store nor the datapath has changed.
    pub fn add(
        &mut self,
        task: &str,
        container_ip: Ipv4Addr,
        specs: &[PortSpec],
    ) -> Result<Vec<Binding>> {
        validate_task_name(task)?;
        if specs.is_empty() {
            return Err(Error::NoPorts);
        }
        self.bridge.check_contains(container_ip)?;
        let new: Vec<Binding> = specs
            .iter()
            .flat_map(PortSpec::expand)
            .map(|m| Binding {
                task: task.to_owned(),
                container_ip,
                bind_ip: m.bind_ip,
                host_port: m.host_port,
                container_port: m.container_port,
                protocol: m.protocol,
            })
            .collect();
        self.check_conflicts(&new)?;

        self.insert_all(&new)?;
        let mut updated = self.tasks.get(task).cloned().unwrap_or_default();
        updated.extend(new.iter().cloned());
        if let Err(err) = self.store.put_task(task, &updated) {
            self.undo_inserts(&new);
            return Err(err);
        }
        self.tasks.insert(task.to_owned(), updated);
        tracing::info!(task = %task, bindings = new.len(), "published");
        Ok(new)
    }

    /// Unpublishes `specs` of `task`, or all its bindings when `specs` is
    /// empty. All or nothing, like [`Registry::add`].
    pub fn remove(&mut self, task: &str, specs: &[PortSpec]) -> Result<Vec<Binding>> {
        validate_task_name(task)?;
        let current = self
            .tasks
            .get(task)
            .ok_or_else(|| Error::NoSuchTask(task.to_owned()))?;
        let (gone, kept): (Vec<Binding>, Vec<Binding>) = if specs.is_empty() {
            (current.clone(), Vec::new())
        } else {
            let mut wanted = BTreeSet::new();
            for m in specs.iter().flat_map(PortSpec::expand) {
                if !current.iter().any(|b| mapping_of(b) == m) {
                    return Err(Error::NoSuchBinding {
                        task: task.to_owned(),
                        spec: m.to_string(),
                    });
                }
                wanted.insert(m);
            }
            current
                .iter()
                .cloned()
                .partition(|b| wanted.contains(&mapping_of(b)))
        };

        self.remove_all(&gone)?;
        if let Err(err) = self.store.put_task(task, &kept) {
            self.undo_removes(&gone);
            return Err(err);
        }
        if kept.is_empty() {
            self.tasks.remove(task);
        } else {
            self.tasks.insert(task.to_owned(), kept);
        }
        tracing::info!(task = %task, bindings = gone.len(), "unpublished");
        Ok(gone)
    }

    fn check_conflicts(&self, new: &[Binding]) -> Result<()> {
        let mut taken: HashMap<(Protocol, u16), Vec<Ipv4Addr>> = HashMap::new();
        for b in self.tasks.values().flatten() {
            taken
                .entry((b.protocol, b.host_port))
                .or_default()
                .push(b.bind_ip);
        }
        for b in new {
            let ips = taken.entry((b.protocol, b.host_port)).or_default();
            if ips.iter().any(|&ip| bind_ips_overlap(ip, b.bind_ip)) {
                return Err(Error::PortAllocated {
                    bind_ip: b.bind_ip,
                    host_port: b.host_port,
                });
            }
            ips.push(b.bind_ip);
        }
        Ok(())
    }

    fn insert_all(&self, new: &[Binding]) -> Result<()> {
        for (i, b) in new.iter().enumerate() {
            if let Err(err) = self.datapath.insert(b) {
                tracing::warn!(binding = describe(b), error = %err, "datapath insert failed; rolling back");
                self.undo_inserts(&new[..i]);
                return Err(err.into());
            }
        }
        Ok(())
    }

    fn remove_all(&self, gone: &[Binding]) -> Result<()> {
        for (i, b) in gone.iter().enumerate() {
            if let Err(err) = self.datapath.remove(b) {
                tracing::warn!(binding = describe(b), error = %err, "datapath remove failed; rolling back");
                self.undo_removes(&gone[..i]);
                return Err(err.into());
            }
        }
        Ok(())
    }

    fn undo_inserts(&self, done: &[Binding]) {
        for b in done.iter().rev() {
            if let Err(err) = self.datapath.remove(b) {
                tracing::error!(binding = describe(b), error = %err, "rollback: removing failed");
            }
        }
    }

    fn undo_removes(&self, done: &[Binding]) {
        for b in done.iter().rev() {
            if let Err(err) = self.datapath.insert(b) {
                tracing::error!(binding = describe(b), error = %err, "rollback: re-inserting failed");
            }
        }
    }
}

/// The daemon's handle: cheap to clone, one request at a time inside.
#[derive(Clone)]
pub struct Berth {
    registry: Arc<tokio::sync::Mutex<Registry>>,
    datapath: Arc<dyn Datapath>,
}

impl Berth {
    pub fn new(registry: Registry) -> Self {
        let datapath = registry.datapath().clone();
        Berth {
            registry: Arc::new(tokio::sync::Mutex::new(registry)),
            datapath,
        }
    }

    pub async fn bindings(&self) -> Vec<Binding> {
        self.registry.lock().await.bindings()
    }

    pub async fn add(
        &self,
        task: String,
        container_ip: Ipv4Addr,
        specs: Vec<PortSpec>,
    ) -> Result<Vec<Binding>> {
        self.with_registry(move |r| r.add(&task, container_ip, &specs))
            .await
    }

    pub async fn remove(&self, task: String, specs: Vec<PortSpec>) -> Result<Vec<Binding>> {
        self.with_registry(move |r| r.remove(&task, &specs)).await
    }

    pub async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let datapath = self.datapath.clone();
        let counters = tokio::task::spawn_blocking(move || datapath.counters())
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        Ok(counters
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect())
    }

    /// Runs `f` under the mutex on a blocking thread: store commits fsync and
    /// datapath updates are syscalls, neither belongs on the async workers.
    async fn with_registry<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut guard = self.registry.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut guard))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeDatapath;

    struct Fixture {
        _dir: tempfile::TempDir,
        datapath: Arc<FakeDatapath>,
        registry: Registry,
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
        let registry = Registry::open(store, datapath.clone(), bridge()).unwrap();
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
                .load()
                .unwrap()
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
                Binding {
                    task: "web".into(),
                    container_ip: ip("172.17.0.2"),
                    bind_ip: ip("0.0.0.0"),
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                },
                Binding {
                    task: "web".into(),
                    container_ip: ip("172.17.0.2"),
                    bind_ip: ip("10.0.0.1"),
                    host_port: 53,
                    container_port: 53,
                    protocol: Protocol::Udp,
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
        let mut r = Registry::open(store, Arc::new(FakeDatapath::default()), bridge).unwrap();
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
            let mut r = Registry::open(store, Arc::new(FakeDatapath::default()), bridge()).unwrap();
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
        let r = Registry::open(store, datapath.clone(), bridge()).unwrap();
        let mut expected = added.clone();
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
            .put_task(
                "web",
                &[Binding {
                    task: "web".into(),
                    container_ip: ip("172.17.0.2"),
                    bind_ip: ip("0.0.0.0"),
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                }],
            )
            .unwrap();
        let datapath = Arc::new(FakeDatapath::default());
        datapath.fail_insert_of_host_port(8080);
        let r = Registry::open(Store::open(dir.path()).unwrap(), datapath, bridge()).unwrap();
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
}
