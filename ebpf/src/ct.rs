//! Connection tracking shared by the two kinds of tracked flow: published
//! ports (`BERTH_NAT` / `BERTH_NAT_NEW`, `nat.rs`) and security groups
//! (`BERTH_CT` / `BERTH_CT_NEW`, `policy.rs`). Both keep a flow in an LRU
//! table until it is established, then move it to a table that never
//! evicts; their entries differ but share the tracking fields and flag
//! bits, which is all this module touches.
use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    maps::{HashMap, LruHashMap},
};
use berth_maps::{
    Counter, CtEntry, FlowKey, FlowKey6, NatEntry, NatEntry6, CT_F_ESTABLISHED, CT_F_REPLIED,
    CT_F_SEQ_FWD, PROTO_TCP,
};

use crate::{
    dplog::{dp_log, EV_NAT_FULL},
    maps::count,
    sys::{BPF_NOEXIST, EEXIST},
    tcp::{tcp_init, tcp_update, Seg, TcpEvent, Track},
};

/// Direction of a packet within its flow: as the flow's first packet went.
pub(crate) const DIR_ORIG: usize = 0;
/// Direction of a packet within its flow: the reply.
pub(crate) const DIR_REPLY: usize = 1;

// The tracker writes one set of flag bits into both kinds of entry.
const _: () = assert!(
    CT_F_REPLIED == berth_maps::NAT_F_REPLIED
        && CT_F_ESTABLISHED == berth_maps::NAT_F_ESTABLISHED
        && CT_F_SEQ_FWD == berth_maps::NAT_F_SEQ_FWD
);

/// A tracked flow's entry: where its tracking fields are.
pub(crate) trait Conn: Copy {
    fn last_seen(e: *mut Self) -> *mut u64;
    fn track(e: *mut Self) -> Track<'static>;
}

macro_rules! impl_conn {
    ($t:ty) => {
        impl Conn for $t {
            #[inline(always)]
            fn last_seen(e: *mut Self) -> *mut u64 {
                unsafe { &mut (*e).last_seen_ns }
            }

            #[inline(always)]
            fn track(e: *mut Self) -> Track<'static> {
                unsafe {
                    Track {
                        flags: &mut (*e).flags,
                        wscale: &mut (*e).wscale,
                        seq_end: &mut (*e).seq_end,
                        max_win: &mut (*e).max_win,
                    }
                }
            }
        }
    };
}
impl_conn!(NatEntry);
impl_conn!(CtEntry);
impl_conn!(NatEntry6);

/// A flow key of either family: what a full table's log line names.
pub(crate) trait Key {
    /// The IPv4 address the datapath log shows (0 for IPv6, whose lines
    /// do not carry one).
    fn log_addr(&self) -> u32;
}

impl Key for FlowKey {
    #[inline(always)]
    fn log_addr(&self) -> u32 {
        self.dst_addr_be
    }
}

impl Key for FlowKey6 {
    #[inline(always)]
    fn log_addr(&self) -> u32 {
        0
    }
}

/// The established and the unestablished table of one kind of flow, and
/// the counter a full established table is reported under.
pub(crate) struct Tables<K: 'static, V: 'static> {
    pub est: &'static HashMap<K, V>,
    pub new: &'static LruHashMap<K, V>,
    pub full: Counter,
    /// Whether a full table is written to the datapath log (a constant at
    /// each call: the published-port tables, except on `berth_from_ctr`'s
    /// paths; see `dplog`).
    pub log: bool,
}

/// The time a tracked flow was last seen: `CLOCK_MONOTONIC`, which the
/// daemon's expiry reads, at the kernel tick's resolution. The coarse clock
/// costs a load where the precise one cost ~30 ns per packet on a VM; a
/// flow expiring a tick early against timeouts of seconds is no change.
#[inline(always)]
pub(crate) fn ct_now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Refresh a tracked flow with a packet travelling in direction `d`.
#[inline(always)]
pub(crate) fn ct_refresh<V: Conn>(e: *mut V, proto: u8, seg: &Seg, d: usize, now: u64) {
    unsafe {
        *V::last_seen(e) = now;
    }
    let mut t = V::track(e);
    if d == DIR_REPLY {
        *t.flags |= CT_F_REPLIED;
    }
    if proto == PROTO_TCP && tcp_update(&mut t, d, seg) == TcpEvent::OutOfWindow {
        count(Counter::TcpOutOfWindow);
    }
}

/// Move an unestablished flow to the established table. `Err`: that table
/// is full (counted; the packet is dropped, the flow stays unestablished).
#[inline(always)]
pub(crate) fn ct_promote<K: Key, V: Conn>(t: &Tables<K, V>, key: &K, e: *mut V) -> Result<(), ()> {
    // The entry is inserted straight from the table it lives in, flagged in
    // place: a copy on the stack would cost a NAT entry's 88 bytes of the
    // 512 a program has, and only userspace reads the flag.
    *V::track(e).flags |= CT_F_ESTABLISHED;
    match t.est.insert(key, unsafe { &*e }, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU promoted it first.
        Err(err) if err == EEXIST => {}
        Err(_) => {
            *V::track(e).flags &= !CT_F_ESTABLISHED;
            count(t.full);
            if t.log {
                dp_log(EV_NAT_FULL, key.log_addr(), 0, 0, 0);
            }
            return Err(());
        }
    }
    let _ = t.new.remove(key);
    Ok(())
}

/// Track a new flow as unestablished. A concurrent insert of the same flow
/// on another CPU wins harmlessly; the LRU table makes room rather than
/// refuse, so `Err` (counted) is rare.
#[inline(always)]
pub(crate) fn ct_insert_new<K, V: Conn>(t: &Tables<K, V>, key: &K, v: &V) -> Result<(), ()> {
    match t.new.insert(key, v, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(e) if e == EEXIST => Ok(()),
        Err(_) => {
            count(t.full);
            Err(())
        }
    }
}

/// Tracking fields of a flow opened by `seg` (a TCP SYN) or a first UDP /
/// ICMP echo packet: (flags, wscale, `seq_end`, `max_win`).
#[inline(always)]
pub(crate) fn ct_init(proto: u8, seg: &Seg) -> (u8, [u8; 2], [u32; 2], [u32; 2]) {
    if proto == PROTO_TCP {
        let (w, s, m) = tcp_init(seg);
        (CT_F_SEQ_FWD, w, s, m)
    } else {
        (0, [0xff; 2], [0; 2], [0; 2])
    }
}
