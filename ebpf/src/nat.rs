//! Address translation shared by the TC and XDP programs. The decisions
//! (which mapping, which flow entry) are made here; how bytes and checksums
//! are rewritten depends on the hook, behind [`Rewriter`].
//!
//! Flow tracking (README "How the datapath behaves"): a flow's entry is
//! keyed by its reply tuple as the container sends it. A TCP SYN or a first
//! UDP datagram creates it in BERTH_NAT_NEW (LRU: never refuses, evicts
//! the least recently used unestablished flow); the client's ACK of the
//! container's SYN-ACK (TCP) or the container's first reply (UDP) moves it
//! to BERTH_NAT (never evicts). When a new flow's reply tuple is taken by
//! another flow, the new one gets another client source port towards the
//! container, remembered in BERTH_NAT_FWD.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use berth_maps::{
    nat_remap_port, Backend, Counter, FlowKey, NatEntry, NatFwd, ServiceKey, NAT_F_ESTABLISHED,
    NAT_F_REPLIED, NAT_F_SEQ_FWD, NAT_REMAP_TRIES, PROTO_TCP, PROTO_UDP,
};

use crate::{
    maps::{count, BERTH_HOST_ADDRS, BERTH_NAT, BERTH_NAT_FWD, BERTH_NAT_NEW, BERTH_SERVICES},
    parse::{flow_key, Flow, IP_DST_OFF, IP_SRC_OFF},
    tcp::{tcp_completes, tcp_init, tcp_seg, tcp_update, Seg, TcpEvent, Track},
};

const EEXIST: i32 = -17;
const DIR_CLIENT: usize = 0;
const DIR_REPLY: usize = 1;

/// One side of a flow to rewrite: address at `addr_off`, port at `port_off`.
#[derive(Clone, Copy)]
pub struct Rewrite {
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

/// Byte and checksum rewriting for one hook (TC: skb helpers that know about
/// CHECKSUM_PARTIAL; XDP: direct writes and RFC 1624 arithmetic).
pub trait Rewriter {
    /// Rewrite address and port, fix the IPv4 and L4 checksums, decrement
    /// the TTL. `Err` means the packet could not be written.
    fn rewrite(&mut self, flow: &Flow, rw: &Rewrite) -> Result<(), ()>;
}

/// `sport_be`: the client source port towards the container (the
/// client's own unless a clash remapped it).
#[inline(always)]
pub fn ingress_rewrite(flow: &Flow, backend: &Backend, sport_be: u16) -> Rewrite {
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
pub struct ReplyXlate {
    pub host_addr_be: u32,
    pub host_port_be: u16,
    pub client_port_be: u16,
}

impl ReplyXlate {
    #[inline(always)]
    fn of(e: *const NatEntry) -> Self {
        unsafe {
            ReplyXlate {
                host_addr_be: (*e).host_addr_be,
                host_port_be: (*e).host_port_be,
                client_port_be: (*e).client_port_be,
            }
        }
    }
}

#[inline(always)]
pub fn reply_rewrite(flow: &Flow, entry: &ReplyXlate) -> Rewrite {
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

/// The mapping for a packet arriving on an uplink: an exact host address
/// first, then the wildcard if the destination is one of the host's own.
#[inline(always)]
pub fn lb4_lookup_service(flow: &Flow) -> Option<Backend> {
    let mut key = ServiceKey {
        host_addr_be: flow.dst_addr_be,
        host_port_be: flow.dst_port_be,
        proto: flow.proto,
        _pad: 0,
    };
    if let Some(b) = unsafe { BERTH_SERVICES.get(&key) } {
        return Some(*b);
    }
    unsafe { BERTH_HOST_ADDRS.get(&flow.dst_addr_be) }?;
    key.host_addr_be = 0;
    unsafe { BERTH_SERVICES.get(&key) }.copied()
}

#[inline(always)]
fn track(e: *mut NatEntry) -> Track<'static> {
    unsafe {
        Track {
            flags: &mut (*e).flags,
            wscale: &mut (*e).wscale,
            seq_end: &mut (*e).seq_end,
            max_win: &mut (*e).max_win,
        }
    }
}

/// Refresh a tracked flow with a packet travelling in direction `d`.
#[inline(always)]
fn nat_refresh(e: *mut NatEntry, flow: &Flow, seg: &Seg, d: usize, now: u64) {
    unsafe {
        (*e).last_seen_ns = now;
        if d == DIR_REPLY {
            (*e).flags |= NAT_F_REPLIED;
        }
    }
    if flow.proto == PROTO_TCP && tcp_update(&mut track(e), d, seg) == TcpEvent::OutOfWindow {
        count(Counter::TcpOutOfWindow);
    }
}

/// Move an unestablished flow to the established table. `Err`: that table
/// is full (the packet is dropped; the flow stays unestablished).
#[inline(always)]
fn nat_promote(key: &FlowKey, e: *mut NatEntry) -> Result<(), ()> {
    let mut entry = unsafe { *e };
    entry.flags |= NAT_F_ESTABLISHED;
    match BERTH_NAT.insert(key, &entry, 1) {
        Ok(()) => {}
        Err(err) if err == EEXIST => {}
        Err(_) => {
            count(Counter::NatTableFull);
            return Err(());
        }
    }
    let _ = BERTH_NAT_NEW.remove(key);
    Ok(())
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

/// What a client packet's tracked flow says: `Some(Ok(port))` forward with
/// this client port towards the container, `Some(Err)` drop, `None` not
/// this flow.
#[inline(always)]
fn nat_ingress_known(key: &FlowKey, flow: &Flow, seg: &Seg, now: u64) -> Option<Result<u16, ()>> {
    if let Some(e) = BERTH_NAT.get_ptr_mut(key) {
        if !nat_owns(e, flow) {
            return None;
        }
        nat_refresh(e, flow, seg, DIR_CLIENT, now);
        return Some(Ok(key.dst_port_be));
    }
    let e = BERTH_NAT_NEW.get_ptr_mut(key)?;
    if !nat_owns(e, flow) {
        return None;
    }
    nat_refresh(e, flow, seg, DIR_CLIENT, now);
    if flow.proto == PROTO_TCP && tcp_completes(&track(e), seg) && nat_promote(key, e).is_err() {
        return Some(Err(()));
    }
    Some(Ok(key.dst_port_be))
}

#[inline(always)]
fn nat_tuple_free(key: &FlowKey) -> bool {
    unsafe { BERTH_NAT.get(key).is_none() && BERTH_NAT_NEW.get(key).is_none() }
}

/// The tracked flow of a client packet (refreshed, and promoted when it
/// completes the handshake), or a new one when the packet may open one.
/// `Ok`: the client source port towards the container. `Err`: drop (no
/// flow and not a SYN, refused by policy, no port free, table full).
#[inline(always)]
pub fn ct_track_ingress(
    flow: &Flow,
    backend: &Backend,
    data: usize,
    data_end: usize,
) -> Result<u16, ()> {
    let seg = if flow.proto == PROTO_TCP {
        tcp_seg(flow, data, data_end)
    } else {
        Seg::default()
    };
    let mut key = flow_key(
        backend.addr_be,
        flow.src_addr_be,
        backend.port_be,
        flow.src_port_be,
        flow.proto,
    );
    let now = unsafe { bpf_ktime_get_ns() };
    // The common case: one lookup in BERTH_NAT.
    if let Some(r) = nat_ingress_known(&key, flow, &seg, now) {
        return r;
    }
    // A flow whose reply tuple clashed lives under its remapped port.
    let wire = flow_key(
        flow.src_addr_be,
        flow.dst_addr_be,
        flow.src_port_be,
        flow.dst_port_be,
        flow.proto,
    );
    let fwd = unsafe { BERTH_NAT_FWD.get(&wire) }.copied();
    if let Some(f) = fwd {
        if f.backend_addr_be == backend.addr_be && f.backend_port_be == backend.port_be {
            key.dst_port_be = f.remap_port_be;
            if let Some(r) = nat_ingress_known(&key, flow, &seg, now) {
                return r;
            }
        }
    }
    nat_open(flow, backend, &seg, &wire, fwd.is_some(), now)
}

/// A new flow: only a TCP SYN or a UDP datagram opens one, and only when
/// the receiving task's security groups allow it.
#[inline(always)]
fn nat_open(
    flow: &Flow,
    backend: &Backend,
    seg: &Seg,
    wire: &FlowKey,
    stale_fwd: bool,
    now: u64,
) -> Result<u16, ()> {
    if flow.proto == PROTO_TCP && !seg.opens() {
        count(Counter::NatNoFlow);
        return Err(());
    }
    if !crate::policy::ingress_allows(
        flow.proto,
        flow.src_addr_be,
        backend.addr_be,
        backend.port_be,
        flow.src_port_be,
    ) {
        return Err(());
    }
    let mut key = flow_key(
        backend.addr_be,
        flow.src_addr_be,
        backend.port_be,
        flow.src_port_be,
        flow.proto,
    );
    let remapped = !nat_tuple_free(&key);
    if remapped {
        key.dst_port_be = nat_pick_port(flow, &key)?;
        let f = NatFwd {
            backend_addr_be: backend.addr_be,
            backend_port_be: backend.port_be,
            remap_port_be: key.dst_port_be,
        };
        if BERTH_NAT_FWD.insert(wire, &f, 0).is_err() {
            count(Counter::NatPortRemapFailed);
            return Err(());
        }
        count(Counter::NatPortRemap);
    } else if stale_fwd {
        let _ = BERTH_NAT_FWD.remove(wire);
    }
    let (wscale, seq_end, max_win) = if flow.proto == PROTO_TCP {
        tcp_init(seg)
    } else {
        ([0xff; 2], [0; 2], [0; 2])
    };
    let entry = NatEntry {
        host_addr_be: flow.dst_addr_be,
        host_port_be: flow.dst_port_be,
        flags: if flow.proto == PROTO_TCP {
            NAT_F_SEQ_FWD
        } else {
            0
        },
        _pad: 0,
        last_seen_ns: now,
        client_port_be: flow.src_port_be,
        wscale,
        seq_end,
        max_win,
        _pad2: 0,
    };
    // BPF_NOEXIST: a concurrent insert of the same flow on another CPU
    // wins harmlessly. An LRU table makes room rather than refuse.
    match BERTH_NAT_NEW.insert(&key, &entry, 1) {
        Ok(()) => Ok(key.dst_port_be),
        Err(e) if e == EEXIST => Ok(key.dst_port_be),
        Err(_) => {
            if remapped {
                let _ = BERTH_NAT_FWD.remove(wire);
            }
            count(Counter::NatTableFull);
            Err(())
        }
    }
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
pub fn ct_lookup_reply(
    flow: &Flow,
    data: usize,
    data_end: usize,
) -> Result<Option<ReplyXlate>, ()> {
    let key = flow_key(
        flow.src_addr_be,
        flow.dst_addr_be,
        flow.src_port_be,
        flow.dst_port_be,
        flow.proto,
    );
    let seg = if flow.proto == PROTO_TCP {
        tcp_seg(flow, data, data_end)
    } else {
        Seg::default()
    };
    if let Some(e) = BERTH_NAT.get_ptr_mut(&key) {
        nat_refresh(e, flow, &seg, DIR_REPLY, unsafe { bpf_ktime_get_ns() });
        return Ok(Some(ReplyXlate::of(e)));
    }
    let Some(e) = BERTH_NAT_NEW.get_ptr_mut(&key) else {
        return Ok(None);
    };
    nat_refresh(e, flow, &seg, DIR_REPLY, unsafe { bpf_ktime_get_ns() });
    let x = ReplyXlate::of(e);
    if flow.proto == PROTO_UDP {
        nat_promote(&key, e)?;
    }
    Ok(Some(x))
}

/// A tracked flow by its reply tuple, established or not.
#[inline(always)]
pub fn nat_get(key: &FlowKey) -> Option<NatEntry> {
    if let Some(e) = unsafe { BERTH_NAT.get(key) } {
        return Some(*e);
    }
    unsafe { BERTH_NAT_NEW.get(key) }.copied()
}
