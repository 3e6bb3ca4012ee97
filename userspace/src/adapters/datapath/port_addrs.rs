//! Which IPv4 and IPv6 addresses belong to which bridge port, learned from an
//! authoritative source rather than from what the container sends: the
//! port is the host end of a veth pair, and its peer, inside the
//! container's network namespace, holds the container's addresses. rtnetlink
//! gives the peer (`IFLA_LINK` in the namespace `IFLA_LINK_NETNSID` names) and
//! that namespace's addresses (`RTM_GETADDR` with `IFA_TARGET_NETNSID`, which
//! needs strict checking), without entering the namespace.
//!
//! A port that is not a veth, or whose peer has gone, has no learnable
//! addresses: the datapath then treats it as owning none (see
//! `ebpf/src/spoof.rs`).
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
const SOL_NETLINK: libc::c_int = 270;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_DELNEIGH: u16 = 29;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const NDA_DST: u16 = 1;
const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const NDMSG_LEN: usize = 12;

/// The veth peer of a port: its ifindex in the namespace `netnsid` names
/// (`None`: the port's own namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Peer {
    pub ifindex: u32,
    pub netnsid: Option<i32>,
}

/// An rtnetlink socket with strict checking on.
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// (type, payload) of each attribute in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

fn push_attr(msg: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    msg.extend(((4 + payload.len()) as u16).to_ne_bytes());
    msg.extend(ty.to_ne_bytes());
    msg.extend(payload);
    msg.resize(align4(msg.len()), 0);
}

impl Rtnl {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // SAFETY: `on` outlives the call; the length matches its type.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request (`body` after the netlink header) and returns the
    /// payloads of the answer's messages of type `want` (header stripped).
    fn request(&mut self, ty: u16, flags: u16, body: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + body.len());
        msg.extend(((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        msg.extend(ty.to_ne_bytes());
        msg.extend((NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend(self.seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes());
        msg.extend(body);
        // SAFETY: an all-zero sockaddr_nl addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `to` are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP != 0;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: `buf` is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let mty = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(io::Error::other("truncated netlink message"));
                }
                let payload = &rest[NLMSG_HDR_LEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if seq != self.seq {
                    continue;
                }
                match mty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                            .unwrap_or(-libc::EIO);
                        if errno == 0 {
                            return Ok(out); // an ack
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    t if t == want => {
                        out.push(payload.to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The veth peer of `ifindex`; `None` when it is not a veth.
    fn veth_peer(&mut self, ifindex: u32) -> io::Result<Option<Peer>> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[0] = libc::AF_UNSPEC as u8;
        body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let msgs = self.request(RTM_GETLINK, 0, &body, RTM_NEWLINK)?;
        let Some(msg) = msgs.first().filter(|m| m.len() >= IFINFOMSG_LEN) else {
            return Ok(None);
        };
        let (mut link, mut netnsid, mut veth) = (None, None, false);
        for (ty, p) in attrs(&msg[IFINFOMSG_LEN..]) {
            match ty {
                IFLA_LINK if p.len() >= 4 => {
                    link = Some(u32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
                }
                IFLA_LINK_NETNSID if p.len() >= 4 => {
                    netnsid = Some(i32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
                }
                IFLA_LINKINFO => {
                    veth = attrs(p).any(|(t, k)| t == IFLA_INFO_KIND && k.starts_with(b"veth"))
                }
                _ => {}
            }
        }
        Ok(match (veth, link) {
            (true, Some(ifindex)) => Some(Peer { ifindex, netnsid }),
            _ => None,
        })
    }

    /// The IPv4 addresses of interface `peer.ifindex` in its namespace.
    fn ipv4_addrs(&mut self, peer: Peer) -> io::Result<Vec<Ipv4Addr>> {
        self.addrs(peer, libc::AF_INET, |p| {
            <[u8; 4]>::try_from(p).ok().map(Ipv4Addr::from)
        })
    }

    /// The IPv6 addresses of interface `peer.ifindex` in its namespace,
    /// but link-local ones: the datapath knows those by their MAC (see
    /// `ebpf/src/l2.rs`), not as a port's own.
    fn ipv6_addrs(&mut self, peer: Peer) -> io::Result<Vec<Ipv6Addr>> {
        self.addrs(peer, libc::AF_INET6, |p| {
            <[u8; 16]>::try_from(p)
                .ok()
                .map(Ipv6Addr::from)
                .filter(|a| port_owned6(*a))
        })
    }

    /// The addresses of `family` on interface `peer.ifindex` in its
    /// namespace (each message's local address, else its address), as
    /// `parse` reads them (`None`: not one), sorted and each once.
    fn addrs<A: Ord + Copy>(
        &mut self,
        peer: Peer,
        family: libc::c_int,
        parse: impl Fn(&[u8]) -> Option<A>,
    ) -> io::Result<Vec<A>> {
        let mut body = vec![0u8; IFADDRMSG_LEN];
        body[0] = family as u8;
        body[4..8].copy_from_slice(&peer.ifindex.to_ne_bytes());
        if let Some(id) = peer.netnsid {
            push_attr(&mut body, IFA_TARGET_NETNSID, &id.to_ne_bytes());
        }
        let msgs = self.request(RTM_GETADDR, NLM_F_DUMP, &body, RTM_NEWADDR)?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.len() >= IFADDRMSG_LEN) {
            let index = u32::from_ne_bytes([m[4], m[5], m[6], m[7]]);
            if m[0] != family as u8 || index != peer.ifindex {
                continue;
            }
            let (mut local, mut address) = (None, None);
            for (ty, p) in attrs(&m[IFADDRMSG_LEN..]) {
                match ty {
                    IFA_LOCAL => local = local.or(parse(p)),
                    IFA_ADDRESS => address = address.or(parse(p)),
                    _ => {}
                }
            }
            if let Some(a) = local.or(address) {
                out.push(a);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Whether an IPv6 address of a container's interface is one its port
/// owns: not link-local, multicast, loopback or unspecified.
fn port_owned6(a: Ipv6Addr) -> bool {
    !(a.is_unicast_link_local() || a.is_multicast() || a.is_loopback() || a.is_unspecified())
}

/// What a bridge port's veth peer holds in the container's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Learned {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// The addresses of bridge port `ifindex`: those of its veth peer in the
/// container's namespace, and that peer. `Ok(None)`: the port is not a
/// veth, or its peer is gone, so nothing can be learned.
pub(super) fn port_addrs(ifindex: u32) -> io::Result<Option<(Peer, Learned)>> {
    let mut nl = Rtnl::open()?;
    let Some(peer) = nl.veth_peer(ifindex)? else {
        return Ok(None);
    };
    let learned = nl.ipv4_addrs(peer).and_then(|v4| {
        Ok(Learned {
            v4,
            v6: nl.ipv6_addrs(peer)?,
        })
    });
    match learned {
        Ok(a) => Ok(Some((peer, a))),
        // The container's namespace went away between the requests.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Forgets the host's neighbour (ARP or NDP) entry for `addr` on bridge
/// `bridge` (an ifindex), if it has one. An address that moves to another
/// bridge port belongs to a new container with a new MAC, but the entry
/// its old container left can stay REACHABLE for up to 45 s, and
/// everything sent to the address (published-port traffic redirected with
/// `bpf_redirect_neigh` included) would go to a MAC nobody has. Without
/// the entry the kernel resolves the address afresh on the next packet.
/// `Ok(false)`: there was no entry.
pub(super) fn forget_neighbour(bridge: u32, addr: IpAddr) -> io::Result<bool> {
    let mut nl = Rtnl::open()?;
    let mut body = vec![0u8; NDMSG_LEN];
    body[4..8].copy_from_slice(&(bridge as i32).to_ne_bytes());
    match addr {
        IpAddr::V4(a) => {
            body[0] = libc::AF_INET as u8;
            push_attr(&mut body, NDA_DST, &a.octets());
        }
        IpAddr::V6(a) => {
            body[0] = libc::AF_INET6 as u8;
            push_attr(&mut body, NDA_DST, &a.octets());
        }
    }
    match nl.request(RTM_DELNEIGH, NLM_F_ACK, &body, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Who owns which address, given what each port's namespace says now
/// (`claims`) and who owned what before (`prev`). An address claimed by one
/// port is that port's. One claimed by several (a container with
/// `CAP_NET_ADMIN` adding its neighbour's address, or a reused address whose
/// old container is still being torn down) stays with the port that held
/// it before, or goes to none of them: a newcomer never takes over an
/// address, and a tie is refused rather than guessed.
pub(super) fn resolve_claims<A: Ord + Copy>(
    prev: &BTreeMap<u32, Vec<A>>,
    claims: &BTreeMap<u32, Vec<A>>,
) -> (BTreeMap<u32, Vec<A>>, BTreeSet<A>) {
    let mut claimants: BTreeMap<A, Vec<u32>> = BTreeMap::new();
    for (port, addrs) in claims {
        for a in addrs {
            claimants.entry(*a).or_default().push(*port);
        }
    }
    let mut contested = BTreeSet::new();
    let owner = |a: &A, ports: &[u32]| -> Option<u32> {
        if let [only] = ports {
            return Some(*only);
        }
        let held: Vec<u32> = ports
            .iter()
            .copied()
            .filter(|p| prev.get(p).is_some_and(|v| v.contains(a)))
            .collect();
        match held.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    };
    let mut out: BTreeMap<u32, Vec<A>> = claims.keys().map(|p| (*p, Vec::new())).collect();
    for (a, ports) in &claimants {
        if ports.len() > 1 {
            contested.insert(*a);
        }
        if let Some(p) = owner(a, ports) {
            out.entry(p).or_default().push(*a);
        }
    }
    (out, contested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 17, 0, last)
    }

    #[test]
    fn an_address_claimed_once_belongs_to_its_port() {
        let claims = BTreeMap::from([(10, vec![ip(2)]), (11, vec![ip(3), ip(4)])]);
        let (owned, contested) = resolve_claims(&BTreeMap::new(), &claims);
        assert_eq!(owned, claims);
        assert!(contested.is_empty());
    }

    #[test]
    fn a_newcomer_never_takes_over_an_address() {
        let prev = BTreeMap::from([(10, vec![ip(2)])]);
        let claims = BTreeMap::from([(10, vec![ip(2)]), (11, vec![ip(2), ip(5)])]);
        let (owned, contested) = resolve_claims(&prev, &claims);
        assert_eq!(owned[&10], [ip(2)]);
        assert_eq!(owned[&11], [ip(5)]);
        assert_eq!(contested, BTreeSet::from([ip(2)]));
    }

    #[test]
    fn a_tie_gives_the_address_to_nobody() {
        let claims = BTreeMap::from([(10, vec![ip(2)]), (11, vec![ip(2)])]);
        let (owned, _) = resolve_claims(&BTreeMap::new(), &claims);
        assert!(owned[&10].is_empty() && owned[&11].is_empty(), "{owned:?}");
    }

    #[test]
    fn ipv6_claims_resolve_as_ipv4_ones() {
        let a: Ipv6Addr = "fd00:17::2".parse().unwrap();
        let b: Ipv6Addr = "fd00:17::3".parse().unwrap();
        let prev = BTreeMap::from([(10, vec![a])]);
        let claims = BTreeMap::from([(10, vec![a]), (11, vec![a, b])]);
        let (owned, contested) = resolve_claims(&prev, &claims);
        assert_eq!(owned[&10], [a]);
        assert_eq!(owned[&11], [b]);
        assert_eq!(contested, BTreeSet::from([a]));
    }

    #[test]
    fn a_port_owns_its_global_ipv6_addresses_only() {
        for owned in ["fd00:17::2", "2001:db8::5", "fec0::1"] {
            assert!(port_owned6(owned.parse().unwrap()), "{owned}");
        }
        for not in ["fe80::42:acff:fe11:2", "ff02::1", "::1", "::"] {
            assert!(!port_owned6(not.parse().unwrap()), "{not}");
        }
    }

    #[test]
    fn attributes_parse_and_stop_at_garbage() {
        let mut buf = Vec::new();
        push_attr(&mut buf, 3, b"eth0\0");
        push_attr(&mut buf, 5, &7u32.to_ne_bytes());
        buf.extend([0xff, 0xff, 0, 0]); // length past the end
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(
            got,
            [(3, b"eth0\0".to_vec()), (5, 7u32.to_ne_bytes().to_vec())]
        );
    }

    /// This test's own namespace has `lo`, which is no veth.
    #[test]
    fn a_port_that_is_not_a_veth_has_nothing_to_learn() {
        assert!(port_addrs(1).unwrap().is_none());
    }
}
