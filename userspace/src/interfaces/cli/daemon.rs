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
    /// The containers' bridge (e.g. docker0).
    #[arg(long, value_name = "IF", required_unless_present = "teardown")]
    pub bridge: Option<String>,
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
    // Boxed: the flags are many, and `Command` holds this by value.
    #[command(flatten)]
    pub flow_log: Box<crate::interfaces::flow_log::FlowLogArgs>,
    /// The datapath log at start (`berth log --datapath` changes it).
    #[arg(long, value_enum, value_name = "LEVEL", default_value = "off")]
    pub datapath_log: crate::interfaces::api::log::DatapathLogLevel,
}

impl DaemonArgs {
    pub(super) fn into_config(self, socket: PathBuf) -> DaemonConfig {
        let mut uplinks: Vec<String> = Vec::new();
        for uplink in self.uplinks {
            if !uplinks.contains(&uplink) {
                uplinks.push(uplink);
            }
        }
        DaemonConfig {
            socket,
            state_dir: self.state_dir,
            datapath: DatapathConfig {
                uplinks,
                bridge: self.bridge.unwrap_or_default(),
                bpffs: self.bpffs,
                attach: self.attach,
                ct_capacity: self.security_groups.ct_max,
                socket_hooks: !self.no_socket_hooks,
                nat_capacity: self.security_groups.nat_max,
                embryonic_capacity: self.security_groups.ct_embryonic_max,
                capacity: self.capacity,
            },
            dynamic_ports: self.dynamic_ports,
            reserved_ports: self.reserved_ports,
            port_cooldown_secs: self.port_cooldown,
            security_groups: self.security_groups.settings(),
            limits: self.api.limits(),
            socket_group: self.api.socket_group,
            docker: self.docker,
            flow_log: self.flow_log.config(),
            datapath_log: self.datapath_log == crate::interfaces::api::log::DatapathLogLevel::Debug,
        }
    }
}

fn parse_dynamic_range(s: &str) -> Result<PortRange, String> {
    parse_range(s).map_err(|e| e.to_string())
}

fn parse_reserved_ports(s: &str) -> Result<BTreeSet<u16>, String> {
    parse_port_list(s)
}
