//! Kernel constants the programs compare against or pass to helpers, named
//! once (uapi values).

/// A map update refused because the key exists (`-EEXIST`).
pub(crate) const EEXIST: i32 = -17;
/// Map update flag: create or overwrite.
pub(crate) const BPF_ANY: u64 = 0;
/// Map update flag: only create, never overwrite.
pub(crate) const BPF_NOEXIST: u64 = 1;
