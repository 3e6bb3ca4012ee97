//! Security groups: stateful allow rules per task, judged on the first
//! packet of a flow with the peer's real address.
//!
//! - North-south (client -> host port): at the uplink, before DNAT, against
//!   the receiving task's ingress rules and its container port.
//! - Everything a container sends: at its host-side veth (tc ingress),
//!   against its egress rules and, when the receiver is a task on this
//!   host, the receiver's ingress rules.
//! - Everything a container receives from elsewhere (the host, an
//!   untracked sender): at its host-side veth (tc egress), against its
//!   ingress rules.
//!
//! Allowed flows are tracked (`BERTH_CT`, or `BERTH_NAT` for published ports),
//! so replies pass whatever the rules say and removing a rule never cuts a
//! tracked flow. ICMP echo is tracked by its identifier.
//!
//! As for published ports, a flow starts in `BERTH_CT_NEW` (LRU: never
//! refuses) and moves to `BERTH_CT` (never evicts) once established: TCP when
//! the initiator ACKs the responder's SYN-ACK, UDP and ICMP echo with the
//! first reply. Only a TCP SYN opens a flow: any other TCP packet of no
//! tracked flow, where policy applies, is dropped (`ct_no_flow`). A RST or FIN
//! marks a flow closing only within its direction's sequence window.
//!
//! Where either end has policy:
//! - An ICMP error (destination unreachable, time exceeded, parameter
//!   problem) passes only when it quotes a flow that is tracked (`BERTH_CT`(_NEW)
//!   or `BERTH_NAT`(_NEW), either direction: TCP, UDP or ICMP echo, so a
//!   time-exceeded reaches the pinger) and has the endpoint with policy as
//!   one of its addresses; anything else is dropped (`policy_denied_icmp`):
//!   rules never open errors, which anyone can forge about anything.
//! - Other ICMP but echo (timestamp, redirect, router advertisement, ...)
//!   is judged per packet, as AWS does, by the sender's egress and the
//!   receiver's ingress rules with its type and code; nothing is tracked.
//! - Any other protocol (GRE, IP-in-IP, SCTP, ESP, ...): a flow of its
//!   protocol and addresses, opened by a rule for all protocols or for its
//!   number and tracked like UDP, so a tunnel carries nothing past the
//!   rules and its replies pass.
//! - Fragments: the first fragment is judged like any packet and its
//!   verdict remembered for the datagram at this veth and direction
//!   (`frag.rs`); later fragments there follow it (`frag_denied`), and one
//!   with no remembered verdict is dropped (`frag_no_first`). A TCP/UDP first fragment too short to hold
//!   its header is refused (the tiny-fragment attack of RFC 1858 would
//!   otherwise hide the flags or ports in a later fragment).
use aya_ebpf::{cty::c_void, helpers::bpf_loop};
use berth_maps::{
    Counter, CtEntry, Endpoint, FlowKey, FragKey, Policy, PolicyKey, Rule, SgMember, DIR_INGRESS,
    EP_F_POLICY, FRAG_V_ALLOW, FRAG_V_DENY, MAX_RULES, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    RULE_ICMP_ANY, RULE_PEER_CIDR, RULE_PROTO_ALL,
};

use crate::{
    ct::{
        ct_init, ct_insert_new, ct_now, ct_promote, ct_refresh, Conn as _, Tables, DIR_ORIG,
        DIR_REPLY,
    },
    dplog::{dp_log, ports, EV_CT_FULL, EV_NONE, EV_POLICY, EV_POLICY_EGRESS},
    frag::{frag_lookup, frag_policy_key, frag_remember},
    icmp::{parse_icmp_error_quoting, IcmpError},
    maps::{
        count, BERTH_CT, BERTH_CT_NEW, BERTH_ENDPOINTS, BERTH_NAT, BERTH_NAT_NEW, BERTH_POLICY,
        BERTH_SG_MEMBERS,
    },
    parse::{
        echo_ports, flow_key, parse_packet, ptr_at, reverse_key, Flow, Ip, Parsed, ETH_LEN,
        ICMP_DEST_UNREACH, ICMP_PARAMETERPROB, ICMP_TIME_EXCEEDED,
    },
    tcp::{tcp_completes, tcp_seg, Seg},
};

/// Security-group flows' tables.
#[inline(always)]
fn ct_tables() -> Tables<FlowKey, CtEntry> {
    Tables {
        est: &BERTH_CT,
        new: &BERTH_CT_NEW,
        full: Counter::CtTableFull,
        // Only `berth_from_ctr` and `berth_to_ctr` use these: they log a
        // refusal through `berth_log` (see `dplog`).
        log: false,
    }
}

/// What policy looks at in a packet.
#[derive(Clone, Copy)]
pub(crate) struct PFlow {
    pub proto: u8,
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP: the segment (zero otherwise).
    pub seg: Seg,
}

impl PFlow {
    #[inline(always)]
    fn key(&self) -> FlowKey {
        flow_key(
            self.src_be,
            self.dst_be,
            self.sport_be,
            self.dport_be,
            self.proto,
        )
    }
}

#[inline(always)]
fn pflow_of(f: &Flow, data: usize, data_end: usize) -> PFlow {
    PFlow {
        proto: f.proto,
        src_be: f.src_addr_be,
        dst_be: f.dst_addr_be,
        sport_be: f.src_port_be,
        dport_be: f.dst_port_be,
        icmp_type: 0,
        icmp_code: 0,
        seg: if f.proto == PROTO_TCP {
            tcp_seg(f, data, data_end)
        } else {
            Seg::default()
        },
    }
}

/// Where a veth's judge runs: the port and whether the container sends
/// (`from`) or receives. A first fragment's verdict is kept under both.
#[derive(Clone, Copy)]
pub(crate) struct At {
    pub ifindex: u32,
    pub from: bool,
}

impl At {
    #[inline(always)]
    fn frag_key(&self, src_be: u32, dst_be: u32, proto: u8, id_be: u16) -> FragKey {
        frag_policy_key(self.from, self.ifindex, src_be, dst_be, proto, id_be)
    }
}

/// IPv4 that is neither TCP/UDP the parser accepted nor a later fragment
/// (`Parsed::Ip`): ICMP, other protocols, TCP/UDP the parser refused.
/// `at.from`: the container sends it (both ends judged), else receives it
/// (only its own end). A separate subprogram: LLVM merges this path with
/// the TCP/UDP one into code the verifier refuses when it is inlined.
#[inline(never)]
fn other_allowed(data: usize, data_end: usize, frame_len: usize, ip: &Ip, at: &At) -> bool {
    let from = at.from;
    let (src_be, dst_be) = (ip.src_be, ip.dst_be);
    let (proto, id_be) = (ip.proto, ip.id_be);
    let first_frag = ip.more_frags();
    // Plain values, the default endpoint (no policy) for none: a `None`'s
    // undefined payload, spilled by LLVM, is a register the verifier sees
    // read before it was written.
    let sender = if from {
        endpoint_with_policy(src_be).unwrap_or_default()
    } else {
        Endpoint::default()
    };
    let receiver = endpoint_with_policy(dst_be).unwrap_or_default();
    if !has_policy(&sender) && !has_policy(&receiver) {
        return true;
    }
    let key = at.frag_key(src_be, dst_be, proto, id_be);
    // A later fragment the parser found malformed: still no verdict of
    // its own.
    if ip.later_frag() {
        return frag_follow(&key);
    }
    let allowed = match proto {
        PROTO_TCP | PROTO_UDP if first_frag => {
            count(Counter::FragDenied);
            false
        }
        // Malformed and whole: the stack drops it.
        PROTO_TCP | PROTO_UDP => return true,
        PROTO_ICMP => icmp_allowed(
            data,
            data_end,
            frame_len,
            ip,
            from,
            (src_be, sender),
            (dst_be, receiver),
        ),
        _ => proto_allowed(ip, from, sender, receiver),
    };
    if first_frag {
        frag_first_judged(&key, allowed);
    }
    allowed
}

/// ICMP where an end has policy (`other_allowed` checked that): echo as a
/// tracked flow, errors about tracked flows, the rest by the rules. The
/// ends are plain values, the default endpoint (no policy) for none (see
/// `from_container_flow`).
#[inline(always)]
fn icmp_allowed(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ip: &Ip,
    from: bool,
    (src_be, sender): (u32, Endpoint),
    (dst_be, receiver): (u32, Endpoint),
) -> bool {
    match icmp_echo_flow(data, data_end, ip) {
        Some(f) if from => from_container_flow(&f, sender, receiver).is_ok(),
        Some(f) if has_policy(&receiver) => to_container_flow(&f, receiver).is_ok(),
        Some(_) => true,
        None => icmp_other_allowed(
            data, data_end, ip, frame_len, src_be, dst_be, sender, receiver,
        ),
    }
}

/// Any other protocol (GRE, IP-in-IP, SCTP, ESP, ...) where an end has
/// policy: a flow of its protocol and addresses (ports 0), opened as its
/// rules say (one for all protocols or for its number) and tracked, so
/// its replies pass as TCP's do. Without this a tunnel would carry
/// anything past every rule.
#[inline(always)]
fn proto_allowed(ip: &Ip, from: bool, sender: Endpoint, receiver: Endpoint) -> bool {
    let f = PFlow {
        proto: ip.proto,
        src_be: ip.src_be,
        dst_be: ip.dst_be,
        sport_be: 0,
        dport_be: 0,
        icmp_type: 0,
        icmp_code: 0,
        seg: Seg::default(),
    };
    if from {
        from_container_flow(&f, sender, receiver).is_ok()
    } else {
        to_container_flow(&f, receiver).is_ok()
    }
}

/// Whether `ep` (an endpoint, or the default for none) has policy.
#[inline(always)]
fn has_policy(ep: &Endpoint) -> bool {
    ep.flags & EP_F_POLICY != 0
}

#[inline(always)]
fn icmp_echo_flow(data: usize, data_end: usize, ip: &Ip) -> Option<PFlow> {
    let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, ETH_LEN + ip.hdr_len())? };
    let (sport_be, dport_be) = echo_ports(icmp)?;
    Some(PFlow {
        proto: PROTO_ICMP,
        src_be: ip.src_be,
        dst_be: ip.dst_be,
        sport_be,
        dport_be,
        icmp_type: icmp[0],
        icmp_code: icmp[1],
        seg: Seg::default(),
    })
}

/// Whether an ICMP error is about a tracked TCP, UDP or echo flow that
/// `ep` is an end of. Looks only: an error does not keep a flow alive.
#[inline(always)]
fn icmp_error_tracked(e: &IcmpError, ep_be: u32) -> bool {
    if e.inner_src_be != ep_be && e.inner_dst_be != ep_be {
        return false;
    }
    let quoted = e.quoted_key();
    let back = reverse_key(&quoted);
    unsafe {
        BERTH_CT.get(&quoted).is_some()
            || BERTH_CT.get(&back).is_some()
            || BERTH_NAT.get(&quoted).is_some()
            || BERTH_NAT.get(&back).is_some()
            || BERTH_CT_NEW.get(&quoted).is_some()
            || BERTH_CT_NEW.get(&back).is_some()
            || BERTH_NAT_NEW.get(&quoted).is_some()
            || BERTH_NAT_NEW.get(&back).is_some()
    }
}

/// ICMP other than echo between `sender` and/or `receiver` (the ends with
/// policy): an error only about a tracked flow of each, anything else as
/// its rules say.
#[inline(always)]
fn icmp_other_allowed(
    data: usize,
    data_end: usize,
    ip: &Ip,
    frame_len: usize,
    src_be: u32,
    dst_be: u32,
    sender: Endpoint,
    receiver: Endpoint,
) -> bool {
    let Some(icmp) = ptr_at::<[u8; 2]>(data, data_end, ETH_LEN + ip.hdr_len()) else {
        count(Counter::PolicyDeniedIcmp);
        return false;
    };
    let (icmp_type, icmp_code) = unsafe { ((*icmp)[0], (*icmp)[1]) };
    if matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
    ) {
        return icmp_error_allowed(data, data_end, frame_len, ip, sender, receiver);
    }
    let f = PFlow {
        proto: PROTO_ICMP,
        src_be,
        dst_be,
        sport_be: 0,
        dport_be: 0,
        icmp_type,
        icmp_code,
        seg: Seg::default(),
    };
    icmp_rules_allow(&f, sender, receiver)
}

/// An ICMP error: about a tracked flow of each end with policy, or dropped.
#[inline(always)]
fn icmp_error_allowed(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ip: &Ip,
    sender: Endpoint,
    receiver: Endpoint,
) -> bool {
    let ok = match parse_icmp_error_quoting::<true>(data, data_end, frame_len, ip) {
        Some(e) => {
            (!has_policy(&sender) || icmp_error_tracked(&e, e.outer_src_be))
                && (!has_policy(&receiver) || icmp_error_tracked(&e, e.outer_dst_be))
        }
        None => false,
    };
    if !ok {
        count(Counter::PolicyDeniedIcmp);
    }
    ok
}

/// ICMP that is neither echo nor an error, judged packet by packet by the
/// sender's egress and the receiver's ingress rules.
#[inline(always)]
fn icmp_rules_allow(f: &PFlow, sender: Endpoint, receiver: Endpoint) -> bool {
    if has_policy(&sender) && !policy_allows(sender.task_id, berth_maps::DIR_EGRESS, f, f.dst_be, 0)
    {
        count(Counter::PolicyDeniedEgress);
        return false;
    }
    if has_policy(&receiver) && !policy_allows(receiver.task_id, DIR_INGRESS, f, f.src_be, 0) {
        count(Counter::PolicyDeniedIngress);
        return false;
    }
    true
}

/// A later fragment where either end has policy: what its first fragment
/// got.
#[inline(always)]
fn frag_follow(key: &FragKey) -> bool {
    match frag_lookup(key) {
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

/// Remember a first fragment's verdict for the rest of its datagram.
#[inline(always)]
fn frag_first_judged(key: &FragKey, allowed: bool) {
    let v = if allowed { FRAG_V_ALLOW } else { FRAG_V_DENY };
    frag_remember(key, 0, v);
}

/// Whether the daemon vouches that no endpoint has policy (then nothing on
/// a veth can be refused, and the hooks skip their lookups).
#[inline(always)]
pub(crate) fn nowhere() -> bool {
    crate::maps::BERTH_CONFIG
        .get(berth_maps::CONFIG_NO_POLICY)
        .is_some_and(|v| *v != 0)
}

/// The endpoint at `addr`, if policy applies to it.
#[inline(always)]
pub(crate) fn endpoint_with_policy(addr_be: u32) -> Option<Endpoint> {
    let ep = unsafe { BERTH_ENDPOINTS.get(&addr_be) }?;
    if ep.flags & EP_F_POLICY != 0 {
        Some(*ep)
    } else {
        None
    }
}

#[inline(always)]
fn rule_matches(
    r: &Rule,
    proto: u8,
    peer_be: u32,
    dport: u16,
    icmp_type: u8,
    icmp_code: u8,
) -> bool {
    if r.proto != RULE_PROTO_ALL {
        if r.proto != proto {
            return false;
        }
        if proto == PROTO_ICMP {
            if r.icmp_type != RULE_ICMP_ANY && r.icmp_type != icmp_type {
                return false;
            }
            if r.icmp_code != RULE_ICMP_ANY && r.icmp_code != icmp_code {
                return false;
            }
        } else if dport < r.port_lo || dport > r.port_hi {
            return false;
        }
    }
    if r.kind == RULE_PEER_CIDR {
        peer_be & r.mask_be == r.addr_be
    } else {
        let m = SgMember {
            sg_id: r.addr_be,
            addr_be: peer_be,
        };
        unsafe { BERTH_SG_MEMBERS.get(&m) }.is_some()
    }
}

/// State of one rule scan, shared with the `bpf_loop` callback.
#[repr(C)]
struct RuleScan {
    policy: *const Policy,
    len: u32,
    peer_be: u32,
    dport: u16,
    proto: u8,
    icmp_type: u8,
    icmp_code: u8,
    matched: u8,
    _pad: u16,
}

/// One rule of the scan; 1 stops the loop. A separate subprogram run by
/// `bpf_loop`, so the verifier checks it once, not once per rule (an
/// unrolled scan of 960 rules came close to the 1M-instruction limit).
#[inline(never)]
extern "C" fn rule_scan_step(index: u64, ctx: *mut c_void) -> i64 {
    let scan = unsafe { &mut *ctx.cast::<RuleScan>() };
    let i = index as usize;
    if i >= scan.len as usize || i >= MAX_RULES {
        return 1;
    }
    let rule = unsafe { &(*scan.policy).rules[i] };
    if rule_matches(
        rule,
        scan.proto,
        scan.peer_be,
        scan.dport,
        scan.icmp_type,
        scan.icmp_code,
    ) {
        scan.matched = 1;
        return 1;
    }
    0
}

/// Whether `task`'s rules in `dir` allow a new flow with `peer`. A task
/// with policy and no rules in a direction allows nothing there.
#[inline(always)]
pub(crate) fn policy_allows(task_id: u32, dir: u32, f: &PFlow, peer_be: u32, dport: u16) -> bool {
    let key = PolicyKey { task_id, dir };
    let Some(p) = BERTH_POLICY.get_ptr(&key) else {
        return false;
    };
    let len = unsafe { (*p).len };
    let mut scan = RuleScan {
        policy: p,
        len,
        peer_be,
        dport,
        proto: f.proto,
        icmp_type: f.icmp_type,
        icmp_code: f.icmp_code,
        matched: 0,
        _pad: 0,
    };
    let n = if (len as usize) < MAX_RULES {
        len
    } else {
        MAX_RULES as u32
    };
    unsafe {
        bpf_loop(
            n,
            rule_scan_step as *const () as *mut c_void,
            (&raw mut scan).cast(),
            0,
        );
    }
    scan.matched != 0
}

/// Whether the packet belongs to a tracked flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ct {
    Tracked,
    Untracked,
    /// Tracked, but it could not be promoted (`BERTH_CT` full): drop.
    Refused,
}

/// Which of a packet's keys a published-port flow (`BERTH_NAT`(_NEW), keyed
/// as the container sends) of it would have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatSide {
    /// Not a TCP/UDP packet: no published-port flow.
    None,
    /// The container sends it: its own key.
    Sent,
    /// The container receives it: its reverse key.
    Received,
}

/// The tracked flow this packet belongs to, in either direction
/// (refreshed; promoted when this packet establishes it). A packet of a
/// published-port flow (`nat`) was judged at the uplink and passes (not
/// refreshed here). Established tables first, so an established flow costs
/// what it did before unestablished flows got tables of their own:
/// published-port flow, then the initiator's key, then the reply's.
#[inline(always)]
pub(crate) fn ct_established(f: &PFlow, nat: NatSide) -> Ct {
    let key = f.key();
    let rkey = reverse_key(&key);
    let nat_key = match nat {
        NatSide::None => None,
        NatSide::Sent => Some(&key),
        NatSide::Received => Some(&rkey),
    };
    if let Some(k) = nat_key {
        if unsafe { BERTH_NAT.get(k) }.is_some() {
            return Ct::Tracked;
        }
    }
    if let Some(e) = BERTH_CT.get_ptr_mut(&key) {
        ct_refresh(e, f.proto, &f.seg, DIR_ORIG, ct_now());
        return Ct::Tracked;
    }
    if let Some(e) = BERTH_CT.get_ptr_mut(&rkey) {
        ct_refresh(e, f.proto, &f.seg, DIR_REPLY, ct_now());
        return Ct::Tracked;
    }
    if let Some(k) = nat_key {
        if unsafe { BERTH_NAT_NEW.get(k) }.is_some() {
            return Ct::Tracked;
        }
    }
    let now = ct_now();
    if let Some(e) = BERTH_CT_NEW.get_ptr_mut(&key) {
        ct_refresh(e, f.proto, &f.seg, DIR_ORIG, now);
        if f.proto == PROTO_TCP
            && tcp_completes(&CtEntry::track(e), &f.seg)
            && ct_promote(&ct_tables(), &key, e).is_err()
        {
            return Ct::Refused;
        }
        return Ct::Tracked;
    }
    if let Some(e) = BERTH_CT_NEW.get_ptr_mut(&rkey) {
        ct_refresh(e, f.proto, &f.seg, DIR_REPLY, now);
        if f.proto != PROTO_TCP && ct_promote(&ct_tables(), &rkey, e).is_err() {
            return Ct::Refused;
        }
        return Ct::Tracked;
    }
    Ct::Untracked
}

/// Whether an untracked packet may open a flow: any but a TCP packet other
/// than a SYN (counted and dropped).
#[inline(always)]
fn ct_may_open(f: &PFlow) -> bool {
    if f.proto == PROTO_TCP && !f.seg.opens() {
        count(Counter::CtNoFlow);
        return false;
    }
    true
}

/// Track a flow policy allowed, as not yet established. The LRU table
/// makes room rather than refuse.
#[inline(always)]
pub(crate) fn ct_create(f: &PFlow) -> Result<(), ()> {
    let (flags, wscale, seq_end, max_win) = ct_init(f.proto, &f.seg);
    let e = CtEntry {
        last_seen_ns: ct_now(),
        flags,
        _pad: 0,
        wscale,
        seq_end,
        max_win,
        _pad2: 0,
    };
    ct_insert_new(&ct_tables(), &f.key(), &e)
}

/// A packet policy judged: `Err` carries what the datapath log says about
/// its refusal (`dplog::EV_*`; `EV_NONE`: nothing).
pub(crate) type Judged = Result<(), u32>;

/// A refusal the log does not write.
#[inline(always)]
fn quiet(allowed: bool) -> Judged {
    if allowed {
        Ok(())
    } else {
        Err(EV_NONE)
    }
}

/// tc ingress of a container's host-side veth (`ifindex`): what the
/// container sends.
#[inline(always)]
pub(crate) fn from_container(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ifindex: u32,
) -> Judged {
    let at = At {
        ifindex,
        from: true,
    };
    match parse_packet(data, data_end, frame_len) {
        Parsed::Flow(f) => {
            let sender = endpoint_with_policy(f.src_addr_be);
            let receiver = endpoint_with_policy(f.dst_addr_be);
            if sender.is_none() && receiver.is_none() {
                return Ok(());
            }
            let pf = pflow_of(&f, data, data_end);
            let judged = from_container_flow(
                &pf,
                sender.unwrap_or_default(),
                receiver.unwrap_or_default(),
            );
            if f.first_frag {
                let key = at.frag_key(f.src_addr_be, f.dst_addr_be, f.proto, f.ip_id_be);
                frag_first_judged(&key, judged.is_ok());
            }
            judged
        }
        Parsed::Fragment(f) => {
            if endpoint_with_policy(f.src_addr_be).is_none()
                && endpoint_with_policy(f.dst_addr_be).is_none()
            {
                return Ok(());
            }
            quiet(frag_follow(&at.frag_key(
                f.src_addr_be,
                f.dst_addr_be,
                f.proto,
                f.ip_id_be,
            )))
        }
        Parsed::Ip(ip) => quiet(other_allowed(data, data_end, frame_len, &ip, &at)),
        Parsed::NotIpv4 => Ok(()),
    }
}

#[inline(always)]
/// `sender` and `receiver` are the default endpoint (no policy) where there
/// is none: plain values, because a `None`'s undefined payload copied into
/// a subprogram is a register the verifier sees read before it was written.
fn from_container_flow(f: &PFlow, sender: Endpoint, receiver: Endpoint) -> Judged {
    // A reply on a published port passes as tracked.
    let nat = if f.proto == PROTO_ICMP {
        NatSide::None
    } else {
        NatSide::Sent
    };
    match ct_established(f, nat) {
        Ct::Tracked => return Ok(()),
        Ct::Refused => return Err(EV_CT_FULL),
        Ct::Untracked => {}
    }
    if !ct_may_open(f) {
        return Err(EV_NONE);
    }
    let dport = u16::from_be(f.dport_be);
    if has_policy(&sender)
        && !policy_allows(sender.task_id, berth_maps::DIR_EGRESS, f, f.dst_be, dport)
    {
        count(Counter::PolicyDeniedEgress);
        return Err(EV_POLICY_EGRESS);
    }
    if has_policy(&receiver) && !policy_allows(receiver.task_id, DIR_INGRESS, f, f.src_be, dport) {
        count(Counter::PolicyDeniedIngress);
        return Err(EV_POLICY);
    }
    if ct_create(f).is_err() {
        return Err(EV_CT_FULL);
    }
    if has_policy(&sender) {
        count(Counter::PolicyAcceptedEgress);
    }
    if has_policy(&receiver) {
        count(Counter::PolicyAcceptedIngress);
    }
    Ok(())
}

/// tc egress of a container's host-side veth (`ifindex`): what the
/// container receives.
#[inline(always)]
pub(crate) fn to_container(data: usize, data_end: usize, frame_len: usize, ifindex: u32) -> Judged {
    let at = At {
        ifindex,
        from: false,
    };
    match parse_packet(data, data_end, frame_len) {
        Parsed::Flow(f) => {
            let Some(ep) = endpoint_with_policy(f.dst_addr_be) else {
                return Ok(());
            };
            let pf = pflow_of(&f, data, data_end);
            let judged = to_container_flow(&pf, ep);
            if f.first_frag {
                let key = at.frag_key(f.src_addr_be, f.dst_addr_be, f.proto, f.ip_id_be);
                frag_first_judged(&key, judged.is_ok());
            }
            judged
        }
        Parsed::Fragment(f) => {
            if endpoint_with_policy(f.dst_addr_be).is_none() {
                return Ok(());
            }
            quiet(frag_follow(&at.frag_key(
                f.src_addr_be,
                f.dst_addr_be,
                f.proto,
                f.ip_id_be,
            )))
        }
        Parsed::Ip(ip) => quiet(other_allowed(data, data_end, frame_len, &ip, &at)),
        Parsed::NotIpv4 => Ok(()),
    }
}

#[inline(always)]
fn to_container_flow(f: &PFlow, ep: Endpoint) -> Judged {
    // A published-port flow, judged at the uplink, passes as tracked.
    let nat = if f.proto == PROTO_ICMP {
        NatSide::None
    } else {
        NatSide::Received
    };
    match ct_established(f, nat) {
        Ct::Tracked => return Ok(()),
        Ct::Refused => return Err(EV_CT_FULL),
        Ct::Untracked => {}
    }
    if !ct_may_open(f) {
        return Err(EV_NONE);
    }
    if !policy_allows(
        ep.task_id,
        DIR_INGRESS,
        f,
        f.src_be,
        u16::from_be(f.dport_be),
    ) {
        count(Counter::PolicyDeniedIngress);
        return Err(EV_POLICY);
    }
    if ct_create(f).is_err() {
        return Err(EV_CT_FULL);
    }
    count(Counter::PolicyAcceptedIngress);
    Ok(())
}

/// North-south: may a new flow from `client` reach `container:port`?
/// Never from one of the host's own addresses (a spoofed source).
#[inline(always)]
pub(crate) fn ingress_allows(
    proto: u8,
    client_be: u32,
    container_be: u32,
    container_port_be: u16,
    sport_be: u16,
) -> bool {
    if crate::spoof::uplink_host_source(client_be) {
        return false;
    }
    let Some(ep) = endpoint_with_policy(container_be) else {
        return true;
    };
    let f = PFlow {
        proto,
        src_be: client_be,
        dst_be: container_be,
        sport_be,
        dport_be: container_port_be,
        icmp_type: 0,
        icmp_code: 0,
        seg: Seg::default(),
    };
    if policy_allows(
        ep.task_id,
        DIR_INGRESS,
        &f,
        client_be,
        u16::from_be(container_port_be),
    ) {
        count(Counter::PolicyAcceptedIngress);
        true
    } else {
        count(Counter::PolicyDeniedIngress);
        dp_log(
            EV_POLICY,
            client_be,
            container_be,
            ports(sport_be, container_port_be),
            u32::from(proto),
        );
        false
    }
}
