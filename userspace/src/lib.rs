//! berth's control plane. The daemon and the CLI (`main.rs`) are thin
//! front ends over these modules.
pub mod allocator;
pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod datapath;
pub mod docker_events;
pub mod docker_proxy;
pub mod ecs;
pub mod error;
pub mod events;
pub mod host;
pub mod limits;
pub mod lock;
pub mod model;
pub mod netif;
pub mod reset;
pub mod server;
pub mod sg;
pub mod sg_api;
pub mod sg_cli;
pub mod socket;
pub mod spec;
pub mod state;
pub mod store;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use error::{Error, Result};
