//! The host's network namespace as the engine's [`Host`] sees it:
//! [`SystemHost`] reads and writes the real `ip_local_reserved_ports`
//! sysctl, the ports its sockets hold (`/proc/net`) and the wall clock
//! (`/proc` resolves per network namespace, so these are the daemon's).
use std::{
    collections::BTreeSet,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

pub use crate::engine::host::{
    format_port_list, listener_blocks, parse_port_list, Host, RESERVED_PORTS_SYSCTL,
};
use crate::{domain::model::Protocol, domain::spec::PortRange};

pub const LOCAL_PORT_RANGE_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The daemon's own network namespace.
#[derive(Clone, Debug)]
pub struct SystemHost {
    reserved_ports: PathBuf,
}

impl Default for SystemHost {
    fn default() -> Self {
        Self {
            reserved_ports: PathBuf::from(RESERVED_PORTS_SYSCTL),
        }
    }
}

impl Host for SystemHost {
    fn reserved_ports(&self) -> io::Result<BTreeSet<u16>> {
        let text = read_large_sysctl(&self.reserved_ports)?;
        parse_port_list(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn set_reserved_ports(&self, ports: &BTreeSet<u16>) -> io::Result<()> {
        // The kernel replaces the whole set on a write at offset 0. An empty
        // write would be a no-op, so clear with a newline.
        let text = format_port_list(ports) + "\n";
        fs::write(&self.reserved_ports, text)
    }

    fn bound_ports(&self, protocol: Protocol) -> io::Result<BTreeSet<u16>> {
        let mut ports = BTreeSet::new();
        for file in proc_net_files(protocol) {
            match fs::read_to_string(proc_net_dir().join(file)) {
                Ok(text) => ports.extend(parse_proc_net(&text)),
                // No IPv6 in this kernel: there is no tcp6/udp6 to read.
                Err(e) if e.kind() == io::ErrorKind::NotFound && file.ends_with('6') => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ports)
    }

    fn listeners(&self, protocol: Protocol) -> io::Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for file in proc_net_files(protocol) {
            match fs::read_to_string(proc_net_dir().join(file)) {
                Ok(text) => out.extend(parse_proc_net_listeners(&text, protocol)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && file.ends_with('6') => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn holders(
        &self,
        protocol: Protocol,
        local: SocketAddr,
    ) -> io::Result<Vec<crate::engine::host::Holder>> {
        super::holders::holders(&proc_net_dir(), protocol, local)
    }

    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The longest `ip_local_reserved_ports` can print: every other port of
/// 0-65535, about 190 KB.
const LARGE_SYSCTL_MAX: usize = 256 * 1024;

/// Reads a bitmap sysctl in one `read`. The kernel answers a read at a
/// non-zero offset with end of file, so `fs::read_to_string`, whose first
/// read is a 32-byte probe, would cut the list after 32 bytes.
fn read_large_sysctl(path: &Path) -> io::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; LARGE_SYSCTL_MAX];
    let n = fs::File::open(path)?.read(&mut buf)?;
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn proc_net_files(protocol: Protocol) -> [&'static str; 2] {
    match protocol {
        Protocol::Tcp => ["tcp", "tcp6"],
        Protocol::Udp => ["udp", "udp6"],
    }
}

/// `/proc/thread-self/net` is the calling thread's network namespace;
/// `/proc/self/net` (the main thread's) on kernels without thread-self.
fn proc_net_dir() -> PathBuf {
    let thread = Path::new("/proc/thread-self/net");
    if thread.exists() {
        thread.to_owned()
    } else {
        PathBuf::from("/proc/self/net")
    }
}

/// Local ports in a `/proc/net/{tcp,tcp6,udp,udp6}` table: every socket.
/// For TCP that is listening sockets and connected ones too, because mapping
/// the local port of a live connection would capture its replies; for UDP
/// every socket in the table is bound.
pub fn parse_proc_net(text: &str) -> BTreeSet<u16> {
    // "  sl  local_address rem_address   st ..." then one line per socket:
    // "   0: 0100007F:1F90 00000000:0000 0A ...", port in hex after the colon.
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (port != 0).then_some(port)
        })
        .collect()
}

/// `TCP_LISTEN` in the `st` column of `/proc/net/tcp`.
pub(crate) const TCP_LISTEN: &str = "0A";

/// The sockets of a `/proc/net/{tcp,tcp6,udp,udp6}` table a new bind of
/// their port would collide with: TCP in LISTEN (a proxy's `SO_REUSEADDR`
/// bind passes connected and `TIME_WAIT` sockets), every UDP socket.
pub fn parse_proc_net_listeners(text: &str, protocol: Protocol) -> Vec<SocketAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if protocol == Protocol::Tcp && state != TCP_LISTEN {
                return None;
            }
            let (addr, port) = local.rsplit_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            (port != 0).then_some(SocketAddr::new(parse_proc_net_addr(addr)?, port))
        })
        .collect()
}

/// `/proc/net` prints addresses as 32-bit words in host byte order.
fn parse_proc_net_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The default dynamic range: the namespace's `ip_local_port_range`, the
/// ephemeral range Docker and the ECS agent allocate from.
pub fn local_port_range() -> io::Result<PortRange> {
    let text = fs::read_to_string(LOCAL_PORT_RANGE_SYSCTL)?;
    parse_local_port_range(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected contents {:?}", text.trim()),
        )
    })
}

fn parse_local_port_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (start, end) = (it.next()?.ok()?, it.next()?.ok()?);
    (start > 0 && start <= end && it.next().is_none()).then_some(PortRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn port_lists_parse_ports_and_ranges() {
        assert_eq!(
            parse_port_list("22,2375-2376, 51678-51679\n"),
            Ok(set(&[22, 2375, 2376, 51678, 51679]))
        );
        assert_eq!(parse_port_list(""), Ok(set(&[])));
        assert_eq!(parse_port_list("\n"), Ok(set(&[])));
        assert_eq!(parse_port_list("8080-8080"), Ok(set(&[8080])));
    }

    #[test]
    fn bad_port_lists_say_why() {
        assert_eq!(
            parse_port_list("22,ssh"),
            Err("invalid port \"ssh\": not a number".into())
        );
        assert_eq!(
            parse_port_list("70000"),
            Err("port 70000 is out of range 0-65535".into())
        );
        assert_eq!(
            parse_port_list("10-5"),
            Err("port range 10-5 is reversed".into())
        );
    }

    #[test]
    fn port_lists_format_in_the_kernels_style() {
        assert_eq!(
            format_port_list(&set(&[22, 2375, 2376, 8080, 51678, 51679, 65535])),
            "22,2375-2376,8080,51678-51679,65535"
        );
        assert_eq!(format_port_list(&set(&[])), "");
        assert_eq!(format_port_list(&set(&[0, 1, 2])), "0-2");
    }

    #[test]
    fn format_then_parse_is_identity() {
        let ports = set(&[1, 2, 3, 7, 9, 10, 65534, 65535]);
        assert_eq!(parse_port_list(&format_port_list(&ports)), Ok(ports));
    }

    #[test]
    fn local_port_range_is_read_from_the_sysctl_format() {
        assert_eq!(
            parse_local_port_range("32768\t60999\n"),
            Some(PortRange {
                start: 32768,
                end: 60999
            })
        );
        assert_eq!(parse_local_port_range("60999 32768"), None);
        assert_eq!(parse_local_port_range("1"), None);
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0201000A:C350 0101000A:0016 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0
";

    #[test]
    fn proc_net_tables_yield_the_local_ports() {
        assert_eq!(parse_proc_net(TCP), set(&[8080, 53, 50000]));
        assert_eq!(parse_proc_net(TCP6), set(&[7096]));
        assert_eq!(parse_proc_net(UDP), set(&[5353]));
        assert_eq!(parse_proc_net(""), set(&[]));
        assert_eq!(parse_proc_net("header\ngarbage line\n"), set(&[]));
    }

    #[test]
    fn proc_net_listeners_are_listening_tcp_and_bound_udp() {
        let v4 = |a: [u8; 4], p| SocketAddr::new(IpAddr::V4(a.into()), p);
        assert_eq!(
            parse_proc_net_listeners(TCP, Protocol::Tcp),
            [v4([0, 0, 0, 0], 8080), v4([127, 0, 0, 1], 53)],
            "the connected socket on 50000 is no listener"
        );
        assert_eq!(
            parse_proc_net_listeners(TCP6, Protocol::Tcp),
            [SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 7096)]
        );
        assert_eq!(
            parse_proc_net_listeners(UDP, Protocol::Udp),
            [v4([0, 0, 0, 0], 5353)]
        );
        let mapped = "h\n   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A x\n";
        assert_eq!(
            parse_proc_net_listeners(mapped, Protocol::Tcp),
            [SocketAddr::new(
                IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
                8080
            )]
        );
    }

    #[test]
    fn a_listener_blocks_overlapping_bind_addresses_only() {
        let any = Ipv4Addr::UNSPECIFIED;
        let lo = Ipv4Addr::LOCALHOST;
        let host = Ipv4Addr::new(192, 0, 2, 1);
        assert!(listener_blocks(IpAddr::V4(any), host.into()));
        assert!(listener_blocks(IpAddr::V4(host), any.into()));
        assert!(listener_blocks(IpAddr::V4(host), host.into()));
        assert!(!listener_blocks(IpAddr::V4(lo), host.into()));
        assert!(listener_blocks(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            lo.into()
        ));
        assert!(listener_blocks(IpAddr::V6(lo.to_ipv6_mapped()), lo.into()));
        assert!(!listener_blocks(IpAddr::V6(Ipv6Addr::LOCALHOST), lo.into()));
        assert!(!listener_blocks(
            IpAddr::V6(lo.to_ipv6_mapped()),
            host.into()
        ));
    }

    #[test]
    fn large_sysctls_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        let long: String = (0..2000).map(|i| format!("{},", i * 2)).collect();
        fs::write(&path, &long).unwrap();
        assert_eq!(read_large_sysctl(&path).unwrap(), long);
    }

    #[test]
    fn a_listening_socket_of_this_process_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bound = SystemHost::default().bound_ports(Protocol::Tcp).unwrap();
        assert!(bound.contains(&port), "{port} not in {bound:?}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let bound = SystemHost::default().bound_ports(Protocol::Udp).unwrap();
        assert!(bound.contains(&port), "{port} not in {bound:?}");
    }
}
