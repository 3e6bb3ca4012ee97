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
//! With [`TopologyOptions::dual_stack`] every link also gets IPv6, as on a
//! Docker host with `--ipv6` and a ULA `fixed-cidr-v6`: client `2001:db8::2`,
//! client2 `2001:db8::3`, up0 `2001:db8::1/64`, docker0 `fd00:17::1/64`,
//! containers `fd00:17::2` and `fd00:17::3` (a container at 172.17.A.B gets
//! `fd00:17::A:B`, see [`addr::container_ip6`]). Duplicate-address detection
//! is off in every namespace (addresses are usable at once), the host
//! forwards IPv6, default routes point at up0 and docker0, and Docker's
//! rules go into ip6tables too. Without the option containers have IPv6
//! off, as on a Docker network without IPv6.
//!
//! Every link is created inside the namespaces (`ip -n … link add … peer …
//! netns …`), so nothing appears in the root namespace, not even briefly.
//! Dropping the [`Topology`] deletes all its namespaces, which removes every
//! link, address, route, sysctl and rule with them.
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    docker_rules::{docker_default_rules, docker_default_rules6},
    netns::LinkInfo,
    NetNs,
};

/// Addresses and names of the standard topology.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

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

    // IPv6, with `TopologyOptions::dual_stack` only.
    pub const WAN6_PREFIX_LEN: u8 = 64;
    pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    pub const CLIENT2_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
    /// The host's uplink IPv6 address.
    pub const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    pub const BRIDGE6_PREFIX_LEN: u8 = 64;
    pub const BRIDGE_SUBNET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 0);
    /// docker0's IPv6 address, the containers' IPv6 gateway.
    pub const BRIDGE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 1);
    pub const CONTAINER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);
    pub const CONTAINER2_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 3);

    /// The IPv6 address a container at `ip` (172.17.A.B) gets on a
    /// dual-stack docker0: `fd00:17::A:B`, so 172.17.0.2 is `fd00:17::2`.
    pub fn container_ip6(ip: Ipv4Addr) -> Ipv6Addr {
        let [_, _, a, b] = ip.octets();
        let s = BRIDGE_SUBNET6.segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, u16::from(a), u16::from(b))
    }
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
    /// IPv6 on every link as well (see the module docs). Default: false.
    pub dual_stack: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            tx_checksum_off: true,
            docker_iptables: true,
            dual_stack: false,
        }
    }
}

impl TopologyOptions {
    /// The default options with IPv6 on every link.
    pub fn dual_stack() -> Self {
        Self {
            dual_stack: true,
            ..Self::default()
        }
    }
}

/// A client on the wan side.
#[derive(Debug)]
pub struct Client {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// Its IPv6 address on a dual-stack topology.
    pub ip6: Option<Ipv6Addr>,
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
    /// `2001:db8::1` on a dual-stack topology.
    pub uplink_ip6: Option<Ipv6Addr>,
    /// `fd00:17::1` on a dual-stack topology.
    pub bridge_ip6: Option<Ipv6Addr>,
}

/// A container attached to docker0.
#[derive(Debug)]
pub struct Container {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// Its IPv6 address when its bridge has IPv6.
    pub ip6: Option<Ipv6Addr>,
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
        if options.dual_stack {
            no_dad(&wan)?;
            no_dad(&host_ns)?;
        }
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
        if options.dual_stack {
            add_addr6(
                &host_ns,
                addr::UPLINK,
                addr::HOST_IP6,
                addr::WAN6_PREFIX_LEN,
            )?;
            add_addr6(
                &host_ns,
                addr::BRIDGE,
                addr::BRIDGE_IP6,
                addr::BRIDGE6_PREFIX_LEN,
            )?;
            host_ns.set_sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        let host = Host {
            ns: host_ns,
            uplink: addr::UPLINK,
            uplink_ip: addr::HOST_IP,
            bridge: addr::BRIDGE,
            bridge_ip: addr::BRIDGE_IP,
            uplink_ip6: options.dual_stack.then_some(addr::HOST_IP6),
            bridge_ip6: options.dual_stack.then_some(addr::BRIDGE_IP6),
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
            if options.dual_stack {
                let subnet6 = format!("{}/{}", addr::BRIDGE_SUBNET6, addr::BRIDGE6_PREFIX_LEN);
                host.ns
                    .exec_with_stdin(
                        "ip6tables-restore",
                        ["-w"],
                        &docker_default_rules6(addr::BRIDGE, &subnet6),
                    )
                    .context("cannot apply Docker's ip6tables rules")?;
            }
        }

        let client = new_client(&wan, "client", "wp-client", Peer::CLIENT, &options)?;
        let client2 = new_client(&wan, "client2", "wp-client2", Peer::CLIENT2, &options)?;
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
    /// On a dual-stack topology it gets [`addr::container_ip6`] of `ip` too.
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

/// A client's addresses on the wan.
struct Peer {
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
}

impl Peer {
    const CLIENT: Self = Self {
        ip: addr::CLIENT_IP,
        ip6: addr::CLIENT_IP6,
    };
    const CLIENT2: Self = Self {
        ip: addr::CLIENT2_IP,
        ip6: addr::CLIENT2_IP6,
    };
}

fn new_client(
    wan: &NetNs,
    role: &str,
    port: &str,
    peer: Peer,
    options: &TopologyOptions,
) -> Result<Client> {
    let ns = NetNs::new(role)?;
    if options.dual_stack {
        no_dad(&ns)?;
    }
    wan_port(wan, port, &ns, addr::ETH)?;
    configure_endpoint(
        &ns,
        peer.ip,
        addr::WAN_PREFIX_LEN,
        addr::HOST_IP,
        options.tx_checksum_off,
    )?;
    let ip6 = options.dual_stack.then_some(peer.ip6);
    if let Some(ip6) = ip6 {
        configure_endpoint6(&ns, ip6, addr::WAN6_PREFIX_LEN, addr::HOST_IP6)?;
    }
    Ok(Client {
        ns,
        ip: peer.ip,
        ip6,
        ifname: addr::ETH,
    })
}

/// Duplicate-address detection off for every link made in `ns` from now
/// on: a tentative address cannot be used for a second or so, and the
/// tests' addresses are unique by construction.
fn no_dad(ns: &NetNs) -> Result<()> {
    ns.set_sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.set_sysctl("net.ipv6.conf.default.accept_dad", "0")
}

/// `ip -6 addr add IP/LEN dev DEV nodad`.
fn add_addr6(ns: &NetNs, dev: &str, ip: Ipv6Addr, prefix_len: u8) -> Result<()> {
    ns.ip([
        "-6",
        "addr",
        "add",
        &format!("{ip}/{prefix_len}"),
        "dev",
        dev,
        "nodad",
    ])?;
    Ok(())
}

/// The IPv6 address and default route of `eth0` (already up).
fn configure_endpoint6(ns: &NetNs, ip: Ipv6Addr, prefix_len: u8, gateway: Ipv6Addr) -> Result<()> {
    add_addr6(ns, addr::ETH, ip, prefix_len)?;
    ns.ip([
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway.to_string(),
        "dev",
        addr::ETH,
    ])?;
    Ok(())
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
    /// docker0, default route via 172.17.0.1. IPv6 is off (as Docker does
    /// on a network without IPv6) unless docker0 has IPv6 (a dual-stack
    /// topology): then `eth0` also gets [`addr::container_ip6`] of `ip`/64
    /// and a default route via `fd00:17::1`.
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
        let v6 = host
            .bridge_ip6
            .map(|gateway| (gateway, addr::container_ip6(ip)));
        Self::attach_inner(host, net, role, ip, v6, options)
    }

    /// As [`Container::attach`], on another bridge of the host (IPv4 only).
    pub fn attach_to(
        host: &Host,
        net: BridgeNet<'_>,
        role: &str,
        ip: Ipv4Addr,
        options: &TopologyOptions,
    ) -> Result<Self> {
        Self::attach_inner(host, net, role, ip, None, options)
    }

    /// `v6`: the IPv6 gateway and the container's IPv6 address, or IPv6 off.
    fn attach_inner(
        host: &Host,
        net: BridgeNet<'_>,
        role: &str,
        ip: Ipv4Addr,
        v6: Option<(Ipv6Addr, Ipv6Addr)>,
        options: &TopologyOptions,
    ) -> Result<Self> {
        let ns = NetNs::new(role)?;
        if v6.is_some() {
            no_dad(&ns)?;
        } else {
            ns.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
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
        if let Some((gateway, ip6)) = v6 {
            configure_endpoint6(&ns, ip6, addr::BRIDGE6_PREFIX_LEN, gateway)?;
        }
        Ok(Self {
            ns,
            ip,
            ip6: v6.map(|(_, ip6)| ip6),
            ifname: addr::ETH,
            host_veth,
        })
    }

    /// `ip:port` of this container.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// `[ip6]:port` of this container; panics on a container without IPv6.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        v6_addr(self.ip6, port, "container")
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

    /// `[ip6]:port` of this client; panics unless the topology is dual-stack.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        v6_addr(self.ip6, port, "client")
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

    /// `[2001:db8::1]:port`, a published port as IPv6 clients call it;
    /// panics unless the topology is dual-stack.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        v6_addr(self.uplink_ip6, port, "uplink")
    }

    /// `[fd00:17::1]:port`, the host as containers see it over IPv6;
    /// panics unless the topology is dual-stack.
    pub fn bridge_addr6(&self, port: u16) -> SocketAddr {
        v6_addr(self.bridge_ip6, port, "bridge")
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

/// `[ip]:port`, or a panic naming what has no IPv6: a test asking for an
/// IPv6 address on an IPv4-only topology is a bug in the test.
fn v6_addr(ip: Option<Ipv6Addr>, port: u16, what: &str) -> SocketAddr {
    let ip = ip.unwrap_or_else(|| {
        panic!("the {what} has no IPv6 address: build the topology with dual_stack")
    });
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
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
    fn container_ip6_follows_the_ipv4_address() {
        assert_eq!(addr::container_ip6(addr::CONTAINER_IP), addr::CONTAINER_IP6);
        assert_eq!(
            addr::container_ip6(addr::CONTAINER2_IP),
            addr::CONTAINER2_IP6
        );
        assert_eq!(
            addr::container_ip6(Ipv4Addr::new(172, 17, 1, 9)).to_string(),
            "fd00:17::1:9"
        );
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
