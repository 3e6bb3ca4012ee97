//! Security groups with AWS VPC semantics: named sets of allow rules that
//! are attached to tasks. The union of a task's groups' rules applies to
//! every container IP of the task; a task without groups is open, as in
//! Docker, unless the daemon has a `--default-sg`.
//!
//! This module is the pure part: the book of groups and attachments, and
//! its compilation into what the datapath holds ([`DpState`]: endpoints,
//! per-task rules, group members). The rules themselves and their
//! validation are `domain::rules`; `registry::security_groups` keeps the
//! book in step with the store and the datapath.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    domain::{
        error::DatapathError,
        rules::{
            validate_description, validate_name, Direction, Peer, Rule, RuleSpec, SgError, Traffic,
            DEFAULT_MAX_SGS_PER_TASK, MAX_RULES_PER_DIRECTION,
        },
    },
    engine::datapath::{Datapath, FlowTimeouts, PolicyRule, RulePeer, RuleProto, FLOW_EXPIRY},
};

/// The rules of every task the `--default-sg` applies to are the same, so
/// those tasks share one compiled policy under this id; tasks with groups of
/// their own get ids from 1 up.
pub const DEFAULT_POLICY_ID: u32 = 0;

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
        Self {
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
        *self == Self::default()
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
    pub fn of(g: &Group) -> Self {
        Self {
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

    /// A new group: no ingress rules, everything allowed out (both
    /// families, as AWS does in a VPC with IPv6).
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
                egress: Rule::default_egress(),
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
            Traffic::Icmpv6 {
                icmp_type,
                icmp_code,
            } => (Some(RuleProto::Icmp6), (0, 0), icmp_type, icmp_code),
            Traffic::All => (None, (0, u16::MAX), None, None),
            // Ports 0 for the datapath's range check: a numbered protocol
            // is matched with port 0.
            Traffic::Proto(n) => (Some(RuleProto::Number(n)), (0, u16::MAX), None, None),
        };
        let peer = match &r.peer {
            Peer::Cidr(c) => RulePeer::Cidr(c.addr, c.prefix_len),
            Peer::Cidr6(c) => RulePeer::Cidr6(c.addr, c.prefix_len),
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
    pub fn changes_since(&self, old: &Self) -> SgChanges {
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
    /// IPs, both families). An IP claimed by two tasks goes to the first
    /// one (by name) that has policy, so a mistake never opens it. Each
    /// family gets its own endpoints and members, computed alike: a task's
    /// IPv6 addresses carry the same policy id and flag as its IPv4 ones.
    pub fn desired(
        &self,
        default_sg: Option<&str>,
        tasks: &BTreeMap<String, BTreeSet<IpAddr>>,
    ) -> DpState {
        let mut want = DpState::default();
        let mut members: BTreeMap<u32, BTreeSet<IpAddr>> = self
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
                match *ip {
                    IpAddr::V4(ip) => claim(&mut want.endpoints, ip, policy_id, policy),
                    IpAddr::V6(ip) => claim(&mut want.endpoints6, ip, policy_id, policy),
                }
            }
        }
        for (id, ips) in members {
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            for ip in ips {
                match ip {
                    IpAddr::V4(ip) => v4.push(ip),
                    IpAddr::V6(ip) => v6.push(ip),
                }
            }
            want.members.insert(id, v4);
            want.members6.insert(id, v6);
        }
        want
    }
}

/// `ip` goes to this task unless a task with policy has it already.
fn claim<A: Ord + Copy>(
    endpoints: &mut BTreeMap<A, (u32, bool)>,
    ip: A,
    policy_id: u32,
    policy: bool,
) {
    let taken_with_policy = endpoints.get(&ip).is_some_and(|(_, p)| *p);
    if !taken_with_policy {
        endpoints.insert(ip, (policy_id, policy));
    }
}

/// The security-group part of what the datapath holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DpState {
    /// Container IP -> (policy id, whether policy applies).
    pub endpoints: BTreeMap<Ipv4Addr, (u32, bool)>,
    /// Policy id -> compiled (ingress, egress).
    pub policies: BTreeMap<u32, (Vec<PolicyRule>, Vec<PolicyRule>)>,
    /// Group id -> member IPs, sorted.
    pub members: BTreeMap<u32, Vec<Ipv4Addr>>,
    /// The IPv6 twins of `endpoints` and `members`.
    pub endpoints6: BTreeMap<Ipv6Addr, (u32, bool)>,
    pub members6: BTreeMap<u32, Vec<Ipv6Addr>>,
}

impl DpState {
    /// Writes to `dp` what differs between `self` (what it holds) and
    /// `want`, updating `self` step by step, so after a failure `self` is
    /// still exactly what the datapath holds. Rules go in before the
    /// endpoints that use them and out after.
    pub fn push(&mut self, want: &Self, dp: &dyn Datapath) -> Result<(), DatapathError> {
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
        for (id, ips) in &want.members6 {
            if self.members6.get(id) != Some(ips) {
                dp.set_group_members6(*id, ips)?;
                self.members6.insert(*id, ips.clone());
            }
        }
        // The veth hooks skip their checks while the flag says no endpoint
        // has policy: clear it before the first one gets policy, set it
        // only once the last one has lost it.
        let any_policy = want
            .endpoints
            .values()
            .chain(want.endpoints6.values())
            .any(|&(_, policy)| policy);
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
        for (ip, &(policy_id, policy)) in &want.endpoints6 {
            if self.endpoints6.get(ip) != Some(&(policy_id, policy)) {
                dp.set_endpoint6(*ip, policy_id, policy)?;
                self.endpoints6.insert(*ip, (policy_id, policy));
            }
        }
        let gone: Vec<Ipv6Addr> = self
            .endpoints6
            .keys()
            .filter(|ip| !want.endpoints6.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            dp.remove_endpoint6(ip)?;
            self.endpoints6.remove(&ip);
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
            .members6
            .keys()
            .filter(|id| !want.members6.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            dp.set_group_members6(id, &[])?;
            self.members6.remove(&id);
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
        Self {
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
    Duration::from_millis(shortest.saturating_mul(500)).clamp(Duration::from_secs(1), FLOW_EXPIRY)
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
    /// Their IPv6 addresses (a rule naming the group matches them too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members6: Vec<Ipv6Addr>,
    /// Host-wide drop counters (`berth sg show` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_counters: Option<BTreeMap<String, u64>>,
}

#[cfg(test)]
mod tests;
