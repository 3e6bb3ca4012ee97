//! The datapath log's IPv6 lines: the refusals IPv4 writes (`dplog.rs`:
//! same kinds, same wording, same per-CPU rate limit), with RFC 5952
//! addresses (aya-log's `{:i}` of 16 bytes prints `std::net::Ipv6Addr`).
//!
//! Every IPv6 program is at or near the 512-byte BPF stack limit
//! (`berth_ingress6` the closest), which the frame of a call writing an
//! aya-log record would pass. So none of them writes a line: a refusal
//! puts its event in the packet's `cb[0]` and tail-calls `berth_log`
//! ([`drop_logged6`], `dplog::drop_logged`), which reads the addresses
//! and ports from the packet, writes the line and drops the packet. What
//! the packet does not hold comes in `cb` too: an uplink's refusal sets
//! `EV_UPLINK6` (its client is the packet's source) with its container's
//! port in `cb[0]`'s high half and address in `cb[1..5]`, which a policy
//! line names as IPv4's does. Passed packets never come here, and
//! refusals only while the log is on.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use berth_maps::Backend6;

use crate::{
    dplog::{
        dp_log_allowed, dp_log_wanted, ports, to_berth_log, EV_CLASH, EV_CTR_SPOOF, EV_CT_FULL,
        EV_HOST_SOURCE, EV_MARTIAN, EV_MASK, EV_NAT_FULL, EV_POLICY, EV_POLICY_EGRESS, EV_UPLINK6,
    },
    parse::{ptr_at, ETH_LEN},
    parse6::{parse_packet6, Parsed6, IP6_HDR_LEN},
};

/// Drops an IPv6 packet refused at an uplink, logging it first (by
/// `berth_log`) when `ev` is an event the log wants and the log is on;
/// `b`: the container its flow would have reached.
#[inline(always)]
pub(crate) fn drop_logged6(ctx: &TcContext, ev: u32, b: &Backend6) -> i32 {
    if dp_log_wanted(ev) {
        let a = b.addr;
        let port = u32::from(u16::from_be(b.port_be));
        unsafe {
            let cb = &raw mut (*ctx.skb.skb).cb;
            (*cb)[0] = ev | EV_UPLINK6 | (port << 16);
            (*cb)[1] = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
            (*cb)[2] = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
            (*cb)[3] = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
            (*cb)[4] = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        }
        to_berth_log(ctx);
    }
    TC_ACT_SHOT
}

/// The container an uplink's refusal put in `cb` ([`drop_logged6`]).
#[inline(always)]
fn cb_container(ctx: &TcContext) -> [u8; 16] {
    let cb = unsafe { (*ctx.skb.skb).cb };
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&cb[1].to_ne_bytes());
    a[4..8].copy_from_slice(&cb[2].to_ne_bytes());
    a[8..12].copy_from_slice(&cb[3].to_ne_bytes());
    a[12..].copy_from_slice(&cb[4].to_ne_bytes());
    a
}

/// `berth_log`'s body for an IPv6 packet: the line for the event in
/// `cb0` (`cb[0]`) about it; `port`: the veth it was refused on.
#[inline(always)]
pub(crate) fn log_refused6(ctx: &TcContext, cb0: u32, port: u32) {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(ip) = ptr_at::<[u8; IP6_HDR_LEN]>(data, data_end, ETH_LEN) else {
        return;
    };
    let ip = unsafe { &*ip };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let next = ip[6];
    let (p, proto) = match parse_packet6(data, data_end, ctx.len() as usize) {
        Parsed6::Flow(f) => (ports(f.src_port_be, f.dst_port_be), f.proto),
        Parsed6::Fragment(f) | Parsed6::FirstFrag(f) => (0, f.proto),
        Parsed6::Upper(proto) => (0, proto),
        Parsed6::Pass => (0, next),
    };
    let ev = cb0 & EV_MASK;
    let q = u32::from(proto);
    // One call, whatever the event: each call site of `dp_log6` costs the
    // verifier its every line again.
    let (a, b, p, q) = if cb0 & EV_UPLINK6 == 0 {
        match ev {
            EV_CTR_SPOOF => (src, dst, 0, port),
            // A container's reply whose flow found its table full: the
            // line names the client, as the uplink's does.
            EV_NAT_FULL => (dst, dst, 0, 0),
            _ => (src, dst, p, q),
        }
    } else {
        match ev {
            EV_POLICY => (src, cb_container(ctx), (p & 0xffff_0000) | (cb0 >> 16), q),
            EV_CLASH => (src, dst, p, 0),
            _ => (src, dst, p, q),
        }
    };
    dp_log6(ev, &a, &b, p, q);
}

/// One IPv6 datapath log line of kind `ev`, worded as `dplog::dp_log`'s
/// (its arguments likewise). Not inlined, for the reason `dp_log` gives.
#[inline(never)]
fn dp_log6(ev: u32, a: &[u8; 16], b: &[u8; 16], p: u32, q: u32) {
    if !dp_log_allowed() {
        return;
    }
    let (a, b) = (*a, *b);
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
            "policy refused a new flow: [{:i}]:{} -> [{:i}]:{} proto {}",
            a,
            p_hi,
            b,
            p_lo,
            q
        ),
        EV_CLASH => aya_log_ebpf::debug!(
            (),
            "flow clash: [{:i}]:{} to host port {} goes on as client port {} (0: none free, refused)",
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
            "policy refused a new flow by its sender's egress rules: [{:i}]:{} -> [{:i}]:{} proto {}",
            a,
            p_hi,
            b,
            p_lo,
            q
        ),
        EV_CT_FULL => aya_log_ebpf::debug!(
            (),
            "security-group flow table full: a new flow [{:i}]:{} -> [{:i}]:{} proto {} refused",
            a,
            p_hi,
            b,
            p_lo,
            q
        ),
        _ => {}
    }
}
