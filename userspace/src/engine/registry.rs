//! Tasks and their bindings: validation, conflict detection, host port
//! allocation, and keeping the store, the datapath and the host's
//! `ip_local_reserved_ports` in step. [`Registry`] is the synchronous core;
//! [`Berth`] serializes requests to it behind one async mutex.
//!
//! Every request is all or nothing: it computes the state it wants and each
//! adapter (datapath, store, `ip_local_reserved_ports`) gets the difference
//! (`apply.rs`); a failed step puts every adapter back to the state in
//! memory by the same means, and a crash part-way is repaired by the
//! reconcile at start. The removed
//! bindings' tracked flows are forgotten afterwards by a background worker
//! ([`FlowSweeper`]); a publish that could meet them waits for it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{BuildHasher as _, RandomState},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use tokio::sync::broadcast;

use crate::{
    domain::cni::CniAttachment,
    domain::ecs::{MappedPorts, TaskDefinition},
    domain::error::{Error, Result},
    domain::events::{Event, EVENT_BUFFER},
    domain::limits::PortLimits,
    domain::model::{
        Binding, ContainerIps, ContainerRecord, EcsLabels, NetworkBinding, Protocol, TaskRecord,
    },
    domain::spec::{Families, HostIp, PortMapping, PortRange, PortSpec},
    engine::allocator::{self, CoolDowns, PortPolicy, Taken},
    engine::datapath::Datapath,
    engine::host::Host,
    engine::ledger::{Commit, Ledger},
};

pub use self::{
    berth::{Berth, Subscription},
    bridge::Bridge,
};
pub use crate::domain::task::{
    check_container_ip6, parse_container_ip, parse_container_ip6, parse_specs, validate_task_name,
    MAX_TASK_NAME_LEN,
};

fn mapping_of(b: &Binding) -> PortMapping {
    PortMapping {
        bind_ip: b.bind_ip,
        host_port: b.host_port,
        container_port: b.container_port,
        protocol: b.protocol,
    }
}

/// For logs: `web 0.0.0.0:8080/tcp -> 172.17.0.2:80`,
/// `web [::]:8080/tcp -> [fd00::2]:80`.
pub fn describe(b: &Binding) -> String {
    format!(
        "{} {}:{}/{} -> {}:{}",
        b.task,
        HostIp(b.bind_ip),
        b.host_port,
        b.protocol.as_str(),
        HostIp(b.container_ip),
        b.container_port
    )
}

/// Two bindings collide when a packet could match both: same protocol and
/// host port, same family, and the same bind IP or either one on every
/// address of it (`0.0.0.0:8080` and `[::]:8080` are two sockets to
/// Docker too).
fn bind_ips_overlap(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// Whether a dynamic pick for `spec` must avoid a port mapped at `ip`:
/// one allocation serves both families (a plain spec gets one number for
/// IPv4 and IPv6), so a port a wildcard holds on either family is taken.
fn pick_must_avoid(ip: IpAddr, spec: &PortSpec) -> bool {
    match spec.bind_ip {
        None => true,
        Some(own) => own == ip || own.is_unspecified() || ip.is_unspecified(),
    }
}

/// The families a container of `ips` has, after refusing a spec that
/// names a family the container has no address of.
fn families_for(task: &str, ips: &ContainerIps, specs: &[PortSpec]) -> Result<Families> {
    if let Some(v6) = ips.v6 {
        check_container_ip6(v6)?;
    }
    let lacking = |s: &&PortSpec| match s.bind_ip {
        Some(IpAddr::V6(_)) => ips.v6.is_none(),
        Some(IpAddr::V4(_)) => ips.v4.is_none(),
        None => false,
    };
    if let Some(spec) = specs.iter().find(lacking) {
        let spec = spec.to_string();
        return Err(if ips.v6.is_none() {
            Error::NoContainerIpv6 {
                task: task.to_owned(),
                spec,
            }
        } else {
            Error::NoContainerIpv4 {
                task: task.to_owned(),
                spec,
            }
        });
    }
    if ips.v4.is_none() && ips.v6.is_none() {
        return Err(Error::NoContainerIp(task.to_owned()));
    }
    Ok(Families {
        v4: ips.v4.is_some(),
        v6: ips.v6.is_some(),
    })
}

/// What a [`Registry::add_held_by_docker`] comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromDocker {
    /// The container's ECS agent labels (events mode only).
    pub ecs: EcsLabels,
    /// Docker events mode makes the task (not berth-docker-proxy).
    pub events: bool,
}

pub struct Registry {
    store: Box<dyn Ledger>,
    datapath: Arc<dyn Datapath>,
    host: Arc<dyn Host>,
    bridge: Bridge,
    policy: PortPolicy,
    tasks: BTreeMap<String, Vec<Binding>>,
    /// Tasks started from a task definition (a subset of `tasks`).
    task_defs: BTreeMap<String, TaskRecord>,
    cooldowns: CoolDowns,
    /// Ports berth added to `ip_local_reserved_ports`, the only ones it ever
    /// removes: what the operator reserved stays reserved.
    reserved_by_us: BTreeSet<u16>,
    rng: u64,
    /// Each event once, shared by every subscriber: the channel
    /// preallocates all [`EVENT_BUFFER`] slots, each a pointer this way
    /// rather than a whole `Event` (1.2 MiB for the buffer, held from start).
    events: broadcast::Sender<Arc<Event>>,
    sg: security_groups::SgState,
    limits: PortLimits,
    sweeper: Arc<FlowSweeper>,
    /// Set for one [`Registry::add_held_by_docker`].
    docker_holds_ports: bool,
    /// A failed put-back left the datapath or the store apart from memory;
    /// the next request converges it first (`apply.rs`).
    dp_diverged: bool,
    store_diverged: bool,
}

/// What a publish changes besides the new bindings themselves.
struct Publish<'a> {
    task: &'a str,
    new: &'a [Binding],
    /// The task's bindings afterwards.
    all: Vec<Binding>,
    record: Option<TaskRecord>,
}

impl Registry {
    /// Loads the stored state; neither the datapath nor the host is touched
    /// until [`Registry::restore`] and [`Registry::reconcile_reserved_ports`].
    pub fn open(
        store: impl Ledger + 'static,
        datapath: Arc<dyn Datapath>,
        bridge: Bridge,
        host: Arc<dyn Host>,
        policy: PortPolicy,
    ) -> Result<Self> {
        let stored = store.load_all()?;
        let sg = security_groups::SgState::load(&store, &stored)?;
        let store = Box::new(store);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sweeper = Arc::new(FlowSweeper::start(datapath.clone()));
        Ok(Self {
            docker_holds_ports: false,
            store,
            datapath,
            sweeper,
            host,
            bridge,
            policy,
            tasks: stored.tasks,
            task_defs: stored.task_defs,
            cooldowns: CoolDowns::from_entries(stored.cooldowns),
            reserved_by_us: stored.reserved,
            rng: RandomState::new().hash_one(std::process::id()) | 1,
            events,
            sg,
            limits: PortLimits::default(),
            dp_diverged: false,
            store_diverged: false,
        })
    }

    /// Makes the allocator's choices repeatable (tests).
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    /// Re-inserts every stored binding (inserts are idempotent), so a
    /// datapath that lost or never had them matches the store again.
    /// Returns how many bindings were inserted.
    pub fn restore(&self) -> Result<usize> {
        self.restore_security_groups()?;
        self.restore_bindings()
    }

    /// The datapath holds exactly the bindings in memory: entries it has
    /// and memory lacks go, every binding is inserted again.
    fn restore_bindings(&self) -> Result<usize> {
        let keep = self.bindings();
        let stale = self.datapath.retain(&keep).map_err(Error::Datapath)?;
        if stale > 0 {
            tracing::info!(stale, "unpublished entries the store does not know");
        }
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

    /// At start: reserves every mapped host port that is not reserved, and
    /// releases the ones berth reserved that are no longer mapped (left by a
    /// crash, or by a store that was reset). Also forgets finished
    /// cool-downs. Returns (reserved, released).
    pub fn reconcile_reserved_ports(&mut self) -> Result<(usize, usize)> {
        let mapped: BTreeSet<u16> = self.tasks.values().flatten().map(|b| b.host_port).collect();
        let current = self.host.reserved_ports().map_err(sysctl_err("reading"))?;
        let add: BTreeSet<u16> = mapped.difference(&current).copied().collect();
        let drop: BTreeSet<u16> = self.reserved_by_us.difference(&mapped).copied().collect();
        let next: BTreeSet<u16> = current
            .union(&add)
            .filter(|p| !drop.contains(p))
            .copied()
            .collect();
        let mut cooldowns = self.cooldowns.clone();
        let commit = Commit {
            reserved_add: add.iter().copied().collect(),
            reserved_remove: drop.iter().copied().collect(),
            cooldowns: cooldowns.prune(self.host.now(), self.policy.cooldown_secs),
            ..Default::default()
        };
        // Record before writing, as a publish does.
        self.store.commit(&commit)?;
        if next != current {
            self.host
                .set_reserved_ports(&next)
                .map_err(sysctl_err("writing"))?;
        }
        self.reserved_by_us.extend(&add);
        self.reserved_by_us.retain(|p| !drop.contains(p));
        self.cooldowns = cooldowns;
        Ok((add.len(), drop.len()))
    }

    pub fn datapath(&self) -> &Arc<dyn Datapath> {
        &self.datapath
    }

    /// The worker that forgets removed bindings' flows.
    pub fn sweeper(&self) -> &Arc<FlowSweeper> {
        &self.sweeper
    }

    pub fn policy(&self) -> &PortPolicy {
        &self.policy
    }

    /// Every binding, by task name, each task's in the order added.
    pub fn bindings(&self) -> Vec<Binding> {
        self.tasks.values().flatten().cloned().collect()
    }

    /// Tasks started from a task definition, by name.
    pub fn task_records(&self) -> Vec<(String, TaskRecord)> {
        self.task_defs
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }

    /// Host ports berth added to `ip_local_reserved_ports`.
    pub fn reserved_by_berth(&self) -> &BTreeSet<u16> {
        &self.reserved_by_us
    }

    /// The container name of a binding of a task run from a definition.
    pub fn container_of(&self, b: &Binding) -> Option<String> {
        self.task_defs
            .get(&b.task)
            .and_then(|r| r.container_of(b))
            .map(str::to_owned)
    }

    pub fn set_port_limits(&mut self, limits: PortLimits) {
        self.limits = limits;
    }

    /// Refuses an IPv6 container address outside every served bridge's
    /// IPv6 subnets, as IPv4's; where no bridge has an IPv6 subnet to
    /// check against, publishes but says so in the log (never silently).
    fn check_ip6_on_bridge(&self, task: &str, ip: std::net::Ipv6Addr) -> Result<()> {
        if !self.bridge.check_contains6(ip)? {
            tracing::warn!(
                task,
                %ip,
                "no served bridge has an IPv6 subnet: the container's IPv6 address is not checked"
            );
        }
        Ok(())
    }

    /// Refuses a request naming more ports than allowed, or one that would
    /// leave `task` with too many, before anything is expanded.
    fn check_port_counts<'a>(
        &self,
        task: &str,
        specs: impl IntoIterator<Item = &'a PortSpec>,
        adding: bool,
    ) -> Result<()> {
        let count: u64 = specs
            .into_iter()
            .map(|s| u64::from(s.container.port_count()))
            .sum();
        if count > u64::from(self.limits.per_request) {
            return Err(Error::TooManyPortsInRequest {
                count,
                max: self.limits.per_request,
            });
        }
        if adding {
            let total = count + self.tasks.get(task).map_or(0, |b| b.len() as u64);
            if total > u64::from(self.limits.per_task) {
                return Err(Error::TooManyPortsInTask {
                    task: task.to_owned(),
                    count: total,
                    max: self.limits.per_task,
                });
            }
        }
        Ok(())
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// [`Registry::add`] for ports Docker holds: dockerd without its
    /// userland proxy still listens on each published port to reserve it
    /// (as does an engine handing `-use-listen-fd` sockets to
    /// berth-docker-proxy), so such a listener is not a conflict here.
    /// `from`: the container's ECS labels, and whether Docker events mode
    /// makes this task (it then owns it: see [`Registry::add_owned`]).
    pub fn add_held_by_docker(
        &mut self,
        task: &str,
        container_ip: impl Into<ContainerIps>,
        specs: &[PortSpec],
        from: &FromDocker,
    ) -> Result<Vec<Binding>> {
        self.docker_holds_ports = true;
        let added = self.add_owned(task, container_ip.into(), specs, &from.ecs, from.events);
        self.docker_holds_ports = false;
        added
    }

    /// Publishes `specs` for `task` at `container_ip` (an IPv4 address, or
    /// [`ContainerIps`] with an IPv6 one too); dynamic specs get their host
    /// ports here. All or nothing: on any error nothing changed.
    pub fn add(
        &mut self,
        task: &str,
        container_ip: impl Into<ContainerIps>,
        specs: &[PortSpec],
    ) -> Result<Vec<Binding>> {
        self.add_owned(
            task,
            container_ip.into(),
            specs,
            &EcsLabels::default(),
            false,
        )
    }

    /// Whether Docker events mode made `task`.
    pub fn docker_owned(&self, task: &str) -> bool {
        self.tasks
            .get(task)
            .is_some_and(|bs| bs.iter().any(|b| b.docker_events))
    }

    /// A task Docker events mode makes is its own: it may not join a task
    /// made otherwise (a container named like a hand-made task is not
    /// published), and nothing else may join it (the follower removes it
    /// whole when the container stops).
    fn add_owned(
        &mut self,
        task: &str,
        container_ip: ContainerIps,
        specs: &[PortSpec],
        ecs: &EcsLabels,
        docker_events: bool,
    ) -> Result<Vec<Binding>> {
        let exists = self.tasks.contains_key(task) || self.task_defs.contains_key(task);
        match (docker_events, self.docker_owned(task)) {
            (true, false) if exists => return Err(Error::TaskNotFromDocker(task.to_owned())),
            (false, true) => return Err(Error::TaskFromDocker(task.to_owned())),
            _ => {}
        }
        self.add_labelled(task, container_ip, specs, ecs, None, docker_events)
    }

    fn add_labelled(
        &mut self,
        task: &str,
        ips: ContainerIps,
        specs: &[PortSpec],
        ecs: &EcsLabels,
        cni: Option<&CniAttachment>,
        docker_events: bool,
    ) -> Result<Vec<Binding>> {
        validate_task_name(task)?;
        if specs.is_empty() {
            return Err(Error::NoPorts);
        }
        // A CNI attachment's task is the runtime's: only its own ADD
        // (which refuses an existing task) may give it bindings.
        if cni.is_none() && self.cni_owner(task).is_some() {
            return Err(Error::TaskFromCni(task.to_owned()));
        }
        self.check_port_counts(task, specs, true)?;
        if let Some(v4) = ips.v4 {
            self.bridge.check_contains(v4)?;
        }
        if let Some(v6) = ips.v6 {
            self.check_ip6_on_bridge(task, v6)?;
        }
        let families = families_for(task, &ips, specs)?;
        if self.task_defs.contains_key(task) {
            return Err(Error::TaskFromDefinition(task.to_owned()));
        }
        let resolved = self.place(&[(families, specs.to_vec())])?.remove(0);
        let mut new = bindings_of(task, ips, families, &resolved);
        for b in &mut new {
            b.ecs = ecs.clone();
            b.cni = cni.cloned();
            b.docker_events = docker_events;
        }
        let mut all = self.tasks.get(task).cloned().unwrap_or_default();
        all.extend(new.iter().cloned());
        self.publish(Publish {
            task,
            new: &new,
            all,
            record: None,
        })?;
        tracing::info!(task = %task, bindings = new.len(), "published");
        Ok(new)
    }

    /// Unpublishes `specs` of `task`, or all its bindings when `specs` is
    /// empty. A dynamic spec (`80`, `9000-9009`) names the bindings of those
    /// container ports whatever their host ports. All or nothing.
    pub fn remove(&mut self, task: &str, specs: &[PortSpec]) -> Result<Vec<Binding>> {
        self.remove_owned(task, specs, false)
    }

    /// [`Registry::remove`]; `docker_events`: Docker events mode asks, and
    /// may remove only a task it made (an operator may remove any).
    pub fn remove_owned(
        &mut self,
        task: &str,
        specs: &[PortSpec],
        docker_events: bool,
    ) -> Result<Vec<Binding>> {
        validate_task_name(task)?;
        let current = self
            .tasks
            .get(task)
            .ok_or_else(|| Error::NoSuchTask(task.to_owned()))?;
        if docker_events && !current.iter().any(|b| b.docker_events) {
            return Err(Error::TaskNotFromDocker(task.to_owned()));
        }
        if self.task_defs.contains_key(task) {
            return Err(Error::TaskFromDefinition(task.to_owned()));
        }
        self.check_port_counts(task, specs, false)?;
        let (gone, kept): (Vec<Binding>, Vec<Binding>) = if specs.is_empty() {
            (current.clone(), Vec::new())
        } else {
            let wanted = select(task, current, specs)?;
            current
                .iter()
                .cloned()
                .partition(|b| wanted.contains(&mapping_of(b)))
        };
        self.unpublish(task, &gone, kept, false)?;
        tracing::info!(task = %task, bindings = gone.len(), "unpublished");
        Ok(gone)
    }

    /// Publishes every container's port mappings of an ECS task definition
    /// as task `name`. All or nothing. Returns what ECS `DescribeTasks`
    /// would show for its containers (with their IPs).
    pub fn run_task(
        &mut self,
        name: &str,
        def: &TaskDefinition,
        ips: &BTreeMap<String, Ipv4Addr>,
    ) -> Result<TaskRecord> {
        self.run_task_dual(name, def, ips, &BTreeMap::new())
    }

    /// [`Registry::run_task`]; `ips6`: containers' IPv6 addresses, whose
    /// port mappings are then published over IPv6 too (one host port).
    pub fn run_task_dual(
        &mut self,
        name: &str,
        def: &TaskDefinition,
        ips: &BTreeMap<String, Ipv4Addr>,
        ips6: &BTreeMap<String, std::net::Ipv6Addr>,
    ) -> Result<TaskRecord> {
        validate_task_name(name)?;
        let paired = def.container_ips(ips)?;
        for (container, v6) in ips6 {
            if !paired.iter().any(|(c, _)| &c.name == container) {
                return Err(Error::UnknownContainer {
                    container: container.clone(),
                    known: paired.iter().map(|(c, _)| c.name.clone()).collect(),
                });
            }
            check_container_ip6(*v6)?;
        }
        let families_of = |c: &str| Families {
            v4: true,
            v6: ips6.contains_key(c),
        };
        for ip in paired.iter().filter_map(|(_, ip)| *ip) {
            self.bridge.check_contains(ip)?;
        }
        for v6 in ips6.values() {
            self.check_ip6_on_bridge(name, *v6)?;
        }
        if self.tasks.contains_key(name) || self.task_defs.contains_key(name) {
            return Err(Error::TaskExists(name.to_owned()));
        }
        let groups: Vec<(Families, Vec<PortSpec>)> = paired
            .iter()
            .map(|(c, _)| {
                let families = families_of(&c.name);
                // Bridge mode binds every address: for a container with
                // IPv6, every address of both families.
                let specs = c
                    .specs()
                    .into_iter()
                    .map(|s| PortSpec {
                        bind_ip: if families.v6 { None } else { s.bind_ip },
                        ..s
                    })
                    .collect();
                (families, specs)
            })
            .collect();
        self.check_port_counts(name, groups.iter().flat_map(|(_, g)| g), true)?;
        let resolved = self.place(&groups)?;

        let mut new = Vec::new();
        let mut containers = Vec::new();
        for ((c, ip), specs) in paired.iter().zip(&resolved) {
            let families = families_of(&c.name);
            let ip6 = ips6.get(&c.name).copied();
            let mut network_bindings = Vec::new();
            for (mapping, spec) in c.port_mappings.iter().zip(specs) {
                network_bindings.extend(network_bindings_of(mapping.ports, spec, families));
                if let Some(ip) = ip {
                    let ips = ContainerIps {
                        v4: Some(*ip),
                        v6: ip6,
                    };
                    new.extend(bindings_of(name, ips, families, std::slice::from_ref(spec)));
                }
            }
            containers.push(ContainerRecord {
                name: c.name.clone(),
                container_ip: *ip,
                container_ip6: ip6,
                network_bindings,
            });
        }
        let record = TaskRecord { containers };
        self.publish(Publish {
            task: name,
            new: &new,
            all: new.clone(),
            record: Some(record.clone()),
        })?;
        tracing::info!(task = %name, bindings = new.len(), "task started");
        Ok(record)
    }

    /// Unpublishes a task started from a task definition. Returns its
    /// record and the bindings released.
    pub fn stop_task(&mut self, name: &str) -> Result<(TaskRecord, Vec<Binding>)> {
        validate_task_name(name)?;
        let Some(record) = self.task_defs.get(name).cloned() else {
            return Err(if self.tasks.contains_key(name) {
                Error::TaskNotFromDefinition(name.to_owned())
            } else {
                Error::NoSuchTask(name.to_owned())
            });
        };
        let gone = self.tasks.get(name).cloned().unwrap_or_default();
        self.unpublish(name, &gone, Vec::new(), true)?;
        tracing::info!(task = %name, bindings = gone.len(), "task stopped");
        Ok((record, gone))
    }

    /// Chooses the host ports of every dynamic spec, after checking the
    /// static ones, so a dynamic port never takes one asked for by name
    /// later in the same request. Returns the specs with host ports, in the
    /// same shape.
    fn place(&mut self, groups: &[(Families, Vec<PortSpec>)]) -> Result<Vec<Vec<PortSpec>>> {
        let mut pending: Vec<PortMapping> = groups
            .iter()
            .flat_map(|(f, specs)| specs.iter().flat_map(|s| s.expand_in(*f)))
            .collect();
        self.check_conflicts(&pending)?;
        self.check_host_listeners(&pending, self.docker_holds_ports)?;
        let now = self.host.now();
        let mut bound: HashMap<Protocol, BTreeSet<u16>> = HashMap::new();
        let mut out = Vec::with_capacity(groups.len());
        for (families, specs) in groups {
            let mut resolved = Vec::with_capacity(specs.len());
            for spec in specs {
                let spec = match spec.fixed_host() {
                    Some(_) => *spec,
                    None => {
                        let start = self.allocate(spec, &pending, &mut bound, now)?;
                        let spec = spec.with_host_start(start);
                        pending.extend(spec.expand_in(*families));
                        spec
                    }
                };
                resolved.push(spec);
            }
            out.push(resolved);
        }
        Ok(out)
    }

    /// The first host port of a free block for a dynamic spec.
    fn allocate(
        &mut self,
        spec: &PortSpec,
        pending: &[PortMapping],
        bound: &mut HashMap<Protocol, BTreeSet<u16>>,
        now: u64,
    ) -> Result<u16> {
        let protocol = spec.protocol;
        let collides = |p: Protocol, ip: IpAddr| p == protocol && pick_must_avoid(ip, spec);
        let mapped = self
            .tasks
            .values()
            .flatten()
            .filter(|b| collides(b.protocol, b.bind_ip))
            .map(|b| b.host_port)
            .chain(
                pending
                    .iter()
                    .filter(|m| collides(m.protocol, m.bind_ip))
                    .map(|m| m.host_port),
            )
            .collect();
        let bound = match bound.entry(protocol) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.host.bound_ports(protocol).map_err(|err| {
                    Error::io(
                        format!("reading the host's {} sockets", protocol.as_str()),
                        err,
                    )
                })?)
            }
        };
        let taken = Taken {
            mapped,
            bound: bound.clone(),
            cooling: self
                .cooldowns
                .cooling(protocol, now, self.policy.cooldown_secs),
        };
        // A pool (`9000-9009:80`) was named by the user: its first free
        // port, as Docker picks it, with no reserved list or cool-down.
        let (policy, taken, offset) = match spec.host_pool() {
            Some(pool) => (
                PortPolicy {
                    range: pool,
                    reserved: BTreeSet::new(),
                    cooldown_secs: 0,
                },
                Taken {
                    cooling: BTreeSet::new(),
                    ..taken
                },
                0,
            ),
            None => (self.policy.clone(), taken, self.next_random()),
        };
        allocator::allocate(&policy, &taken, spec.container.port_count(), offset)
            .map(|r| r.start)
            .map_err(|exhausted| Error::PortsExhausted {
                exhausted,
                bind_ip: spec.bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                protocol,
            })
    }

    /// xorshift64*: enough to spread picks over the range.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn sysctl_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| {
        Error::io(
            format!("{what} {}", crate::engine::host::RESERVED_PORTS_SYSCTL),
            e,
        )
    }
}

/// The bindings of resolved (host ports chosen) specs, each pointing at the
/// container's address of its own family (callers refused an IPv6 spec for
/// a container without an IPv6 address).
fn bindings_of(
    task: &str,
    ips: ContainerIps,
    families: Families,
    specs: &[PortSpec],
) -> Vec<Binding> {
    specs
        .iter()
        .flat_map(|s| s.expand_in(families))
        .filter_map(|m| Some((ips.for_bind(m.bind_ip)?, m)))
        .map(|(container_ip, m)| Binding {
            task: task.to_owned(),
            container_ip,
            bind_ip: m.bind_ip,
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: m.protocol,
            ecs: EcsLabels::default(),
            cni: None,
            docker_events: false,
        })
        .collect()
}

/// The ECS `networkBindings` entries of one resolved port mapping: one per
/// family it is published on, as ECS lists a dual-stack binding.
fn network_bindings_of(
    ports: MappedPorts,
    spec: &PortSpec,
    families: Families,
) -> impl Iterator<Item = NetworkBinding> + '_ {
    spec.bind_ips(families)
        .map(move |bind_ip| network_binding(ports, spec, bind_ip))
}

/// The ECS `networkBindings` entry of one resolved port mapping on one
/// bind IP.
fn network_binding(ports: MappedPorts, spec: &PortSpec, bind_ip: IpAddr) -> NetworkBinding {
    let host = spec.host.unwrap_or(spec.container);
    let range = |r: PortRange| format!("{}-{}", r.start, r.end);
    match ports {
        MappedPorts::Port { .. } => NetworkBinding {
            bind_ip,
            container_port: Some(spec.container.start),
            host_port: Some(host.start),
            protocol: spec.protocol,
            container_port_range: None,
            host_port_range: None,
        },
        MappedPorts::Range(_) => NetworkBinding {
            bind_ip,
            container_port: None,
            host_port: None,
            protocol: spec.protocol,
            container_port_range: Some(range(spec.container)),
            host_port_range: Some(range(host)),
        },
    }
}

/// The mappings of `current` that `specs` name; a spec (or, for a dynamic
/// spec, a container port) that names none is an error. A spec without a
/// host IP names the task's mappings on either family's wildcard.
fn select(task: &str, current: &[Binding], specs: &[PortSpec]) -> Result<BTreeSet<PortMapping>> {
    let mut wanted = BTreeSet::new();
    let no_such = |spec: String| Error::NoSuchBinding {
        task: task.to_owned(),
        spec,
    };
    // Indexed once, so a request's cost grows with its ports, not with
    // its ports times the task's.
    let have: HashSet<PortMapping> = current.iter().map(mapping_of).collect();
    let mut by_container: HashMap<(IpAddr, u16, Protocol), Vec<PortMapping>> = HashMap::new();
    for m in &have {
        by_container
            .entry((m.bind_ip, m.container_port, m.protocol))
            .or_default()
            .push(*m);
    }
    for spec in specs {
        if spec.fixed_host().is_some() {
            // Per port pair: the first (IPv4) mapping names it in errors.
            let mut first: Vec<PortMapping> = spec.expand_in(Families::V4).collect();
            if spec.bind_ip.is_some() {
                first.clear();
                first.extend(spec.expand_in(Families::BOTH));
            }
            let all: Vec<PortMapping> = spec.expand_in(Families::BOTH).collect();
            for m in &first {
                let found: Vec<&PortMapping> = all
                    .iter()
                    .filter(|o| o.host_port == m.host_port && have.contains(o))
                    .collect();
                if found.is_empty() {
                    return Err(no_such(m.to_string()));
                }
                wanted.extend(found.into_iter().copied());
            }
            continue;
        }
        // A pool names the mapping whose host port it holds.
        let in_pool = |m: &&PortMapping| {
            spec.host_pool()
                .is_none_or(|p| p.start <= m.host_port && m.host_port <= p.end)
        };
        for container_port in spec.container.iter() {
            let found: Vec<PortMapping> = spec
                .bind_ips(Families::BOTH)
                .filter_map(|ip| by_container.get(&(ip, container_port, spec.protocol)))
                .flatten()
                .filter(in_pool)
                .copied()
                .collect();
            wanted.extend(found.iter().copied());
            if found.is_empty() {
                let ip = spec.bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                return Err(no_such(format!(
                    "{}::{container_port}/{}",
                    HostIp(ip),
                    spec.protocol.as_str()
                )));
            }
        }
    }
    Ok(wanted)
}

mod apply;
mod berth;
mod bridge;
mod cni;
#[cfg(test)]
mod dual_stack_tests;
#[cfg(test)]
mod dynamic_tests;
mod security_groups;
mod sweeper;
pub use cni::CheckedBinding;
pub use sweeper::FlowSweeper;
#[cfg(test)]
mod security_groups_tests;

#[cfg(test)]
mod tests;
