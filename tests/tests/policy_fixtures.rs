//! Security-group decisions through BPF_PROG_TEST_RUN: the maps are written
//! as the control plane would, frames go through the veth and uplink
//! programs, and each verdict is checked (policy never rewrites a frame).
use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use berth::{
    datapath::{PolicyRule, RulePeer, RuleProto},
    model::Protocol,
};
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::{
    Endpoint, Policy, PolicyKey, Rule, SgMember, DIR_EGRESS, DIR_INGRESS, EP_F_POLICY, MAX_RULES,
};

const OK: u32 = 0;
const SHOT: u32 = 2;
const REDIRECT: u32 = 7;
const C3: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 4);
const SG_API: u32 = 10;
const SG_DB: u32 = 20;
const DB_TASK: u32 = 1; // C1
const API_TASK: u32 = 2; // C2
const OPEN_TASK: u32 = 3; // C3, no groups

fn tcp(proto_all: bool, lo: u16, hi: u16, peer: RulePeer) -> PolicyRule {
    PolicyRule {
        proto: if proto_all {
            None
        } else {
            Some(RuleProto::Tcp)
        },
        ports: (lo, hi),
        icmp_type: None,
        icmp_code: None,
        peer,
    }
}

fn any() -> RulePeer {
    RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0)
}

fn set_endpoint(env: &mut Env, ip: Ipv4Addr, task_id: u32, policy: bool) {
    let mut m: HashMap<&mut MapData, u32, Endpoint> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_ENDPOINTS").unwrap()).unwrap();
    let flags = if policy { EP_F_POLICY } else { 0 };
    m.insert(
        u32::from_ne_bytes(ip.octets()),
        Endpoint { task_id, flags },
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
        *slot = berth::datapath::encode_rule(r);
    }
    let mut m: HashMap<&mut MapData, PolicyKey, Policy> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_POLICY").unwrap()).unwrap();
    m.insert(PolicyKey { task_id, dir }, &*p, 0).unwrap();
}

fn add_member(env: &mut Env, sg_id: u32, ip: Ipv4Addr) {
    let mut m: HashMap<&mut MapData, SgMember, u32> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_SG_MEMBERS").unwrap()).unwrap();
    m.insert(
        SgMember {
            sg_id,
            addr_be: u32::from_ne_bytes(ip.octets()),
        },
        1,
        0,
    )
    .unwrap();
}

/// db (C1): 5432 from sg-api only, egress 443 anywhere only.
/// api (C2): 80 from 192.0.2.0/24 and echo requests from anywhere, egress all.
/// C3: a task without groups.
fn setup(env: &mut Env) {
    env.host_addr(HOST);
    env.publish(&binding(Ipv4Addr::UNSPECIFIED, 8080, C2, 80, Protocol::Tcp));
    env.publish(&binding(
        Ipv4Addr::UNSPECIFIED,
        8432,
        C1,
        5432,
        Protocol::Tcp,
    ));
    set_endpoint(env, C1, DB_TASK, true);
    set_endpoint(env, C2, API_TASK, true);
    set_endpoint(env, C3, OPEN_TASK, false);
    add_member(env, SG_API, C2);
    add_member(env, SG_DB, C1);
    set_rules(
        env,
        DB_TASK,
        DIR_INGRESS,
        &[tcp(false, 5432, 5432, RulePeer::Group(SG_API))],
    );
    set_rules(env, DB_TASK, DIR_EGRESS, &[tcp(false, 443, 443, any())]);
    set_rules(
        env,
        API_TASK,
        DIR_INGRESS,
        &[
            tcp(
                false,
                80,
                80,
                RulePeer::Cidr(Ipv4Addr::new(192, 0, 2, 0), 24),
            ),
            PolicyRule {
                proto: Some(RuleProto::Icmp),
                ports: (0, 0),
                icmp_type: Some(8),
                icmp_code: None,
                peer: any(),
            },
        ],
    );
    set_rules(env, API_TASK, DIR_EGRESS, &[tcp(true, 0, 65535, any())]);
}

fn from(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp(src, sport, dst, dport)
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut p = Packet::tcp(src, 0, dst, 0);
    p.proto = pkt::ICMP;
    let mut f = p.frame();
    // pkt renders ICMP as an echo request (id 1); make it a reply if asked.
    if reply {
        let icmp = 14 + 20;
        f[icmp] = 0;
        f[icmp + 2] = 0;
        f[icmp + 3] = 0;
        let c = pkt::csum(&f[icmp..], 0);
        f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    }
    f
}

fn verdict(env: &Env, prog: &str, frame: &[u8]) -> u32 {
    let v = env.tc(prog, frame);
    if v.code != REDIRECT {
        assert_eq!(
            v.frame, frame,
            "{prog} changed a frame it did not translate"
        );
    }
    v.code
}

#[test]
fn east_west_allowed_only_from_the_referenced_group() {
    in_fixture_ns(|env| {
        setup(env);
        // api -> db:5432: api's egress allows all, db allows sg-api.
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40000, C1, 5432).frame()),
            OK
        );
        assert_eq!(
            verdict(env, "berth_to_ctr", &from(C2, 40000, C1, 5432).frame()),
            OK
        );
        // The reply passes both hooks whatever db's egress rules say.
        let mut reply = from(C1, 5432, C2, 40000);
        reply.tcp_flags = pkt::SYN | pkt::ACK;
        assert_eq!(verdict(env, "berth_from_ctr", &reply.frame()), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &reply.frame()), OK);
        // Another port of db, or db from a task outside sg-api: refused.
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40001, C1, 22).frame()),
            SHOT
        );
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 40002, C1, 5432).frame()),
            SHOT
        );
        assert_eq!(
            verdict(env, "berth_to_ctr", &from(C3, 40002, C1, 5432).frame()),
            SHOT
        );
        // The host itself is not in sg-api either.
        assert_eq!(
            verdict(
                env,
                "berth_to_ctr",
                &from(BRIDGE_IP, 40003, C1, 5432).frame()
            ),
            SHOT
        );
    });
}

#[test]
fn egress_rules_limit_what_a_task_may_open() {
    in_fixture_ns(|env| {
        setup(env);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C1, 40000, OTHER, 443).frame()),
            OK
        );
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C1, 40001, OTHER, 80).frame()),
            SHOT
        );
        // Replies to db's own outbound connection come back with no ingress rule.
        let mut reply = from(OTHER, 443, C1, 40000);
        reply.tcp_flags = pkt::SYN | pkt::ACK;
        assert_eq!(verdict(env, "berth_to_ctr", &reply.frame()), OK);
        // An unsolicited packet from the same peer is refused.
        assert_eq!(
            verdict(env, "berth_to_ctr", &from(OTHER, 443, C1, 40999).frame()),
            SHOT
        );
    });
}

#[test]
fn tasks_without_groups_are_open_as_in_docker() {
    in_fixture_ns(|env| {
        setup(env);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 1, OTHER, 25).frame()),
            OK
        );
        assert_eq!(
            verdict(env, "berth_to_ctr", &from(OTHER, 2, C3, 9999).frame()),
            OK
        );
        // Unknown addresses on the bridge: nothing to judge.
        let stranger = Ipv4Addr::new(172, 17, 9, 9);
        assert_eq!(
            verdict(env, "berth_to_ctr", &from(OTHER, 2, stranger, 9999).frame()),
            OK
        );
    });
}

#[test]
fn north_south_is_judged_before_dnat_with_the_client_address() {
    in_fixture_ns(|env| {
        setup(env);
        // Client in 192.0.2.0/24 to api's published port: translated.
        assert_eq!(
            env.tc("berth_ingress", &from(CLIENT, 40000, HOST, 8080).frame())
                .code,
            REDIRECT
        );
        // db's published port: the client is not in sg-api, a refused SYN gets no answer.
        assert_eq!(
            env.tc("berth_ingress", &from(CLIENT, 40001, HOST, 8432).frame())
                .code,
            SHOT
        );
        assert_eq!(
            env.xdp("berth_xdp", &from(CLIENT, 40002, HOST, 8432).frame())
                .code,
            1
        );
        // A client outside api's CIDR.
        let outsider = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(
            env.tc("berth_ingress", &from(outsider, 40003, HOST, 8080).frame())
                .code,
            SHOT
        );
        // The translated flow's packets into api and its replies pass the veth hooks.
        let mut delivered = from(CLIENT, 40000, C2, 80);
        delivered.ttl = 63;
        assert_eq!(verdict(env, "berth_to_ctr", &delivered.frame()), OK);
        let mut reply = from(C2, 80, CLIENT, 40000);
        reply.tcp_flags = pkt::SYN | pkt::ACK;
        assert_eq!(verdict(env, "berth_from_ctr", &reply.frame()), OK);
    });
}

#[test]
fn removing_a_rule_keeps_tracked_flows_and_refuses_new_ones() {
    in_fixture_ns(|env| {
        setup(env);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40000, C1, 5432).frame()),
            OK
        );
        set_rules(env, DB_TASK, DIR_INGRESS, &[]);
        let mut data = from(C2, 40000, C1, 5432);
        data.tcp_flags = pkt::ACK;
        assert_eq!(
            verdict(env, "berth_from_ctr", &data.frame()),
            OK,
            "tracked flow survives"
        );
        assert_eq!(verdict(env, "berth_to_ctr", &data.frame()), OK);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40001, C1, 5432).frame()),
            SHOT,
            "new flow refused"
        );
    });
}

#[test]
fn membership_changes_apply_to_new_flows_at_once() {
    in_fixture_ns(|env| {
        setup(env);
        set_endpoint(env, C3, OPEN_TASK, true);
        set_rules(env, OPEN_TASK, DIR_EGRESS, &[tcp(true, 0, 65535, any())]);
        set_rules(env, OPEN_TASK, DIR_INGRESS, &[]);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 40000, C1, 5432).frame()),
            SHOT
        );
        add_member(env, SG_API, C3);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 40001, C1, 5432).frame()),
            OK
        );
    });
}

#[test]
fn icmp_echo_is_judged_by_type_and_its_reply_tracked() {
    in_fixture_ns(|env| {
        setup(env);
        assert_eq!(
            verdict(env, "berth_to_ctr", &echo(OTHER, C2, false)),
            OK,
            "echo request allowed to api"
        );
        assert_eq!(
            verdict(env, "berth_from_ctr", &echo(C2, OTHER, true)),
            OK,
            "its reply"
        );
        assert_eq!(
            verdict(env, "berth_to_ctr", &echo(OTHER, C1, false)),
            SHOT,
            "db allows no ICMP"
        );
        assert_eq!(
            verdict(env, "berth_from_ctr", &echo(C1, OTHER, false)),
            SHOT,
            "db's egress is 443 only"
        );
    });
}

#[test]
fn the_largest_rule_set_is_evaluated_to_its_last_rule() {
    in_fixture_ns(|env| {
        setup(env);
        // 959 rules that do not match, then the one that does.
        let mut rules =
            vec![tcp(false, 1, 1, RulePeer::Cidr(Ipv4Addr::new(10, 0, 0, 0), 8)); MAX_RULES - 1];
        rules.push(tcp(false, 6000, 6010, RulePeer::Group(SG_API)));
        set_rules(env, DB_TASK, DIR_INGRESS, &rules);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40000, C1, 6005).frame()),
            OK
        );
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40001, C1, 6011).frame()),
            SHOT
        );
    });
}

fn seg(mut p: Packet, flags: u8, seq: u32, ack: u32) -> Packet {
    (p.tcp_flags, p.tcp_seq, p.tcp_ack) = (flags, seq, ack);
    p
}

fn ct_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> berth_maps::FlowKey {
    berth_maps::FlowKey {
        src_addr_be: u32::from_ne_bytes(src.octets()),
        dst_addr_be: u32::from_ne_bytes(dst.octets()),
        src_port_be: sport.to_be(),
        dst_port_be: dport.to_be(),
        proto: pkt::TCP,
        _pad: [0; 3],
    }
}

#[test]
fn policy_flow_is_unestablished_until_the_handshake_completes() {
    in_fixture_ns(|env| {
        setup(env);
        let k = ct_key(C2, 41000, C1, 5432);
        let c = from(C2, 41000, C1, 5432);
        let s = from(C1, 5432, C2, 41000);
        assert_eq!(
            verdict(
                env,
                "berth_from_ctr",
                &seg(c.clone(), pkt::SYN, 100, 0).frame()
            ),
            OK
        );
        assert_eq!(
            env.ct_lookup(&k).map(|e| e.0),
            Some(false),
            "SYN: unestablished"
        );
        let syn_ack = seg(s.clone(), pkt::SYN | pkt::ACK, 900, 101).frame();
        assert_eq!(verdict(env, "berth_from_ctr", &syn_ack), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &syn_ack), OK);
        assert_eq!(
            env.ct_lookup(&k).map(|e| e.0),
            Some(false),
            "SYN-ACK: still"
        );
        let ack = seg(c.clone(), pkt::ACK, 101, 901).frame();
        assert_eq!(verdict(env, "berth_from_ctr", &ack), OK);
        let (established, e) = env.ct_lookup(&k).unwrap();
        assert!(established, "the ACK of the SYN-ACK establishes it");
        assert_ne!(e.flags & berth_maps::CT_F_ESTABLISHED, 0);
        assert!(env
            .map_get::<_, berth_maps::CtEntry>("BERTH_CT_NEW", &k)
            .is_none());
    });
}

#[test]
fn udp_policy_flow_is_established_by_its_reply() {
    in_fixture_ns(|env| {
        setup(env);
        let mut q = Packet::udp(C2, 41100, OTHER, 53);
        q.eth_src = [2, 0x42, 0xac, 0x11, 0, 3];
        assert_eq!(verdict(env, "berth_from_ctr", &q.frame()), OK);
        let mut k = ct_key(C2, 41100, OTHER, 53);
        k.proto = pkt::UDP;
        assert_eq!(env.ct_lookup(&k).map(|e| e.0), Some(false));
        let r = Packet::udp(OTHER, 53, C2, 41100);
        assert_eq!(verdict(env, "berth_to_ctr", &r.frame()), OK);
        assert_eq!(env.ct_lookup(&k).map(|e| e.0), Some(true));
    });
}

#[test]
fn non_syn_tcp_of_no_policy_flow_is_dropped_and_counted() {
    in_fixture_ns(|env| {
        setup(env);
        let before = env.counter("ct_no_flow");
        // Allowed by the rules (api -> db:5432), but no flow opened it.
        for flags in [
            pkt::ACK,
            pkt::PSH | pkt::ACK,
            pkt::SYN | pkt::ACK,
            pkt::RST,
            pkt::FIN,
        ] {
            let p = seg(from(C2, 41200, C1, 5432), flags, 1, 1);
            assert_eq!(
                verdict(env, "berth_from_ctr", &p.frame()),
                SHOT,
                "flags {flags:#x}"
            );
            assert_eq!(
                verdict(env, "berth_to_ctr", &p.frame()),
                SHOT,
                "flags {flags:#x}"
            );
        }
        assert_eq!(env.counter("ct_no_flow"), before + 10);
        assert!(env.ct_lookup(&ct_key(C2, 41200, C1, 5432)).is_none());
        // Between tasks without groups nothing is judged.
        let p = seg(from(C3, 41201, OTHER, 80), pkt::ACK, 1, 1);
        assert_eq!(verdict(env, "berth_from_ctr", &p.frame()), OK);
    });
}

#[test]
fn policy_rst_marks_closing_only_within_the_window() {
    in_fixture_ns(|env| {
        setup(env);
        let k = ct_key(C2, 41300, C1, 5432);
        let c = from(C2, 41300, C1, 5432);
        let s = from(C1, 5432, C2, 41300);
        verdict(
            env,
            "berth_from_ctr",
            &seg(c.clone(), pkt::SYN, 100, 0).frame(),
        );
        verdict(
            env,
            "berth_from_ctr",
            &seg(s.clone(), pkt::SYN | pkt::ACK, 900, 101).frame(),
        );
        verdict(
            env,
            "berth_from_ctr",
            &seg(c.clone(), pkt::ACK, 101, 901).frame(),
        );
        let closing =
            |env: &Env| env.ct_lookup(&k).unwrap().1.flags & berth_maps::CT_F_CLOSING != 0;
        let oow = env.counter("tcp_out_of_window");
        let spoofed = seg(s.clone(), pkt::RST, 900 + 3_000_000, 0).frame();
        assert_eq!(verdict(env, "berth_to_ctr", &spoofed), OK, "forwarded");
        assert!(!closing(env), "a guessed RST does not close the flow");
        assert_eq!(env.counter("tcp_out_of_window"), oow + 1);
        let rst = seg(s.clone(), pkt::RST, 901, 0).frame();
        assert_eq!(verdict(env, "berth_to_ctr", &rst), OK);
        assert!(closing(env), "an in-window RST does");
    });
}
