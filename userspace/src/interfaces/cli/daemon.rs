//! `berth daemon`: its flags, turned into the daemon's configuration.
use std::{collections::BTreeSet, path::PathBuf};

use clap::Args;

use super::{DEFAULT_BPFFS, DEFAULT_STATE_DIR};
use crate::{
    adapters::{
        datapath::{AttachMode, DatapathConfig},
        host::parse_port_list,
    },
    domain::spec::{parse_range, PortRange},
    engine::allocator::DEFAULT_COOLDOWN_SECS,
    interfaces::daemon::DaemonConfig,
};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface where published ports are reached (repeatable).
    #[arg(
        long = "uplink",
        value_name = "IF",
        required_unless_present = "teardown"
    )]
    pub uplinks: Vec<String>,
    /// The containers' bridge (e.g. docker0); repeatable (`--bridge cni0
    /// --bridge docker0`). One that does not exist yet is attached the
    /// moment it is created.
    #[arg(
        long = "bridge",
        value_name = "IF",
        required_unless_present = "teardown",
        value_parser = parse_bridge_name
    )]
    pub bridges: Vec<String>,
    /// Where the desired state (berth.redb) is kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// bpffs mount point; berth pins under <DIR>/berth.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// How the ingress program attaches to the uplinks.
    #[arg(long, value_enum, default_value = "tc")]
    pub attach: AttachMode,
    /// Where dynamic host ports come from [default: the namespace's
    /// `net.ipv4.ip_local_port_range`].
    #[arg(long, value_name = "A-B", value_parser = parse_dynamic_range)]
    pub dynamic_ports: Option<PortRange>,
    /// Ports never handed out dynamically: comma list, ranges as a-b; ""
    /// for none.
    #[arg(
        long,
        value_name = "LIST",
        value_parser = parse_reserved_ports,
        default_value = "22,2375,2376,51678,51679"
    )]
    pub reserved_ports: BTreeSet<u16>,
    /// Seconds a released host port is not handed out again.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_COOLDOWN_SECS)]
    pub port_cooldown: u64,
    /// Do not run: the same as `berth reset`.
    #[arg(long)]
    pub teardown: bool,
    /// Run without the cgroup socket hooks (no bind guard, no localhost or
    /// hairpin access) instead of refusing to start when they cannot attach.
    #[arg(long)]
    pub no_socket_hooks: bool,
    /// Docker events mode: publish the ports of the containers of the
    /// Docker engine at this socket (dockerd with `--userland-proxy=false`).
    #[arg(
        long,
        value_name = "unix:///PATH",
        num_args = 0..=1,
        default_missing_value = crate::interfaces::docker_events::DEFAULT_DOCKER_HOST,
        value_parser = crate::interfaces::docker_events::parse_docker_host
    )]
    pub docker: Option<PathBuf>,
    #[command(flatten)]
    pub capacity: crate::adapters::datapath::Capacity,
    #[command(flatten)]
    pub security_groups: super::sg::SgDaemonArgs,
    #[command(flatten)]
    pub api: crate::domain::limits::ApiArgs,
    /// Also serve `GET /metrics` (Prometheus) on TCP at this address, e.g.
    /// 127.0.0.1:9475; nothing else is served there. The API socket serves
    /// `/metrics` either way.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Label forwarded traffic and flows by task and host port in
    /// `/metrics`; `false` sums them by protocol (fewer series on hosts
    /// with many tasks).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_per_binding: bool,
    // Boxed: the flags are many, and `Command` holds this by value.
    #[command(flatten)]
    pub flow_log: Box<crate::interfaces::flow_log::FlowLogArgs>,
    /// The datapath log at start (`berth log --datapath` changes it).
    #[arg(long, value_enum, value_name = "LEVEL", default_value = "off")]
    pub datapath_log: crate::interfaces::api::log::DatapathLogLevel,
}

fn parse_metrics_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IP address and port (e.g. 127.0.0.1:9475 or [::1]:9475)")
    })
}

impl DaemonArgs {
    pub(super) fn into_config(self, socket: PathBuf) -> DaemonConfig {
        let flow_log = self.flow_log.config();
        let mut uplinks: Vec<String> = Vec::new();
        for uplink in self.uplinks {
            if !uplinks.contains(&uplink) {
                uplinks.push(uplink);
            }
        }
        let mut bridges: Vec<String> = Vec::new();
        for bridge in self.bridges {
            if !bridges.contains(&bridge) {
                bridges.push(bridge);
            }
        }
        DaemonConfig {
            socket,
            state_dir: self.state_dir,
            datapath: DatapathConfig {
                uplinks,
                bridges,
                bpffs: self.bpffs,
                attach: self.attach,
                ct_capacity: self.security_groups.ct_max,
                socket_hooks: !self.no_socket_hooks,
                nat_capacity: self.security_groups.nat_max,
                embryonic_capacity: self.security_groups.ct_embryonic_max,
                capacity: self.capacity,
                flow_log: flow_log.is_some(),
            },
            dynamic_ports: self.dynamic_ports,
            reserved_ports: self.reserved_ports,
            port_cooldown_secs: self.port_cooldown,
            security_groups: self.security_groups.settings(),
            limits: self.api.limits(),
            socket_group: self.api.socket_group,
            docker: self.docker,
            metrics: crate::interfaces::metrics::MetricsConfig {
                listen: self.metrics_listen,
                per_binding: self.metrics_per_binding,
            },
            flow_log,
            datapath_log: self.datapath_log == crate::interfaces::api::log::DatapathLogLevel::Debug,
        }
    }
}

/// What the kernel takes as an interface name: it also names sysfs paths
/// and link pins, so nothing that could leave those directories.
fn parse_bridge_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() < libc::IFNAMSIZ
        && s != "."
        && s != ".."
        && !s.contains(['/', ':', '@'])
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an interface name (1 to {} characters, no '/', ':', '@' or spaces)",
            libc::IFNAMSIZ - 1
        ))
    }
}

fn parse_dynamic_range(s: &str) -> Result<PortRange, String> {
    parse_range(s).map_err(|e| e.to_string())
}

fn parse_reserved_ports(s: &str) -> Result<BTreeSet<u16>, String> {
    parse_port_list(s)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        daemon: DaemonArgs,
    }

    fn bridges(args: &[&str]) -> Result<Vec<String>, String> {
        let argv = ["berth", "--uplink", "eth0"].iter().chain(args);
        Cmd::try_parse_from(argv)
            .map(|c| c.daemon.into_config("/s".into()).datapath.bridges)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bridge_repeats_in_order_once_each() {
        assert_eq!(bridges(&["--bridge", "docker0"]).unwrap(), ["docker0"]);
        assert_eq!(
            bridges(&["--bridge", "cni0", "--bridge", "docker0", "--bridge", "cni0"]).unwrap(),
            ["cni0", "docker0"]
        );
    }

    #[test]
    fn a_bridge_is_required_and_must_be_an_interface_name() {
        assert!(bridges(&[]).unwrap_err().contains("--bridge"));
        for bad in ["", "../x", "a/b", "br 0", "sixteen-chars-xx", "..", "br@0"] {
            let err = bridges(&["--bridge", bad]).unwrap_err();
            assert!(err.contains("is not an interface name"), "{bad:?}: {err}");
        }
        assert_eq!(
            bridges(&["--bridge", "fifteen-chars-x"]).unwrap(),
            ["fifteen-chars-x"]
        );
    }
}
