//! The peers, each on a topology of its own (client → host uplink →
//! docker0 → container), and how each publishes ports.
use std::{
    fmt::Write as _,
    io::Read as _,
    net::SocketAddr,
    os::{fd::FromRawFd as _, unix::process::CommandExt as _},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::load::{Servers, IPERF_PORT, RR_PORT, UDP_PORT};
use berth_integration::{Bpffs, Child, Daemon, DaemonOptions, NetNs, Topology, TopologyOptions};

/// Docker's userland proxy, from Debian's `docker.io`.
pub const DOCKER_PROXY: &str = "/usr/sbin/docker-proxy";
pub const CTR: &str = "172.17.0.2";
/// Where the extra mappings point (the second container).
pub const CTR2: &str = "172.17.0.3";
/// First host port of the extra mappings.
pub const EXTRA_BASE: u16 = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Direct,
    Iptables,
    Nftables,
    NftMap,
    DockerProxy,
    BerthTc,
    BerthXdp,
}

impl Peer {
    pub const ALL: [Self; 7] = [
        Self::Direct,
        Self::Iptables,
        Self::Nftables,
        Self::NftMap,
        Self::DockerProxy,
        Self::BerthTc,
        Self::BerthXdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Iptables => "iptables-dnat",
            Self::Nftables => "nftables-dnat",
            Self::NftMap => "nftables-map",
            Self::DockerProxy => "docker-proxy",
            Self::BerthTc => "berth-tc",
            Self::BerthXdp => "berth-xdp",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => "client to the container IP, routed, no translation (the floor)",
            Self::Iptables => "Docker 28's iptables rules: nat DOCKER chain, one DNAT and one filter ACCEPT rule per port",
            Self::Nftables => "Docker 29's nftables backend (table ip docker-bridges): one DNAT and one accept rule per port",
            Self::NftMap => "one nft table with a verdict-free DNAT map (proto . port -> addr . port) and a set of published ports",
            Self::DockerProxy => "the real /usr/sbin/docker-proxy per port, started with dockerd's arguments, no DNAT rule",
            Self::BerthTc => "berth daemon, --attach tc",
            Self::BerthXdp => "berth daemon, --attach xdp (XDP rewrites, TC redirects)",
        }
    }

    /// Whether the peer is measured at 10 000 published ports.
    /// docker-proxy would need 10 000 processes.
    pub fn scales(self) -> bool {
        self != Self::DockerProxy
    }
}

/// One published port.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    pub udp: bool,
    pub host_port: u16,
    pub ctr_ip: &'static str,
    pub ctr_port: u16,
}

impl Mapping {
    fn proto(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

/// The three measured ports, added last.
pub fn measured() -> Vec<Mapping> {
    [(false, RR_PORT), (false, IPERF_PORT), (true, UDP_PORT)]
        .into_iter()
        .map(|(udp, p)| Mapping {
            udp,
            host_port: p,
            ctr_ip: CTR,
            ctr_port: p,
        })
        .collect()
}

/// `n` extra TCP mappings to the second container: host ports from
/// [`EXTRA_BASE`] up when they fit below 65 536; more (the 65 000-port
/// phase) take the highest ports that are not measured ones.
pub fn extras(n: usize) -> Vec<Mapping> {
    extra_ports(n)
        .into_iter()
        .map(|p| Mapping {
            udp: false,
            host_port: p,
            ctr_ip: CTR2,
            ctr_port: p,
        })
        .collect()
}

fn extra_ports(n: usize) -> Vec<u16> {
    if usize::from(EXTRA_BASE) + n <= 65_536 {
        return (0..n).map(|i| EXTRA_BASE + i as u16).collect();
    }
    let measured: Vec<u16> = measured().iter().map(|m| m.host_port).collect();
    let mut v: Vec<u16> = (1..=65_535u16)
        .rev()
        .filter(|p| !measured.contains(p))
        .take(n)
        .collect();
    v.reverse();
    v
}

// ---------------------------------------------------------------- iptables

/// Docker 28's per-port rules (iptables backend) for `maps`, in order, as
/// an `iptables-restore --noflush` batch that rewrites both DOCKER chains:
/// nat `DOCKER` gets one DNAT rule per port, filter `DOCKER` one ACCEPT per
/// port ahead of its final DROP.
pub fn iptables_batch(maps: &[Mapping]) -> String {
    let mut s = String::from("*nat\n-F DOCKER\n-A DOCKER -i docker0 -j RETURN\n");
    for m in maps {
        let p = m.proto();
        let _ = writeln!(
            s,
            "-A DOCKER ! -i docker0 -p {p} -m {p} --dport {} -j DNAT --to-destination {}:{}",
            m.host_port, m.ctr_ip, m.ctr_port
        );
    }
    s.push_str("COMMIT\n*filter\n-F DOCKER\n");
    for m in maps {
        let p = m.proto();
        let _ = writeln!(
            s,
            "-A DOCKER -d {}/32 ! -i docker0 -o docker0 -p {p} -m {p} --dport {} -j ACCEPT",
            m.ctr_ip, m.ctr_port
        );
    }
    s.push_str("-A DOCKER ! -i docker0 -o docker0 -j DROP\nCOMMIT\n");
    s
}

/// Individual rules to add (`-A`/`-I`) or delete (`-D`) `maps`, as
/// `iptables-restore --noflush` input (Docker's per-port rules).
pub fn iptables_rules(maps: &[Mapping], delete: bool) -> String {
    let (nat_op, filter_op) = if delete {
        ("-D DOCKER", "-D DOCKER")
    } else {
        ("-A DOCKER", "-I DOCKER 1")
    };
    let mut s = String::from("*nat\n");
    for m in maps {
        let p = m.proto();
        let _ = writeln!(
            s,
            "{nat_op} ! -i docker0 -p {p} -m {p} --dport {} -j DNAT --to-destination {}:{}",
            m.host_port, m.ctr_ip, m.ctr_port
        );
    }
    s.push_str("COMMIT\n*filter\n");
    for m in maps {
        let p = m.proto();
        let _ = writeln!(
            s,
            "{filter_op} -d {}/32 ! -i docker0 -o docker0 -p {p} -m {p} --dport {} -j ACCEPT",
            m.ctr_ip, m.ctr_port
        );
    }
    s.push_str("COMMIT\n");
    s
}

// ---------------------------------------------------------------- nftables

/// Docker 29's nftables backend for the default bridge (ICC on, masquerade
/// on, userland proxy on so no hairpin rules), with one DNAT rule per port
/// in `nat-prerouting-and-output` and one accept rule per port in
/// `filter-forward-in__docker0`, as its `port.go` writes them. The whole
/// table is replaced in one transaction.
pub fn nft_docker29(maps: &[Mapping]) -> String {
    let mut dnat = String::new();
    let mut accept = String::new();
    for m in maps {
        let p = m.proto();
        let _ = writeln!(
            dnat,
            "\t\tiifname != \"docker0\" {p} dport {} counter dnat to {}:{} comment \"DNAT\"",
            m.host_port, m.ctr_ip, m.ctr_port
        );
        let _ = writeln!(
            accept,
            "\t\tip daddr {} {p} dport {} counter accept",
            m.ctr_ip, m.ctr_port
        );
    }
    format!(
        "table ip docker-bridges
delete table ip docker-bridges
table ip docker-bridges {{
\tchain filter-forward-in__docker0 {{
\t\tct state established,related counter accept
\t\tiifname \"docker0\" counter accept comment \"ICC\"
{accept}\t\tcounter drop comment \"UNPUBLISHED PORT DROP\"
\t}}
\tchain filter-forward-out__docker0 {{
\t\tct state established,related counter accept
\t\tcounter accept comment \"OUTGOING\"
\t}}
\tchain nat-postrouting-in__docker0 {{
\t}}
\tchain nat-postrouting-out__docker0 {{
\t\toifname != \"docker0\" ip saddr 172.17.0.0/16 counter masquerade comment \"MASQUERADE\"
\t}}
\tchain nat-prerouting-and-output {{
{dnat}\t}}
\tmap filter-forward-in-jumps {{
\t\ttype ifname : verdict
\t\telements = {{ \"docker0\" : jump filter-forward-in__docker0 }}
\t}}
\tmap filter-forward-out-jumps {{
\t\ttype ifname : verdict
\t\telements = {{ \"docker0\" : jump filter-forward-out__docker0 }}
\t}}
\tmap nat-postrouting-in-jumps {{
\t\ttype ifname : verdict
\t\telements = {{ \"docker0\" : jump nat-postrouting-in__docker0 }}
\t}}
\tmap nat-postrouting-out-jumps {{
\t\ttype ifname : verdict
\t\telements = {{ \"docker0\" : jump nat-postrouting-out__docker0 }}
\t}}
\tchain filter-FORWARD {{
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname vmap @filter-forward-in-jumps
\t\tiifname vmap @filter-forward-out-jumps
\t}}
\tchain nat-OUTPUT {{
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
\t}}
\tchain nat-POSTROUTING {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname vmap @nat-postrouting-out-jumps
\t\toifname vmap @nat-postrouting-in-jumps
\t}}
\tchain nat-PREROUTING {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local counter jump nat-prerouting-and-output
\t}}
\tchain raw-PREROUTING {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr 172.17.0.0/16 iifname != {{ \"lo\", \"docker0\" }} counter drop comment \"SUBNET DROP EXTERNAL\"
\t}}
}}
"
    )
}

/// Per-port DNAT and accept rules for `maps` added to (or, with handles,
/// removed from) an existing Docker 29 table, as one `nft -f` batch.
pub fn nft_docker29_add(maps: &[Mapping]) -> String {
    let mut s = String::new();
    for m in maps {
        let p = m.proto();
        let _ = writeln!(
            s,
            "add rule ip docker-bridges nat-prerouting-and-output iifname != \"docker0\" {p} dport {} counter dnat to {}:{} comment \"DNAT\"",
            m.host_port, m.ctr_ip, m.ctr_port
        );
        let _ = writeln!(
            s,
            "insert rule ip docker-bridges filter-forward-in__docker0 index 2 ip daddr {} {p} dport {} counter accept",
            m.ctr_ip, m.ctr_port
        );
    }
    s
}

/// A map-based nftables ruleset in a table of its own: one DNAT lookup in
/// a `proto . port -> addr . port` map and one set lookup for the forward
/// accept, whatever the number of ports.
pub fn nft_map(maps: &[Mapping]) -> String {
    let elems =
        |f: &dyn Fn(&Mapping) -> String| maps.iter().map(f).collect::<Vec<_>>().join(",\n\t\t\t");
    let dnat = elems(&|m| {
        format!(
            "{} . {} : {} . {}",
            m.proto(),
            m.host_port,
            m.ctr_ip,
            m.ctr_port
        )
    });
    let published = elems(&|m| format!("{} . {} . {}", m.ctr_ip, m.proto(), m.ctr_port));
    let el = |e: &str| {
        if e.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {e} }}\n")
        }
    };
    format!(
        "table ip portmap
delete table ip portmap
table ip portmap {{
\tmap port-dnat {{
\t\ttype inet_proto . inet_service : ipv4_addr . inet_service
{}\t}}
\tset published {{
\t\ttype ipv4_addr . inet_proto . inet_service
{}\t}}
\tchain nat-PREROUTING {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local iifname != \"docker0\" dnat ip to meta l4proto . th dport map @port-dnat
\t}}
\tchain nat-POSTROUTING {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname != \"docker0\" ip saddr 172.17.0.0/16 masquerade
\t}}
\tchain filter-FORWARD {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname \"docker0\" accept
\t\toifname \"docker0\" ip daddr . meta l4proto . th dport @published accept
\t\toifname \"docker0\" drop
\t}}
}}
",
        el(&dnat),
        el(&published)
    )
}

/// Map elements to add or delete, as one `nft -f` batch.
pub fn nft_map_elements(maps: &[Mapping], delete: bool) -> String {
    let op = if delete { "delete" } else { "add" };
    let mut s = String::new();
    for chunk in maps.chunks(1000) {
        let dnat: Vec<String> = chunk
            .iter()
            .map(|m| {
                format!(
                    "{} . {} : {} . {}",
                    m.proto(),
                    m.host_port,
                    m.ctr_ip,
                    m.ctr_port
                )
            })
            .collect();
        let set: Vec<String> = chunk
            .iter()
            .map(|m| format!("{} . {} . {}", m.ctr_ip, m.proto(), m.ctr_port))
            .collect();
        let _ = writeln!(
            s,
            "{op} element ip portmap port-dnat {{ {} }}",
            dnat.join(", ")
        );
        let _ = writeln!(
            s,
            "{op} element ip portmap published {{ {} }}",
            set.join(", ")
        );
    }
    s
}

// ---------------------------------------------------------------- docker-proxy

/// Starts docker-proxy in the calling thread's network namespace with the
/// arguments dockerd gives it, and waits for its readiness report: dockerd
/// hands it a pipe as fd 3, on which it writes `0\n` once listening (or
/// `1\n<error>`).
pub fn spawn_docker_proxy_here(m: &Mapping) -> Result<Child> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // SAFETY: we own rfd; the File closes it.
    let mut reader = unsafe { std::fs::File::from_raw_fd(rfd) };
    let mut cmd = Command::new(DOCKER_PROXY);
    cmd.args([
        "-proto",
        m.proto(),
        "-host-ip",
        "0.0.0.0",
        "-host-port",
        &m.host_port.to_string(),
        "-container-ip",
        m.ctr_ip,
        "-container-port",
        &m.ctr_port.to_string(),
    ]);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if wfd == 3 {
                let fl = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
            } else if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = Child::spawn(cmd);
    // SAFETY: closing our copy of the write end, so EOF comes when the proxy closes its.
    unsafe {
        libc::close(wfd);
    }
    let mut child = spawned?;
    let mut report = String::new();
    reader
        .read_to_string(&mut report)
        .context("reading docker-proxy's readiness pipe")?;
    if report.trim() != "0" {
        let _ = child.stop();
        bail!(
            "docker-proxy {}/{} did not start: {:?} {}",
            m.host_port,
            m.proto(),
            report.trim(),
            child.stderr().trim()
        );
    }
    Ok(child)
}

pub fn spawn_docker_proxies(ns: &NetNs, maps: &[Mapping]) -> Result<Vec<Child>> {
    ns.try_run(|| maps.iter().map(spawn_docker_proxy_here).collect())?
}

// ---------------------------------------------------------------- berth

/// `POST /v1/bindings`, failing unless 201.
pub fn berth_add(d: &Daemon, task: &str, ip: &str, ports: &[String]) -> Result<()> {
    let body = json!({"task": task, "containerIP": ip, "ports": ports});
    let (status, v) = d.api_json("POST", "/v1/bindings", Some(&body))?;
    if status != 201 {
        bail!("berth add {task}: {status} {v}");
    }
    Ok(())
}

/// `POST /v1/bindings/delete` of a whole task (or some ports), failing unless 200.
pub fn berth_remove(d: &Daemon, task: &str, ports: &[String]) -> Result<()> {
    let body = if ports.is_empty() {
        json!({"task": task})
    } else {
        json!({"task": task, "ports": ports})
    };
    let (status, v) = d.api_json("POST", "/v1/bindings/delete", Some(&body))?;
    if status != 200 {
        bail!("berth remove {task}: {status} {v}");
    }
    Ok(())
}

fn spec(m: &Mapping) -> String {
    format!(
        "{}:{}{}",
        m.host_port,
        m.ctr_port,
        if m.udp { "/udp" } else { "" }
    )
}

/// One range spec for `n` extra ports (e.g. `20000-29996:20000-29996`).
pub fn extra_range_spec(n: usize) -> String {
    let (a, b) = (EXTRA_BASE, EXTRA_BASE + n as u16 - 1);
    format!("{a}-{b}:{a}-{b}")
}

/// Range specs covering the `n` extra ports (one per run of consecutive
/// ports: more than one where the measured ports are skipped).
pub fn extra_range_specs(n: usize) -> Vec<String> {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for p in extra_ports(n) {
        match runs.last_mut() {
            Some((_, b)) if u32::from(*b) + 1 == u32::from(p) => *b = p,
            _ => runs.push((p, p)),
        }
    }
    runs.into_iter()
        .map(|(a, b)| {
            if a == b {
                format!("{a}:{a}")
            } else {
                format!("{a}-{b}:{a}-{b}")
            }
        })
        .collect()
}

/// The berth daemons of the topology beds: a large host's capacities, and
/// room for the 65 000-port phase in one task and one request.
fn topology_host_flags() -> Vec<String> {
    let mut flags = crate::control::large_host_flags();
    if let Some(i) = flags.iter().position(|f| f == "--max-mappings") {
        flags[i + 1] = "65536".into();
    }
    for f in ["--max-ports-per-request", "--max-ports-per-task"] {
        flags.extend([f.to_string(), "65535".into()]);
    }
    flags
}

// ---------------------------------------------------------------- beds

/// One peer on its own topology with the servers running in the container.
/// Fields drop in order: processes first, the namespaces last.
pub struct Bed {
    pub peer: Peer,
    proxies: Vec<Child>,
    pub daemon: Option<Daemon>,
    _bpffs: Option<Bpffs>,
    pub servers: Servers,
    pub topo: Topology,
    pub extra: usize,
}

impl Bed {
    /// Checksum and segmentation offloads on, as on a real host.
    pub fn new(peer: Peer) -> Result<Self> {
        Self::with_options(peer, false)
    }

    pub fn with_options(peer: Peer, tx_checksum_off: bool) -> Result<Self> {
        let nft = matches!(peer, Peer::Nftables | Peer::NftMap);
        // Docker 29 with its nftables backend writes no iptables rules at all.
        let topo = Topology::build_with(TopologyOptions {
            tx_checksum_off,
            docker_iptables: !nft,
            ..TopologyOptions::default()
        })?;
        let servers = Servers::start(&topo.container.ns)?;
        let mut bed = Self {
            peer,
            proxies: Vec::new(),
            daemon: None,
            _bpffs: None,
            servers,
            topo,
            extra: 0,
        };
        let host = &bed.topo.host.ns;
        match peer {
            Peer::Direct => {
                bed.topo
                    .client
                    .ns
                    .ip(["route", "add", "172.17.0.0/16", "via", "192.0.2.1"])?;
                host.exec(
                    "iptables",
                    [
                        "-w",
                        "-I",
                        "DOCKER-USER",
                        "1",
                        "-d",
                        "172.17.0.0/16",
                        "-j",
                        "ACCEPT",
                    ],
                )?;
            }
            Peer::DockerProxy => {
                bed.proxies = spawn_docker_proxies(host, &measured())?;
            }
            Peer::BerthTc | Peer::BerthXdp => {
                let fs = Bpffs::new()?;
                let attach = if peer == Peer::BerthTc { "tc" } else { "xdp" };
                let d = Daemon::start_with(
                    host,
                    &fs,
                    DaemonOptions {
                        attach: Some(attach.into()),
                        // A host publishing 65 000 ports and opening
                        // thousands of connections a second: a large
                        // host's capacities, as the control rows use.
                        extra_args: topology_host_flags(),
                        ..Default::default()
                    },
                )?;
                bed.daemon = Some(d);
                bed._bpffs = Some(fs);
            }
            Peer::Iptables | Peer::Nftables | Peer::NftMap => {}
        }
        bed.set_extra(0)?;
        Ok(bed)
    }

    /// Publishes `n` extra ports, then the measured ones again, so the
    /// measured ports are the last added.
    pub fn set_extra(&mut self, n: usize) -> Result<()> {
        let host = &self.topo.host.ns;
        let mut all = extras(n);
        all.extend(measured());
        match self.peer {
            Peer::Direct => {}
            Peer::DockerProxy => {
                if n > 0 {
                    bail!("docker-proxy is not measured with extra ports");
                }
            }
            Peer::Iptables => {
                host.exec_with_stdin(
                    "iptables-restore",
                    ["-w", "--noflush"],
                    &iptables_batch(&all),
                )
                .context("iptables-restore")?;
            }
            Peer::Nftables => {
                host.exec_with_stdin("nft", ["-f", "-"], &nft_docker29(&all))
                    .context("nft -f (Docker 29 rules)")?;
            }
            Peer::NftMap => {
                host.exec_with_stdin("nft", ["-f", "-"], &nft_map(&all))
                    .context("nft -f (map)")?;
            }
            Peer::BerthTc | Peer::BerthXdp => {
                let d = self.daemon.as_ref().context("no daemon")?;
                if d.api_json("GET", "/v1/bindings", None)?
                    .1
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    let _ = berth_remove(d, "bench", &[]);
                    let _ = berth_remove(d, "extra", &[]);
                }
                if n > 0 {
                    berth_add(d, "extra", CTR2, &extra_range_specs(n))?;
                }
                let specs: Vec<String> = measured().iter().map(spec).collect();
                berth_add(d, "bench", CTR, &specs)?;
            }
        }
        self.extra = n;
        Ok(())
    }

    pub fn rr_target(&self) -> SocketAddr {
        self.target(RR_PORT)
    }

    pub fn iperf_target(&self) -> SocketAddr {
        self.target(IPERF_PORT)
    }

    pub fn udp_target(&self) -> SocketAddr {
        self.target(UDP_PORT)
    }

    fn target(&self, port: u16) -> SocketAddr {
        if self.peer == Peer::Direct {
            self.topo.container.addr(port)
        } else {
            self.topo.host.addr(port)
        }
    }

    /// PIDs of the docker-proxy processes.
    pub fn proxy_pids(&self) -> Vec<u32> {
        self.proxies.iter().map(Child::pid).collect()
    }

    /// Waits until the measured TCP port answers (after a configuration
    /// change), for up to `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let target = self.rr_target();
        loop {
            let ok = self.topo.client.ns.try_run(|| {
                berth_integration::tcp_connect(target, Duration::from_millis(500)).is_ok()
            })?;
            if ok {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("{}: {target} does not answer", self.peer.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
