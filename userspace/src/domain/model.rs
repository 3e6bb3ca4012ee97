//! The control plane's model: what a user publishes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => berth_maps::PROTO_TCP,
            Self::Udp => berth_maps::PROTO_UDP,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One published port of one address family: ECS `networkBindings` field
/// names plus the task and the container address it points at. `bindIP`
/// 0.0.0.0 (IPv4) or `::` (IPv6) means every host address of that family.
/// A port published over both families is two bindings with one host port,
/// as ECS and `docker port` list it; `bindIP` and `containerIP` are always
/// of the same family. Stored as JSON, so records written before IPv6 (an
/// IPv4 string in each field) load unchanged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Binding {
    pub task: String,
    #[serde(rename = "containerIP")]
    pub container_ip: IpAddr,
    #[serde(rename = "bindIP")]
    pub bind_ip: IpAddr,
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: Protocol,
    /// Docker events mode: the ECS agent's labels of the container this
    /// task was made from (absent for other tasks).
    #[serde(flatten)]
    pub ecs: EcsLabels,
    /// The CNI attachment `berth-cni` published this binding for (absent
    /// for other tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<crate::domain::cni::CniAttachment>,
    /// Made by Docker events mode (`berth daemon --docker`) for a running
    /// container: the follower replaces and removes only such tasks, and a
    /// hand `map add` may not join one. Absent (false) in older stores.
    #[serde(
        rename = "dockerEvents",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub docker_events: bool,
}

#[cfg(test)]
impl Binding {
    /// For tests: `task`'s TCP binding of `container_ip:80` on
    /// `0.0.0.0:host_port`, no labels; other fields by struct update.
    pub(crate) fn for_test(task: &str, container_ip: impl Into<IpAddr>, host_port: u16) -> Self {
        Self {
            task: task.into(),
            container_ip: container_ip.into(),
            bind_ip: Ipv4Addr::UNSPECIFIED.into(),
            host_port,
            container_port: 80,
            protocol: Protocol::Tcp,
            ecs: EcsLabels::default(),
            cni: None,
            docker_events: false,
        }
    }
}

impl Binding {
    /// Published over IPv6 (`bindIP` and `containerIP` are IPv6).
    pub fn is_ipv6(&self) -> bool {
        self.container_ip.is_ipv6()
    }

    /// The IPv4 container address, for what exists only for IPv4.
    pub fn container_ip4(&self) -> Option<Ipv4Addr> {
        match self.container_ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    /// The IPv6 container address of an IPv6 binding.
    pub fn container_ip6(&self) -> Option<Ipv6Addr> {
        match self.container_ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }

    /// The IPv4 bind address of an IPv4 binding.
    pub fn bind_ip4(&self) -> Option<Ipv4Addr> {
        match self.bind_ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    /// The IPv6 bind address of an IPv6 binding.
    pub fn bind_ip6(&self) -> Option<Ipv6Addr> {
        match self.bind_ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }
}

/// A container's addresses on its bridge (`--ip`, `--ip6`; the API's
/// `containerIP`, `containerIPv6`): at least one. IPv6 only is what
/// dockerd's proxy for a `[::]` binding knows of its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContainerIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl ContainerIps {
    pub fn v4(v4: Ipv4Addr) -> Self {
        Self {
            v4: Some(v4),
            v6: None,
        }
    }

    /// The address of the family of `bind_ip`, if the container has one.
    pub fn for_bind(&self, bind_ip: IpAddr) -> Option<IpAddr> {
        match bind_ip {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

impl From<Ipv4Addr> for ContainerIps {
    fn from(v4: Ipv4Addr) -> Self {
        Self::v4(v4)
    }
}

/// The ECS agent's labels on a Docker container, kept on each binding of
/// the task made from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EcsLabels {
    #[serde(
        rename = "ecsTaskArn",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub task_arn: Option<String>,
    #[serde(
        rename = "ecsContainerName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_name: Option<String>,
}

impl EcsLabels {
    /// The most bytes a label value may have here (ARNs are at most 1600).
    pub const MAX_LEN: usize = 2048;

    /// A label that is empty, too long or holds control characters is
    /// refused whole.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("ecsTaskArn", &self.task_arn),
            ("ecsContainerName", &self.container_name),
        ] {
            let Some(v) = v else { continue };
            if v.is_empty() || v.len() > Self::MAX_LEN || v.chars().any(char::is_control) {
                return Err(format!(
                    "{name} must be 1 to {} bytes without control characters",
                    Self::MAX_LEN
                ));
            }
        }
        Ok(())
    }
}

/// A task started from an ECS task definition (`berth task run`): its
/// containers in definition order with what ECS `DescribeTasks` shows for
/// each. Its bindings are stored as any task's; this keeps the grouping
/// (port ranges) and the container names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub containers: Vec<ContainerRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    /// Absent for a container without port mappings that got no `--ip`.
    #[serde(
        rename = "containerIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_ip: Option<Ipv4Addr>,
    /// Its IPv6 address, when it has one (absent in older stores).
    #[serde(
        rename = "containerIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_ip6: Option<Ipv6Addr>,
    #[serde(rename = "networkBindings")]
    pub network_bindings: Vec<NetworkBinding>,
}

/// One entry of an ECS container's `networkBindings`: either a single port
/// (`containerPort`, `hostPort`) or a range (`containerPortRange`,
/// `hostPortRange`, as `"8000-8010"`). Field order is ECS's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkBinding {
    #[serde(rename = "bindIP")]
    pub bind_ip: IpAddr,
    #[serde(
        rename = "containerPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_port: Option<u16>,
    #[serde(rename = "hostPort", default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    pub protocol: Protocol,
    #[serde(
        rename = "containerPortRange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_port_range: Option<String>,
    #[serde(
        rename = "hostPortRange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub host_port_range: Option<String>,
}

impl TaskRecord {
    /// The container a binding of this task belongs to (container IPs are
    /// unique within a task).
    pub fn container_of(&self, binding: &Binding) -> Option<&str> {
        self.containers
            .iter()
            .find(|c| match binding.container_ip {
                IpAddr::V4(ip) => c.container_ip == Some(ip),
                IpAddr::V6(ip) => c.container_ip6 == Some(ip),
            })
            .map(|c| c.name.as_str())
    }

    /// The same record without container IPs: exactly ECS's shape.
    pub fn without_ips(&self) -> Self {
        Self {
            containers: self
                .containers
                .iter()
                .map(|c| ContainerRecord {
                    container_ip: None,
                    container_ip6: None,
                    ..c.clone()
                })
                .collect(),
        }
    }
}
