//! IPv6 socket-level translation (the cgroup `connect6` / `sendmsg6` /
//! `recvmsg6` / `getpeername6` hooks): the IPv6 twin of
//! [`crate::SOCK_REV_MAP`]. A dual-stack socket calling a v4-mapped
//! address (`::ffff:127.0.0.1`) is IPv4 underneath and uses the IPv4 map.
use crate::{lru_capacity, DEFAULT_MAX_FLOWS6};

/// (socket cookie, container address, container port) -> the host address
/// and port the application asked for, so `getpeername()` and
/// `recvmsg()` show it. LRU, as [`crate::SOCK_REV_MAP`]: losing an entry
/// costs only the address those calls show, never a flow.
pub const SOCK_REV6_MAP: &str = "BERTH_SOCK_REV6";
/// Sized like [`crate::SOCK_REV_CAPACITY`], from `--max-flows6`.
pub const SOCK_REV6_CAPACITY: u32 = lru_capacity(DEFAULT_MAX_FLOWS6);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockRevKey6 {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockRevValue6 {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<SockRevKey6>() == 32);
const _: () = assert!(size_of::<SockRevValue6>() == 20);
