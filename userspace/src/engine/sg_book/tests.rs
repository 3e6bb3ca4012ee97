//! The model, validation and compilation of security groups.
use super::*;
use crate::{
    domain::cidr::Ipv4Cidr, domain::rules::*, engine::datapath::RuleFamily,
    engine::fake::FakeDatapath,
};

fn spec(direction: Direction, protocol: &str) -> RuleSpec {
    RuleSpec {
        direction,
        protocol: protocol.into(),
        port: None,
        icmp_type: None,
        icmp_code: None,
        cidr: Some("0.0.0.0/0".into()),
        sg: None,
        description: String::new(),
    }
}

fn tcp(port: &str, cidr: &str) -> RuleSpec {
    RuleSpec {
        port: Some(port.into()),
        cidr: Some(cidr.into()),
        ..spec(Direction::Ingress, "tcp")
    }
}

fn err(s: &RuleSpec) -> String {
    s.parse().unwrap_err().to_string()
}

#[test]
fn canonical_cidrs_only_with_a_hint() {
    assert_eq!(
        parse_cidr("10.0.0.0/8").unwrap(),
        Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 8)
    );
    assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix_len, 0);
    assert_eq!(parse_cidr("192.0.2.2/32").unwrap().prefix_len, 32);
    assert_eq!(
        parse_cidr("10.0.0.1/8").unwrap_err().to_string(),
        "10.0.0.1/8 is not a canonical CIDR (host bits are set); did you mean 10.0.0.0/8?"
    );
    assert_eq!(
        parse_cidr("10.0.0.1").unwrap_err().to_string(),
        "invalid CIDR \"10.0.0.1\": no prefix length; did you mean 10.0.0.1/32?"
    );
    for bad in [
        "10.0.0.0/33",
        "10.0.0/8",
        "x/8",
        "10.0.0.0/",
        "10.0.0.0/08",
        "/8",
        "",
    ] {
        assert!(
            matches!(parse_cidr(bad), Err(SgError::CidrFormat(_))),
            "{bad}"
        );
    }
}

#[test]
fn ports_are_checked_like_port_specs() {
    assert_eq!(parse_ports("80").unwrap(), (80, 80));
    assert_eq!(parse_ports("0-65535").unwrap(), (0, 65535));
    assert_eq!(
        parse_ports("9000-8000").unwrap_err().to_string(),
        "port range 9000-8000 is reversed"
    );
    assert_eq!(
        parse_ports("70000").unwrap_err().to_string(),
        "port 70000 is out of range 0-65535"
    );
    assert_eq!(
        parse_ports("http").unwrap_err().to_string(),
        "invalid port \"http\": not a number"
    );
    parse_ports("1-2-3").unwrap_err();
    parse_ports("").unwrap_err();
}

#[test]
fn every_bad_rule_field_is_one_clear_line() {
    let no_port = spec(Direction::Ingress, "tcp");
    assert_eq!(
        err(&no_port),
        "protocol tcp needs a port or port range (--port P or P-Q)"
    );
    let icmp_port = RuleSpec {
        port: Some("8".into()),
        ..spec(Direction::Ingress, "icmp")
    };
    assert_eq!(
        err(&icmp_port),
        "protocol icmp has no ports; --port applies to tcp and udp"
    );
    let all_port = RuleSpec {
        port: Some("80".into()),
        ..spec(Direction::Ingress, "all")
    };
    assert_eq!(
        err(&all_port),
        "protocol all has no ports; --port applies to tcp and udp"
    );
    let tcp_icmp = RuleSpec {
        icmp_type: Some(8),
        ..tcp("80", "0.0.0.0/0")
    };
    assert!(err(&tcp_icmp).starts_with("protocol tcp has no ICMP type"));
    let bad_type = RuleSpec {
        icmp_type: Some(300),
        ..spec(Direction::Ingress, "icmp")
    };
    assert_eq!(
        err(&bad_type),
        "ICMP type 300 is out of range; use -1 (any) or 0-254"
    );
    let code_only = RuleSpec {
        icmp_code: Some(0),
        ..spec(Direction::Ingress, "icmp")
    };
    assert_eq!(
        err(&code_only),
        "an ICMP code needs an ICMP type: give --icmp-type too"
    );
    assert_eq!(
        err(&spec(Direction::Ingress, "sctp")),
        "unknown protocol \"sctp\"; use tcp, udp, icmp, icmpv6, all or a number 1-254"
    );
    let two_peers = RuleSpec {
        sg: Some("x".into()),
        ..spec(Direction::Ingress, "all")
    };
    assert_eq!(
        err(&two_peers),
        "a rule needs exactly one peer: --cidr CIDR or --sg GROUP"
    );
    let no_peer = RuleSpec {
        cidr: None,
        ..spec(Direction::Ingress, "all")
    };
    assert_eq!(err(&no_peer), err(&two_peers));
    let long = RuleSpec {
        description: "x".repeat(256),
        ..spec(Direction::Ingress, "all")
    };
    assert_eq!(
        err(&long),
        "description is 256 characters long; at most 255 are allowed"
    );
    let ok = RuleSpec {
        description: "é".repeat(255),
        ..spec(Direction::Ingress, "all")
    };
    ok.parse().unwrap();
    let newline = RuleSpec {
        description: "a\nb".into(),
        ..spec(Direction::Ingress, "all")
    };
    assert!(matches!(newline.parse(), Err(SgError::DescriptionControl)));
    let bad_sg = RuleSpec {
        cidr: None,
        sg: Some("a b".into()),
        ..spec(Direction::Ingress, "all")
    };
    assert!(matches!(bad_sg.parse(), Err(SgError::Name { .. })));
    assert!(err(&tcp("80", "10.0.0.1/8")).contains("did you mean 10.0.0.0/8?"));
}

#[test]
fn rules_round_trip_through_their_canonical_spec() {
    let icmp = RuleSpec {
        icmp_type: Some(8),
        ..spec(Direction::Egress, "icmp")
    };
    for s in [
        tcp("5432", "10.0.0.0/8"),
        tcp("8000-8010", "192.0.2.2/32"),
        icmp,
        spec(Direction::Egress, "all"),
    ] {
        let rule = s.parse().unwrap();
        let canonical = rule.spec(s.direction);
        assert_eq!(canonical.parse().unwrap(), rule);
    }
    let any = spec(Direction::Ingress, "icmp").parse().unwrap();
    let s = any.spec(Direction::Ingress);
    assert_eq!((s.icmp_type, s.icmp_code), (Some(-1), Some(-1)));
    // -1 and absent are the same rule.
    assert!(s.parse().unwrap().same_as(&any));
}

fn book() -> SgBook {
    let mut b = SgBook::default();
    b.create("api", "").unwrap();
    b.create("db", "database").unwrap();
    b
}

#[test]
fn new_groups_allow_all_out_and_nothing_in() {
    let b = book();
    let db = b.group("db").unwrap();
    assert_eq!((db.id, db.description.as_str()), (2, "database"));
    assert!(db.ingress.is_empty());
    assert_eq!(db.egress, [Rule::allow_all_out(), Rule::allow_all_out6()]);
    assert_eq!(
        db.egress
            .iter()
            .map(|r| r.summary(Direction::Egress))
            .collect::<Vec<_>>(),
        ["egress all to 0.0.0.0/0", "egress all to ::/0"]
    );
    let mut b = b;
    assert_eq!(
        b.create("db", "").unwrap_err().to_string(),
        "security group db already exists"
    );
    assert!(matches!(b.create("a/b", ""), Err(SgError::Name { .. })));
    assert!(matches!(
        b.create("x", &"d".repeat(256)),
        Err(SgError::DescriptionTooLong(256))
    ));
}

#[test]
fn ids_are_never_reused() {
    let mut b = book();
    b.remove("db").unwrap();
    b.create("db", "").unwrap();
    assert_eq!(b.group("db").unwrap().id, 3);
}

#[test]
fn duplicate_rules_are_refused_whatever_their_description() {
    let mut b = book();
    let r = tcp("5432", "10.0.0.0/8").parse().unwrap();
    b.add_rule("db", Direction::Ingress, r.clone()).unwrap();
    let again = Rule {
        description: "other words".into(),
        ..r.clone()
    };
    assert_eq!(
        b.add_rule("db", Direction::Ingress, again)
            .unwrap_err()
            .to_string(),
        "security group db already has the rule ingress tcp 5432 from 10.0.0.0/8 \
         (InvalidPermission.Duplicate)"
    );
    // The same rule in the other direction is another rule.
    b.add_rule("db", Direction::Egress, r).unwrap();
}

#[test]
fn group_peers_must_exist_except_the_group_itself() {
    let mut b = book();
    let peer = |g: &str| Rule {
        traffic: Traffic::Tcp(5432, 5432),
        peer: Peer::Group(g.into()),
        description: String::new(),
    };
    assert_eq!(
        b.add_rule("db", Direction::Ingress, peer("nope"))
            .unwrap_err()
            .to_string(),
        "no such security group: nope"
    );
    b.add_rule("db", Direction::Ingress, peer("db")).unwrap();
    b.add_rule("db", Direction::Ingress, peer("api")).unwrap();
}

#[test]
fn sixty_rules_per_direction() {
    let mut b = book();
    for p in 0..60u16 {
        let r = tcp(&p.to_string(), "0.0.0.0/0").parse().unwrap();
        b.add_rule("db", Direction::Ingress, r).unwrap();
    }
    let r = tcp("61", "0.0.0.0/0").parse().unwrap();
    let before = b.clone();
    assert_eq!(
        b.add_rule("db", Direction::Ingress, r.clone())
            .unwrap_err()
            .to_string(),
        "security group db already has 60 ingress rules, the most a group may have"
    );
    assert_eq!(b, before);
    // Egress has its own 60 (one is taken by the default rule).
    b.add_rule("db", Direction::Egress, r).unwrap();
}

#[test]
fn remove_rule_matches_every_field_but_the_description() {
    let mut b = book();
    let r = tcp("5432", "10.0.0.0/8").parse().unwrap();
    b.add_rule(
        "db",
        Direction::Ingress,
        Rule {
            description: "x".into(),
            ..r.clone()
        },
    )
    .unwrap();
    let other = tcp("5433", "10.0.0.0/8").parse().unwrap();
    assert_eq!(
        b.remove_rule("db", Direction::Ingress, &other)
            .unwrap_err()
            .to_string(),
        "security group db has no rule ingress tcp 5433 from 10.0.0.0/8"
    );
    b.remove_rule("db", Direction::Egress, &r).unwrap_err();
    b.remove_rule("db", Direction::Ingress, &r).unwrap();
    assert!(b.group("db").unwrap().ingress.is_empty());
}

#[test]
fn attach_limits_and_errors() {
    let mut b = SgBook::default();
    for i in 0..6 {
        b.create(&format!("g{i}"), "").unwrap();
    }
    for i in 0..5 {
        b.attach(&format!("g{i}"), "web", 5).unwrap();
    }
    let before = b.clone();
    assert_eq!(
        b.attach("g5", "web", 5).unwrap_err().to_string(),
        "task web already has 5 security groups, the most a task may have \
         (berth daemon --max-sgs-per-task)"
    );
    assert_eq!(
        b.attach("g0", "web", 5).unwrap_err().to_string(),
        "security group g0 is already attached to task web"
    );
    assert_eq!(b, before);
    assert_eq!(
        b.detach("g5", "web").unwrap_err().to_string(),
        "security group g5 is not attached to task web"
    );
    assert!(matches!(
        b.attach("nope", "web", 5),
        Err(SgError::NoSuchGroup(_))
    ));
    assert_eq!(b.attachments["web"].policy_id, 1);
    b.attach("g0", "api", 5).unwrap();
    assert_eq!(b.attachments["api"].policy_id, 2);
    for i in 0..5 {
        b.detach(&format!("g{i}"), "web").unwrap();
    }
    assert!(!b.attachments.contains_key("web"));
}

#[test]
fn remove_is_refused_while_attached_or_referenced() {
    let mut b = book();
    b.attach("api", "web", 5).unwrap();
    b.attach("api", "web2", 5).unwrap();
    assert_eq!(
        b.remove("api").unwrap_err().to_string(),
        "security group api is attached to tasks web, web2; detach it first \
         (DependencyViolation)"
    );
    b.detach("api", "web").unwrap();
    b.detach("api", "web2").unwrap();
    b.add_rule(
        "db",
        Direction::Ingress,
        Rule {
            traffic: Traffic::All,
            peer: Peer::Group("api".into()),
            description: String::new(),
        },
    )
    .unwrap();
    assert_eq!(
        b.remove("api").unwrap_err().to_string(),
        "security group api is referenced by rules of security group db; remove those \
         rules first (DependencyViolation)"
    );
    assert_eq!(b.remove("api").unwrap_err().http_status(), 409);
    // A group that names only itself can go.
    b.add_rule(
        "api",
        Direction::Ingress,
        Rule {
            traffic: Traffic::All,
            peer: Peer::Group("api".into()),
            description: String::new(),
        },
    )
    .unwrap();
    b.remove("db").unwrap();
    b.remove("api").unwrap();
    assert!(b.groups.is_empty());
}

fn tasks(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<IpAddr>> {
    list.iter()
        .map(|(t, ips)| {
            (
                t.to_string(),
                ips.iter().map(|i| i.parse().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn a_task_gets_the_union_of_its_groups_with_group_peers_by_id() {
    let mut b = book();
    b.add_rule(
        "db",
        Direction::Ingress,
        Rule {
            traffic: Traffic::Tcp(5432, 5432),
            peer: Peer::Group("api".into()),
            description: String::new(),
        },
    )
    .unwrap();
    b.create("ops", "").unwrap();
    b.add_rule(
        "ops",
        Direction::Ingress,
        tcp("22", "10.0.0.0/8").parse().unwrap(),
    )
    .unwrap();
    b.attach("db", "pg", 5).unwrap();
    b.attach("ops", "pg", 5).unwrap();
    b.attach("api", "web", 5).unwrap();
    let want = b.desired(
        None,
        &tasks(&[
            ("pg", &["172.17.0.3"]),
            ("web", &["172.17.0.2", "172.17.0.4"]),
            ("open", &["172.17.0.9"]),
        ]),
    );
    let pg = b.attachments["pg"].policy_id;
    let (ingress, egress) = &want.policies[&pg];
    assert_eq!(
        ingress,
        &[
            PolicyRule {
                proto: Some(RuleProto::Tcp),
                ports: (5432, 5432),
                icmp_type: None,
                icmp_code: None,
                peer: RulePeer::Group(1),
            },
            PolicyRule {
                proto: Some(RuleProto::Tcp),
                ports: (22, 22),
                icmp_type: None,
                icmp_code: None,
                peer: RulePeer::Cidr(Ipv4Addr::new(10, 0, 0, 0), 8),
            },
        ]
    );
    // Both groups allow all out, both families: once each in the union.
    let all_to = |peer| PolicyRule {
        proto: None,
        ports: (0, 65535),
        icmp_type: None,
        icmp_code: None,
        peer,
    };
    assert_eq!(
        egress,
        &[
            all_to(RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0)),
            all_to(RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0)),
        ]
    );
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(want.endpoints[&ip("172.17.0.3")], (pg, true));
    assert_eq!(
        want.endpoints[&ip("172.17.0.9")],
        (DEFAULT_POLICY_ID, false)
    );
    assert_eq!(want.members[&1], [ip("172.17.0.2"), ip("172.17.0.4")]);
    assert_eq!(want.members[&2], [ip("172.17.0.3")]);
    assert_eq!(want.members[&3], [ip("172.17.0.3")]);
    assert_eq!(want.policies.len(), 2, "the open task has no policy");
}

#[test]
fn the_default_group_covers_tasks_without_groups_only() {
    let mut b = book();
    b.attach("api", "web", 5).unwrap();
    let t = tasks(&[("web", &["172.17.0.2"]), ("other", &["172.17.0.5"])]);
    let want = b.desired(Some("db"), &t);
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(want.endpoints[&ip("172.17.0.5")], (DEFAULT_POLICY_ID, true));
    assert_eq!(want.members[&2], [ip("172.17.0.5")]);
    assert_eq!(want.members[&1], [ip("172.17.0.2")]);
    assert!(want.policies[&DEFAULT_POLICY_ID].0.is_empty());
    // A default that does not exist (yet) leaves tasks open.
    let want = b.desired(Some("nope"), &t);
    assert!(!want.endpoints[&ip("172.17.0.5")].1);
}

#[test]
fn an_ip_claimed_by_two_tasks_keeps_the_policy() {
    let mut b = book();
    b.attach("db", "b", 5).unwrap();
    let want = b.desired(
        None,
        &tasks(&[("a", &["172.17.0.2"]), ("b", &["172.17.0.2"])]),
    );
    assert_eq!(
        want.endpoints[&"172.17.0.2".parse().unwrap()],
        (b.attachments["b"].policy_id, true)
    );
}

#[test]
fn push_writes_only_differences_and_cleans_up() {
    let dp = FakeDatapath::default();
    let mut b = book();
    b.attach("api", "web", 5).unwrap();
    let mut applied = DpState::default();
    let t = tasks(&[("web", &["172.17.0.2"])]);
    let want = b.desired(None, &t);
    applied.push(&want, &dp).unwrap();
    assert_eq!(applied, want);
    assert_eq!(dp.endpoints.lock().unwrap().len(), 1);
    assert_eq!(dp.policies.lock().unwrap().len(), 1);
    // Removing the group's last task and the group itself clears it all.
    b.detach("api", "web").unwrap();
    b.remove("api").unwrap();
    let want = b.desired(None, &BTreeMap::new());
    applied.push(&want, &dp).unwrap();
    assert!(dp.endpoints.lock().unwrap().is_empty());
    assert!(dp.policies.lock().unwrap().is_empty());
    assert_eq!(dp.members.lock().unwrap()[&1], Vec::<Ipv4Addr>::new());
}

#[test]
fn no_policy_flag_is_cleared_before_policy_and_set_after_the_last_is_gone() {
    use std::sync::atomic::Ordering;
    let dp = FakeDatapath::default();
    let mut applied = DpState::default();
    // Nothing has policy: the veth hooks may skip their checks.
    applied.push(&DpState::default(), &dp).unwrap();
    assert!(dp.no_policy.load(Ordering::SeqCst));
    let mut b = book();
    b.attach("api", "web", 5).unwrap();
    let want = b.desired(None, &tasks(&[("web", &["172.17.0.2"])]));
    applied.push(&want, &dp).unwrap();
    assert!(
        !dp.no_policy.load(Ordering::SeqCst),
        "an endpoint has policy"
    );
    assert!(
        !dp.policy_while_flagged.load(Ordering::SeqCst),
        "the flag went off before the endpoint got policy"
    );
    b.detach("api", "web").unwrap();
    applied
        .push(&b.desired(None, &BTreeMap::new()), &dp)
        .unwrap();
    assert!(dp.no_policy.load(Ordering::SeqCst), "the last one is gone");
    assert!(!dp.policy_while_flagged.load(Ordering::SeqCst));
}

#[test]
fn store_changes_name_only_what_changed() {
    let old = book();
    let mut new = old.clone();
    new.attach("api", "web", 5).unwrap();
    new.remove("db").unwrap();
    let c = new.changes_since(&old);
    assert_eq!(c.groups, [("db".to_owned(), None)]);
    assert_eq!(c.attachments.len(), 1);
    assert_eq!(c.next_policy_id, Some(2));
    assert_eq!(c.next_group_id, None);
    assert!(new.changes_since(&new).is_empty());
}

#[test]
fn expiry_runs_at_half_the_shortest_timeout_between_1_and_5_s() {
    let mut t = FlowTimeouts::default();
    assert_eq!(expiry_period(&t), Duration::from_secs(5));
    t.udp_single = 2;
    assert_eq!(expiry_period(&t), Duration::from_secs(1));
    t.udp_single = 7;
    assert_eq!(expiry_period(&t), Duration::from_millis(3500));
    t.udp_single = 1;
    assert_eq!(expiry_period(&t), Duration::from_secs(1));
}

#[test]
fn ipv6_cidrs_are_canonical_prefixes_with_a_hint() {
    use crate::domain::cidr::Ipv6Cidr;
    use std::net::Ipv6Addr;
    assert_eq!(
        parse_cidr6("2001:db8::/32").unwrap(),
        Ipv6Cidr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32)
    );
    assert_eq!(parse_cidr6("::/0").unwrap().prefix_len, 0);
    assert_eq!(parse_cidr6("2001:db8::1/128").unwrap().prefix_len, 128);
    assert_eq!(
        parse_cidr6("2001:db8::1/32").unwrap_err().to_string(),
        "2001:db8::1/32 is not a canonical CIDR (host bits are set); did you mean 2001:db8::/32?"
    );
    assert_eq!(
        parse_cidr6("2001:db8::1").unwrap_err().to_string(),
        "invalid IPv6 CIDR \"2001:db8::1\": no prefix length; did you mean 2001:db8::1/128?"
    );
    for bad in [
        "::/129",
        "2001:db8::/",
        "2001:db8::/032",
        "2001:zz8::/32",
        ":/0",
        "::ffff:1.2.3.4.5/96",
    ] {
        assert!(
            matches!(parse_cidr6(bad), Err(SgError::Cidr6Format(_))),
            "{bad}"
        );
    }
    // A spec's --cidr picks the family by its spelling.
    let r = tcp("443", "::/0").parse().unwrap();
    assert_eq!(r.peer, Peer::Cidr6(Ipv6Cidr::new(Ipv6Addr::UNSPECIFIED, 0)));
    assert_eq!(r.summary(Direction::Ingress), "ingress tcp 443 from ::/0");
    assert_eq!(
        err(&tcp("443", "2001:db8::1/64")),
        "2001:db8::1/64 is not a canonical CIDR (host bits are set); did you mean 2001:db8::/64?"
    );
}

#[test]
fn icmpv6_is_a_protocol_of_its_own_and_each_icmp_keeps_to_its_family() {
    let icmp6 = |cidr: &str| RuleSpec {
        icmp_type: Some(128),
        cidr: Some(cidr.into()),
        ..spec(Direction::Ingress, "icmpv6")
    };
    let r = icmp6("::/0").parse().unwrap();
    assert_eq!(
        r.traffic,
        Traffic::Icmpv6 {
            icmp_type: Some(128),
            icmp_code: None
        }
    );
    assert_eq!(
        r.summary(Direction::Ingress),
        "ingress icmpv6 type 128 from ::/0"
    );
    // Its wire form reads back as the same rule (the store keeps this).
    let back = r.spec(Direction::Ingress);
    assert_eq!(
        (back.protocol.as_str(), back.icmp_type, back.icmp_code),
        ("icmpv6", Some(128), Some(-1))
    );
    assert!(back.parse().unwrap().same_as(&r));
    // AWS's number for it, any case.
    for name in ["58", "ICMPv6"] {
        let s = RuleSpec {
            protocol: name.into(),
            ..icmp6("::/0")
        };
        assert!(s.parse().unwrap().same_as(&r), "{name}");
    }
    assert_eq!(
        err(&icmp6("0.0.0.0/0")),
        "protocol icmpv6 is IPv6's and 0.0.0.0/0 is an IPv4 CIDR; use --proto icmp"
    );
    let icmp4_v6 = RuleSpec {
        cidr: Some("2001:db8::/32".into()),
        ..spec(Direction::Ingress, "icmp")
    };
    assert_eq!(
        err(&icmp4_v6),
        "protocol icmp is IPv4's and 2001:db8::/32 is an IPv6 CIDR; use --proto icmpv6"
    );
    let port = RuleSpec {
        port: Some("1".into()),
        ..icmp6("::/0")
    };
    assert_eq!(
        err(&port),
        "protocol icmpv6 has no ports; --port applies to tcp and udp"
    );
    // A group peer takes either ICMP.
    let group = RuleSpec {
        cidr: None,
        sg: Some("api".into()),
        ..icmp6("::/0")
    };
    group.parse().unwrap();
}

#[test]
fn ipv6_rules_compile_beside_ipv4_ones_each_for_its_family() {
    let mut b = book();
    for spec in [
        tcp("443", "2001:db8::/32"),
        RuleSpec {
            icmp_type: Some(128),
            cidr: Some("::/0".into()),
            ..spec(Direction::Ingress, "icmpv6")
        },
        RuleSpec {
            cidr: None,
            sg: Some("api".into()),
            ..spec(Direction::Ingress, "all")
        },
        tcp("443", "192.0.2.0/24"),
    ] {
        b.add_rule("db", Direction::Ingress, spec.parse().unwrap())
            .unwrap();
    }
    // The same ports from the other family's "everything" is another rule.
    b.add_rule(
        "db",
        Direction::Ingress,
        tcp("443", "::/0").parse().unwrap(),
    )
    .unwrap();
    b.add_rule(
        "db",
        Direction::Ingress,
        tcp("443", "0.0.0.0/0").parse().unwrap(),
    )
    .unwrap();
    let (ingress, _) = b.compile(&["db"]);
    let families: Vec<RuleFamily> = ingress.iter().map(PolicyRule::family).collect();
    assert_eq!(
        families,
        [
            RuleFamily::V6,
            RuleFamily::V6,
            RuleFamily::Both,
            RuleFamily::V4,
            RuleFamily::V6,
            RuleFamily::V4
        ]
    );
    assert_eq!(
        ingress[1],
        PolicyRule {
            proto: Some(RuleProto::Icmp6),
            ports: (0, 0),
            icmp_type: Some(128),
            icmp_code: None,
            peer: RulePeer::Cidr6(Ipv6Addr::UNSPECIFIED, 0),
        }
    );
    assert_eq!(ingress.iter().filter(|r| r.applies_v4()).count(), 3);
    assert_eq!(ingress.iter().filter(|r| r.applies_v6()).count(), 4);
    // A group peer with ICMP or ICMPv6 is one family's.
    let icmp_group = PolicyRule {
        proto: Some(RuleProto::Icmp),
        ..ingress[2]
    };
    let icmp6_group = PolicyRule {
        proto: Some(RuleProto::Icmp6),
        ..ingress[2]
    };
    assert_eq!(
        (icmp_group.family(), icmp6_group.family()),
        (RuleFamily::V4, RuleFamily::V6)
    );
}

#[test]
fn a_tasks_ipv6_addresses_are_endpoints_and_members_as_its_ipv4_ones() {
    let mut b = book();
    b.create("ops", "").unwrap();
    b.attach("ops", "v4only", 5).unwrap();
    b.attach("db", "pg", 5).unwrap();
    b.attach("api", "web", 5).unwrap();
    let want = b.desired(
        None,
        &tasks(&[
            ("pg", &["172.17.0.3", "fd00::3"]),
            ("web", &["172.17.0.2", "fd00::2", "fd00::12"]),
            ("open", &["172.17.0.9", "fd00::9"]),
            ("v4only", &["172.17.0.5"]),
        ]),
    );
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let (pg, web) = (
        b.attachments["pg"].policy_id,
        b.attachments["web"].policy_id,
    );
    // The same task id and policy flag on both families.
    assert_eq!(want.endpoints[&v4("172.17.0.3")], (pg, true));
    assert_eq!(want.endpoints6[&v6("fd00::3")], (pg, true));
    assert_eq!(want.endpoints6[&v6("fd00::2")], (web, true));
    assert_eq!(want.endpoints6[&v6("fd00::12")], (web, true));
    assert_eq!(want.endpoints6[&v6("fd00::9")], (DEFAULT_POLICY_ID, false));
    // Each family's addresses in its own table, never the other's.
    assert_eq!(want.endpoints.len(), 4);
    assert_eq!(want.endpoints6.len(), 4);
    assert_eq!(want.members[&1], [v4("172.17.0.2")]);
    assert_eq!(want.members6[&1], [v6("fd00::2"), v6("fd00::12")]);
    assert_eq!(want.members6[&2], [v6("fd00::3")]);
    // A group of IPv4-only tasks holds no IPv6 member.
    assert_eq!(want.members[&3], [v4("172.17.0.5")]);
    assert!(want.members6[&3].is_empty());
}

#[test]
fn an_ipv6_address_claimed_by_two_tasks_keeps_the_policy() {
    let mut b = book();
    b.attach("db", "b", 5).unwrap();
    let want = b.desired(None, &tasks(&[("a", &["fd00::2"]), ("b", &["fd00::2"])]));
    assert_eq!(
        want.endpoints6[&"fd00::2".parse().unwrap()],
        (b.attachments["b"].policy_id, true)
    );
}

#[test]
fn push_writes_ipv6_endpoints_and_members_and_takes_them_out() {
    use std::sync::atomic::Ordering;
    let dp = FakeDatapath::default();
    let mut b = book();
    b.attach("api", "web", 5).unwrap();
    let mut applied = DpState::default();
    applied.push(&DpState::default(), &dp).unwrap();
    // A task with policy on IPv6 only still clears the no-policy flag first.
    let want = b.desired(None, &tasks(&[("web", &["fd00::2"])]));
    applied.push(&want, &dp).unwrap();
    assert_eq!(applied, want);
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let web = b.attachments["web"].policy_id;
    assert_eq!(
        *dp.endpoints6.lock().unwrap(),
        BTreeMap::from([(v6("fd00::2"), (web, true))])
    );
    assert_eq!(dp.members6.lock().unwrap()[&1], [v6("fd00::2")]);
    assert!(dp.endpoints.lock().unwrap().is_empty());
    assert!(!dp.no_policy.load(Ordering::SeqCst));
    assert!(!dp.policy_while_flagged.load(Ordering::SeqCst));
    // The address moves: the old one goes, the new one comes.
    let want = b.desired(None, &tasks(&[("web", &["fd00::4"])]));
    applied.push(&want, &dp).unwrap();
    assert_eq!(
        *dp.endpoints6.lock().unwrap(),
        BTreeMap::from([(v6("fd00::4"), (web, true))])
    );
    assert_eq!(dp.members6.lock().unwrap()[&1], [v6("fd00::4")]);
    // The task and its group gone: nothing of IPv6 is left.
    b.detach("api", "web").unwrap();
    b.remove("api").unwrap();
    applied
        .push(&b.desired(None, &BTreeMap::new()), &dp)
        .unwrap();
    assert!(dp.endpoints6.lock().unwrap().is_empty());
    assert_eq!(dp.members6.lock().unwrap()[&1], Vec::<Ipv6Addr>::new());
    assert!(dp.no_policy.load(Ordering::SeqCst));
}

#[test]
fn a_failed_ipv6_endpoint_leaves_the_applied_state_what_the_datapath_holds() {
    let dp = FakeDatapath::default();
    let mut b = book();
    b.attach("api", "web", 5).unwrap();
    let mut applied = DpState::default();
    let bad: Ipv6Addr = "fd00::3".parse().unwrap();
    dp.fail_endpoint6_of(Some(bad));
    let want = b.desired(None, &tasks(&[("web", &["fd00::2", "fd00::3"])]));
    applied.push(&want, &dp).unwrap_err();
    assert_eq!(applied.endpoints6, *dp.endpoints6.lock().unwrap());
    assert!(!applied.endpoints6.contains_key(&bad));
    // Once it can be written, the next push completes it.
    dp.fail_endpoint6_of(None);
    applied.push(&want, &dp).unwrap();
    assert_eq!(applied, want);
    assert_eq!(dp.endpoints6.lock().unwrap().len(), 2);
}

#[test]
fn other_protocols_are_taken_by_number_as_aws_takes_them() {
    let gre = spec(Direction::Egress, "47").parse().unwrap();
    assert_eq!(gre.traffic, Traffic::Proto(47));
    assert_eq!(
        gre.summary(Direction::Egress),
        "egress protocol 47 to 0.0.0.0/0"
    );
    // Its wire (and store) form reads back as the same rule.
    let back = gre.spec(Direction::Egress);
    assert_eq!(
        (back.protocol.as_str(), &back.port, back.icmp_type),
        ("47", &None, None)
    );
    assert!(back.parse().unwrap().same_as(&gre));
    // Leading zeros are the same number.
    assert!(spec(Direction::Egress, "047")
        .parse()
        .unwrap()
        .same_as(&gre));
    // The numbers of the named protocols are those protocols.
    let tcp6 = RuleSpec {
        port: Some("80".into()),
        ..spec(Direction::Ingress, "6")
    };
    assert_eq!(tcp6.parse().unwrap().traffic, Traffic::Tcp(80, 80));
    assert_eq!(
        err(&spec(Direction::Ingress, "17")),
        "protocol udp needs a port or port range (--port P or P-Q)"
    );
    assert!(matches!(
        spec(Direction::Ingress, "1").parse().unwrap().traffic,
        Traffic::Icmp { .. }
    ));
    // 0 (hop-by-hop, and the datapath's "all") and 255 are refused, as is
    // anything past 255; a number takes no ports or ICMP fields.
    for n in ["0", "255"] {
        assert_eq!(
            err(&spec(Direction::Ingress, n)),
            format!(
                "protocol number {n} is not accepted: 0 is IPv6's hop-by-hop header and 255 \
                 is reserved; use 1-254, or all"
            )
        );
    }
    for n in ["256", "99999999999999999999"] {
        assert!(matches!(
            spec(Direction::Ingress, n).parse(),
            Err(SgError::Protocol(_))
        ));
    }
    let with_port = RuleSpec {
        port: Some("1".into()),
        ..spec(Direction::Ingress, "132")
    };
    assert_eq!(
        err(&with_port),
        "protocol 132 has no ports, ICMP type or code: a rule for it allows all of it \
         (--port applies to tcp and udp)"
    );
    let with_type = RuleSpec {
        icmp_type: Some(8),
        ..spec(Direction::Ingress, "4")
    };
    assert!(matches!(with_type.parse(), Err(SgError::NumberedFields(4))));
}

#[test]
fn a_numbered_rule_compiles_to_its_protocol_on_every_port_of_its_family() {
    let mut book = SgBook::default();
    book.create("tun", "").unwrap();
    let group_peer = RuleSpec {
        cidr: None,
        sg: Some("tun".into()),
        ..spec(Direction::Ingress, "47")
    };
    book.add_rule("tun", Direction::Ingress, group_peer.parse().unwrap())
        .unwrap();
    let v6 = RuleSpec {
        cidr: Some("::/0".into()),
        ..spec(Direction::Ingress, "132")
    };
    book.add_rule("tun", Direction::Ingress, v6.parse().unwrap())
        .unwrap();
    let (ingress, _) = book.compile(&["tun"]);
    assert_eq!(ingress.len(), 2);
    assert_eq!(ingress[0].proto, Some(RuleProto::Number(47)));
    assert_eq!(ingress[0].ports, (0, u16::MAX));
    assert_eq!(ingress[0].family(), RuleFamily::Both);
    assert_eq!(ingress[1].proto, Some(RuleProto::Number(132)));
    assert_eq!(ingress[1].family(), RuleFamily::V6);
}
