//! `skb->csum` after a NAT66 rewrite. A receiving NIC's `CHECKSUM_COMPLETE`
//! is the sum of every byte from the IPv6 header on, and the stack checks
//! TCP/UDP/ICMPv6 against it (a mismatch costs a software checksum and a
//! "hw csum failure" splat in the kernel log, in the container's namespace
//! after a redirect: `bpf_redirect` and the veth carry `skb->csum` along).
//! The rewrites change bytes that nothing balances for it:
//!
//! - the hop limit (IPv4 balances its TTL in the header checksum);
//! - the address: `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` subtracts
//!   the address change from `skb->csum`, as is right for IPv4, where the
//!   header checksum balances the address itself. IPv6 has none, so the
//!   address change and the L4 checksum change already balance, and that
//!   subtraction is wrong. Kernels from 6.16 skip it given `BPF_F_IPV6`,
//!   which older ones refuse (-EINVAL); adding the change back works on
//!   every kernel.
//!
//! A no-op unless the skb is `CHECKSUM_COMPLETE` (`bpf_csum_update`).
//! `icmp6.rs` adds the same two changes with its own arithmetic. Left
//! alone: a UDP datagram without checksum (invalid over IPv6), whose port
//! change no checksum helper sees either.
use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_csum_update},
    programs::TcContext,
};

/// Adds to `skb->csum` the address change `addr_diff` (a `bpf_csum_diff`
/// result the L4 helper was given with `BPF_F_PSEUDO_HDR`) and the change
/// of the fixed header's second word (`old_word -> new_word`: the hop
/// limit).
#[inline(always)]
pub(crate) fn complete_fixup(
    ctx: &TcContext,
    addr_diff: u32,
    mut old_word: [u8; 4],
    mut new_word: [u8; 4],
) -> Result<(), ()> {
    let diff = unsafe {
        bpf_csum_diff(
            old_word.as_mut_ptr().cast(),
            4,
            new_word.as_mut_ptr().cast(),
            4,
            addr_diff,
        )
    };
    if diff < 0 {
        return Err(());
    }
    unsafe {
        let _ = bpf_csum_update(ctx.skb.skb, diff as u32);
    }
    Ok(())
}
