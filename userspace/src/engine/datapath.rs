//! What the engine asks of the kernel side, and what that side reports.
//! The engine drives a [`Datapath`] without knowing how it is built; the
//! eBPF one lives in `adapters::datapath`, unit tests use an in-memory fake.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::domain::{cidr::Ipv4Cidr, error::DatapathError, model::Binding};

/// The longest pause between two passes that forget idle flows.
pub const FLOW_EXPIRY: Duration = Duration::from_secs(5);

/// One compiled security-group allow rule, as the datapath evaluates it.
/// A task's compiled rules hold both families; each applies to the family
/// its peer and protocol name ([`PolicyRule::family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// `None`: every protocol.
    pub proto: Option<RuleProto>,
    /// Inclusive destination port range (TCP/UDP).
    pub ports: (u16, u16),
    /// ICMP type and code; `None` matches any.
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub peer: RulePeer,
}

impl PolicyRule {
    /// Which families the rule applies to: an IPv4 CIDR or ICMP to IPv4,
    /// an IPv6 CIDR or `ICMPv6` to IPv6, a group peer with any other
    /// protocol to both (its members of each family).
    pub fn family(&self) -> RuleFamily {
        match (self.peer, self.proto) {
            (RulePeer::Cidr(..), _) | (_, Some(RuleProto::Icmp)) => RuleFamily::V4,
            (RulePeer::Cidr6(..), _) | (_, Some(RuleProto::Icmp6)) => RuleFamily::V6,
            (RulePeer::Group(_), _) => RuleFamily::Both,
        }
    }

    pub fn applies_v4(&self) -> bool {
        self.family() != RuleFamily::V6
    }

    pub fn applies_v6(&self) -> bool {
        self.family() != RuleFamily::V4
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleFamily {
    V4,
    V6,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleProto {
    Tcp,
    Udp,
    Icmp,
    /// `ICMPv6` (protocol 58).
    Icmp6,
    /// Any other IP protocol by number (IPv4's protocol field, IPv6's
    /// upper-layer next header): all of it, tracked by its addresses.
    Number(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulePeer {
    /// A canonical CIDR (network address, prefix length).
    Cidr(Ipv4Addr, u8),
    /// A canonical IPv6 CIDR.
    Cidr6(Ipv6Addr, u8),
    /// The current members of a security group, by its numeric id.
    Group(u32),
}

/// Idle timeouts of tracked flows, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_established: u64,
    pub tcp_closing: u64,
    /// A TCP flow whose handshake has not completed (SYN seen, no ACK of
    /// the SYN-ACK yet), as conntrack's SYN states.
    pub tcp_syn: u64,
    /// A UDP flow with no reply yet.
    pub udp_single: u64,
    pub udp_stream: u64,
    pub icmp: u64,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_established: berth_maps::TIMEOUT_TCP_ESTABLISHED_S,
            tcp_closing: berth_maps::TIMEOUT_TCP_CLOSING_S,
            tcp_syn: berth_maps::TIMEOUT_TCP_SYN_S,
            udp_single: berth_maps::TIMEOUT_UDP_SINGLE_S,
            udp_stream: berth_maps::TIMEOUT_UDP_STREAM_S,
            icmp: berth_maps::TIMEOUT_ICMP_S,
        }
    }
}

/// What the control plane asks of the kernel. Implemented by the adapter
/// `BpfDatapath`;
/// unit tests use an in-memory fake.
pub trait Datapath: Send + Sync {
    /// Publish (or re-point) one binding.
    fn insert(&self, binding: &Binding) -> Result<(), DatapathError>;
    /// Whether the kernel publishes `binding` now: its host address and
    /// port lead to its container address and port (CNI CHECK).
    fn publishes(&self, binding: &Binding) -> Result<bool, DatapathError>;
    /// Unpublish one binding. Its tracked flows stay until
    /// [`Datapath::forget_flows`].
    fn remove(&self, binding: &Binding) -> Result<(), DatapathError>;
    /// Forget the tracked flows of bindings already removed, in one pass
    /// over the flow tables, so a replaced container never inherits stale
    /// state (the UDP black hole Docker users hit). Returns how many.
    fn forget_flows(&self, gone: &[Binding]) -> Result<usize, DatapathError>;
    /// Forget the policy-tracked flows (`BERTH_CT`, `BERTH_CT_NEW`) with any of
    /// `addrs` at either end: the container addresses of tasks that are
    /// gone. A removed task loses its groups, and so the flows its groups
    /// (or its membership in a peer's) allowed; a task that reuses the
    /// address starts from its own groups. Returns how many.
    fn forget_endpoint_flows(&self, addrs: &[Ipv4Addr]) -> Result<usize, DatapathError>;
    /// Replace the set of host addresses a wildcard binding answers on. The
    /// flows a wildcard binding let in on an address no longer in the set
    /// end (the datapath checks the address when a flow opens, not on every
    /// packet); an address-bound binding's flows stay. `addrs` come most
    /// important first: when the table cannot hold them all, the first
    /// are kept, the rest left out, and the answer is
    /// [`DatapathError::HostAddrsFull`] (the table holds what fits).
    fn set_host_addrs(&self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError>;
    /// The host's IPv6 addresses, as [`Self::set_host_addrs`] for IPv4: a
    /// `[::]` binding serves these, and the IPv6 flows a wildcard binding
    /// let in on an address no longer in the set end.
    fn set_host_addrs6(&self, addrs: &[Ipv6Addr]) -> Result<(), DatapathError>;
    /// Replace the bridge's subnets: sources an uplink never accepts.
    fn set_bridge_subnets(&self, subnets: &[Ipv4Cidr]) -> Result<(), DatapathError>;
    /// Per-reason packet counters, summed over CPUs.
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError>;
    /// Reconcile after a restart: unpublish every entry that is not one of
    /// `keep` (left by a crash between map write and store commit, or by a
    /// store that was reset), and forget the tracked flows no binding of
    /// `keep` owns (a removal's background sweep the daemon did not live to
    /// run). Returns how many entries were unpublished.
    fn retain(&self, keep: &[Binding]) -> Result<usize, DatapathError>;
    /// Forget flows idle past their protocol's timeout; returns how many.
    /// The daemon calls this every few seconds.
    fn expire_flows(&self) -> Result<usize, DatapathError>;

    /// Security groups. A container IP of a task: `policy` says whether the
    /// task has groups (and so whether its rules apply at all).
    fn set_endpoint(&self, ip: Ipv4Addr, task_id: u32, policy: bool) -> Result<(), DatapathError>;
    fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), DatapathError>;
    /// Replace a task's compiled rules (the union of its groups').
    fn set_policy(
        &self,
        task_id: u32,
        ingress: &[PolicyRule],
        egress: &[PolicyRule],
    ) -> Result<(), DatapathError>;
    fn remove_policy(&self, task_id: u32) -> Result<(), DatapathError>;
    /// Replace the member addresses of a group.
    fn set_group_members(&self, sg_id: u32, members: &[Ipv4Addr]) -> Result<(), DatapathError>;
    /// Reconcile after a restart: drop endpoints, rule sets and group
    /// memberships that are not in `keep` (left by a crash between a map
    /// write and the store commit, or by a reset store), and forget the
    /// policy-tracked flows of the endpoints dropped. Returns how many
    /// entries were dropped.
    fn retain_policy(
        &self,
        endpoints: &[Ipv4Addr],
        policies: &[u32],
        groups: &[u32],
    ) -> Result<usize, DatapathError>;
    /// The IPv6 twins of the endpoint and member calls (`BERTH_ENDPOINTS6`,
    /// `BERTH_SG_MEMBERS6`): a task's IPv6 container addresses, with the
    /// same task id and policy flag as its IPv4 ones.
    fn set_endpoint6(&self, ip: Ipv6Addr, task_id: u32, policy: bool) -> Result<(), DatapathError>;
    fn remove_endpoint6(&self, ip: Ipv6Addr) -> Result<(), DatapathError>;
    fn set_group_members6(&self, sg_id: u32, members: &[Ipv6Addr]) -> Result<(), DatapathError>;
    /// [`Datapath::retain_policy`] for the IPv6 endpoints and memberships
    /// (the rule sets are shared and kept by `retain_policy`).
    fn retain_policy6(
        &self,
        endpoints: &[Ipv6Addr],
        groups: &[u32],
    ) -> Result<usize, DatapathError>;
    /// Refuse IPv4 from bridge ports whose hooks are not attached yet (on
    /// with `--default-sg`).
    fn set_port_gate(&self, on: bool) -> Result<(), DatapathError>;
    /// Tell the veth hooks whether no endpoint has policy (they then skip
    /// the source check and the security-group lookups). Must be `false`
    /// before any endpoint gets policy.
    fn set_no_policy(&self, _none: bool) -> Result<(), DatapathError> {
        Ok(())
    }
    /// Idle timeouts used by [`Datapath::expire_flows`].
    fn set_flow_timeouts(&self, timeouts: FlowTimeouts);
    /// What is attached where and how full the maps are (`berth status`);
    /// `None` for a datapath with nothing in the kernel.
    fn status(&self) -> Result<Option<DatapathStatus>, DatapathError> {
        Ok(None)
    }
    /// The per-binding counters of `bindings`, in their order, summed over
    /// CPUs; `None` for one the datapath does not hold (or a datapath that
    /// counts nothing).
    fn binding_counters(
        &self,
        bindings: &[Binding],
    ) -> Result<Vec<Option<BindingCounters>>, DatapathError> {
        Ok(vec![None; bindings.len()])
    }
    /// Turns the datapath log (`berth log --datapath`) on or off.
    fn set_datapath_log(&self, _on: bool) -> Result<(), DatapathError> {
        Err(DatapathError::Other("this datapath has no log".into()))
    }
}

/// One binding's traffic since it was published (`berth map ls --stats`,
/// `/metrics`). "In" is client to container (counted at the uplink's DNAT),
/// "out" the container's replies (at the reply SNAT). Bytes are IPv4 total
/// lengths (header and payload, no link layer), as VPC Flow Logs count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// New flows tracked.
    pub flows_opened: u64,
    /// Packets that would have opened a flow, refused by the task's
    /// security groups.
    pub flows_refused: u64,
    /// Flows tracked now (a gauge: counted in the flow tables when asked).
    pub flows_tracked: u64,
}

/// How the uplinks are hooked: tc (tcx) or XDP.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Xdp,
    #[default]
    Tc,
}

/// What is attached where and how full the maps are (`berth status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathStatus {
    pub attach: AttachMode,
    pub pin_dir: String,
    pub layout_version: u32,
    /// Maps migrated from another layout when this daemon started.
    pub migrated: Vec<String>,
    pub socket_hooks: SocketHooks,
    pub attachments: Vec<Attachment>,
    pub maps: Vec<MapStatus>,
    /// Each `--bridge`, in the order given, and whether berth serves it yet.
    #[serde(default)]
    pub bridges: Vec<BridgeState>,
    /// The host address tables against the host's addresses.
    #[serde(default)]
    pub host_addrs: HostAddrsFill,
}

/// The host address tables (`--max-host-addrs` each) against the host's
/// addresses at the last push: addresses left out are not judged the
/// host's (wildcard mappings do not answer on them, a client may claim
/// them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAddrsFill {
    pub capacity: u32,
    /// The host's IPv4 addresses, and how many of them the table lacks.
    pub ipv4: u64,
    pub ipv4_left_out: u64,
    pub ipv6: u64,
    pub ipv6_left_out: u64,
}

/// One `--bridge` as the daemon sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeState {
    pub name: String,
    /// `attached` (programs on it and its ports), `waiting` (no such link
    /// yet: attached the moment it is created) or `failed` (see `detail`).
    pub state: String,
    /// 0 while it does not exist.
    pub ifindex: u32,
    /// Its subnets (networks of its IPv4 addresses, then of its IPv6 ones
    /// but link-local): container IPs in these are its containers'.
    pub subnets: Vec<String>,
    /// Ports (containers' veths) with hooks.
    pub ports: usize,
    /// Why it is not attached, for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketHooks {
    pub enabled: bool,
    /// Where they attach, when enabled.
    pub cgroup: Option<CgroupInfo>,
    /// Why not, when disabled.
    pub disabled_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// uplink, bridge, bridge port or cgroup.
    pub role: String,
    /// The interface, or the cgroup.
    pub target: String,
    pub program: String,
    pub hook: String,
    pub link_id: u32,
    pub program_id: u32,
    /// False when the link outlived its interface.
    pub attached: bool,
    pub pin: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub key_size: u32,
    pub value_size: u32,
    pub capacity: u32,
    /// Entries in use (hash maps); arrays are always full.
    pub entries: Option<u64>,
    pub pin: String,
}

/// How the cgroup was found (for `berth status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupInfo {
    /// The cgroup's path inside the v2 hierarchy (`/` is its root).
    pub cgroup: String,
    /// The directory it was opened through.
    pub opened_at: String,
    /// True when berth mounted the hierarchy itself (none was visible).
    pub private_mount: bool,
}
