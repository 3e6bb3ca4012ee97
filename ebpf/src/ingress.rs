//! The uplink ingress pipeline, one for TC (`berth_ingress`) and XDP
//! (`berth_xdp`): source checks, parse, decide, translate, deliver. What
//! differs between the hooks is behind [`Hook`].
use berth_maps::{Backend, Counter, FRAG_K_DNAT, FRAG_V_ALLOW, FRAG_V_DENY, PROTO_TCP};

use crate::{
    ct::ct_now,
    fib::{fib_lookup_frag, fib_lookup_icmp, fib_lookup_v4, NextHop},
    frag::{
        frag_key_of_flow, frag_key_of_frag, frag_lookup, frag_remember, frag_rewrite, FragRewrite,
    },
    hook::Hook,
    icmp::{ct_lookup_icmp_from_outside, icmp_rewrite, parse_icmp_error, IcmpError, Quoted},
    maps::count,
    nat::{ct_track_established, ct_track_ingress, ingress_rewrite, Rewrite, Tracked},
    nexthop::next_hop_to_container,
    parse::{parse_packet, Flow, Frag, Parsed, IP_DST_OFF, TCP_FLAG_SYN},
    service::{is_host_addr, service_find, Service},
    spoof,
    svc_cache::{svc_cache_fresh, svc_cache_get, svc_cache_put},
};

/// Outcome of the hook-independent part of ingress.
enum Ingress {
    Pass,
    Drop,
    /// Not IPv4: the hook's own (IPv6 goes to its program).
    NotIpv4,
    /// Translate to the backend; the client source port towards it, and
    /// the time the flow was refreshed at (coarse clock).
    Dnat(Flow, Backend, u16, u64),
    /// A later fragment of a datagram whose first fragment went to this
    /// container address.
    FragDnat(Frag, u32),
    /// An outside ICMP error about a translated flow, for this container
    /// (and the client port the flow uses towards it).
    Icmp(IcmpError, Backend, u16),
}

/// A packet arriving on an uplink.
#[inline(always)]
pub(crate) fn ingress<H: Hook>(h: &H) -> H::Verdict {
    match ingress_decide(h.data(), h.data_end(), h.frame_len(), h.in_ifindex()) {
        Ingress::Pass => H::PASS,
        Ingress::Drop => H::DROP,
        Ingress::NotIpv4 => h.not_ipv4(),
        Ingress::Dnat(flow, backend, sport_be, now) => {
            // The next hop first: a packet too long for it is answered
            // as it came (`pmtu.rs`), untranslated.
            let mtu_len = h.mtu_len(flow.tot_len);
            let next =
                next_hop_to_container(h, &flow, backend.addr_be, h.in_ifindex(), mtu_len, now);
            match next {
                NextHop::TooBig { mtu } => {
                    return crate::pmtu::too_big(h, &flow, &backend, sport_be, mtu)
                }
                // Nothing to rewrite for a packet that goes nowhere; nor
                // for the later fragments of a first one that did.
                NextHop::Unreachable => {
                    if flow.first_frag {
                        frag_remember(&frag_key_of_flow(FRAG_K_DNAT, &flow), 0, FRAG_V_DENY);
                    }
                    return h.deliver(next);
                }
                _ => {}
            }
            let rw = ingress_rewrite(&flow, &backend, sport_be);
            if h.rewrite(&flow, &rw).is_err() {
                return H::DROP;
            }
            h.deliver(next)
        }
        Ingress::FragDnat(f, to) => {
            let rw = FragRewrite {
                addr_off: IP_DST_OFF,
                old_addr_be: f.dst_addr_be,
                new_addr_be: to,
            };
            if frag_rewrite(h.data(), h.data_end(), &f, &rw).is_err() {
                return H::DROP;
            }
            h.deliver(fib_lookup_frag(h, &f, f.src_addr_be, to, h.in_ifindex()))
        }
        Ingress::Icmp(e, backend, client_port_be) => ingress_icmp(h, &e, &backend, client_port_be),
    }
}

/// Translate an outside ICMP error for its container and deliver it.
#[inline(always)]
fn ingress_icmp<H: Hook>(
    h: &H,
    e: &IcmpError,
    backend: &Backend,
    client_port_be: u16,
) -> H::Verdict {
    if icmp_rewrite(
        h.data(),
        h.data_end(),
        e,
        Quoted::Source,
        backend.addr_be,
        backend.port_be,
        client_port_be,
    )
    .is_err()
    {
        return H::DROP;
    }
    let next = fib_lookup_icmp(h, e, e.outer_src_be, backend.addr_be, h.in_ifindex());
    h.deliver(next)
}

/// Translate a TCP/UDP packet and deliver it; it is now addressed
/// `src -> dst`.
#[inline(always)]
pub(crate) fn translate_and_deliver<H: Hook>(
    h: &H,
    flow: &Flow,
    rw: &Rewrite,
    src: u32,
    dst: u32,
) -> H::Verdict {
    if h.rewrite(flow, rw).is_err() {
        return H::DROP;
    }
    let mtu_len = h.mtu_len(flow.tot_len);
    h.deliver(fib_lookup_v4(h, flow, src, dst, h.in_ifindex(), mtu_len))
}

#[inline(always)]
fn ingress_decide(data: usize, data_end: usize, frame_len: usize, ifindex: u32) -> Ingress {
    if spoof::uplink_martian(data, data_end) {
        return Ingress::Drop;
    }
    let flow = match parse_packet(data, data_end, frame_len) {
        Parsed::NotIpv4 => return Ingress::NotIpv4,
        Parsed::Ip(ip) => {
            let Some(e) = parse_icmp_error(data, data_end, frame_len, &ip) else {
                return Ingress::Pass;
            };
            let Some((backend, client_port_be)) = ct_lookup_icmp_from_outside(&e) else {
                return Ingress::Pass;
            };
            if spoof::uplink_host_source(e.outer_src_be) {
                return Ingress::Drop;
            }
            if e.outer_ttl <= 1 {
                count(Counter::TtlExceeded);
                return Ingress::Drop;
            }
            count(Counter::IcmpXlate);
            return Ingress::Icmp(e, backend, client_port_be);
        }
        Parsed::Fragment(f) => return ingress_frag(&f),
        Parsed::Flow(f) => f,
    };
    if let Some(hit) = ingress_established(&flow, data, data_end, ifindex) {
        return hit;
    }
    let Some(svc) = service_find(flow.proto, flow.dst_addr_be, flow.dst_port_be) else {
        count(Counter::IngressPass);
        return Ingress::Pass;
    };
    // Forwarding would expire it; never hand a packet for a container to a
    // host socket instead. One routed through the host (not its address)
    // is the kernel's to expire.
    if flow.ttl <= 1 {
        if svc.wildcard && !is_host_addr(flow.dst_addr_be) {
            count(Counter::IngressPass);
            return Ingress::Pass;
        }
        count(Counter::TtlExceeded);
        return Ingress::Drop;
    }
    let now = ct_now();
    if flow.proto == PROTO_TCP {
        svc_cache_put(flow.proto, flow.dst_addr_be, flow.dst_port_be, &svc, now);
    }
    let tracked = ct_track_ingress(&flow, &svc, data, data_end, now, ifindex);
    tracked_to(flow, &svc, tracked, now)
}

/// An established TCP flow's packet, on the cached service answer
/// (`svc_cache.rs`); `None`: take the full path (no fresh answer, a
/// packet that could open a flow or must expire, no flow under it).
#[inline(always)]
fn ingress_established(flow: &Flow, data: usize, data_end: usize, ifindex: u32) -> Option<Ingress> {
    if flow.proto != PROTO_TCP || flow.tcp_flags & TCP_FLAG_SYN != 0 || flow.ttl <= 1 {
        return None;
    }
    let (svc, checked_ns) = svc_cache_get(flow.proto, flow.dst_addr_be, flow.dst_port_be)?;
    let now = ct_now();
    if !svc_cache_fresh(checked_ns, now) {
        return None;
    }
    let tracked = ct_track_established(flow, &svc, data, data_end, now, ifindex)?;
    Some(tracked_to(*flow, &svc, tracked, now))
}

/// What tracking decided, as the pipeline's outcome.
#[inline(always)]
fn tracked_to(flow: Flow, svc: &Service, tracked: Tracked, now: u64) -> Ingress {
    let sport_be = match tracked {
        Tracked::Forward(port) => port,
        Tracked::Drop => {
            // Its datagram can never be whole: its later fragments are
            // dropped here too (`ingress_frag`).
            if flow.first_frag {
                let key = frag_key_of_flow(FRAG_K_DNAT, &flow);
                frag_remember(&key, 0, FRAG_V_DENY);
            }
            return Ingress::Drop;
        }
        Tracked::NotOurs => {
            count(Counter::IngressPass);
            return Ingress::Pass;
        }
    };
    let backend = svc.backend;
    if flow.first_frag {
        let key = frag_key_of_flow(FRAG_K_DNAT, &flow);
        frag_remember(&key, backend.addr_be, FRAG_V_ALLOW);
    }
    count(Counter::IngressDnat);
    crate::stats::binding_count_in(backend.binding, flow.tot_len);
    Ingress::Dnat(flow, backend, sport_be, now)
}

/// A later fragment at an uplink goes where its first fragment went, or
/// nowhere when its first was dropped; one nothing was remembered for is
/// left to the host (it may be its own).
#[inline(always)]
fn ingress_frag(f: &Frag) -> Ingress {
    let Some(e) = frag_lookup(&frag_key_of_frag(FRAG_K_DNAT, f)) else {
        count(Counter::Fragment);
        return Ingress::Pass;
    };
    if e.verdict != FRAG_V_ALLOW {
        count(Counter::FragDenied);
        return Ingress::Drop;
    }
    if f.ttl <= 1 {
        count(Counter::TtlExceeded);
        return Ingress::Drop;
    }
    count(Counter::FragXlate);
    Ingress::FragDnat(*f, e.addr_be)
}
