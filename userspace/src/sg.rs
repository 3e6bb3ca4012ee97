//! Security groups with AWS VPC semantics: named sets of allow rules that
//! are attached to tasks. The union of a task's groups' rules applies to
//! every container IP of the task; a task without groups is open, as in
//! Docker, unless the daemon has a `--default-sg`.
//!
//! This module is the pure part: the model, the validation of every field
//! (one clear line per mistake), and the compilation into what the datapath
//! holds ([`DpState`]: endpoints, per-task rules, group members).
//! `state::security_groups` keeps it in step with the store and the
//! datapath.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Datapath, DatapathError, FlowTimeouts, PolicyRule, RulePeer, RuleProto},
    netif::Ipv4Cidr,
};

/// AWS's limits: rules per direction per group, groups per task.
pub const MAX_RULES_PER_DIRECTION: usize = 60;
pub const DEFAULT_MAX_SGS_PER_TASK: u8 = 5;
/// What `--max-sgs-per-task` may be raised to (the datapath holds 16 x 60
/// rules per direction and task).
pub const MAX_SGS_PER_TASK: u8 = 16;
pub const MAX_DESCRIPTION_CHARS: usize = 255;
pub const MAX_NAME_LEN: usize = 255;
/// The rules of every task the `--default-sg` applies to are the same, so
/// those tasks share one compiled policy under this id; tasks with groups of
/// their own get ids from 1 up.
pub const DEFAULT_POLICY_ID: u32 = 0;

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
    #[error("unknown protocol {0:?}; use tcp, udp, icmp or all")]
    Protocol(String),
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
    #[error("protocol {0} has no ICMP type or code; --icmp-type and --icmp-code apply to icmp")]
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
            SgError::NoSuchGroup(_) | SgError::NoSuchRule { .. } | SgError::NotAttached { .. } => {
                404
            }
            SgError::Exists(_)
            | SgError::Duplicate { .. }
            | SgError::TooManyRules { .. }
            | SgError::TooManyGroups { .. }
            | SgError::AlreadyAttached { .. }
            | SgError::AttachedToTasks { .. }
            | SgError::Referenced { .. }
            | SgError::IsDefault(_) => 409,
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
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "only letters, digits, '_', '.' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(SgError::Name {
        name: name.to_owned(),
        reason,
    })
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
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
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
    All,
}

impl Traffic {
    fn protocol(&self) -> &'static str {
        match self {
            Traffic::Tcp(..) => "tcp",
            Traffic::Udp(..) => "udp",
            Traffic::Icmp { .. } => "icmp",
            Traffic::All => "all",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Cidr(Ipv4Cidr),
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
    pub fn same_as(&self, other: &Rule) -> bool {
        self.traffic == other.traffic && self.peer == other.peer
    }

    /// AWS's rule for a new group: everything out.
    pub fn allow_all_out() -> Rule {
        Rule {
            traffic: Traffic::All,
            peer: Peer::Cidr(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
            description: String::new(),
        }
    }

    /// Its wire and store form.
    pub fn spec(&self, direction: Direction) -> RuleSpec {
        let (port, icmp_type, icmp_code) = match self.traffic {
            Traffic::Tcp(lo, hi) | Traffic::Udp(lo, hi) => (Some(port_text(lo, hi)), None, None),
            Traffic::Icmp {
                icmp_type,
                icmp_code,
            } => (
                None,
                Some(icmp_type.map_or(-1, i64::from)),
                Some(icmp_code.map_or(-1, i64::from)),
            ),
            Traffic::All => (None, None, None),
        };
        let (cidr, sg) = match &self.peer {
            Peer::Cidr(c) => (Some(c.to_string()), None),
            Peer::Group(g) => (None, Some(g.clone())),
        };
        RuleSpec {
            direction,
            protocol: self.traffic.protocol().to_owned(),
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
            Traffic::All => "all".to_owned(),
        };
        let dir = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let peer = match &self.peer {
            Peer::Cidr(c) => c.to_string(),
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
        let proto = self.protocol.to_ascii_lowercase();
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
            "icmp" => {
                if self.port.is_some() {
                    return Err(SgError::PortNotAllowed("icmp"));
                }
                let icmp_type = icmp_field(self.icmp_type, SgError::IcmpType)?;
                let icmp_code = icmp_field(self.icmp_code, SgError::IcmpCode)?;
                if icmp_type.is_none() && icmp_code.is_some() {
                    return Err(SgError::IcmpCodeWithoutType);
                }
                Traffic::Icmp {
                    icmp_type,
                    icmp_code,
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
            _ => return Err(SgError::Protocol(self.protocol.clone())),
        };
        let peer = match (&self.cidr, &self.sg) {
            (Some(cidr), None) => Peer::Cidr(parse_cidr(cidr)?),
            (None, Some(sg)) => {
                validate_name(sg)?;
                Peer::Group(sg.clone())
            }
            _ => return Err(SgError::Peer),
        };
        validate_description(&self.description)?;
        Ok(Rule {
            traffic,
            peer,
            description: self.description.clone(),
        })
    }
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Stable, never reused: the datapath knows the group by it.
    pub id: u32,
    pub description: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Group {
    pub fn rules(&self, direction: Direction) -> &Vec<Rule> {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
    fn rules_mut(&mut self, direction: Direction) -> &mut Vec<Rule> {
        match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
    fn references(&self, group: &str) -> bool {
        self.ingress
            .iter()
            .chain(&self.egress)
            .any(|r| r.peer == Peer::Group(group.to_owned()))
    }
}

/// A task's groups, in the order attached, and the id of its compiled
/// policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub policy_id: u32,
    pub groups: Vec<String>,
}

/// Every group and attachment: the desired state, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgBook {
    pub groups: BTreeMap<String, Group>,
    /// Task name -> its groups (only tasks with at least one).
    pub attachments: BTreeMap<String, Attachment>,
    pub next_group_id: u32,
    pub next_policy_id: u32,
}

impl Default for SgBook {
    fn default() -> Self {
        SgBook {
            groups: BTreeMap::new(),
            attachments: BTreeMap::new(),
            next_group_id: 1,
            next_policy_id: DEFAULT_POLICY_ID + 1,
        }
    }
}

/// What the store must write to go from one book to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgChanges {
    /// `None` deletes.
    pub groups: Vec<(String, Option<GroupRecord>)>,
    pub attachments: Vec<(String, Option<Attachment>)>,
    pub next_group_id: Option<u32>,
    pub next_policy_id: Option<u32>,
}

impl SgChanges {
    pub fn is_empty(&self) -> bool {
        *self == SgChanges::default()
    }
}

/// A group as stored (`sgs_v1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRecord {
    pub id: u32,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

impl GroupRecord {
    pub fn of(g: &Group) -> GroupRecord {
        GroupRecord {
            id: g.id,
            description: g.description.clone(),
            rules: g
                .ingress
                .iter()
                .map(|r| r.spec(Direction::Ingress))
                .chain(g.egress.iter().map(|r| r.spec(Direction::Egress)))
                .collect(),
        }
    }

    pub fn into_group(self) -> Result<Group, SgError> {
        let mut g = Group {
            id: self.id,
            description: self.description,
            ingress: Vec::new(),
            egress: Vec::new(),
        };
        for spec in &self.rules {
            g.rules_mut(spec.direction).push(spec.parse()?);
        }
        Ok(g)
    }
}

impl SgBook {
    pub fn group(&self, name: &str) -> Result<&Group, SgError> {
        self.groups
            .get(name)
            .ok_or_else(|| SgError::NoSuchGroup(name.to_owned()))
    }

    fn group_mut(&mut self, name: &str) -> Result<&mut Group, SgError> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| SgError::NoSuchGroup(name.to_owned()))
    }

    /// A new group: no ingress rules, everything allowed out.
    pub fn create(&mut self, name: &str, description: &str) -> Result<(), SgError> {
        validate_name(name)?;
        validate_description(description)?;
        if self.groups.contains_key(name) {
            return Err(SgError::Exists(name.to_owned()));
        }
        let id = self.next_group_id;
        self.next_group_id += 1;
        self.groups.insert(
            name.to_owned(),
            Group {
                id,
                description: description.to_owned(),
                ingress: Vec::new(),
                egress: vec![Rule::allow_all_out()],
            },
        );
        Ok(())
    }

    /// Refused while a task has it or another group's rule names it.
    pub fn remove(&mut self, name: &str) -> Result<Group, SgError> {
        self.group(name)?;
        let tasks = self.tasks_of(name);
        if !tasks.is_empty() {
            return Err(SgError::AttachedToTasks {
                group: name.to_owned(),
                tasks,
            });
        }
        let groups: Vec<String> = self
            .groups
            .iter()
            .filter(|(other, g)| other.as_str() != name && g.references(name))
            .map(|(other, _)| other.clone())
            .collect();
        if !groups.is_empty() {
            return Err(SgError::Referenced {
                group: name.to_owned(),
                groups,
            });
        }
        Ok(self.groups.remove(name).expect("checked above"))
    }

    pub fn add_rule(
        &mut self,
        name: &str,
        direction: Direction,
        rule: Rule,
    ) -> Result<(), SgError> {
        self.group(name)?;
        if let Peer::Group(peer) = &rule.peer {
            // A group may name itself, as in AWS.
            if peer != name {
                self.group(peer)?;
            }
        }
        let g = self.group_mut(name)?;
        let rules = g.rules_mut(direction);
        if rules.iter().any(|r| r.same_as(&rule)) {
            return Err(SgError::Duplicate {
                group: name.to_owned(),
                rule: rule.summary(direction),
            });
        }
        if rules.len() >= MAX_RULES_PER_DIRECTION {
            return Err(SgError::TooManyRules {
                group: name.to_owned(),
                direction,
                max: MAX_RULES_PER_DIRECTION,
            });
        }
        rules.push(rule);
        Ok(())
    }

    /// Removes the rule equal to `rule` (the description is not compared).
    pub fn remove_rule(
        &mut self,
        name: &str,
        direction: Direction,
        rule: &Rule,
    ) -> Result<Rule, SgError> {
        let g = self.group_mut(name)?;
        let rules = g.rules_mut(direction);
        let Some(i) = rules.iter().position(|r| r.same_as(rule)) else {
            return Err(SgError::NoSuchRule {
                group: name.to_owned(),
                rule: rule.summary(direction),
            });
        };
        Ok(rules.remove(i))
    }

    /// Whether `task` exists is the caller's to check.
    pub fn attach(&mut self, name: &str, task: &str, max: u8) -> Result<(), SgError> {
        self.group(name)?;
        let next_id = self.next_policy_id;
        let a = self
            .attachments
            .entry(task.to_owned())
            .or_insert_with(|| Attachment {
                policy_id: next_id,
                groups: Vec::new(),
            });
        if a.policy_id == next_id {
            self.next_policy_id += 1;
        }
        if a.groups.iter().any(|g| g == name) {
            return Err(SgError::AlreadyAttached {
                group: name.to_owned(),
                task: task.to_owned(),
            });
        }
        if a.groups.len() >= usize::from(max) {
            return Err(SgError::TooManyGroups {
                task: task.to_owned(),
                max,
            });
        }
        a.groups.push(name.to_owned());
        Ok(())
    }

    pub fn detach(&mut self, name: &str, task: &str) -> Result<(), SgError> {
        self.group(name)?;
        let not_attached = || SgError::NotAttached {
            group: name.to_owned(),
            task: task.to_owned(),
        };
        let a = self.attachments.get_mut(task).ok_or_else(not_attached)?;
        let i = a
            .groups
            .iter()
            .position(|g| g == name)
            .ok_or_else(not_attached)?;
        a.groups.remove(i);
        if a.groups.is_empty() {
            self.attachments.remove(task);
        }
        Ok(())
    }

    /// A task that no longer exists has no groups. Returns whether it had.
    pub fn forget_task(&mut self, task: &str) -> bool {
        self.attachments.remove(task).is_some()
    }

    /// Tasks `name` is attached to, by name.
    pub fn tasks_of(&self, name: &str) -> Vec<String> {
        self.attachments
            .iter()
            .filter(|(_, a)| a.groups.iter().any(|g| g == name))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The groups whose rules apply to `task`, and its policy id; empty when
    /// the task is open.
    pub fn effective<'a>(&'a self, task: &str, default_sg: Option<&'a str>) -> (Vec<&'a str>, u32) {
        match self.attachments.get(task) {
            Some(a) if !a.groups.is_empty() => {
                (a.groups.iter().map(String::as_str).collect(), a.policy_id)
            }
            _ => match default_sg.filter(|d| self.groups.contains_key(*d)) {
                Some(d) => (vec![d], DEFAULT_POLICY_ID),
                None => (Vec::new(), DEFAULT_POLICY_ID),
            },
        }
    }

    /// The union of `groups`' rules (duplicates once), in attach order.
    pub fn compile(&self, groups: &[&str]) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for g in groups.iter().filter_map(|n| self.groups.get(*n)) {
            for (rules, out) in [(&g.ingress, &mut ingress), (&g.egress, &mut egress)] {
                for r in rules {
                    if let Some(p) = self.compile_rule(r) {
                        if !out.contains(&p) {
                            out.push(p);
                        }
                    }
                }
            }
        }
        (ingress, egress)
    }

    fn compile_rule(&self, r: &Rule) -> Option<PolicyRule> {
        let (proto, ports, icmp_type, icmp_code) = match r.traffic {
            Traffic::Tcp(lo, hi) => (Some(RuleProto::Tcp), (lo, hi), None, None),
            Traffic::Udp(lo, hi) => (Some(RuleProto::Udp), (lo, hi), None, None),
            Traffic::Icmp {
                icmp_type,
                icmp_code,
            } => (Some(RuleProto::Icmp), (0, 0), icmp_type, icmp_code),
            Traffic::All => (None, (0, u16::MAX), None, None),
        };
        let peer = match &r.peer {
            Peer::Cidr(c) => RulePeer::Cidr(c.addr, c.prefix_len),
            // Groups named by rules cannot be removed, so this always finds one.
            Peer::Group(g) => RulePeer::Group(self.groups.get(g)?.id),
        };
        Some(PolicyRule {
            proto,
            ports,
            icmp_type,
            icmp_code,
            peer,
        })
    }

    /// The store writes that turn `old` into `self`.
    pub fn changes_since(&self, old: &SgBook) -> SgChanges {
        let mut c = SgChanges::default();
        for (name, g) in &self.groups {
            if old.groups.get(name) != Some(g) {
                c.groups.push((name.clone(), Some(GroupRecord::of(g))));
            }
        }
        for name in old.groups.keys() {
            if !self.groups.contains_key(name) {
                c.groups.push((name.clone(), None));
            }
        }
        for (task, a) in &self.attachments {
            if old.attachments.get(task) != Some(a) {
                c.attachments.push((task.clone(), Some(a.clone())));
            }
        }
        for task in old.attachments.keys() {
            if !self.attachments.contains_key(task) {
                c.attachments.push((task.clone(), None));
            }
        }
        if self.next_group_id != old.next_group_id {
            c.next_group_id = Some(self.next_group_id);
        }
        if self.next_policy_id != old.next_policy_id {
            c.next_policy_id = Some(self.next_policy_id);
        }
        c
    }

    /// What the datapath should hold for `tasks` (task name -> its container
    /// IPs). An IP claimed by two tasks goes to the first one (by name)
    /// that has policy, so a mistake never opens it.
    pub fn desired(
        &self,
        default_sg: Option<&str>,
        tasks: &BTreeMap<String, BTreeSet<Ipv4Addr>>,
    ) -> DpState {
        let mut want = DpState::default();
        let mut members: BTreeMap<u32, BTreeSet<Ipv4Addr>> = self
            .groups
            .values()
            .map(|g| (g.id, BTreeSet::new()))
            .collect();
        for (task, ips) in tasks {
            let (groups, policy_id) = self.effective(task, default_sg);
            let policy = !groups.is_empty();
            if policy && !want.policies.contains_key(&policy_id) {
                want.policies.insert(policy_id, self.compile(&groups));
            }
            for g in &groups {
                if let Some(g) = self.groups.get(*g) {
                    members.entry(g.id).or_default().extend(ips);
                }
            }
            for ip in ips {
                let taken_with_policy = want.endpoints.get(ip).is_some_and(|(_, p)| *p);
                if !taken_with_policy {
                    want.endpoints.insert(*ip, (policy_id, policy));
                }
            }
        }
        want.members = members
            .into_iter()
            .map(|(id, ips)| (id, ips.into_iter().collect()))
            .collect();
        want
    }
}

/// The security-group part of what the datapath holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DpState {
    /// Container IP -> (policy id, whether policy applies).
    pub endpoints: BTreeMap<Ipv4Addr, (u32, bool)>,
    /// Policy id -> compiled (ingress, egress).
    pub policies: BTreeMap<u32, (Vec<PolicyRule>, Vec<PolicyRule>)>,
    /// Group id -> member IPs, sorted.
    pub members: BTreeMap<u32, Vec<Ipv4Addr>>,
}

impl DpState {
    /// Writes to `dp` what differs between `self` (what it holds) and
    /// `want`, updating `self` step by step, so after a failure `self` is
    /// still exactly what the datapath holds. Rules go in before the
    /// endpoints that use them and out after.
    pub fn push(&mut self, want: &DpState, dp: &dyn Datapath) -> Result<(), DatapathError> {
        for (id, (ingress, egress)) in &want.policies {
            if self.policies.get(id) != Some(&(ingress.clone(), egress.clone())) {
                dp.set_policy(*id, ingress, egress)?;
                self.policies.insert(*id, (ingress.clone(), egress.clone()));
            }
        }
        for (id, ips) in &want.members {
            if self.members.get(id) != Some(ips) {
                dp.set_group_members(*id, ips)?;
                self.members.insert(*id, ips.clone());
            }
        }
        // The veth hooks skip their checks while the flag says no endpoint
        // has policy: clear it before the first one gets policy, set it
        // only once the last one has lost it.
        let any_policy = want.endpoints.values().any(|&(_, policy)| policy);
        if any_policy {
            dp.set_no_policy(false)?;
        }
        for (ip, &(policy_id, policy)) in &want.endpoints {
            if self.endpoints.get(ip) != Some(&(policy_id, policy)) {
                dp.set_endpoint(*ip, policy_id, policy)?;
                self.endpoints.insert(*ip, (policy_id, policy));
            }
        }
        let gone: Vec<Ipv4Addr> = self
            .endpoints
            .keys()
            .filter(|ip| !want.endpoints.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            dp.remove_endpoint(ip)?;
            self.endpoints.remove(&ip);
        }
        if !any_policy {
            dp.set_no_policy(true)?;
        }
        let gone: Vec<u32> = self
            .members
            .keys()
            .filter(|id| !want.members.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            dp.set_group_members(id, &[])?;
            self.members.remove(&id);
        }
        let gone: Vec<u32> = self
            .policies
            .keys()
            .filter(|id| !want.policies.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            dp.remove_policy(id)?;
            self.policies.remove(&id);
        }
        Ok(())
    }
}

/// The daemon's security-group settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgSettings {
    pub max_per_task: u8,
    /// Applies to tasks that have no group; created (no ingress, all
    /// egress) if it does not exist.
    pub default_sg: Option<String>,
    pub timeouts: FlowTimeouts,
}

impl Default for SgSettings {
    fn default() -> Self {
        SgSettings {
            max_per_task: DEFAULT_MAX_SGS_PER_TASK,
            default_sg: None,
            timeouts: FlowTimeouts::default(),
        }
    }
}

/// How often idle flows are looked for: half the shortest timeout, so a
/// flow outlives its timeout by at most half of it, between 1 and 5 s.
pub fn expiry_period(t: &FlowTimeouts) -> Duration {
    let shortest = [
        t.tcp_established,
        t.tcp_closing,
        t.tcp_syn,
        t.udp_single,
        t.udp_stream,
        t.icmp,
    ]
    .into_iter()
    .min()
    .unwrap_or(u64::MAX);
    Duration::from_millis(shortest.saturating_mul(500))
        .clamp(Duration::from_secs(1), crate::daemon::FLOW_EXPIRY)
}

/// Drop counters shown by `berth sg show` (the datapath counts them for the
/// whole host, not per group).
pub const DROP_COUNTERS: [&str; 6] = [
    berth_maps::Counter::PolicyDeniedIngress.name(),
    berth_maps::Counter::PolicyDeniedEgress.name(),
    berth_maps::Counter::CtTableFull.name(),
    berth_maps::Counter::FragDenied.name(),
    berth_maps::Counter::FragNoFirst.name(),
    berth_maps::Counter::PolicyDeniedIcmp.name(),
];

/// A group as the API and `berth sg ls/show --json` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SgView {
    pub name: String,
    pub id: u32,
    #[serde(default)]
    pub description: String,
    pub ingress: Vec<RuleSpec>,
    pub egress: Vec<RuleSpec>,
    /// Tasks it is attached to.
    pub tasks: Vec<String>,
    /// Whether it is the daemon's `--default-sg`.
    #[serde(default)]
    pub default: bool,
    /// Tasks without groups of their own, which this default group covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_tasks: Vec<String>,
    /// Container IPs of the tasks it applies to: what a rule naming it
    /// matches.
    pub members: Vec<Ipv4Addr>,
    /// Host-wide drop counters (`berth sg show` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_counters: Option<BTreeMap<String, u64>>,
}

#[cfg(test)]
mod tests;
