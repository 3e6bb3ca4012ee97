//! `berth_ingress6`, tail-called by the uplink's TC programs for IPv6
//! (`tails.rs`). It passes every frame: the datapath parses IPv6 but does
//! not translate it yet. One for a published IPv6 port is counted
//! (`ipv6_untranslated`), so the gap is never silent.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use berth_maps::Counter;

use crate::{
    maps::count,
    parse6::{parse_packet6, Parsed6},
    service::service_lookup6,
};

#[inline(always)]
pub(crate) fn ingress6(ctx: &TcContext) -> i32 {
    if let Parsed6::Flow(f) = parse_packet6(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        if service_lookup6(f.proto, &f.dst_addr, f.dst_port_be).is_some() {
            count(Counter::Ipv6Untranslated);
        }
    }
    TC_ACT_OK
}
