//! berth's control plane. The daemon and the CLI (`main.rs`) are thin
//! front ends over these modules, which stand in four layers whose imports
//! point only down: `domain` <- `engine` <- `adapters` <- `interfaces`
//! (ARCHITECTURE.md at the repository root).
pub mod adapters;
pub mod domain;
pub mod engine;
pub mod interfaces;

// The paths the tests, the fuzz targets and the binaries have always used.
pub use adapters::datapath;
pub use domain::{ecs, model, spec};
#[cfg(feature = "fake")]
pub use engine::fake;
pub use engine::registry as state;
pub use interfaces::{api, cli, docker_proxy};

pub use domain::error::{Error, Result};

#[cfg(test)]
mod layering;
