//! A Docker-like container host built from network namespaces.
//!
//! ```text
//!  client  eth0 192.0.2.2/24 ─┐                       host namespace
//!  client2 eth0 192.0.2.3/24 ─┤  wan namespace     ┌──────────────────────────────┐
//!                             ├─ bridge wan0 ──────┤ up0 192.0.2.1/24  (uplink)   │
//!                             │  (ports wp-*)      │ docker0 172.17.0.1/16        │
//!                                                  │   ├─ veth… ── container  eth0 172.17.0.2/16
//!                                                  │   └─ veth… ── container2 eth0 172.17.0.3/16
//!                                                  │ ip_forward=1, Docker 28 iptables rules
//!                                                  └──────────────────────────────┘
//! ```
//!
//! The "wan" namespace only holds the bridge `wan0` that joins the host's
//! single uplink `up0` with both clients (a switch); the daemon gets one
//! `--uplink up0`. Clients route everything via 192.0.2.1, containers via
//! 172.17.0.1. The host has no default route: every peer is on-link.
//!
//! Every link is created inside the namespaces (`ip -n … link add … peer …
//! netns …`), so nothing appears in the root namespace, not even briefly.
//! Dropping the [`Topology`] deletes all its namespaces, which removes every
//! link, address, route, sysctl and rule with them.
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use anyhow::{bail, Context as _, Result};

use crate::{docker_rules::docker_default_rules, netns::LinkInfo, NetNs};

/// Addresses and names of the standard topology.
pub mod addr {
    use std::net::Ipv4Addr;

    pub const WAN_PREFIX_LEN: u8 = 24;
    pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    pub const CLIENT2_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
    /// The host's uplink address (what clients call the published ports on).
    pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const BRIDGE_PREFIX_LEN: u8 = 16;
    pub const BRIDGE_SUBNET: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 0);
    /// docker0's address, the containers' gateway.
    pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
    pub const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
    pub const CONTAINER2_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);

    /// The host's uplink interface.
    pub const UPLINK: &str = "up0";
    /// The container bridge in the host namespace.
    pub const BRIDGE: &str = "docker0";
    /// The bridge in the wan namespace joining the uplink and the clients.
    pub const WAN_BRIDGE: &str = "wan0";
    /// The interface name inside clients and containers.
    pub const ETH: &str = "eth0";
}

/// Knobs for [`Topology::build_with`].
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// `ethtool -K eth0 tx off` in clients and containers, so senders
    /// compute checksums in software and receivers verify them: a datapath
    /// that rewrites a packet with a wrong checksum makes the flow fail.
    /// Default: true.
    pub tx_checksum_off: bool,
    /// Apply Docker's default iptables rules in the host namespace.
    /// Default: true. Off is only for checking the topology's routing.
    pub docker_iptables: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            tx_checksum_off: true,
            docker_iptables: true,
        }
    }
}

/// A client on the wan side.
#[derive(Debug)]
pub struct Client {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// Its interface (`eth0`).
    pub ifname: &'static str,
}

/// The container host: uplink, docker0, forwarding and Docker's rules.
#[derive(Debug)]
pub struct Host {
    pub ns: NetNs,
    /// `up0`
    pub uplink: &'static str,
    /// 192.0.2.1
    pub uplink_ip: Ipv4Addr,
    /// `docker0`
    pub bridge: &'static str,
    /// 172.17.0.1
    pub bridge_ip: Ipv4Addr,
}

/// A container attached to docker0.
#[derive(Debug)]
pub struct Container {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// Its interface inside (`eth0`).
    pub ifname: &'static str,
    /// The host end of its veth pair (in the host namespace, on docker0),
    /// named like Docker's: `veth` + 7 hex digits.
    pub host_veth: String,
}

/// The whole test host; see the module docs for the picture.
#[derive(Debug)]
pub struct Topology {
    pub client: Client,
    pub client2: Client,
    pub host: Host,
    pub container: Container,
    pub container2: Container,
    /// The namespace holding the wan0 bridge (nothing to do there usually).
    pub wan: NetNs,
    options: TopologyOptions,
}

impl Topology {
    /// Builds the standard topology with default options.
    pub fn build() -> Result<Self> {
        Self::build_with(TopologyOptions::default())
    }

    pub fn build_with(options: TopologyOptions) -> Result<Self> {
        // Each guard is live from the moment it exists, so a failure half
        // way through tears down what was built so far.
        let wan = NetNs::new("wan")?;
        let host_ns = NetNs::new("host")?;
        wan.ip(["link", "add", addr::WAN_BRIDGE, "type", "bridge"])?;
        wan.ip(["link", "set", addr::WAN_BRIDGE, "up"])?;

        wan_port(&wan, "wp-host", &host_ns, addr::UPLINK)?;
        host_ns.ip([
            "addr",
            "add",
            &format!("{}/{}", addr::HOST_IP, addr::WAN_PREFIX_LEN),
            "dev",
            addr::UPLINK,
        ])?;
        host_ns.ip(["link", "set", addr::UPLINK, "up"])?;

        host_ns.ip(["link", "add", addr::BRIDGE, "type", "bridge"])?;
        host_ns.ip([
            "addr",
            "add",
            &format!("{}/{}", addr::BRIDGE_IP, addr::BRIDGE_PREFIX_LEN),
            "dev",
            addr::BRIDGE,
        ])?;
        host_ns.ip(["link", "set", addr::BRIDGE, "up"])?;
        host_ns.set_sysctl("net.ipv4.ip_forward", "1")?;
        let host = Host {
            ns: host_ns,
            uplink: addr::UPLINK,
            uplink_ip: addr::HOST_IP,
            bridge: addr::BRIDGE,
            bridge_ip: addr::BRIDGE_IP,
        };
        if options.docker_iptables {
            let subnet = format!("{}/{}", addr::BRIDGE_SUBNET, addr::BRIDGE_PREFIX_LEN);
            host.ns
                .exec_with_stdin(
                    "iptables-restore",
                    ["-w"],
                    &docker_default_rules(addr::BRIDGE, &subnet),
                )
                .context("cannot apply Docker's iptables rules")?;
        }

        let client = new_client(&wan, "client", "wp-client", addr::CLIENT_IP, &options)?;
        let client2 = new_client(&wan, "client2", "wp-client2", addr::CLIENT2_IP, &options)?;
        let container = Container::attach(&host, "ctr1", addr::CONTAINER_IP, &options)?;
        let container2 = Container::attach(&host, "ctr2", addr::CONTAINER2_IP, &options)?;

        Ok(Self {
            client,
            client2,
            host,
            container,
            container2,
            wan,
            options,
        })
    }

    /// One more container on docker0 (role names its namespace), owned by
    /// the caller: dropping it removes the container and its veth, like
    /// `docker rm`. Uses the topology's options.
    pub fn new_container(&self, role: &str, ip: Ipv4Addr) -> Result<Container> {
        Container::attach(&self.host, role, ip, &self.options)
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&NetNs> {
        vec![
            &self.client.ns,
            &self.client2.ns,
            &self.host.ns,
            &self.container.ns,
            &self.container2.ns,
            &self.wan,
        ]
    }

    pub fn options(&self) -> &TopologyOptions {
        &self.options
    }
}

/// A veth pair from a new port on wan0 to `peer` inside `peer_ns`.
fn wan_port(wan: &NetNs, port: &str, peer_ns: &NetNs, peer: &str) -> Result<()> {
    wan.ip([
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        peer_ns.name(),
    ])?;
    wan.ip(["link", "set", port, "master", addr::WAN_BRIDGE, "up"])?;
    Ok(())
}

fn new_client(
    wan: &NetNs,
    role: &str,
    port: &str,
    ip: Ipv4Addr,
    options: &TopologyOptions,
) -> Result<Client> {
    let ns = NetNs::new(role)?;
    wan_port(wan, port, &ns, addr::ETH)?;
    configure_endpoint(
        &ns,
        ip,
        addr::WAN_PREFIX_LEN,
        addr::HOST_IP,
        options.tx_checksum_off,
    )?;
    Ok(Client {
        ns,
        ip,
        ifname: addr::ETH,
    })
}

/// Address, link up, default route and checksum offload of `eth0`.
fn configure_endpoint(
    ns: &NetNs,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    tx_checksum_off: bool,
) -> Result<()> {
    ns.ip([
        "addr",
        "add",
        &format!("{ip}/{prefix_len}"),
        "dev",
        addr::ETH,
    ])?;
    ns.ip(["link", "set", addr::ETH, "up"])?;
    ns.ip([
        "route",
        "add",
        "default",
        "via",
        &gateway.to_string(),
        "dev",
        addr::ETH,
    ])?;
    if tx_checksum_off {
        ns.exec("ethtool", ["-K", addr::ETH, "tx", "off"])
            .context("cannot turn TX checksum offload off")?;
    }
    Ok(())
}

/// `veth` + 7 hex digits, like Docker's host-side names; unique within one
/// host namespace because it hashes the container namespace's unique name.
fn docker_veth_name(container_ns: &str) -> String {
    let mut h = DefaultHasher::new();
    container_ns.hash(&mut h);
    format!("veth{:07x}", h.finish() & 0x0fff_ffff)
}

/// Another container bridge in the host namespace beside docker0 (a CNI
/// network's `cni0`, as its bridge plugin makes one): `name` with
/// `gateway`/`prefix_len`, up. Deleted with the host namespace.
pub fn add_bridge(host: &Host, name: &str, gateway: Ipv4Addr, prefix_len: u8) -> Result<()> {
    host.ns.ip(["link", "add", name, "type", "bridge"])?;
    host.ns.ip([
        "addr",
        "add",
        &format!("{gateway}/{prefix_len}"),
        "dev",
        name,
    ])?;
    host.ns.ip(["link", "set", name, "up"])?;
    Ok(())
}

/// Where [`Container::attach_to`] plugs a container in.
#[derive(Debug, Clone, Copy)]
pub struct BridgeNet<'a> {
    pub bridge: &'a str,
    /// The bridge's own address, the containers' gateway.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
}

impl Container {
    /// Creates a container namespace with `eth0` at `ip`/16 on the host's
    /// docker0, default route via 172.17.0.1, IPv6 off (as Docker does on a
    /// network without IPv6).
    pub fn attach(
        host: &Host,
        role: &str,
        ip: Ipv4Addr,
        options: &TopologyOptions,
    ) -> Result<Self> {
        let net = BridgeNet {
            bridge: host.bridge,
            gateway: host.bridge_ip,
            prefix_len: addr::BRIDGE_PREFIX_LEN,
        };
        Self::attach_to(host, net, role, ip, options)
    }

    /// As [`Container::attach`], on another bridge of the host.
    pub fn attach_to(
        host: &Host,
        net: BridgeNet<'_>,
        role: &str,
        ip: Ipv4Addr,
        options: &TopologyOptions,
    ) -> Result<Self> {
        let ns = NetNs::new(role)?;
        ns.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        let host_veth = docker_veth_name(ns.name());
        host.ns.ip([
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            addr::ETH,
            "netns",
            ns.name(),
        ])?;
        // From here the veth lives with the container namespace: deleting
        // that namespace deletes the pair, host end included.
        host.ns
            .ip(["link", "set", &host_veth, "master", net.bridge, "up"])?;
        configure_endpoint(
            &ns,
            ip,
            net.prefix_len,
            net.gateway,
            options.tx_checksum_off,
        )?;
        Ok(Self {
            ns,
            ip,
            ifname: addr::ETH,
            host_veth,
        })
    }

    /// `ip:port` of this container.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// The container's `eth0`.
    pub fn link(&self) -> Result<LinkInfo> {
        self.ns.link(self.ifname)
    }

    /// The host end of its veth (look it up in `host`).
    pub fn host_veth_link(&self, host: &Host) -> Result<LinkInfo> {
        host.ns.link(&self.host_veth)
    }
}

impl Client {
    /// `ip:port` of this client.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    pub fn link(&self) -> Result<LinkInfo> {
        self.ns.link(self.ifname)
    }
}

/// One rule's counters from `iptables -L -v -x -n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub packets: u64,
    pub bytes: u64,
    /// `DROP`, `ACCEPT`, a chain name, … (empty for a rule without target).
    pub target: String,
    /// The whole line, for messages.
    pub line: String,
}

impl Host {
    /// `192.0.2.1:port`, a published port as clients call it.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.uplink_ip, port))
    }

    /// `172.17.0.1:port`, the host as containers see it.
    pub fn bridge_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.bridge_ip, port))
    }

    /// The uplink `up0`.
    pub fn uplink_link(&self) -> Result<LinkInfo> {
        self.ns.link(self.uplink)
    }

    /// The bridge `docker0` (ifindex, MAC, …).
    pub fn bridge_link(&self) -> Result<LinkInfo> {
        self.ns.link(self.bridge)
    }

    /// `iptables-save` of the host namespace.
    pub fn iptables_save(&self) -> Result<String> {
        self.ns.exec("iptables-save", std::iter::empty::<&str>())
    }

    /// Per-rule packet/byte counters of `table`/`chain`, in rule order.
    pub fn iptables_counters(&self, table: &str, chain: &str) -> Result<Vec<RuleCounter>> {
        let out = self.ns.exec(
            "iptables",
            ["-w", "-t", table, "-L", chain, "-v", "-x", "-n"],
        )?;
        parse_iptables_counters(&out)
    }

    /// Packets dropped by Docker's `DOCKER ! -i docker0 -o docker0 -j DROP`:
    /// traffic routed into the bridge from outside that nothing published.
    pub fn docker_drop_packets(&self) -> Result<u64> {
        let rules = self.iptables_counters("filter", "DOCKER")?;
        rules
            .iter()
            .find(|r| r.target == "DROP")
            .map(|r| r.packets)
            .context("no DROP rule in the DOCKER chain")
    }
}

fn parse_iptables_counters(out: &str) -> Result<Vec<RuleCounter>> {
    let mut rules = Vec::new();
    // Line 1: "Chain X (…)", line 2: column headers.
    for line in out.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            bail!("unexpected iptables line: {line:?}");
        }
        rules.push(RuleCounter {
            packets: f[0]
                .parse()
                .with_context(|| format!("packets in {line:?}"))?,
            bytes: f[1].parse().with_context(|| format!("bytes in {line:?}"))?,
            target: f[2].to_string(),
            line: line.trim().to_string(),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_look_like_dockers() {
        let a = docker_veth_name("berth-1-2-ctr1");
        let b = docker_veth_name("berth-1-3-ctr2");
        assert_ne!(a, b);
        for n in [a, b] {
            assert_eq!(n.len(), 11, "{n}");
            assert!(n.starts_with("veth"));
            assert!(n[4..].chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn iptables_counters_parse() {
        let out = "Chain DOCKER (1 references)\n    pkts      bytes target     prot opt in     out     source               destination         \n       3      180 DROP       0    --  !docker0 docker0  0.0.0.0/0            0.0.0.0/0           \n";
        let r = parse_iptables_counters(out).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].packets, r[0].bytes, r[0].target.as_str()),
            (3, 180, "DROP")
        );
    }
}
