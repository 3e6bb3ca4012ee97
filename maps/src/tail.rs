//! `BERTH_TAILS`: the one program array through which the IPv4 programs
//! hand IPv6 (and the datapath log) to programs of their own, so the IPv4
//! fast path never parses IPv6 and each program stays within the
//! verifier's budget. Slots are fixed here; the loader puts each program of
//! [`PROGRAMS`] in its slot after loading the object and before attaching
//! anything, and empties every other slot. A tail call into an empty slot
//! falls through to the caller, which acts as each call site documents:
//! never by letting IPv6 pass unchecked where a check is due.
//!
//! Only TC programs may be put in or call through it: a program array
//! takes programs of the type of the first program that uses it, so XDP
//! leaves IPv6 to the uplink's TC program (`berth_deliver`).

/// The program array's name (pinned, so the IPv6 programs stay in place
/// while no daemon runs, as the IPv4 ones do).
pub const TAILS_MAP: &str = "BERTH_TAILS";

/// Uplink TC ingress (`berth_ingress`, and `berth_deliver` beside XDP):
/// IPv6 published ports (NAT66).
pub const INGRESS6: u32 = 0;
/// Bridge TC ingress (`berth_reply`): IPv6 replies.
pub const REPLY6: u32 = 1;
/// Container veth TC ingress (`berth_from_ctr`): IPv6 the container sends.
pub const FROM_CTR6: u32 = 2;
/// Container veth TC egress (`berth_to_ctr`): IPv6 the container receives.
pub const TO_CTR6: u32 = 3;
/// The datapath log of events `berth_from_ctr` sees.
pub const LOG: u32 = 4;
/// IPv6 later fragments through NAT66, tail-called by `berth_ingress6`
/// and `berth_reply6` (their stacks have no room for it), which say which
/// in the packet's `cb[0]` ([`FRAG6_CB_DNAT`], [`FRAG6_CB_SNAT`]).
pub const FRAG6: u32 = 6;
/// `ICMPv6` errors about NAT66 flows (`berth_icmp6`), tail-called by
/// the uplink's and the bridge's IPv6 programs: a program of its own for
/// the stack it needs.
pub const ICMP6: u32 = 5;
/// IPv6 packets too long for their container's route (`berth_pmtu6`):
/// answered with `ICMPv6` "packet too big", tail-called by
/// `berth_ingress6` (no stack left for it) with the route's MTU in the
/// packet's `cb[0]` and the flow's client port towards the container in
/// `cb[1]`.
pub const PMTU6: u32 = 7;
/// Slots of the array; room for a few more without a new layout.
pub const LEN: u32 = 8;

/// The IPv6 program of the uplink (slot [`INGRESS6`]).
pub const PROGRAM_INGRESS6: &str = "berth_ingress6";
/// The IPv6 program of the bridge (slot [`REPLY6`]).
pub const PROGRAM_REPLY6: &str = "berth_reply6";

/// The IPv6 programs of a container's veth (slots [`FROM_CTR6`],
/// [`TO_CTR6`]): security groups.
pub const PROGRAM_FROM_CTR6: &str = "berth_from_ctr6";
pub const PROGRAM_TO_CTR6: &str = "berth_to_ctr6";

/// The datapath log of the container veths' refusals (slot [`LOG`]).
pub const PROGRAM_LOG: &str = "berth_log";

/// The program of slot [`FRAG6`].
pub const PROGRAM_FRAG6: &str = "berth_frag6";
/// `cb[0]` for [`PROGRAM_FRAG6`]: a later fragment at an uplink (DNAT).
pub const FRAG6_CB_DNAT: u32 = 1;
/// `cb[0]` for [`PROGRAM_FRAG6`]: a later fragment at the bridge (SNAT).
pub const FRAG6_CB_SNAT: u32 = 2;
/// The `ICMPv6` error translation (slot [`ICMP6`]).
pub const PROGRAM_ICMP6: &str = "berth_icmp6";

/// The program of slot [`PMTU6`].
pub const PROGRAM_PMTU6: &str = "berth_pmtu6";

/// (slot, program) for every program the loader puts in the array. Each
/// program is also in [`crate::program::ALL`].
pub const PROGRAMS: &[(u32, &str)] = &[
    (INGRESS6, PROGRAM_INGRESS6),
    (FROM_CTR6, PROGRAM_FROM_CTR6),
    (TO_CTR6, PROGRAM_TO_CTR6),
    (REPLY6, PROGRAM_REPLY6),
    (LOG, PROGRAM_LOG),
    (FRAG6, PROGRAM_FRAG6),
    (ICMP6, PROGRAM_ICMP6),
    (PMTU6, PROGRAM_PMTU6),
];

const _: () = {
    let mut i = 0;
    while i < PROGRAMS.len() {
        assert!(PROGRAMS[i].0 < LEN);
        i += 1;
    }
};
