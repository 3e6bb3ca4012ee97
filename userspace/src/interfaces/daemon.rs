//! `berth daemon`: load the datapath, restore the stored bindings, keep the
//! host addresses current, expire flows, and serve the API until SIGTERM.
use std::{
    collections::BTreeSet, future::Future, io, net::Ipv4Addr, path::PathBuf, sync::Arc,
    time::Duration,
};

use tokio::{
    net::UnixListener,
    signal::unix::{signal, SignalKind},
    time::MissedTickBehavior,
};

use crate::{
    adapters::datapath::{BpfDatapath, Datapath, DatapathConfig},
    adapters::host::{self, format_port_list, Host, SystemHost},
    adapters::netif,
    adapters::socket::{self, SocketFile},
    adapters::store::Store,
    domain::cidr::Ipv4Cidr,
    domain::error::{DatapathError, Error, Result},
    domain::limits::ApiLimits,
    domain::spec::PortRange,
    engine::allocator::PortPolicy,
    engine::registry::{Berth, Bridge, Registry},
    interfaces::api,
    interfaces::server,
};

pub const HOST_ADDR_REFRESH: Duration = Duration::from_secs(2);
pub const FLOW_EXPIRY: Duration = Duration::from_secs(5);
/// How long open API connections may delay exit after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub datapath: DatapathConfig,
    /// `None`: the namespace's `ip_local_port_range`.
    pub dynamic_ports: Option<PortRange>,
    pub reserved_ports: BTreeSet<u16>,
    pub port_cooldown_secs: u64,
    /// Groups per task, `--default-sg`, flow timeouts.
    pub security_groups: crate::engine::sg_book::SgSettings,
    /// `--socket-group`.
    pub socket_group: Option<String>,
    pub limits: ApiLimits,
    /// `--docker`: the Docker engine's API socket (events mode).
    pub docker: Option<PathBuf>,
    /// `--metrics-listen`, `--metrics-per-binding`.
    pub metrics: crate::interfaces::metrics::MetricsConfig,
    /// `--flow-log` and its settings.
    pub flow_log: Option<crate::interfaces::flow_log::FlowLogConfig>,
    /// `--datapath-log debug`: the datapath log on from the start.
    pub datapath_log: bool,
}

impl DaemonConfig {
    /// The allocator's policy; reads `ip_local_port_range` when no
    /// `--dynamic-ports` was given.
    pub fn port_policy(&self) -> Result<PortPolicy> {
        let range = match self.dynamic_ports {
            Some(range) => range,
            None => host::local_port_range().map_err(|e| {
                Error::io(
                    format!(
                        "reading {} (or give --dynamic-ports)",
                        host::LOCAL_PORT_RANGE_SYSCTL
                    ),
                    e,
                )
            })?,
        };
        Ok(PortPolicy {
            range,
            reserved: self.reserved_ports.clone(),
            cooldown_secs: self.port_cooldown_secs,
        })
    }
}

/// Everything [`serve`] runs on, built by [`run`] or by a test.
pub struct Parts {
    pub listener: UnixListener,
    pub socket_file: SocketFile,
    pub store: Store,
    pub datapath: Arc<dyn Datapath>,
    pub bridge: Bridge,
    /// Where host addresses come from; [`netif::host_ipv4_addrs`] in
    /// production.
    pub host_addrs: fn() -> io::Result<Vec<Ipv4Addr>>,
    /// Reserved-ports sysctl, sockets and clock; [`SystemHost`] in
    /// production.
    pub host: Arc<dyn Host>,
    pub policy: PortPolicy,
    pub security_groups: crate::engine::sg_book::SgSettings,
    pub limits: ApiLimits,
    /// Docker events mode: the follower's state, for `status`.
    pub docker: Option<api::DockerLink>,
    /// `/metrics` settings, and the `--metrics-listen` socket, bound.
    pub metrics: crate::interfaces::metrics::MetricsConfig,
    pub metrics_listener: Option<tokio::net::TcpListener>,
    /// `--flow-log`: the tap on the datapath and the writer.
    pub flow_log: Option<crate::interfaces::flow_log::FlowLog>,
    /// The datapath log's ring, forwarded into this log.
    pub datapath_log: Option<crate::adapters::datapath::dplog::DpLogReader>,
}

/// Starts the daemon and returns once it has stopped. Every error is one
/// line for `berth: ...`.
pub async fn run(config: DaemonConfig) -> Result<()> {
    check_root()?;
    check_interfaces(&config.datapath)?;
    let policy = config.port_policy()?;
    server::raise_fd_limit(config.limits.max_connections);
    let shutdown = shutdown_signal()?;
    // Claim the socket before touching the datapath, so a second daemon
    // started by mistake stops here and leaves the first one's programs be.
    let gid = config
        .socket_group
        .as_deref()
        .map(socket::resolve_group)
        .transpose()?;
    let (listener, socket_file) = socket::bind(&config.socket, gid).await?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(crate::interfaces::metrics::bind(addr).await?),
        None => None,
    };
    // One daemon per pin directory and per store, for the daemon's life: a
    // second one would reconcile the first one's maps against its own store.
    let pin_dir = crate::adapters::datapath::prepare_pin_dir(&config.datapath.bpffs)?;
    let _lock = crate::adapters::lock::lock_daemon(&config.state_dir, &pin_dir)?;
    let store = Store::open(&config.state_dir)?;
    // Opened before the datapath: a path the daemon cannot write stops it
    // with nothing changed.
    let flow_log_writer = config
        .flow_log
        .as_ref()
        .map(crate::interfaces::flow_log::Writer::open)
        .transpose()?;
    let datapath = BpfDatapath::open(&config.datapath)?;
    if config.datapath_log {
        datapath.set_datapath_log(true)?;
    }
    let datapath_log = Some(datapath.datapath_log_reader());
    let flow_log = match (config.flow_log.clone(), flow_log_writer) {
        (Some(c), Some(writer)) => {
            let (tap, ring) = datapath.flow_log_tap()?;
            tracing::info!(
                to = ?c.dest,
                interval_secs = c.interval.as_secs(),
                version = c.format.version(),
                "flow log on"
            );
            Some(crate::interfaces::flow_log::FlowLog {
                config: c,
                tap,
                ring,
                writer,
                uplinks: crate::interfaces::flow_log::uplink_indexes(&config.datapath.uplinks),
            })
        }
        _ => None,
    };
    tracing::info!(
        uplinks = ?config.datapath.uplinks,
        bridges = ?config.datapath.bridges,
        attach = ?config.datapath.attach,
        bpffs = %config.datapath.bpffs.display(),
        "datapath ready"
    );
    // IPv6 flows get smaller tables than IPv4's by default: say so, and how
    // to raise them, so a busy IPv6 host does not find out from refusals.
    let capacity = config.datapath.capacity;
    tracing::info!(
        max_flows = capacity.max_flows,
        max_flows6 = capacity.max_flows6,
        "flow tables: IPv4 {} flows, IPv6 {} flows (--max-flows, --max-flows6)",
        capacity.max_flows,
        capacity.max_flows6
    );
    let docker = config
        .docker
        .clone()
        .map(|socket| (crate::interfaces::docker_events::link(&socket), socket));
    let parts = Parts {
        listener,
        socket_file,
        store,
        datapath: Arc::new(datapath),
        bridge: Bridge::system(
            &config.datapath.bridges,
            netif::interface_subnets,
            netif::interface_subnets6,
        ),
        host_addrs: netif::host_ipv4_addrs,
        host: Arc::new(SystemHost::default()),
        policy,
        security_groups: config.security_groups.clone(),
        limits: config.limits,
        docker: docker.as_ref().map(|(link, _)| link.clone()),
        metrics: config.metrics,
        metrics_listener,
        flow_log,
        datapath_log,
    };
    // The API socket is bound, so the follower's requests wait in its
    // backlog until the store is restored and served.
    let follower = docker.map(|(link, socket)| {
        tokio::spawn(crate::interfaces::docker_events::follow(
            socket,
            config.socket.clone(),
            config.datapath.bridges.clone(),
            config.state_dir.clone(),
            link,
        ))
    });
    let served = serve(parts, shutdown).await;
    if let Some(f) = follower {
        f.abort();
    }
    served
}

pub fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// The uplinks must exist. A bridge need not exist yet (it is attached
/// when it appears), but a link of its name that is not a bridge is a
/// mistake, and so is an uplink among the bridges.
pub fn check_interfaces(config: &DatapathConfig) -> Result<()> {
    for name in &config.uplinks {
        if !netif::interface_exists(name) {
            return Err(Error::NoSuchInterface(name.clone()));
        }
    }
    for name in &config.bridges {
        if config.uplinks.contains(name) {
            return Err(Error::UplinkIsBridge(name.clone()));
        }
        if netif::interface_exists(name) && !netif::is_bridge(name) {
            return Err(Error::NotABridge(name.clone()));
        }
    }
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT. Handlers are installed now, so
/// a signal during startup is not lost.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    let install = |kind| signal(kind).map_err(|e| Error::io("installing signal handlers", e));
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Restores the store into the datapath, then serves the API until
/// `shutdown` resolves. Programs stay attached afterwards: the datapath keeps
/// forwarding while no daemon runs.
pub async fn serve(
    parts: Parts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Parts {
        listener,
        socket_file,
        store,
        datapath,
        bridge,
        host_addrs,
        host,
        policy,
        security_groups,
        limits,
        docker,
        metrics,
        metrics_listener,
        flow_log,
        datapath_log,
    } = parts;
    let store_path = store.path().to_owned();
    let info = api::DaemonInfo {
        socket: socket_file.path().to_owned(),
        store: store_path.clone(),
        docker,
    };
    let expiry = crate::engine::sg_book::expiry_period(&security_groups.timeouts);
    let mut addrs = HostAddrSync::new(datapath.clone(), host_addrs, bridge.clone());
    // With a default group, a port not hooked yet must not talk either.
    datapath.set_port_gate(security_groups.default_sg.is_some())?;
    let mut registry = Registry::open(store, datapath.clone(), bridge, host, policy)?;
    registry.configure_security_groups(security_groups)?;
    registry.set_port_limits(limits.ports);
    let restored = registry.restore()?;
    tracing::info!(bindings = restored, store = %store_path.display(), "restored bindings");
    let (reserved, released) = registry.reconcile_reserved_ports()?;
    let policy = registry.policy();
    tracing::info!(
        reserved,
        released,
        berth_reserved = %format_port_list(registry.reserved_by_berth()),
        dynamic_ports = %policy.range,
        reserved_ports = %format_port_list(&policy.reserved),
        cooldown_secs = policy.cooldown_secs,
        "host ports reconciled"
    );

    addrs.sync()?;
    let mut background = vec![
        tokio::spawn(addrs.run()),
        tokio::spawn(expire_flows(datapath.clone(), expiry)),
    ];
    if let Some(reader) = datapath_log {
        background.push(tokio::spawn(forward_datapath_log(reader)));
    }
    // Loading and restoring peaked; every answered request may have too.
    let trimmer = crate::adapters::memory::Trimmer::default();
    background.push(tokio::spawn(trimmer.clone().run()));
    trimmer.poke();

    let berth = Berth::new(registry).with_max_subscribers(limits.max_event_subscribers);
    let metrics_state = crate::interfaces::metrics::MetricsState::new(metrics.per_binding);
    let metrics_server = metrics_listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving /metrics on TCP");
        }
        let app = crate::interfaces::metrics::tcp_router(berth.clone(), metrics_state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "the --metrics-listen server stopped");
            }
        })
    });
    let flow_log = flow_log.map(|log| {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(crate::interfaces::flow_log::run(
            log,
            berth.clone(),
            stopped,
        ));
        (stop, task)
    });
    let closer = berth.clone();
    let sweeps = berth.clone();
    tracing::info!(
        socket = %socket_file.path().display(),
        max_connections = limits.max_connections,
        max_event_subscribers = limits.max_event_subscribers,
        max_ports_per_request = limits.ports.per_request,
        max_ports_per_task = limits.ports.per_task,
        "serving the API"
    );
    server::serve(
        listener,
        api::router(berth)
            .layer(axum::Extension(info))
            .layer(axum::Extension(metrics_state))
            .layer(axum::middleware::from_fn(
                move |req, next: axum::middleware::Next| {
                    let trimmer = trimmer.clone();
                    async move {
                        let resp = next.run(req).await;
                        trimmer.poke();
                        resp
                    }
                },
            )),
        limits,
        async move {
            shutdown.await;
            // End event streams, or they would hold the shutdown up.
            closer.close();
        },
        SHUTDOWN_GRACE,
    )
    .await;
    // Removals answered before their flows were forgotten; finish that.
    sweeps.finish_sweeps().await;
    // The window in progress is written before the daemon exits.
    if let Some((stop, task)) = flow_log {
        let _ = stop.send(());
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
    }
    for task in background.into_iter().chain(metrics_server) {
        task.abort();
    }
    drop(socket_file);
    tracing::info!("stopped");
    Ok(())
}

/// Pushes the host's IPv4 addresses and the bridges' subnets to the
/// datapath whenever they change: wildcard bindings answer on the first,
/// and neither may be the source of a packet arriving on an uplink.
struct HostAddrSync {
    datapath: Arc<dyn Datapath>,
    source: fn() -> io::Result<Vec<Ipv4Addr>>,
    bridge: Bridge,
    last: Option<Vec<Ipv4Addr>>,
    last_subnets: Option<Vec<Ipv4Cidr>>,
    last6: Option<Vec<std::net::Ipv6Addr>>,
    /// Whether each table (IPv4, IPv6) was full at the last push: warned
    /// once when it fills, told once when all fit again.
    full: [bool; 2],
}

impl HostAddrSync {
    fn new(
        datapath: Arc<dyn Datapath>,
        source: fn() -> io::Result<Vec<Ipv4Addr>>,
        bridge: Bridge,
    ) -> Self {
        Self {
            datapath,
            source,
            bridge,
            last: None,
            last_subnets: None,
            last6: None,
            full: [false; 2],
        }
    }

    /// Pushes what changed. Each set goes on its own: one the datapath
    /// refuses (a full table) leaves the others current, and the first
    /// error is returned.
    fn sync(&mut self) -> Result<()> {
        let v4 = self.sync_addrs();
        let v6 = self.sync_addrs6();
        let subnets = self.sync_subnets();
        v4.and(v6).and(subnets)
    }

    fn sync_addrs(&mut self) -> Result<()> {
        let addrs = (self.source)().map_err(|e| Error::io("reading host addresses", e))?;
        if self.last.as_ref() != Some(&addrs) {
            let pushed = self.datapath.set_host_addrs(&addrs);
            self.table_full(0, pushed)?;
            tracing::info!(addrs = ?addrs, "host addresses");
            self.last = Some(addrs);
        }
        Ok(())
    }

    fn sync_addrs6(&mut self) -> Result<()> {
        let addrs6 =
            netif::host_ipv6_addrs().map_err(|e| Error::io("reading host IPv6 addresses", e))?;
        if self.last6.as_ref() != Some(&addrs6) {
            let pushed = self.datapath.set_host_addrs6(&addrs6);
            self.table_full(1, pushed)?;
            // One per container's veth: listed only while they are few.
            if addrs6.len() <= 32 {
                tracing::info!(addrs = ?addrs6, "host IPv6 addresses");
            } else {
                tracing::info!(count = addrs6.len(), "host IPv6 addresses");
            }
            self.last6 = Some(addrs6);
        }
        Ok(())
    }

    /// A full table holds what fits and is no failure: warns once when it
    /// fills (`berth status` and the metrics count what it lacks), and
    /// says when everything fits again. Other errors are returned.
    fn table_full(&mut self, family: usize, pushed: Result<(), DatapathError>) -> Result<()> {
        match pushed {
            Ok(()) => {
                if std::mem::take(&mut self.full[family]) {
                    tracing::info!(
                        family = ["IPv4", "IPv6"][family],
                        "every host address fits in its table again"
                    );
                }
                Ok(())
            }
            Err(e @ DatapathError::HostAddrsFull { .. }) => {
                if !std::mem::replace(&mut self.full[family], true) {
                    tracing::warn!("{e}");
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_subnets(&mut self) -> Result<()> {
        let mut subnets: Vec<Ipv4Cidr> = self
            .bridge
            .subnets()?
            .into_iter()
            .map(Ipv4Cidr::network)
            .collect();
        subnets.sort();
        subnets.dedup();
        if self.last_subnets.as_ref() != Some(&subnets) {
            self.datapath.set_bridge_subnets(&subnets)?;
            let shown: Vec<String> = subnets.iter().map(ToString::to_string).collect();
            tracing::info!(subnets = ?shown, "bridge subnets");
            self.last_subnets = Some(subnets);
        }
        Ok(())
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + HOST_ADDR_REFRESH,
            HOST_ADDR_REFRESH,
        );
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.sync() {
                tracing::warn!(error = %err, "refreshing host addresses failed");
            }
        }
    }
}

/// Forwards the datapath log's lines as they come.
async fn forward_datapath_log(reader: crate::adapters::datapath::dplog::DpLogReader) {
    // SAFETY: the reader holds the logger, which owns the ring's fd, for
    // as long as the AsyncFd lives.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
    };
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the datapath log; its lines are not forwarded");
            return;
        }
    };
    loop {
        match fd.readable().await {
            Ok(mut guard) => {
                guard.get_inner().flush();
                guard.clear_ready();
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the datapath log");
                return;
            }
        }
    }
}

async fn expire_flows(datapath: Arc<dyn Datapath>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dp = datapath.clone();
        // Walking a large conntrack map takes a while; keep it off the workers.
        match tokio::task::spawn_blocking(move || dp.expire_flows()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(flows = n, "expired idle flows"),
            Ok(Err(err)) => tracing::warn!(error = %err, "expiring flows failed"),
            Err(err) => tracing::error!(error = %err, "flow expiry task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::cidr::Ipv4Cidr,
        engine::fake::{FakeDatapath, FakeHost},
        interfaces::api::{AddRequest, RemoveRequest},
        interfaces::client::Client,
    };

    fn fixed_addrs() -> io::Result<Vec<Ipv4Addr>> {
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::LOCALHOST])
    }

    async fn parts(dir: &std::path::Path, datapath: Arc<FakeDatapath>) -> Parts {
        let (listener, socket_file) = socket::bind(&dir.join("berth.sock"), None).await.unwrap();
        Parts {
            listener,
            socket_file,
            store: Store::open(&dir.join("state")).unwrap(),
            datapath,
            bridge: Bridge::Fixed {
                name: "br0".into(),
                subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
            },
            host_addrs: fixed_addrs,
            host: Arc::new(FakeHost::default()),
            policy: PortPolicy::new(PortRange {
                start: 49153,
                end: 49162,
            }),
            security_groups: Default::default(),
            limits: ApiLimits::default(),
            docker: None,
            metrics: Default::default(),
            metrics_listener: None,
            flow_log: None,
            datapath_log: None,
        }
    }

    fn add_req() -> AddRequest {
        AddRequest {
            task: "web".into(),
            container_ip: "172.17.0.2".into(),
            container_ip6: None,
            ports: vec!["8080:80".into()],
            held_by_docker: false,
            ecs_task_arn: None,
            ecs_container_name: None,
            docker_events: false,
        }
    }

    #[tokio::test]
    async fn serves_the_api_on_its_socket_and_removes_it_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let datapath = Arc::new(FakeDatapath::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(serve(parts(dir.path(), datapath.clone()).await, async {
            let _ = stopped.await;
        }));
        let client = Client::new(dir.path().join("berth.sock"));
        client.health().await.unwrap();
        assert_eq!(datapath.host_addrs(), fixed_addrs().unwrap());
        assert_eq!(datapath.host_addrs6(), netif::host_ipv6_addrs().unwrap());

        let added = client.add(&add_req()).await.unwrap();
        assert_eq!(client.bindings().await.unwrap(), added);
        let err = client.add(&add_req()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "Bind for 0.0.0.0:8080 failed: port is already allocated"
        );
        assert_eq!(err.http_status(), 409);
        datapath.count(berth_maps::Counter::IngressDnat, 1);
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.counters["ingress_dnat"], 1);

        stop.send(()).unwrap();
        daemon.await.unwrap().unwrap();
        assert!(!dir.path().join("berth.sock").exists());
        // The datapath keeps what was published: no detach, no flush.
        assert_eq!(datapath.bindings(), added);
    }

    #[tokio::test]
    async fn a_restarted_daemon_restores_the_stored_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let added = {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let p = parts(dir.path(), Arc::new(FakeDatapath::default())).await;
            let daemon = tokio::spawn(serve(p, async {
                let _ = stopped.await;
            }));
            let client = Client::new(dir.path().join("berth.sock"));
            let mut added = client.add(&add_req()).await.unwrap();
            let mut req = add_req();
            req.task = "tmp".into();
            req.ports = vec!["9090:90".into()];
            client.add(&req).await.unwrap();
            client
                .remove(&RemoveRequest {
                    task: "tmp".into(),
                    ports: vec![],
                    docker_events: false,
                })
                .await
                .unwrap();
            added.sort();
            stop.send(()).unwrap();
            daemon.await.unwrap().unwrap();
            added
        };
        // A fresh datapath, as after a reboot that lost the pins.
        let datapath = Arc::new(FakeDatapath::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(serve(parts(dir.path(), datapath.clone()).await, async {
            let _ = stopped.await;
        }));
        let client = Client::new(dir.path().join("berth.sock"));
        assert_eq!(client.bindings().await.unwrap(), added);
        assert_eq!(datapath.bindings(), added);
        stop.send(()).unwrap();
        daemon.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn open_event_streams_do_not_hold_the_shutdown_up() {
        let dir = tempfile::tempdir().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let p = parts(dir.path(), Arc::new(FakeDatapath::default())).await;
        let daemon = tokio::spawn(serve(p, async {
            let _ = stopped.await;
        }));
        let client = Client::new(dir.path().join("berth.sock"));
        client.health().await.unwrap();
        let follower = Client::new(dir.path().join("berth.sock"));
        let events = tokio::spawn(async move {
            let mut lines = Vec::new();
            follower
                .events(true, |l| {
                    lines.push(l.to_owned());
                    true
                })
                .await
                .map(|()| lines)
        });
        // With existing=true each binding shows up exactly once, whether the
        // subscription lands before or after its add.
        client.add(&add_req()).await.unwrap();
        let mut req = add_req();
        req.task = "api".into();
        req.ports = vec!["9090:90".into()];
        client.add(&req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        stop.send(()).unwrap();
        daemon.await.unwrap().unwrap();
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "{:?}",
            started.elapsed()
        );
        let lines = events.await.unwrap().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.contains(r#""event":"added""#)));
    }

    #[tokio::test]
    async fn start_reconciles_the_reserved_ports_sysctl() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(&dir.path().join("state"))
            .unwrap()
            .put_task(
                "web",
                &[crate::domain::model::Binding {
                    task: "web".into(),
                    container_ip: "172.17.0.2".parse().unwrap(),
                    bind_ip: Ipv4Addr::UNSPECIFIED.into(),
                    host_port: 8080,
                    container_port: 80,
                    protocol: crate::domain::model::Protocol::Tcp,
                    ecs: Default::default(),
                    cni: None,
                    docker_events: false,
                }],
            )
            .unwrap();
        let host = Arc::new(FakeHost::default());
        host.set_reserved(&[22]);
        let mut p = parts(dir.path(), Arc::new(FakeDatapath::default())).await;
        p.host = host.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(serve(p, async {
            let _ = stopped.await;
        }));
        Client::new(dir.path().join("berth.sock"))
            .health()
            .await
            .unwrap();
        assert_eq!(host.reserved(), [22, 8080].into());
        stop.send(()).unwrap();
        daemon.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn flows_are_expired_periodically() {
        let datapath = Arc::new(FakeDatapath::default());
        let task = tokio::spawn(expire_flows(datapath.clone(), Duration::from_millis(10)));
        for _ in 0..500 {
            if datapath.expire_calls() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert!(datapath.expire_calls() >= 3, "{}", datapath.expire_calls());
    }

    #[test]
    fn host_addresses_are_pushed_only_when_they_change() {
        let dp = Arc::new(FakeDatapath::default());
        let bridge = Bridge::Fixed {
            name: "br0".into(),
            subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
        };
        let mut sync = HostAddrSync::new(dp.clone(), fixed_addrs, bridge);
        sync.sync().unwrap();
        sync.sync().unwrap();
        assert_eq!(dp.host_addr_updates(), 1);
        assert_eq!(dp.host_addrs(), fixed_addrs().unwrap());
        assert_eq!(
            dp.bridge_subnets(),
            [Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 0), 16)],
            "the bridge's networks, not its address"
        );
    }

    #[test]
    fn a_full_ipv6_table_keeps_the_first_addresses_and_is_no_failure() {
        let dp = Arc::new(FakeDatapath::default());
        let all = netif::host_ipv6_addrs().unwrap();
        assert!(!all.is_empty(), "::1 at least");
        dp.limit_host_addrs6(all.len() - 1);
        let bridge = Bridge::Fixed {
            name: "br0".into(),
            subnets: vec![],
        };
        let mut sync = HostAddrSync::new(dp.clone(), fixed_addrs, bridge);
        sync.sync().unwrap();
        assert_eq!(dp.host_addrs6(), all[..all.len() - 1]);
        assert!(sync.full[1] && !sync.full[0]);
        // Held as pushed: not pushed again while the addresses stay.
        sync.sync().unwrap();
        assert_eq!(dp.host_addr6_updates(), 1);
    }

    #[test]
    fn a_refused_ipv6_address_set_leaves_the_other_updates_done() {
        let dp = Arc::new(FakeDatapath::default());
        dp.fail_host_addrs6();
        let bridge = Bridge::Fixed {
            name: "br0".into(),
            subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
        };
        let mut sync = HostAddrSync::new(dp.clone(), fixed_addrs, bridge);
        let err = sync.sync().unwrap_err();
        assert!(err.to_string().contains("BERTH_HOST_ADDRS6"), "{err}");
        assert_eq!(dp.host_addrs(), fixed_addrs().unwrap());
        assert_eq!(
            dp.bridge_subnets(),
            [Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 0), 16)],
            "the subnets are pushed although the IPv6 addresses were refused"
        );
    }

    #[test]
    fn missing_uplinks_and_links_that_are_no_bridge_are_named() {
        let config = DatapathConfig {
            uplinks: vec!["berth-nope0".into()],
            bridges: vec!["berth-nope1".into()],
            bpffs: "/sys/fs/bpf".into(),
            attach: Default::default(),
            ct_capacity: None,
            socket_hooks: true,
            nat_capacity: None,
            embryonic_capacity: None,
            capacity: Default::default(),
            flow_log: false,
        };
        assert_eq!(
            check_interfaces(&config).unwrap_err().to_string(),
            "interface berth-nope0 does not exist"
        );
        // A bridge that does not exist yet is waited for.
        let config = DatapathConfig {
            uplinks: vec!["lo".into()],
            ..config
        };
        check_interfaces(&config).unwrap();
        let err = check_interfaces(&DatapathConfig {
            bridges: vec!["berth-nope1".into(), "lo".into()],
            ..config.clone()
        })
        .unwrap_err();
        assert!(matches!(err, Error::UplinkIsBridge(_)), "{err}");
        let err = check_interfaces(&DatapathConfig {
            uplinks: vec![],
            bridges: vec!["lo".into()],
            ..config
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface lo is not a bridge; --bridge names a Linux bridge (docker0, cni0, ...)"
        );
    }
}
