//! [`Berth`]: the daemon's async handle on the registry. Requests take
//! turns behind one mutex on a blocking thread; event subscribers and the
//! flow sweeper are served around it.
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use tokio::sync::{broadcast, watch};

use super::{sweeper, FlowSweeper, FromDocker, Registry};
use crate::{
    domain::{
        ecs::TaskDefinition,
        error::{Error, Result},
        events::{Event, EventKind},
        model::{Binding, ContainerIps, TaskRecord},
        spec::PortSpec,
    },
    engine::datapath::Datapath,
};

/// An event subscriber's snapshot, its receiver, and its place under the
/// subscriber cap.
pub struct Subscription {
    pub snapshot: Vec<Event>,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// The daemon's handle: cheap to clone, one request at a time inside.
#[derive(Clone)]
pub struct Berth {
    pub(super) registry: Arc<tokio::sync::Mutex<Registry>>,
    datapath: Arc<dyn Datapath>,
    /// Forgets removed bindings' flows after their requests answered.
    pub(super) sweeper: Arc<FlowSweeper>,
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
        Self {
            registry: Arc::new(tokio::sync::Mutex::new(registry)),
            datapath,
            sweeper,
            subscribers: Arc::new(tokio::sync::Semaphore::new(
                crate::domain::limits::DEFAULT_MAX_EVENT_SUBSCRIBERS,
            )),
            max_subscribers: crate::domain::limits::DEFAULT_MAX_EVENT_SUBSCRIBERS,
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

    /// [`Berth::run_task`] with containers' IPv6 addresses (`ips6`).
    pub async fn run_task_dual(
        &self,
        name: String,
        def: TaskDefinition,
        ips: BTreeMap<String, Ipv4Addr>,
        ips6: BTreeMap<String, std::net::Ipv6Addr>,
    ) -> Result<TaskRecord> {
        let addrs: Vec<Ipv4Addr> = ips.values().copied().collect();
        let ticket = self.sweeper.blocker_for_addrs(&addrs);
        self.wait_for_sweep(ticket).await?;
        self.with_registry(move |r| r.run_task_dual(&name, &def, &ips, &ips6))
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
        container_ip: impl Into<ContainerIps>,
        specs: Vec<PortSpec>,
    ) -> Result<Vec<Binding>> {
        self.add_with(task, container_ip.into(), specs, None).await
    }

    /// [`Berth::add`]; `from_docker`: see [`Registry::add_held_by_docker`].
    pub async fn add_with(
        &self,
        task: String,
        container_ip: ContainerIps,
        specs: Vec<PortSpec>,
        from_docker: Option<FromDocker>,
    ) -> Result<Vec<Binding>> {
        // A removed binding's flows of either family are swept before the
        // same mapping is published again.
        let ticket = container_ip
            .v4
            .and_then(|v4| self.sweeper.blocker_for_specs(v4, &specs))
            .or_else(|| self.sweeper.blocker_for_specs(container_ip.v6?, &specs));
        self.wait_for_sweep(ticket).await?;
        self.with_registry(move |r| {
            if let Some(from) = &from_docker {
                r.add_held_by_docker(&task, container_ip, &specs, from)
            } else {
                r.add(&task, container_ip, &specs)
            }
        })
        .await
    }

    /// Answers once the bindings are out of the datapath's services and
    /// the store; their flows are forgotten in the background.
    pub async fn remove(&self, task: String, specs: Vec<PortSpec>) -> Result<Vec<Binding>> {
        self.remove_owned(task, specs, false).await
    }

    /// [`Berth::remove`]; see [`Registry::remove_owned`].
    pub async fn remove_owned(
        &self,
        task: String,
        specs: Vec<PortSpec>,
        docker_events: bool,
    ) -> Result<Vec<Binding>> {
        self.with_registry(move |r| r.remove_owned(&task, &specs, docker_events))
            .await
    }

    /// Waits, without the registry lock, for the pending sweeps a publish
    /// could meet, so it rarely waits inside the lock ([`Registry::publish`]
    /// checks again, with the bindings).
    pub(super) async fn wait_for_sweep(&self, ticket: Option<sweeper::Ticket>) -> Result<()> {
        let Some(ticket) = ticket else {
            return Ok(());
        };
        let sweeper = self.sweeper.clone();
        tokio::task::spawn_blocking(move || sweeper.wait(ticket))
            .await
            .map_err(Error::Blocking)
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
            .map_err(Error::Blocking)??;
        Ok(counters
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect())
    }

    /// Every binding (of `task` only, when given) with its per-binding
    /// counters; an unknown task is an error rather than an empty list.
    pub async fn binding_counters(
        &self,
        task: Option<String>,
    ) -> Result<Vec<(Binding, Option<crate::engine::datapath::BindingCounters>)>> {
        let all = self.bindings().await;
        let bindings: Vec<Binding> = match &task {
            Some(t) => {
                let mine: Vec<Binding> = all.into_iter().filter(|b| &b.task == t).collect();
                let known =
                    !mine.is_empty() || self.task_records().await.iter().any(|(name, _)| name == t);
                if !known {
                    return Err(Error::NoSuchTask(t.clone()));
                }
                mine
            }
            None => all,
        };
        let datapath = self.datapath.clone();
        let (bindings, counters) = tokio::task::spawn_blocking(move || {
            let c = datapath.binding_counters(&bindings);
            (bindings, c)
        })
        .await
        .map_err(Error::Blocking)?;
        Ok(bindings.into_iter().zip(counters?).collect())
    }

    /// The datapath log on or off.
    pub async fn set_datapath_log(&self, on: bool) -> Result<()> {
        let datapath = self.datapath.clone();
        tokio::task::spawn_blocking(move || datapath.set_datapath_log(on))
            .await
            .map_err(Error::Blocking)??;
        Ok(())
    }

    /// What the datapath has attached and how full its maps are; counting
    /// a large table's entries takes a while, so off the async workers.
    pub async fn datapath_status(&self) -> Result<Option<crate::engine::datapath::DatapathStatus>> {
        let datapath = self.datapath.clone();
        Ok(tokio::task::spawn_blocking(move || datapath.status())
            .await
            .map_err(Error::Blocking)??)
    }

    /// Runs `f` under the mutex on a blocking thread: store commits fsync and
    /// datapath updates are syscalls, neither belongs on the async workers.
    pub(super) async fn with_registry<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut guard = self.registry.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut guard))
            .await
            .map_err(Error::Blocking)?
    }
}
