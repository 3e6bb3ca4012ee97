//! `berth-docker-proxy`: a drop-in for Docker's userland proxy
//! (`dockerd --userland-proxy-path …`). dockerd starts one per published
//! port; instead of proxying, it publishes the port through the berth
//! daemon, says "ready" on fd 3 once the datapath has it, proxies nothing,
//! and unpublishes when dockerd stops it (SIGINT/SIGTERM) or dies.
//!
//! The status protocol is docker-proxy's: `0\n` on fd 3 when ready, or
//! `1\n<message>` (dockerd shows "Error starting userland proxy:
//! <message>"). What berth cannot do — SCTP, an IPv4 host address for an
//! IPv6 container, a container on another bridge than berth's — runs the
//! real docker-proxy in this process (exec), with fd 3 and 4 as dockerd
//! gave them. `dockerd --ipv6` starts a second proxy per port for `[::]`
//! with the container's IPv6 address: that one publishes the IPv6 half
//! of the same task.
pub mod args;
pub mod engine;
mod guard;

use std::{
    ffi::OsString,
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use args::{Proto, ProxyArgs};

use crate::{
    adapters::socket::DEFAULT_SOCKET,
    interfaces::api::{AddRequest, RemoveRequest},
    interfaces::client::Client,
};

/// docker-proxy's status pipe.
const STATUS_FD: i32 = 3;
/// A bound socket from newer engines (`-use-listen-fd`).
const LISTEN_FD: i32 = 4;
/// How long a proxy named after its container's IP keeps asking Docker for
/// the container's name.
const RENAME_PATIENCE: std::time::Duration = std::time::Duration::from_mins(2);
const FALLBACK_ENV: &str = "BERTH_DOCKER_PROXY_FALLBACK";
const FALLBACK_PATHS: &[&str] = &[
    "/usr/sbin/docker-proxy",
    "/usr/bin/docker-proxy",
    "/usr/libexec/docker/docker-proxy",
];

/// What to do with one port dockerd asked for.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// berth publishes it.
    Publish,
    /// The real docker-proxy does (why berth does not).
    Fallback(&'static str),
    /// An IPv6 host address for an IPv4 container (no NAT64 in berth):
    /// the answer depends on whether berth already holds the port.
    Ipv6ForIpv4,
}

fn plan(a: &ProxyArgs) -> Plan {
    match (a.proto, a.host_ip, a.container_ip) {
        (Proto::Sctp, _, _) => Plan::Fallback("berth publishes tcp and udp only"),
        (_, IpAddr::V4(_), IpAddr::V6(_)) => {
            Plan::Fallback("berth does not translate IPv4 clients to an IPv6 container")
        }
        (_, IpAddr::V6(_), IpAddr::V4(_)) => Plan::Ipv6ForIpv4,
        (_, IpAddr::V4(_), IpAddr::V4(_)) | (_, IpAddr::V6(_), IpAddr::V6(_)) => Plan::Publish,
    }
}

/// The whole program; `args` without argv\[0\].
pub fn main(args: Vec<OsString>) -> ExitCode {
    let ppid_at_start = unsafe { libc::getppid() };
    let a = match args::parse(&args) {
        Ok(a) => a,
        Err(msg) => return fail(&msg),
    };
    if a.version {
        println!("berth-docker-proxy {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match plan(&a) {
        Plan::Fallback(why) => return exec_fallback(&a, why),
        Plan::Ipv6ForIpv4 | Plan::Publish => {}
    }
    if let Err(msg) = guard::die_with_parent(ppid_at_start) {
        return fail(&msg);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let mut stop = match StopSignals::listen(&runtime) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot listen for SIGINT/SIGTERM: {e}")),
    };
    let client = Client::new(berth_socket());
    if plan(&a) == Plan::Ipv6ForIpv4 {
        return match runtime.block_on(berth_guards_port(&client, &a)) {
            Ok(true) => hold_ipv6(&runtime, &mut stop, &a),
            Ok(false) => exec_fallback(&a, "berth publishes IPv4 host addresses only"),
            Err(msg) => fail(&msg),
        };
    }
    match runtime.block_on(berths_bridges(&client)) {
        // A user-defined network (docker compose's br-…): berth serves the
        // bridges it was given, docker-proxy any.
        Ok(bridges)
            if !bridges.is_empty() && !bridges.iter().any(|b| bridge_holds(b, a.container_ip)) =>
        {
            let why = format!(
                "{} is not on berth's bridge {}",
                a.container_ip,
                bridges.join(" or ")
            );
            return exec_fallback(&a, &why);
        }
        Ok(_) => {}
        Err(msg) => return fail(&msg),
    }
    publish_until_stopped(&runtime, &mut stop, &client, &a, ppid_at_start as u32)
}

/// The bridges the daemon serves, as `berth status` shows them (none for
/// a daemon without a datapath; from the attachments for a daemon older
/// than several bridges).
async fn berths_bridges(client: &Client) -> Result<Vec<String>, String> {
    let status = client.status().await.map_err(|e| e.one_line())?;
    Ok(status.datapath.map_or_else(Vec::new, |d| {
        if d.bridges.is_empty() {
            d.attachments
                .into_iter()
                .filter(|at| at.role == "bridge")
                .map(|at| at.target)
                .collect()
        } else {
            d.bridges.into_iter().map(|b| b.name).collect()
        }
    }))
}

/// Whether `ip` is in a subnet of one of `bridge`'s addresses of its
/// family, as the kernel has them in this namespace (the daemon's); for
/// IPv6 link-local ones included: they say nothing of a container, and the
/// daemon refuses such a container address with its reason.
pub(crate) fn bridge_holds(bridge: &str, ip: IpAddr) -> bool {
    crate::adapters::netif::interface_addrs().is_ok_and(|addrs| {
        addrs
            .iter()
            .any(|a| a.interface == bridge && a.subnet_holds(ip))
    })
}

fn berth_socket() -> PathBuf {
    std::env::var_os("BERTH_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// `[hostIP:]hostPort:containerPort/proto`, berth's (and Docker's) syntax.
/// An IPv4 wildcard is left out (the container's IPv4 address is all
/// this proxy sends, so the spec publishes over IPv4 alone); an IPv6 host
/// address, `[::]` included, is always written, so this proxy publishes
/// exactly its own family.
fn spec_of(a: &ProxyArgs) -> String {
    let host = match a.host_ip {
        IpAddr::V4(ip) if ip.is_unspecified() => String::new(),
        IpAddr::V4(ip) => format!("{ip}:"),
        IpAddr::V6(ip) => format!("[{ip}]:"),
    };
    format!(
        "{host}{}:{}/{}",
        a.host_port,
        a.container_port,
        a.proto.as_str()
    )
}

/// Docker's container name, if its API answers now.
async fn container_name(socket: &Path, ip: IpAddr) -> Result<String, String> {
    let name = engine::container_name_by_ip(socket, ip).await?;
    crate::domain::task::validate_task_name(&name)
        .map(|()| name.clone())
        .map_err(|_| format!("container name {name:?} is not a task name"))
}

/// What the proxy published, and the forked process that unpublishes it
/// should the proxy die.
struct Published {
    remove: RemoveRequest,
    unpublisher: guard::Unpublisher,
}

fn publish(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    a: &ProxyArgs,
    task: &str,
) -> Result<Published, String> {
    let spec = spec_of(a);
    let (container_ip, container_ip6) = match a.container_ip {
        IpAddr::V4(ip) => (ip.to_string(), None),
        IpAddr::V6(ip) => (String::new(), Some(ip.to_string())),
    };
    let add = AddRequest {
        task: task.to_string(),
        container_ip,
        container_ip6,
        ports: vec![spec.clone()],
        // An engine that hands over a bound socket (`-use-listen-fd`) keeps
        // holding the port itself, as dockerd does in events mode: the
        // host-listener check would take dockerd for a process in the way.
        held_by_docker: a.use_listen_fd,
        ecs_task_arn: None,
        ecs_container_name: None,
        docker_events: false,
    };
    // The daemon answers once the mapping is in the datapath's maps.
    runtime
        .block_on(client.add(&add))
        .map_err(|e| e.one_line())?;
    let remove = RemoveRequest {
        task: task.to_string(),
        ports: vec![spec],
        docker_events: false,
    };
    // Forked outside the runtime: the child never touches it.
    match guard::spawn_unpublisher(client.socket(), &remove) {
        Ok(unpublisher) => Ok(Published {
            remove,
            unpublisher,
        }),
        Err(msg) => {
            let _ = runtime.block_on(client.remove(&remove));
            Err(msg)
        }
    }
}

fn unpublish(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    p: Published,
) -> Result<(), String> {
    p.unpublisher.cancel();
    runtime
        .block_on(client.remove(&p.remove))
        .map(drop)
        .map_err(|e| format!("unpublishing {}: {e}", p.remove.ports[0]))
}

fn publish_until_stopped(
    runtime: &tokio::runtime::Runtime,
    stop: &mut StopSignals,
    client: &Client,
    a: &ProxyArgs,
    ppid: u32,
) -> ExitCode {
    if a.use_listen_fd {
        // The datapath answers before any socket would; holding dockerd's
        // socket open would only keep the port looking busy.
        unsafe {
            libc::close(LISTEN_FD);
        }
    }
    let docker = engine::docker_socket(
        &engine::parent_cmdline(ppid),
        std::env::var("DOCKER_HOST").ok().as_deref(),
    );
    let named = runtime.block_on(container_name(&docker, a.container_ip));
    let task = match &named {
        Ok(name) => name.clone(),
        Err(why) => {
            let by_ip = task_named_by_ip(a.container_ip);
            eprintln!("berth-docker-proxy: {why}; naming the task {by_ip}");
            by_ip
        }
    };
    let mut published = match publish(runtime, client, a, &task) {
        Ok(p) => p,
        Err(msg) => return fail(&msg),
    };
    report_ready();
    if named.is_err() {
        // dockerd restores containers before its API listens, and waits for
        // each proxy: the name can only be learnt once it is ready.
        if let Some(name) = runtime.block_on(name_or_stop(stop, &docker, a.container_ip)) {
            published = rename(runtime, client, a, published, &name);
            runtime.block_on(stop.recv());
        }
    } else {
        runtime.block_on(stop.recv());
    }
    match unpublish(runtime, client, published) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("berth-docker-proxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The task name of a container whose name is not known yet: its address,
/// with an IPv6 address's colons as dashes (task names have no colons).
fn task_named_by_ip(ip: IpAddr) -> String {
    ip.to_string().replace(':', "-")
}

/// Polls the Docker API for the container's name; `None` when stopped
/// first (or after [`RENAME_PATIENCE`]: the IP stays the name).
async fn name_or_stop(stop: &mut StopSignals, docker: &Path, ip: IpAddr) -> Option<String> {
    let poll = async {
        let deadline = tokio::time::Instant::now() + RENAME_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if let Ok(name) = container_name(docker, ip).await {
                return Some(name);
            }
        }
        std::future::pending::<()>().await;
        None
    };
    tokio::select! {
        name = poll => name,
        () = stop.recv() => None,
    }
}

/// Moves the mapping from the IP-named task to the container's name: the
/// port is free between the two requests for a moment, and flows the IP
/// task tracked are forgotten (there are none this early, usually). Kept
/// under the IP when the move fails.
fn rename(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    a: &ProxyArgs,
    old: Published,
    name: &str,
) -> Published {
    let old_task = old.remove.task.clone();
    if let Err(msg) = unpublish(runtime, client, old) {
        eprintln!("berth-docker-proxy: renaming {old_task} to {name}: {msg}");
    }
    match publish(runtime, client, a, name) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("berth-docker-proxy: renaming {old_task} to {name}: {msg}");
            match publish(runtime, client, a, &old_task) {
                Ok(p) => p,
                Err(msg) => {
                    // Nothing published any more: say so where dockerd looks.
                    eprintln!("berth-docker-proxy: republishing under {old_task}: {msg}");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// Whether berth publishes this port for IPv4 with its bind guard on:
/// then no socket — docker-proxy's `[::]` listener included — may bind
/// the port, as when docker-proxy holds both `0.0.0.0` and `[::]`.
async fn berth_guards_port(client: &Client, a: &ProxyArgs) -> Result<bool, String> {
    let status = client.status().await.map_err(|e| e.one_line())?;
    let hooks = status
        .datapath
        .as_ref()
        .is_some_and(|d| d.socket_hooks.enabled);
    if !hooks {
        return Ok(false);
    }
    let bindings = client.bindings().await.map_err(|e| e.one_line())?;
    Ok(bindings
        .iter()
        .any(|b| b.host_port == a.host_port && b.protocol.as_str() == a.proto.as_str()))
}

/// Ready, and nothing else to do until stopped: berth's bind guard keeps
/// the IPv6 side of the port closed, as docker-proxy's socket would hold it.
fn hold_ipv6(runtime: &tokio::runtime::Runtime, stop: &mut StopSignals, a: &ProxyArgs) -> ExitCode {
    eprintln!(
        "berth-docker-proxy: [{}]:{}/{} not proxied: the container has no IPv6 address (berth has no NAT64) and its bind guard holds the port",
        a.host_ip,
        a.host_port,
        a.proto.as_str()
    );
    report_ready();
    runtime.block_on(stop.recv());
    ExitCode::SUCCESS
}

/// dockerd's stop signals, listened for from before the first publish to
/// the exit: once tokio handles them, one that arrives while nothing
/// listens would be lost, and dockerd would wait for the proxy forever.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen(runtime: &tokio::runtime::Runtime) -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_runtime = runtime.enter();
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// The real docker-proxy replaces this process: same PID (dockerd signals
/// it), same fd 3 and 4, the arguments minus berth's own.
fn exec_fallback(a: &ProxyArgs, why: &str) -> ExitCode {
    let Some(path) = find_fallback(a.fallback.as_deref()) else {
        return fail(&format!(
            "{why}, and no docker-proxy to fall back to (-fallback-proxy, ${FALLBACK_ENV}, beside this program, {})",
            FALLBACK_PATHS.join(", ")
        ));
    };
    let err = std::process::Command::new(&path)
        .args(&a.passthrough)
        .exec();
    fail(&format!("cannot run {}: {err}", path.display()))
}

fn find_fallback(option: Option<&Path>) -> Option<PathBuf> {
    let me = std::env::current_exe().ok();
    let beside = me
        .as_ref()
        .and_then(|m| m.parent())
        .map(|d| d.join("docker-proxy"));
    let env = std::env::var_os(FALLBACK_ENV).map(PathBuf::from);
    let candidates = option
        .map(Path::to_path_buf)
        .into_iter()
        .chain(env)
        .chain(beside)
        .chain(FALLBACK_PATHS.iter().map(PathBuf::from));
    let me = me.and_then(|m| m.canonicalize().ok());
    candidates.into_iter().find(|c| {
        // Never ourselves, installed under docker-proxy's name.
        c.is_file() && c.canonicalize().ok() != me
    })
}

fn report_ready() {
    write_status(b"0\n");
}

/// `1\n<message>` on fd 3 for dockerd, the same line on stderr for a
/// person running it by hand.
fn fail(msg: &str) -> ExitCode {
    eprintln!("berth-docker-proxy: {msg}");
    let mut out = b"1\n".to_vec();
    out.extend_from_slice(msg.as_bytes());
    write_status(&out);
    ExitCode::FAILURE
}

/// Writes once to fd 3 and closes it, as docker-proxy does; nothing when
/// fd 3 is not open (run by hand).
fn write_status(bytes: &[u8]) {
    unsafe {
        if libc::fcntl(STATUS_FD, libc::F_GETFD) < 0 {
            return;
        }
        let _ = libc::write(STATUS_FD, bytes.as_ptr().cast(), bytes.len());
        libc::close(STATUS_FD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> ProxyArgs {
        let v: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        args::parse(&v).unwrap()
    }

    #[test]
    fn what_berth_cannot_do_falls_back_and_the_rest_is_published() {
        let base = "-host-port 8080 -container-port 80";
        assert_eq!(
            plan(&args(&format!(
                "{base} -proto tcp -host-ip 0.0.0.0 -container-ip 172.17.0.2"
            ))),
            Plan::Publish
        );
        assert!(matches!(
            plan(&args(&format!(
                "{base} -proto sctp -container-ip 172.17.0.2"
            ))),
            Plan::Fallback(_)
        ));
        // dockerd --ipv6: the [::] proxy gets the container's IPv6 address.
        assert_eq!(
            plan(&args(&format!("{base} -host-ip :: -container-ip fd00::2"))),
            Plan::Publish
        );
        assert!(matches!(
            plan(&args(&format!(
                "{base} -host-ip 0.0.0.0 -container-ip fd00::2"
            ))),
            Plan::Fallback(_)
        ));
        assert_eq!(
            plan(&args(&format!(
                "{base} -proto udp -host-ip :: -container-ip 172.17.0.2"
            ))),
            Plan::Ipv6ForIpv4
        );
    }

    #[test]
    fn a_bridge_holds_the_subnets_of_its_addresses_only() {
        assert!(bridge_holds("lo", "127.5.5.5".parse().unwrap()));
        assert!(!bridge_holds("lo", "10.0.0.1".parse().unwrap()));
        assert!(!bridge_holds("no-such-if0", "127.0.0.1".parse().unwrap()));
        assert!(!bridge_holds("lo", "fd00::1".parse().unwrap()));
        // ::1/128 on lo, where the host has IPv6 at all.
        let lo_has_ipv6 = std::fs::read_to_string("/proc/net/if_inet6")
            .is_ok_and(|t| t.lines().any(|l| l.ends_with(" lo")));
        assert_eq!(bridge_holds("lo", "::1".parse().unwrap()), lo_has_ipv6);
        assert!(!bridge_holds("no-such-if0", "::1".parse().unwrap()));
    }

    #[test]
    fn the_spec_is_dockers_with_the_host_ip_only_when_specific() {
        assert_eq!(
            spec_of(&args(
                "-proto udp -host-port 5353 -container-ip 172.17.0.2 -container-port 53"
            )),
            "5353:53/udp"
        );
        assert_eq!(
            spec_of(&args(
                "-host-ip 127.0.0.1 -host-port 8080 -container-ip 172.17.0.2 -container-port 80"
            )),
            "127.0.0.1:8080:80/tcp"
        );
        assert_eq!(
            spec_of(&args(
                "-host-ip :: -host-port 8080 -container-ip fd00::2 -container-port 80"
            )),
            "[::]:8080:80/tcp"
        );
        assert_eq!(
            spec_of(&args(
                "-proto udp -host-ip 2001:db8::1 -host-port 53 -container-ip fd00::2 -container-port 53"
            )),
            "[2001:db8::1]:53:53/udp"
        );
        assert_eq!(task_named_by_ip("fd00::2".parse().unwrap()), "fd00--2");
        crate::domain::task::validate_task_name(&task_named_by_ip("fd00::2".parse().unwrap()))
            .unwrap();
    }
}
