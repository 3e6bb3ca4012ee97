//! NAT66 for published IPv6 ports, tail-called (`tails.rs`): DNAT at the
//! uplink (`berth_ingress6`) and the reply SNAT at the bridge
//! (`berth_reply6`), with the IPv4 rules (`nat.rs`): a flow is keyed by its
//! reply tuple as the container sends it; only a TCP SYN or a first UDP
//! datagram opens one, in `BERTH_NAT6_NEW` (LRU); the handshake's last ACK
//! or the first UDP reply moves it to `BERTH_NAT6` (never evicts), through
//! the same `ct.rs`. A wildcard (`[::]`) mapping serves only the host's own
//! addresses (`BERTH_HOST_ADDRS6`), asked when a flow opens.
//!
//! A new flow whose reply tuple another flow holds gets another client
//! port towards the container, as IPv4's (`remap6.rs`). `ICMPv6` errors about a flow are translated by `icmp6.rs`;
//! fragmented datagrams are translated as IPv4's (`frag6.rs`). A new flow
//! to a container with policy must pass its task's IPv6 ingress rules
//! (`rules6::ingress_allows6`). A refusal is written to the datapath log
//! by `berth_log` (`dplog6.rs`: this program has no stack left for it).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use berth_maps::{
    tail::{FRAG6_CB_DNAT, FRAG6_CB_SNAT},
    Backend6, Counter, FlowKey6, NatEntry6, FLOW_EV_REJECT_FULL, FLOW_EV_REJECT_POLICY, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    ct::{
        ct_init, ct_insert_new, ct_now, ct_promote, ct_refresh, Conn as _, Tables, DIR_ORIG,
        DIR_REPLY,
    },
    dplog::{EV_CLASH, EV_HOST_SOURCE, EV_MARTIAN, EV_NAT_FULL, EV_POLICY},
    fib::{fib_lookup_v6, NextHop},
    flowlog::{flow_log_refused6, Refused6},
    hook::Hook as _,
    maps::{count, BERTH_HOST_ADDRS6, BERTH_NAT6, BERTH_NAT6_NEW},
    parse::{ptr_at, ETH_LEN},
    parse6::{parse_packet6, Flow6, Parsed6, IP6_HDR_LEN},
    service::service_find6,
    tcp::{tcp_completes, tcp_seg_at, Seg},
};

/// The fixed header's second word (payload length, next header, hop
/// limit), rewritten whole for the checksum difference.
const IP6_WORD1_OFF: usize = ETH_LEN + 4;
const IP6_SRC_OFF: usize = ETH_LEN + 8;
const IP6_DST_OFF: usize = ETH_LEN + 24;
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The TCP bits a flow log's `tcp-flags` reports: FIN, SYN, RST.
const LOGGED_TCP_FLAGS: u8 = 0x07;
/// Above any L4 offset `parse6` accepts.
const L4_OFF_MASK: usize = 0x7fff;

#[inline(always)]
fn tables() -> Tables<FlowKey6, NatEntry6> {
    Tables {
        est: &BERTH_NAT6,
        new: &BERTH_NAT6_NEW,
        full: Counter::NatTableFull,
        log: false,
    }
}

/// The packet's length as IPv4 counts it (header and payload), for the
/// per-binding and flow-log byte counters and the route's MTU.
#[inline(always)]
fn ip_len(f: &Flow6) -> u16 {
    f.payload_len.saturating_add(IP6_HDR_LEN as u16)
}

#[inline(always)]
fn seg_of(f: &Flow6, data: usize, data_end: usize) -> Seg {
    if f.proto != PROTO_TCP {
        return Seg::default();
    }
    // The mask changes no offset the parser accepts (at most 16 KiB) and
    // gives the verifier the bound it lost when the flow was spilled.
    let l4_off = f.l4_off & L4_OFF_MASK;
    let hdrs = l4_off.saturating_sub(ETH_LEN + IP6_HDR_LEN) as u32 + u32::from(f.tcp_hdr_len);
    let payload = u32::from(f.payload_len).saturating_sub(hdrs);
    // The option walk reads options within the first 255 bytes of the
    // frame only (IPv4's bound): behind longer extension headers the
    // window scale is left unknown, which only widens the RST/FIN window.
    let hdr_len = if l4_off + usize::from(f.tcp_hdr_len) <= 255 {
        f.tcp_hdr_len
    } else {
        20
    };
    tcp_seg_at(data, data_end, l4_off, hdr_len, payload, f.tcp_flags)
}

#[inline(always)]
fn is_host_addr6(a: &[u8; 16]) -> bool {
    unsafe { BERTH_HOST_ADDRS6.get(a) }.is_some()
}

/// Adds a packet travelling in direction `d` to its flow's counters.
#[inline(always)]
fn nat6_count(e: *mut NatEntry6, d: usize, f: &Flow6) {
    let i = usize::from(d == DIR_REPLY);
    unsafe {
        (*e).packets[i] = (*e).packets[i].wrapping_add(1);
        (*e).bytes[i] = (*e).bytes[i].wrapping_add(u64::from(ip_len(f)));
        (*e).tcp_flags[i] |= f.tcp_flags & LOGGED_TCP_FLAGS;
    }
}

/// Whether `e` is the flow of this client packet (same host address and
/// port, and the client's own source port).
#[inline(always)]
fn owns(e: *const NatEntry6, f: &Flow6) -> bool {
    unsafe {
        (*e).host_addr == f.dst_addr
            && (*e).host_port_be == f.dst_port_be
            && (*e).client_port_be == f.src_port_be
    }
}

enum Verdict6 {
    /// Translate, with this client source port towards the container (the
    /// client's own unless a clash remapped it, `remap6.rs`).
    Forward(u16),
    Drop,
    /// A new flow refused: what the flow log (`FLOW_EV_*`) and the
    /// datapath log (`dplog::EV_*`) say, as IPv4 logs ([`refused`]).
    Refused(u32),
    NotOurs,
}

/// A refusal of flow-log kind `kind` and datapath-log event `ev`, in one
/// integer: two fields of an enum variant leave bits of the others'
/// registers undefined, which the verifier refuses to read.
#[inline(always)]
fn refused(kind: u8, ev: u32) -> Verdict6 {
    Verdict6::Refused(u32::from(kind) | (ev << 8))
}

/// What the tracked flow under reply tuple `key` says of a client packet:
/// `None` when no flow of this client is there.
#[inline(always)]
fn known(key: &FlowKey6, f: &Flow6, seg: &Seg, now: u64) -> Option<Verdict6> {
    if let Some(e) = BERTH_NAT6.get_ptr_mut(key) {
        if !owns(e, f) {
            return None;
        }
        ct_refresh(e, f.proto, seg, DIR_ORIG, now);
        nat6_count(e, DIR_ORIG, f);
        return Some(Verdict6::Forward(key.dst_port_be));
    }
    let e = BERTH_NAT6_NEW.get_ptr_mut(key)?;
    if !owns(e, f) {
        return None;
    }
    ct_refresh(e, f.proto, seg, DIR_ORIG, now);
    nat6_count(e, DIR_ORIG, f);
    if f.proto == PROTO_TCP
        && tcp_completes(&NatEntry6::track(e), seg)
        && ct_promote(&tables(), key, e).is_err()
    {
        return Some(refused(FLOW_EV_REJECT_FULL, EV_NAT_FULL));
    }
    Some(Verdict6::Forward(key.dst_port_be))
}

/// The tracked flow of a client packet, or a new one when it may open.
#[inline(always)]
fn track(f: &Flow6, b: &Backend6, wildcard: bool, seg: &Seg, now: u64, ifindex: u32) -> Verdict6 {
    let mut key = FlowKey6 {
        src_addr: b.addr,
        dst_addr: f.src_addr,
        src_port_be: b.port_be,
        dst_port_be: f.src_port_be,
        proto: f.proto,
        _pad: [0; 3],
    };
    if let Some(v) = known(&key, f, seg, now) {
        return v;
    }
    // A flow whose reply tuple clashed lives under its remapped port.
    let wire = crate::remap6::wire_key(f);
    let fwd = crate::remap6::remapped_port(&wire, b);
    if let crate::remap6::Remap::Port(port_be) = fwd {
        let mut remapped = key;
        remapped.dst_port_be = port_be;
        if let Some(v) = known(&remapped, f, seg, now) {
            return v;
        }
    }
    // No flow of this client: a new one, if the packet may open it.
    if wildcard && !is_host_addr6(&f.dst_addr) {
        return Verdict6::NotOurs;
    }
    if f.proto == PROTO_TCP && !seg.opens() {
        count(Counter::NatNoFlow);
        return Verdict6::Drop;
    }
    if f.src_addr == LOOPBACK6 || is_host_addr6(&f.src_addr) {
        count(Counter::UplinkSpoofedSource);
        let ev = if f.src_addr == LOOPBACK6 {
            EV_MARTIAN
        } else {
            EV_HOST_SOURCE
        };
        return refused(FLOW_EV_REJECT_POLICY, ev);
    }
    // The receiving task's IPv6 security groups (counted there when they
    // refuse).
    if !crate::policy::nowhere()
        && !crate::rules6::ingress_allows6(f.proto, &f.src_addr, &b.addr, b.port_be)
    {
        crate::stats::binding_count_refused(b.binding);
        return refused(FLOW_EV_REJECT_POLICY, EV_POLICY);
    }
    // The reply tuple is another client's (the key holds ours).
    let remapped = !crate::remap6::tuple_free(&key);
    if remapped {
        match crate::remap6::remap(f, b, &key, &wire) {
            Ok(port_be) => key.dst_port_be = port_be,
            Err(()) => return refused(FLOW_EV_REJECT_FULL, EV_CLASH),
        }
    } else if fwd != crate::remap6::Remap::None {
        crate::remap6::forget(&wire);
    }
    let (flags, wscale, seq_end, max_win) = ct_init(f.proto, seg);
    let entry = NatEntry6 {
        host_addr: f.dst_addr,
        host_port_be: f.dst_port_be,
        flags,
        _pad: 0,
        _pad1: 0,
        last_seen_ns: now,
        client_port_be: f.src_port_be,
        wscale,
        seq_end,
        max_win,
        binding: b.binding,
        packets: [1, 0],
        bytes: [u64::from(ip_len(f)), 0],
        opened_ns: now,
        ifindex,
        tcp_flags: [f.tcp_flags & LOGGED_TCP_FLAGS, 0],
        _pad3: 0,
    };
    if ct_insert_new(&tables(), &key, &entry).is_err() {
        if remapped {
            crate::remap6::forget(&wire);
        }
        return refused(FLOW_EV_REJECT_FULL, EV_NAT_FULL);
    }
    crate::stats::binding_count_opened(b.binding);
    Verdict6::Forward(key.dst_port_be)
}

/// One address and one port of an IPv6 TCP/UDP packet to rewrite.
struct Rewrite6 {
    addr_off: usize,
    old_addr: [u8; 16],
    new_addr: [u8; 16],
    port_off: usize,
    old_port_be: u16,
    new_port_be: u16,
}

/// Rewrites the address, the port and the hop limit by direct writes, then
/// the L4 checksum by two skb helper calls (as `tc.rs` does for IPv4, and
/// for the same reasons): the address change as a pseudo-header diff
/// (`bpf_csum_diff` over the 16 bytes), the port as a 2-byte change. IPv6
/// has no header checksum; `skb->csum` is then set right for a receiving
/// NIC's `CHECKSUM_COMPLETE` (`csum6::complete_fixup`).
#[inline(always)]
fn rewrite6(ctx: &TcContext, f: &Flow6, rw: &Rewrite6) -> Result<(), ()> {
    let (d, e) = (ctx.data(), ctx.data_end());
    let word = ptr_at::<[u8; 4]>(d, e, IP6_WORD1_OFF).ok_or(())?;
    let addr = ptr_at::<[u8; 16]>(d, e, rw.addr_off).ok_or(())?;
    // The verifier lost the parser's bounds on this offset (see `tc.rs`).
    let port_off = unsafe { core::ptr::read_volatile(&raw const rw.port_off) } & L4_OFF_MASK;
    let port = ptr_at::<u16>(d, e, port_off).ok_or(())?;
    let old_word = unsafe { core::ptr::read_unaligned(word) };
    let mut new_word = old_word;
    new_word[3] = f.hop_limit - 1;
    unsafe {
        core::ptr::write_unaligned(word, new_word);
        core::ptr::write_unaligned(addr, rw.new_addr);
        core::ptr::write_unaligned(port, rw.new_port_be);
    }
    let l4_off = f.l4_off & L4_OFF_MASK;
    let (csum_off, mangled) = if f.proto == PROTO_UDP {
        (l4_off + 6, u64::from(BPF_F_MARK_MANGLED_0))
    } else {
        (l4_off + 16, 0)
    };
    let mut old = rw.old_addr;
    let mut new = rw.new_addr;
    let diff =
        unsafe { bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0) };
    if diff < 0 {
        return Err(());
    }
    ctx.l4_csum_replace(
        csum_off,
        0,
        diff as u64,
        u64::from(BPF_F_PSEUDO_HDR) | mangled,
    )
    .map_err(|_| ())?;
    ctx.l4_csum_replace(
        csum_off,
        u64::from(rw.old_port_be),
        u64::from(rw.new_port_be),
        mangled | 2,
    )
    .map_err(|_| ())?;
    crate::csum6::complete_fixup(ctx, diff as u32, old_word, new_word)
}

/// Rewrites and sends a translated packet now addressed `src -> dst`.
#[inline(always)]
fn translate(ctx: &TcContext, f: &Flow6, rw: &Rewrite6, src: &[u8; 16], dst: &[u8; 16]) -> i32 {
    if rewrite6(ctx, f, rw).is_err() {
        return TC_ACT_SHOT;
    }
    let mtu_len = ctx.mtu_len(ip_len(f));
    let next = fib_lookup_v6(ctx, f.proto, src, dst, ctx.in_ifindex(), mtu_len);
    ctx.deliver(next)
}

/// An IPv6 frame at an uplink.
#[inline(always)]
pub(crate) fn ingress6(ctx: &TcContext) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if crate::icmp6::is_error(data, data_end) {
        return crate::icmp6::hand_off(ctx, crate::icmp6::FROM_UPLINK);
    }
    let f = match parse_packet6(data, data_end, ctx.len() as usize) {
        Parsed6::Flow(f) => f,
        Parsed6::Fragment(_) => return crate::frag6::to_frag6(ctx, FRAG6_CB_DNAT),
        Parsed6::FirstFrag(_) | Parsed6::Pass | Parsed6::Upper(_) => return TC_ACT_OK,
    };
    let Some(f) = crate::frag6::flow6_merged(ctx, f) else {
        return TC_ACT_OK;
    };
    let Some((b, wildcard)) = service_find6(f.proto, &f.dst_addr, f.dst_port_be) else {
        count(Counter::IngressPass);
        return TC_ACT_OK;
    };
    if f.hop_limit <= 1 {
        if wildcard && !is_host_addr6(&f.dst_addr) {
            count(Counter::IngressPass);
            return TC_ACT_OK;
        }
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    let now = ct_now();
    let seg = seg_of(&f, data, data_end);
    let ifindex = ctx.in_ifindex();
    let sport_be = match track(&f, &b, wildcard, &seg, now, ifindex) {
        Verdict6::Forward(port_be) => port_be,
        Verdict6::Drop => {
            crate::frag6::frag6_first_dropped(&f);
            return TC_ACT_SHOT;
        }
        Verdict6::Refused(why) => {
            let (kind, ev) = (why as u8, why >> 8);
            flow_log_refused6(&Refused6::client(kind, &f, &b, ifindex));
            crate::frag6::frag6_first_dropped(&f);
            return crate::dplog6::drop_logged6(ctx, ev, &b);
        }
        Verdict6::NotOurs => {
            count(Counter::IngressPass);
            return TC_ACT_OK;
        }
    };
    count(Counter::IngressDnat);
    crate::stats::binding_count_in(b.binding, ip_len(&f));
    let rw = Rewrite6 {
        addr_off: IP6_DST_OFF,
        old_addr: f.dst_addr,
        new_addr: b.addr,
        port_off: f.l4_off + 2,
        old_port_be: f.dst_port_be,
        new_port_be: b.port_be,
    };
    // The next hop first: a packet too long for it is answered as it came
    // (`pmtu6.rs`), untranslated.
    let next = fib_lookup_v6(
        ctx,
        f.proto,
        &f.src_addr,
        &b.addr,
        ifindex,
        ctx.mtu_len(ip_len(&f)),
    );
    // A first fragment's later ones follow it only where it went: one
    // answered or dropped here leaves them nothing to follow.
    match next {
        NextHop::TooBig { mtu } => {
            crate::frag6::frag6_first_dropped(&f);
            return crate::pmtu6::to_pmtu6(ctx, mtu, sport_be);
        }
        // Nothing to rewrite for a packet that goes nowhere.
        NextHop::Unreachable => {
            crate::frag6::frag6_first_dropped(&f);
            return ctx.deliver(next);
        }
        _ => {}
    }
    if f.first_frag {
        crate::frag6::frag6_first_dnat(&f, &b.addr);
    }
    // A clash remapped the client's source port towards the container.
    if sport_be != f.src_port_be
        && crate::remap6::rewrite_port(ctx, &f, f.l4_off, f.src_port_be, sport_be).is_err()
    {
        return TC_ACT_SHOT;
    }
    if rewrite6(ctx, &f, &rw).is_err() {
        return TC_ACT_SHOT;
    }
    ctx.deliver(next)
}

/// An IPv6 frame a container sent, at the bridge: a reply to a tracked
/// flow leaves with the host address and port the flow arrived on.
#[inline(always)]
pub(crate) fn reply6(ctx: &TcContext) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if crate::icmp6::is_error(data, data_end) {
        return crate::icmp6::hand_off(ctx, crate::icmp6::FROM_BRIDGE);
    }
    let f = match parse_packet6(data, data_end, ctx.len() as usize) {
        Parsed6::Flow(f) => f,
        Parsed6::Fragment(_) => return crate::frag6::to_frag6(ctx, FRAG6_CB_SNAT),
        Parsed6::FirstFrag(_) | Parsed6::Pass | Parsed6::Upper(_) => return TC_ACT_OK,
    };
    let key = FlowKey6 {
        src_addr: f.src_addr,
        dst_addr: f.dst_addr,
        src_port_be: f.src_port_be,
        dst_port_be: f.dst_port_be,
        proto: f.proto,
        _pad: [0; 3],
    };
    let seg = seg_of(&f, data, data_end);
    let now = ct_now();
    let (host_addr, host_port_be, binding, client_port_be) =
        if let Some(e) = BERTH_NAT6.get_ptr_mut(&key) {
            ct_refresh(e, f.proto, &seg, DIR_REPLY, now);
            nat6_count(e, DIR_REPLY, &f);
            unsafe {
                (
                    (*e).host_addr,
                    (*e).host_port_be,
                    (*e).binding,
                    (*e).client_port_be,
                )
            }
        } else if let Some(e) = BERTH_NAT6_NEW.get_ptr_mut(&key) {
            ct_refresh(e, f.proto, &seg, DIR_REPLY, now);
            nat6_count(e, DIR_REPLY, &f);
            let x = unsafe {
                (
                    (*e).host_addr,
                    (*e).host_port_be,
                    (*e).binding,
                    (*e).client_port_be,
                )
            };
            if f.proto == PROTO_UDP && ct_promote(&tables(), &key, e).is_err() {
                // The flow as its client sent it: the reply's tuple reversed.
                flow_log_refused6(&Refused6 {
                    kind: FLOW_EV_REJECT_FULL,
                    proto: f.proto,
                    client: &f.dst_addr,
                    client_port_be: x.3,
                    host: &x.0,
                    host_port_be: x.1,
                    ctr: &f.src_addr,
                    ctr_port_be: f.src_port_be,
                    ip_len: ip_len(&f),
                    tcp_flags: 0,
                    ifindex: unsafe { (*e).ifindex },
                });
                return crate::dplog::drop_logged(ctx, EV_NAT_FULL);
            }
            x
        } else {
            return TC_ACT_OK;
        };
    if f.hop_limit <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    if f.first_frag {
        crate::frag6::frag6_first_snat(&f, &host_addr);
    }
    count(Counter::ReplySnat);
    crate::stats::binding_count_out(binding, ip_len(&f));
    let rw = Rewrite6 {
        addr_off: IP6_SRC_OFF,
        old_addr: f.src_addr,
        new_addr: host_addr,
        port_off: f.l4_off,
        old_port_be: f.src_port_be,
        new_port_be: host_port_be,
    };
    // A clash remapped the client's port: the reply goes to its own.
    if client_port_be != f.dst_port_be
        && crate::remap6::rewrite_port(ctx, &f, f.l4_off + 2, f.dst_port_be, client_port_be)
            .is_err()
    {
        return TC_ACT_SHOT;
    }
    translate(ctx, &f, &rw, &host_addr, &f.dst_addr)
}
