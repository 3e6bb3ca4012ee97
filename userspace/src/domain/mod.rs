//! The bottom layer: what berth talks about — bindings, port specs, task
//! definitions, security-group rules, events, limits and the errors a user
//! sees. Types here check themselves when parsed and do no I/O; this layer
//! imports nothing else from the crate.
pub mod cidr;
pub mod cni;
pub mod ecs;
pub mod error;
pub mod events;
pub mod flowlog;
pub mod limits;
pub mod model;
pub mod rules;
pub mod spec;
pub mod task;
