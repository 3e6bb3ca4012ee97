//! The end-to-end tests, in one binary with a module per area as aya's
//! `test/integration-test` is: one link instead of one per file, and one
//! libtest run that keeps both cores busy to the end. Each test builds its
//! own namespaces (most through `berth_integration::Rig`) and runs the real
//! `berth` binary, so the tests need root.
//!
//! Run one area with `cargo test -p berth-integration --test e2e -- static_mapping::`.
mod bridge_subnet6;
mod bridges;
mod cni;
mod daemon_guards;
mod daemon_under_load;
mod docker_events;
mod docker_proxy;
mod dplog6;
mod dynamic_ports;
mod ecs_tasks;
mod flow_logs;
mod flow_logs6;
mod flow_tracking;
mod frag_flood;
mod fragments;
mod fragments6;
mod harness;
mod host_addrs;
mod icmp6;
mod ipv6;
mod local_access;
mod local_access6;
mod metrics;
mod metrics6;
mod neighbour_claims;
mod neighbour_claims6;
mod pmtu;
mod policy_bypass;
mod publish6;
mod remap6;
mod restart_and_guard;
mod security_groups;
mod security_groups6;
mod security_groups6_only;
mod spoofing;
mod static_mapping;
