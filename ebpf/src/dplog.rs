//! The datapath log: rare events (a full flow table, a flow clash, a
//! dropped spoof or martian, a policy refusal) as aya-log debug lines,
//! which the daemon forwards into its own log. Off unless the daemon asks
//! (`CONFIG_DP_LOG`), and then at most `DP_LOG_PER_SEC` lines a second per
//! CPU after a burst of `DP_LOG_BURST` (a per-CPU token bucket; lines over
//! it are counted, `datapath_log_limited`), so a flood of spoofed packets
//! cannot turn into a flood of log lines. Only paths that drop or refuse
//! call it: the per-packet path of a tracked flow never does.
//!
//! `berth_from_ctr` and `berth_to_ctr` are at the 512-byte stack limit,
//! which an aya-log record would pass: the events only they see (a
//! container's spoofed source, east-west refusals, a full table) are
//! written by `berth_log`, which they tail-call (`BERTH_TAILS` slot `LOG`)
//! with the event's kind in the packet's `cb[0]` ([`drop_logged`]). It
//! reads the addresses and ports from the packet itself, writes the line
//! and drops the packet, with a stack of its own. The IPv6 programs have
//! no room either: their lines are written the same way (`dplog6.rs`).
use aya_ebpf::{bindings::TC_ACT_SHOT, macros::map, maps::PerCpuArray, programs::TcContext};
use berth_maps::{
    tail, Counter, LogBucket, CONFIG_DP_LOG, DP_LOG_BURST, DP_LOG_DEBUG, DP_LOG_PER_SEC,
};

use crate::{
    ct::ct_now,
    maps::{count, BERTH_CONFIG, BERTH_TAILS},
    parse::{parse_packet, Parsed},
};

#[map]
static BERTH_LOG_BUCKET: PerCpuArray<LogBucket> = PerCpuArray::with_max_entries(1, 0);

const NS_PER_TOKEN: u64 = 1_000_000_000 / DP_LOG_PER_SEC;

/// Whether the daemon turned the log on.
#[inline(always)]
fn dp_log_on() -> bool {
    matches!(BERTH_CONFIG.get(CONFIG_DP_LOG), Some(v) if *v >= DP_LOG_DEBUG)
}

/// Whether a line may be written now: the log is on and this CPU's bucket
/// has a token (taken).
#[inline(always)]
pub(crate) fn dp_log_allowed() -> bool {
    if !dp_log_on() {
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
/// Written by `berth_log` only (see [`drop_logged`]).
pub(crate) const EV_CTR_SPOOF: u32 = 5;
pub(crate) const EV_POLICY_EGRESS: u32 = 6;
pub(crate) const EV_CT_FULL: u32 = 7;
/// In `cb[0]` beside an event for `berth_log`: an IPv6 packet refused at
/// an uplink (`dplog6.rs`), whose container is in the rest of `cb`.
pub(crate) const EV_UPLINK6: u32 = 0x8000;
/// The bits of `cb[0]` that hold the event.
pub(crate) const EV_MASK: u32 = 0x7fff;
/// A refusal that is not logged (common or harmless: a stray TCP segment
/// of no flow, a later fragment of a refused datagram).
pub(crate) const EV_NONE: u32 = u32::MAX;

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
        EV_CTR_SPOOF => aya_log_ebpf::debug!(
            (),
            "spoofed source dropped on container port {}: {:i} -> {:i} (not an address of the port's container)",
            q,
            a,
            b
        ),
        EV_POLICY_EGRESS => aya_log_ebpf::debug!(
            (),
            "policy refused a new flow by its sender's egress rules: {:i}:{} -> {:i}:{} proto {}",
            a,
            p_hi,
            b,
            p_lo,
            q
        ),
        EV_CT_FULL => aya_log_ebpf::debug!(
            (),
            "security-group flow table full: a new flow {:i}:{} -> {:i}:{} proto {} refused",
            a,
            p_hi,
            b,
            p_lo,
            q
        ),
        _ => {}
    }
}

/// Drops a packet a container veth's program refused, logging it first
/// when `ev` is an event the log wants and the log is on: `ev` goes in
/// the packet's `cb[0]` and `berth_log` takes over (it drops the packet
/// too). An empty `LOG` slot loses the line, counted as not written.
/// Refusals cost this only while the log is on; passed packets never.
#[inline(always)]
pub(crate) fn drop_logged(ctx: &TcContext, ev: u32) -> i32 {
    if dp_log_wanted(ev) {
        unsafe {
            (*ctx.skb.skb).cb[0] = ev;
        }
        to_berth_log(ctx);
    }
    TC_ACT_SHOT
}

/// Tail-calls `berth_log` with what the caller put in `cb`; returns only
/// when the `LOG` slot is empty (the line is lost, counted as not written).
#[inline(always)]
pub(crate) fn to_berth_log(ctx: &TcContext) {
    unsafe {
        BERTH_TAILS.tail_call(ctx, tail::LOG);
    }
    count(Counter::DatapathLogLimited);
}

/// Whether the log is on and a refusal of kind `ev` is one it writes.
#[inline(always)]
pub(crate) fn dp_log_wanted(ev: u32) -> bool {
    ev != EV_NONE && dp_log_on()
}

/// `berth_log`'s body: the line for event `ev` (from `cb[0]`) about the
/// packet, from its own headers; `port`: the veth it was refused on.
#[inline(always)]
pub(crate) fn log_refused(ctx: &TcContext, ev: u32, port: u32) {
    let (a, b, p, q) = match parse_packet(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        Parsed::Flow(f) => (
            f.src_addr_be,
            f.dst_addr_be,
            ports(f.src_port_be, f.dst_port_be),
            u32::from(f.proto),
        ),
        Parsed::Fragment(f) => (f.src_addr_be, f.dst_addr_be, 0, u32::from(f.proto)),
        Parsed::Ip(ip) => (ip.src_be, ip.dst_be, 0, u32::from(ip.proto)),
        Parsed::NotIpv4 => (0, 0, 0, 0),
    };
    match ev {
        EV_CTR_SPOOF => dp_log(ev, a, b, 0, port),
        // A container's reply whose flow found its table full: the line
        // names the client, as the uplink's does.
        EV_NAT_FULL => dp_log(ev, b, 0, 0, 0),
        _ => dp_log(ev, a, b, p, q),
    }
}
