//! Datapath cost per packet via BPF_PROG_TEST_RUN, in the fixture
//! namespace: ingress hit (an ACK of an established TCP flow), miss, reply
//! (the container's ACK), and security
//! group evaluation with 1 and 300 rules, at 1, 1 000 and 65 000 mappings,
//! beside the floor of an empty program.
use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use berth::{
    datapath::{encode_rule, PolicyRule, RulePeer, RuleProto},
    model::Protocol,
};
use berth_maps::{
    Backend, Endpoint, Policy, PolicyKey, Rule, ServiceKey, DIR_EGRESS, DIR_INGRESS, EP_F_POLICY,
    MAX_RULES,
};
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
    m.insert(PolicyKey { task_id, dir }, *p, 0).unwrap();
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

/// Publishes or unpublishes mappings from the end so exactly `n` exist;
/// the measured port (`FIRST_PORT + n - 1`) is always the one added last.
fn set_mappings(env: &mut Env, published: &mut usize, n: usize) {
    let b = |i: usize| {
        binding(
            Ipv4Addr::UNSPECIFIED,
            FIRST_PORT + i as u16,
            C1,
            80,
            Protocol::Tcp,
        )
    };
    while *published < n {
        env.publish(&b(*published));
        *published += 1;
    }
    if *published > n {
        let mut m: HashMap<&mut MapData, ServiceKey, Backend> =
            HashMap::try_from(env.ebpf.map_mut("BERTH_SERVICES").unwrap()).unwrap();
        while *published > n {
            *published -= 1;
            m.remove(&berth::datapath::bpf_keys::service_key(&b(*published)))
                .unwrap();
        }
    }
}

/// (path, mappings, rules) in report order.
type Key = (&'static str, usize, Option<usize>);

pub fn datapath_costs(s: &Settings) -> Value {
    let repeat = s.dp_runs;
    let samples = s.dp_samples;
    in_fixture_ns(move |env| -> Value {
        env.host_addr(HOST);
        env.host_addr(HOST2);
        // As the daemon fills them: every packet on an uplink is checked
        // against the host's addresses and the bridge subnet.
        env.host_addr(Ipv4Addr::LOCALHOST);
        env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
        let syn = |dst: Ipv4Addr, dport: u16| Packet::tcp(CLIENT, 40000, dst, dport).frame();
        let mut order: Vec<Key> = Vec::new();
        let mut got: std::collections::HashMap<Key, Vec<f64>> = Default::default();
        let mut record = |k: Key, ns: f64| {
            if !got.contains_key(&k) {
                order.push(k);
            }
            got.entry(k).or_default().push(ns);
        };

        // Policy: P_IN (task 1) and P_OUT (task 2) have groups whose rules
        // never match; P_OPEN (task 3) allows everything, for a tracked flow.
        set_endpoint(env, P_IN, 1);
        set_endpoint(env, P_OUT, 2);
        set_endpoint(env, P_OPEN, 3);
        // P_OUT, P_OPEN and C1 (no policy) send from their own port: lo, a
        // test run's default device.
        env.port_addrs(1, &[P_OUT, P_OPEN, C1]);
        set_rules(env, 3, DIR_INGRESS, &[allow_all()]);
        set_rules(env, 3, DIR_EGRESS, &[allow_all()]);
        env.publish(&binding(HOST2, POLICY_PORT, P_IN, 5432, Protocol::Tcp));
        // An established policy flow (handshake seen), measured on an ACK.
        let mut t_syn_ack = Packet::tcp(P_OPEN, 80, OTHER, 40000);
        (t_syn_ack.tcp_flags, t_syn_ack.tcp_seq, t_syn_ack.tcp_ack) = (0x12, 7000, 0x1000_0001);
        let mut tracked = Packet::tcp(OTHER, 40000, P_OPEN, 80);
        (tracked.tcp_flags, tracked.tcp_seq, tracked.tcp_ack) = (0x10, 0x1000_0001, 7001);
        let tracked = tracked.frame();
        let mut tracked_back = Packet::tcp(P_OPEN, 80, OTHER, 40000);
        (
            tracked_back.tcp_flags,
            tracked_back.tcp_seq,
            tracked_back.tcp_ack,
        ) = (0x10, 7001, 0x1000_0001);
        let tracked_back = tracked_back.frame();
        for (prog, f) in [
            (
                "berth_to_ctr",
                Packet::tcp(OTHER, 40000, P_OPEN, 80).frame(),
            ),
            ("berth_from_ctr", t_syn_ack.frame()),
            ("berth_to_ctr", tracked.clone()),
            ("berth_from_ctr", tracked_back.clone()),
        ] {
            assert_eq!(env.tc(prog, &f).code, 0, "P_OPEN allows all");
        }
        let floor = syn(HOST, 9);
        let miss = syn(HOST, 9);
        // The established path: the container's ACK, as after a handshake.
        let mut syn_ack = Packet::tcp(C1, 80, CLIENT, 40000);
        (syn_ack.tcp_flags, syn_ack.tcp_seq, syn_ack.tcp_ack) = (0x12, 5000, 0x1000_0001);
        let syn_ack = syn_ack.frame();
        let mut reply = Packet::tcp(C1, 80, CLIENT, 40000);
        (reply.tcp_flags, reply.tcp_seq, reply.tcp_ack) = (0x10, 5001, 0x1000_0001);
        let reply = reply.frame();
        // The client's ACK of the SYN-ACK: what every established segment
        // of the flow looks like to the tracker.
        let ack = |dst: Ipv4Addr, dport: u16| {
            let mut p = Packet::tcp(CLIENT, 40000, dst, dport);
            (p.tcp_flags, p.tcp_seq, p.tcp_ack) = (0x10, 0x1000_0001, 5001);
            p.frame()
        };
        let to_ctr = Packet::tcp(OTHER, 40001, P_IN, 5432).frame();
        let from_ctr = Packet::tcp(P_OUT, 40002, OTHER, 443).frame();
        let north_south = syn(HOST2, POLICY_PORT);
        // A container without security groups and a peer: the veth hooks'
        // cost where nothing has policy.
        let mut plain_out = Packet::tcp(C1, 40003, OTHER, 443);
        (plain_out.tcp_flags, plain_out.tcp_seq, plain_out.tcp_ack) = (0x10, 9000, 9100);
        let plain_out = plain_out.frame();
        let mut plain_in = Packet::tcp(OTHER, 443, C1, 40003);
        (plain_in.tcp_flags, plain_in.tcp_seq, plain_in.tcp_ack) = (0x10, 9100, 9000);
        let plain_in = plain_in.frame();
        assert_eq!(env.tc("berth_from_ctr", &plain_out).code, 0, "no policy");
        assert_eq!(env.tc("berth_to_ctr", &plain_in).code, 0, "no policy");

        // Rounds interleave the mapping counts (1, 1 000, 65 000, 1, …) so
        // a machine that gets busier or quieter shifts all of them alike.
        let mut published = 0usize;
        for round in 0..samples {
            record(
                ("floor_tc", 0, None),
                env.tc_ns("berth_empty_tc", &floor, repeat),
            );
            record(
                ("floor_xdp", 0, None),
                env.xdp_ns("berth_empty_xdp", &floor, repeat),
            );
            for n in MAPPING_COUNTS {
                set_mappings(env, &mut published, n);
                let port = FIRST_PORT + n as u16 - 1;
                let hit = ack(HOST, port);
                // A handshake establishes the flow the hit and the reply
                // belong to (with a new host port, the old flow goes first).
                env.clear_nat();
                assert_eq!(env.tc("berth_ingress", &syn(HOST, port)).code, 7, "syn");
                assert_eq!(env.tc("berth_reply", &syn_ack).code, 7, "syn-ack");
                assert_eq!(env.tc("berth_ingress", &hit).code, 7, "hit is redirected");
                assert_eq!(env.tc("berth_reply", &reply).code, 7, "reply is redirected");
                record(
                    ("ingress_hit_tc", n, None),
                    env.tc_ns("berth_ingress", &hit, repeat),
                );
                record(
                    ("ingress_hit_xdp", n, None),
                    env.xdp_ns("berth_xdp", &hit, repeat),
                );
                record(
                    ("ingress_miss_tc", n, None),
                    env.tc_ns("berth_ingress", &miss, repeat),
                );
                record(
                    ("ingress_miss_xdp", n, None),
                    env.xdp_ns("berth_xdp", &miss, repeat),
                );
                record(
                    ("reply_tc", n, None),
                    env.tc_ns("berth_reply", &reply, repeat),
                );
                record(
                    ("policy_tracked_to_ctr", n, None),
                    env.tc_ns("berth_to_ctr", &tracked, repeat),
                );
                record(
                    ("policy_tracked_from_ctr", n, None),
                    env.tc_ns("berth_from_ctr", &tracked_back, repeat),
                );
                record(
                    ("from_ctr_tc", n, None),
                    env.tc_ns("berth_from_ctr", &plain_out, repeat),
                );
                record(
                    ("to_ctr_tc", n, None),
                    env.tc_ns("berth_to_ctr", &plain_in, repeat),
                );
                for r in RULE_COUNTS {
                    // Every rule evaluated: the new flow is refused each
                    // time, so nothing gets tracked between repetitions.
                    set_rules(env, 1, DIR_INGRESS, &miss_rules(r));
                    set_rules(env, 2, DIR_EGRESS, &miss_rules(r));
                    let rep = if r > 10 {
                        (repeat / 10).max(1000)
                    } else {
                        repeat
                    };
                    assert_eq!(env.tc("berth_to_ctr", &to_ctr).code, 2, "refused");
                    assert_eq!(env.tc("berth_from_ctr", &from_ctr).code, 2, "refused");
                    assert_eq!(env.tc("berth_ingress", &north_south).code, 2, "refused");
                    record(
                        ("policy_to_ctr", n, Some(r)),
                        env.tc_ns("berth_to_ctr", &to_ctr, rep),
                    );
                    record(
                        ("policy_from_ctr", n, Some(r)),
                        env.tc_ns("berth_from_ctr", &from_ctr, rep),
                    );
                    record(
                        ("ingress_policy_tc", n, Some(r)),
                        env.tc_ns("berth_ingress", &north_south, rep),
                    );
                }
            }
            eprintln!("bench: datapath round {}/{samples} done", round + 1);
        }
        Value::Array(
            order
                .iter()
                .map(|k| {
                    json!({
                        "path": k.0,
                        "mappings": k.1,
                        "rules": k.2,
                        "ns_per_packet": summary(&got[k]),
                    })
                })
                .collect(),
        )
    })
}
