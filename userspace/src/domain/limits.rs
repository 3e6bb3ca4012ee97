//! What one API client may ask of the daemon: ports per request and per
//! task (checked before a request is expanded into bindings), connections
//! to the socket, event subscribers, header and body read times, body size.
//! `berth daemon` flags set the first four; the rest are fixed.
use std::time::Duration;

use clap::Args;

pub const DEFAULT_MAX_PORTS_PER_REQUEST: u32 = 16_384;
pub const DEFAULT_MAX_PORTS_PER_TASK: u32 = 16_384;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;
pub const DEFAULT_MAX_EVENT_SUBSCRIBERS: usize = 64;
/// A client must send a request's whole header (an idle connection: its
/// first byte) within this, or the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and its body within this once the header is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// 10 000 single-port specs fit in about 150 KiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Ports a request may publish; checked on the specs, before expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortLimits {
    pub per_request: u32,
    pub per_task: u32,
}

impl Default for PortLimits {
    fn default() -> Self {
        Self {
            per_request: DEFAULT_MAX_PORTS_PER_REQUEST,
            per_task: DEFAULT_MAX_PORTS_PER_TASK,
        }
    }
}

/// The API server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    pub ports: PortLimits,
    pub max_connections: usize,
    pub max_event_subscribers: usize,
    pub header_timeout: Duration,
    pub body: BodyLimits,
}

/// How a request body is read; handed to each request by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            timeout: BODY_TIMEOUT,
            max_bytes: MAX_BODY_BYTES,
        }
    }
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            ports: PortLimits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_event_subscribers: DEFAULT_MAX_EVENT_SUBSCRIBERS,
            header_timeout: HEADER_TIMEOUT,
            body: BodyLimits::default(),
        }
    }
}

/// `berth daemon` flags for the API socket.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Group that may use the API socket (name or number): the socket is
    /// chowned to it, mode 0660. Without it only root can.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Most host ports one request may publish (ranges count each port).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PORTS_PER_REQUEST,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_ports_per_request: u32,
    /// Most host ports one task may have.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PORTS_PER_TASK,
          value_parser = clap::value_parser!(u32).range(1..=131_072))]
    pub max_ports_per_task: u32,
    /// Most open connections to the API socket; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_connections: u32,
    /// Most concurrent `GET /v1/events` streams; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_EVENT_SUBSCRIBERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=4_096))]
    pub max_event_subscribers: u32,
}

impl ApiArgs {
    pub fn limits(&self) -> ApiLimits {
        ApiLimits {
            ports: PortLimits {
                per_request: self.max_ports_per_request,
                per_task: self.max_ports_per_task,
            },
            max_connections: self.max_connections as usize,
            max_event_subscribers: self.max_event_subscribers as usize,
            ..ApiLimits::default()
        }
    }
}
