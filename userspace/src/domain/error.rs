//! The library's one error type. Every message is one line meant for the
//! person who typed the command; the CLI prints it as `berth: <message>`.
use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use crate::domain::{
    cidr::Ipv4Cidr,
    model::Protocol,
    rules::SgError,
    spec::{HostIp, PortRange, SpecError},
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("port spec {spec:?}: {reason}")]
    Spec { spec: String, reason: SpecError },
    #[error("invalid task name {name:?}: {reason}")]
    TaskName { name: String, reason: &'static str },
    #[error("malformed container IP {0:?}")]
    MalformedContainerIp(String),
    #[error("malformed container IPv6 address {0:?}")]
    MalformedContainerIpv6(String),
    #[error("container IPv6 address {0} cannot be a container's (unspecified, loopback, multicast, link-local or IPv4-mapped)")]
    BadContainerIpv6(Ipv6Addr),
    /// `-p [::]:…` (or a task definition's IPv6 binding) for a container
    /// without an IPv6 address: refused rather than published on IPv4.
    #[error("port spec {spec:?} publishes over IPv6, but task {task} has no container IPv6 address (--ip6)")]
    NoContainerIpv6 { task: String, spec: String },
    #[error("port spec {spec:?} publishes over IPv4, but task {task} has no container IPv4 address (--ip)")]
    NoContainerIpv4 { task: String, spec: String },
    #[error("task {0} needs a container address: --ip, --ip6 or both")]
    NoContainerIp(String),
    #[error("container IP {ip} is not in the subnet of bridge {bridge} ({})", join(.subnets))]
    NotInBridgeSubnet {
        ip: Ipv4Addr,
        bridge: String,
        subnets: Vec<Ipv4Cidr>,
    },
    #[error("bridge {0} has no IPv4 address, so no container IP can be checked against it")]
    BridgeWithoutIpv4(String),
    /// Several `--bridge`: `bridges` lists each with its subnets.
    #[error("container IP {ip} is not in the subnet of any bridge berth serves ({bridges})")]
    NotInAnyBridgeSubnet { ip: Ipv4Addr, bridges: String },
    /// `bridges` lists each served bridge with its IPv6 subnets.
    #[error("container IPv6 address {ip} is not in an IPv6 subnet of any bridge berth serves ({bridges})")]
    NotInBridgeSubnet6 { ip: Ipv6Addr, bridges: String },
    #[error("interface {0} is not a bridge; --bridge names a Linux bridge (docker0, cni0, ...)")]
    NotABridge(String),
    #[error("no ports given")]
    NoPorts,
    /// Docker's own wording, so tools that grep for it keep working.
    #[error("Bind for {}:{host_port} failed: port is already allocated", HostIp(*.bind_ip))]
    PortAllocated { bind_ip: IpAddr, host_port: u16 },
    /// The dynamic range has no room for a request.
    #[error("{exhausted} for {}/{} {}", HostIp(*.bind_ip), .protocol.as_str(), .exhausted.counts())]
    PortsExhausted {
        exhausted: Exhausted,
        bind_ip: IpAddr,
        protocol: Protocol,
    },
    #[error("this request names {count} ports; the daemon allows at most {max} per request (berth daemon --max-ports-per-request)")]
    TooManyPortsInRequest { count: u64, max: u32 },
    #[error("task {task} would have {count} ports; the daemon allows at most {max} per task (berth daemon --max-ports-per-task)")]
    TooManyPortsInTask { task: String, count: u64, max: u32 },
    #[error("too many event subscribers (the daemon allows {0}); try again later")]
    TooManySubscribers(usize),
    #[error("--socket-group {0}: no such group")]
    NoSuchGroup(String),
    #[error("no such task: {0}")]
    NoSuchTask(String),
    #[error("task {0} already exists; stop it first or choose another --name")]
    TaskExists(String),
    #[error("task {0} was started from a task definition; stop it with `berth task stop {0}`")]
    TaskFromDefinition(String),
    #[error(
        "task {0} was published with `berth map add`; remove it with `berth map rm --task {0}`"
    )]
    TaskNotFromDefinition(String),
    #[error("task definition: {0}")]
    TaskDefinition(String),
    #[error("CNI attachment: {0}")]
    CniAttachment(String),
    #[error("container {container_id} interface {ifname} on network {network} already has port mappings in berth: ADD without a DEL before it")]
    CniAttachmentExists {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("task {0} already exists and is not this CNI attachment's")]
    CniTaskNameTaken(String),
    #[error("task {0} belongs to a CNI attachment; the runtime removes it (CNI DEL), or `berth map rm --task {0}`")]
    TaskFromCni(String),
    #[error("task {0} follows a Docker container (Docker events mode); ports of a container are Docker's to change (`docker run -p`); `berth map rm --task {0}` unpublishes it until the container restarts")]
    TaskFromDocker(String),
    #[error("heldByDocker refused: {local}/{} is held by {}, not by dockerd or docker-proxy", .protocol.as_str(), if .holders.is_empty() { "a process berth cannot see".to_owned() } else { .holders.join(", ") })]
    NotHeldByDocker {
        protocol: Protocol,
        local: std::net::SocketAddr,
        holders: Vec<String>,
    },
    #[error("task {0} exists and was not made by Docker events mode (berth map add, a task definition or berth-cni); a container of that name is not published")]
    TaskNotFromDocker(String),
    // Names come from the user: escaped, so the error stays one line.
    #[error("--ip {}=...: the task definition has no container named {container:?} (it has {})", .container.escape_debug(), .known.iter().map(|k| k.escape_debug().to_string()).collect::<Vec<_>>().join(", "))]
    UnknownContainer {
        container: String,
        known: Vec<String>,
    },
    #[error("container {name:?} has port mappings but no IP; add --ip {escaped}=CONTAINER_IP", name = .0, escaped = .0.escape_debug())]
    MissingContainerIp(String),
    #[error("containers {} and {} both have IP {ip}; each container has its own address on the bridge", .first.escape_debug(), .second.escape_debug())]
    SharedContainerIp {
        ip: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error("--ip {0:?}: expected CONTAINER=IP")]
    ContainerIpArg(String),
    #[error("--ip {0}=...: given twice")]
    DuplicateContainerIpArg(String),
    #[error("task {task} has no binding {spec}")]
    NoSuchBinding { task: String, spec: String },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("--uplink and --bridge both name {0}; the uplink must be another interface")]
    UplinkIsBridge(String),
    #[error("berth daemon must run as root (it loads eBPF programs)")]
    NotRoot,
    #[error("another berth daemon is listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("a berth daemon is answering on {}; stop it before resetting", .0.display())]
    DaemonRunning(PathBuf),
    #[error("another berth daemon ({}) holds the {what} {}; {advice}", .pid.map_or("PID unknown".to_owned(), |p| format!("PID {p}")), .path.display())]
    Locked {
        what: &'static str,
        advice: &'static str,
        path: PathBuf,
        pid: Option<u32>,
    },
    /// Docker's wording when docker-proxy cannot bind a published port.
    #[error("Error starting userland proxy: listen {}{} {}:{host_port}: bind: address already in use", .protocol.as_str(), if .bind_ip.is_ipv6() { 6 } else { 4 }, HostIp(*.bind_ip))]
    HostPortInUse {
        protocol: Protocol,
        bind_ip: IpAddr,
        host_port: u16,
    },
    #[error("berth reset must run as root (it removes eBPF pins and writes sysctls)")]
    ResetNotRoot,
    #[error("{} exists and is not a socket; remove it or choose another --socket", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot reach the berth daemon at {}: is `berth daemon` running?", .0.display())]
    DaemonUnreachable(PathBuf),
    #[error("cannot connect to the berth daemon at {}: permission denied (run as root)", .0.display())]
    DaemonPermissionDenied(PathBuf),
    #[error("the berth daemon at {} did not answer within {secs} s", .path.display())]
    DaemonTimeout { path: PathBuf, secs: u64 },
    /// An error the daemon returned, passed through word for word.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("state store {}: {reason}", .path.display())]
    Store { path: PathBuf, reason: String },
    /// The `io::Error` is part of the message, not a `source`, so printing
    /// the chain does not repeat it.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Sg(#[from] SgError),
    #[error("restoring {binding}: {reason}")]
    Restore {
        binding: String,
        reason: DatapathError,
    },
    /// The daemon answered something the client could not understand.
    #[error("{0}")]
    DaemonProtocol(String),
    /// A blocking job of the daemon panicked or was cancelled: a bug.
    #[error("internal error")]
    Blocking(#[from] tokio::task::JoinError),
    /// A value berth built could not be encoded as JSON: a bug, never bad
    /// input (which is refused with its own message).
    #[error("internal error")]
    Encode(#[source] serde_json::Error),
    /// A request the client built was refused by the HTTP library: a bug.
    #[error("internal error")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The message with its causes, `outer: inner`: the one line the CLI
    /// prints and the API answers.
    pub fn one_line(&self) -> String {
        chain(self)
    }

    pub(crate) fn io(context: impl Into<String>, error: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            error,
        }
    }

    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Spec { .. }
            | Self::TaskName { .. }
            | Self::MalformedContainerIp(_)
            | Self::MalformedContainerIpv6(_)
            | Self::BadContainerIpv6(_)
            | Self::NoContainerIpv6 { .. }
            | Self::NoContainerIpv4 { .. }
            | Self::NoContainerIp(_)
            | Self::NotInBridgeSubnet { .. }
            | Self::NotInAnyBridgeSubnet { .. }
            | Self::NotInBridgeSubnet6 { .. }
            | Self::NoPorts
            | Self::TaskDefinition(_)
            | Self::UnknownContainer { .. }
            | Self::MissingContainerIp(_)
            | Self::SharedContainerIp { .. }
            | Self::ContainerIpArg(_)
            | Self::DuplicateContainerIpArg(_)
            | Self::CniAttachment(_)
            | Self::TooManyPortsInRequest { .. } => 400,
            Self::NoSuchTask(_) | Self::NoSuchBinding { .. } => 404,
            Self::PortAllocated { .. }
            | Self::HostPortInUse { .. }
            | Self::PortsExhausted { .. }
            | Self::TaskExists(_)
            | Self::TaskFromDefinition(_)
            | Self::TaskNotFromDefinition(_)
            | Self::CniAttachmentExists { .. }
            | Self::CniTaskNameTaken(_)
            | Self::TaskFromCni(_)
            | Self::TaskFromDocker(_)
            | Self::NotHeldByDocker { .. }
            | Self::TaskNotFromDocker(_)
            | Self::TooManyPortsInTask { .. } => 409,
            Self::TooManySubscribers(_) => 503,
            Self::Api { status, .. } => *status,
            Self::Sg(e) => e.http_status(),
            _ => 500,
        }
    }
}

/// Why the datapath refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("loading the eBPF programs needs root (CAP_BPF and CAP_NET_ADMIN)")]
    NotPermitted,
    #[error("this kernel is too old for berth: {0}")]
    KernelTooOld(String),
    #[error("bpffs at {path}: {reason}")]
    Bpffs { path: String, reason: String },
    #[error("eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    /// The published-port tables hold `--max-mappings` entries.
    #[error("the datapath holds at most {0} published ports; start the daemon with a larger --max-mappings")]
    MappingsFull(u32),
    /// Pins another version left that this one cannot adopt.
    #[error("{0}")]
    PinnedLayout(String),
    /// The socket hooks could not be attached and the operator did not
    /// allow running without them.
    #[error("cannot attach the socket hooks (bind guard, localhost and hairpin access): {0}; start with --no-socket-hooks to run without them")]
    SocketHooks(String),
    /// A system call, or a file under /sys or the bpffs, failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// aya refused: parsing the object, loading, attaching or pinning.
    #[error("{context}")]
    Aya {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Other(String),
    /// A host address table holds `--max-host-addrs` addresses: it got the
    /// first `held` of the `wanted` it was given (the most important
    /// first), and the rest are left out.
    #[error("{map} is full: it holds {held} of the host's {wanted} {family} addresses, {} left out (link-local ones first); start the daemon with a larger --max-host-addrs", .wanted - .held)]
    HostAddrsFull {
        map: &'static str,
        family: &'static str,
        held: usize,
        wanted: usize,
    },
}

impl DatapathError {
    /// For `map_err`: an I/O failure while doing `context`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// For `map_err`: aya's error while doing `context`.
    pub fn aya<E>(context: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let context = context.into();
        move |source| Self::Aya {
            context,
            source: Box::new(source),
        }
    }
}

/// No block of the requested size is free. Counts are of ports in the
/// range, each counted once: reserved first, then in use, then cooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub range: PortRange,
    pub count: u32,
    pub reserved: usize,
    pub in_use: usize,
    pub cooling: usize,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "no free host port in {}", self.range)?;
        } else {
            write!(
                f,
                "no free block of {} contiguous host ports in {}",
                self.count, self.range
            )?;
        }
        Ok(())
    }
}

impl Exhausted {
    /// `(N reserved, M in use, K cooling down)`, for the end of the message.
    pub fn counts(&self) -> String {
        format!(
            "({} reserved, {} in use, {} cooling down)",
            self.reserved, self.in_use, self.cooling
        )
    }
}

/// An error and its sources, joined by `: ` (what `{:#}` shows for an
/// `anyhow::Error`).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn join(subnets: &[Ipv4Cidr]) -> String {
    subnets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod one_line_tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_keep_their_cause_and_read_as_before() {
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let err = Error::from(join);
        assert!(std::error::Error::source(&err).is_some());
        let line = err.one_line();
        assert!(line.starts_with("internal error: task "), "{line}");
        assert!(line.ends_with(" panicked with message \"boom\""), "{line}");
        let bad = std::collections::BTreeMap::from([((1u8, 2u8), 3u8)]);
        let err = Error::Encode(serde_json::to_string(&bad).unwrap_err());
        assert_eq!(err.to_string(), "internal error");
        assert_eq!(err.one_line(), "internal error: key must be a string");
        assert_eq!(err.http_status(), 500);
    }

    #[test]
    fn names_from_the_user_never_break_the_line() {
        let errors = [
            Error::UnknownContainer {
                container: "web\n1".into(),
                known: vec!["a\nb".into()],
            },
            Error::MissingContainerIp("x\ny".into()),
        ];
        for e in errors {
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line:?}");
        }
    }
}
