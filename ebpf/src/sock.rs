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
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use berth_maps::{Counter, SockRevKey, SockRevValue, CONFIG_NETNS_COOKIE, PROTO_TCP, PROTO_UDP};

use crate::{
    maps::{count, BERTH_CONFIG, BERTH_SOCK_REV},
    service::service_lookup,
    sys::BPF_ANY,
};

pub(crate) const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[inline(always)]
fn sock_proto(ctx: &SockAddrContext) -> Option<u8> {
    match unsafe { (*ctx.sock_addr).type_ } {
        SOCK_STREAM => Some(PROTO_TCP),
        SOCK_DGRAM => Some(PROTO_UDP),
        _ => None,
    }
}

/// 127.0.0.0/8, and 0.0.0.0, which `connect()` takes to mean this host.
#[inline(always)]
fn is_loopback(addr_be: u32) -> bool {
    addr_be == 0 || addr_be.to_ne_bytes()[0] == 127
}

#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
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
    let dst = sa.user_ip4;
    let port_be = sa.user_port as u16;
    let loopback = is_loopback(dst);
    if loopback && !in_host_netns(ctx) {
        return ALLOW;
    }
    // Loopback is the host's own: its wildcard mappings apply.
    let Some(backend) = service_lookup(proto, dst, port_be, loopback) else {
        return ALLOW;
    };
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
    sa.user_ip4 = backend.addr_be;
    sa.user_port = u32::from(backend.port_be);
    count(Counter::SockXlate);
    ALLOW
}

/// recvmsg4 / getpeername4: show the address the application asked for.
#[inline(always)]
pub(crate) fn sock4_reverse(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr_be: sa.user_ip4,
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    if let Some(orig) = unsafe { BERTH_SOCK_REV.get(&key) } {
        sa.user_ip4 = orig.addr_be;
        sa.user_port = u32::from(orig.port_be);
    }
    ALLOW
}
