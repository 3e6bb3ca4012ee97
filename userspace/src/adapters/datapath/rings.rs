//! Sizes of the two ring buffers, chosen at load from what this daemon
//! uses. A ring is allocated whole when the map is created, and the
//! daemon's reader maps its data pages twice (the kernel's wrap-around
//! trick), so each byte of ring costs a byte of kernel memory and two of
//! the daemon's RSS whether a record is ever written or not.
//!
//! - The flow-log ring (`BERTH_FLOW_LOG`) is only read with `--flow-log`,
//!   which is fixed for the daemon's life (the ring is not pinned: each
//!   load creates a fresh one). Without it the programs never write a
//!   record (`CONFIG_FLOW_LOG` stays 0), so the ring is one page and the
//!   daemon never maps it.
//! - aya-log's ring (`AYA_LOGS`) is switched on at run time, so it always
//!   exists, sized to hold a full burst of the per-CPU rate limit from
//!   every CPU at once (`DP_LOG_BURST` records of at most
//!   `DP_LOG_RECORD_MAX` bytes), instead of aya-log's fixed 128 KiB.
use berth_maps::{DP_LOG_BURST, DP_LOG_MAP, DP_LOG_RECORD_MAX, FLOW_LOG_RING, FLOW_LOG_RING_BYTES};

use super::DatapathError;

/// aya-log-ebpf's own size for its ring: never more than that.
const DP_LOG_RING_MAX: u32 = 128 * 1024;

/// The kernel's page size: a ring is a power-of-two number of pages.
fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

/// Bytes of the flow-log ring: its full size only when a flow log reads it.
pub(super) fn flow_log_ring_bytes(flow_log: bool, page: u32) -> u32 {
    if flow_log {
        FLOW_LOG_RING_BYTES.max(page)
    } else {
        page
    }
}

/// Bytes of the datapath log's ring for `cpus` CPUs: every CPU's burst at
/// once, each record with the ring's 8-byte header.
pub(super) fn dp_log_ring_bytes(cpus: u32, page: u32) -> u32 {
    let burst = u64::from(cpus.max(1)) * DP_LOG_BURST * (u64::from(DP_LOG_RECORD_MAX) + 8);
    let bytes = burst
        .next_power_of_two()
        .clamp(u64::from(page), u64::from(DP_LOG_RING_MAX.max(page)));
    u32::try_from(bytes).unwrap_or(DP_LOG_RING_MAX)
}

/// (ring map, bytes) for the loader.
pub(super) fn ring_sizes(flow_log: bool) -> Result<[(&'static str, u32); 2], DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
        map: DP_LOG_MAP,
        reason: format!("counting the CPUs: {e}"),
    })?;
    let page = page_size();
    Ok([
        (FLOW_LOG_RING, flow_log_ring_bytes(flow_log, page)),
        (
            DP_LOG_MAP,
            dp_log_ring_bytes(u32::try_from(cpus).unwrap_or(u32::MAX), page),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_log_ring_is_one_page_without_a_flow_log() {
        assert_eq!(flow_log_ring_bytes(false, 4096), 4096);
        assert_eq!(flow_log_ring_bytes(true, 4096), FLOW_LOG_RING_BYTES);
        // A page larger than the ring: the ring is at least a page.
        assert_eq!(flow_log_ring_bytes(true, 1 << 20), 1 << 20);
    }

    #[test]
    fn the_log_ring_holds_every_cpus_burst_within_aya_logs_size() {
        for cpus in [1, 2, 3, 4, 8, 64, 4096] {
            let bytes = dp_log_ring_bytes(cpus, 4096);
            assert!(bytes.is_power_of_two() && bytes >= 4096, "{cpus}: {bytes}");
            let burst = u64::from(cpus) * DP_LOG_BURST * (u64::from(DP_LOG_RECORD_MAX) + 8);
            assert!(
                u64::from(bytes) >= burst || bytes == DP_LOG_RING_MAX,
                "{cpus} CPUs: {bytes} bytes for a {burst}-byte burst"
            );
        }
        assert!(dp_log_ring_bytes(2, 4096) < DP_LOG_RING_MAX);
        assert_eq!(dp_log_ring_bytes(0, 4096), dp_log_ring_bytes(1, 4096));
    }
}
