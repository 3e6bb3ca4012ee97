//! Docker events mode (`berth daemon --docker`): with dockerd running
//! `--userland-proxy=false`, berth lists the running containers, then
//! follows the events API; each container's published ports become one
//! berth task, removed when the container stops or dies.
//!
//! Tasks go through the daemon's own API socket (the same checks and store
//! as `berth map add`). Which tasks came from Docker is kept in
//! `<state-dir>/docker-tasks.json`, so a berth start removes those whose
//! container stopped while berth was down, and never touches other tasks.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bollard::{
    models::{ContainerInspectResponse, PortBinding},
    query_parameters::{EventsOptionsBuilder, ListContainersOptions},
    Docker, API_DEFAULT_VERSION,
};
use futures_util::StreamExt as _;

use crate::{
    domain::events::rfc3339,
    domain::model::{Binding, EcsLabels},
    interfaces::api::{AddRequest, DockerLink, DockerStatus, RemoveRequest},
    interfaces::client::Client,
};

pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
const RETRY: Duration = Duration::from_secs(2);
const API_TIMEOUT_SECS: u64 = 10;
const ECS_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
const ECS_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
const MARKS_FILE: &str = "docker-tasks.json";

/// `unix:///path` or a bare path → the socket path; anything else is refused
/// (no TLS client here).
pub fn parse_docker_host(host: &str) -> Result<PathBuf, String> {
    match host.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ if host.starts_with('/') => Ok(PathBuf::from(host)),
        _ => Err(format!(
            "--docker {host}: only unix:///path sockets are supported"
        )),
    }
}

/// One container as berth publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub task: String,
    pub container_ip: IpAddr,
    /// Its `GlobalIPv6Address` on the same network (`dockerd --ipv6`):
    /// Docker's `[::]` entries are then published over IPv6.
    pub container_ip6: Option<std::net::Ipv6Addr>,
    /// berth specs, `[hostIP:]hostPort[-end]:containerPort[-end]/proto`.
    pub ports: Vec<String>,
    /// The ECS agent's labels, shown on each binding.
    pub ecs: EcsLabels,
}

/// The ECS agent's labels of a container (each absent when empty).
pub fn ecs_labels(c: &ContainerInspectResponse) -> EcsLabels {
    let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    EcsLabels {
        task_arn: label(ECS_TASK_ARN),
        container_name: label(ECS_CONTAINER_NAME),
    }
}

/// The task name: the ECS agent's labels when present, else the
/// container's name.
pub fn task_name(c: &ContainerInspectResponse) -> String {
    let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
    let label = |k: &str| labels.and_then(|l| l.get(k)).filter(|v| !v.is_empty());
    let name = match (label(ECS_TASK_ARN), label(ECS_CONTAINER_NAME)) {
        // arn:aws:ecs:region:acct:task/cluster/ID → ID.container
        (Some(arn), Some(cn)) => {
            format!("{}.{cn}", arn.rsplit('/').next().unwrap_or(arn))
        }
        (None, Some(cn)) => cn.clone(),
        _ => c
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
    };
    name.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-') {
                ch
            } else {
                '-'
            }
        })
        .collect()
}

/// The container's first IPv4 address that `accept` takes (on berth's
/// bridge), with the global IPv6 address of the same network, if any.
fn container_ip(
    c: &ContainerInspectResponse,
    accept: impl Fn(IpAddr) -> bool,
) -> Option<(IpAddr, Option<std::net::Ipv6Addr>)> {
    let ns = c.network_settings.as_ref()?;
    ns.networks.iter().flatten().find_map(|(_, ep)| {
        let ip = ep.ip_address.as_deref()?.parse::<IpAddr>().ok()?;
        let v6 = ep
            .global_ipv6_address
            .as_deref()
            .and_then(|v6| v6.parse().ok());
        (ip.is_ipv4() && accept(ip)).then_some((ip, v6))
    })
}

/// Why berth publishes nothing for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No published TCP or UDP port on an IPv4 host address.
    NoPorts,
    /// Published ports but no address on berth's bridge (a user-defined
    /// network, say): `networks` as `name address`, sorted.
    OffBridge { networks: Vec<String> },
}

/// What berth publishes for one inspected container, or why nothing.
/// `accept` says whether an address is on berth's bridge.
pub fn publication(
    c: &ContainerInspectResponse,
    accept: impl Fn(IpAddr) -> bool,
) -> Result<Publication, Skip> {
    let ports = c
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.clone())
        .unwrap_or_default();
    let on_bridge = container_ip(c, &accept);
    let ip6 = on_bridge.and_then(|(_, v6)| v6);
    let ports = specs_for(&ports, ip6.is_some());
    if ports.is_empty() {
        return Err(Skip::NoPorts);
    }
    let Some((ip, _)) = on_bridge else {
        let mut networks: Vec<String> = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .into_iter()
            .flatten()
            .map(|(name, ep)| format!("{name} {}", ep.ip_address.as_deref().unwrap_or_default()))
            .map(|n| n.trim_end().to_string())
            .collect();
        networks.sort();
        return Err(Skip::OffBridge { networks });
    };
    Ok(Publication {
        task: task_name(c),
        container_ip: ip,
        container_ip6: ip6,
        ports,
        ecs: ecs_labels(c),
    })
}

/// `(tcp|udp, host IPv4 address or none for all)`.
type ProtoAndHost = (String, Option<String>);

/// Docker lists one entry per port (and per host family); berth takes a
/// run of consecutive ports as one range spec. IPv6 host addresses are
/// Docker's to serve for a container without an IPv6 address (no NAT64).
pub fn specs(ports: &HashMap<String, Option<Vec<PortBinding>>>) -> Vec<String> {
    specs_for(ports, false)
}

/// [`specs`]; `ipv6`: the container has an IPv6 address, so each of
/// Docker's entries is published on its own family alone (`0.0.0.0:` and
/// `[::]:`, as Docker lists them) rather than a spec naming both.
pub fn specs_for(ports: &HashMap<String, Option<Vec<PortBinding>>>, ipv6: bool) -> Vec<String> {
    // (proto, host ip) → sorted (container port, host port)
    let mut by: BTreeMap<ProtoAndHost, BTreeSet<(u16, u16)>> = BTreeMap::new();
    for (key, bindings) in ports {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        if proto != "tcp" && proto != "udp" {
            continue;
        }
        let Ok(cport) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.iter().flatten() {
            let Some(hport) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let host_ip = match b.host_ip.as_deref().unwrap_or("") {
                "" | "0.0.0.0" if ipv6 => Some("0.0.0.0".to_owned()),
                "" | "0.0.0.0" => None,
                ip => match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V4(v4)) => Some(v4.to_string()),
                    Ok(IpAddr::V6(v6)) if ipv6 => Some(format!("[{v6}]")),
                    _ => continue,
                },
            };
            by.entry((proto.to_string(), host_ip))
                .or_default()
                .insert((cport, hport));
        }
    }
    let mut out = Vec::new();
    for ((proto, host_ip), pairs) in by {
        let mut runs: Vec<(u16, u16, u16)> = Vec::new(); // (cport, hport, len-1)
        for (c, h) in pairs {
            match runs.last_mut() {
                Some((c0, h0, n))
                    if u32::from(*c0) + u32::from(*n) + 1 == u32::from(c)
                        && u32::from(*h0) + u32::from(*n) + 1 == u32::from(h) =>
                {
                    *n += 1
                }
                _ => runs.push((c, h, 0)),
            }
        }
        for (c, h, n) in runs {
            let prefix = host_ip
                .as_deref()
                .map(|ip| format!("{ip}:"))
                .unwrap_or_default();
            out.push(if n == 0 {
                format!("{prefix}{h}:{c}/{proto}")
            } else {
                format!("{prefix}{h}-{}:{c}-{}/{proto}", h + n, c + n)
            });
        }
    }
    out
}

/// The follower's state for `berth status`: not connected yet, since now.
pub fn link(docker_socket: &Path) -> DockerLink {
    std::sync::Arc::new(std::sync::Mutex::new(DockerStatus {
        socket: format!("unix://{}", docker_socket.display()),
        since: rfc3339(std::time::SystemTime::now()),
        ..DockerStatus::default()
    }))
}

/// Follows the Docker engine at `docker_socket` for the daemon serving
/// `berth_socket`, keeping `link` current; never returns. An unreachable
/// engine is logged and retried.
pub async fn follow(
    docker_socket: PathBuf,
    berth_socket: PathBuf,
    bridges: Vec<String>,
    state_dir: PathBuf,
    link: DockerLink,
) {
    let mut f = Follower {
        client: Client::new(berth_socket),
        bridges,
        marks_path: state_dir.join(MARKS_FILE),
        tasks: HashMap::new(),
        clashes: BTreeMap::new(),
        link,
    };
    let mut logged = false;
    loop {
        match f.session(&docker_socket).await {
            Ok(()) => {
                f.set_connected(false, Some("the event stream ended".into()));
                tracing::warn!(docker = %docker_socket.display(), "Docker event stream ended; reconnecting")
            }
            Err(e) if !logged => {
                tracing::warn!(docker = %docker_socket.display(), error = %e, "Docker API unreachable; retrying in the background");
                f.set_connected(false, Some(e));
                logged = true;
            }
            Err(e) => f.set_connected(false, Some(e)),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Whose the task name of a container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No such task.
    Free,
    /// Docker events mode made it, at these container addresses.
    Held(Vec<IpAddr>),
    /// Made otherwise, or another container's: who made it.
    Taken(String),
}

/// Who holds `task` among berth's `bindings`; `other_container`: another
/// running container already published as `task`.
pub fn claim(task: &str, bindings: &[Binding], other_container: Option<&str>) -> Claim {
    if let Some(other) = other_container {
        let short = other.get(..12).unwrap_or(other);
        return Claim::Taken(format!("Docker container {short}"));
    }
    let of_task: Vec<&Binding> = bindings.iter().filter(|b| b.task == task).collect();
    if of_task.is_empty() {
        return Claim::Free;
    }
    if of_task.iter().any(|b| b.docker_events) {
        return Claim::Held(of_task.iter().map(|b| b.container_ip).collect());
    }
    match of_task.iter().find_map(|b| b.cni.as_ref()) {
        Some(att) => Claim::Taken(format!(
            "berth-cni (container {} on network {})",
            att.container_id, att.network
        )),
        None => Claim::Taken("berth map add or berth task run".into()),
    }
}

/// `<state-dir>/docker-tasks.json`: the tasks Docker events mode made.
/// Version 1 was a bare list of names.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marks {
    version: u32,
    tasks: Vec<String>,
}

struct Follower {
    client: Client,
    /// The daemon's `--bridge`s: a container with an address on any is berth's.
    bridges: Vec<String>,
    marks_path: PathBuf,
    /// container id → task
    tasks: HashMap<String, String>,
    /// container id → `name -> task` of containers not published because
    /// their task name is taken.
    clashes: BTreeMap<String, String>,
    link: DockerLink,
}

impl Follower {
    fn status(&self) -> std::sync::MutexGuard<'_, DockerStatus> {
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `since` moves only when `connected` changes; an error is kept until
    /// the next one.
    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut s = self.status();
        if s.connected != connected {
            s.connected = connected;
            s.since = rfc3339(std::time::SystemTime::now());
        }
        if error.is_some() {
            s.last_error = error;
        }
    }

    async fn session(&mut self, socket: &Path) -> Result<(), String> {
        let fail = |e: bollard::errors::Error| format!("Docker API {}: {e}", socket.display());
        let docker = Docker::connect_with_unix(
            &socket.to_string_lossy(),
            API_TIMEOUT_SECS,
            API_DEFAULT_VERSION,
        )
        .map_err(fail)?
        .negotiate_version()
        .await
        .map_err(fail)?;
        // The stream is only requested when first polled, after the listing:
        // `since` a second before the listing replays what happened in
        // between (a replayed start of a published task changes nothing).
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or_default()
            .to_string();
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["start", "die", "stop", "destroy"]),
        ]);
        let mut events = docker.events(Some(
            EventsOptionsBuilder::new()
                .since(&since)
                .filters(&filters)
                .build(),
        ));
        let running = docker
            .list_containers(None::<ListContainersOptions>)
            .await
            .map_err(fail)?;
        tracing::info!(docker = %socket.display(), running = running.len(), "following Docker events");
        self.set_connected(true, None);
        self.reconcile(&docker, running.into_iter().filter_map(|c| c.id).collect())
            .await;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(fail)?;
            let Some(id) = ev.actor.and_then(|a| a.id) else {
                continue;
            };
            match ev.action.as_deref() {
                Some("start") => self.publish(&docker, &id).await,
                Some("die" | "stop" | "destroy") => self.unpublish(&id).await,
                _ => {}
            }
        }
        Ok(())
    }

    /// Publishes every running container, and removes the tasks berth made
    /// from Docker whose container is gone.
    async fn reconcile(&mut self, docker: &Docker, running: Vec<String>) {
        // Read before publishing: each publish rewrites the marks.
        let (marked, legacy) = self.marks();
        if legacy {
            self.adopt_legacy(&marked).await;
        }
        self.tasks.clear();
        self.clashes.clear();
        for id in &running {
            self.publish(docker, id).await;
        }
        let live: BTreeSet<&String> = self.tasks.values().collect();
        let stale: Vec<String> = marked.into_iter().filter(|t| !live.contains(t)).collect();
        for task in stale {
            self.remove_task(&task).await;
        }
        self.save_marks();
    }

    async fn publish(&mut self, docker: &Docker, id: &str) {
        let c = match docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) => return tracing::warn!(container = id, error = %e, "Docker inspect failed"),
        };
        let bridges = self.bridges.clone();
        let p = match publication(&c, |ip| {
            bridges
                .iter()
                .any(|b| crate::interfaces::docker_proxy::bridge_holds(b, ip))
        }) {
            Ok(p) => p,
            Err(Skip::NoPorts) => return,
            // berth serves one bridge; dockerd's own NAT rules (it runs
            // without its userland proxy) still carry these ports.
            Err(Skip::OffBridge { networks }) => {
                return tracing::warn!(
                    container = %task_name(&c),
                    networks = %networks.join(", "),
                    bridges = %self.bridges.join(","),
                    "Docker container's ports not published by berth: it has no address on berth's bridge; dockerd's own NAT rules serve them"
                );
            }
        };
        let bindings = match self.client.bindings().await {
            Ok(b) => b,
            Err(e) => {
                return tracing::warn!(task = %p.task, error = %e, "publishing Docker container failed: cannot list berth's tasks")
            }
        };
        let other = self
            .tasks
            .iter()
            .find(|(cid, t)| **t == p.task && cid.as_str() != id)
            .map(|(cid, _)| cid.clone());
        match claim(&p.task, &bindings, other.as_deref()) {
            Claim::Taken(by) => return self.clash(id, &c, &p.task, &by),
            Claim::Held(ips) if ips.contains(&p.container_ip) => {
                // Already published at this address (a berth restart keeps
                // the store): leave it be.
                self.tasks.insert(id.to_string(), p.task.clone());
                self.unclash(id);
                return self.save_marks();
            }
            // At another address (restarted while berth was down): afresh.
            Claim::Held(_) => self.remove_task(&p.task).await,
            Claim::Free => {}
        }
        self.tasks.insert(id.to_string(), p.task.clone());
        self.unclash(id);
        self.save_marks();
        let req = AddRequest {
            task: p.task.clone(),
            container_ip: p.container_ip.to_string(),
            container_ip6: p.container_ip6.map(|v6| v6.to_string()),
            ports: p.ports.clone(),
            held_by_docker: true,
            ecs_task_arn: p.ecs.task_arn.clone(),
            ecs_container_name: p.ecs.container_name.clone(),
            docker_events: true,
        };
        match self.client.add(&req).await {
            Ok(_) => {
                tracing::info!(task = %p.task, ip = %p.container_ip, ports = ?p.ports, "published Docker container")
            }
            Err(e) => {
                tracing::warn!(task = %p.task, error = %e, "publishing Docker container failed");
                // Marked before the add (a crash in between must not leave
                // an unmarked task); nothing was added, so not published.
                self.tasks.remove(id);
                self.save_marks();
            }
        }
    }

    /// A container whose task name is taken is not published: one warning
    /// naming both, and counted in `berth status`.
    fn clash(&mut self, id: &str, c: &ContainerInspectResponse, task: &str, by: &str) {
        let name = c
            .name
            .as_deref()
            .unwrap_or(id)
            .trim_start_matches('/')
            .to_string();
        tracing::warn!(
            container = %name,
            task = %task,
            taken_by = %by,
            "Docker container not published: its task name {task} is taken by {by}; rename the container or remove that task"
        );
        self.clashes
            .insert(id.to_string(), format!("{name} -> task {task}"));
        self.save_marks();
    }

    fn unclash(&mut self, id: &str) {
        self.clashes.remove(id);
    }

    async fn unpublish(&mut self, id: &str) {
        if self.clashes.remove(id).is_some() {
            self.save_marks();
        }
        if let Some(task) = self.tasks.remove(id) {
            self.remove_task(&task).await;
            self.save_marks();
        }
    }

    async fn remove_task(&self, task: &str) {
        let req = RemoveRequest {
            task: task.to_string(),
            ports: Vec::new(),
            // The daemon refuses to remove a task the follower did not make.
            docker_events: true,
        };
        match self.client.remove(&req).await {
            Ok(_) => tracing::info!(task, "unpublished Docker container"),
            Err(e) => tracing::warn!(task, error = %e, "unpublishing Docker container failed"),
        }
    }

    /// The tasks marked, and whether by a berth older than task ownership
    /// (a bare list: its tasks carry no `dockerEvents` mark in the store).
    fn marks(&self) -> (Vec<String>, bool) {
        let Some(bytes) = std::fs::read(&self.marks_path).ok() else {
            return (Vec::new(), false);
        };
        if let Ok(m) = serde_json::from_slice::<Marks>(&bytes) {
            return (m.tasks, false);
        }
        (serde_json::from_slice(&bytes).unwrap_or_default(), true)
    }

    /// A berth older than task ownership made `marked` without marking them
    /// in the store: those still unmarked there are removed, so the
    /// listing publishes them afresh as Docker's (once, on upgrade).
    async fn adopt_legacy(&self, marked: &[String]) {
        let Ok(bindings) = self.client.bindings().await else {
            return;
        };
        for task in marked {
            let of_task = || bindings.iter().filter(|b| &b.task == task);
            if of_task().next().is_none() || of_task().any(|b| b.docker_events || b.cni.is_some()) {
                continue;
            }
            let req = RemoveRequest {
                task: task.clone(),
                ports: Vec::new(),
                docker_events: false,
            };
            match self.client.remove(&req).await {
                Ok(_) => {
                    tracing::info!(task = %task, "republishing a Docker task made before task ownership")
                }
                Err(e) => {
                    tracing::warn!(task = %task, error = %e, "cannot republish a Docker task made before task ownership")
                }
            }
        }
    }

    fn save_marks(&self) {
        let names: BTreeSet<&String> = self.tasks.values().collect();
        {
            let mut s = self.status();
            s.containers = self.tasks.len();
            s.tasks = names.len();
            s.clashes = self.clashes.values().cloned().collect();
        }
        let tmp = self.marks_path.with_extension("tmp");
        let body = serde_json::to_vec(&Marks {
            version: 2,
            tasks: names.into_iter().cloned().collect(),
        })
        .unwrap_or_default();
        if let Err(e) =
            std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.marks_path))
        {
            tracing::warn!(path = %self.marks_path.display(), error = %e, "cannot record Docker tasks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(json: &str) -> ContainerInspectResponse {
        serde_json::from_str(json).unwrap()
    }

    fn any(_: IpAddr) -> bool {
        true
    }

    const WEB: &str = r#"{"Id":"abc","Name":"/web",
        "Config":{"Labels":{}},
        "NetworkSettings":{
          "Networks":{"bridge":{"IPAddress":"172.18.0.2"}},
          "Ports":{
            "80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"},{"HostIp":"::","HostPort":"8080"}],
            "53/udp":[{"HostIp":"127.0.0.1","HostPort":"5353"}],
            "9000/tcp":[{"HostIp":"0.0.0.0","HostPort":"9000"}],
            "9001/tcp":[{"HostIp":"0.0.0.0","HostPort":"9001"}],
            "9002/tcp":[{"HostIp":"0.0.0.0","HostPort":"9002"}],
            "443/tcp":null,
            "132/sctp":[{"HostIp":"0.0.0.0","HostPort":"132"}]}}}"#;

    #[test]
    fn ports_become_specs_with_ranges_udp_and_host_addresses() {
        let p = publication(&inspect(WEB), any).unwrap();
        assert_eq!(p.task, "web");
        assert_eq!(p.container_ip, "172.18.0.2".parse::<IpAddr>().unwrap());
        let mut got = p.ports;
        got.sort();
        assert_eq!(
            got,
            vec![
                "127.0.0.1:5353:53/udp",
                "8080:80/tcp",
                "9000-9002:9000-9002/tcp"
            ]
        );
    }

    #[test]
    fn a_container_with_a_global_ipv6_address_publishes_dockers_ipv6_entries_too() {
        let web6 = WEB.replace(
            r#""IPAddress":"172.18.0.2""#,
            r#""IPAddress":"172.18.0.2","GlobalIPv6Address":"fd00::2""#,
        );
        let p = publication(&inspect(&web6), any).unwrap();
        assert_eq!(p.container_ip6, Some("fd00::2".parse().unwrap()));
        let mut got = p.ports;
        got.sort();
        assert_eq!(
            got,
            vec![
                "0.0.0.0:8080:80/tcp",
                "0.0.0.0:9000-9002:9000-9002/tcp",
                "127.0.0.1:5353:53/udp",
                "[::]:8080:80/tcp",
            ]
        );
        // Without one, the [::] entry stays Docker's.
        let p = publication(&inspect(WEB), any).unwrap();
        assert_eq!(p.container_ip6, None);
        assert!(!p.ports.iter().any(|s| s.contains('[')), "{:?}", p.ports);
    }

    #[test]
    fn a_gap_splits_a_range_and_non_consecutive_host_ports_do_not_merge() {
        let ports: HashMap<String, Option<Vec<PortBinding>>> = serde_json::from_str(
            r#"{"1/tcp":[{"HostIp":"","HostPort":"10"}],"2/tcp":[{"HostIp":"","HostPort":"12"}],
                "4/tcp":[{"HostIp":"","HostPort":"14"}],"5/tcp":[{"HostIp":"","HostPort":"15"}]}"#,
        )
        .unwrap();
        assert_eq!(specs(&ports), vec!["10:1/tcp", "12:2/tcp", "14-15:4-5/tcp"]);
    }

    #[test]
    fn ecs_labels_name_the_task() {
        let c = inspect(
            r#"{"Name":"/ecs-web-1-nginx-abcd","Config":{"Labels":{
                "com.amazonaws.ecs.task-arn":"arn:aws:ecs:us-east-1:123456789012:task/prod/0f3c9d",
                "com.amazonaws.ecs.container-name":"nginx"}},
              "NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.17.0.3"}},
                "Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"32768"}]}}}"#,
        );
        let p = publication(&c, any).unwrap();
        assert_eq!(p.task, "0f3c9d.nginx");
        assert_eq!(p.ports, vec!["32768:80/tcp"]);
        assert_eq!(
            p.ecs.task_arn.as_deref(),
            Some("arn:aws:ecs:us-east-1:123456789012:task/prod/0f3c9d")
        );
        assert_eq!(p.ecs.container_name.as_deref(), Some("nginx"));
        assert_eq!(
            publication(&inspect(WEB), any).unwrap().ecs,
            EcsLabels::default()
        );
    }

    #[test]
    fn containers_off_berths_bridge_or_without_ports_publish_nothing_and_say_why() {
        assert_eq!(
            publication(&inspect(WEB), |_| false),
            Err(Skip::OffBridge {
                networks: vec!["bridge 172.18.0.2".into()]
            })
        );
        let c = inspect(
            r#"{"Name":"/userweb","NetworkSettings":{
                "Networks":{"user":{"IPAddress":"172.19.0.2"},"other":{"IPAddress":""}},
                "Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8085"}]}}}"#,
        );
        let on_bdk0 = |ip: IpAddr| ip.to_string().starts_with("172.18.");
        assert_eq!(
            publication(&c, on_bdk0),
            Err(Skip::OffBridge {
                networks: vec!["other".into(), "user 172.19.0.2".into()]
            })
        );
        let c = inspect(
            r#"{"Name":"/quiet","NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.18.0.5"}},"Ports":{"80/tcp":null}}}"#,
        );
        assert_eq!(publication(&c, any), Err(Skip::NoPorts));
        let c = inspect(
            r#"{"Name":"/stopped","NetworkSettings":{"Networks":{"bridge":{"IPAddress":""}},"Ports":{}}}"#,
        );
        assert_eq!(publication(&c, any), Err(Skip::NoPorts));
    }

    #[test]
    fn docker_hosts_are_unix_sockets_only() {
        assert_eq!(
            parse_docker_host("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            parse_docker_host("/tmp/d.sock").unwrap(),
            PathBuf::from("/tmp/d.sock")
        );
        assert_eq!(
            parse_docker_host("tcp://h:2375").unwrap_err(),
            "--docker tcp://h:2375: only unix:///path sockets are supported"
        );
    }

    fn binding(task: &str, ip: &str, docker_events: bool) -> Binding {
        Binding {
            docker_events,
            ..Binding::for_test(task, ip.parse::<IpAddr>().unwrap(), 8080)
        }
    }

    #[test]
    fn a_task_name_is_the_containers_only_when_docker_events_mode_made_it() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ours = [
            binding("web", "172.18.0.2", true),
            binding("db", "172.18.0.3", false),
        ];
        assert_eq!(claim("api", &ours, None), Claim::Free);
        assert_eq!(
            claim("web", &ours, None),
            Claim::Held(vec![ip("172.18.0.2")])
        );
        assert_eq!(
            claim("db", &ours, None),
            Claim::Taken("berth map add or berth task run".into())
        );
        assert_eq!(
            claim("web", &ours, Some("0123456789abcdef0123")),
            Claim::Taken("Docker container 0123456789ab".into()),
            "two containers of one task name: the first keeps it"
        );
        let mut cni = binding("c1", "172.18.0.4", false);
        cni.cni = Some(crate::domain::cni::CniAttachment {
            network: "mynet".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            pod_namespace: None,
            pod_name: None,
        });
        assert_eq!(
            claim("c1", &[cni], None),
            Claim::Taken("berth-cni (container c1 on network mynet)".into())
        );
    }

    #[test]
    fn marks_are_versioned_and_a_bare_list_is_read_as_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Follower {
            client: Client::new(dir.path().join("none.sock")),
            bridges: vec![],
            marks_path: dir.path().join(MARKS_FILE),
            tasks: HashMap::new(),
            clashes: BTreeMap::new(),
            link: link(Path::new("/nonexistent")),
        };
        assert_eq!(f.marks(), (vec![], false));
        std::fs::write(&f.marks_path, r#"["web","db"]"#).unwrap();
        assert_eq!(f.marks(), (vec!["web".into(), "db".into()], true));
        f.tasks.insert("abc".into(), "web".into());
        f.clashes.insert("def".into(), "db -> task db".into());
        f.save_marks();
        assert_eq!(f.marks(), (vec!["web".into()], false));
        let s = f.status().clone();
        assert_eq!((s.containers, s.tasks), (1, 1));
        assert_eq!(s.clashes, vec!["db -> task db".to_string()]);
    }
}
