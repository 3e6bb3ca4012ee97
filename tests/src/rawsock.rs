//! Raw Ethernet frames in and out of one interface of a test namespace
//! (`AF_PACKET)`: for traffic no socket API sends — forged sources, loopback
//! destinations from the LAN — and for seeing every frame that arrives,
//! whether or not a socket would accept it.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{pkt, NetNs};

const ETH_P_ALL: u16 = 0x0003;

/// An `AF_PACKET` socket bound to one interface of the namespace it was
/// opened in. It sees frames in both directions.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens it on `ifname` inside `ns`.
    pub fn open_in(ns: &NetNs, ifname: &str) -> Result<Self> {
        let ifname = ifname.to_string();
        ns.try_run(move || Self::open(&ifname))?
    }

    fn open(ifname: &str) -> Result<Self> {
        let c = std::ffi::CString::new(ifname)?;
        // SAFETY: `c` is a valid NUL-terminated string for the call.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        // SAFETY: plain socket(2); the fd is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sll = sockaddr_ll(ifindex);
        // SAFETY: `sll` is a valid sockaddr_ll for the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("binding the AF_PACKET socket");
        }
        Ok(Self { fd, ifindex })
    }

    /// Sends `frame` (from its Ethernet header on) out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let sll = sockaddr_ll(self.ifindex);
        // SAFETY: `frame` and `sll` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a raw frame");
        }
        Ok(())
    }

    /// Every frame seen for `within` that `keep` accepts.
    pub fn collect(&self, within: Duration, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            if rc == 0 {
                continue;
            }
            // SAFETY: `buf` is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("recv");
            }
            let f = &buf[..n as usize];
            if keep(f) {
                out.push(f.to_vec());
            }
        }
    }
}

fn sockaddr_ll(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll to fill in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex;
    sll
}

/// IPv4 facts of a frame, for filters: (protocol, source, destination,
/// source port, destination port); ports are 0 for other protocols.
pub fn ipv4_tuple(f: &[u8]) -> Option<(u8, std::net::Ipv4Addr, std::net::Ipv4Addr, u16, u16)> {
    if f.len() < pkt::ETH_LEN + 20 || u16::from_be_bytes([f[12], f[13]]) != pkt::ETH_P_IP {
        return None;
    }
    let ip = &f[pkt::ETH_LEN..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let proto = ip[9];
    let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let (sport, dport) = match (proto, ip.get(ihl..ihl + 4)) {
        (pkt::TCP | pkt::UDP, Some(p)) => (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        _ => (0, 0),
    };
    Some((proto, src, dst, sport, dport))
}
