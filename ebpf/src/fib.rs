//! Where a translated packet goes next. The FIB decides the device and the
//! MAC addresses; delivery is a redirect, so a DNAT'd packet never meets
//! netfilter (a Docker host's FORWARD policy is DROP).
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    EbpfContext,
};

use crate::{
    icmp::IcmpError,
    parse::{Flow, Frag},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const _: () = assert!(size_of::<FibParams>().is_multiple_of(4));

pub(crate) enum NextHop {
    /// Route and neighbour known: set these MACs and redirect.
    Resolved {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route known, neighbour not yet: let the kernel resolve it.
    NoNeigh { ifindex: u32 },
    /// Route known, but the packet is longer than its MTU (`mtu`, what
    /// the FIB reported): the sender is told (`pmtu.rs`) where the
    /// packet's kind allows it.
    TooBig { mtu: u16 },
    /// No route, forwarding disabled, ...
    Unreachable,
}

/// FIB lookup for a translated later fragment now addressed `src -> dst`.
#[inline(always)]
pub(crate) fn fib_lookup_frag<C: EbpfContext>(
    ctx: &C,
    f: &Frag,
    src_addr_be: u32,
    dst_addr_be: u32,
    in_ifindex: u32,
) -> NextHop {
    lookup(
        ctx,
        f.proto,
        0,
        0,
        f.tot_len,
        src_addr_be,
        dst_addr_be,
        in_ifindex,
    )
}

/// FIB lookup for a translated ICMP error.
#[inline(always)]
pub(crate) fn fib_lookup_icmp<C: EbpfContext>(
    ctx: &C,
    e: &IcmpError,
    src_addr_be: u32,
    dst_addr_be: u32,
    in_ifindex: u32,
) -> NextHop {
    lookup(
        ctx,
        e.outer_proto,
        0,
        0,
        e.outer_tot_len,
        src_addr_be,
        dst_addr_be,
        in_ifindex,
    )
}

/// FIB lookup for a packet now addressed `src -> dst`, as if it arrived on
/// `in_ifindex` and is being forwarded. `mtu_len` is the length the route's
/// MTU is checked against; 0 skips the check (GSO packets, which are
/// segmented on the way out).
#[inline(always)]
pub(crate) fn fib_lookup_v4<C: EbpfContext>(
    ctx: &C,
    flow: &Flow,
    src_addr_be: u32,
    dst_addr_be: u32,
    in_ifindex: u32,
    mtu_len: u16,
) -> NextHop {
    lookup(
        ctx,
        flow.proto,
        0,
        0,
        mtu_len,
        src_addr_be,
        dst_addr_be,
        in_ifindex,
    )
}

/// Zeroes lookup parameters in place, as sixteen word stores: LLVM makes
/// a `mem::zeroed()` whose fields are then partly set into a call to a
/// byte-at-a-time `memset` of 52 bytes, on every translated packet.
#[inline(always)]
fn fib_params_zero(p: &mut core::mem::MaybeUninit<FibParams>) -> &mut FibParams {
    const WORDS: usize = size_of::<FibParams>() / 4;
    let w = p.as_mut_ptr().cast::<u32>();
    for i in 0..WORDS {
        // Volatile: a plain loop would be turned back into the memset.
        unsafe {
            core::ptr::write_volatile(w.add(i), 0);
        }
    }
    // SAFETY: every byte was written (the size is a multiple of four, and
    // the struct is plain integers).
    unsafe { p.assume_init_mut() }
}

#[expect(clippy::too_many_arguments)]
#[inline(always)]
fn lookup<C: EbpfContext>(
    ctx: &C,
    proto: u8,
    sport_be: u16,
    dport_be: u16,
    mtu_len: u16,
    src_addr_be: u32,
    dst_addr_be: u32,
    in_ifindex: u32,
) -> NextHop {
    let mut params = core::mem::MaybeUninit::<FibParams>::uninit();
    let p = fib_params_zero(&mut params);
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = sport_be;
    p.dport = dport_be;
    p.__bindgen_anon_1.tot_len = mtu_len;
    p.ifindex = in_ifindex;
    p.__bindgen_anon_3.ipv4_src = src_addr_be;
    p.__bindgen_anon_4.ipv4_dst = dst_addr_be;
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        NextHop::Resolved {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        NextHop::NoNeigh { ifindex: p.ifindex }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        NextHop::TooBig {
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        }
    } else {
        NextHop::Unreachable
    }
}

/// FIB lookup for a translated IPv6 packet now addressed `src -> dst`
/// (`mtu_len`: its whole length, header included; 0 skips the MTU check).
#[inline(always)]
pub(crate) fn fib_lookup_v6<C: EbpfContext>(
    ctx: &C,
    proto: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    in_ifindex: u32,
    mtu_len: u16,
) -> NextHop {
    let words = |a: &[u8; 16]| {
        let mut w = [0u32; 4];
        for (i, x) in w.iter_mut().enumerate() {
            *x = u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
        }
        w
    };
    let mut params = core::mem::MaybeUninit::<FibParams>::uninit();
    let p = fib_params_zero(&mut params);
    p.family = AF_INET6;
    p.l4_protocol = proto;
    p.__bindgen_anon_1.tot_len = mtu_len;
    p.ifindex = in_ifindex;
    p.__bindgen_anon_3.ipv6_src = words(src);
    p.__bindgen_anon_4.ipv6_dst = words(dst);
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        NextHop::Resolved {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        NextHop::NoNeigh { ifindex: p.ifindex }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        NextHop::TooBig {
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        }
    } else {
        NextHop::Unreachable
    }
}
