//! Socket-level translation for the paths a packet rewrite on the uplink
//! never sees: a process on the host calling `127.0.0.1:PORT` or
//! `<host IP>:PORT`, and a container calling `<host IP>:PORT` (hairpin).
//! `connect()/sendmsg()` to a published port are pointed at the container
//! before any packet exists, so no NAT and no proxy sit in the path and the
//! server sees the caller's own address; `getpeername()/recvmsg()` show the
//! address the application asked for.
//!
//! Scope: loopback destinations are translated only in the host's network
//! namespace (127.0.0.1 in a container is the container itself); the host's
//! own addresses in any namespace on the host (they are the host's).
//!
//! IPv6 sockets are `sock6.rs`; a dual-stack socket calling a v4-mapped
//! address goes through the IPv4 translation here ([`forward4`],
//! [`reverse4`]), as it is IPv4 on the wire.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use berth_maps::{
    Backend, Counter, SockRevKey, SockRevValue, CONFIG_NETNS_COOKIE, PROTO_TCP, PROTO_UDP,
};

use crate::{
    maps::{count, BERTH_CONFIG, BERTH_SOCK_REV},
    service::service_lookup,
    sys::BPF_ANY,
};

pub(crate) const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[inline(always)]
pub(crate) fn sock_proto(ctx: &SockAddrContext) -> Option<u8> {
    match unsafe { (*ctx.sock_addr).type_ } {
        SOCK_STREAM => Some(PROTO_TCP),
        SOCK_DGRAM => Some(PROTO_UDP),
        _ => None,
    }
}

/// 127.0.0.0/8, and 0.0.0.0, which `connect()` takes to mean this host.
#[inline(always)]
pub(crate) fn is_loopback(addr_be: u32) -> bool {
    addr_be == 0 || addr_be.to_ne_bytes()[0] == 127
}

#[inline(always)]
pub(crate) fn in_host_netns(ctx: &SockAddrContext) -> bool {
    match BERTH_CONFIG.get(CONFIG_NETNS_COOKIE) {
        Some(c) => *c != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == *c,
        None => false,
    }
}

/// connect4 / sendmsg4: point the socket at the container.
#[inline(always)]
pub(crate) fn sock4_forward(ctx: &SockAddrContext) -> i32 {
    let Some(proto) = sock_proto(ctx) else {
        return ALLOW;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(backend) = forward4(ctx, proto, sa.user_ip4, sa.user_port as u16) else {
        return ALLOW;
    };
    sa.user_ip4 = backend.addr_be;
    sa.user_port = u32::from(backend.port_be);
    ALLOW
}

/// The container a socket calling (`dst`, `port_be`) is pointed at, with
/// the original remembered for [`reverse4`] and counted; `None` leaves
/// the call alone.
#[inline(always)]
pub(crate) fn forward4(
    ctx: &SockAddrContext,
    proto: u8,
    dst: u32,
    port_be: u16,
) -> Option<Backend> {
    let loopback = is_loopback(dst);
    if loopback && !in_host_netns(ctx) {
        return None;
    }
    // Loopback is the host's own: its wildcard mappings apply.
    let backend = service_lookup(proto, dst, port_be, loopback)?;
    let rev_key = SockRevKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr_be: backend.addr_be,
        port_be: backend.port_be,
        _pad: 0,
    };
    let rev = SockRevValue {
        addr_be: dst,
        port_be,
        _pad: 0,
    };
    // Best effort: without it only getpeername()/recvmsg() show the container.
    let _ = BERTH_SOCK_REV.insert(&rev_key, &rev, BPF_ANY);
    count(Counter::SockXlate);
    Some(backend)
}

/// recvmsg4 / getpeername4: show the address the application asked for.
#[inline(always)]
pub(crate) fn sock4_reverse(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(orig) = reverse4(ctx, sa.user_ip4, sa.user_port as u16) {
        sa.user_ip4 = orig.addr_be;
        sa.user_port = u32::from(orig.port_be);
    }
    ALLOW
}

/// What [`forward4`] remembered for this socket and container address.
#[inline(always)]
pub(crate) fn reverse4(ctx: &SockAddrContext, addr_be: u32, port_be: u16) -> Option<SockRevValue> {
    let key = SockRevKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr_be,
        port_be,
        _pad: 0,
    };
    unsafe { BERTH_SOCK_REV.get(&key) }.copied()
}
