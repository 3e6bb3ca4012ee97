//! Datapath cost per packet via BPF_PROG_TEST_RUN, in the fixture
//! namespace: ingress hit (an established flow), miss, reply, and security
//! group evaluation with 1 and 300 rules, at 1, 1 000 and 65 000 mappings,
//! beside the floor of an empty program.
use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use berth::{
    datapath::{encode_rule, PolicyRule, RulePeer, RuleProto},
    model::Protocol,
};
use berth_maps::{Endpoint, Policy, PolicyKey, Rule, DIR_EGRESS, DIR_INGRESS, EP_F_POLICY, MAX_RULES};
use serde_json::{json, Value};

use super::{stats::summary, Settings};
use crate::{
    pkt::Packet,
    testrun::{binding, in_fixture_ns, Env, C1, CLIENT, HOST, HOST2, OTHER},
};

pub const MAPPING_COUNTS: [usize; 3] = [1, 1_000, 65_000];
pub const RULE_COUNTS: [usize; 2] = [1, 300];
/// Host ports of the mappings: FIRST_PORT .. FIRST_PORT + 65 000.
const FIRST_PORT: u16 = 100;
/// A published port (on 192.0.2.100) whose container has policy.
const POLICY_PORT: u16 = 8432;
/// Containers with security groups (the mappings point at C1, which has none).
const P_IN: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 5);
const P_OUT: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 6);
const P_OPEN: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);

fn set_endpoint(env: &mut Env, ip: Ipv4Addr, task_id: u32) {
    let mut m: HashMap<&mut MapData, u32, Endpoint> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_ENDPOINTS").unwrap()).unwrap();
    m.insert(
        u32::from_ne_bytes(ip.octets()),
        Endpoint {
            task_id,
            flags: EP_F_POLICY,
        },
        0,
    )
    .unwrap();
}

fn set_rules(env: &mut Env, task_id: u32, dir: u32, rules: &[PolicyRule]) {
    let mut p = Box::new(Policy {
        len: rules.len() as u32,
        _pad: 0,
        rules: [Rule::default(); MAX_RULES],
    });
    for (slot, r) in p.rules.iter_mut().zip(rules) {
        *slot = encode_rule(r);
    }
    let mut m: HashMap<&mut MapData, PolicyKey, Policy> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_POLICY").unwrap()).unwrap();
    m.insert(PolicyKey { task_id, dir }, &*p, 0).unwrap();
}

/// `n` TCP rules that never match the measured frames (port 1 from
/// 10.0.0.0/8), so every one is evaluated and the flow is refused.
fn miss_rules(n: usize) -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            proto: Some(RuleProto::Tcp),
            ports: (1, 1),
            icmp_type: None,
            icmp_code: None,
            peer: RulePeer::Cidr(Ipv4Addr::new(10, 0, 0, 0), 8),
        };
        n
    ]
}

fn allow_all() -> PolicyRule {
    PolicyRule {
        proto: None,
        ports: (0, 65535),
        icmp_type: None,
        icmp_code: None,
        peer: RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0),
    }
}

pub fn datapath_costs(s: &Settings) -> Value {
    let repeat = s.dp_repeat;
    let samples = s.dp_samples;
    in_fixture_ns(move |env| -> Value {
        env.host_addr(HOST);
        env.host_addr(HOST2);
        let syn = |dst: Ipv4Addr, dport: u16| Packet::tcp(CLIENT, 40000, dst, dport).frame();
        let mut rows = Vec::new();
        let measure = |rows: &mut Vec<Value>,
                           name: &str,
                           n: usize,
                           rules: Option<usize>,
                           f: &dyn Fn() -> u128| {
            let v: Vec<f64> = (0..samples).map(|_| f() as f64).collect();
            rows.push(json!({"path": name, "mappings": n, "rules": rules, "ns_per_packet": summary(&v)}));
        };
        let floor = syn(HOST, 9);
        measure(&mut rows, "floor_tc", 0, None, &|| {
            env.tc_ns("berth_empty_tc", &floor, repeat)
        });
        measure(&mut rows, "floor_xdp", 0, None, &|| {
            env.xdp_ns("berth_empty_xdp", &floor, repeat)
        });

        // Policy: P_IN (task 1) and P_OUT (task 2) have groups whose rules
        // never match; P_OPEN (task 3) allows everything, for a tracked flow.
        set_endpoint(env, P_IN, 1);
        set_endpoint(env, P_OUT, 2);
        set_endpoint(env, P_OPEN, 3);
        set_rules(env, 3, DIR_INGRESS, &[allow_all()]);
        set_rules(env, 3, DIR_EGRESS, &[allow_all()]);
        env.publish(&binding(HOST2, POLICY_PORT, P_IN, 5432, Protocol::Tcp));
        let tracked = Packet::tcp(OTHER, 40000, P_OPEN, 80).frame();
        assert_eq!(env.tc("berth_to_ctr", &tracked).code, 0, "P_OPEN allows all");

        let mut published = 0usize;
        for n in MAPPING_COUNTS {
            // The measured port is the one added last.
            while published < n {
                env.publish(&binding(
                    Ipv4Addr::UNSPECIFIED,
                    FIRST_PORT + published as u16,
                    C1,
                    80,
                    Protocol::Tcp,
                ));
                published += 1;
            }
            let hit = syn(HOST, FIRST_PORT + n as u16 - 1);
            let miss = syn(HOST, 9);
            let mut reply = Packet::tcp(C1, 80, CLIENT, 40000);
            reply.tcp_flags = 0x12;
            let reply = reply.frame();
            // Creates the flow the reply belongs to.
            assert_eq!(env.tc("berth_ingress", &hit).code, 7, "hit is redirected");
            assert_eq!(env.tc("berth_reply", &reply).code, 7, "reply is redirected");
            measure(&mut rows, "ingress_hit_tc", n, None, &|| {
                env.tc_ns("berth_ingress", &hit, repeat)
            });
            measure(&mut rows, "ingress_hit_xdp", n, None, &|| {
                env.xdp_ns("berth_xdp", &hit, repeat)
            });
            measure(&mut rows, "ingress_miss_tc", n, None, &|| {
                env.tc_ns("berth_ingress", &miss, repeat)
            });
            measure(&mut rows, "ingress_miss_xdp", n, None, &|| {
                env.xdp_ns("berth_xdp", &miss, repeat)
            });
            measure(&mut rows, "reply_tc", n, None, &|| {
                env.tc_ns("berth_reply", &reply, repeat)
            });
            measure(&mut rows, "policy_tracked_to_ctr", n, None, &|| {
                env.tc_ns("berth_to_ctr", &tracked, repeat)
            });
            for r in RULE_COUNTS {
                // Every rule evaluated: the new flow is refused each time, so
                // nothing gets tracked between repetitions.
                set_rules(env, 1, DIR_INGRESS, &miss_rules(r));
                set_rules(env, 2, DIR_EGRESS, &miss_rules(r));
                let rep = if r > 10 { (repeat / 10).max(1000) } else { repeat };
                let to_ctr = Packet::tcp(OTHER, 40001, P_IN, 5432).frame();
                let from_ctr = Packet::tcp(P_OUT, 40002, OTHER, 443).frame();
                let north_south = syn(HOST2, POLICY_PORT);
                assert_eq!(env.tc("berth_to_ctr", &to_ctr).code, 2, "refused");
                assert_eq!(env.tc("berth_from_ctr", &from_ctr).code, 2, "refused");
                assert_eq!(env.tc("berth_ingress", &north_south).code, 2, "refused");
                measure(&mut rows, "policy_to_ctr", n, Some(r), &|| {
                    env.tc_ns("berth_to_ctr", &to_ctr, rep)
                });
                measure(&mut rows, "policy_from_ctr", n, Some(r), &|| {
                    env.tc_ns("berth_from_ctr", &from_ctr, rep)
                });
                measure(&mut rows, "ingress_policy_tc", n, Some(r), &|| {
                    env.tc_ns("berth_ingress", &north_south, rep)
                });
            }
            eprintln!("bench: datapath at {n} mappings done");
        }
        Value::Array(rows)
    })
}
