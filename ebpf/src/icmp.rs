//! ICMP errors about translated flows. The error quotes the offending
//! packet (its IPv4 header and at least 8 bytes of L4), so both the outer
//! header and the quoted one are translated, with every checksum they
//! touch: outer IPv4; quoted IPv4; quoted UDP/TCP when quoted; ICMP, which
//! covers the quote.
//!
//! - From a container (bridge hook): e.g. port unreachable about a flow the
//!   client sent to the host port: the client must see it from host:port.
//!   Only the flow's own container may speak for it, and only to the flow's
//!   client: an error quoting a translated flow whose outer source is not
//!   that flow's container, or whose outer destination is not its client,
//!   is forged (another tenant probing or disturbing the flow) and dropped
//!   (`icmp_forged`) rather than passed on half-translated.
//! - From the outside (uplink hook): e.g. fragmentation needed about a reply
//!   that left as host:port: the container must see it about its own
//!   address, so path-MTU discovery works.
//!
//! ICMP errors are generated complete (never `CHECKSUM_PARTIAL`), so one
//! direct-write implementation with RFC 1624 arithmetic serves TC and XDP.
use berth_maps::{Backend, FlowKey, NatEntry, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::{
    csum,
    maps::BERTH_NAT_FWD,
    nat::{nat_get, nat_key},
    parse::{
        echo_ports, flow_key, l4_ports, parse_ipv4, ptr_at, reverse_key, Ip, ETH_LEN,
        ICMP_DEST_UNREACH, ICMP_PARAMETERPROB, ICMP_TIME_EXCEEDED,
    },
    service::service_lookup,
};

/// Longest headers an ICMP error needs: Ethernet, outer IPv4 with options,
/// ICMP, quoted IPv4 with options, quoted TCP up to its checksum.
pub(crate) const ICMP_MAX_HDR_LEN: usize = ETH_LEN + 60 + 8 + 60 + 18;

/// Covers every header offset of an ICMP error (all below
/// [`ICMP_MAX_HDR_LEN`]).
const HDR_OFF_MASK: usize = 0xff;
const _: () = assert!(ICMP_MAX_HDR_LEN <= HDR_OFF_MASK + 1);

#[derive(Clone, Copy)]
pub(crate) struct IcmpError {
    pub outer_ttl: u8,
    pub outer_proto: u8,
    pub outer_src_be: u32,
    pub outer_dst_be: u32,
    pub outer_tot_len: u16,
    /// Where the outer packet ends (the quote must not reach past it).
    pub outer_end: usize,
    pub icmp_off: usize,
    pub inner_ip_off: usize,
    pub inner_l4_off: usize,
    pub inner_proto: u8,
    pub inner_src_be: u32,
    pub inner_dst_be: u32,
    pub inner_sport_be: u16,
    pub inner_dport_be: u16,
}

impl IcmpError {
    /// The quoted packet's flow key, as it travelled.
    #[inline(always)]
    pub(crate) fn quoted_key(&self) -> FlowKey {
        flow_key(
            self.inner_src_be,
            self.inner_dst_be,
            self.inner_sport_be,
            self.inner_dport_be,
            self.inner_proto,
        )
    }
}

/// An ICMP error quoting a TCP/UDP packet, or `None`. `ip`: the frame's
/// IPv4 header as the parser described it (`Parsed::Ip`). The quote ends
/// where the outer IPv4 total length says, which must cover the quoted
/// ports and lie within the frame (`frame_len`); a quoted fragment has no
/// ports to trust and is left alone.
#[inline(always)]
pub(crate) fn parse_icmp_error(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ip: &Ip,
) -> Option<IcmpError> {
    parse_icmp_error_quoting::<false>(data, data_end, frame_len, ip)
}

/// As [`parse_icmp_error`]; with `ECHO`, a quoted ICMP echo request or
/// reply is accepted too, its identifier in the port policy keys echo
/// flows by (request: source, reply: destination), so a time-exceeded
/// about a ping can be matched to the ping's flow. NAT never translates
/// echo, so only policy asks for it. The quoted header is parsed by the
/// functions that parse the frame's own.
#[inline(always)]
pub(crate) fn parse_icmp_error_quoting<const ECHO: bool>(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ip: &Ip,
) -> Option<IcmpError> {
    if ip.proto != PROTO_ICMP || ip.fragmented() {
        return None;
    }
    let outer_end = ETH_LEN + ip.tot_len as usize;
    if outer_end > frame_len {
        return None;
    }
    let icmp_off = ETH_LEN + ip.hdr_len();
    let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, icmp_off)? };
    if !matches!(
        icmp[0],
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
    ) {
        return None;
    }
    let inner_ip_off = icmp_off + 8;
    let inner = parse_ipv4(data, data_end, inner_ip_off)?;
    let echo = ECHO && inner.proto == PROTO_ICMP;
    if inner.proto != PROTO_TCP && inner.proto != PROTO_UDP && !echo {
        return None;
    }
    if inner.fragmented() {
        return None;
    }
    let inner_l4_off = inner_ip_off + inner.hdr_len();
    let ports = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, inner_l4_off)? };
    let (sport, dport) = if echo {
        echo_ports(ports)?
    } else {
        l4_ports(ports)
    };
    // After the packet-pointer check, or LLVM may fold the two into one
    // the verifier cannot follow.
    if inner_l4_off + 8 > outer_end {
        return None;
    }
    Some(IcmpError {
        outer_ttl: ip.ttl,
        outer_proto: ip.proto,
        outer_src_be: ip.src_be,
        outer_dst_be: ip.dst_be,
        outer_tot_len: ip.tot_len,
        outer_end,
        icmp_off,
        inner_ip_off,
        inner_l4_off,
        inner_proto: inner.proto,
        inner_src_be: inner.src_be,
        inner_dst_be: inner.dst_be,
        inner_sport_be: sport,
        inner_dport_be: dport,
    })
}

/// The tracked flow a container's ICMP error is about: the quoted packet
/// went client -> container (with the client port the flow uses towards
/// the container, remapped or not).
#[inline(always)]
pub(crate) fn ct_lookup_icmp_from_container(e: &IcmpError) -> Option<NatEntry> {
    nat_get(&reverse_key(&e.quoted_key()))
}

/// Whether a container's error about a tracked flow (the quoted packet went
/// client -> container) comes from that container and goes to that client.
#[inline(always)]
pub(crate) fn icmp_from_flow_container(e: &IcmpError) -> bool {
    e.outer_src_be == e.inner_dst_be && e.outer_dst_be == e.inner_src_be
}

/// The container behind an outside ICMP error, and the client port its
/// flow uses towards it: the quoted packet is a reply that left as
/// host:port towards the client's own port.
#[inline(always)]
pub(crate) fn ct_lookup_icmp_from_outside(e: &IcmpError) -> Option<(Backend, u16)> {
    if e.outer_dst_be != e.inner_src_be {
        return None;
    }
    let backend = service_lookup(e.inner_proto, e.inner_src_be, e.inner_sport_be, false)?;
    // Only flows berth translated, and only with the host port they used.
    let mut flow = nat_key(e.inner_proto, &backend, e.inner_dst_be, e.inner_dport_be);
    if let Some(entry) = nat_get(&flow) {
        if icmp_flow_is(&entry, e) {
            return Some((backend, e.inner_dport_be));
        }
    }
    // A flow whose client port was remapped after a clash: the client
    // sent what the error quotes the reply of.
    let wire = reverse_key(&e.quoted_key());
    let fwd = unsafe { BERTH_NAT_FWD.get(&wire) }?;
    if fwd.backend_addr_be != backend.addr_be || fwd.backend_port_be != backend.port_be {
        return None;
    }
    flow.dst_port_be = fwd.remap_port_be;
    let entry = nat_get(&flow)?;
    if !icmp_flow_is(&entry, e) {
        return None;
    }
    Some((backend, fwd.remap_port_be))
}

/// Whether `entry` is the flow whose reply (host:port -> client:port) the
/// error quotes.
#[inline(always)]
fn icmp_flow_is(entry: &NatEntry, e: &IcmpError) -> bool {
    entry.host_port_be == e.inner_sport_be
        && entry.host_addr_be == e.inner_src_be
        && entry.client_port_be == e.inner_dport_be
}

#[inline(always)]
unsafe fn rd<T: Copy>(p: *mut T) -> T {
    unsafe { core::ptr::read_unaligned(p) }
}

#[inline(always)]
unsafe fn wr<T>(p: *mut T, v: T) {
    unsafe { core::ptr::write_unaligned(p, v) }
}

/// Which side of the quoted packet changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quoted {
    /// From a container: outer source and quoted destination become host.
    Destination,
    /// From outside: outer destination and quoted source become container.
    Source,
}

/// Rewrite an ICMP error: outer address `old_addr -> new_addr` (source or
/// destination per `side`), quoted address and port likewise, TTL - 1.
/// `client_port_be` is the quoted client port as it must read (it differs
/// when a clash remapped the client's source port towards the container).
#[inline(always)]
pub(crate) fn icmp_rewrite(
    data: usize,
    data_end: usize,
    e: &IcmpError,
    side: Quoted,
    new_addr_be: u32,
    new_port_be: u16,
    client_port_be: u16,
) -> Result<(), ()> {
    // One packet check per header, and every field addressed from that
    // checked pointer at a constant offset: separate checks of fields at
    // offsets from one base are merged by LLVM into code the verifier
    // cannot follow. The offsets are read volatile (LLVM would otherwise
    // drop the checks as implied by the parser's) and masked (a bound for
    // the verifier; they are below ICMP_MAX_HDR_LEN by construction).
    let (icmp_off, inner_ip_off, inner_l4_off) = unsafe {
        (
            core::ptr::read_volatile(&raw const e.icmp_off) & HDR_OFF_MASK,
            core::ptr::read_volatile(&raw const e.inner_ip_off) & HDR_OFF_MASK,
            core::ptr::read_volatile(&raw const e.inner_l4_off) & HDR_OFF_MASK,
        )
    };
    let outer = ptr_at::<[u8; 20]>(data, data_end, ETH_LEN)
        .ok_or(())?
        .cast::<u8>();
    let icmp = ptr_at::<[u8; 4]>(data, data_end, icmp_off)
        .ok_or(())?
        .cast::<u8>();
    let inner = ptr_at::<[u8; 20]>(data, data_end, inner_ip_off)
        .ok_or(())?
        .cast::<u8>();
    let ports = ptr_at::<[u8; 4]>(data, data_end, inner_l4_off)
        .ok_or(())?
        .cast::<u8>();
    // Byte offsets within the IPv4 header (source, destination) and the
    // L4 header (source port, destination port).
    let (outer_addr_off, old_outer, inner_addr_off, old_inner, inner_port_off, old_port) =
        match side {
            Quoted::Destination => (12, e.outer_src_be, 16, e.inner_dst_be, 2, e.inner_dport_be),
            Quoted::Source => (16, e.outer_dst_be, 12, e.inner_src_be, 0, e.inner_sport_be),
        };
    // The quoted client port: source of what the client sent, destination
    // of the reply that left towards it.
    let (client_port_off, old_client_port) = match side {
        Quoted::Destination => (0, e.inner_sport_be),
        Quoted::Source => (2, e.inner_dport_be),
    };
    let (client_port, inner_port) = unsafe {
        (
            ports.add(client_port_off).cast::<u16>(),
            ports.add(inner_port_off).cast::<u16>(),
        )
    };
    let (ip_csum, ttl_word, outer_addr) = unsafe {
        (
            outer.add(10).cast::<u16>(),
            outer.add(8).cast::<u16>(),
            outer.add(outer_addr_off).cast::<u32>(),
        )
    };
    let icmp_csum = unsafe { icmp.add(2).cast::<u16>() };
    let (inner_csum, inner_addr) = unsafe {
        (
            inner.add(10).cast::<u16>(),
            inner.add(inner_addr_off).cast::<u32>(),
        )
    };
    // The quoted L4 checksum, when the quote reaches it.
    let l4_csum_off = if e.inner_proto == PROTO_TCP {
        inner_l4_off + 16
    } else {
        inner_l4_off + 6
    };
    let inner_l4_csum = if l4_csum_off + 2 <= e.outer_end {
        ptr_at::<u16>(data, data_end, l4_csum_off)
    } else {
        None
    };
    unsafe {
        // Outer header.
        let old_ttl = u16::from_ne_bytes([e.outer_ttl, e.outer_proto]);
        let new_ttl = u16::from_ne_bytes([e.outer_ttl - 1, e.outer_proto]);
        let mut c = csum::replace4(rd(ip_csum), old_outer, new_addr_be);
        c = csum::replace2(c, old_ttl, new_ttl);
        wr(ip_csum, c);
        wr(ttl_word, new_ttl);
        wr(outer_addr, new_addr_be);

        // Quoted headers; the ICMP checksum follows every quoted change.
        let mut ic = rd(icmp_csum);
        let old_inner_csum = rd(inner_csum);
        let new_inner_csum = csum::replace4(old_inner_csum, old_inner, new_addr_be);
        ic = csum::replace4(ic, old_inner, new_addr_be);
        ic = csum::replace2(ic, old_inner_csum, new_inner_csum);
        ic = csum::replace2(ic, old_port, new_port_be);
        let remapped = old_client_port != client_port_be;
        if remapped {
            ic = csum::replace2(ic, old_client_port, client_port_be);
        }
        wr(inner_csum, new_inner_csum);
        wr(inner_addr, new_addr_be);
        wr(inner_port, new_port_be);
        wr(client_port, client_port_be);
        if let Some(l4c) = inner_l4_csum {
            let old_l4 = rd(l4c);
            if !(e.inner_proto == PROTO_UDP && old_l4 == 0) {
                let mut n = csum::replace4(old_l4, old_inner, new_addr_be);
                n = csum::replace2(n, old_port, new_port_be);
                if remapped {
                    n = csum::replace2(n, old_client_port, client_port_be);
                }
                if n == 0 && e.inner_proto == PROTO_UDP {
                    n = 0xffff;
                }
                ic = csum::replace2(ic, old_l4, n);
                wr(l4c, n);
            }
        }
        wr(icmp_csum, ic);
    }
    Ok(())
}
