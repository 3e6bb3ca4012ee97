//! Docker's `-p` port spec: `[hostIP:][hostPort:]containerPort[/tcp|/udp]`,
//! where both ports may be ranges of equal length (`8000-8010:9000-9010`).
//! An omitted or zero host port (`80`, `0:80`, `1.2.3.4::80`,
//! `9000-9009`) asks the daemon to pick one: a dynamic host port, or a
//! contiguous block of them for a range. A host range with one container
//! port (`9000-9009:80`) asks for one host port out of that range: the
//! daemon takes the first free one, as Docker does.
//!
//! The host IP picks the families, as Docker's does: none publishes on
//! every address of each family the container has (IPv4, and IPv6 when it
//! has an IPv6 address), `0.0.0.0` on IPv4 only, `[::]` (or a bare `::`
//! before the ports, as Docker reads it) on IPv6 only.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::domain::model::Protocol;

/// Why a port spec was refused; shown after `port spec "…": `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("expected [hostIP:][hostPort:]containerPort[/tcp|/udp]")]
    Format,
    #[error("invalid port {0:?}: not a number")]
    NotANumber(String),
    #[error("port {0} is out of range 1-65535")]
    OutOfRange(u64),
    #[error("port range {start}-{end} is reversed")]
    ReversedRange { start: u16, end: u16 },
    #[error("host ports {host} ({host_len}) and container ports {container} ({container_len}) differ in length")]
    UnequalRanges {
        host: PortRange,
        host_len: u32,
        container: PortRange,
        container_len: u32,
    },
    #[error("malformed IP address {0:?}")]
    MalformedIp(String),
    #[error("bind IP {0} is not a unicast or unspecified address")]
    BadBindIp(IpAddr),
    #[error("unknown protocol {0:?}; use tcp or udp")]
    UnknownProtocol(String),
}

/// An inclusive range of ports, never empty, never containing 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }
    pub fn port_count(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
    pub fn iter(self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The address families a container has: what a spec without a host IP
/// publishes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const V4: Self = Self {
        v4: true,
        v6: false,
    };
    pub const BOTH: Self = Self { v4: true, v6: true };
}

/// One parsed `-p` value. Its `Display` is the canonical spec
/// (`8080:80/tcp`, `0.0.0.0:8080:80/tcp`, `[::]:8080:80/tcp`, or with an
/// empty host port, `0.0.0.0::80/tcp`, for a dynamic one), which parses
/// back to the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// `None`: every address of each family the container has (Docker's
    /// default); an address publishes on its own family only.
    pub bind_ip: Option<IpAddr>,
    /// `None`: dynamic, the daemon picks as many host ports as `container`
    /// has, contiguous. A range longer than `container` (which is then one
    /// port) is a pool the daemon picks one host port from.
    pub host: Option<PortRange>,
    pub container: PortRange,
    pub protocol: Protocol,
}

/// One (bind IP, host port, container port, protocol) out of a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    pub bind_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    /// The host ports, when they pair one to one with the container ports.
    pub fn fixed_host(&self) -> Option<PortRange> {
        self.host
            .filter(|h| h.port_count() == self.container.port_count())
    }

    /// The range to pick the host port from (`9000-9009:80`).
    pub fn host_pool(&self) -> Option<PortRange> {
        self.host
            .filter(|h| h.port_count() != self.container.port_count())
    }

    /// The same spec with its host ports chosen, starting at `start`.
    pub fn with_host_start(&self, start: u16) -> Self {
        let end = u32::from(start) + self.container.port_count() - 1;
        Self {
            host: Some(PortRange {
                start,
                end: u16::try_from(end).unwrap_or(u16::MAX),
            }),
            ..*self
        }
    }

    /// The individual mappings for an IPv4-only container.
    pub fn expand(&self) -> impl Iterator<Item = PortMapping> + '_ {
        self.expand_in(Families::V4)
    }

    /// The bind IPs this spec publishes on for a container of `families`:
    /// its own, or each family's wildcard (IPv4 first).
    pub fn bind_ips(&self, families: Families) -> impl Iterator<Item = IpAddr> {
        let (one, v4, v6) = match self.bind_ip {
            Some(ip) => (Some(ip), None, None),
            None => (
                None,
                families.v4.then_some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                families.v6.then_some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ),
        };
        one.into_iter().chain(v4).chain(v6)
    }

    /// The individual mappings, host port i to container port i, on each
    /// bind IP of [`PortSpec::bind_ips`] (one host port for both
    /// families). A dynamic spec or a pool has none until its host ports
    /// are chosen.
    pub fn expand_in(&self, families: Families) -> impl Iterator<Item = PortMapping> + '_ {
        let ports: Vec<(u16, u16)> = self
            .fixed_host()
            .into_iter()
            .flat_map(PortRange::iter)
            .zip(self.container.iter())
            .collect();
        self.bind_ips(families).flat_map(move |bind_ip| {
            ports
                .clone()
                .into_iter()
                .map(move |(host_port, container_port)| PortMapping {
                    bind_ip,
                    host_port,
                    container_port,
                    protocol: self.protocol,
                })
        })
    }

    /// Whether the spec publishes over IPv6 only (`[::]:…`, `[2001:db8::1]:…`).
    pub fn is_ipv6_only(&self) -> bool {
        self.bind_ip.is_some_and(|ip| ip.is_ipv6())
    }
}

/// A host address as a spec writes it: IPv6 in brackets.
pub struct HostIp(pub IpAddr);

impl fmt::Display for HostIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "[{ip}]"),
        }
    }
}

/// In spec form (`0.0.0.0:8080:80/tcp`), so messages about one mapping read
/// like the `-p` value that names it.
impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}/{}",
            HostIp(self.bind_ip),
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host.map(|h| h.to_string()).unwrap_or_default();
        let proto = self.protocol.as_str();
        match self.bind_ip {
            Some(ip) => write!(f, "{}:{host}:{}/{proto}", HostIp(ip), self.container),
            None if host.is_empty() => write!(f, "{}/{proto}", self.container),
            None => write!(f, "{host}:{}/{proto}", self.container),
        }
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((rest, proto)) => (rest, parse_protocol(proto)?),
            None => (spec, Protocol::Tcp),
        };
        let (ip, host, container) = split_addr_ports(rest)?;
        let bind_ip = match ip {
            None | Some("") => None,
            Some(ip) => Some(parse_bind_ip(ip)?),
        };
        let container = parse_range(container)?;
        let host = match host {
            None | Some("" | "0") => None,
            Some(host) => Some(parse_range(host)?),
        };
        // Docker's rule: a host range either pairs with a container range of
        // its length or is a pool for a single container port.
        if let Some(host) =
            host.filter(|h| h.port_count() != container.port_count() && container.port_count() != 1)
        {
            return Err(SpecError::UnequalRanges {
                host,
                host_len: host.port_count(),
                container,
                container_len: container.port_count(),
            });
        }
        Ok(Self {
            bind_ip,
            host,
            container,
            protocol,
        })
    }
}

/// Splits off `[ip:][host:]container`. An IPv6 bind address comes in
/// brackets (`[::1]:80:80`) or bare (`::1:80:80`: everything before the
/// last two fields, as Docker reads it).
fn split_addr_ports(s: &str) -> Result<(Option<&str>, Option<&str>, &str), SpecError> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (ip, ports) = bracketed.split_once(']').ok_or(SpecError::Format)?;
        let ports = ports.strip_prefix(':').ok_or(SpecError::Format)?;
        return match ports.split(':').collect::<Vec<_>>().as_slice() {
            [host, container] => Ok((Some(ip), Some(host), container)),
            _ => Err(SpecError::Format),
        };
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [""] => Err(SpecError::Format),
        [container] => Ok((None, None, container)),
        [host, container] => Ok((None, Some(host), container)),
        [ip, host, container] => Ok((Some(ip), Some(host), container)),
        [.., host, container] => {
            let ip_len = s.len() - host.len() - container.len() - 2;
            match s[..ip_len].parse::<Ipv6Addr>() {
                Ok(_) => Ok((Some(&s[..ip_len]), Some(host), container)),
                Err(_) => Err(SpecError::Format),
            }
        }
        [] => Err(SpecError::Format),
    }
}

fn parse_protocol(proto: &str) -> Result<Protocol, SpecError> {
    match proto.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(SpecError::UnknownProtocol(proto.to_owned())),
    }
}

/// A host address to publish on: the wildcard or a unicast address of
/// either family (an IPv4-mapped IPv6 address is refused: it is an IPv4
/// address and is published as one).
fn parse_bind_ip(ip: &str) -> Result<IpAddr, SpecError> {
    let parsed: IpAddr = ip
        .parse()
        .map_err(|_| SpecError::MalformedIp(ip.to_owned()))?;
    let bad = match parsed {
        // IPv4 bind addresses are taken as they always were.
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => v6.is_multicast() || v6.to_ipv4_mapped().is_some(),
    };
    if bad {
        return Err(SpecError::BadBindIp(parsed));
    }
    Ok(parsed)
}

/// `8000` or `8000-8010`, ports 1-65535.
pub fn parse_range(s: &str) -> Result<PortRange, SpecError> {
    let Some((start, end)) = s.split_once('-') else {
        return Ok(PortRange::single(parse_port(s)?));
    };
    let (start, end) = (parse_port(start)?, parse_port(end)?);
    if start > end {
        return Err(SpecError::ReversedRange { start, end });
    }
    Ok(PortRange { start, end })
}

fn parse_port(s: &str) -> Result<u16, SpecError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::NotANumber(s.to_owned()));
    }
    // Saturate rather than fail on absurdly long numbers: they are out of
    // range either way and the message should say so.
    let n = s.parse::<u64>().unwrap_or(u64::MAX);
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(SpecError::OutOfRange(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PortSpec, SpecError> {
        s.parse()
    }

    fn mappings(s: &str) -> Vec<(IpAddr, u16, u16, Protocol)> {
        parse(s)
            .unwrap()
            .expand()
            .map(|m| (m.bind_ip, m.host_port, m.container_port, m.protocol))
            .collect()
    }

    const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

    #[test]
    fn host_and_container_port_default_to_tcp_on_every_address() {
        assert_eq!(mappings("8080:80"), [(ANY, 8080, 80, Protocol::Tcp)]);
    }

    #[test]
    fn protocol_suffix_selects_udp_or_tcp_case_insensitively() {
        assert_eq!(mappings("53:5353/udp"), [(ANY, 53, 5353, Protocol::Udp)]);
        assert_eq!(mappings("53:5353/UDP"), [(ANY, 53, 5353, Protocol::Udp)]);
        assert_eq!(mappings("8080:80/tcp"), [(ANY, 8080, 80, Protocol::Tcp)]);
    }

    #[test]
    fn host_ip_prefix_sets_the_bind_ip() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(
            mappings("192.0.2.7:8080:80"),
            [(ip, 8080, 80, Protocol::Tcp)]
        );
        assert_eq!(
            mappings("192.0.2.7:8080:80/udp"),
            [(ip, 8080, 80, Protocol::Udp)]
        );
    }

    #[test]
    fn equal_length_ranges_expand_pairwise() {
        assert_eq!(
            mappings("8000-8002:9000-9002"),
            [
                (ANY, 8000, 9000, Protocol::Tcp),
                (ANY, 8001, 9001, Protocol::Tcp),
                (ANY, 8002, 9002, Protocol::Tcp),
            ]
        );
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(
            mappings("10.1.2.3:8000-8001:9000-9001/udp"),
            [
                (ip, 8000, 9000, Protocol::Udp),
                (ip, 8001, 9001, Protocol::Udp)
            ]
        );
    }

    #[test]
    fn a_range_of_one_port_is_a_single_port() {
        assert_eq!(mappings("8080-8080:80"), [(ANY, 8080, 80, Protocol::Tcp)]);
    }

    #[test]
    fn extreme_ports_are_accepted() {
        assert_eq!(mappings("65535:1"), [(ANY, 65535, 1, Protocol::Tcp)]);
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for s in ["8080:80", "1.2.3.4:8000-8001:9000-9001/udp", ":8080:80/TCP"] {
            let spec = parse(s).unwrap();
            assert_eq!(parse(&spec.to_string()).unwrap(), spec);
        }
        // Without a host IP the spec names both families (Docker's
        // default), so its canonical form has none; 0.0.0.0 is IPv4 only.
        assert_eq!(parse("8080:80").unwrap().to_string(), "8080:80/tcp");
        assert_eq!(
            parse("0.0.0.0:8080:80").unwrap().to_string(),
            "0.0.0.0:8080:80/tcp"
        );
    }

    fn dynamic(s: &str) -> (Option<IpAddr>, PortRange, Protocol) {
        let spec = parse(s).unwrap();
        assert_eq!(spec.host, None, "{s}");
        assert_eq!(spec.expand().count(), 0, "{s}");
        (spec.bind_ip, spec.container, spec.protocol)
    }

    #[test]
    fn omitted_or_zero_host_port_is_dynamic() {
        let ip = Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
        let p80 = PortRange::single(80);
        assert_eq!(dynamic("80"), (None, p80, Protocol::Tcp));
        assert_eq!(dynamic("80/udp"), (None, p80, Protocol::Udp));
        assert_eq!(dynamic("0:80"), (None, p80, Protocol::Tcp));
        assert_eq!(dynamic("::80"), (None, p80, Protocol::Tcp));
        assert_eq!(dynamic("1.2.3.4::80"), (ip, p80, Protocol::Tcp));
        assert_eq!(dynamic("1.2.3.4:0:80/udp"), (ip, p80, Protocol::Udp));
    }

    #[test]
    fn a_container_range_without_host_ports_is_a_dynamic_block() {
        let range = PortRange {
            start: 9000,
            end: 9009,
        };
        assert_eq!(dynamic("9000-9009"), (None, range, Protocol::Tcp));
        assert_eq!(dynamic("0:9000-9009/udp"), (None, range, Protocol::Udp));
    }

    #[test]
    fn choosing_the_host_start_expands_pairwise() {
        let spec = parse("9000-9002/udp").unwrap().with_host_start(49160);
        assert_eq!(spec.to_string(), "49160-49162:9000-9002/udp");
        assert_eq!(
            spec.expand()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>(),
            [(49160, 9000), (49161, 9001), (49162, 9002)]
        );
    }

    #[test]
    fn dynamic_spec_displays_with_an_empty_host_port_and_parses_back() {
        for s in ["80", "1.2.3.4:0:80/udp", "9000-9009"] {
            let spec = parse(s).unwrap();
            assert_eq!(parse(&spec.to_string()).unwrap(), spec, "{s}");
        }
        assert_eq!(parse("80").unwrap().to_string(), "80/tcp");
        assert_eq!(parse("0.0.0.0::80").unwrap().to_string(), "0.0.0.0::80/tcp");
        assert_eq!(parse("[::]::80").unwrap().to_string(), "[::]::80/tcp");
    }

    #[test]
    fn container_port_zero_is_out_of_range() {
        assert_eq!(parse("8080:0"), Err(SpecError::OutOfRange(0)));
    }

    #[test]
    fn ports_above_65535_are_out_of_range() {
        assert_eq!(parse("70000:80"), Err(SpecError::OutOfRange(70000)));
        assert_eq!(parse("8080:65536"), Err(SpecError::OutOfRange(65536)));
        assert_eq!(
            parse("8080:99999999999999999999999"),
            Err(SpecError::OutOfRange(u64::MAX))
        );
        assert_eq!(
            SpecError::OutOfRange(70000).to_string(),
            "port 70000 is out of range 1-65535"
        );
    }

    #[test]
    fn zero_inside_a_range_is_out_of_range() {
        assert_eq!(parse("0-10:100-110"), Err(SpecError::OutOfRange(0)));
    }

    #[test]
    fn non_numeric_container_port_is_refused() {
        assert_eq!(parse("web"), Err(SpecError::NotANumber("web".into())));
    }

    #[test]
    fn non_numeric_ports_are_refused() {
        assert_eq!(parse("http:80"), Err(SpecError::NotANumber("http".into())));
        assert_eq!(parse("8080:"), Err(SpecError::NotANumber(String::new())));
        assert_eq!(parse("+80:80"), Err(SpecError::NotANumber("+80".into())));
    }

    #[test]
    fn reversed_range_is_refused() {
        assert_eq!(
            parse("8010-8000:9000-9010"),
            Err(SpecError::ReversedRange {
                start: 8010,
                end: 8000
            })
        );
        assert_eq!(
            parse("8000-8010:9010-9000").unwrap_err().to_string(),
            "port range 9010-9000 is reversed"
        );
    }

    #[test]
    fn ranges_of_unequal_length_are_refused() {
        let err = parse("8000-8010:9000-9005").unwrap_err();
        assert!(matches!(err, SpecError::UnequalRanges { .. }));
        assert_eq!(
            err.to_string(),
            "host ports 8000-8010 (11) and container ports 9000-9005 (6) differ in length"
        );
        assert!(matches!(
            parse("8000-8002:80-81"),
            Err(SpecError::UnequalRanges { .. })
        ));
    }

    #[test]
    fn a_host_range_with_one_container_port_is_a_pool() {
        let spec = parse("9000-9009:80/udp").unwrap();
        let pool = PortRange {
            start: 9000,
            end: 9009,
        };
        assert_eq!(spec.host_pool(), Some(pool));
        assert_eq!(spec.fixed_host(), None);
        assert_eq!(spec.expand().count(), 0, "nothing until a port is picked");
        assert_eq!(spec.to_string(), "9000-9009:80/udp");
        assert_eq!(parse(&spec.to_string()), Ok(spec));
        let picked = spec.with_host_start(9004);
        assert_eq!(picked.host_pool(), None);
        assert_eq!(
            picked
                .expand()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>(),
            [(9004, 80)]
        );
    }

    #[test]
    fn malformed_ip_is_refused() {
        assert_eq!(
            parse("1.2.3:8080:80"),
            Err(SpecError::MalformedIp("1.2.3".into()))
        );
        assert_eq!(
            parse("localhost:8080:80"),
            Err(SpecError::MalformedIp("localhost".into()))
        );
        assert_eq!(
            parse("[nope]:8080:80"),
            Err(SpecError::MalformedIp("nope".into()))
        );
    }

    #[test]
    fn an_ipv6_host_ip_in_brackets_or_bare_publishes_on_ipv6_only() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for s in ["[2001:db8::1]:8080:80", "2001:db8::1:8080:80"] {
            assert_eq!(mappings(s), [(ip, 8080, 80, Protocol::Tcp)], "{s}");
            assert!(parse(s).unwrap().is_ipv6_only(), "{s}");
        }
        assert_eq!(
            mappings("[::]:8080:80/udp"),
            [(ANY6, 8080, 80, Protocol::Udp)]
        );
        assert_eq!(mappings(":::8080:80"), [(ANY6, 8080, 80, Protocol::Tcp)]);
        assert_eq!(
            parse("[2001:db8::1]:8080:80").unwrap().to_string(),
            "[2001:db8::1]:8080:80/tcp"
        );
        let dynamic = parse("[::]::80").unwrap();
        assert_eq!((dynamic.bind_ip, dynamic.host), (Some(ANY6), None));
    }

    #[test]
    fn without_a_host_ip_a_spec_publishes_on_each_family_the_container_has() {
        let spec = parse("8080-8081:80-81").unwrap();
        let each = |f| {
            spec.expand_in(f)
                .map(|m| (m.bind_ip, m.host_port, m.container_port))
                .collect::<Vec<_>>()
        };
        assert_eq!(each(Families::V4), [(ANY, 8080, 80), (ANY, 8081, 81)]);
        assert_eq!(
            each(Families::BOTH),
            [
                (ANY, 8080, 80),
                (ANY, 8081, 81),
                (ANY6, 8080, 80),
                (ANY6, 8081, 81)
            ]
        );
        // An explicit family stays itself whatever the container has.
        let v4 = parse("0.0.0.0:8080:80").unwrap();
        assert_eq!(v4.expand_in(Families::BOTH).count(), 1);
    }

    #[test]
    fn malformed_or_non_unicast_ipv6_host_ips_are_refused() {
        assert_eq!(parse("[::1]8080:80"), Err(SpecError::Format));
        assert_eq!(parse("[::1:8080:80"), Err(SpecError::Format));
        assert_eq!(parse("[::1]:80"), Err(SpecError::Format));
        assert_eq!(
            parse("[ff02::1]:8080:80"),
            Err(SpecError::BadBindIp("ff02::1".parse().unwrap()))
        );
        assert_eq!(
            parse("[::ffff:1.2.3.4]:8080:80"),
            Err(SpecError::BadBindIp("::ffff:1.2.3.4".parse().unwrap()))
        );
        assert_eq!(parse("1:2:8080:80"), Err(SpecError::Format));
        assert_eq!(
            parse("[fe80::1%eth0]:8080:80"),
            Err(SpecError::MalformedIp("fe80::1%eth0".into()))
        );
    }

    #[test]
    fn unknown_protocol_is_refused() {
        assert_eq!(
            parse("8080:80/sctp"),
            Err(SpecError::UnknownProtocol("sctp".into()))
        );
        assert_eq!(
            parse("8080:80/"),
            Err(SpecError::UnknownProtocol(String::new()))
        );
        assert_eq!(
            SpecError::UnknownProtocol("sctp".into()).to_string(),
            "unknown protocol \"sctp\"; use tcp or udp"
        );
    }

    #[test]
    fn too_many_fields_is_a_format_error() {
        assert_eq!(parse("1.2.3.4:1:2:3"), Err(SpecError::Format));
        assert_eq!(parse(""), Err(SpecError::Format));
        assert_eq!(parse("/udp"), Err(SpecError::Format));
    }
}
