//! What a packet program needs of its attach point, so one pipeline serves
//! TC and XDP (Cilium's `overloadable_skb.h` / `overloadable_xdp.h)`: where the
//! frame is, where it came in, how a flow's bytes and checksums are
//! rewritten, how a translated packet is sent on, and the verdicts.
use aya_ebpf::EbpfContext;

use crate::{fib::NextHop, nat::Rewrite, parse::Flow, pmtu::FragNeeded};

pub(crate) trait Hook: EbpfContext {
    type Verdict: Copy;
    /// Leave the packet to the stack.
    const PASS: Self::Verdict;
    /// Drop the packet.
    const DROP: Self::Verdict;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length (TC may see only the linear part of it).
    fn frame_len(&self) -> usize;
    /// The interface the packet came in by (the FIB lookup's input).
    fn in_ifindex(&self) -> u32;
    /// The length the route's MTU is checked against; 0 skips the check.
    fn mtu_len(&self, tot_len: u16) -> u16;
    /// Rewrite address and port, fix the IPv4 and L4 checksums, decrement
    /// the TTL. `Err`: the packet could not be written.
    fn rewrite(&self, flow: &Flow, rw: &Rewrite) -> Result<(), ()>;
    /// Send a translated packet towards `next` without netfilter.
    fn deliver(&self, next: NextHop) -> Self::Verdict;
    /// Turn the frame into `ans` (`pmtu.rs`: its headers, then the first
    /// `ans.quote_len` bytes of the IPv4 packet) and send it back out of
    /// the interface it came in by.
    fn send_back(&self, ans: &FragNeeded) -> Self::Verdict;
    /// A frame that is not IPv4: TC tail-calls the IPv6 program with an
    /// IPv6 one (`tails.rs`); XDP passes it, for the TC program beside it.
    fn not_ipv4(&self) -> Self::Verdict;
}
