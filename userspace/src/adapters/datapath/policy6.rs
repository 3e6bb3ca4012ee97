//! IPv6 security-group rules for the datapath (`BERTH_POLICY6`): the part
//! of a task's compiled rules that applies to IPv6 (an IPv6 CIDR, `ICMPv6`,
//! or a group peer with any other protocol), encoded as `berth_maps::Rule6`
//! under the same (task, direction) key as IPv4's.
use berth_maps::{
    Policy6, Rule6, MAX_RULES, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, RULE_ICMP_ANY, RULE_PEER_CIDR,
    RULE_PEER_SG, RULE_PROTO_ALL,
};

use super::{DatapathError, PolicyRule, RulePeer, RuleProto};

/// An IPv6 rule no packet matches: what an IPv4 rule is to IPv6 (kept out
/// by [`encode_policy6`]; this keeps one that got here from widening
/// IPv6's).
const MATCHES_NOTHING6: Rule6 = Rule6 {
    proto: PROTO_TCP,
    kind: RULE_PEER_CIDR,
    icmp_type: RULE_ICMP_ANY,
    icmp_code: RULE_ICMP_ANY,
    port_lo: 1,
    port_hi: 0,
    sg_id: 0,
    addr: [0xff; 16],
    mask: [0; 16],
};

/// A rule as the IPv6 datapath stores it.
pub fn encode_rule6(r: &PolicyRule) -> Rule6 {
    if !r.applies_v6() {
        return MATCHES_NOTHING6;
    }
    let proto = match r.proto {
        None => RULE_PROTO_ALL,
        Some(RuleProto::Tcp) => PROTO_TCP,
        Some(RuleProto::Udp) => PROTO_UDP,
        Some(RuleProto::Icmp6) => PROTO_ICMPV6,
        Some(RuleProto::Icmp) => return MATCHES_NOTHING6,
        Some(RuleProto::Number(n)) => n,
    };
    let (kind, sg_id, addr, mask) = match r.peer {
        RulePeer::Cidr6(net, len) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            (
                RULE_PEER_CIDR,
                0,
                (u128::from(net) & mask).to_be_bytes(),
                mask.to_be_bytes(),
            )
        }
        RulePeer::Group(id) => (RULE_PEER_SG, id, [0; 16], [0; 16]),
        RulePeer::Cidr(..) => return MATCHES_NOTHING6,
    };
    Rule6 {
        proto,
        kind,
        icmp_type: r.icmp_type.unwrap_or(RULE_ICMP_ANY),
        icmp_code: r.icmp_code.unwrap_or(RULE_ICMP_ANY),
        port_lo: r.ports.0,
        port_hi: r.ports.1,
        sg_id,
        addr,
        mask,
    }
}

/// A direction's IPv6 rules.
pub(super) fn encode_policy6(rules: &[PolicyRule]) -> Result<Box<Policy6>, DatapathError> {
    let rules: Vec<&PolicyRule> = rules.iter().filter(|r| r.applies_v6()).collect();
    if rules.len() > MAX_RULES {
        return Err(DatapathError::Other(format!(
            "{} IPv6 rules in one direction; the datapath holds at most {MAX_RULES}",
            rules.len()
        )));
    }
    let mut p = Box::new(Policy6 {
        len: rules.len() as u32,
        _pad: 0,
        rules: [Rule6::default(); MAX_RULES],
    });
    for (slot, r) in p.rules.iter_mut().zip(rules) {
        *slot = encode_rule6(r);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn rule(proto: Option<RuleProto>, peer: RulePeer) -> PolicyRule {
        PolicyRule {
            proto,
            ports: (443, 443),
            icmp_type: None,
            icmp_code: None,
            peer,
        }
    }

    #[test]
    fn ipv6_cidrs_store_network_and_mask_in_network_order() {
        let net = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);
        let r = encode_rule6(&rule(Some(RuleProto::Tcp), RulePeer::Cidr6(net, 32)));
        assert_eq!(
            (r.proto, r.kind, r.port_lo, r.port_hi),
            (6, RULE_PEER_CIDR, 443, 443)
        );
        assert_eq!(r.addr, net.octets());
        assert_eq!(r.mask[..4], [0xff; 4]);
        assert_eq!(r.mask[4..], [0; 12]);
        let any = encode_rule6(&rule(None, RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0)));
        assert_eq!(
            (any.proto, any.addr, any.mask),
            (RULE_PROTO_ALL, [0; 16], [0; 16])
        );
        let ping = encode_rule6(&PolicyRule {
            icmp_type: Some(128),
            ..rule(Some(RuleProto::Icmp6), RulePeer::Group(9))
        });
        assert_eq!(
            (
                ping.proto,
                ping.kind,
                ping.sg_id,
                ping.icmp_type,
                ping.icmp_code
            ),
            (58, RULE_PEER_SG, 9, 128, RULE_ICMP_ANY)
        );
    }

    #[test]
    fn ipv4_rules_never_reach_the_ipv6_policy() {
        let v4_any = rule(None, RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0));
        let icmp_group = rule(Some(RuleProto::Icmp), RulePeer::Group(3));
        let tcp_group = rule(Some(RuleProto::Tcp), RulePeer::Group(3));
        let p = encode_policy6(&[v4_any, icmp_group, tcp_group]).unwrap();
        assert_eq!(p.len, 1);
        assert_eq!(p.rules[0], encode_rule6(&tcp_group));
        for r in [encode_rule6(&v4_any), encode_rule6(&icmp_group)] {
            assert_eq!(r, MATCHES_NOTHING6);
            // The kernel's test is `peer & mask == addr` per byte.
            assert_eq!(r.mask, [0; 16]);
            assert_ne!(r.addr, [0; 16], "every peer & 0 is 0, never the network");
        }
        let mut many = vec![rule(None, RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0)); MAX_RULES];
        encode_policy6(&many).unwrap();
        many.push(many[0]);
        encode_policy6(&many).unwrap_err();
    }
}
