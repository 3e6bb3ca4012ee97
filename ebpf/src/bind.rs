//! cgroup/bind4 and bind6: a host process binding a published host port
//! gets EADDRINUSE, as if the port were taken, instead of silently
//! receiving nothing (the datapath steals its packets) or, over IPv6,
//! receiving the clients that resolve `localhost` to `::1`. The address
//! bound does not matter: any IPv4 address, and any IPv6 one — `::` (dual
//! stack), `::1`, v4-mapped `::ffff:a.b.c.d` — as with Docker, whose
//! docker-proxy holds both `0.0.0.0:PORT` and `[::]:PORT`. The hooks are
//! attached to a cgroup, which spans network namespaces, so they act only
//! in the namespace whose cookie the daemon wrote.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use berth_maps::{Counter, PortKey, CONFIG_NETNS_COOKIE, PROTO_TCP, PROTO_UDP};

use crate::maps::{count, BERTH_CONFIG, BERTH_PORTS};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const EADDRINUSE: i32 = 98;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[inline(always)]
pub(crate) fn bind4_check(ctx: &SockAddrContext) -> i32 {
    bind_check(ctx)
}

#[inline(always)]
pub(crate) fn bind6_check(ctx: &SockAddrContext) -> i32 {
    bind_check(ctx)
}

/// Family-independent: only the protocol and the port are looked at.
#[inline(always)]
fn bind_check(ctx: &SockAddrContext) -> i32 {
    let Some(cookie) = BERTH_CONFIG.get(CONFIG_NETNS_COOKIE) else {
        return ALLOW;
    };
    if *cookie == 0 || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != *cookie {
        return ALLOW;
    }
    let sa = unsafe { &*ctx.sock_addr };
    let proto = match sa.type_ {
        SOCK_STREAM => PROTO_TCP,
        SOCK_DGRAM => PROTO_UDP,
        _ => return ALLOW,
    };
    // user_port holds the port in network byte order in its low 16 bits.
    let port_be = sa.user_port as u16;
    if port_be == 0 {
        return ALLOW; // ephemeral: ip_local_reserved_ports keeps mapped ports out
    }
    let key = PortKey {
        port_be,
        proto,
        _pad: 0,
    };
    if unsafe { BERTH_PORTS.get(&key) }.is_none() {
        return ALLOW;
    }
    count(Counter::BindRefused);
    unsafe {
        bpf_set_retval(-EADDRINUSE);
    }
    REFUSE
}
