//! Adapters: the outside world the engine drives — the eBPF datapath, the
//! redb store, the host's sysctls and sockets, network interfaces, locks
//! and the API socket file. They implement the engine's traits and import
//! from `engine` and `domain` only.
pub mod datapath;
pub mod holders;
pub mod host;
pub mod lock;
pub mod memory;
pub mod netif;
pub mod reset;
pub mod socket;
pub mod store;
