//! The engine: the registry of tasks and bindings, the dynamic-port
//! allocator and the security-group book. It decides what the datapath,
//! the store and the host must hold, and reaches them only through the
//! traits it defines; it imports only from `domain`.
pub mod allocator;
pub mod datapath;
pub mod flowlog;
pub mod host;
pub mod ledger;
pub mod registry;
pub mod sg_book;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
