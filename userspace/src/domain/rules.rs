//! Security-group rules with AWS VPC semantics, as a user writes them:
//! names, descriptions, directions, protocols, ports, ICMP type and code,
//! peers (a CIDR or another group). Every field is validated here, with one
//! clear line per mistake; the engine's book (`engine::sg_book`) holds the
//! groups and compiles them for the datapath.
//!
//! IPv6 as AWS has it: `--cidr` takes an IPv6 prefix (`::/0`), whose rules
//! match IPv6 peers only, as an IPv4 CIDR's match IPv4 peers only;
//! `icmpv6` (58) is a protocol of its own with `ICMPv6` types and codes, and
//! `icmp` stays IPv4's (each refuses a CIDR of the other family); a group
//! peer stands for its members of both families; `all` (-1), TCP and UDP
//! rules follow their peer.
//!
//! Any other IP protocol by its number (`47` for GRE, `4` for IP-in-IP,
//! `132` for SCTP), as AWS takes one: all of that protocol, no ports, and
//! follows its peer like `all`. The numbers of the named protocols mean
//! them (`6` is `tcp` and needs ports). 0 and 255 are refused: 0 is IPv6's
//! hop-by-hop header, never a payload, and the datapath spells "all" with
//! it; 255 is reserved.
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use crate::domain::{
    cidr::{Ipv4Cidr, Ipv6Cidr},
    task::name_problem,
};

/// AWS's limits: rules per direction per group, groups per task.
pub const MAX_RULES_PER_DIRECTION: usize = 60;
pub const DEFAULT_MAX_SGS_PER_TASK: u8 = 5;
/// What `--max-sgs-per-task` may be raised to (the datapath holds 16 x 60
/// rules per direction and task).
pub const MAX_SGS_PER_TASK: u8 = 16;
pub const MAX_DESCRIPTION_CHARS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum SgError {
    #[error("invalid security group name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("no such security group: {0}")]
    NoSuchGroup(String),
    #[error("security group {0} already exists")]
    Exists(String),
    #[error("description is {0} characters long; at most 255 are allowed")]
    DescriptionTooLong(usize),
    #[error("description must be one line without control characters")]
    DescriptionControl,
    #[error("unknown protocol {0:?}; use tcp, udp, icmp, icmpv6, all or a number 1-254")]
    Protocol(String),
    #[error(
        "protocol number {0} is not accepted: 0 is IPv6's hop-by-hop header and 255 is \
         reserved; use 1-254, or all"
    )]
    ProtocolNumber(u16),
    #[error(
        "protocol {0} has no ports, ICMP type or code: a rule for it allows all of it \
         (--port applies to tcp and udp)"
    )]
    NumberedFields(u8),
    #[error("protocol {0} needs a port or port range (--port P or P-Q)")]
    PortRequired(&'static str),
    #[error("protocol {0} has no ports; --port applies to tcp and udp")]
    PortNotAllowed(&'static str),
    #[error("invalid port {0:?}: not a number")]
    PortNotANumber(String),
    #[error("port {0} is out of range 0-65535")]
    PortOutOfRange(u64),
    #[error("port range {0}-{1} is reversed")]
    PortRangeReversed(u16, u16),
    #[error(
        "protocol {0} has no ICMP type or code; --icmp-type and --icmp-code apply to icmp and icmpv6"
    )]
    IcmpNotAllowed(&'static str),
    #[error("ICMP type {0} is out of range; use -1 (any) or 0-254")]
    IcmpType(i64),
    #[error("ICMP code {0} is out of range; use -1 (any) or 0-254")]
    IcmpCode(i64),
    #[error("an ICMP code needs an ICMP type: give --icmp-type too")]
    IcmpCodeWithoutType,
    #[error("a rule needs exactly one peer: --cidr CIDR or --sg GROUP")]
    Peer,
    #[error("invalid CIDR {0:?}: expected a.b.c.d/n with n from 0 to 32")]
    CidrFormat(String),
    #[error("invalid CIDR {given:?}: no prefix length; did you mean {given}/32?")]
    CidrNoPrefix { given: String },
    #[error("{given} is not a canonical CIDR (host bits are set); did you mean {canonical}?")]
    CidrNotCanonical { given: String, canonical: Ipv4Cidr },
    #[error(
        "invalid IPv6 CIDR {0:?}: expected an IPv6 prefix such as 2001:db8::/32 (n from 0 to 128)"
    )]
    Cidr6Format(String),
    #[error("invalid IPv6 CIDR {given:?}: no prefix length; did you mean {given}/128?")]
    Cidr6NoPrefix { given: String },
    #[error("{given} is not a canonical CIDR (host bits are set); did you mean {canonical}?")]
    Cidr6NotCanonical { given: String, canonical: Ipv6Cidr },
    #[error("protocol icmp is IPv4's and {0} is an IPv6 CIDR; use --proto icmpv6")]
    IcmpWithIpv6(Ipv6Cidr),
    #[error("protocol icmpv6 is IPv6's and {0} is an IPv4 CIDR; use --proto icmp")]
    Icmpv6WithIpv4(Ipv4Cidr),
    #[error("security group {group} already has the rule {rule} (InvalidPermission.Duplicate)")]
    Duplicate { group: String, rule: String },
    #[error("security group {group} has no rule {rule}")]
    NoSuchRule { group: String, rule: String },
    #[error(
        "security group {group} already has {max} {direction} rules, the most a group may have"
    )]
    TooManyRules {
        group: String,
        direction: Direction,
        max: usize,
    },
    #[error(
        "task {task} already has {max} security groups, the most a task may have \
         (berth daemon --max-sgs-per-task)"
    )]
    TooManyGroups { task: String, max: u8 },
    #[error("security group {group} is already attached to task {task}")]
    AlreadyAttached { group: String, task: String },
    #[error("security group {group} is not attached to task {task}")]
    NotAttached { group: String, task: String },
    #[error(
        "security group {group} is attached to {}; detach it first (DependencyViolation)",
        list("task", .tasks)
    )]
    AttachedToTasks { group: String, tasks: Vec<String> },
    #[error(
        "security group {group} is referenced by rules of {}; remove those rules first \
         (DependencyViolation)",
        list("security group", .groups)
    )]
    Referenced { group: String, groups: Vec<String> },
    #[error(
        "security group {0} is the daemon's --default-sg; restart the daemon without it first"
    )]
    IsDefault(String),
}

impl SgError {
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NoSuchGroup(_) | Self::NoSuchRule { .. } | Self::NotAttached { .. } => 404,
            Self::Exists(_)
            | Self::Duplicate { .. }
            | Self::TooManyRules { .. }
            | Self::TooManyGroups { .. }
            | Self::AlreadyAttached { .. }
            | Self::AttachedToTasks { .. }
            | Self::Referenced { .. }
            | Self::IsDefault(_) => 409,
            _ => 400,
        }
    }
}

/// `task web`, `tasks a, b`.
fn list(what: &str, names: &[String]) -> String {
    let s = if names.len() == 1 { "" } else { "s" };
    format!("{what}{s} {}", names.join(", "))
}

/// Group names follow task names: non-empty, at most 255 of
/// `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), SgError> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(SgError::Name {
            name: name.to_owned(),
            reason,
        }),
    }
}

pub fn validate_description(text: &str) -> Result<(), SgError> {
    let chars = text.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(SgError::DescriptionTooLong(chars));
    }
    if text.chars().any(char::is_control) {
        return Err(SgError::DescriptionControl);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// What a rule matches besides its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Traffic {
    /// Inclusive destination port range.
    Tcp(u16, u16),
    Udp(u16, u16),
    /// Type and code; `None` is any (-1).
    Icmp {
        icmp_type: Option<u8>,
        icmp_code: Option<u8>,
    },
    /// `ICMPv6` (protocol 58): type and code; `None` is any (-1).
    Icmpv6 {
        icmp_type: Option<u8>,
        icmp_code: Option<u8>,
    },
    All,
    /// Any other IP protocol (IPv4 protocol, IPv6 next header), by number:
    /// all of it. Never 0, 1, 6, 17, 58 or 255 (see the module's comment).
    Proto(u8),
}

impl Traffic {
    fn protocol(&self) -> String {
        match self {
            Self::Tcp(..) => "tcp".to_owned(),
            Self::Udp(..) => "udp".to_owned(),
            Self::Icmp { .. } => "icmp".to_owned(),
            Self::Icmpv6 { .. } => "icmpv6".to_owned(),
            Self::All => "all".to_owned(),
            Self::Proto(n) => n.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Cidr(Ipv4Cidr),
    /// An IPv6 network: matches IPv6 peers only.
    Cidr6(Ipv6Cidr),
    /// Another group by name (its members: the IPs of its tasks).
    Group(String),
}

/// One allow rule. Two rules are the same rule when everything but the
/// description is equal (as in AWS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub traffic: Traffic,
    pub peer: Peer,
    pub description: String,
}

impl Rule {
    pub fn same_as(&self, other: &Self) -> bool {
        self.traffic == other.traffic && self.peer == other.peer
    }

    /// AWS's rule for a new group: everything out (IPv4).
    pub fn allow_all_out() -> Self {
        Self {
            traffic: Traffic::All,
            peer: Peer::Cidr(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
            description: String::new(),
        }
    }

    /// Its IPv6 twin (`::/0`), which AWS adds in a VPC with IPv6.
    pub fn allow_all_out6() -> Self {
        Self {
            traffic: Traffic::All,
            peer: Peer::Cidr6(Ipv6Cidr::new(Ipv6Addr::UNSPECIFIED, 0)),
            description: String::new(),
        }
    }

    /// A new group's egress rules: everything out, both families.
    pub fn default_egress() -> Vec<Self> {
        vec![Self::allow_all_out(), Self::allow_all_out6()]
    }

    /// Its wire and store form.
    pub fn spec(&self, direction: Direction) -> RuleSpec {
        let (port, icmp_type, icmp_code) = match self.traffic {
            Traffic::Tcp(lo, hi) | Traffic::Udp(lo, hi) => (Some(port_text(lo, hi)), None, None),
            Traffic::Icmp {
                icmp_type,
                icmp_code,
            }
            | Traffic::Icmpv6 {
                icmp_type,
                icmp_code,
            } => (
                None,
                Some(icmp_type.map_or(-1, i64::from)),
                Some(icmp_code.map_or(-1, i64::from)),
            ),
            Traffic::All | Traffic::Proto(_) => (None, None, None),
        };
        let (cidr, sg) = match &self.peer {
            Peer::Cidr(c) => (Some(c.to_string()), None),
            Peer::Cidr6(c) => (Some(c.to_string()), None),
            Peer::Group(g) => (None, Some(g.clone())),
        };
        RuleSpec {
            direction,
            protocol: self.traffic.protocol(),
            port,
            icmp_type,
            icmp_code,
            cidr,
            sg,
            description: self.description.clone(),
        }
    }

    /// `ingress tcp 5432 from sg sg-api`, for messages.
    pub fn summary(&self, direction: Direction) -> String {
        let what = match self.traffic {
            Traffic::Tcp(lo, hi) => format!("tcp {}", port_text(lo, hi)),
            Traffic::Udp(lo, hi) => format!("udp {}", port_text(lo, hi)),
            Traffic::Icmp {
                icmp_type,
                icmp_code,
            } => format!("icmp {}", icmp_text(icmp_type, icmp_code)),
            Traffic::Icmpv6 {
                icmp_type,
                icmp_code,
            } => format!("icmpv6 {}", icmp_text(icmp_type, icmp_code)),
            Traffic::All => "all".to_owned(),
            Traffic::Proto(n) => format!("protocol {n}"),
        };
        let dir = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let peer = match &self.peer {
            Peer::Cidr(c) => c.to_string(),
            Peer::Cidr6(c) => c.to_string(),
            Peer::Group(g) => format!("sg {g}"),
        };
        format!("{direction} {what} {dir} {peer}")
    }
}

pub fn port_text(lo: u16, hi: u16) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// `type 8 code any`, `any type`.
pub fn icmp_text(icmp_type: Option<u8>, icmp_code: Option<u8>) -> String {
    match (icmp_type, icmp_code) {
        (None, _) => "any type".to_owned(),
        (Some(t), None) => format!("type {t}"),
        (Some(t), Some(c)) => format!("type {t} code {c}"),
    }
}

/// A rule as the API, the CLI and the store spell it:
/// `{"direction":"ingress","protocol":"tcp","port":"5432","sg":"sg-api"}`.
/// ICMP type and code are AWS's integers, -1 meaning any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    pub direction: Direction,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sg: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl RuleSpec {
    /// Validates every field on its own; whether a peer group exists is for
    /// [`SgBook::add_rule`].
    pub fn parse(&self) -> Result<Rule, SgError> {
        let proto = protocol_name(&self.protocol)?;
        let traffic = match proto.as_str() {
            "tcp" | "udp" => {
                let name = if proto == "tcp" { "tcp" } else { "udp" };
                if self.icmp_type.is_some() || self.icmp_code.is_some() {
                    return Err(SgError::IcmpNotAllowed(name));
                }
                let port = self.port.as_deref().ok_or(SgError::PortRequired(name))?;
                let (lo, hi) = parse_ports(port)?;
                if name == "tcp" {
                    Traffic::Tcp(lo, hi)
                } else {
                    Traffic::Udp(lo, hi)
                }
            }
            "icmp" | "icmpv6" | "58" => {
                let v6 = proto != "icmp";
                if self.port.is_some() {
                    return Err(SgError::PortNotAllowed(if v6 { "icmpv6" } else { "icmp" }));
                }
                let icmp_type = icmp_field(self.icmp_type, SgError::IcmpType)?;
                let icmp_code = icmp_field(self.icmp_code, SgError::IcmpCode)?;
                if icmp_type.is_none() && icmp_code.is_some() {
                    return Err(SgError::IcmpCodeWithoutType);
                }
                if v6 {
                    Traffic::Icmpv6 {
                        icmp_type,
                        icmp_code,
                    }
                } else {
                    Traffic::Icmp {
                        icmp_type,
                        icmp_code,
                    }
                }
            }
            "all" | "-1" => {
                if self.port.is_some() {
                    return Err(SgError::PortNotAllowed("all"));
                }
                if self.icmp_type.is_some() || self.icmp_code.is_some() {
                    return Err(SgError::IcmpNotAllowed("all"));
                }
                Traffic::All
            }
            number => {
                let n = number
                    .parse::<u8>()
                    .map_err(|_| SgError::Protocol(self.protocol.clone()))?;
                if self.port.is_some() || self.icmp_type.is_some() || self.icmp_code.is_some() {
                    return Err(SgError::NumberedFields(n));
                }
                Traffic::Proto(n)
            }
        };
        let peer = match (&self.cidr, &self.sg) {
            (Some(cidr), None) if cidr.contains(':') => Peer::Cidr6(parse_cidr6(cidr)?),
            (Some(cidr), None) => Peer::Cidr(parse_cidr(cidr)?),
            (None, Some(sg)) => {
                validate_name(sg)?;
                Peer::Group(sg.clone())
            }
            _ => return Err(SgError::Peer),
        };
        match (&traffic, &peer) {
            (Traffic::Icmp { .. }, Peer::Cidr6(c)) => return Err(SgError::IcmpWithIpv6(*c)),
            (Traffic::Icmpv6 { .. }, Peer::Cidr(c)) => return Err(SgError::Icmpv6WithIpv4(*c)),
            _ => {}
        }
        validate_description(&self.description)?;
        Ok(Rule {
            traffic,
            peer,
            description: self.description.clone(),
        })
    }
}

/// The protocol's name in lower case, a number of a named protocol as its
/// name (AWS's aliases), any other number 1-254 as itself.
fn protocol_name(given: &str) -> Result<String, SgError> {
    let lower = given.to_ascii_lowercase();
    if !lower.bytes().all(|b| b.is_ascii_digit()) || lower.is_empty() {
        return Ok(lower);
    }
    let n: u16 = match lower.parse() {
        Ok(n) if n <= 255 => n,
        _ => return Err(SgError::Protocol(given.to_owned())),
    };
    Ok(match n {
        0 | 255 => return Err(SgError::ProtocolNumber(n)),
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => n.to_string(),
    })
}

fn icmp_field(v: Option<i64>, err: fn(i64) -> SgError) -> Result<Option<u8>, SgError> {
    match v {
        None | Some(-1) => Ok(None),
        // 255 is the datapath's wildcard, and a reserved type anyway.
        Some(v @ 0..=254) => Ok(Some(v as u8)),
        Some(v) => Err(err(v)),
    }
}

/// `P` or `P-Q`, 0-65535 (AWS's "all ports" is 0-65535).
pub fn parse_ports(s: &str) -> Result<(u16, u16), SgError> {
    let port = |p: &str| -> Result<u16, SgError> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SgError::PortNotANumber(p.to_owned()));
        }
        let n: u64 = p.parse().map_err(|_| SgError::PortOutOfRange(u64::MAX))?;
        u16::try_from(n).map_err(|_| SgError::PortOutOfRange(n))
    };
    match s.split_once('-') {
        None => port(s).map(|p| (p, p)),
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(SgError::PortRangeReversed(lo, hi));
            }
            Ok((lo, hi))
        }
    }
}

/// A canonical IPv4 CIDR: `10.0.0.0/8`, not `10.0.0.1/8`.
pub fn parse_cidr(s: &str) -> Result<Ipv4Cidr, SgError> {
    let format = || SgError::CidrFormat(s.to_owned());
    let Some((addr, len)) = s.split_once('/') else {
        return Err(match s.parse::<Ipv4Addr>() {
            Ok(_) => SgError::CidrNoPrefix {
                given: s.to_owned(),
            },
            Err(_) => format(),
        });
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| format())?;
    let canonical_len = !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    let len: u8 = match len.parse() {
        Ok(n) if canonical_len && n <= 32 => n,
        _ => return Err(format()),
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let network = Ipv4Addr::from(u32::from(addr) & mask);
    let cidr = Ipv4Cidr::new(network, len);
    if network != addr {
        return Err(SgError::CidrNotCanonical {
            given: s.to_owned(),
            canonical: cidr,
        });
    }
    Ok(cidr)
}

/// A canonical IPv6 CIDR: `2001:db8::/32`, not `2001:db8::1/32`.
pub fn parse_cidr6(s: &str) -> Result<Ipv6Cidr, SgError> {
    let format = || SgError::Cidr6Format(s.to_owned());
    let Some((addr, len)) = s.split_once('/') else {
        return Err(match s.parse::<Ipv6Addr>() {
            Ok(_) => SgError::Cidr6NoPrefix {
                given: s.to_owned(),
            },
            Err(_) => format(),
        });
    };
    let addr: Ipv6Addr = addr.parse().map_err(|_| format())?;
    let canonical_len = !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    let len: u8 = match len.parse() {
        Ok(n) if canonical_len && n <= 128 => n,
        _ => return Err(format()),
    };
    let cidr = Ipv6Cidr::new(addr, len).network();
    if cidr.addr != addr {
        return Err(SgError::Cidr6NotCanonical {
            given: s.to_owned(),
            canonical: cidr,
        });
    }
    Ok(cidr)
}
