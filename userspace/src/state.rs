//! Tasks and their bindings: validation, conflict detection, host port
//! allocation, and keeping the store, the datapath and the host's
//! `ip_local_reserved_ports` in step. [`Registry`] is the synchronous core;
//! [`Berth`] serializes requests to it behind one async mutex.
//!
//! Every request is all or nothing. Publishing: datapath inserts, then one
//! store commit that also records the ports berth is about to reserve, then
//! the sysctl write; a crash between the last two is repaired by the
//! reconcile at start. Unpublishing: datapath removes, sysctl write, then
//! the store commit. A failed step undoes the earlier ones. The removed
//! bindings' tracked flows are forgotten afterwards by a background worker
//! ([`FlowSweeper`]); a publish that could meet them waits for it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    net::Ipv4Addr,
    sync::Arc,
};

use tokio::sync::{broadcast, watch};

use crate::{
    allocator::{self, CoolDowns, PortPolicy, Taken},
    datapath::Datapath,
    ecs::{MappedPorts, TaskDefinition},
    error::{Error, Result},
    events::{Event, EventKind, EVENT_BUFFER},
    host::{format_port_list, Host},
    limits::PortLimits,
    model::{Binding, ContainerRecord, NetworkBinding, Protocol, TaskRecord},
    netif::{self, Ipv4Cidr},
    spec::{PortMapping, PortRange, PortSpec},
    store::{Commit, Store},
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

    pub fn check_contains(&self, ip: Ipv4Addr) -> Result<()> {
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
    events: broadcast::Sender<Event>,
    sg: security_groups::SgState,
    limits: PortLimits,
    sweeper: Arc<FlowSweeper>,
    /// Set for one [`Registry::add_held_by_docker`].
    docker_holds_ports: bool,
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
        store: Store,
        datapath: Arc<dyn Datapath>,
        bridge: Bridge,
        host: Arc<dyn Host>,
        policy: PortPolicy,
    ) -> Result<Self> {
        let stored = store.load_all()?;
        let sg = security_groups::SgState::load(&store, &stored)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sweeper = Arc::new(FlowSweeper::start(datapath.clone()));
        Ok(Registry {
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
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// [`Registry::add`] for Docker events mode: dockerd without its
    /// userland proxy still listens on each published port to reserve it,
    /// so host listeners are not a conflict here.
    pub fn add_held_by_docker(
        &mut self,
        task: &str,
        container_ip: Ipv4Addr,
        specs: &[PortSpec],
    ) -> Result<Vec<Binding>> {
        self.docker_holds_ports = true;
        let added = self.add(task, container_ip, specs);
        self.docker_holds_ports = false;
        added
    }

    /// Publishes `specs` for `task` at `container_ip`; dynamic specs get
    /// their host ports here. All or nothing: on any error nothing changed.
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
        self.check_port_counts(task, specs, true)?;
        self.bridge.check_contains(container_ip)?;
        if self.task_defs.contains_key(task) {
            return Err(Error::TaskFromDefinition(task.to_owned()));
        }
        let resolved = self.place(&[specs.to_vec()])?.remove(0);
        let new = bindings_of(task, container_ip, &resolved);
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
        validate_task_name(task)?;
        let current = self
            .tasks
            .get(task)
            .ok_or_else(|| Error::NoSuchTask(task.to_owned()))?;
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
        validate_task_name(name)?;
        let paired = def.container_ips(ips)?;
        for ip in paired.iter().filter_map(|(_, ip)| *ip) {
            self.bridge.check_contains(ip)?;
        }
        if self.tasks.contains_key(name) || self.task_defs.contains_key(name) {
            return Err(Error::TaskExists(name.to_owned()));
        }
        let groups: Vec<Vec<PortSpec>> = paired.iter().map(|(c, _)| c.specs()).collect();
        self.check_port_counts(name, groups.iter().flatten(), true)?;
        let resolved = self.place(&groups)?;

        let mut new = Vec::new();
        let mut containers = Vec::new();
        for ((c, ip), specs) in paired.iter().zip(&resolved) {
            let mut network_bindings = Vec::new();
            for (mapping, spec) in c.port_mappings.iter().zip(specs) {
                network_bindings.push(network_binding(mapping.ports, spec));
                if let Some(ip) = ip {
                    new.extend(bindings_of(name, *ip, std::slice::from_ref(spec)));
                }
            }
            containers.push(ContainerRecord {
                name: c.name.clone(),
                container_ip: *ip,
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
    fn place(&mut self, groups: &[Vec<PortSpec>]) -> Result<Vec<Vec<PortSpec>>> {
        let mut pending: Vec<PortMapping> =
            groups.iter().flatten().flat_map(PortSpec::expand).collect();
        self.check_conflicts(&pending)?;
        if !self.docker_holds_ports {
            self.check_host_listeners(&pending)?;
        }
        let now = self.host.now();
        let mut bound: HashMap<Protocol, BTreeSet<u16>> = HashMap::new();
        let mut out = Vec::with_capacity(groups.len());
        for specs in groups {
            let mut resolved = Vec::with_capacity(specs.len());
            for spec in specs {
                let spec = match spec.fixed_host() {
                    Some(_) => *spec,
                    None => {
                        let start = self.allocate(spec, &pending, &mut bound, now)?;
                        let spec = spec.with_host_start(start);
                        pending.extend(spec.expand());
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
        let collides =
            |p: Protocol, ip: Ipv4Addr| p == protocol && bind_ips_overlap(ip, spec.bind_ip);
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
                bind_ip: spec.bind_ip,
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

    fn publish(&mut self, p: Publish<'_>) -> Result<()> {
        // Rare here: [`Berth`] waits, before it locks, for the sweeps the
        // request's specs could meet; this catches a removal that slipped
        // in between (and callers without that check).
        let record_ips: Vec<Ipv4Addr> = p
            .record
            .iter()
            .flat_map(|r| r.containers.iter().filter_map(|c| c.container_ip))
            .collect();
        if let Some(ticket) = self.sweeper.blocker(p.new, &record_ips) {
            self.sweeper.wait(ticket);
        }
        self.sg_before_publish(p.task, &p.all, p.record.as_ref())?;
        if let Err(err) = self.insert_all(p.new) {
            self.sg_resync();
            return Err(err);
        }
        let outcome = (|| {
            let current = self.host.reserved_ports().map_err(sysctl_err("reading"))?;
            let reserve: BTreeSet<u16> = p
                .new
                .iter()
                .map(|b| b.host_port)
                .filter(|port| !current.contains(port))
                .collect();
            let mut cooldowns = self.cooldowns.clone();
            let mut commit = Commit {
                tasks: vec![(p.task.to_owned(), p.all.clone())],
                cooldowns: cooldowns.prune(self.host.now(), self.policy.cooldown_secs),
                reserved_add: reserve.iter().copied().collect(),
                ..Default::default()
            };
            if let Some(record) = &p.record {
                commit
                    .task_defs
                    .push((p.task.to_owned(), Some(record.clone())));
            }
            self.store.commit(&commit)?;
            if !reserve.is_empty() {
                let next = current.union(&reserve).copied().collect();
                if let Err(e) = self.host.set_reserved_ports(&next) {
                    self.revert_publish(p.task, &reserve);
                    return Err(sysctl_err("writing")(e));
                }
            }
            Ok((reserve, cooldowns))
        })();
        let (reserve, cooldowns) = match outcome {
            Ok(done) => done,
            Err(err) => {
                self.undo_inserts(p.new);
                self.sg_resync();
                return Err(err);
            }
        };
        self.cooldowns = cooldowns;
        self.reserved_by_us.extend(reserve);
        self.tasks.insert(p.task.to_owned(), p.all);
        if let Some(record) = p.record {
            self.task_defs.insert(p.task.to_owned(), record);
        }
        for b in p.new {
            self.emit(EventKind::Added, b);
        }
        Ok(())
    }

    /// Puts the store back as it was before a publish of `task` whose
    /// sysctl write failed.
    fn revert_publish(&self, task: &str, reserved: &BTreeSet<u16>) {
        let mut commit = Commit {
            tasks: vec![(
                task.to_owned(),
                self.tasks.get(task).cloned().unwrap_or_default(),
            )],
            reserved_remove: reserved
                .iter()
                .filter(|p| !self.reserved_by_us.contains(p))
                .copied()
                .collect(),
            ..Default::default()
        };
        if !self.task_defs.contains_key(task) {
            commit.task_defs.push((task.to_owned(), None));
        }
        if let Err(err) = self.store.commit(&commit) {
            tracing::error!(task = %task, error = %err, "rollback: restoring the store failed; the next start reconciles it");
        }
    }

    fn unpublish(
        &mut self,
        task: &str,
        gone: &[Binding],
        kept: Vec<Binding>,
        drop_record: bool,
    ) -> Result<()> {
        self.remove_all(gone)?;
        if let Err(err) = self.sg_before_unpublish(task, &kept, drop_record) {
            self.undo_removes(gone);
            return Err(err);
        }
        let still_mapped: BTreeSet<u16> = self
            .tasks
            .iter()
            .filter(|(name, _)| name.as_str() != task)
            .flat_map(|(_, bs)| bs)
            .chain(&kept)
            .map(|b| b.host_port)
            .collect();
        let release: BTreeSet<u16> = gone
            .iter()
            .map(|b| b.host_port)
            .filter(|p| !still_mapped.contains(p) && self.reserved_by_us.contains(p))
            .collect();
        let released = match self.unreserve(&release) {
            Ok(()) => release,
            Err(err) => {
                // Still recorded as ours, so the next start releases them.
                tracing::warn!(ports = %format_port_list(&release), error = %err, "could not release reserved ports");
                BTreeSet::new()
            }
        };

        let now = self.host.now();
        let mut cooldowns = self.cooldowns.clone();
        let mut cooldown_changes = cooldowns.prune(now, self.policy.cooldown_secs);
        if self.policy.cooldown_secs > 0 {
            for b in gone {
                cooldowns.release(b.protocol, b.host_port, now);
                cooldown_changes.push(((b.protocol, b.host_port), Some(now)));
            }
        }
        let mut commit = Commit {
            tasks: vec![(task.to_owned(), kept.clone())],
            cooldowns: cooldown_changes,
            reserved_remove: released.iter().copied().collect(),
            ..Default::default()
        };
        if drop_record {
            commit.task_defs.push((task.to_owned(), None));
        }
        if let Err(err) = self.store.commit(&commit) {
            if let Err(e) = self.reserve_again(&released) {
                tracing::error!(error = %e, "rollback: re-reserving ports failed");
            }
            self.undo_removes(gone);
            self.sg_resync();
            return Err(err);
        }
        let containers: Vec<Option<String>> = gone.iter().map(|b| self.container_of(b)).collect();
        let task_ips = self.task_ips(task);
        self.cooldowns = cooldowns;
        self.reserved_by_us.retain(|p| !released.contains(p));
        if kept.is_empty() {
            self.tasks.remove(task);
        } else {
            self.tasks.insert(task.to_owned(), kept);
        }
        if drop_record {
            self.task_defs.remove(task);
        }
        self.sg_after_unpublish(task);
        let in_use = self.ips_in_use();
        let gone_ips: Vec<Ipv4Addr> = task_ips.difference(&in_use).copied().collect();
        self.sweeper.queue(gone, &gone_ips);
        for (b, container) in gone.iter().zip(containers) {
            let _ = self
                .events
                .send(Event::now(EventKind::Removed, b.clone(), container));
        }
        Ok(())
    }

    fn emit(&self, kind: EventKind, b: &Binding) {
        // No subscriber is not an error.
        let _ = self
            .events
            .send(Event::now(kind, b.clone(), self.container_of(b)));
    }

    fn unreserve(&self, ports: &BTreeSet<u16>) -> std::io::Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut current = self.host.reserved_ports()?;
        let before = current.len();
        current.retain(|p| !ports.contains(p));
        if current.len() != before {
            self.host.set_reserved_ports(&current)?;
        }
        Ok(())
    }

    fn reserve_again(&self, ports: &BTreeSet<u16>) -> std::io::Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut current = self.host.reserved_ports()?;
        current.extend(ports);
        self.host.set_reserved_ports(&current)
    }

    fn check_conflicts(&self, new: &[PortMapping]) -> Result<()> {
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

    /// Refuses a static host port a host process listens on (or, for UDP,
    /// is bound to), as Docker does when its proxy cannot bind it: taking
    /// it would silently steal the port's traffic from that process.
    fn check_host_listeners(&self, new: &[PortMapping]) -> Result<()> {
        let mut listeners: HashMap<Protocol, Vec<std::net::SocketAddr>> = HashMap::new();
        for m in new {
            let socks = match listeners.entry(m.protocol) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.host.listeners(m.protocol).map_err(|err| {
                        Error::io(
                            format!("reading the host's {} sockets", m.protocol.as_str()),
                            err,
                        )
                    })?)
                }
            };
            let blocked = socks.iter().any(|s| {
                s.port() == m.host_port && crate::host::listener_blocks(s.ip(), m.bind_ip)
            });
            if blocked {
                return Err(Error::HostPortInUse {
                    protocol: m.protocol,
                    bind_ip: m.bind_ip,
                    host_port: m.host_port,
                });
            }
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
        // Flows that started in the moment the bindings were live; a retry
        // of the same bindings waits for this sweep.
        self.sweeper.queue(done, &[]);
    }

    fn undo_removes(&self, done: &[Binding]) {
        for b in done.iter().rev() {
            if let Err(err) = self.datapath.insert(b) {
                tracing::error!(binding = describe(b), error = %err, "rollback: re-inserting failed");
            }
        }
    }
}

fn sysctl_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(format!("{what} {}", crate::host::RESERVED_PORTS_SYSCTL), e)
}

/// The bindings of resolved (host ports chosen) specs.
fn bindings_of(task: &str, container_ip: Ipv4Addr, specs: &[PortSpec]) -> Vec<Binding> {
    specs
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
        .collect()
}

/// The ECS `networkBindings` entry of one resolved port mapping.
fn network_binding(ports: MappedPorts, spec: &PortSpec) -> NetworkBinding {
    let host = spec.host.unwrap_or(spec.container);
    let range = |r: PortRange| format!("{}-{}", r.start, r.end);
    match ports {
        MappedPorts::Port { .. } => NetworkBinding {
            bind_ip: spec.bind_ip,
            container_port: Some(spec.container.start),
            host_port: Some(host.start),
            protocol: spec.protocol,
            container_port_range: None,
            host_port_range: None,
        },
        MappedPorts::Range(_) => NetworkBinding {
            bind_ip: spec.bind_ip,
            container_port: None,
            host_port: None,
            protocol: spec.protocol,
            container_port_range: Some(range(spec.container)),
            host_port_range: Some(range(host)),
        },
    }
}

/// The mappings of `current` that `specs` name; a spec (or, for a dynamic
/// spec, a container port) that names none is an error.
fn select(task: &str, current: &[Binding], specs: &[PortSpec]) -> Result<BTreeSet<PortMapping>> {
    let mut wanted = BTreeSet::new();
    let no_such = |spec: String| Error::NoSuchBinding {
        task: task.to_owned(),
        spec,
    };
    // Indexed once, so a request's cost grows with its ports, not with
    // its ports times the task's.
    let have: HashSet<PortMapping> = current.iter().map(mapping_of).collect();
    let mut by_container: HashMap<(Ipv4Addr, u16, Protocol), Vec<PortMapping>> = HashMap::new();
    for m in &have {
        by_container
            .entry((m.bind_ip, m.container_port, m.protocol))
            .or_default()
            .push(*m);
    }
    for spec in specs {
        if spec.fixed_host().is_some() {
            for m in spec.expand() {
                if !have.contains(&m) {
                    return Err(no_such(m.to_string()));
                }
                wanted.insert(m);
            }
            continue;
        }
        // A pool names the mapping whose host port it holds.
        let in_pool = |m: &&PortMapping| {
            spec.host_pool()
                .is_none_or(|p| p.start <= m.host_port && m.host_port <= p.end)
        };
        for container_port in spec.container.iter() {
            let found: Vec<PortMapping> = by_container
                .get(&(spec.bind_ip, container_port, spec.protocol))
                .into_iter()
                .flatten()
                .filter(in_pool)
                .copied()
                .collect();
            wanted.extend(found.iter().copied());
            if found.is_empty() {
                return Err(no_such(format!(
                    "{}::{container_port}/{}",
                    spec.bind_ip,
                    spec.protocol.as_str()
                )));
            }
        }
    }
    Ok(wanted)
}

/// An event subscriber's snapshot, its receiver, and its place under the
/// subscriber cap.
pub struct Subscription {
    pub snapshot: Vec<Event>,
    pub rx: broadcast::Receiver<Event>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// The daemon's handle: cheap to clone, one request at a time inside.
#[derive(Clone)]
pub struct Berth {
    registry: Arc<tokio::sync::Mutex<Registry>>,
    datapath: Arc<dyn Datapath>,
    /// Forgets removed bindings' flows after their requests answered.
    sweeper: Arc<FlowSweeper>,
    /// One permit per open event stream.
    subscribers: Arc<tokio::sync::Semaphore>,
    max_subscribers: usize,
    /// Set once the daemon shuts down, so event streams end and do not
    /// hold the shutdown up.
    closing: Arc<watch::Sender<bool>>,
}

impl Berth {
    pub fn new(registry: Registry) -> Self {
        let datapath = registry.datapath().clone();
        let sweeper = registry.sweeper().clone();
        Berth {
            registry: Arc::new(tokio::sync::Mutex::new(registry)),
            datapath,
            sweeper,
            subscribers: Arc::new(tokio::sync::Semaphore::new(
                crate::limits::DEFAULT_MAX_EVENT_SUBSCRIBERS,
            )),
            max_subscribers: crate::limits::DEFAULT_MAX_EVENT_SUBSCRIBERS,
            closing: Arc::new(watch::channel(false).0),
        }
    }

    pub async fn bindings(&self) -> Vec<Binding> {
        self.registry.lock().await.bindings()
    }

    /// Tasks run from task definitions, by name.
    pub async fn task_records(&self) -> Vec<(String, TaskRecord)> {
        self.registry.lock().await.task_records()
    }

    pub async fn run_task(
        &self,
        name: String,
        def: TaskDefinition,
        ips: BTreeMap<String, Ipv4Addr>,
    ) -> Result<TaskRecord> {
        let addrs: Vec<Ipv4Addr> = ips.values().copied().collect();
        let ticket = self.sweeper.blocker_for_addrs(&addrs);
        self.wait_for_sweep(ticket).await?;
        self.with_registry(move |r| r.run_task(&name, &def, &ips))
            .await
    }

    pub async fn stop_task(&self, name: String) -> Result<(TaskRecord, Vec<Binding>)> {
        self.with_registry(move |r| r.stop_task(&name)).await
    }

    /// At most `n` event streams at once.
    pub fn with_max_subscribers(mut self, n: usize) -> Self {
        self.subscribers = Arc::new(tokio::sync::Semaphore::new(n));
        self.max_subscribers = n;
        self
    }

    /// Subscribes to events; with `existing`, also returns an "added" event
    /// for every current binding, taken atomically with the subscription so
    /// nothing falls between the two. The permit is the subscriber's place
    /// under the cap; drop it with the stream.
    pub async fn subscribe(&self, existing: bool) -> Result<Subscription> {
        let permit = self
            .subscribers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManySubscribers(self.max_subscribers))?;
        let registry = self.registry.lock().await;
        let rx = registry.subscribe();
        let snapshot = if existing {
            registry
                .bindings()
                .into_iter()
                .map(|b| {
                    let container = registry.container_of(&b);
                    Event::now(EventKind::Added, b, container)
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Subscription {
            snapshot,
            rx,
            permit,
        })
    }

    /// Resolves when the daemon starts shutting down.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    /// Ends every event stream.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub async fn add(
        &self,
        task: String,
        container_ip: Ipv4Addr,
        specs: Vec<PortSpec>,
    ) -> Result<Vec<Binding>> {
        self.add_with(task, container_ip, specs, false).await
    }

    /// [`Berth::add`]; `held_by_docker`: see [`Registry::add_held_by_docker`].
    pub async fn add_with(
        &self,
        task: String,
        container_ip: Ipv4Addr,
        specs: Vec<PortSpec>,
        held_by_docker: bool,
    ) -> Result<Vec<Binding>> {
        let ticket = self.sweeper.blocker_for_specs(container_ip, &specs);
        self.wait_for_sweep(ticket).await?;
        self.with_registry(move |r| {
            if held_by_docker {
                r.add_held_by_docker(&task, container_ip, &specs)
            } else {
                r.add(&task, container_ip, &specs)
            }
        })
        .await
    }

    /// Answers once the bindings are out of the datapath's services and
    /// the store; their flows are forgotten in the background.
    pub async fn remove(&self, task: String, specs: Vec<PortSpec>) -> Result<Vec<Binding>> {
        self.with_registry(move |r| r.remove(&task, &specs)).await
    }

    /// Waits, without the registry lock, for the pending sweeps a publish
    /// could meet, so it rarely waits inside the lock ([`Registry::publish`]
    /// checks again, with the bindings).
    async fn wait_for_sweep(&self, ticket: Option<sweeper::Ticket>) -> Result<()> {
        let Some(ticket) = ticket else {
            return Ok(());
        };
        let sweeper = self.sweeper.clone();
        tokio::task::spawn_blocking(move || sweeper.wait(ticket))
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// At shutdown: finishes the pending sweeps, so no removal's flows are
    /// left behind.
    pub async fn finish_sweeps(&self) {
        let sweeper = self.sweeper.clone();
        let pending = sweeper.pending();
        if pending > 0 {
            tracing::info!(
                bindings = pending,
                "forgetting the flows of removed bindings before stopping"
            );
        }
        if let Err(err) = tokio::task::spawn_blocking(move || sweeper.close()).await {
            tracing::error!(error = %err, "finishing the flow sweeps failed; the next start forgets what is left");
        }
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

    /// What the datapath has attached and how full its maps are; counting
    /// a large table's entries takes a while, so off the async workers.
    pub async fn datapath_status(&self) -> Result<Option<crate::datapath::DatapathStatus>> {
        let datapath = self.datapath.clone();
        Ok(tokio::task::spawn_blocking(move || datapath.status())
            .await
            .map_err(|e| Error::Internal(e.to_string()))??)
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
mod dynamic_tests;
mod security_groups;
mod sweeper;
pub use sweeper::FlowSweeper;
#[cfg(test)]
mod security_groups_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDatapath, FakeHost, FakeOp};

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
        host.listen(Protocol::Tcp, "0.0.0.0:8080");
        let datapath = Arc::new(FakeDatapath::default());
        let store = Store::open(dir.path()).unwrap();
        let mut r =
            Registry::open(store, datapath.clone(), bridge(), host.clone(), policy()).unwrap();
        assert!(r
            .add("web", ip("172.17.0.2"), &specs(&["8080:80"]))
            .is_err());
        r.add_held_by_docker("web", ip("172.17.0.2"), &specs(&["8080:80"]))
            .unwrap();
        assert_eq!(datapath.bindings().len(), 1);
        // The exemption lasts for that one request.
        host.listen(Protocol::Tcp, "0.0.0.0:9090");
        assert!(r
            .add("api", ip("172.17.0.3"), &specs(&["9090:80"]))
            .is_err());
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
        let mut r =
            Registry::open(store, datapath.clone(), bridge(), host.clone(), policy()).unwrap();
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

    #[tokio::test]
    async fn a_removal_answers_before_its_flows_are_forgotten_in_one_sweep() {
        let f = fixture();
        let datapath = f.datapath.clone();
        let berth = Berth::new(f.registry);
        let added = berth
            .add(
                "web".into(),
                ip("172.17.0.2"),
                specs(&["9000-9999:9000-9999"]),
            )
            .await
            .unwrap();
        berth
            .add("db".into(), ip("172.17.0.3"), specs(&["5432:5432"]))
            .await
            .unwrap();
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
        berth
            .add("db".into(), ip("172.17.0.3"), specs(&["5433:5433"]))
            .await
            .unwrap();
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
        let old = berth
            .add("dns".into(), ip("172.17.0.2"), specs(&["5353:53/udp"]))
            .await
            .unwrap();
        datapath.set_forget_delay(ms(400));
        berth.remove("dns".into(), vec![]).await.unwrap();
        // The replaced container: same address and port. Publishing before
        // the sweep would let it inherit the old flows or lose its own.
        let started = std::time::Instant::now();
        let new = berth
            .add("dns".into(), ip("172.17.0.2"), specs(&["5353:53/udp"]))
            .await
            .unwrap();
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
        let a = berth
            .add("a".into(), ip("172.17.0.2"), specs(&["8080:80"]))
            .await
            .unwrap();
        let b = berth
            .add("b".into(), ip("172.17.0.3"), specs(&["8081:80"]))
            .await
            .unwrap();
        datapath.set_forget_delay(ms(300));
        berth.remove("a".into(), vec![]).await.unwrap();
        berth.remove("b".into(), vec![]).await.unwrap();
        assert!(datapath.forgotten().is_empty());
        berth.finish_sweeps().await;
        assert_eq!(datapath.forgotten().concat(), [a, b].concat());
        assert_eq!(berth.sweeper.pending(), 0);
    }
}
