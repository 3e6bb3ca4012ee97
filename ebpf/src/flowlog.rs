//! Flow-log records the flow tables cannot give. An accepted flow's
//! packets and bytes are counted in its table entry (`nat.rs`) and read by
//! the daemon at each capture window's end; a refused new flow leaves no
//! entry, so each refused packet is written here to a ring buffer
//! (`BERTH_FLOW_LOG`). Only refusal paths call this, never the per-packet
//! path of a tracked flow. The ring is never waited on: a record is
//! reserved or counted lost (`flow_log_lost`), and the packet's verdict is
//! the same either way. IPv6 refusals (`nat6.rs`) write a `FlowEvent6` to
//! the same ring; its length tells the daemon the family.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use berth_maps::{Backend6, Counter, FlowEvent, FlowEvent6, CONFIG_FLOW_LOG};

use crate::{
    maps::{count, BERTH_CONFIG, BERTH_FLOW_LOG},
    parse6::{Flow6, IP6_HDR_LEN},
};

/// A refused packet of a new flow, with its tuple as the client sent it.
#[derive(Clone, Copy)]
pub(crate) struct Refused {
    pub kind: u8,
    pub proto: u8,
    pub client_be: u32,
    pub client_port_be: u16,
    pub host_be: u32,
    pub host_port_be: u16,
    pub ctr_be: u32,
    pub ctr_port_be: u16,
    pub ip_len: u16,
    pub tcp_flags: u8,
    pub ifindex: u32,
}

#[inline(always)]
fn flow_log_on() -> bool {
    matches!(BERTH_CONFIG.get(CONFIG_FLOW_LOG), Some(v) if *v != 0)
}

/// Writes one record for `r` when a daemon reads the flow log.
#[inline(always)]
pub(crate) fn flow_log_refused(r: &Refused) {
    if !flow_log_on() {
        return;
    }
    let Some(mut slot) = BERTH_FLOW_LOG.reserve::<FlowEvent>(0) else {
        count(Counter::FlowLogLost);
        return;
    };
    slot.write(FlowEvent {
        ktime_ns: unsafe { bpf_ktime_get_coarse_ns() },
        src_addr_be: r.client_be,
        dst_addr_be: r.host_be,
        src_port_be: r.client_port_be,
        dst_port_be: r.host_port_be,
        ctr_addr_be: r.ctr_be,
        ctr_port_be: r.ctr_port_be,
        proto: r.proto,
        kind: r.kind,
        ifindex: r.ifindex,
        ip_len: r.ip_len,
        tcp_flags: r.tcp_flags,
        _pad: 0,
        _pad2: 0,
    });
    slot.submit(0);
}

/// A refused packet of a new IPv6 flow ([`Refused`] with the addresses
/// borrowed, so none is copied before a record is known to be wanted).
pub(crate) struct Refused6<'a> {
    pub kind: u8,
    pub proto: u8,
    pub client: &'a [u8; 16],
    pub client_port_be: u16,
    pub host: &'a [u8; 16],
    pub host_port_be: u16,
    pub ctr: &'a [u8; 16],
    pub ctr_port_be: u16,
    pub ip_len: u16,
    pub tcp_flags: u8,
    pub ifindex: u32,
}

impl<'a> Refused6<'a> {
    /// A client packet `f` refused on its way to the mapping's backend `b`.
    #[inline(always)]
    pub(crate) fn client(kind: u8, f: &'a Flow6, b: &'a Backend6, ifindex: u32) -> Self {
        Self {
            kind,
            proto: f.proto,
            client: &f.src_addr,
            client_port_be: f.src_port_be,
            host: &f.dst_addr,
            host_port_be: f.dst_port_be,
            ctr: &b.addr,
            ctr_port_be: b.port_be,
            // The header and payload, as the flow tables count (`nat6.rs`).
            ip_len: f.payload_len.saturating_add(IP6_HDR_LEN as u16),
            tcp_flags: f.tcp_flags,
            ifindex,
        }
    }
}

/// Writes one IPv6 record for `r` when a daemon reads the flow log.
#[inline(always)]
pub(crate) fn flow_log_refused6(r: &Refused6<'_>) {
    if !flow_log_on() {
        return;
    }
    let Some(mut slot) = BERTH_FLOW_LOG.reserve::<FlowEvent6>(0) else {
        count(Counter::FlowLogLost);
        return;
    };
    slot.write(FlowEvent6 {
        ktime_ns: unsafe { bpf_ktime_get_coarse_ns() },
        src_addr: *r.client,
        dst_addr: *r.host,
        ctr_addr: *r.ctr,
        src_port_be: r.client_port_be,
        dst_port_be: r.host_port_be,
        ctr_port_be: r.ctr_port_be,
        proto: r.proto,
        kind: r.kind,
        ifindex: r.ifindex,
        ip_len: r.ip_len,
        tcp_flags: r.tcp_flags,
        _pad: 0,
    });
    slot.submit(0);
}
