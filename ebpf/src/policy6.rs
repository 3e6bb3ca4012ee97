//! Security groups over IPv6 at a container's veth (issue 15).
//!
//! The IPv4 programs do not judge IPv6: `berth_from_ctr` / `berth_to_ctr`
//! tail-call `berth_from_ctr6` / `berth_to_ctr6` (`tails.rs`), the judges
//! below. Where no judge runs (an empty slot) or none can (a port whose
//! addresses are unknown), IPv6 from or to a container whose task has
//! policy would pass unchecked, a bypass of every rule: it is dropped
//! (`policy6_unjudged`), except neighbour discovery, without which the
//! container's IPv6 stack cannot even resolve its router.
//!
//! Neighbour discovery is `ICMPv6` right after the fixed header with a hop
//! limit of 255 (RFC 4861 makes receivers drop anything else, so nothing
//! routed qualifies). Solicitations and neighbour advertisements pass
//! both ways, router advertisements only towards a container: a router
//! advertisement or a redirect from a container with policy is the
//! rogue-router attack, and is dropped. What a solicitation or an
//! advertisement claims is judged first, on every port (`l2::nd_spoofed`).
//!
//! Which container a port carries is known by its learned addresses: the
//! IPv4 ones (`BERTH_PORT_ADDRS`) first, then the IPv6 ones
//! (`BERTH_PORT_LIST6`, `port_ep6.rs`, for a task registered with IPv6
//! only): policy applies when one of them has it. A port whose addresses
//! were never learned may carry a task with policy, so while any endpoint
//! has policy it is treated as one (fail closed).
//!
//! A refusal carries its datapath-log event out of [`judge6`] ([`Judged6`]), as IPv4's
//! (`policy::Judged`); the program hands the packet to `berth_log`
//! (`dplog6.rs`), as it has no stack left to write the line itself.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use berth_maps::{
    Counter, CtEntry, Endpoint, FlowKey6, CT6_CAPACITY, CT6_NEW_CAPACITY, CT6_SIDE_EGRESS,
    CT6_SIDE_INGRESS, CT_F_ESTABLISHED, DIR_EGRESS, DIR_INGRESS, PORT_ADDRS_MAX, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    ct::{ct_init, ct_now, ct_refresh, Conn as _, DIR_ORIG, DIR_REPLY},
    dplog::{EV_CTR_SPOOF, EV_CT_FULL, EV_NONE, EV_POLICY, EV_POLICY_EGRESS},
    frag6,
    maps::{count, BERTH_PORT_ADDRS},
    parse::{ptr_at, ETH_LEN},
    parse6::{parse_packet6, Flow6, Parsed6, IP6_HDR_LEN},
    policy::{endpoint_with_policy, nowhere},
    port_ep6::{port_endpoint6, EP6_NONE, EP6_OPEN},
    rules6::{endpoint6_with_policy, numbered6, policy6_allows, Match6, PROTO_OTHER},
    sys::{BPF_NOEXIST, EEXIST},
    tcp::{tcp_completes, tcp_seg_at, Seg},
};

const NEXTHDR_ICMPV6: u8 = 58;
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const NEXTHDR_HOP: u8 = 0;
const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const MLD2_REPORT: u8 = 143;
/// Neighbour discovery's hop limit (RFC 4861 section 6.1.1, 7.1.1).
const ND_HOP_LIMIT: u8 = 255;

/// Whether an IPv6 frame is neighbour discovery a container may send
/// (`from`) or receive, or multicast listener discovery.
#[inline(always)]
fn nd_allowed(data: usize, data_end: usize, from: bool) -> bool {
    let Some(ip) = ptr_at::<[u8; IP6_HDR_LEN + 1]>(data, data_end, ETH_LEN) else {
        return false;
    };
    let ip = unsafe { &*ip };
    if ip[6] == NEXTHDR_HOP {
        return mld(data, data_end, ip);
    }
    if ip[6] != NEXTHDR_ICMPV6 || ip[7] != ND_HOP_LIMIT {
        return false;
    }
    match ip[IP6_HDR_LEN] {
        // A router solicitation goes to every port of the bridge, the
        // host's own included; only a router advertisement says "route
        // through me".
        ND_NEIGHBOUR_SOLICIT | ND_NEIGHBOUR_ADVERT | ND_ROUTER_SOLICIT => true,
        ND_ROUTER_ADVERT => !from,
        _ => false,
    }
}

/// Multicast listener discovery (RFC 2710, 3810): `ICMPv6` queries and
/// reports behind the one 8-byte hop-by-hop header (the router alert),
/// hop limit 1, from a link-local or the unspecified address, to a
/// multicast group. Link-scope bookkeeping that reaches no service, and a
/// snooping bridge forwards neighbour solicitations to a port only after
/// its container reported the group; anything else behind a hop-by-hop
/// header is judged as any packet.
#[inline(always)]
fn mld(data: usize, data_end: usize, ip: &[u8; IP6_HDR_LEN + 1]) -> bool {
    let src_ll = ip[8] == 0xfe && ip[9] & 0xc0 == 0x80;
    let src_any = ip[8..24].iter().all(|b| *b == 0);
    if ip[7] != 1 || ip[24] != 0xff || !(src_ll || src_any) {
        return false;
    }
    let Some(h) = ptr_at::<[u8; 9]>(data, data_end, ETH_LEN + IP6_HDR_LEN) else {
        return false;
    };
    let h = unsafe { &*h };
    h[0] == NEXTHDR_ICMPV6
        && h[1] == 0
        && matches!(h[8], MLD_QUERY | MLD_REPORT | MLD_DONE | MLD2_REPORT)
}

/// What a judge says of a packet: [`PASS`], or its refusal's datapath-log
/// event (`dplog::EV_*`; `EV_NONE`: a refusal the log does not write).
/// A plain integer rather than IPv4's `Result<(), u32>`: `Ok`'s undefined
/// payload, spilled by LLVM, is a register the verifier refuses to read
/// (`R4 !read_ok`).
pub(crate) type Judged6 = u32;
/// The packet may pass (no `dplog::EV_*` has this value).
pub(crate) const PASS: u32 = u32::MAX - 1;

/// A refusal the log does not write.
#[inline(always)]
fn quiet6(allowed: bool) -> Judged6 {
    if allowed {
        PASS
    } else {
        EV_NONE
    }
}

/// Whether policy may apply to the container behind bridge port `ifindex`.
#[inline(always)]
pub(crate) fn port_may_have_policy(ifindex: u32) -> bool {
    !matches!(port_endpoint(ifindex), PortEp::Open)
}

/// An IPv6 frame a container on port `ifindex` sends (`from`) or receives
/// that no IPv6 program judged: whether it may pass. Call only where some
/// endpoint has policy (`policy::nowhere()` is false).
#[inline(always)]
pub(crate) fn unjudged6_passes(data: usize, data_end: usize, ifindex: u32, from: bool) -> bool {
    if !port_may_have_policy(ifindex) || nd_allowed(data, data_end, from) {
        return true;
    }
    count(Counter::Policy6Unjudged);
    false
}

// ------------------------------------------------------------ the judges
//
// `berth_from_ctr6` / `berth_to_ctr6` judge their own container's side of
// an IPv6 flow: the sender's egress rules where it leaves, the receiver's
// ingress rules where it arrives. What each allows is tracked under its
// side and its port (`CtEntry::_pad2` holds the port's ifindex), so a
// verdict counts only at the port that gave it: a container cannot ride
// another one's tracked flow by claiming its address.

/// IPv6 flows security groups allowed (`berth_maps::CT6_MAP`, `CT6_NEW_MAP`).
#[map]
pub(crate) static BERTH_CT6: HashMap<FlowKey6, CtEntry> =
    HashMap::pinned(CT6_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BERTH_CT6_NEW: LruHashMap<FlowKey6, CtEntry> =
    LruHashMap::pinned(CT6_NEW_CAPACITY, 0);

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAM_PROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The container behind a port, as far as policy is concerned.
pub(crate) enum PortEp {
    /// Its addresses were never learned: it may have policy (fail closed).
    Unknown,
    Open,
    Policy(Endpoint),
}

#[inline(always)]
pub(crate) fn port_endpoint(ifindex: u32) -> PortEp {
    let v4 = unsafe { BERTH_PORT_ADDRS.get(&ifindex) };
    if let Some(p) = v4 {
        let mut i = 0;
        while i < PORT_ADDRS_MAX {
            if (i as u32) < p.len {
                if let Some(ep) = endpoint_with_policy(p.addrs_be[i]) {
                    return PortEp::Policy(ep);
                }
            }
            i += 1;
        }
    }
    // No IPv4 address of the port names a task with policy: its IPv6
    // ones may (a task registered with IPv6 only, `port_ep6.rs`).
    match port_endpoint6(ifindex) {
        EP6_NONE if v4.is_none() => PortEp::Unknown,
        EP6_NONE | EP6_OPEN => PortEp::Open,
        ep => PortEp::Policy(Endpoint {
            task_id: (ep >> 32) as u32,
            flags: ep as u32,
        }),
    }
}

/// What the judges look at in a packet.
#[derive(Clone, Copy)]
struct P6 {
    src: [u8; 16],
    dst: [u8; 16],
    sport_be: u16,
    dport_be: u16,
    m: Match6,
    seg: Seg,
}

#[inline(always)]
fn key6(
    src: &[u8; 16],
    dst: &[u8; 16],
    sport_be: u16,
    dport_be: u16,
    proto: u8,
    side: u8,
) -> FlowKey6 {
    let mut k: FlowKey6 = unsafe { core::mem::zeroed() };
    k.src_addr = *src;
    k.dst_addr = *dst;
    k.src_port_be = sport_be;
    k.dst_port_be = dport_be;
    k.proto = proto;
    k._pad[0] = side;
    k
}

/// A TCP segment of an IPv6 flow, window scale included, as IPv4's
/// (`tcp::tcp_seg_at`), so a RST or FIN must fall within the scaled
/// window to mark the flow closing.
#[inline(always)]
fn tcp_seg6(f: &Flow6, data: usize, data_end: usize) -> Seg {
    // The mask changes no offset the parser accepts (at most 16 KiB) and
    // gives the verifier back the bound a spilled flow loses.
    let l4_off = f.l4_off & 0x7fff;
    let hdrs = l4_off.saturating_sub(ETH_LEN + IP6_HDR_LEN) as u32 + u32::from(f.tcp_hdr_len);
    let payload = u32::from(f.payload_len).saturating_sub(hdrs);
    // The option walk reads within the first 255 bytes of the frame (as
    // `nat6::seg_of`): behind longer extension headers the scale stays
    // unknown, which only narrows the window.
    let hdr_len = if l4_off + usize::from(f.tcp_hdr_len) <= 255 {
        f.tcp_hdr_len
    } else {
        20
    };
    tcp_seg_at(data, data_end, l4_off, hdr_len, payload, f.tcp_flags)
}

enum Ct6 {
    Tracked,
    Untracked,
    /// Tracked, but `BERTH_CT6` is full: drop.
    Refused,
}

/// A flow entry if this port made it.
#[inline(always)]
fn ours(e: Option<*mut CtEntry>, port: u32) -> Option<*mut CtEntry> {
    e.filter(|e| unsafe { (**e)._pad2 } == port)
}

#[inline(always)]
fn ct6_promote(key: &FlowKey6, e: *mut CtEntry) -> Result<(), ()> {
    unsafe {
        (*e).flags |= CT_F_ESTABLISHED;
    }
    match BERTH_CT6.insert(key, unsafe { &*e }, BPF_NOEXIST) {
        Ok(()) => {}
        Err(err) if err == EEXIST => {}
        Err(_) => {
            unsafe {
                (*e).flags &= !CT_F_ESTABLISHED;
            }
            count(Counter::CtTableFull);
            return Err(());
        }
    }
    let _ = BERTH_CT6_NEW.remove(key);
    Ok(())
}

/// The flow this packet belongs to at `port`: its own key (`key`, the
/// side this hook judges) or, as a reply, the reverse key of the side the
/// other hook of the port judges (`rkey`). Refreshed; promoted when this
/// packet establishes it.
#[inline(always)]
fn ct6_lookup(key: &FlowKey6, rkey: &FlowKey6, p: &P6, port: u32) -> Ct6 {
    let proto = p.m.proto;
    let now = ct_now();
    if let Some(e) = ours(BERTH_CT6.get_ptr_mut(key), port) {
        ct_refresh(e, proto, &p.seg, DIR_ORIG, now);
        return Ct6::Tracked;
    }
    if let Some(e) = ours(BERTH_CT6.get_ptr_mut(rkey), port) {
        ct_refresh(e, proto, &p.seg, DIR_REPLY, now);
        return Ct6::Tracked;
    }
    if let Some(e) = ours(BERTH_CT6_NEW.get_ptr_mut(key), port) {
        ct_refresh(e, proto, &p.seg, DIR_ORIG, now);
        if proto == PROTO_TCP
            && tcp_completes(&CtEntry::track(e), &p.seg)
            && ct6_promote(key, e).is_err()
        {
            return Ct6::Refused;
        }
        return Ct6::Tracked;
    }
    if let Some(e) = ours(BERTH_CT6_NEW.get_ptr_mut(rkey), port) {
        ct_refresh(e, proto, &p.seg, DIR_REPLY, now);
        if proto != PROTO_TCP && ct6_promote(rkey, e).is_err() {
            return Ct6::Refused;
        }
        return Ct6::Tracked;
    }
    Ct6::Untracked
}

#[inline(always)]
fn ct6_create(key: &FlowKey6, p: &P6, port: u32) -> Result<(), ()> {
    let (flags, wscale, seq_end, max_win) = ct_init(p.m.proto, &p.seg);
    let e = CtEntry {
        last_seen_ns: ct_now(),
        flags,
        _pad: 0,
        wscale,
        seq_end,
        max_win,
        _pad2: port,
    };
    match BERTH_CT6_NEW.insert(key, &e, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(err) if err == EEXIST => Ok(()),
        Err(_) => {
            count(Counter::CtTableFull);
            Err(())
        }
    }
}

/// A flow's packet at container `ep`'s port: tracked, or a new flow its
/// rules in this hook's direction allow (then tracked). `src_ok`: the
/// source may open a flow (see [`judge6`]).
#[inline(always)]
fn flow_allowed6(p: &P6, ep: Endpoint, port: u32, from: bool, src_ok: bool) -> Judged6 {
    let (own, other) = if from {
        (CT6_SIDE_EGRESS, CT6_SIDE_INGRESS)
    } else {
        (CT6_SIDE_INGRESS, CT6_SIDE_EGRESS)
    };
    let proto = p.m.proto;
    let key = key6(&p.src, &p.dst, p.sport_be, p.dport_be, proto, own);
    let rkey = key6(&p.dst, &p.src, p.dport_be, p.sport_be, proto, other);
    match ct6_lookup(&key, &rkey, p, port) {
        Ct6::Tracked => return PASS,
        Ct6::Refused => return EV_CT_FULL,
        Ct6::Untracked => {}
    }
    if !src_ok {
        count(Counter::ContainerSpoofedSource);
        return EV_CTR_SPOOF;
    }
    if proto == PROTO_TCP && !p.seg.opens() {
        count(Counter::CtNoFlow);
        return EV_NONE;
    }
    let judged = rules_allow6(p, ep, from);
    if judged != PASS {
        return judged;
    }
    if ct6_create(&key, p, port).is_err() {
        return EV_CT_FULL;
    }
    count(if from {
        Counter::PolicyAcceptedEgress
    } else {
        Counter::PolicyAcceptedIngress
    });
    PASS
}

/// Whether `ep`'s rules let this packet out (`from`) or in; counted when
/// they do not.
#[inline(always)]
fn rules_allow6(p: &P6, ep: Endpoint, from: bool) -> Judged6 {
    let (dir, peer, denied, ev) = if from {
        (
            DIR_EGRESS,
            &p.dst,
            Counter::PolicyDeniedEgress,
            EV_POLICY_EGRESS,
        )
    } else {
        (DIR_INGRESS, &p.src, Counter::PolicyDeniedIngress, EV_POLICY)
    };
    if policy6_allows(ep.task_id, dir, &p.m, peer) {
        return PASS;
    }
    count(denied);
    ev
}

/// Judged packet by packet: a source that may not open a flow is refused
/// first.
#[inline(always)]
fn source_then_rules6(p: &P6, ep: Endpoint, from: bool, src_ok: bool) -> Judged6 {
    if !src_ok {
        count(Counter::ContainerSpoofedSource);
        return EV_CTR_SPOOF;
    }
    rules_allow6(p, ep, from)
}

/// Whether a container with policy may send from `src`: a link-local
/// address, or one of its task's own (`BERTH_ENDPOINTS6`).
#[inline(always)]
fn source6_ok(src: &[u8; 16], ep: Endpoint) -> bool {
    if src[0] == 0xfe && src[1] & 0xc0 == 0x80 {
        return true;
    }
    matches!(endpoint6_with_policy(src), Some(own) if own.task_id == ep.task_id)
}

/// An `ICMPv6` packet right after the fixed header (anything behind
/// extension headers is judged as another protocol).
#[inline(always)]
fn icmp6_allowed(
    data: usize,
    data_end: usize,
    (src, dst): ([u8; 16], [u8; 16]),
    ep: Endpoint,
    port: u32,
    (from, src_ok): (bool, bool),
) -> Judged6 {
    let Some(h) = ptr_at::<[u8; 8]>(data, data_end, ETH_LEN + IP6_HDR_LEN) else {
        count(Counter::PolicyDeniedIcmp);
        return EV_NONE;
    };
    let h = unsafe { &*h };
    let (icmp_type, icmp_code) = (h[0], h[1]);
    let id = u16::from_ne_bytes([h[4], h[5]]);
    let m = Match6 {
        proto: PROTO_ICMPV6,
        dport: 0,
        icmp_type,
        icmp_code,
    };
    let ports = match icmp_type {
        ICMPV6_ECHO_REQUEST => Some((id, 0)),
        ICMPV6_ECHO_REPLY => Some((0, id)),
        _ => None,
    };
    let p = P6 {
        src,
        dst,
        sport_be: 0,
        dport_be: 0,
        m,
        seg: Seg::default(),
    };
    if let Some((sport_be, dport_be)) = ports {
        let p = P6 {
            sport_be,
            dport_be,
            ..p
        };
        return flow_allowed6(&p, ep, port, from, src_ok);
    }
    if (ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROB).contains(&icmp_type) {
        if icmp6_error_tracked(data, data_end, &src, &dst, port, from) {
            return PASS;
        }
        count(Counter::PolicyDeniedIcmp);
        return EV_NONE;
    }
    // Anything else (MLD, node information, ...) packet by packet.
    source_then_rules6(&p, ep, from, src_ok)
}

/// Whether an `ICMPv6` error (destination unreachable, packet too big, time
/// exceeded, parameter problem) quotes a TCP, UDP or echo flow tracked at
/// this port, and is addressed to (`from`: sent by) the end that sent the
/// quoted packet (received it). Rules never open errors: anyone can forge
/// one about anything.
#[inline(always)]
fn icmp6_error_tracked(
    data: usize,
    data_end: usize,
    src: &[u8; 16],
    dst: &[u8; 16],
    port: u32,
    from: bool,
) -> bool {
    const Q: usize = ETH_LEN + IP6_HDR_LEN + 8;
    let Some(q) = ptr_at::<[u8; IP6_HDR_LEN + 8]>(data, data_end, Q) else {
        return false;
    };
    let q = unsafe { &*q };
    let mut qsrc = [0u8; 16];
    let mut qdst = [0u8; 16];
    qsrc.copy_from_slice(&q[8..24]);
    qdst.copy_from_slice(&q[24..40]);
    // The quoted packet went from the error's receiver to its sender.
    if (!from && &qsrc != dst) || (from && &qdst != src) {
        return false;
    }
    let l4 = &q[IP6_HDR_LEN..];
    let proto = q[6];
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (
            u16::from_ne_bytes([l4[0], l4[1]]),
            u16::from_ne_bytes([l4[2], l4[3]]),
        ),
        PROTO_ICMPV6 if l4[0] == ICMPV6_ECHO_REQUEST => (u16::from_ne_bytes([l4[4], l4[5]]), 0),
        PROTO_ICMPV6 if l4[0] == ICMPV6_ECHO_REPLY => (0, u16::from_ne_bytes([l4[4], l4[5]])),
        _ => return false,
    };
    // The quoted packet's flow, opened by either end, judged by either of
    // this port's hooks.
    for side in [CT6_SIDE_EGRESS, CT6_SIDE_INGRESS] {
        let k = key6(&qsrc, &qdst, sport, dport, proto, side);
        let r = key6(&qdst, &qsrc, dport, sport, proto, side);
        for key in [k, r] {
            let e = BERTH_CT6
                .get_ptr_mut(&key)
                .or_else(|| BERTH_CT6_NEW.get_ptr_mut(&key));
            if ours(e, port).is_some() {
                return true;
            }
        }
    }
    false
}

/// `berth_from_ctr6` (`from`) and `berth_to_ctr6`: IPv6 a container on
/// port `ifindex` sends or receives: [`PASS`], or refused ([`Judged6`]).
#[inline(always)]
pub(crate) fn judge6(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ifindex: u32,
    from: bool,
) -> Judged6 {
    // Neighbour claims are judged on every port, policy or not (`l2.rs`).
    if from && crate::l2::nd_spoofed(data, data_end, ifindex) {
        return quiet6(false);
    }
    if nowhere() {
        return PASS;
    }
    let ep = match port_endpoint(ifindex) {
        PortEp::Open => return PASS,
        PortEp::Unknown => return quiet6(unjudged6_passes(data, data_end, ifindex, from)),
        PortEp::Policy(ep) => ep,
    };
    if nd_allowed(data, data_end, from) {
        return PASS;
    }
    let Some(ip) = ptr_at::<[u8; IP6_HDR_LEN]>(data, data_end, ETH_LEN) else {
        return EV_NONE;
    };
    let ip = unsafe { &*ip };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let next = ip[6];
    // What a container sends from an address not its own opens nothing
    // (the source check); it may still belong to a flow tracked at this
    // port, which only an address routed to this port could have
    // answered, and an ICMPv6 error must name such a flow anyway.
    let src_ok = !from || source6_ok(&src, ep);
    let parsed = parse_packet6(data, data_end, frame_len);
    // A first fragment's verdict is kept for its datagram (`frag6.rs`).
    let first = frag6::first_of(&parsed);
    let ok = match parsed {
        Parsed6::Flow(f) => {
            let p = P6 {
                src,
                dst,
                sport_be: f.src_port_be,
                dport_be: f.dst_port_be,
                m: Match6 {
                    proto: f.proto,
                    dport: u16::from_be(f.dst_port_be),
                    icmp_type: 0,
                    icmp_code: 0,
                },
                seg: if f.proto == PROTO_TCP {
                    tcp_seg6(&f, data, data_end)
                } else {
                    Seg::default()
                },
            };
            flow_allowed6(&p, ep, ifindex, from, src_ok)
        }
        Parsed6::Fragment(fr) => return quiet6(frag6::frag6_follow(&fr, (ifindex, from))),
        Parsed6::FirstFrag(fr) if frag6::frag6_tiny(&fr) => EV_NONE,
        Parsed6::Pass | Parsed6::Upper(_) if next == PROTO_ICMPV6 => {
            icmp6_allowed(data, data_end, (src, dst), ep, ifindex, (from, src_ok))
        }
        // GRE, IP-in-IP, SCTP, ... right after the fixed header or behind
        // hop-by-hop, routing and destination options headers: a flow of
        // its protocol and addresses, as IPv4's (`policy::proto_allowed`),
        // so a rule for its number judges it wherever it sits. A first
        // fragment of a protocol but TCP, UDP and ICMPv6, or anything
        // behind headers the parser does not follow: only a rule for all
        // protocols lets it through, packet by packet.
        other => {
            let upper = match other {
                Parsed6::Upper(proto) => proto,
                Parsed6::Pass => next,
                _ => PROTO_OTHER,
            };
            let tracked = numbered6(upper);
            let p = P6 {
                src,
                dst,
                sport_be: 0,
                dport_be: 0,
                m: Match6 {
                    proto: if tracked { upper } else { PROTO_OTHER },
                    dport: 0,
                    icmp_type: 0,
                    icmp_code: 0,
                },
                seg: Seg::default(),
            };
            if tracked {
                flow_allowed6(&p, ep, ifindex, from, src_ok)
            } else {
                source_then_rules6(&p, ep, from, src_ok)
            }
        }
    };
    frag6::frag6_first_judged(first, (ifindex, from), &src, &dst, ok == PASS);
    ok
}
