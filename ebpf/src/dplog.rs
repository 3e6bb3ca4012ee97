//! The datapath log: rare events (a full flow table, a flow clash, a
//! dropped spoof or martian, a policy refusal) as aya-log debug lines,
//! which the daemon forwards into its own log. Off unless the daemon asks
//! (`CONFIG_DP_LOG`), and then at most `DP_LOG_PER_SEC` lines a second per
//! CPU after a burst of `DP_LOG_BURST` (a per-CPU token bucket; lines over
//! it are counted, `datapath_log_limited`), so a flood of spoofed packets
//! cannot turn into a flood of log lines. Only paths that drop or refuse
//! call it: the per-packet path of a tracked flow never does.
//!
//! `berth_from_ctr` is at the 512-byte stack limit and an aya-log record
//! would pass it, so the events only it sees (a container's spoofed
//! source, east-west refusals, a full security-group table) are counted,
//! not logged; what the uplink and bridge programs see is.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use berth_maps::{Counter, LogBucket, CONFIG_DP_LOG, DP_LOG_BURST, DP_LOG_DEBUG, DP_LOG_PER_SEC};

use crate::{
    ct::ct_now,
    maps::{count, BERTH_CONFIG},
};

#[map]
static BERTH_LOG_BUCKET: PerCpuArray<LogBucket> = PerCpuArray::with_max_entries(1, 0);

const NS_PER_TOKEN: u64 = 1_000_000_000 / DP_LOG_PER_SEC;

/// Whether a line may be written now: the log is on and this CPU's bucket
/// has a token (taken).
#[inline(always)]
pub(crate) fn dp_log_allowed() -> bool {
    if !matches!(BERTH_CONFIG.get(CONFIG_DP_LOG), Some(v) if *v >= DP_LOG_DEBUG) {
        return false;
    }
    let Some(b) = BERTH_LOG_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    let now = ct_now();
    unsafe {
        let earned = now.saturating_sub((*b).last_ns) / NS_PER_TOKEN;
        if earned > 0 {
            let t = (*b).tokens.saturating_add(earned);
            (*b).tokens = if t > DP_LOG_BURST { DP_LOG_BURST } else { t };
            (*b).last_ns = now;
        }
        if (*b).tokens == 0 {
            count(Counter::DatapathLogLimited);
            return false;
        }
        (*b).tokens -= 1;
    }
    true
}

/// What a line is about; each kind has its message in [`dp_log`].
pub(crate) const EV_MARTIAN: u32 = 0;
pub(crate) const EV_HOST_SOURCE: u32 = 1;
pub(crate) const EV_POLICY: u32 = 2;
pub(crate) const EV_CLASH: u32 = 3;
pub(crate) const EV_NAT_FULL: u32 = 4;

/// Two 16-bit ports in one argument (a BPF call takes five).
#[inline(always)]
pub(crate) fn ports(a_be: u16, b_be: u16) -> u32 {
    (u32::from(u16::from_be(a_be)) << 16) | u32::from(u16::from_be(b_be))
}

/// One datapath log line of kind `ev` (addresses in network byte order).
/// One function for every kind, called with a constant kind: each
/// aya-log record expands to a few hundred instructions that the verifier
/// walks once per call site, which inlined at every site cost the uplink
/// program 80 000 of its 100 000 verified instructions; a call costs the
/// caller a few, and the verifier walks only the arm the constant picks.
#[inline(never)]
pub(crate) fn dp_log(ev: u32, a_be: u32, b_be: u32, p: u32, q: u32) {
    if !dp_log_allowed() {
        return;
    }
    let (a, b) = (u32::from_be(a_be), u32::from_be(b_be));
    let (p_hi, p_lo) = (p >> 16, p & 0xffff);
    match ev {
        EV_MARTIAN => aya_log_ebpf::debug!(
            (),
            "martian dropped on an uplink: {:i} -> {:i} (loopback, or a source in a bridge subnet)",
            a,
            b
        ),
        EV_HOST_SOURCE => aya_log_ebpf::debug!(
            (),
            "spoofed source dropped on an uplink: {:i} is the host's",
            a
        ),
        EV_POLICY => aya_log_ebpf::debug!(
            (),
            "policy refused a new flow: {:i}:{} -> {:i}:{} proto {}",
            a,
            p_hi,
            b,
            p_lo,
            q
        ),
        EV_CLASH => aya_log_ebpf::debug!(
            (),
            "flow clash: {:i}:{} to host port {} goes on as client port {} (0: none free, refused)",
            a,
            p_hi,
            p_lo,
            q
        ),
        EV_NAT_FULL => aya_log_ebpf::debug!(
            (),
            "flow table full: a published-port flow of {:i} refused",
            a
        ),
        _ => {}
    }
}
