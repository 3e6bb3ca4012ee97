//! The top layer: how people and programs reach berth — the HTTP/JSON API
//! and its server, the client, the CLI (one module per command group), the
//! daemon that wires everything together, and the Docker front ends. It
//! may import from every layer below.
pub mod api;
pub mod cli;
pub mod client;
pub mod cni;
pub mod daemon;
pub mod docker_events;
pub mod docker_proxy;
pub mod flow_log;
pub mod metrics;
pub mod server;
