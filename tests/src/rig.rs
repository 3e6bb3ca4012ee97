//! One rig for the namespace tests: the Docker-like [`Topology`], a private
//! [`Bpffs`] and the real `berth daemon` on the host, built in one call and
//! torn down in the right order, with the CLI calls and traffic checks most
//! tests make.
//!
//! ```no_run
//! use berth_integration::{peer_ip, Mode, Rig};
//!
//! let rig = Rig::builder().mode(Mode::Xdp).flags(&["--default-sg", "x"]).start();
//! let _web = rig.serve_http(&rig.topo.container.ns, 80);
//! rig.map_add("web", "172.17.0.2", &["8080:80"]);
//! let body = rig.client_get(8080).expect("GET through the mapping");
//! assert_eq!(peer_ip(&body), "192.0.2.2");
//! ```
//!
//! A dual-stack rig ([`RigBuilder::dual_stack`]) adds IPv6 everywhere (see
//! [`crate::topology`]); the `…6` helpers call and serve over IPv6:
//!
//! ```no_run
//! use berth_integration::{peer_ip, Rig};
//!
//! let rig = Rig::builder().dual_stack().start();
//! let _web = rig.serve_http6(&rig.topo.container.ns, 80);
//! let body = rig.client_get6(8080).expect("GET over IPv6");
//! assert_eq!(peer_ip(&body), "2001:db8::2");
//! ```
//!
//! Setup failures panic with their context rather than returning a
//! `Result`: a test has nothing to do with a rig it could not build, and the
//! panic keeps the daemon's stderr (the [`Daemon`] guard prints it).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use anyhow::Result;
use serde_json::Value;

use crate::{
    berth_bin, http_get, udp_request, Bpffs, Container, Daemon, DaemonOptions, HttpPeerServer,
    NetNs, Topology, TopologyOptions, UdpEchoServer, UdpReply,
};

/// How long one client request through a published port may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The daemon finds new ports on the bridge by polling every 250 ms; waiting
/// this long after a port appears means it is hooked.
pub const VETH_POLL: Duration = Duration::from_millis(600);

/// Where the daemon attaches its uplink program (`--attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No `--attach`: whatever the daemon defaults to.
    Default,
    Tc,
    Xdp,
}

impl Mode {
    fn flag(self) -> Option<String> {
        match self {
            Self::Default => None,
            Self::Tc => Some("tc".into()),
            Self::Xdp => Some("xdp".into()),
        }
    }
}

/// Options of a [`Rig`]; [`RigBuilder::start`] builds it.
#[derive(Debug, Clone, Default)]
pub struct RigBuilder {
    topology: TopologyOptions,
    daemon: DaemonOptions,
    settle: Option<Duration>,
}

impl RigBuilder {
    /// Topology knobs (checksum offload, Docker's iptables rules).
    pub fn topology(mut self, options: TopologyOptions) -> Self {
        self.topology = options;
        self
    }

    /// IPv6 on every link of the topology as well (uplink, bridge,
    /// clients, containers; see [`crate::topology`]).
    pub fn dual_stack(mut self) -> Self {
        self.topology.dual_stack = true;
        self
    }

    /// `--attach` of the daemon.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.daemon.attach = mode.flag();
        self
    }

    /// Daemon flags after the standard ones (`--uplink`, `--bridge`, …).
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.daemon
            .extra_args
            .extend(flags.iter().map(ToString::to_string));
        self
    }

    /// `--bridge` of the daemon (default `docker0`).
    pub fn bridge(mut self, bridge: &str) -> Self {
        self.daemon.bridge = bridge.into();
        self
    }

    /// Runs `bin` as the daemon instead of the real `berth`.
    pub fn bin(mut self, bin: PathBuf) -> Self {
        self.daemon.bin = Some(bin);
        self
    }

    /// Full control over how the daemon starts (replaces what
    /// [`RigBuilder::mode`], [`RigBuilder::flags`] and the like set).
    pub fn daemon_options(mut self, options: DaemonOptions) -> Self {
        self.daemon = options;
        self
    }

    /// Waits [`VETH_POLL`] after the daemon is healthy, so the containers'
    /// ports are hooked before the test sends anything over the bridge.
    pub fn wait_for_ports(mut self) -> Self {
        self.settle = Some(VETH_POLL);
        self
    }

    /// Builds the topology and the bpffs and starts the daemon.
    pub fn start(self) -> Rig {
        let topo = Topology::build_with(self.topology.clone()).expect("build the topology");
        self.start_on(topo)
    }

    /// Starts on a topology the test prepared first (a sysctl the daemon
    /// must see at start, a listener that must already hold a port).
    pub fn start_on(self, topo: Topology) -> Rig {
        let bpffs = Bpffs::new().expect("mount a bpffs");
        let daemon =
            Daemon::start_with(&topo.host.ns, &bpffs, self.daemon).expect("start berth daemon");
        if let Some(wait) = self.settle {
            thread::sleep(wait);
        }
        Rig {
            daemon,
            bpffs,
            topo,
        }
    }

    /// Builds the topology and the bpffs and tries to start the daemon: the
    /// error is the answer when the test expects the start to be refused.
    pub fn try_start(self) -> Result<Rig> {
        let topo = Topology::build_with(self.topology.clone()).expect("build the topology");
        let bpffs = Bpffs::new().expect("mount a bpffs");
        let daemon = Daemon::start_with(&topo.host.ns, &bpffs, self.daemon)?;
        Ok(Rig {
            daemon,
            bpffs,
            topo,
        })
    }
}

/// A topology, its bpffs and a healthy daemon. Fields drop in declaration
/// order, which is the order teardown needs: the daemon stops first (its
/// pins stay in the bpffs), then the bpffs is unmounted (programs and links
/// held only by pins go), then the namespaces are deleted.
#[derive(Debug)]
pub struct Rig {
    pub daemon: Daemon,
    pub bpffs: Bpffs,
    pub topo: Topology,
}

impl Rig {
    /// The standard rig: default topology, default daemon flags.
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn builder() -> RigBuilder {
        RigBuilder::default()
    }

    /// `berth args…` in the host namespace; panics quoting stderr if it
    /// fails. Returns stdout.
    pub fn berth(&self, args: &[&str]) -> String {
        self.daemon.cli_ok(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Rig::berth`] with `line` split at whitespace, as it is typed: for
    /// commands whose arguments hold no spaces (no quoting here).
    pub fn berth_words(&self, line: &str) -> String {
        self.berth(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// `berth args…` whatever its exit status.
    pub fn berth_output(&self, args: &[&str]) -> Output {
        self.daemon
            .cli(args)
            .unwrap_or_else(|e| panic!("cannot run berth {args:?}: {e:#}"))
    }

    /// `berth args…` that must fail with one line on stderr; returns it.
    pub fn berth_err(&self, args: &[&str]) -> String {
        let out = self.berth_output(args);
        assert!(
            !out.status.success(),
            "`berth {}` must fail",
            args.join(" ")
        );
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        err
    }

    /// `berth args…` parsed as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.berth(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`berth {}` is not JSON ({e}): {out}", args.join(" ")))
    }

    /// `berth map add --task T --ip IP -p SPEC…`; returns stdout.
    pub fn map_add(&self, task: &str, ip: &str, specs: &[&str]) -> String {
        self.berth(&map_add_args(task, ip, specs))
    }

    /// [`Rig::map_add`] that must fail in one line; returns it.
    pub fn map_add_err(&self, task: &str, ip: &str, specs: &[&str]) -> String {
        self.berth_err(&map_add_args(task, ip, specs))
    }

    /// `berth map ls --json`.
    pub fn bindings(&self) -> Vec<Value> {
        self.json(&["map", "ls", "--json"])
            .as_array()
            .expect("map ls --json is an array")
            .clone()
    }

    /// One datapath counter from `berth stats --json`.
    pub fn counter(&self, name: &str) -> u64 {
        let v = self.json(&["stats", "--json"]);
        v["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {v}"))
    }

    /// An HTTP server on `0.0.0.0:port` in `ns` that answers with the
    /// caller's address.
    pub fn serve_http(&self, ns: &NetNs, port: u16) -> HttpPeerServer {
        HttpPeerServer::start_in(ns, any(port)).expect("start an HTTP server")
    }

    /// A UDP server on `0.0.0.0:port` in `ns` that echoes with the caller's
    /// address.
    pub fn serve_udp_echo(&self, ns: &NetNs, port: u16) -> UdpEchoServer {
        UdpEchoServer::start_in(ns, any(port)).expect("start a UDP echo server")
    }

    /// An HTTP server on `[::]:port` (v6-only) in `ns` that answers with
    /// the caller's address.
    pub fn serve_http6(&self, ns: &NetNs, port: u16) -> HttpPeerServer {
        HttpPeerServer::start_in(ns, any6(port)).expect("start an IPv6 HTTP server")
    }

    /// A UDP server on `[::]:port` (v6-only) in `ns` that echoes with the
    /// caller's address.
    pub fn serve_udp_echo6(&self, ns: &NetNs, port: u16) -> UdpEchoServer {
        UdpEchoServer::start_in(ns, any6(port)).expect("start an IPv6 UDP echo server")
    }

    /// GET / from the client to the host's published `port` over IPv6
    /// (`[2001:db8::1]:port`).
    pub fn client_get6(&self, port: u16) -> Result<String> {
        self.get_from(&self.topo.client.ns, self.topo.host.addr6(port))
    }

    /// One UDP datagram from the client to the host's published `port`
    /// over IPv6.
    pub fn client_udp6(&self, port: u16, payload: &str) -> Result<UdpReply> {
        self.udp_from_client(self.topo.host.addr6(port), payload)
    }

    /// GET / from the client to the host's published `port`.
    pub fn client_get(&self, port: u16) -> Result<String> {
        self.get_from(&self.topo.client.ns, self.topo.host.addr(port))
    }

    /// GET / from inside `ns` to `addr`.
    pub fn get_from(&self, ns: &NetNs, addr: SocketAddr) -> Result<String> {
        ns.run(move || http_get(addr, "/", REQUEST_TIMEOUT))
    }

    /// One UDP datagram from the client to the host's published `port`.
    pub fn client_udp(&self, port: u16, payload: &str) -> Result<UdpReply> {
        self.udp_from_client(self.topo.host.addr(port), payload)
    }

    fn udp_from_client(&self, target: SocketAddr, payload: &str) -> Result<UdpReply> {
        let payload = payload.to_string();
        self.topo
            .client
            .ns
            .run(move || udp_request(target, &payload, REQUEST_TIMEOUT))
    }

    /// One more container on docker0, hooked by the daemon when this
    /// returns.
    pub fn new_container(&self, role: &str, ip: &str) -> Container {
        let c = self
            .topo
            .new_container(role, ip.parse().expect("an IPv4 address"))
            .expect("attach a container");
        thread::sleep(VETH_POLL);
        c
    }

    /// Runs `cg-probe args…` (built next to `berth`) in `ns`, inside the
    /// daemon's cgroup, where its socket hooks apply; returns its stdout.
    pub fn cg_probe(&self, ns: &NetNs, args: &[&str]) -> String {
        let bin = berth_bin()
            .expect("find the berth binary")
            .with_file_name("cg-probe");
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin)
            .arg(self.daemon.cgroup().procs_file())
            .args(args)
            .output()
            .expect("run cg-probe");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A file with `text` in the daemon's work dir (task definitions,
    /// configs); returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.daemon.workdir().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `berth reset --state-dir … --bpffs …`, as an operator runs it with
    /// the daemon stopped.
    pub fn reset(&self) -> Output {
        let state = path_arg(self.daemon.state_dir());
        let bpffs = path_arg(self.daemon.bpffs());
        self.berth_output(&["reset", "--state-dir", &state, "--bpffs", &bpffs])
    }
}

/// `map add --task T --ip IP -p SPEC…` as CLI arguments.
pub fn map_add_args<'a>(task: &'a str, ip: &'a str, specs: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["map", "add", "--task", task, "--ip", ip];
    for s in specs {
        args.extend(["-p", s]);
    }
    args
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// `0.0.0.0:port`.
pub fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// `[::]:port`.
pub fn any6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
}

/// The address part of a peer server's answer (`"192.0.2.2:41000"` →
/// `"192.0.2.2"`, `"[2001:db8::2]:41000"` → `"2001:db8::2"`).
pub fn peer_ip(body: &str) -> String {
    if let Ok(peer) = body.trim().parse::<SocketAddr>() {
        return peer.ip().to_string();
    }
    body.rsplit_once(':')
        .map(|(ip, _)| ip.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ip_reads_both_families() {
        assert_eq!(peer_ip("192.0.2.2:41000"), "192.0.2.2");
        assert_eq!(peer_ip("[2001:db8::2]:41000"), "2001:db8::2");
        assert_eq!(peer_ip("[::ffff:192.0.2.2]:1"), "::ffff:192.0.2.2");
        assert_eq!(peer_ip("no port"), "");
    }
}
