//! Address translation shared by the TC and XDP programs. The decisions
//! (which mapping, which flow entry) are made here; how bytes and checksums
//! are rewritten depends on the hook (`Hook::rewrite`).
//!
//! Flow tracking (README "How the datapath behaves"): a flow's entry is
//! keyed by its reply tuple as the container sends it. A TCP SYN or a first
//! UDP datagram creates it in `BERTH_NAT_NEW` (LRU: never refuses, evicts
//! the least recently used unestablished flow); the client's ACK of the
//! container's SYN-ACK (TCP) or the container's first reply (UDP) moves it
//! to `BERTH_NAT` (never evicts). When a new flow's reply tuple is taken by
//! another flow, the new one gets another client source port towards the
//! container, remembered in `BERTH_NAT_FWD`.
use berth_maps::{
    nat_remap_port, Backend, Counter, FlowKey, NatEntry, NatFwd, FLOW_EV_REJECT_FULL,
    FLOW_EV_REJECT_POLICY, NAT_REMAP_TRIES, PROTO_TCP, PROTO_UDP,
};

use crate::{
    ct::{
        ct_init, ct_insert_new, ct_now, ct_promote, ct_refresh, Conn as _, Tables, DIR_ORIG,
        DIR_REPLY,
    },
    dplog::{dp_log, ports, EV_CLASH, EV_NAT_FULL},
    flowlog::{flow_log_refused, Refused},
    maps::{count, BERTH_NAT, BERTH_NAT_FWD, BERTH_NAT_NEW},
    parse::{flow_key, Flow, IP_DST_OFF, IP_SRC_OFF},
    service::{is_host_addr, Service},
    sys::BPF_ANY,
    tcp::{tcp_completes, tcp_seg, Seg},
};

/// Published-port flows' tables; `log`: a full one is written to the
/// datapath log.
#[inline(always)]
fn nat_tables_logged(log: bool) -> Tables<FlowKey, NatEntry> {
    Tables {
        est: &BERTH_NAT,
        new: &BERTH_NAT_NEW,
        full: Counter::NatTableFull,
        log,
    }
}

#[inline(always)]
fn nat_tables() -> Tables<FlowKey, NatEntry> {
    nat_tables_logged(true)
}

/// A published-port flow's key: its reply tuple as the container sends it
/// (container -> client, with the client port the flow uses towards the
/// container).
#[inline(always)]
pub(crate) fn nat_key(
    proto: u8,
    backend: &Backend,
    client_be: u32,
    client_port_be: u16,
) -> FlowKey {
    flow_key(
        backend.addr_be,
        client_be,
        backend.port_be,
        client_port_be,
        proto,
    )
}

/// One side of a flow to rewrite: address at `addr_off`, port at `port_off`.
#[derive(Clone, Copy)]
pub(crate) struct Rewrite {
    pub addr_off: usize,
    pub old_addr_be: u32,
    pub new_addr_be: u32,
    pub port_off: usize,
    pub old_port_be: u16,
    pub new_port_be: u16,
    /// The flow's other port, when a clash remapped the client's source
    /// port (ingress: source port -> remapped; reply: destination port ->
    /// the client's own). 0: unchanged.
    pub port2_off: usize,
    pub old_port2_be: u16,
    pub new_port2_be: u16,
}

/// `sport_be`: the client source port towards the container (the
/// client's own unless a clash remapped it).
#[inline(always)]
pub(crate) fn ingress_rewrite(flow: &Flow, backend: &Backend, sport_be: u16) -> Rewrite {
    Rewrite {
        addr_off: IP_DST_OFF,
        old_addr_be: flow.dst_addr_be,
        new_addr_be: backend.addr_be,
        port_off: flow.l4_off + 2,
        old_port_be: flow.dst_port_be,
        new_port_be: backend.port_be,
        port2_off: if sport_be != flow.src_port_be {
            flow.l4_off
        } else {
            0
        },
        old_port2_be: flow.src_port_be,
        new_port2_be: sport_be,
    }
}

/// What a reply needs of its flow: where it came in and the client's own
/// port (small enough to travel in registers, unlike the whole entry).
#[derive(Clone, Copy)]
pub(crate) struct ReplyXlate {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub client_port_be: u16,
    /// The mapping's per-binding counters slot.
    pub binding: u32,
}

impl ReplyXlate {
    #[inline(always)]
    fn of(e: *const NatEntry) -> Self {
        unsafe {
            Self {
                host_addr_be: (*e).host_addr_be,
                host_port_be: (*e).host_port_be,
                client_port_be: (*e).client_port_be,
                binding: (*e).binding,
            }
        }
    }
}

#[inline(always)]
pub(crate) fn reply_rewrite(flow: &Flow, entry: &ReplyXlate) -> Rewrite {
    Rewrite {
        addr_off: IP_SRC_OFF,
        old_addr_be: flow.src_addr_be,
        new_addr_be: entry.host_addr_be,
        port_off: flow.l4_off,
        old_port_be: flow.src_port_be,
        new_port_be: entry.host_port_be,
        port2_off: if entry.client_port_be != flow.dst_port_be {
            flow.l4_off + 2
        } else {
            0
        },
        old_port2_be: flow.dst_port_be,
        new_port2_be: entry.client_port_be,
    }
}

/// Whether `e` is the flow of this client packet: the same host address
/// and port, and the client's own source port.
#[inline(always)]
fn nat_owns(e: *const NatEntry, flow: &Flow) -> bool {
    unsafe {
        (*e).host_addr_be == flow.dst_addr_be
            && (*e).host_port_be == flow.dst_port_be
            && (*e).client_port_be == flow.src_port_be
    }
}

/// The TCP bits a flow log's `tcp-flags` reports: FIN, SYN, RST.
const LOGGED_TCP_FLAGS: u8 = 0x07;

/// Adds a packet travelling in direction `d` to its flow's flow-log
/// counters: two adds and an or on the entry the lookup just brought in.
#[inline(always)]
fn nat_count(e: *mut NatEntry, d: usize, flow: &Flow) {
    if cfg!(feature = "bench-uncounted") {
        return;
    }
    let i = usize::from(d == DIR_REPLY);
    unsafe {
        (*e).packets[i] = (*e).packets[i].wrapping_add(1);
        (*e).bytes[i] = (*e).bytes[i].wrapping_add(u64::from(flow.tot_len));
        (*e).tcp_flags[i] |= flow.tcp_flags & LOGGED_TCP_FLAGS;
    }
}

/// A refused packet of a client's new flow to `backend`.
#[inline(always)]
fn refused(kind: u8, flow: &Flow, ctr_be: u32, ctr_port_be: u16, ifindex: u32) -> Refused {
    Refused {
        kind,
        proto: flow.proto,
        client_be: flow.src_addr_be,
        client_port_be: flow.src_port_be,
        host_be: flow.dst_addr_be,
        host_port_be: flow.dst_port_be,
        ctr_be,
        ctr_port_be,
        ip_len: flow.tot_len,
        tcp_flags: flow.tcp_flags,
        ifindex,
    }
}

/// What a client packet's tracked flow says: `Some(Ok(port))` forward with
/// this client port towards the container, `Some(Err)` drop, `None` not
/// this flow.
#[inline(always)]
fn nat_ingress_known(key: &FlowKey, flow: &Flow, seg: &Seg, now: u64) -> Option<Result<u16, ()>> {
    if let Some(e) = BERTH_NAT.get_ptr_mut(key) {
        if !nat_owns(e, flow) {
            return None;
        }
        ct_refresh(e, flow.proto, seg, DIR_ORIG, now);
        nat_count(e, DIR_ORIG, flow);
        return Some(Ok(key.dst_port_be));
    }
    let e = BERTH_NAT_NEW.get_ptr_mut(key)?;
    if !nat_owns(e, flow) {
        return None;
    }
    ct_refresh(e, flow.proto, seg, DIR_ORIG, now);
    nat_count(e, DIR_ORIG, flow);
    if flow.proto == PROTO_TCP
        && tcp_completes(&NatEntry::track(e), seg)
        // Logged by the caller, once for both tuples it tries.
        && ct_promote(&nat_tables_logged(false), key, e).is_err()
    {
        return Some(Err(()));
    }
    Some(Ok(key.dst_port_be))
}

#[inline(always)]
fn nat_tuple_free(key: &FlowKey) -> bool {
    unsafe { BERTH_NAT.get(key).is_none() && BERTH_NAT_NEW.get(key).is_none() }
}

/// What tracking decided about a client packet to a published port.
pub(crate) enum Tracked {
    /// Translate, with this client source port towards the container (the
    /// client's own unless a clash remapped it).
    Forward(u16),
    /// Drop (no flow and not a SYN, refused by policy, no port free, table
    /// full).
    Drop,
    /// No flow, and the destination is not the host's own address: a
    /// wildcard mapping does not cover it (traffic routed through the host).
    NotOurs,
}

impl From<Result<u16, ()>> for Tracked {
    #[inline(always)]
    fn from(r: Result<u16, ()>) -> Self {
        match r {
            Ok(port) => Self::Forward(port),
            Err(()) => Self::Drop,
        }
    }
}

/// The tracked flow of a client packet to `svc`, refreshed (and promoted
/// when it completes the handshake): `Some(Ok(port))` forward with this
/// client port towards the container, `Some(Err)` drop (the established
/// table has no room), `None` no flow of this packet under `svc`. Also
/// `fwd`: what `BERTH_NAT_FWD` said about the packet's wire tuple, when
/// it was asked (a clash's remapped flow lives under another port).
#[inline(always)]
fn ct_track_known(
    flow: &Flow,
    backend: &Backend,
    seg: &Seg,
    key: &FlowKey,
    now: u64,
) -> (Option<Result<u16, ()>>, Option<NatFwd>) {
    // The common case: one lookup in BERTH_NAT.
    if let Some(r) = nat_ingress_known(key, flow, seg, now) {
        return (Some(r), None);
    }
    let fwd = unsafe { BERTH_NAT_FWD.get(&flow.key()) }.copied();
    let again = match fwd {
        Some(f) if f.backend_addr_be == backend.addr_be && f.backend_port_be == backend.port_be => {
            let mut remapped = *key;
            remapped.dst_port_be = f.remap_port_be;
            nat_ingress_known(&remapped, flow, seg, now)
        }
        _ => None,
    };
    (again, fwd)
}

/// A tracked flow refused: only when the established table has no room
/// for it.
#[inline(always)]
fn known_refused(flow: &Flow, backend: &Backend, ifindex: u32) {
    flow_log_refused(&refused(
        FLOW_EV_REJECT_FULL,
        flow,
        backend.addr_be,
        backend.port_be,
        ifindex,
    ));
    dp_log(EV_NAT_FULL, flow.src_addr_be, 0, 0, 0);
}

/// [`ct_track_ingress`] for a packet that cannot open a flow, on a service
/// answer from the cache (`svc_cache.rs`): `None` when no tracked flow of
/// the packet is under that answer's container (the caller then takes
/// the full path, which looks the service up).
#[inline(always)]
pub(crate) fn ct_track_established(
    flow: &Flow,
    svc: &Service,
    data: usize,
    data_end: usize,
    now: u64,
    ifindex: u32,
) -> Option<Tracked> {
    let backend = &svc.backend;
    let seg = tcp_seg(flow, data, data_end);
    let key = nat_key(flow.proto, backend, flow.src_addr_be, flow.src_port_be);
    let known = ct_track_known(flow, backend, &seg, &key, now).0?;
    if known.is_err() {
        known_refused(flow, backend, ifindex);
    }
    Some(known.into())
}

/// The tracked flow of a client packet (refreshed, and promoted when it
/// completes the handshake), or a new one when the packet may open one.
#[inline(always)]
pub(crate) fn ct_track_ingress(
    flow: &Flow,
    svc: &Service,
    data: usize,
    data_end: usize,
    now: u64,
    ifindex: u32,
) -> Tracked {
    let backend = &svc.backend;
    let seg = if flow.proto == PROTO_TCP {
        tcp_seg(flow, data, data_end)
    } else {
        Seg::default()
    };
    let key = nat_key(flow.proto, backend, flow.src_addr_be, flow.src_port_be);
    let known = match ct_track_known(flow, backend, &seg, &key, now) {
        (Some(r), _) => r,
        (None, fwd) => {
            let wire = flow.key();
            // The host-address check of a wildcard mapping, here rather
            // than per packet: a tracked flow's entry holds the address
            // this check passed for (`nat_owns`), and the daemon ends the
            // flows of an address the host no longer has.
            if svc.wildcard && !is_host_addr(flow.dst_addr_be) {
                return Tracked::NotOurs;
            }
            return nat_open(flow, backend, &seg, key, &wire, fwd.is_some(), now, ifindex).into();
        }
    };
    if known.is_err() {
        known_refused(flow, backend, ifindex);
    }
    known.into()
}

/// A new flow: only a TCP SYN or a UDP datagram opens one, and only when
/// the receiving task's security groups allow it.
#[inline(always)]
fn nat_open(
    flow: &Flow,
    backend: &Backend,
    seg: &Seg,
    mut key: FlowKey,
    wire: &FlowKey,
    stale_fwd: bool,
    now: u64,
    ifindex: u32,
) -> Result<u16, ()> {
    if flow.proto == PROTO_TCP && !seg.opens() {
        count(Counter::NatNoFlow);
        return Err(());
    }
    let reject = |kind| {
        flow_log_refused(&refused(
            kind,
            flow,
            backend.addr_be,
            backend.port_be,
            ifindex,
        ));
        Err(())
    };
    if !crate::policy::ingress_allows(
        flow.proto,
        flow.src_addr_be,
        backend.addr_be,
        backend.port_be,
        flow.src_port_be,
    ) {
        crate::stats::binding_count_refused(backend.binding);
        return reject(FLOW_EV_REJECT_POLICY);
    }
    let remapped = !nat_tuple_free(&key);
    if remapped {
        let picked = nat_pick_port(flow, &key);
        dp_log(
            EV_CLASH,
            flow.src_addr_be,
            0,
            ports(flow.src_port_be, flow.dst_port_be),
            picked.map_or(0, |p| u32::from(u16::from_be(p))),
        );
        let Ok(port) = picked else {
            return reject(FLOW_EV_REJECT_FULL);
        };
        key.dst_port_be = port;
        let f = NatFwd {
            backend_addr_be: backend.addr_be,
            backend_port_be: backend.port_be,
            remap_port_be: key.dst_port_be,
        };
        if BERTH_NAT_FWD.insert(wire, &f, BPF_ANY).is_err() {
            count(Counter::NatPortRemapFailed);
            return reject(FLOW_EV_REJECT_FULL);
        }
        count(Counter::NatPortRemap);
    } else if stale_fwd {
        let _ = BERTH_NAT_FWD.remove(wire);
    }
    let (flags, wscale, seq_end, max_win) = ct_init(flow.proto, seg);
    let entry = NatEntry {
        host_addr_be: flow.dst_addr_be,
        host_port_be: flow.dst_port_be,
        flags,
        _pad: 0,
        last_seen_ns: now,
        client_port_be: flow.src_port_be,
        wscale,
        seq_end,
        max_win,
        binding: backend.binding,
        packets: [1, 0],
        bytes: [u64::from(flow.tot_len), 0],
        opened_ns: now,
        ifindex,
        tcp_flags: [flow.tcp_flags & LOGGED_TCP_FLAGS, 0],
        _pad3: 0,
    };
    if ct_insert_new(&nat_tables(), &key, &entry).is_err() {
        if remapped {
            let _ = BERTH_NAT_FWD.remove(wire);
        }
        return reject(FLOW_EV_REJECT_FULL);
    }
    crate::stats::binding_count_opened(backend.binding);
    Ok(key.dst_port_be)
}

/// A client source port whose reply tuple no flow uses (see
/// [`nat_remap_port`]); `Err` after [`NAT_REMAP_TRIES`] taken ones.
#[inline(always)]
fn nat_pick_port(flow: &Flow, key: &FlowKey) -> Result<u16, ()> {
    let mut k = *key;
    let (sport, hport) = (
        u16::from_be(flow.src_port_be),
        u16::from_be(flow.dst_port_be),
    );
    for i in 0..NAT_REMAP_TRIES {
        k.dst_port_be = nat_remap_port(flow.src_addr_be, sport, hport, i).to_be();
        if nat_tuple_free(&k) {
            return Ok(k.dst_port_be);
        }
    }
    count(Counter::NatPortRemapFailed);
    Err(())
}

/// The tracked flow a container's packet replies to, refreshed; a UDP flow
/// becomes established with its first reply. `Ok(None)`: no tracked flow
/// (the packet is not berth's). `Err`: drop (established table full).
#[inline(always)]
pub(crate) fn ct_lookup_reply(
    flow: &Flow,
    data: usize,
    data_end: usize,
    log: bool,
) -> Result<Option<ReplyXlate>, ()> {
    let key = flow.key();
    let seg = if flow.proto == PROTO_TCP {
        tcp_seg(flow, data, data_end)
    } else {
        Seg::default()
    };
    if let Some(e) = BERTH_NAT.get_ptr_mut(&key) {
        ct_refresh(e, flow.proto, &seg, DIR_REPLY, ct_now());
        nat_count(e, DIR_REPLY, flow);
        return Ok(Some(ReplyXlate::of(e)));
    }
    let Some(e) = BERTH_NAT_NEW.get_ptr_mut(&key) else {
        return Ok(None);
    };
    ct_refresh(e, flow.proto, &seg, DIR_REPLY, ct_now());
    nat_count(e, DIR_REPLY, flow);
    let x = ReplyXlate::of(e);
    if flow.proto == PROTO_UDP && ct_promote(&nat_tables_logged(log), &key, e).is_err() {
        // The flow as its client sent it: the reply's tuple reversed.
        flow_log_refused(&Refused {
            kind: FLOW_EV_REJECT_FULL,
            proto: flow.proto,
            client_be: flow.dst_addr_be,
            client_port_be: x.client_port_be,
            host_be: x.host_addr_be,
            host_port_be: x.host_port_be,
            ctr_be: flow.src_addr_be,
            ctr_port_be: flow.src_port_be,
            ip_len: flow.tot_len,
            tcp_flags: 0,
            ifindex: unsafe { (*e).ifindex },
        });
        return Err(());
    }
    Ok(Some(x))
}

/// A tracked flow by its reply tuple, established or not.
#[inline(always)]
pub(crate) fn nat_get(key: &FlowKey) -> Option<NatEntry> {
    if let Some(e) = unsafe { BERTH_NAT.get(key) } {
        return Some(*e);
    }
    unsafe { BERTH_NAT_NEW.get(key) }.copied()
}
