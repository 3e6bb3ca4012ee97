//! The kernel side as the control plane sees it: [`BpfDatapath`] implements
//! the engine's [`Datapath`] on the eBPF programs and their pinned maps.
mod attach;
mod binding_stats;
mod bindings6;
mod bpf;
mod bridges;
mod capacity;
mod cgroup;
pub mod dplog;
mod exact_ports;
pub mod flowlog;
mod flows;
mod flows6;
mod host_addrs;
#[cfg(test)]
mod names;
mod ops;
pub mod pins;
mod policy;
mod policy6;
mod port_addrs;
mod port_addrs6;
mod ports;
mod remap6;
mod rings;
mod services6;
mod shed;
pub mod status;
pub mod sys;
mod tails;
/// Map key/value encoding of a binding (shared with tests and benchmarks).
pub mod bpf_keys {
    pub use super::ops::{backend, service_key};
    pub use super::services6::{backend6, check6, service_key6};
}
pub use bpf::{ebpf_object, pin_dir, prepare_pin_dir, BpfDatapath, DatapathConfig};
pub use capacity::Capacity;
pub use cgroup::cgroup2_root_mount;
pub use policy::encode_rule;
pub use policy6::encode_rule6;
pub use tails::fill_tails;

// What the engine asks of a datapath and what one reports, under the paths
// this module has always offered them.
pub use crate::{
    domain::error::DatapathError,
    engine::datapath::{
        AttachMode, Attachment, BindingCounters, BridgeState, CgroupInfo, Datapath, DatapathStatus,
        FlowTimeouts, MapStatus, PolicyRule, RulePeer, RuleProto, SocketHooks,
    },
};
