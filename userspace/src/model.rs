//! The control plane's model: what a user publishes.
use std::net::Ipv4Addr;

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
            Protocol::Tcp => berth_maps::PROTO_TCP,
            Protocol::Udp => berth_maps::PROTO_UDP,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port: ECS `networkBindings` field names plus the task and
/// the container address it points at. `bindIP` 0.0.0.0 means every host
/// address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Binding {
    pub task: String,
    #[serde(rename = "containerIP")]
    pub container_ip: Ipv4Addr,
    #[serde(rename = "bindIP")]
    pub bind_ip: Ipv4Addr,
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: Protocol,
}
