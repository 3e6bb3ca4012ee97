//! What the engine asks of the host's network namespace besides the
//! datapath: its `ip_local_reserved_ports` sysctl, the ports its sockets
//! hold, and the wall clock. `adapters::host::SystemHost` reads and writes
//! the real ones; unit tests use an in-memory fake. Also the kernel's port
//! list format, which the sysctl and `--reserved-ports` share.
use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, SocketAddr},
};

use crate::domain::model::Protocol;

pub const RESERVED_PORTS_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
pub trait Host: Send + Sync {
    /// `net.ipv4.ip_local_reserved_ports`.
    fn reserved_ports(&self) -> io::Result<BTreeSet<u16>>;
    /// Replaces `net.ipv4.ip_local_reserved_ports`.
    fn set_reserved_ports(&self, ports: &BTreeSet<u16>) -> io::Result<()>;
    /// Local ports held by a socket of `protocol` (IPv4 or IPv6).
    fn bound_ports(&self, protocol: Protocol) -> io::Result<BTreeSet<u16>>;
    /// What a proxy binding a port would collide with: listening TCP
    /// sockets, or every bound UDP socket, with their local addresses.
    fn listeners(&self, protocol: Protocol) -> io::Result<Vec<SocketAddr>>;
    /// Wall-clock Unix seconds.
    fn now(&self) -> u64;
    /// The processes holding a socket [`Host::listeners`] lists at `local`.
    fn holders(&self, protocol: Protocol, local: SocketAddr) -> io::Result<Vec<Holder>>;
}

/// A process holding a host socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its real user ID.
    pub uid: u32,
    /// Its executable (`/proc/PID/exe`).
    pub exe: String,
    /// Runs berth's own executable (berth-docker-proxy) and is not this
    /// daemon.
    pub berth_proxy: bool,
}

impl Holder {
    /// Docker's engine or its proxy: root's `dockerd` or `docker-proxy`, or
    /// berth-docker-proxy holding the socket its engine handed over
    /// (`-use-listen-fd`). The executable's name, not `comm`, which any
    /// process may set.
    pub fn is_dockers(&self) -> bool {
        let name = self.exe.rsplit('/').next().unwrap_or_default();
        self.uid == 0 && (matches!(name, "dockerd" | "docker-proxy") || self.berth_proxy)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({}, uid {})", self.pid, self.exe, self.uid)
    }
}

/// Whether a host socket on `local` would make a proxy's bind of
/// `bind_ip` fail: the same address, or a wildcard on either side. For an
/// IPv4 `bind_ip`, `::` counts as every IPv4 address (dual-stack, the
/// Linux default) and an IPv4-mapped IPv6 address as its IPv4 address.
/// For an IPv6 one only IPv6 sockets count: Docker's proxy binds `[::]`
/// IPv6-only, beside an IPv4 socket on the same port.
pub fn listener_blocks(local: IpAddr, bind_ip: IpAddr) -> bool {
    let bind_ip = match bind_ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(bind6) => {
            return match local {
                IpAddr::V4(_) => false,
                IpAddr::V6(l) => {
                    l.to_ipv4_mapped().is_none()
                        && (l == bind6 || l.is_unspecified() || bind6.is_unspecified())
                }
            }
        }
    };
    let v4 = match local {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) if a.is_unspecified() => return true,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => a,
            None => return false,
        },
    };
    v4 == bind_ip || v4.is_unspecified() || bind_ip.is_unspecified()
}

/// The kernel's port list format (`ip_local_reserved_ports`,
/// `--reserved-ports`): comma-separated ports and `a-b` ranges, blanks
/// allowed around items; empty means none.
pub fn parse_port_list(text: &str) -> Result<BTreeSet<u16>, String> {
    let mut ports = BTreeSet::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let (start, end) = match item.split_once('-') {
            Some((a, b)) => (parse_list_port(a)?, parse_list_port(b)?),
            None => {
                let p = parse_list_port(item)?;
                (p, p)
            }
        };
        if start > end {
            return Err(format!("port range {start}-{end} is reversed"));
        }
        ports.extend(start..=end);
    }
    Ok(ports)
}

fn parse_list_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?}: not a number"));
    }
    s.parse::<u16>()
        .map_err(|_| format!("port {s} is out of range 0-65535"))
}

/// Inverse of [`parse_port_list`], with runs folded into ranges.
pub fn format_port_list(ports: &BTreeSet<u16>) -> String {
    let mut items: Vec<String> = Vec::new();
    let mut iter = ports.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while let Some(next) = iter.next_if(|&p| Some(p) == end.checked_add(1)) {
            end = next;
        }
        items.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    items.join(",")
}
