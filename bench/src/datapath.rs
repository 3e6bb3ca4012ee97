//! Datapath cost per packet via `BPF_PROG_TEST_RUN`, in the fixture
//! namespace: ingress hit (an ACK of an established TCP flow), miss, reply
//! (the container's ACK), and security
//! group evaluation with 1 and 300 rules, at 1, 1 000 and 65 000 mappings,
//! beside the floor of an empty program.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData};
use berth::{
    datapath::{encode_rule, PolicyRule, RulePeer, RuleProto},
    model::Protocol,
};
use berth_maps::{
    Endpoint, Policy, PolicyKey, Rule, DIR_EGRESS, DIR_INGRESS, EP_F_POLICY, MAX_RULES,
};
use serde_json::{json, Value};

use super::{stats::summary, Settings};
use berth_integration::{
    pkt::Packet,
    testrun::{binding, in_fixture_ns, load_env, Env, C1, CLIENT, HOST, HOST2, OTHER},
};

pub const MAPPING_COUNTS: [usize; 3] = [1, 1_000, 65_000];
pub const RULE_COUNTS: [usize; 2] = [1, 300];
/// Host ports of the mappings: `FIRST_PORT` .. `FIRST_PORT` + 65 000.
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

/// The daemon's "no endpoint has policy" flag (a slot the previous
/// release's config array has, unused).
fn set_no_policy(env: &mut Env, on: bool) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(berth_maps::CONFIG_NO_POLICY, u64::from(on), 0)
        .unwrap();
}

/// The daemon's "every mapping is on the wildcard address" flag; `false`:
/// the object has no such slot (the previous release).
fn set_wildcard_only(env: &mut Env, on: bool) -> bool {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.len() > berth_maps::CONFIG_WILDCARD_ONLY
        && m.set(berth_maps::CONFIG_WILDCARD_ONLY, u64::from(on), 0)
            .is_ok()
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
    while *published > n {
        *published -= 1;
        env.unpublish(&b(*published));
    }
}

/// (build, path, mappings, rules) in report order.
type Key = (&'static str, &'static str, usize, Option<usize>);

/// The current object's rows carry no `build`; the previous release's, when
/// measured beside it, `"build": "previous"`.
pub const PREVIOUS: &str = "previous";
const CURRENT: &str = "current";
/// Rows of this tree's object built without counters (the ebpf crate's
/// `bench-uncounted`), measured beside it on the paths that count.
pub const UNCOUNTED: &str = "uncounted";

/// The frames every build is measured with.
struct Frames {
    floor: Vec<u8>,
    miss: Vec<u8>,
    tracked: Vec<u8>,
    tracked_back: Vec<u8>,
    to_ctr: Vec<u8>,
    from_ctr: Vec<u8>,
    north_south: Vec<u8>,
    plain_out: Vec<u8>,
    plain_in: Vec<u8>,
}

fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let mut p = Packet::tcp(src, sport, dst, dport);
    (p.tcp_flags, p.tcp_seq, p.tcp_ack) = (flags, seq, ack);
    p.frame()
}

fn syn(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    Packet::tcp(CLIENT, 40000, dst, dport).frame()
}

impl Frames {
    fn new() -> Self {
        Self {
            floor: syn(HOST, 9),
            miss: syn(HOST, 9),
            // An established policy flow, both ways.
            tracked: tcp(OTHER, 40000, P_OPEN, 80, 0x10, 0x1000_0001, 7001),
            tracked_back: tcp(P_OPEN, 80, OTHER, 40000, 0x10, 7001, 0x1000_0001),
            to_ctr: Packet::tcp(OTHER, 40001, P_IN, 5432).frame(),
            from_ctr: Packet::tcp(P_OUT, 40002, OTHER, 443).frame(),
            north_south: syn(HOST2, POLICY_PORT),
            // A container without security groups and a peer.
            plain_out: tcp(C1, 40003, OTHER, 443, 0x10, 9000, 9100),
            plain_in: tcp(OTHER, 443, C1, 40003, 0x10, 9100, 9000),
        }
    }
}

/// The established flow measured at host port `port`, from a client port
/// of its own (a flow table entry per mapping count, kept across rounds):
/// the handshake (SYN, SYN-ACK, the client's ACK), then the container's
/// ACK. The client's ACK is what every established segment of the flow
/// looks like to the tracker.
fn flow_frames(port: u16) -> [Vec<u8>; 4] {
    let cport = 20_000 + port % 20_000;
    [
        Packet::tcp(CLIENT, cport, HOST, port).frame(),
        tcp(C1, 80, CLIENT, cport, 0x12, 5000, 0x1000_0001),
        tcp(CLIENT, cport, HOST, port, 0x10, 0x1000_0001, 5001),
        tcp(C1, 80, CLIENT, cport, 0x10, 5001, 0x1000_0001),
    ]
}

/// What the daemon would have written, and the tracked policy flow.
fn setup(env: &mut Env, fr: &Frames) {
    env.host_addr(HOST);
    env.host_addr(HOST2);
    // As the daemon fills them: every packet on an uplink is checked
    // against the host's addresses and the bridge subnet (the previous
    // release has no source checks, nor these maps).
    env.host_addr(Ipv4Addr::LOCALHOST);
    if env.has_map("BERTH_LOCAL_NETS") {
        env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
    }
    // Policy: P_IN (task 1) and P_OUT (task 2) have groups whose rules
    // never match; P_OPEN (task 3) allows everything, for a tracked flow.
    set_endpoint(env, P_IN, 1);
    set_endpoint(env, P_OUT, 2);
    set_endpoint(env, P_OPEN, 3);
    // P_OUT, P_OPEN and C1 (no policy) send from their own port: lo, a
    // test run's default device.
    if env.has_map("BERTH_PORT_ADDRS") {
        env.port_addrs(1, &[P_OUT, P_OPEN, C1]);
    }
    set_rules(env, 3, DIR_INGRESS, &[allow_all()]);
    set_rules(env, 3, DIR_EGRESS, &[allow_all()]);
    env.publish(&binding(HOST2, POLICY_PORT, P_IN, 5432, Protocol::Tcp));
    // The policy flow's handshake.
    for (prog, f) in [
        (
            "berth_to_ctr",
            Packet::tcp(OTHER, 40000, P_OPEN, 80).frame(),
        ),
        (
            "berth_from_ctr",
            tcp(P_OPEN, 80, OTHER, 40000, 0x12, 7000, 0x1000_0001),
        ),
        ("berth_to_ctr", fr.tracked.clone()),
        ("berth_from_ctr", fr.tracked_back.clone()),
    ] {
        assert_eq!(env.tc(prog, &f).code, 0, "P_OPEN allows all");
    }
    assert_eq!(env.tc("berth_from_ctr", &fr.plain_out).code, 0, "no policy");
    assert_eq!(env.tc("berth_to_ctr", &fr.plain_in).code, 0, "no policy");
}

/// One build's paths at `n` mappings (`port`: the measured one).
fn measure(
    env: &mut Env,
    fr: &Frames,
    port: u16,
    runs: u32,
    record: &mut dyn FnMut(&'static str, Option<usize>, f64),
) {
    // A handshake establishes the flow the hit and the reply belong to (in
    // later rounds it finds the flow established).
    let [syn, syn_ack, hit, reply] = flow_frames(port);
    assert_eq!(env.tc("berth_ingress", &syn).code, 7, "syn");
    assert_eq!(env.tc("berth_reply", &syn_ack).code, 7, "syn-ack");
    assert_eq!(env.tc("berth_ingress", &hit).code, 7, "hit is redirected");
    assert_eq!(env.tc("berth_reply", &reply).code, 7, "reply is redirected");
    record(
        "ingress_hit_tc",
        None,
        env.tc_ns("berth_ingress", &hit, runs),
    );
    record("ingress_hit_xdp", None, env.xdp_ns("berth_xdp", &hit, runs));
    // The same on a host where every mapping is on the wildcard address,
    // as the daemon flags it (the measured ones are; POLICY_PORT's, bound
    // to HOST2, is not measured meanwhile).
    if set_wildcard_only(env, true) {
        record(
            "ingress_hit_tc_wildcard_host",
            None,
            env.tc_ns("berth_ingress", &hit, runs),
        );
        record(
            "ingress_hit_xdp_wildcard_host",
            None,
            env.xdp_ns("berth_xdp", &hit, runs),
        );
        set_wildcard_only(env, false);
    }
    record(
        "ingress_miss_tc",
        None,
        env.tc_ns("berth_ingress", &fr.miss, runs),
    );
    record(
        "ingress_miss_xdp",
        None,
        env.xdp_ns("berth_xdp", &fr.miss, runs),
    );
    record("reply_tc", None, env.tc_ns("berth_reply", &reply, runs));
    record(
        "policy_tracked_to_ctr",
        None,
        env.tc_ns("berth_to_ctr", &fr.tracked, runs),
    );
    record(
        "policy_tracked_from_ctr",
        None,
        env.tc_ns("berth_from_ctr", &fr.tracked_back, runs),
    );
    record(
        "from_ctr_tc",
        None,
        env.tc_ns("berth_from_ctr", &fr.plain_out, runs),
    );
    record(
        "to_ctr_tc",
        None,
        env.tc_ns("berth_to_ctr", &fr.plain_in, runs),
    );
    // The same on a host where no endpoint has policy, as the daemon flags
    // it (the previous release has no such flag: its figures are its
    // ordinary ones).
    set_no_policy(env, true);
    record(
        "from_ctr_no_sg_host",
        None,
        env.tc_ns("berth_from_ctr", &fr.plain_out, runs),
    );
    record(
        "to_ctr_no_sg_host",
        None,
        env.tc_ns("berth_to_ctr", &fr.plain_in, runs),
    );
    set_no_policy(env, false);
    for r in RULE_COUNTS {
        // Every rule evaluated: the new flow is refused each time, so
        // nothing gets tracked between runs.
        set_rules(env, 1, DIR_INGRESS, &miss_rules(r));
        set_rules(env, 2, DIR_EGRESS, &miss_rules(r));
        assert_eq!(env.tc("berth_to_ctr", &fr.to_ctr).code, 2, "refused");
        assert_eq!(env.tc("berth_from_ctr", &fr.from_ctr).code, 2, "refused");
        assert_eq!(env.tc("berth_ingress", &fr.north_south).code, 2, "refused");
        let rep = if r > 10 { (runs / 10).max(1000) } else { runs };
        record(
            "policy_to_ctr",
            Some(r),
            env.tc_ns("berth_to_ctr", &fr.to_ctr, rep),
        );
        record(
            "policy_from_ctr",
            Some(r),
            env.tc_ns("berth_from_ctr", &fr.from_ctr, rep),
        );
        record(
            "ingress_policy_tc",
            Some(r),
            env.tc_ns("berth_ingress", &fr.north_south, rep),
        );
    }
}

/// The paths that count (per-binding and per-flow counters), for the
/// object without counters: the established flow's hit and reply.
fn measure_counted_paths(
    env: &mut Env,
    port: u16,
    runs: u32,
    record: &mut dyn FnMut(&'static str, Option<usize>, f64),
) {
    let [syn, syn_ack, hit, reply] = flow_frames(port);
    assert_eq!(env.tc("berth_ingress", &syn).code, 7, "syn");
    assert_eq!(env.tc("berth_reply", &syn_ack).code, 7, "syn-ack");
    assert_eq!(env.tc("berth_ingress", &hit).code, 7, "hit is redirected");
    assert_eq!(env.tc("berth_reply", &reply).code, 7, "reply is redirected");
    record(
        "ingress_hit_tc",
        None,
        env.tc_ns("berth_ingress", &hit, runs),
    );
    record("ingress_hit_xdp", None, env.xdp_ns("berth_xdp", &hit, runs));
    record("reply_tc", None, env.tc_ns("berth_reply", &reply, runs));
}

/// Per-packet cost of every path; with `previous` (an eBPF object of the
/// previous release), that object's beside berth's own, loaded into the
/// same namespace and measured in the same rounds, alternately; with
/// `uncounted` (this tree's object without counters), its counted paths
/// likewise.
pub fn datapath_costs(
    s: &Settings,
    previous: Option<Vec<u8>>,
    uncounted: Option<Vec<u8>>,
) -> Value {
    let runs = s.dp_runs;
    let samples = s.dp_samples;
    in_fixture_ns(move |current| -> Value {
        let fr = Frames::new();
        let mut builds: Vec<(&'static str, &mut Env)> = vec![(CURRENT, current)];
        let mut prev_env = previous.map(|obj| load_env(&obj));
        if let Some(p) = prev_env.as_mut() {
            builds.push((PREVIOUS, p));
        }
        let mut uncounted_env = uncounted.map(|obj| load_env(&obj));
        if let Some(u) = uncounted_env.as_mut() {
            builds.push((UNCOUNTED, u));
        }
        for (_, env) in &mut builds {
            setup(env, &fr);
        }
        let mut order: Vec<Key> = Vec::new();
        let mut got: std::collections::HashMap<Key, Vec<f64>> = Default::default();
        let mut published = vec![0usize; builds.len()];
        // Rounds interleave the builds and the mapping counts (1, 1 000,
        // 65 000, 1, …) so a machine that gets busier or quieter shifts
        // all of them alike.
        for round in 0..samples {
            for (i, (build, env)) in builds.iter_mut().enumerate() {
                let mut record = |k: Key, ns: f64| {
                    if !got.contains_key(&k) {
                        order.push(k);
                    }
                    got.entry(k).or_default().push(ns);
                };
                record(
                    (build, "floor_tc", 0, None),
                    env.tc_ns("berth_empty_tc", &fr.floor, runs),
                );
                record(
                    (build, "floor_xdp", 0, None),
                    env.xdp_ns("berth_empty_xdp", &fr.floor, runs),
                );
                for n in MAPPING_COUNTS {
                    set_mappings(env, &mut published[i], n);
                    let port = FIRST_PORT + n as u16 - 1;
                    let mut rec = |path, rules, ns| record((build, path, n, rules), ns);
                    if *build == UNCOUNTED {
                        measure_counted_paths(env, port, runs, &mut rec);
                    } else {
                        measure(env, &fr, port, runs, &mut rec);
                    }
                }
            }
            eprintln!("bench: datapath round {}/{samples} done", round + 1);
        }
        Value::Array(
            order
                .iter()
                .map(|k| {
                    let mut row = json!({
                        "path": k.1,
                        "mappings": k.2,
                        "rules": k.3,
                        "ns_per_packet": summary(&got[k]),
                    });
                    if k.0 != CURRENT {
                        row["build"] = json!(k.0);
                    }
                    row
                })
                .collect(),
        )
    })
}
