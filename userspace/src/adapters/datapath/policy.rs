//! Security-group maps: endpoints, compiled rules and group members. The
//! policy connection-tracking tables are swept like the published-port
//! ones (`flows.rs`), outside this struct's mutex.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, MapData};
use berth_maps::{
    Endpoint, Policy, PolicyKey, Rule, SgMember, DIR_EGRESS, DIR_INGRESS, EP_F_POLICY, MAX_RULES,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, RULE_ICMP_ANY, RULE_PEER_CIDR, RULE_PEER_SG, RULE_PROTO_ALL,
};

use super::{DatapathError, PolicyRule, RulePeer, RuleProto};

pub(super) struct PolicyMaps {
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    pub policy: HashMap<MapData, PolicyKey, Policy>,
    pub members: HashMap<MapData, SgMember, u32>,
    /// The IPv6 part of each task's rules (`policy6.rs`).
    pub policy6: HashMap<MapData, PolicyKey, berth_maps::Policy6>,
    /// A task's IPv6 container addresses and its groups' IPv6 members.
    pub endpoints6: HashMap<MapData, [u8; 16], Endpoint>,
    pub members6: HashMap<MapData, berth_maps::SgMember6, u32>,
}

fn err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        reason: e.to_string(),
    }
}

/// A removal of a key that is not there (aya reports it as `ENOENT`) as
/// done.
fn absent_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn addr_be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// An IPv4 rule no packet matches (`peer & 0 != all ones`): what an IPv6
/// rule is to IPv4. `encode_policy` leaves IPv6's rules out; this keeps
/// one that reached `encode_rule` from ever widening IPv4's.
const MATCHES_NOTHING: Rule = Rule {
    proto: PROTO_TCP,
    kind: RULE_PEER_CIDR,
    icmp_type: RULE_ICMP_ANY,
    icmp_code: RULE_ICMP_ANY,
    port_lo: 1,
    port_hi: 0,
    addr_be: u32::MAX,
    mask_be: 0,
};

/// A rule as the IPv4 datapath stores it.
pub fn encode_rule(r: &PolicyRule) -> Rule {
    let proto = match r.proto {
        None => RULE_PROTO_ALL,
        Some(RuleProto::Tcp) => PROTO_TCP,
        Some(RuleProto::Udp) => PROTO_UDP,
        Some(RuleProto::Icmp) => PROTO_ICMP,
        Some(RuleProto::Icmp6) => return MATCHES_NOTHING,
        Some(RuleProto::Number(n)) => n,
    };
    let (kind, addr, mask) = match r.peer {
        RulePeer::Cidr(net, len) => {
            let mask: u32 = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            (
                RULE_PEER_CIDR,
                addr_be(net) & u32::from_ne_bytes(mask.to_be_bytes()),
                u32::from_ne_bytes(mask.to_be_bytes()),
            )
        }
        RulePeer::Group(id) => (RULE_PEER_SG, id, 0),
        RulePeer::Cidr6(..) => return MATCHES_NOTHING,
    };
    Rule {
        proto,
        kind,
        icmp_type: r.icmp_type.unwrap_or(RULE_ICMP_ANY),
        icmp_code: r.icmp_code.unwrap_or(RULE_ICMP_ANY),
        port_lo: r.ports.0,
        port_hi: r.ports.1,
        addr_be: addr,
        mask_be: mask,
    }
}

/// A direction's IPv4 rules (those of IPv6 go to `policy6`).
fn encode_policy(rules: &[PolicyRule]) -> Result<Box<Policy>, DatapathError> {
    let rules: Vec<&PolicyRule> = rules.iter().filter(|r| r.applies_v4()).collect();
    if rules.len() > MAX_RULES {
        return Err(DatapathError::Other(format!(
            "{} rules in one direction; the datapath holds at most {MAX_RULES}",
            rules.len()
        )));
    }
    let mut p = Box::new(Policy {
        len: rules.len() as u32,
        _pad: 0,
        rules: [Rule::default(); MAX_RULES],
    });
    for (slot, r) in p.rules.iter_mut().zip(rules) {
        *slot = encode_rule(r);
    }
    Ok(p)
}

/// The `BERTH_ENDPOINTS` / `BERTH_ENDPOINTS6` value of a task's address.
fn endpoint(task_id: u32, policy: bool) -> Endpoint {
    Endpoint {
        task_id,
        flags: if policy { EP_F_POLICY } else { 0 },
    }
}

impl PolicyMaps {
    pub(super) fn set_endpoint(
        &mut self,
        ip: Ipv4Addr,
        task_id: u32,
        policy: bool,
    ) -> Result<(), DatapathError> {
        let ep = endpoint(task_id, policy);
        self.endpoints
            .insert(addr_be(ip), ep, 0)
            .map_err(err(berth_maps::ENDPOINTS_MAP))
    }

    pub(super) fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        match self.endpoints.remove(&addr_be(ip)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(err(berth_maps::ENDPOINTS_MAP)(e)),
        }
    }

    pub(super) fn set_policy(
        &mut self,
        task_id: u32,
        ingress: &[PolicyRule],
        egress: &[PolicyRule],
    ) -> Result<(), DatapathError> {
        let (i, e) = (encode_policy(ingress)?, encode_policy(egress)?);
        let (i6, e6) = (
            super::policy6::encode_policy6(ingress)?,
            super::policy6::encode_policy6(egress)?,
        );
        // A direction without IPv6 rules holds no entry, which the
        // datapath reads as no rules: 42 KiB less per task and direction.
        for (dir, p) in [(DIR_INGRESS, i6), (DIR_EGRESS, e6)] {
            let key = PolicyKey { task_id, dir };
            let done = if p.len == 0 {
                absent_ok(self.policy6.remove(&key))
            } else {
                self.policy6.insert(key, *p, 0)
            };
            done.map_err(err(berth_maps::POLICY6_MAP))?;
        }
        self.policy
            .insert(
                PolicyKey {
                    task_id,
                    dir: DIR_INGRESS,
                },
                *i,
                0,
            )
            .map_err(err(berth_maps::POLICY_MAP))?;
        self.policy
            .insert(
                PolicyKey {
                    task_id,
                    dir: DIR_EGRESS,
                },
                *e,
                0,
            )
            .map_err(err(berth_maps::POLICY_MAP))
    }

    pub(super) fn remove_policy(&mut self, task_id: u32) -> Result<(), DatapathError> {
        for dir in [DIR_INGRESS, DIR_EGRESS] {
            match self.policy.remove(&PolicyKey { task_id, dir }) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(err(berth_maps::POLICY_MAP)(e)),
            }
            absent_ok(self.policy6.remove(&PolicyKey { task_id, dir }))
                .map_err(err(berth_maps::POLICY6_MAP))?;
        }
        Ok(())
    }

    pub(super) fn set_group_members(
        &mut self,
        sg_id: u32,
        members: &[Ipv4Addr],
    ) -> Result<(), DatapathError> {
        let want: HashSet<u32> = members.iter().map(|a| addr_be(*a)).collect();
        let have: Vec<SgMember> = self
            .members
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.sg_id == sg_id)
            .collect();
        for k in &have {
            if !want.contains(&k.addr_be) {
                let _ = self.members.remove(k);
            }
        }
        let have: HashSet<u32> = have.iter().map(|k| k.addr_be).collect();
        for a in want.difference(&have) {
            self.members
                .insert(SgMember { sg_id, addr_be: *a }, 1, 0)
                .map_err(err(berth_maps::SG_MEMBERS_MAP))?;
        }
        Ok(())
    }

    pub(super) fn set_endpoint6(
        &mut self,
        ip: Ipv6Addr,
        task_id: u32,
        policy: bool,
    ) -> Result<(), DatapathError> {
        let ep = endpoint(task_id, policy);
        self.endpoints6
            .insert(ip.octets(), ep, 0)
            .map_err(err(berth_maps::ENDPOINTS6_MAP))
    }

    pub(super) fn remove_endpoint6(&mut self, ip: Ipv6Addr) -> Result<(), DatapathError> {
        absent_ok(self.endpoints6.remove(&ip.octets())).map_err(err(berth_maps::ENDPOINTS6_MAP))
    }

    /// As [`PolicyMaps::set_group_members`]: only the difference is
    /// written, so a member that stays is never missing for a moment.
    pub(super) fn set_group_members6(
        &mut self,
        sg_id: u32,
        members: &[Ipv6Addr],
    ) -> Result<(), DatapathError> {
        let want: HashSet<[u8; 16]> = members.iter().map(Ipv6Addr::octets).collect();
        let have: Vec<berth_maps::SgMember6> = self
            .members6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.sg_id == sg_id)
            .collect();
        for k in &have {
            if !want.contains(&k.addr) {
                absent_ok(self.members6.remove(k)).map_err(err(berth_maps::SG_MEMBERS6_MAP))?;
            }
        }
        let have: HashSet<[u8; 16]> = have.iter().map(|k| k.addr).collect();
        for addr in want.difference(&have) {
            self.members6
                .insert(berth_maps::SgMember6 { sg_id, addr: *addr }, 1, 0)
                .map_err(err(berth_maps::SG_MEMBERS6_MAP))?;
        }
        Ok(())
    }

    /// [`PolicyMaps::retain`] for the IPv6 endpoints and memberships;
    /// returns how many entries went and the endpoints that went.
    pub(super) fn retain6(
        &mut self,
        endpoints: &[Ipv6Addr],
        groups: &[u32],
    ) -> (usize, Vec<Ipv6Addr>) {
        let endpoints: HashSet<[u8; 16]> = endpoints.iter().map(Ipv6Addr::octets).collect();
        let groups: HashSet<u32> = groups.iter().copied().collect();
        let stale: Vec<[u8; 16]> = self
            .endpoints6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !endpoints.contains(k))
            .collect();
        let mut n = 0;
        let mut gone = Vec::new();
        for k in stale {
            if self.endpoints6.remove(&k).is_ok() {
                n += 1;
                gone.push(Ipv6Addr::from(k));
            }
        }
        let stale: Vec<berth_maps::SgMember6> = self
            .members6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !groups.contains(&k.sg_id))
            .collect();
        for k in stale {
            n += usize::from(self.members6.remove(&k).is_ok());
        }
        (n, gone)
    }

    /// Drops what is not in the lists; returns how many entries went and
    /// the addresses of the endpoints that went (their tasks are gone).
    pub(super) fn retain(
        &mut self,
        endpoints: &[Ipv4Addr],
        policies: &[u32],
        groups: &[u32],
    ) -> (usize, Vec<Ipv4Addr>) {
        let endpoints: HashSet<u32> = endpoints.iter().map(|a| addr_be(*a)).collect();
        let policies: HashSet<u32> = policies.iter().copied().collect();
        let groups: HashSet<u32> = groups.iter().copied().collect();
        let mut n = 0;
        let stale: Vec<u32> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !endpoints.contains(k))
            .collect();
        let mut gone = Vec::new();
        for k in stale {
            if self.endpoints.remove(&k).is_ok() {
                n += 1;
                gone.push(Ipv4Addr::from(k.to_ne_bytes()));
            }
        }
        let stale: Vec<PolicyKey> = self
            .policy
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !policies.contains(&k.task_id))
            .collect();
        for k in stale {
            n += usize::from(self.policy.remove(&k).is_ok());
        }
        let stale: Vec<PolicyKey> = self
            .policy6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !policies.contains(&k.task_id))
            .collect();
        for k in stale {
            n += usize::from(self.policy6.remove(&k).is_ok());
        }
        let stale: Vec<SgMember> = self
            .members
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !groups.contains(&k.sg_id))
            .collect();
        for k in stale {
            n += usize::from(self.members.remove(&k).is_ok());
        }
        (n, gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_rules_store_network_and_mask_in_network_order() {
        let r = encode_rule(&PolicyRule {
            proto: Some(RuleProto::Tcp),
            ports: (5432, 5432),
            icmp_type: None,
            icmp_code: None,
            peer: RulePeer::Cidr(Ipv4Addr::new(10, 1, 0, 0), 16),
        });
        assert_eq!(r.proto, 6);
        assert_eq!(r.kind, RULE_PEER_CIDR);
        assert_eq!(r.addr_be.to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(r.mask_be.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!((r.port_lo, r.port_hi), (5432, 5432));
        assert_eq!((r.icmp_type, r.icmp_code), (RULE_ICMP_ANY, RULE_ICMP_ANY));
        let any = encode_rule(&PolicyRule {
            proto: None,
            ports: (0, 65535),
            icmp_type: None,
            icmp_code: None,
            peer: RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0),
        });
        assert_eq!(
            (any.proto, any.addr_be, any.mask_be),
            (RULE_PROTO_ALL, 0, 0)
        );
    }

    #[test]
    fn group_rules_carry_the_group_id() {
        let r = encode_rule(&PolicyRule {
            proto: Some(RuleProto::Icmp),
            ports: (0, 0),
            icmp_type: Some(8),
            icmp_code: None,
            peer: RulePeer::Group(42),
        });
        assert_eq!(
            (r.proto, r.kind, r.addr_be, r.icmp_type, r.icmp_code),
            (1, RULE_PEER_SG, 42, 8, 0xff)
        );
    }

    #[test]
    fn ipv6_rules_never_reach_the_ipv4_policy() {
        let rule = |proto, peer| PolicyRule {
            proto,
            ports: (0, 65535),
            icmp_type: None,
            icmp_code: None,
            peer,
        };
        let v6_any = rule(None, RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0));
        let icmp6_group = rule(Some(RuleProto::Icmp6), RulePeer::Group(7));
        let tcp_net = rule(
            Some(RuleProto::Tcp),
            RulePeer::Cidr(Ipv4Addr::new(10, 0, 0, 0), 8),
        );
        let all_group = rule(None, RulePeer::Group(7));
        let p = encode_policy(&[v6_any, icmp6_group, tcp_net, all_group]).unwrap();
        assert_eq!(p.len, 2);
        assert_eq!(p.rules[0], encode_rule(&tcp_net));
        assert_eq!(p.rules[1], encode_rule(&all_group));
        // Even encoded alone, `::/0` is no IPv4 `0.0.0.0/0`: it matches
        // no IPv4 peer (the kernel's test is `peer & mask == addr`).
        for r in [encode_rule(&v6_any), encode_rule(&icmp6_group)] {
            assert_eq!((r.kind, r.mask_be), (RULE_PEER_CIDR, 0));
            assert_ne!(r.addr_be, 0, "every peer & 0 is 0, never the network");
            assert!(r.port_lo > r.port_hi, "no port either");
        }
        // As many IPv6 rules as the datapath holds leave room for IPv4's.
        let mut many = vec![v6_any; MAX_RULES];
        many.push(tcp_net);
        assert_eq!(encode_policy(&many).unwrap().len, 1);
    }

    #[test]
    fn too_many_rules_are_refused() {
        let r = PolicyRule {
            proto: None,
            ports: (0, 65535),
            icmp_type: None,
            icmp_code: None,
            peer: RulePeer::Group(1),
        };
        encode_policy(&vec![r; MAX_RULES]).unwrap();
        encode_policy(&vec![r; MAX_RULES + 1]).unwrap_err();
    }
}
