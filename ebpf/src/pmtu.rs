//! Path-MTU discovery through a published port. A client packet DNAT'd at
//! an uplink that is longer than the container route's MTU (the FIB says
//! `FRAG_NEEDED`, `fib.rs` `NextHop::TooBig`) is dropped, and its sender
//! is told, as a router (and iptables DNAT with conntrack) would tell it:
//! ICMP "fragmentation needed" (type 3 code 4, RFC 1191) with the route's
//! MTU, from the address the client sent to, quoting the packet as the
//! client sent it (the next hop is looked up before anything is
//! rewritten, so the frame is still untouched here).
//!
//! The packet itself becomes the answer, sent back out of the uplink it
//! came in by (Cilium's way): cut to its IP header and first L4 bytes (the
//! quote: 8 bytes for UDP, RFC 792; TCP's whole fixed 20-byte header, so a
//! checksum-offloaded segment's checksum field stays inside the skb), 28
//! bytes of new IPv4 and ICMP header put in front of it, the MACs swapped.
//! TC redirects it to the uplink's egress; XDP hands it to `berth_deliver`
//! (TC on the same device), which does the same.
//!
//! Decisions:
//! - IPv4 without DF: a BPF program cannot fragment, and the sender did
//!   not ask to be told; it is dropped (`too_big_no_df`), as by a router
//!   that cannot fragment. (Handing it to the kernel untranslated would
//!   deliver it to a host socket, never to the container.)
//! - Never answered (`frag_needed_suppressed`): a frame not sent to this
//!   host's MAC (broadcast, multicast), a source in 0.0.0.0/8, multicast
//!   or above, one of the host's own addresses (loopback and bridge
//!   sources were dropped earlier, `spoof.rs`), and anything over the
//!   per-CPU token bucket ([`PMTU_ICMP_PER_SEC`]): a spoofing sender cannot
//!   make berth an ICMP reflector, and the answer (70 to 82 bytes) is
//!   always shorter than the packet that caused it (longer than an MTU).
//! - ICMP is never answered with ICMP: only TCP and UDP flows get here.
//! - A flow the dropped packet opened (a new UDP flow, still only that
//!   packet in its entry) is forgotten, so nothing stays half-open for a
//!   packet the container never saw; an established flow stays.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT,
    },
    helpers::{
        bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
        bpf_xdp_get_buff_len,
    },
    macros::map,
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use berth_maps::{
    Backend, Counter, LogBucket, FRAG_K_DNAT, FRAG_V_DENY, PMTU_ICMP_BURST, PMTU_ICMP_PER_SEC,
    PROTO_TCP,
};

use crate::{
    ct::ct_now,
    fib::NextHop,
    frag::{frag_key_of_flow, frag_remember},
    hook::Hook,
    maps::{count, BERTH_NAT_FWD, BERTH_NAT_NEW},
    nat::nat_key,
    parse::{ptr_at, Flow, ETH_LEN, ICMP_DEST_UNREACH},
    service::is_host_addr,
};

/// ICMP "fragmentation needed and DF set" (of type 3, destination
/// unreachable).
const ICMP_FRAG_NEEDED: u8 = 4;
/// A new IPv4 header and an ICMP header: what the answer puts in front of
/// its quote.
pub(crate) const ICMP4_HDRS_LEN: usize = 20 + 8;
/// Longest quote: a 60-byte IPv4 header and a 20-byte TCP header.
const QUOTE_MAX: usize = 80;
const IP_DF: u8 = 0x40;
/// Precedence "internetwork control", as the kernel's ICMP errors.
const ICMP_ERR_TOS: u8 = 0xc0;
const ICMP_ERR_TTL: u8 = 64;

#[map]
static BERTH_PMTU_BUCKET: PerCpuArray<LogBucket> = PerCpuArray::with_max_entries(1, 0);

const NS_PER_TOKEN: u64 = 1_000_000_000 / PMTU_ICMP_PER_SEC;

/// What the hook needs to build the answer (and counts as
/// `frag_needed_sent` once it is on its way): the quote's length and sum,
/// and the header the answer starts with (its checksums computed).
pub(crate) struct FragNeeded {
    /// Bytes of the original packet kept, from its IPv4 header on.
    pub quote_len: usize,
    /// New Ethernet header (MACs swapped), IPv4 header and ICMP header.
    pub hdr: [u8; ETH_LEN + ICMP4_HDRS_LEN],
}

/// A packet of `flow` (tracked, with client port `sport_be` towards
/// `backend`) is longer than the route's `mtu`: answer or drop it.
#[inline(always)]
pub(crate) fn too_big<H: Hook>(
    h: &H,
    flow: &Flow,
    backend: &Backend,
    sport_be: u16,
    mtu: u16,
) -> H::Verdict {
    forget_unsent(flow, backend, sport_be);
    let Some(ans) = frag_needed(h.data(), h.data_end(), flow, mtu) else {
        return H::DROP;
    };
    h.send_back(&ans)
}

/// The flow entry this packet opened, if it is still only this packet's:
/// the container never saw it.
#[inline(always)]
fn forget_unsent(flow: &Flow, backend: &Backend, sport_be: u16) {
    if flow.first_frag {
        // Its later fragments go nowhere either.
        frag_remember(&frag_key_of_flow(FRAG_K_DNAT, flow), 0, FRAG_V_DENY);
    }
    let key = nat_key(flow.proto, backend, flow.src_addr_be, sport_be);
    let Some(e) = BERTH_NAT_NEW.get_ptr_mut(&key) else {
        return;
    };
    if unsafe { (*e).packets } != [1, 0] {
        return;
    }
    let _ = BERTH_NAT_NEW.remove(&key);
    if sport_be != flow.src_port_be {
        let _ = BERTH_NAT_FWD.remove(&flow.key());
    }
}

/// Whether this CPU's bucket has a token (taken).
#[inline(always)]
pub(crate) fn token() -> bool {
    let Some(b) = BERTH_PMTU_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    let now = ct_now();
    unsafe {
        let earned = now.saturating_sub((*b).last_ns) / NS_PER_TOKEN;
        if earned > 0 {
            let t = (*b).tokens.saturating_add(earned);
            (*b).tokens = if t > PMTU_ICMP_BURST {
                PMTU_ICMP_BURST
            } else {
                t
            };
            (*b).last_ns = now;
        }
        if (*b).tokens == 0 {
            return false;
        }
        (*b).tokens -= 1;
    }
    true
}

/// Whether an address may be an ICMP error's destination (`src`) or
/// source: not 0.0.0.0/8, multicast, reserved or broadcast.
#[inline(always)]
fn unicast(addr_be: u32) -> bool {
    let first = addr_be.to_ne_bytes()[0];
    first != 0 && first < 224
}

#[inline(always)]
pub(crate) fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Sum of `bytes` as native-order 16-bit words (one's-complement sums do
/// not care about byte order when every word is taken the same way).
#[inline(always)]
pub(crate) fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The answer to the frame in `[data, data_end)` (a packet of `flow`, too
/// long for `mtu`), or `None` when it is not to be answered (counted).
#[inline(always)]
fn frag_needed(data: usize, data_end: usize, flow: &Flow, mtu: u16) -> Option<FragNeeded> {
    let eth = unsafe { *ptr_at::<[u8; ETH_LEN]>(data, data_end, 0)? };
    let ip = unsafe { *ptr_at::<[u8; 20]>(data, data_end, ETH_LEN)? };
    if ip[6] & IP_DF == 0 {
        count(Counter::TooBigNoDf);
        return None;
    }
    let (client, host) = (flow.src_addr_be, flow.dst_addr_be);
    if eth[0] & 1 != 0
        || eth[6] & 1 != 0
        || !unicast(client)
        || !unicast(host)
        || is_host_addr(client)
        || !token()
    {
        count(Counter::FragNeededSuppressed);
        return None;
    }
    let l4_quote = if flow.proto == PROTO_TCP { 20 } else { 8 };
    let quote_len = (flow.l4_off - ETH_LEN) + l4_quote;
    // The quote's sum, from the frame as it came (four bytes at a time:
    // every quote is a whole number of words).
    let mut sum = 0u32;
    let mut off = 0;
    while off < QUOTE_MAX {
        if off >= quote_len {
            break;
        }
        let w = unsafe { core::ptr::read_unaligned(ptr_at::<u32>(data, data_end, ETH_LEN + off)?) };
        sum += (w & 0xffff) + (w >> 16);
        off += 4;
    }
    let mut hdr = [0u8; ETH_LEN + ICMP4_HDRS_LEN];
    hdr[..6].copy_from_slice(&eth[6..12]);
    hdr[6..12].copy_from_slice(&eth[..6]);
    hdr[12..14].copy_from_slice(&eth[12..14]);
    let tot = ((ICMP4_HDRS_LEN + quote_len) as u16).to_be_bytes();
    let (s, d) = (host.to_ne_bytes(), client.to_ne_bytes());
    let iph = &mut hdr[ETH_LEN..ETH_LEN + 20];
    iph[0] = 0x45;
    iph[1] = ICMP_ERR_TOS;
    iph[2..4].copy_from_slice(&tot);
    iph[8] = ICMP_ERR_TTL;
    iph[9] = berth_maps::PROTO_ICMP;
    iph[12..16].copy_from_slice(&s);
    iph[16..20].copy_from_slice(&d);
    let c = !fold(sum_words(iph, 0));
    iph[10..12].copy_from_slice(&c.to_ne_bytes());
    let icmp = &mut hdr[ETH_LEN + 20..];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_FRAG_NEEDED;
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let c = !fold(sum_words(icmp, sum));
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    Some(FragNeeded { quote_len, hdr })
}

/// TC: cut the skb to the quote, put the new headers in front (the skb
/// helpers keep a `CHECKSUM_COMPLETE` value right: the swapped MACs sum
/// to what they did, and the new bytes go in with `BPF_F_RECOMPUTE_CSUM`)
/// and redirect it to the uplink's egress.
#[inline(always)]
pub(crate) fn tc_send_back(ctx: &TcContext, ans: &FragNeeded) -> i32 {
    let ifindex = ctx.in_ifindex();
    let keep = (ETH_LEN + (ans.quote_len & 0x7f)) as u32;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, keep, 0) } != 0
        || ctx
            .adjust_room(ICMP4_HDRS_LEN as i32, BPF_ADJ_ROOM_MAC, 0)
            .is_err()
    {
        count(Counter::FragNeededSuppressed);
        return TC_ACT_SHOT;
    }
    let mut l3 = [0u8; ICMP4_HDRS_LEN];
    l3.copy_from_slice(&ans.hdr[ETH_LEN..]);
    let mut l2 = [0u8; ETH_LEN];
    l2.copy_from_slice(&ans.hdr[..ETH_LEN]);
    if ctx
        .store(ETH_LEN, &l3, u64::from(BPF_F_RECOMPUTE_CSUM))
        .is_err()
        || ctx.store(0, &l2, 0).is_err()
    {
        return TC_ACT_SHOT;
    }
    count(Counter::FragNeededSent);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// XDP: cut the frame to the quote, grow its head by the new headers,
/// and hand it to `berth_deliver` as a resolved next hop: the uplink it
/// came in by.
#[inline(always)]
pub(crate) fn xdp_send_back(ctx: &XdpContext, ans: &FragNeeded) -> u32 {
    let ifindex = ctx.in_ifindex();
    // The verifier allows no arithmetic on the packet's end pointer.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    let keep = (ETH_LEN + (ans.quote_len & 0x7f)) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ICMP4_HDRS_LEN as i32)) } != 0
    {
        count(Counter::FragNeededSuppressed);
        return xdp_action::XDP_DROP;
    }
    let Some(p) = ptr_at::<[u8; ETH_LEN + ICMP4_HDRS_LEN]>(ctx.data(), ctx.data_end(), 0) else {
        return xdp_action::XDP_DROP;
    };
    unsafe {
        core::ptr::write_unaligned(p, ans.hdr);
    }
    let mut dmac = [0u8; 6];
    let mut smac = [0u8; 6];
    dmac.copy_from_slice(&ans.hdr[..6]);
    smac.copy_from_slice(&ans.hdr[6..12]);
    count(Counter::FragNeededSent);
    crate::xdp::xdp_handoff(
        ctx,
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
        },
    )
}
