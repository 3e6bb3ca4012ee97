//! The IPv6 rule scan: whether a task's IPv6 rules in one direction allow
//! a new flow with a peer, as `policy.rs` scans IPv4's (one `bpf_loop`
//! callback, so the verifier checks one rule, not 960).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC, cty::c_void, helpers::bpf_loop, macros::map, maps::HashMap,
};
use berth_maps::{
    Endpoint, Policy6, PolicyKey, Rule6, SgMember6, ENDPOINTS6_CAPACITY, MAX_RULES,
    POLICY6_CAPACITY, PROTO_ICMPV6, RULE_ICMP_ANY, RULE_PEER_CIDR, RULE_PROTO_ALL,
    SG_MEMBERS6_CAPACITY,
};

/// Container IPv6 address -> its task (`berth_maps::ENDPOINTS6_MAP`).
#[map]
pub(crate) static BERTH_ENDPOINTS6: HashMap<[u8; 16], Endpoint> =
    HashMap::pinned(ENDPOINTS6_CAPACITY, BPF_F_NO_PREALLOC);

/// (task, direction) -> its IPv6 rules (`berth_maps::POLICY6_MAP`).
#[map]
pub(crate) static BERTH_POLICY6: HashMap<PolicyKey, Policy6> =
    HashMap::pinned(POLICY6_CAPACITY, BPF_F_NO_PREALLOC);

/// (group, member IPv6 address) -> 1 (`berth_maps::SG_MEMBERS6_MAP`).
#[map]
pub(crate) static BERTH_SG_MEMBERS6: HashMap<SgMember6, u32> =
    HashMap::pinned(SG_MEMBERS6_CAPACITY, BPF_F_NO_PREALLOC);

/// What a rule is matched against. `proto` is [`PROTO_OTHER`] for what is
/// neither TCP, UDP nor `ICMPv6`: only an "all protocols" rule takes it.
#[derive(Clone, Copy)]
pub(crate) struct Match6 {
    pub proto: u8,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// A protocol no rule but "all" names (IPv6's reserved 255).
pub(crate) const PROTO_OTHER: u8 = 255;

/// Whether the upper-layer protocol `next` (the fixed header's next
/// header, or the one behind the extension headers the parser walked) of
/// a packet the parser left alone is a protocol a numbered rule may name
/// (GRE, IP-in-IP, SCTP, ESP, ...): not an extension header (hop-by-hop,
/// routing, fragment, destination options, mobility, HIP, shim6,
/// experimental), "no next header", nor TCP, UDP or `ICMPv6`, which the
/// parser or the `ICMPv6` judge handle and reach here only malformed or
/// (`ICMPv6`) behind extension headers. The rest is [`PROTO_OTHER`], for
/// "all" rules only.
#[inline(always)]
pub(crate) fn numbered6(next: u8) -> bool {
    !matches!(
        next,
        0 | 6 | 17 | 43 | 44 | 58 | 59 | 60 | 135 | 139 | 140 | 253 | 254 | 255
    )
}

#[inline(always)]
fn in_cidr(peer: &[u8; 16], addr: &[u8; 16], mask: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if peer[i] & mask[i] != addr[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn rule_matches6(r: &Rule6, m: &Match6, peer: &[u8; 16]) -> bool {
    if r.proto != RULE_PROTO_ALL {
        if r.proto != m.proto {
            return false;
        }
        if m.proto == PROTO_ICMPV6 {
            if r.icmp_type != RULE_ICMP_ANY && r.icmp_type != m.icmp_type {
                return false;
            }
            if r.icmp_code != RULE_ICMP_ANY && r.icmp_code != m.icmp_code {
                return false;
            }
        } else if m.dport < r.port_lo || m.dport > r.port_hi {
            return false;
        }
    }
    if r.kind == RULE_PEER_CIDR {
        in_cidr(peer, &r.addr, &r.mask)
    } else {
        let k = SgMember6 {
            sg_id: r.sg_id,
            addr: *peer,
        };
        unsafe { BERTH_SG_MEMBERS6.get(&k) }.is_some()
    }
}

/// State of one scan, shared with the `bpf_loop` callback.
#[repr(C)]
struct Scan6 {
    policy: *const Policy6,
    len: u32,
    m: Match6,
    peer: [u8; 16],
    matched: u8,
    _pad: [u8; 3],
}

#[inline(never)]
extern "C" fn rule6_step(index: u64, ctx: *mut c_void) -> i64 {
    let scan = unsafe { &mut *ctx.cast::<Scan6>() };
    let i = index as usize;
    if i >= scan.len as usize || i >= MAX_RULES {
        return 1;
    }
    let rule = unsafe { &(*scan.policy).rules[i] };
    if rule_matches6(rule, &scan.m, &scan.peer) {
        scan.matched = 1;
        return 1;
    }
    0
}

/// Whether `task`'s IPv6 rules in `dir` allow a new flow with `peer`. No
/// rules (none compiled for IPv6, or none in the direction) allow nothing.
#[inline(always)]
pub(crate) fn policy6_allows(task_id: u32, dir: u32, m: &Match6, peer: &[u8; 16]) -> bool {
    let key = PolicyKey { task_id, dir };
    let Some(p) = BERTH_POLICY6.get_ptr(&key) else {
        return false;
    };
    let len = unsafe { (*p).len };
    let n = if (len as usize) < MAX_RULES {
        len
    } else {
        MAX_RULES as u32
    };
    let mut scan = Scan6 {
        policy: p,
        len: n,
        m: *m,
        peer: *peer,
        matched: 0,
        _pad: [0; 3],
    };
    unsafe {
        bpf_loop(
            n,
            rule6_step as *const () as *mut c_void,
            (&raw mut scan).cast(),
            0,
        );
    }
    scan.matched != 0
}

/// The endpoint at IPv6 address `addr`, if policy applies to it.
#[inline(always)]
pub(crate) fn endpoint6_with_policy(addr: &[u8; 16]) -> Option<Endpoint> {
    let ep = unsafe { BERTH_ENDPOINTS6.get(addr) }?;
    if ep.flags & berth_maps::EP_F_POLICY != 0 {
        Some(*ep)
    } else {
        None
    }
}

/// North-south over IPv6, for NAT66 at the uplink (`berth_ingress6`): may
/// a new flow from `client` reach `container`'s port (network order)? The
/// container's task's ingress rules with the client's real address, as
/// `policy::ingress_allows` for IPv4 (a refusal counted). A container
/// `BERTH_ENDPOINTS6` does not list is judged where it is delivered, by
/// `berth_to_ctr6` on its veth (which judges every flow a container
/// receives in any case).
#[inline(always)]
pub(crate) fn ingress_allows6(
    proto: u8,
    client: &[u8; 16],
    container: &[u8; 16],
    container_port_be: u16,
) -> bool {
    let Some(ep) = endpoint6_with_policy(container) else {
        return true;
    };
    let m = Match6 {
        proto,
        dport: u16::from_be(container_port_be),
        icmp_type: 0,
        icmp_code: 0,
    };
    // An accepted flow is counted once, where `berth_to_ctr6` tracks it.
    if policy6_allows(ep.task_id, berth_maps::DIR_INGRESS, &m, client) {
        return true;
    }
    crate::maps::count(berth_maps::Counter::PolicyDeniedIngress);
    false
}
