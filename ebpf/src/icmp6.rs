//! `ICMPv6` errors about NAT66 flows (`nat6.rs`), translated both ways as
//! IPv4's `icmp.rs` does, so path-MTU discovery and port-unreachable work
//! over IPv6 through published ports:
//!
//! - At an uplink (`berth_ingress6`): an error from outside (a router's
//!   Packet Too Big, above all) quotes a reply as it left, host:port ->
//!   client. It goes to the flow's container, its outer destination and
//!   the quoted source (address and port) rewritten to the container's.
//!   When a clash remapped the flow's client port (`remap6.rs`), the
//!   quoted client port becomes the remapped one the container knows.
//!   A quote naming a published host port whose flow berth does not track
//!   is forged: no host socket sends from a published port (the bind
//!   guard), so nobody on the host is owed it (`icmp_forged`, dropped).
//! - At the bridge (`berth_reply6`): a container's error (port unreachable,
//!   say) quotes what the client sent it, client -> container:port. It
//!   leaves as if the host port had sent it, a remapped client port
//!   restored to the client's own. Only the flow's container may
//!   speak for it, and only to the flow's client; any other error quoting
//!   a tracked flow is forged (`icmp_forged`, dropped). A quote naming no
//!   tracked flow is the container's own business and passes untouched.
//!
//! Each rewrite fixes every checksum it touches: the quoted TCP/UDP
//! checksum (its pseudo header holds the quoted address) when the quote
//! reaches it, and the `ICMPv6` checksum, which covers the quote and a
//! pseudo header with the outer addresses. The quoted changes are written
//! directly with RFC 1624 arithmetic (they balance inside the message);
//! the outer address goes through the skb helper as a pseudo-header
//! change, as `nat6.rs` does, so a `CHECKSUM_COMPLETE` skb stays right.
//!
//! `berth_icmp6` is a program of its own (`BERTH_TAILS` slot `ICMP6`),
//! tail-called by `berth_ingress6` / `berth_reply6` for what looks like
//! an `ICMPv6` error: NAT66's programs have no stack left for it. Without it (an empty slot) the error passes untouched, as
//! before, counted `ipv6_no_program`.
//!
//! Decisions (README, "IPv6"): only an error right after the fixed header,
//! quoting an IPv6 packet whose TCP/UDP header follows its fixed header
//! and whose first 8 bytes (both ports) the quote holds, is translated;
//! anything else (a quote cut shorter, a quoted extension header or
//! fragment) passes untouched, as IPv4 leaves a quoted fragment. Every
//! offset is a constant, so the verifier follows each access at once.
//! Echo is never translated: the host answers a ping to its address.
use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use berth_maps::{tail, Counter, FlowKey6, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::{
    fib::fib_lookup_v6,
    hook::Hook as _,
    maps::{count, BERTH_HOST_ADDRS6, BERTH_NAT6, BERTH_NAT6_FWD, BERTH_NAT6_NEW},
    parse::{ptr_at, ETH_LEN},
    parse6::IP6_HDR_LEN,
    service::service_find6,
    tails::tail_call,
};

const ICMP6_OFF: usize = ETH_LEN + IP6_HDR_LEN;
const ICMP6_CSUM_OFF: usize = ICMP6_OFF + 2;
/// The quoted IPv6 header, after the error's 8-byte header.
const QUOTE_IP_OFF: usize = ICMP6_OFF + 8;
/// The quoted TCP/UDP header.
const QUOTE_L4_OFF: usize = QUOTE_IP_OFF + IP6_HDR_LEN;
/// Byte offsets of the source and destination address in an IPv6 header.
const SRC: usize = 8;
const DST: usize = 24;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAM_PROB: u8 = 4;
/// `::1` as [`A6`] words.
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// Where `berth_icmp6` was handed the frame (`skb->cb[0]`).
pub(crate) const FROM_UPLINK: u32 = 0;
pub(crate) const FROM_BRIDGE: u32 = 1;

/// Whether an IPv6 frame is an `ICMPv6` error right after the fixed
/// header: asked before the NAT66 parse (one load and compare for a
/// TCP/UDP packet), so the parser's many ways to a pass need not each be
/// followed into the hand-off by the verifier.
#[inline(always)]
pub(crate) fn is_error(data: usize, data_end: usize) -> bool {
    let Some(h) = ptr_at::<[u8; ICMP6_OFF + 1]>(data, data_end, 0) else {
        return false;
    };
    let h = unsafe { &*h };
    h[ETH_LEN + 6] == PROTO_ICMPV6
        && (ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROB).contains(&h[ICMP6_OFF])
}

/// An `ICMPv6` error at an uplink (`FROM_UPLINK`) or the bridge: handed to
/// `berth_icmp6`; untouched if that slot is empty.
#[inline(always)]
pub(crate) fn hand_off(ctx: &TcContext, from: u32) -> i32 {
    unsafe {
        (*ctx.skb.skb).cb[0] = from;
    }
    tail_call(ctx, tail::ICMP6);
    TC_ACT_OK
}

/// `berth_icmp6`: the error the hand-off above sent.
#[inline(always)]
pub(crate) fn icmp6(ctx: &TcContext) -> i32 {
    let Some(e) = parse_icmp6_error(ctx.data(), ctx.data_end(), ctx.len() as usize) else {
        return TC_ACT_OK;
    };
    let mut to = Xlate {
        addr: [0; 4],
        port_be: 0,
        client_port_be: 0,
    };
    let (side, decision) = if unsafe { (*ctx.skb.skb).cb[0] } == FROM_BRIDGE {
        (Side::Destination, bridge_icmp6(&e, &mut to))
    } else {
        (Side::Source, uplink_icmp6(&e, &mut to))
    };
    match decision {
        PASS => TC_ACT_OK,
        TRANSLATE => translate(ctx, &e, side, &to),
        _ => TC_ACT_SHOT,
    }
}

// The decisions, the delivery and the rewrite are functions of their own
// (BPF subprograms) with a stack frame each, called one after the other
// rather than nested: inlined into one, they need more than the 512 bytes
// of stack a program has.

// What becomes of an error: a number, not an enum holding the address
// (a subprogram returning an aggregate returns a pointer to its caller's
// stack, which the verifier refuses).
const PASS: u32 = 0;
const DROP: u32 = 1;
/// Rewrite the error's side to the [`Xlate`] written, and send it on.
const TRANSLATE: u32 = 2;

/// Where a translated error's side goes.
struct Xlate {
    addr: A6,
    port_be: u16,
    /// The quoted client port as it must read: the port the flow uses
    /// towards the container (from outside) or the client's own (from a
    /// container); they differ when a clash remapped it (`remap6.rs`).
    client_port_be: u16,
}

/// An `ICMPv6` error quoting a TCP/UDP packet: pointers to its checked
/// headers (nothing copied: the program's stack is small) and the facts
/// read from them.
#[derive(Clone, Copy)]
struct Icmp6Error {
    /// The outer IPv6 header.
    ip: *mut u8,
    /// The quoted IPv6 header.
    q: *mut u8,
    hop_limit: u8,
    payload_len: u16,
    /// Where the error ends in the frame (the quote reaches no further).
    end: usize,
    proto: u8,
    qsport_be: u16,
    qdport_be: u16,
}

/// The error in the frame `[data, data_end)` of `frame_len` bytes, or
/// `None`: not an `ICMPv6` error (destination unreachable, packet too big,
/// time exceeded, parameter problem) quoting both ports of a TCP/UDP
/// packet (see the module's decisions).
#[inline(always)]
fn parse_icmp6_error(data: usize, data_end: usize, frame_len: usize) -> Option<Icmp6Error> {
    let ip = ptr_at::<[u8; IP6_HDR_LEN]>(data, data_end, ETH_LEN)?;
    let h = unsafe { &*ip };
    if h[0] >> 4 != 6 || h[6] != PROTO_ICMPV6 {
        return None;
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]);
    let end = ICMP6_OFF + usize::from(payload_len);
    if end > frame_len || end < QUOTE_L4_OFF + 8 {
        return None;
    }
    let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, ICMP6_OFF)? };
    if !(ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROB).contains(&icmp[0]) {
        return None;
    }
    let q = ptr_at::<[u8; IP6_HDR_LEN]>(data, data_end, QUOTE_IP_OFF)?;
    let qh = unsafe { &*q };
    if qh[0] >> 4 != 6 || (qh[6] != PROTO_TCP && qh[6] != PROTO_UDP) {
        return None;
    }
    let ports = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, QUOTE_L4_OFF)? };
    Some(Icmp6Error {
        ip: ip.cast(),
        q: q.cast(),
        hop_limit: h[7],
        payload_len,
        end,
        proto: qh[6],
        qsport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        qdport_be: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}

/// An IPv6 address as four 32-bit words (read as stored): compared and
/// summed in registers. Read as bytes, each address is sixteen loads whose
/// values LLVM keeps alive at once, spilling them past the 512 bytes of
/// stack the program has.
type A6 = [u32; 4];

/// The address at byte `off` of a checked IPv6 header (or a map value).
/// Word loads: an IPv6 header's addresses sit 4-byte aligned behind an
/// Ethernet header the kernel aligns (`NET_IP_ALIGN`), and the verifier
/// takes unaligned packet loads where the CPU does.
#[inline(always)]
fn addr(h: *const u8, off: usize) -> A6 {
    let p = unsafe { h.add(off) }.cast::<u32>();
    unsafe {
        [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ]
    }
}

/// Writes `a` at byte `off` of a checked IPv6 header (as [`addr`] reads).
#[inline(always)]
fn put_addr(h: *mut u8, off: usize, a: A6) {
    let p = unsafe { h.add(off) }.cast::<u32>();
    unsafe {
        core::ptr::write_volatile(p, a[0]);
        core::ptr::write_volatile(p.add(1), a[1]);
        core::ptr::write_volatile(p.add(2), a[2]);
        core::ptr::write_volatile(p.add(3), a[3]);
    }
}

#[inline(always)]
fn bytes(a: A6) -> [u8; 16] {
    unsafe { core::mem::transmute::<A6, [u8; 16]>(a) }
}

#[inline(always)]
fn is_host_addr6(a: A6) -> bool {
    unsafe { BERTH_HOST_ADDRS6.get(&bytes(a)) }.is_some()
}

/// The host address, host port and client's own port of the tracked flow
/// `key` (its key's client port differs from the last when a clash
/// remapped it).
#[inline(always)]
fn nat6_flow(key: &FlowKey6) -> Option<(A6, u16, u16)> {
    let e = BERTH_NAT6
        .get_ptr(key)
        .or_else(|| BERTH_NAT6_NEW.get_ptr(key))?;
    unsafe {
        Some((
            addr((*e).host_addr.as_ptr(), 0),
            (*e).host_port_be,
            (*e).client_port_be,
        ))
    }
}

/// Which side of the quoted packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// From outside: outer destination, quoted source become the container.
    Source,
    /// From a container: outer source, quoted destination become the host.
    Destination,
}

/// An error at an uplink: one about a NAT66 flow's reply goes to its
/// container; anything else is the host's.
#[inline(never)]
fn uplink_icmp6(e: &Icmp6Error, to: &mut Xlate) -> u32 {
    let qsrc = addr(e.q, SRC);
    // About something the host sent from a published port?
    if addr(e.ip, DST) != qsrc {
        return PASS;
    }
    let Some((b, wildcard)) = service_find6(e.proto, &bytes(qsrc), e.qsport_be) else {
        return PASS;
    };
    if wildcard && !is_host_addr6(qsrc) {
        return PASS;
    }
    let mut key = FlowKey6 {
        src_addr: b.addr,
        dst_addr: bytes(addr(e.q, DST)),
        src_port_be: b.port_be,
        dst_port_be: e.qdport_be,
        proto: e.proto,
        _pad: [0; 3],
    };
    // The quoted reply's flow: under the client's own port, or under the
    // port a clash remapped it to (kept by what the client sent, the
    // quote reversed).
    let is_quoted = |f: Option<(A6, u16, u16)>| {
        f.is_some_and(|(host, port, client)| {
            host == qsrc && port == e.qsport_be && client == e.qdport_be
        })
    };
    let client_port_be = if is_quoted(nat6_flow(&key)) {
        e.qdport_be
    } else {
        let wire = FlowKey6 {
            src_addr: key.dst_addr,
            dst_addr: bytes(qsrc),
            src_port_be: e.qdport_be,
            dst_port_be: e.qsport_be,
            proto: e.proto,
            _pad: [0; 3],
        };
        let remap = unsafe { BERTH_NAT6_FWD.get(&wire) }
            .filter(|f| f.backend_addr == b.addr && f.backend_port_be == b.port_be)
            .map(|f| f.remap_port_be);
        let Some(port_be) = remap else {
            count(Counter::IcmpForged);
            return DROP;
        };
        key.dst_port_be = port_be;
        if !is_quoted(nat6_flow(&key)) {
            count(Counter::IcmpForged);
            return DROP;
        }
        port_be
    };
    let src = addr(e.ip, SRC);
    if src == LOOPBACK6 || is_host_addr6(src) {
        count(Counter::UplinkSpoofedSource);
        return DROP;
    }
    to.addr = addr(b.addr.as_ptr(), 0);
    to.port_be = b.port_be;
    to.client_port_be = client_port_be;
    TRANSLATE
}

/// A container's error at the bridge: one about a flow a client opened
/// leaves from the host port; one quoting no tracked flow is the
/// container's own.
#[inline(never)]
fn bridge_icmp6(e: &Icmp6Error, to: &mut Xlate) -> u32 {
    let (qsrc, qdst) = (addr(e.q, SRC), addr(e.q, DST));
    // The flow's reply tuple: the quote reversed.
    let key = FlowKey6 {
        src_addr: bytes(qdst),
        dst_addr: bytes(qsrc),
        src_port_be: e.qdport_be,
        dst_port_be: e.qsport_be,
        proto: e.proto,
        _pad: [0; 3],
    };
    let Some((host, port, client_port_be)) = nat6_flow(&key) else {
        return PASS;
    };
    if addr(e.ip, SRC) != qdst || addr(e.ip, DST) != qsrc {
        count(Counter::IcmpForged);
        return DROP;
    }
    to.addr = host;
    to.port_be = port;
    to.client_port_be = client_port_be;
    TRANSLATE
}

/// Rewrites the error for `side` (as `x` says), then sends it on; the hop
/// limit must allow one more hop.
#[inline(never)]
fn translate(ctx: &TcContext, e: &Icmp6Error, side: Side, x: &Xlate) -> i32 {
    let to = x.addr;
    if e.hop_limit <= 1 {
        count(Counter::TtlExceeded);
        return TC_ACT_SHOT;
    }
    // The end the translated error is addressed from or to, kept before
    // the rewrite (the skb helper invalidates the packet pointers).
    let other = match side {
        Side::Source => addr(e.ip, SRC),
        Side::Destination => addr(e.ip, DST),
    };
    if rewrite(ctx, e, side, x).is_err() {
        return TC_ACT_SHOT;
    }
    count(Counter::IcmpXlate);
    let (src, dst) = match side {
        Side::Source => (other, to),
        Side::Destination => (to, other),
    };
    let len = e.payload_len.saturating_add(IP6_HDR_LEN as u16);
    let next = fib_lookup_v6(
        ctx,
        PROTO_ICMPV6,
        &bytes(src),
        &bytes(dst),
        ctx.in_ifindex(),
        ctx.mtu_len(len),
    );
    ctx.deliver(next)
}

/// The change of a 16-byte address, as a sum to add (RFC 1624 eqn. 3:
/// `~m + m'`, over 32-bit words: congruent, modulo 0xffff, to the sum
/// over 16-bit ones), accumulated in one register.
#[inline(always)]
fn diff16(old: A6, new: A6) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i < 4 {
        s += u64::from(!old[i]) + u64::from(new[i]);
        i += 1;
    }
    s
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// `check` after the data it covers changed by `diff` (RFC 1624 eqn. 3).
#[inline(always)]
fn apply(check: u16, diff: u64) -> u16 {
    !fold(u64::from(!check) + diff)
}

/// The quoted changes by direct writes (they balance inside the `ICMPv6`
/// message), then the outer address as a pseudo-header change through
/// the skb helper (given the change as a sum), which keeps a
/// `CHECKSUM_COMPLETE` skb right.
#[inline(never)]
fn rewrite(ctx: &TcContext, e: &Icmp6Error, side: Side, x: &Xlate) -> Result<(), ()> {
    let (to, port_be) = (x.addr, x.port_be);
    let (d, de) = (ctx.data(), ctx.data_end());
    // Checked again, from the current packet: LLVM may not carry the
    // parser's checks this far in a form the verifier follows.
    let ip = ptr_at::<[u8; IP6_HDR_LEN]>(d, de, ETH_LEN)
        .ok_or(())?
        .cast::<u8>();
    let icmp = ptr_at::<[u8; 8]>(d, de, ICMP6_OFF).ok_or(())?.cast::<u8>();
    let q = ptr_at::<[u8; IP6_HDR_LEN]>(d, de, QUOTE_IP_OFF)
        .ok_or(())?
        .cast::<u8>();
    let ports = ptr_at::<[u8; 4]>(d, de, QUOTE_L4_OFF)
        .ok_or(())?
        .cast::<u8>();
    let (outer_off, q_off, port_off, old_port) = match side {
        Side::Source => (DST, SRC, 0, e.qsport_be),
        Side::Destination => (SRC, DST, 2, e.qdport_be),
    };
    // The quoted client port: destination of the reply that left towards
    // the client, source of what the client sent.
    let (client_off, old_client) = match side {
        Side::Source => (2, e.qdport_be),
        Side::Destination => (0, e.qsport_be),
    };
    let client_port_be = x.client_port_be;
    let old_outer = addr(ip, outer_off);
    let old_q = addr(q, q_off);
    // The quoted L4 checksum, when the quote reaches it.
    let l4_csum_off = QUOTE_L4_OFF + if e.proto == PROTO_TCP { 16 } else { 6 };
    let l4_csum = if l4_csum_off + 2 <= e.end {
        ptr_at::<u16>(d, de, l4_csum_off)
    } else {
        None
    };
    // The quote's change, which its own L4 checksum (pseudo header
    // included) sees as well.
    let mut dq = diff16(old_q, to) + u64::from(!old_port) + u64::from(port_be);
    if client_port_be != old_client {
        dq += u64::from(!old_client) + u64::from(client_port_be);
    }
    unsafe {
        let icmp_csum = icmp.add(2).cast::<u16>();
        let mut ic = apply(core::ptr::read_unaligned(icmp_csum), dq);
        if let Some(l4c) = l4_csum {
            let old = core::ptr::read_unaligned(l4c);
            // UDP's zero means "no checksum" (invalid over IPv6, but not
            // ours to make valid); a computed zero is sent as 0xffff.
            if !(e.proto == PROTO_UDP && old == 0) {
                let mut n = apply(old, dq);
                if n == 0 && e.proto == PROTO_UDP {
                    n = 0xffff;
                }
                ic = apply(ic, u64::from(!old) + u64::from(n));
                core::ptr::write_unaligned(l4c, n);
            }
        }
        core::ptr::write_unaligned(icmp_csum, ic);
        put_addr(q, q_off, to);
        core::ptr::write_unaligned(ports.add(port_off).cast::<u16>(), port_be);
        core::ptr::write_unaligned(ports.add(client_off).cast::<u16>(), client_port_be);
    }
    // The hop limit, in the header word that holds it (as read).
    let word = unsafe { ip.add(4) }.cast::<u32>();
    let old_word = unsafe { core::ptr::read_volatile(word) };
    let mut new_word = old_word.to_ne_bytes();
    new_word[3] = e.hop_limit - 1;
    let new_word = u32::from_ne_bytes(new_word);
    unsafe {
        core::ptr::write_volatile(word, new_word);
        put_addr(ip, outer_off, to);
    }
    let diff = fold(diff16(old_outer, to));
    ctx.l4_csum_replace(
        ICMP6_CSUM_OFF,
        0,
        u64::from(diff),
        u64::from(BPF_F_PSEUDO_HDR),
    )
    .map_err(|_| ())?;
    // `skb->csum` of a CHECKSUM_COMPLETE skb (`csum6.rs`): the address
    // change the helper took away, and the hop limit.
    let mut s = u64::from(diff) + u64::from(!old_word) + u64::from(new_word);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    unsafe {
        let _ = aya_ebpf::helpers::bpf_csum_update(ctx.skb.skb, s as u32);
    }
    Ok(())
}
