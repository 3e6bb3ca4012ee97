//! Socket-level translation over IPv6, as `sock.rs` does it over IPv4: a
//! host process calling `[::1]:PORT` or `[<host IPv6 address>]:PORT`, and a
//! container calling the host's IPv6 address (hairpin), is pointed at the
//! container of the IPv6 mapping before any packet exists;
//! `getpeername()/recvmsg()` show the address the application asked for.
//!
//! A dual-stack socket calling a v4-mapped address (`::ffff:127.0.0.1`,
//! `::ffff:<host IPv4>`) is IPv4 on the wire: the kernel takes it down the
//! IPv4 path after `connect6`, without running `connect4`, so this hook
//! points it at the IPv4 mapping's container, as `::ffff:<container>`, and
//! remembers the original in the IPv4 map (`recvmsg6`/`getpeername6` see
//! the IPv4 reply as v4-mapped too). An unconnected `sendmsg()` to a
//! v4-mapped address never reaches `sendmsg6`: the kernel hands it to the
//! IPv4 send, where `sendmsg4` translates it.
//!
//! Scope as over IPv4: `::1` and `::` only in the host's network namespace;
//! an address bound mapping (`[2001:db8::1]:8080`) wherever it is called
//! from on the host; a `[::]` mapping on loopback and on the host's own
//! IPv6 addresses (`BERTH_HOST_ADDRS6`), never on an address merely routed
//! through the host.
use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use berth_maps::{Backend6, Counter, ServiceKey6, SockRevKey6, SockRevValue6};

use crate::{
    maps::{count, BERTH_HOST_ADDRS6, BERTH_SERVICES6, BERTH_SOCK_REV6},
    sock::{forward4, in_host_netns, reverse4, sock_proto, ALLOW},
    sys::BPF_ANY,
};

/// `user_ip6` as four 32-bit words in network byte order, as the kernel
/// lets them be read and written (one 4-byte access each; the compiler
/// must not merge two into one 8-byte access, so each is volatile).
#[derive(Clone, Copy)]
struct Words([u32; 4]);

impl Words {
    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> Self {
        let sa = ctx.sock_addr;
        let mut w = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            w[i] = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
            i += 1;
        }
        Self(w)
    }

    #[inline(always)]
    fn write(self, ctx: &SockAddrContext) {
        let sa = ctx.sock_addr;
        let mut i = 0;
        while i < 4 {
            unsafe {
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], self.0[i]);
            }
            i += 1;
        }
    }

    #[inline(always)]
    fn from_bytes(b: &[u8; 16]) -> Self {
        Self([
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ])
    }

    #[inline(always)]
    fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = self.0[i].to_ne_bytes();
            b[4 * i] = w[0];
            b[4 * i + 1] = w[1];
            b[4 * i + 2] = w[2];
            b[4 * i + 3] = w[3];
            i += 1;
        }
        b
    }

    /// The IPv4 address of `::ffff:a.b.c.d`.
    #[inline(always)]
    fn v4_mapped(self) -> Option<u32> {
        (self.0[0] == 0 && self.0[1] == 0 && self.0[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
            .then_some(self.0[3])
    }

    /// `::1`, and `::`, which `connect()` takes to mean this host.
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self.0[0] == 0
            && self.0[1] == 0
            && self.0[2] == 0
            && (self.0[3] == 0 || self.0[3] == u32::from_ne_bytes([0, 0, 0, 1]))
    }
}

#[inline(always)]
fn set_port(ctx: &SockAddrContext, port_be: u16) {
    unsafe {
        (*ctx.sock_addr).user_port = u32::from(port_be);
    }
}

/// connect6 / sendmsg6: point the socket at the container.
#[inline(always)]
pub(crate) fn sock6_forward(ctx: &SockAddrContext) -> i32 {
    let Some(proto) = sock_proto(ctx) else {
        return ALLOW;
    };
    let mut dst = Words::read(ctx);
    let port_be = unsafe { (*ctx.sock_addr).user_port } as u16;
    if let Some(v4) = dst.v4_mapped() {
        if let Some(b) = forward4(ctx, proto, v4, port_be) {
            dst.0[3] = b.addr_be;
            dst.write(ctx);
            set_port(ctx, b.port_be);
        }
        return ALLOW;
    }
    let loopback = dst.is_loopback();
    if loopback && !in_host_netns(ctx) {
        return ALLOW;
    }
    let addr = dst.bytes();
    let Some(backend) = lookup6(proto, &addr, port_be, loopback) else {
        return ALLOW;
    };
    let key = SockRevKey6 {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr: backend.addr,
        port_be: backend.port_be,
        _pad: [0; 6],
    };
    let rev = SockRevValue6 {
        addr,
        port_be,
        _pad: [0; 2],
    };
    // Best effort: without it only getpeername()/recvmsg() show the container.
    let _ = BERTH_SOCK_REV6.insert(&key, &rev, BPF_ANY);
    Words::from_bytes(&backend.addr).write(ctx);
    set_port(ctx, backend.port_be);
    count(Counter::SockXlate);
    ALLOW
}

/// recvmsg6 / getpeername6: show the address the application asked for.
#[inline(always)]
pub(crate) fn sock6_reverse(ctx: &SockAddrContext) -> i32 {
    let mut src = Words::read(ctx);
    let port_be = unsafe { (*ctx.sock_addr).user_port } as u16;
    if let Some(v4) = src.v4_mapped() {
        if let Some(orig) = reverse4(ctx, v4, port_be) {
            src.0[3] = orig.addr_be;
            src.write(ctx);
            set_port(ctx, orig.port_be);
        }
        return ALLOW;
    }
    let key = SockRevKey6 {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr: src.bytes(),
        port_be,
        _pad: [0; 6],
    };
    if let Some(orig) = unsafe { BERTH_SOCK_REV6.get(&key) } {
        let (addr, port) = (orig.addr, orig.port_be);
        Words::from_bytes(&addr).write(ctx);
        set_port(ctx, port);
    }
    ALLOW
}

/// The IPv6 mapping on this exact address (`[::1]:9000` included), then
/// the `[::]` one, which answers on loopback and the host's own addresses
/// (see the module docs).
#[inline(always)]
fn lookup6(proto: u8, addr: &[u8; 16], port_be: u16, loopback: bool) -> Option<Backend6> {
    let mut key = ServiceKey6 {
        host_addr: *addr,
        host_port_be: port_be,
        proto,
        _pad: 0,
    };
    if let Some(b) = unsafe { BERTH_SERVICES6.get(&key) } {
        return Some(*b);
    }
    key.host_addr = [0; 16];
    let b = unsafe { BERTH_SERVICES6.get(&key) }.copied()?;
    // Last: a port nothing is published on costs two lookups, not three.
    if !loopback && unsafe { BERTH_HOST_ADDRS6.get(addr) }.is_none() {
        return None;
    }
    Some(b)
}
