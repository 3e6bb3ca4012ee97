//! IPv6 fragments (issue 15), as `frag.rs` does for IPv4. Only a
//! datagram's first fragment (offset 0, M set) carries the ports, so it is
//! judged and translated like any packet and what it decided is remembered
//! in `BERTH_FRAGS6` per (source, destination, 32-bit identification),
//! the datagram's name in IPv6 (no protocol: a fragment header names the
//! first header of the fragmentable part); the later fragments follow it:
//!
//! - DNAT at an uplink (`berth_ingress6`): (client, host address) -> the
//!   container address; a later fragment gets the new destination address.
//! - Reply SNAT at the bridge (`berth_reply6`): (container, client) -> the
//!   host address; a later fragment gets the new source address.
//! - Policy at a container's veth (`policy6.rs`): the verdict, allow or
//!   deny, per veth and direction as IPv4's (`frag.rs`); a later fragment
//!   is never judged on its own, and never by another port's verdict.
//!
//! A later fragment has no L4 header, and the first fragment's incremental
//! L4 checksum update covers the whole datagram, so only the address and
//! the hop limit change. IPv6 has no header checksum; `skb->csum` (a
//! receiving NIC's `CHECKSUM_COMPLETE`) takes the difference, which no
//! other change balances.
//!
//! A first fragment an uplink drops (refused by the security groups, a
//! spoofed source, a full table, a TCP segment of no flow) leaves its
//! verdict too, deny: its later fragments are dropped there (counted
//! `frag_denied`), not queued by the host's reassembly until they time
//! out. A later fragment nothing was remembered for (its first was lost, came
//! late, or was never ours) is left to the host at an uplink or the bridge
//! (it may be the host's own or a container's own traffic; alone it never
//! reassembles into anything), counted `fragment`; at a container's veth
//! with policy it is dropped (`frag_no_first`). An atomic fragment (offset
//! 0, M clear) is a whole packet (`parse6.rs`).
//!
//! Refusals live apart, as IPv4's (see `frag.rs`, which says why and what
//! an evicted one costs per key kind): allowed and translated datagrams in
//! `BERTH_FRAGS6`, refused ones in `BERTH_FRAGS6_DENY`, so a flood of
//! refused first fragments never evicts an allowed datagram in flight.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, bpf_csum_update, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::LruHashMap,
    programs::TcContext,
};
use berth_maps::{
    tail::{self, FRAG6_CB_DNAT, FRAG6_CB_SNAT},
    Counter, FragEntry6, FragKey6, FRAGS6_CAPACITY, FRAGS6_DENY_CAPACITY, FRAG_K_DNAT,
    FRAG_K_POLICY, FRAG_K_POLICY_OUT, FRAG_K_SNAT, FRAG_TIMEOUT_NS, FRAG_V_ALLOW, FRAG_V_DENY,
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    fib::fib_lookup_v6,
    hook::Hook as _,
    maps::count,
    parse::{ptr_at, ETH_LEN},
    parse6::{parse_packet6, Flow6, Frag6, Parsed6, IP6_HDR_LEN},
    sys::BPF_ANY,
};

/// What the first fragment of each IPv6 datagram decided
/// (`berth_maps::FRAGS6_MAP`).
#[map]
pub(crate) static BERTH_FRAGS6: LruHashMap<FragKey6, FragEntry6> =
    LruHashMap::pinned(FRAGS6_CAPACITY, 0);

/// The first fragments refused (`berth_maps::FRAGS6_DENY_MAP`), apart from
/// the allowed ones.
#[map]
pub(crate) static BERTH_FRAGS6_DENY: LruHashMap<FragKey6, FragEntry6> =
    LruHashMap::pinned(FRAGS6_DENY_CAPACITY, 0);

/// The 4-byte word of the fixed header that holds the hop limit (payload
/// length, next header, hop limit), for the checksum difference.
const IP6_WORD1_OFF: usize = ETH_LEN + 4;
const IP6_SRC_OFF: usize = ETH_LEN + 8;
const IP6_DST_OFF: usize = ETH_LEN + 24;

#[inline(always)]
fn key6(kind: u8, src: &[u8; 16], dst: &[u8; 16], id_be: u32) -> FragKey6 {
    FragKey6 {
        src_addr: *src,
        dst_addr: *dst,
        id_be,
        kind,
        _pad: [0; 3],
        ifindex: 0,
    }
}

/// The key of a security-group verdict at veth `ifindex`, on what the
/// container sends (`from`) or receives.
#[inline(always)]
fn policy_key6(
    (ifindex, from): (u32, bool),
    src: &[u8; 16],
    dst: &[u8; 16],
    id_be: u32,
) -> FragKey6 {
    let kind = if from {
        FRAG_K_POLICY_OUT
    } else {
        FRAG_K_POLICY
    };
    FragKey6 {
        ifindex,
        ..key6(kind, src, dst, id_be)
    }
}

/// The key of a first fragment's datagram.
#[inline(always)]
fn frag6_key_of_flow(kind: u8, f: &Flow6) -> FragKey6 {
    key6(kind, &f.src_addr, &f.dst_addr, f.frag_id_be)
}

/// The key of a fragment's datagram (a later one, or a first one no flow
/// was parsed from).
#[inline(always)]
fn frag6_key_of_frag(kind: u8, f: &Frag6) -> FragKey6 {
    key6(kind, &f.src_addr, &f.dst_addr, f.frag_id_be)
}

/// Remember what a first fragment decided (replacing any older datagram's
/// entry with the same key): an allowed one in `BERTH_FRAGS6`, a refused
/// one in `BERTH_FRAGS6_DENY`. The maps are LRU: they never refuse.
#[inline(always)]
fn frag6_remember(key: &FragKey6, addr: &[u8; 16], verdict: u8) {
    let e = FragEntry6 {
        addr: *addr,
        verdict,
        _pad: [0; 7],
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    if verdict == FRAG_V_ALLOW {
        let _ = BERTH_FRAGS6.insert(key, &e, BPF_ANY);
    } else {
        let _ = BERTH_FRAGS6.remove(key);
        let _ = BERTH_FRAGS6_DENY.insert(key, &e, BPF_ANY);
    }
}

/// What the first fragment of this fragment's datagram decided, if it was
/// seen recently: the allowed table first (a newer refusal removed what it
/// held), then the refused one.
#[inline(always)]
fn frag6_lookup(key: &FragKey6) -> Option<FragEntry6> {
    let e = match unsafe { BERTH_FRAGS6.get(key) } {
        Some(e) => *e,
        None => unsafe { BERTH_FRAGS6_DENY.get(key) }.copied()?,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(e.created_ns) > FRAG_TIMEOUT_NS {
        return None;
    }
    Some(e)
}

/// A first fragment NAT66 translated at an uplink (`to`: the container).
#[inline(always)]
pub(crate) fn frag6_first_dnat(f: &Flow6, to: &[u8; 16]) {
    frag6_remember(&frag6_key_of_flow(FRAG_K_DNAT, f), to, FRAG_V_ALLOW);
}

/// A packet an uplink dropped before translating it: when a first
/// fragment, its datagram's later fragments are dropped there too.
#[inline(always)]
pub(crate) fn frag6_first_dropped(f: &Flow6) {
    if f.first_frag {
        frag6_remember(&frag6_key_of_flow(FRAG_K_DNAT, f), &[0; 16], FRAG_V_DENY);
    }
}

/// A first fragment NAT66 translated at the bridge (`from`: the host
/// address it now leaves from).
#[inline(always)]
pub(crate) fn frag6_first_snat(f: &Flow6, from: &[u8; 16]) {
    frag6_remember(&frag6_key_of_flow(FRAG_K_SNAT, f), from, FRAG_V_ALLOW);
}

/// The identification of a first fragment, whose verdict at a
/// container's veth is kept for its datagram: `FIRST | id`, or 0 for a
/// packet that is not one. A plain integer rather than `Option<u32>`:
/// `None` leaves the payload undefined, and LLVM spills that undefined
/// register, which the verifier refuses (`R0 !read_ok`).
#[inline(always)]
pub(crate) fn first_of(p: &Parsed6) -> u64 {
    match p {
        Parsed6::Flow(f) if f.first_frag => FIRST | u64::from(f.frag_id_be),
        Parsed6::FirstFrag(f) => FIRST | u64::from(f.frag_id_be),
        _ => 0,
    }
}

/// The mark of a first fragment in [`first_of`]'s value.
const FIRST: u64 = 1 << 32;

/// A TCP/UDP first fragment too short to hold its header, where policy
/// applies: refused (the tiny-fragment attack of RFC 1858 would hide the
/// flags or ports in a later fragment), counted as IPv4's.
#[inline(always)]
pub(crate) fn frag6_tiny(f: &Frag6) -> bool {
    let tiny = f.proto == PROTO_TCP || f.proto == PROTO_UDP;
    if tiny {
        count(Counter::FragDenied);
    }
    tiny
}

/// Remember a first fragment's (`first`, from [`first_of`]) security-group
/// verdict for its datagram `src -> dst` at `at`: (the veth's ifindex,
/// whether the container sends it).
#[inline(always)]
pub(crate) fn frag6_first_judged(
    first: u64,
    at: (u32, bool),
    src: &[u8; 16],
    dst: &[u8; 16],
    allowed: bool,
) {
    if first & FIRST == 0 {
        return;
    }
    let id_be = first as u32;
    let v = if allowed { FRAG_V_ALLOW } else { FRAG_V_DENY };
    frag6_remember(&policy_key6(at, src, dst, id_be), &[0; 16], v);
}

/// A later fragment at a container's veth with policy (`at` as in
/// [`frag6_first_judged`]): what its first fragment was judged there,
/// else dropped.
#[inline(always)]
pub(crate) fn frag6_follow(f: &Frag6, at: (u32, bool)) -> bool {
    match frag6_lookup(&policy_key6(at, &f.src_addr, &f.dst_addr, f.frag_id_be)) {
        Some(e) if e.verdict == FRAG_V_ALLOW => true,
        Some(_) => {
            count(Counter::FragDenied);
            false
        }
        None => {
            count(Counter::FragNoFirst);
            false
        }
    }
}

/// Rewrites a later fragment's address at `addr_off` to `new` and
/// decrements its hop limit, by direct writes (the headers were pulled),
/// and adds the difference to `skb->csum` (a no-op unless
/// `CHECKSUM_COMPLETE`).
#[inline(always)]
fn frag6_rewrite(
    ctx: &TcContext,
    f: &Frag6,
    addr_off: usize,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), ()> {
    let (d, e) = (ctx.data(), ctx.data_end());
    let word = ptr_at::<[u8; 4]>(d, e, IP6_WORD1_OFF).ok_or(())?;
    let addr = ptr_at::<[u8; 16]>(d, e, addr_off).ok_or(())?;
    let mut old_word = unsafe { core::ptr::read_unaligned(word) };
    let mut new_word = old_word;
    new_word[3] = f.hop_limit - 1;
    let mut old_addr = *old;
    let mut new_addr = *new;
    unsafe {
        let diff = bpf_csum_diff(
            old_addr.as_mut_ptr().cast(),
            16,
            new_addr.as_mut_ptr().cast(),
            16,
            0,
        );
        if diff < 0 {
            return Err(());
        }
        let diff = bpf_csum_diff(
            old_word.as_mut_ptr().cast(),
            4,
            new_word.as_mut_ptr().cast(),
            4,
            diff as u32,
        );
        if diff < 0 {
            return Err(());
        }
        core::ptr::write_unaligned(word, new_word);
        core::ptr::write_unaligned(addr, new_addr);
        let _ = bpf_csum_update(ctx.skb.skb, diff as u32);
    }
    Ok(())
}

/// Rewrites and sends a later fragment now addressed `src -> dst`.
#[inline(always)]
fn frag6_translate(
    ctx: &TcContext,
    f: &Frag6,
    addr_off: usize,
    (old, new): (&[u8; 16], &[u8; 16]),
    (src, dst): (&[u8; 16], &[u8; 16]),
) -> i32 {
    if f.hop_limit <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    if frag6_rewrite(ctx, f, addr_off, old, new).is_err() {
        return TC_ACT_SHOT;
    }
    count(Counter::FragXlate);
    let len = f.payload_len.saturating_add(IP6_HDR_LEN as u16);
    let next = fib_lookup_v6(ctx, f.proto, src, dst, ctx.in_ifindex(), ctx.mtu_len(len));
    ctx.deliver(next)
}

/// `f` with its L4 offset unchanged but unknown to the verifier beyond a
/// bound (stored in and read back from `cb[1]`, which the verifier does
/// not follow): every chain of extension headers, the fragment header's
/// included, then reaches the NAT with the same state, and the verifier
/// walks the flow tracking once for all of them instead of once per chain
/// (a first fragment's chains, now translated, would otherwise take
/// `berth_ingress6` past its instruction budget). `None`: past the bound,
/// which the parser never returns.
#[inline(always)]
pub(crate) fn flow6_merged(ctx: &TcContext, mut f: Flow6) -> Option<Flow6> {
    const MAX_L4_OFF: usize = 16 * 1024;
    let off = unsafe {
        let cb = &raw mut (*ctx.skb.skb).cb[1];
        core::ptr::write_volatile(cb, f.l4_off as u32);
        core::ptr::read_volatile(cb) as usize
    };
    if off > MAX_L4_OFF {
        return None;
    }
    f.l4_off = off;
    Some(f)
}

/// A later fragment at an uplink (`cb`: [`FRAG6_CB_DNAT`]) or the bridge
/// ([`FRAG6_CB_SNAT`]): to `berth_frag6`. If its slot is empty (counted
/// `ipv6_no_program`), the fragment passes untranslated, as all IPv6 did
/// before NAT66.
#[inline(always)]
pub(crate) fn to_frag6(ctx: &TcContext, cb: u32) -> i32 {
    unsafe {
        (*ctx.skb.skb).cb[0] = cb;
    }
    crate::tails::tail_call(ctx, tail::FRAG6);
    TC_ACT_OK
}

/// What a container sends, judged already, at its veth: a fragment whose
/// fragment header follows the fixed header (as a sender's kernel writes
/// it) is translated here, by NAT66's reply SNAT: `berth_reply6` itself,
/// tail-called through its slot (`berth_frag6`, which later fragments
/// reach, has no stack left for NAT66's reply beside its own work; the
/// bridge may reassemble fragments, `br_netfilter`, into a datagram
/// longer than the uplink's MTU, which BPF cannot cut again); anything
/// else goes on to the bridge, where `berth_reply6` translates it.
#[inline(always)]
pub(crate) fn from_ctr6(ctx: &TcContext) -> i32 {
    let next = ptr_at::<u8>(ctx.data(), ctx.data_end(), ETH_LEN + 6);
    if next.is_some_and(|n| unsafe { *n } == crate::parse6::NEXTHDR_FRAGMENT) {
        crate::tails::tail_call(ctx, tail::REPLY6);
    }
    TC_ACT_OK
}

/// An IPv6 fragment, tail-called (slot `FRAG6`) by `berth_ingress6` or
/// `berth_reply6` with a later fragment (`cb[0]` says which: it follows
/// what its datagram's first fragment got).
#[classifier]
pub(crate) fn berth_frag6(ctx: TcContext) -> i32 {
    let cb = unsafe { (*ctx.skb.skb).cb[0] };
    let Parsed6::Fragment(f) = parse_packet6(ctx.data(), ctx.data_end(), ctx.len() as usize) else {
        return TC_ACT_OK;
    };
    if cb == FRAG6_CB_DNAT {
        ingress6_frag(&ctx, &f)
    } else if cb == FRAG6_CB_SNAT {
        reply6_frag(&ctx, &f)
    } else {
        TC_ACT_OK
    }
}

/// A later fragment at an uplink goes where its first fragment went, or
/// nowhere when its first was dropped.
#[inline(always)]
fn ingress6_frag(ctx: &TcContext, f: &Frag6) -> i32 {
    let Some(e) = frag6_lookup(&frag6_key_of_frag(FRAG_K_DNAT, f)) else {
        count(Counter::Fragment);
        return TC_ACT_OK;
    };
    if e.verdict != FRAG_V_ALLOW {
        count(Counter::FragDenied);
        return TC_ACT_SHOT;
    }
    frag6_translate(
        ctx,
        f,
        IP6_DST_OFF,
        (&f.dst_addr, &e.addr),
        (&f.src_addr, &e.addr),
    )
}

/// A later fragment of a container's datagram at the bridge leaves from
/// the host address its first fragment got.
#[inline(always)]
fn reply6_frag(ctx: &TcContext, f: &Frag6) -> i32 {
    let Some(e) = frag6_lookup(&frag6_key_of_frag(FRAG_K_SNAT, f)) else {
        count(Counter::Fragment);
        return TC_ACT_OK;
    };
    frag6_translate(
        ctx,
        f,
        IP6_SRC_OFF,
        (&f.src_addr, &e.addr),
        (&e.addr, &f.dst_addr),
    )
}
