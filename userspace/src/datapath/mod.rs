//! The kernel side as the control plane sees it.
use std::net::Ipv4Addr;

use crate::model::Binding;

mod bpf;
/// Map key/value encoding of a binding (shared with tests and benchmarks).
pub mod bpf_keys {
    pub use super::bpf::{backend, service_key};
}
pub use bpf::{ebpf_object, AttachMode, BpfDatapath, DatapathConfig};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("loading the eBPF programs needs root (CAP_BPF and CAP_NET_ADMIN)")]
    NotPermitted,
    #[error("this kernel is too old for berth: {0}")]
    KernelTooOld(String),
    #[error("bpffs at {path}: {reason}")]
    Bpffs { path: String, reason: String },
    #[error("eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("{0}")]
    Other(String),
}

/// What the control plane asks of the kernel. Implemented by [`BpfDatapath`];
/// unit tests use an in-memory fake.
pub trait Datapath: Send + Sync {
    /// Publish (or re-point) one binding.
    fn insert(&self, binding: &Binding) -> Result<(), DatapathError>;
    /// Unpublish one binding and forget its flows.
    fn remove(&self, binding: &Binding) -> Result<(), DatapathError>;
    /// Replace the set of host addresses a wildcard binding answers on.
    fn set_host_addrs(&self, addrs: &[Ipv4Addr]) -> Result<(), DatapathError>;
    /// Per-reason packet counters, summed over CPUs.
    fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError>;
    /// Reconcile after a restart: unpublish every entry that is not one of
    /// `keep` (left by a crash between map write and store commit, or by a
    /// store that was reset). Returns how many were removed.
    fn retain(&self, keep: &[Binding]) -> Result<usize, DatapathError>;
    /// Forget flows idle past their protocol's timeout; returns how many.
    /// The daemon calls this every few seconds.
    fn expire_flows(&self) -> Result<usize, DatapathError>;
}
