//! Security-group decisions through `BPF_PROG_TEST_RUN`: the maps are written
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
use berth_maps::{Counter, SgMember, DIR_EGRESS, DIR_INGRESS, MAX_RULES};

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

/// The bridge port (host end of the veth) of each container, by address.
const PORTS: [(Ipv4Addr, &str); 3] = [(C1, "pc1"), (C2, "pc2"), (C3, "pc3")];

fn port_of(ip: Ipv4Addr) -> u32 {
    PORTS
        .iter()
        .find(|(a, _)| *a == ip)
        .map(|(_, name)| ifindex(name))
        .unwrap_or_else(|| panic!("no port for {ip}"))
}

/// db (C1): 5432 from sg-api only, egress 443 anywhere only.
/// api (C2): 80 from 192.0.2.0/24 and echo requests from anywhere, egress all.
/// C3: a task without groups.
/// Each on a bridge port of its own whose address the daemon learned.
fn setup(env: &mut Env) {
    for (ip, name) in PORTS {
        let port = env.add_port(name);
        env.port_addrs(port, &[ip]);
    }
    env.host_addr(HOST);
    env.publish(&binding(Ipv4Addr::UNSPECIFIED, 8080, C2, 80, Protocol::Tcp));
    env.publish(&binding(
        Ipv4Addr::UNSPECIFIED,
        8432,
        C1,
        5432,
        Protocol::Tcp,
    ));
    env.set_endpoint(C1, DB_TASK, true);
    env.set_endpoint(C2, API_TASK, true);
    env.set_endpoint(C3, OPEN_TASK, false);
    add_member(env, SG_API, C2);
    add_member(env, SG_DB, C1);
    env.set_rules(
        DB_TASK,
        DIR_INGRESS,
        &[tcp(false, 5432, 5432, RulePeer::Group(SG_API))],
    );
    env.set_rules(DB_TASK, DIR_EGRESS, &[tcp(false, 443, 443, any())]);
    env.set_rules(
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
    env.set_rules(API_TASK, DIR_EGRESS, &[tcp(true, 0, 65535, any())]);
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

/// The verdict of `prog`; what a container sends enters on the port of the
/// frame's source (the container's own port: no spoofing).
fn verdict(env: &Env, prog: &str, frame: &[u8]) -> u32 {
    if prog == "berth_from_ctr" {
        let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
        return sent_on(env, port_of(src), frame);
    }
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
        env.set_rules(DB_TASK, DIR_INGRESS, &[]);
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
        env.set_endpoint(C3, OPEN_TASK, true);
        env.set_rules(OPEN_TASK, DIR_EGRESS, &[tcp(true, 0, 65535, any())]);
        env.set_rules(OPEN_TASK, DIR_INGRESS, &[]);
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
        env.set_rules(DB_TASK, DIR_INGRESS, &rules);
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

/// `p`'s datagram (3000 bytes of payload, IP id `id`) in fragments: the
/// first (MF, offset 0), a middle and the last one.
fn fragments(mut p: Packet, id: u16) -> [Vec<u8>; 3] {
    p = p.with_payload_len(3000);
    p.ip_id = id;
    p.frag = 0;
    [
        pkt::fragment(&p, 0, 1480, true),
        pkt::fragment(&p, 1480, 1480, true),
        pkt::fragment(&p, 2960, 1480, false),
    ]
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::udp(src, sport, dst, dport)
}

/// Each fragment through `prog`, in order: the verdicts.
fn verdicts(env: &Env, prog: &str, frags: &[Vec<u8>]) -> Vec<u32> {
    frags.iter().map(|f| verdict(env, prog, f)).collect()
}

#[test]
fn later_fragments_follow_the_verdict_on_their_first_fragment() {
    in_fixture_ns(|env| {
        setup(env);
        // db's egress allows tcp 443 only: a large datagram elsewhere is
        // refused whole.
        let denied = env.counter(Counter::FragDenied);
        let f = fragments(udp(C1, 40000, OTHER, 5000), 0x6001);
        assert_eq!(verdicts(env, "berth_from_ctr", &f), [SHOT; 3]);
        assert_eq!(env.counter(Counter::FragDenied), denied + 2);
        // api's egress allows all: every fragment passes.
        let f = fragments(udp(C2, 40000, OTHER, 5000), 0x6002);
        assert_eq!(verdicts(env, "berth_from_ctr", &f), [OK; 3]);
        // The receiver's ingress rules judge it too: an open task sending
        // to db's udp 9999, which db does not allow.
        let f = fragments(udp(C3, 40000, C1, 9999), 0x6003);
        assert_eq!(verdicts(env, "berth_from_ctr", &f), [SHOT; 3]);
        assert_eq!(verdicts(env, "berth_to_ctr", &f), [SHOT; 3]);
        // sg-api -> db:5432 over tcp, allowed; both veths agree.
        let f = fragments(from(C2, 40001, C1, 5432), 0x6004);
        assert_eq!(verdicts(env, "berth_from_ctr", &f), [OK; 3]);
        assert_eq!(verdicts(env, "berth_to_ctr", &f), [OK; 3]);
        // From outside to db on a port it does not open.
        let f = fragments(udp(OTHER, 40000, C1, 7000), 0x6005);
        assert_eq!(verdicts(env, "berth_to_ctr", &f), [SHOT; 3]);
        // A large ping: echo to api is allowed, to db is not.
        let mut ping = Packet::icmp(OTHER, C2, 8, 0, [0, 7, 0, 1]);
        ping.frag = 0;
        let f = fragments(ping.clone(), 0x6006);
        assert_eq!(verdicts(env, "berth_to_ctr", &f), [OK; 3]);
        ping.dst = C1;
        let f = fragments(ping, 0x6007);
        assert_eq!(verdicts(env, "berth_to_ctr", &f), [SHOT; 3]);
    });
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_only_where_policy_applies() {
    in_fixture_ns(|env| {
        setup(env);
        let no_first = env.counter(Counter::FragNoFirst);
        // The first fragment (which would be allowed) never came.
        let [_, middle, last] = fragments(udp(C2, 40000, OTHER, 5000), 0x6101);
        assert_eq!(verdict(env, "berth_from_ctr", &middle), SHOT);
        assert_eq!(verdict(env, "berth_from_ctr", &last), SHOT);
        let [_, middle, _] = fragments(udp(OTHER, 53, C1, 40000), 0x6102);
        assert_eq!(verdict(env, "berth_to_ctr", &middle), SHOT);
        assert_eq!(env.counter(Counter::FragNoFirst), no_first + 3);
        // Neither end has policy: nothing to judge.
        let [_, middle, last] = fragments(udp(C3, 40000, OTHER, 5000), 0x6103);
        assert_eq!(verdict(env, "berth_from_ctr", &middle), OK);
        assert_eq!(verdict(env, "berth_from_ctr", &last), OK);
        let [_, middle, _] = fragments(udp(OTHER, 53, C3, 40000), 0x6104);
        assert_eq!(verdict(env, "berth_to_ctr", &middle), OK);
        // The same datagram id from another sender has no verdict.
        let f = fragments(udp(C2, 40000, OTHER, 5000), 0x6105);
        assert_eq!(verdict(env, "berth_from_ctr", &f[0]), OK);
        let [_, middle, _] = fragments(udp(C2, 40000, C3, 5000), 0x6105);
        assert_eq!(verdict(env, "berth_from_ctr", &middle), SHOT);
        // A first fragment too short to hold its tcp header hides the
        // flags: refused, and its datagram with it.
        let mut tiny = from(C2, 40002, C1, 5432).with_payload_len(100);
        tiny.ip_id = 0x6106;
        assert_eq!(
            verdict(env, "berth_from_ctr", &pkt::fragment(&tiny, 0, 8, true)),
            SHOT
        );
        assert_eq!(
            verdict(env, "berth_from_ctr", &pkt::fragment(&tiny, 8, 112, false)),
            SHOT
        );
    });
}

/// The verdict of `berth_to_ctr` for `frame` leaving on bridge port `port`.
fn received_on(env: &Env, port: u32, frame: &[u8]) -> u32 {
    let v = env.tc_on("berth_to_ctr", frame, port);
    assert_eq!(v.frame, frame, "berth_to_ctr changed a frame");
    v.code
}

#[test]
fn a_first_fragments_verdict_counts_only_at_the_port_and_direction_that_gave_it() {
    in_fixture_ns(|env| {
        setup(env);
        let (db, api, open) = (port_of(C1), port_of(C2), port_of(C3));
        // A large ping to api, which api's ingress allows at api's port.
        let mut ping = Packet::icmp(OTHER, C2, 8, 0, [0, 7, 0, 1]);
        ping.frag = 0;
        let [first, middle, last] = fragments(ping, 0x6301);
        assert_eq!(received_on(env, api, &first), OK);
        let no_first = env.counter(Counter::FragNoFirst);
        // Its later fragments arriving at another port find no verdict
        // there: db's, and a port of a task without groups.
        assert_eq!(received_on(env, db, &middle), SHOT);
        assert_eq!(received_on(env, open, &last), SHOT);
        assert_eq!(env.counter(Counter::FragNoFirst), no_first + 2);
        // Where it was judged, the datagram goes on whole.
        assert_eq!(received_on(env, api, &middle), OK);
        assert_eq!(received_on(env, api, &last), OK);
        // A datagram api sends to db is judged at api's port (both ends'
        // rules) and again as db receives it (as tracked), each port
        // keeping its own verdict for the later fragments.
        let f = fragments(from(C2, 40003, C1, 5432), 0x6302);
        assert_eq!(sent_on(env, api, &f[0]), OK);
        assert_eq!(received_on(env, db, &f[0]), OK);
        assert_eq!(sent_on(env, api, &f[1]), OK);
        assert_eq!(received_on(env, db, &f[1]), OK);
        assert_eq!(received_on(env, api, &f[2]), SHOT, "into api");
        assert_eq!(env.counter(Counter::FragNoFirst), no_first + 3);
    });
}

#[test]
fn a_published_ports_fragments_pass_the_veth_after_the_uplink_judged_them() {
    in_fixture_ns(|env| {
        setup(env);
        let mut p = from(CLIENT, 40000, HOST, 8080).with_payload_len(3000);
        p.ip_id = 0x6201;
        p.frag = 0;
        // Only a SYN opens a published-port flow (a SYN may carry data).
        p.tcp_flags = pkt::SYN;
        assert_eq!(
            env.tc("berth_ingress", &pkt::fragment(&p, 0, 1480, true))
                .code,
            REDIRECT
        );
        let mut d = p;
        (d.dst, d.dport, d.ttl) = (C2, 80, 63);
        for (off, more) in [(0, true), (1480, true), (2960, false)] {
            let f = pkt::fragment(&d, off, 1480, more);
            assert_eq!(verdict(env, "berth_to_ctr", &f), OK, "offset {off}");
        }
        // api's large reply passes its veth's rules and leaves from there
        // translated, fragment by fragment (past the veth, br_netfilter
        // would reassemble it into more than the uplink's MTU).
        let mut r = from(C2, 80, CLIENT, 40000).with_payload_len(3000);
        (r.ip_id, r.frag, r.tcp_flags) = (0x6202, 0, pkt::ACK);
        let mut out = r.clone();
        (out.src, out.sport, out.ttl) = (HOST, 8080, 63);
        (out.eth_dst, out.eth_src) = (CLIENT_MAC, UPLINK_MAC);
        for (off, more) in [(0, true), (1480, true), (2960, false)] {
            let v = env.tc_on(
                "berth_from_ctr",
                &pkt::fragment(&r, off, 1480, more),
                port_of(C2),
            );
            assert_eq!(v.code, REDIRECT, "offset {off}");
            assert_eq!(
                v.frame,
                pkt::fragment(&out, off, 1480, more),
                "offset {off}"
            );
        }
        // A fragmented datagram of no published-port flow is not touched.
        let mut own = udp(C2, 40000, OTHER, 53).with_payload_len(3000);
        (own.ip_id, own.frag) = (0x6203, 0);
        for (off, more) in [(0, true), (1480, true), (2960, false)] {
            let f = pkt::fragment(&own, off, 1480, more);
            assert_eq!(verdict(env, "berth_from_ctr", &f), OK, "offset {off}");
        }
    });
}

fn icmp_error_about(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, about: &Packet) -> Vec<u8> {
    Packet::icmp_error(src, dst, ty, code, [0; 4], about, 28).frame()
}

#[test]
fn icmp_errors_pass_only_about_a_tracked_flow_of_their_endpoint() {
    in_fixture_ns(|env| {
        setup(env);
        let denied = env.counter(Counter::PolicyDeniedIcmp);
        // db's connection to OTHER:443, then a router's errors about it.
        let out = from(C1, 40000, OTHER, 443);
        assert_eq!(verdict(env, "berth_from_ctr", &out.frame()), OK);
        let router = Ipv4Addr::new(203, 0, 113, 1);
        let frag_needed = icmp_error_about(router, C1, 3, 4, &out);
        assert_eq!(verdict(env, "berth_to_ctr", &frag_needed), OK);
        let ttl_exceeded = icmp_error_about(router, C1, 11, 0, &out);
        assert_eq!(verdict(env, "berth_to_ctr", &ttl_exceeded), OK);
        // About a flow db never opened.
        let never = from(C1, 40001, OTHER, 443);
        let e = icmp_error_about(router, C1, 3, 4, &never);
        assert_eq!(verdict(env, "berth_to_ctr", &e), SHOT);
        // About another endpoint's tracked flow, delivered to db.
        let api = from(C2, 40000, C1, 5432);
        assert_eq!(verdict(env, "berth_from_ctr", &api.frame()), OK);
        let e = icmp_error_about(router, C1, 3, 1, &from(C2, 40000, OTHER, 5432));
        assert_eq!(verdict(env, "berth_to_ctr", &e), SHOT);
        // db's own port unreachable about the tracked api -> db flow.
        let e = icmp_error_about(C1, C2, 3, 3, &api);
        assert_eq!(verdict(env, "berth_from_ctr", &e), OK);
        // ... and about a flow nobody opened.
        let e = icmp_error_about(C1, C2, 3, 3, &from(C2, 40009, C1, 5432));
        assert_eq!(verdict(env, "berth_from_ctr", &e), SHOT);
        // api's port unreachable about a published-port flow (BERTH_NAT).
        let client = from(CLIENT, 40000, HOST, 8080);
        assert_eq!(env.tc("berth_ingress", &client.frame()).code, REDIRECT);
        let mut got = client;
        (got.dst, got.dport, got.ttl) = (C2, 80, 63);
        let e = icmp_error_about(C2, CLIENT, 3, 3, &got);
        assert_eq!(verdict(env, "berth_from_ctr", &e), OK);
        // Rules never open an error: api's egress allows all, yet its
        // unreachable about nothing stays in.
        let e = icmp_error_about(C2, OTHER, 3, 3, &from(OTHER, 40000, C2, 9));
        assert_eq!(verdict(env, "berth_from_ctr", &e), SHOT);
        assert_eq!(env.counter(Counter::PolicyDeniedIcmp), denied + 4);
    });
}

#[test]
fn a_time_exceeded_about_a_tracked_ping_reaches_the_pinger() {
    in_fixture_ns(|env| {
        setup(env);
        let denied = env.counter(Counter::PolicyDeniedIcmp);
        // api pings OTHER (its egress allows all): an echo flow, id 7.
        let ping = Packet::icmp(C2, OTHER, 8, 0, [0, 7, 0, 1]);
        assert_eq!(verdict(env, "berth_from_ctr", &ping.frame()), OK);
        let router = Ipv4Addr::new(198, 51, 100, 1);
        // A hop on the way says time exceeded, quoting the request.
        let e = icmp_error_about(router, C2, 11, 0, &ping);
        assert_eq!(verdict(env, "berth_to_ctr", &e), OK);
        // OTHER pings api (its ingress opens echo), and a hop drops api's
        // reply: the error quotes the reverse of that tracked flow.
        let ping_in = Packet::icmp(OTHER, C2, 8, 0, [0, 9, 0, 1]);
        assert_eq!(verdict(env, "berth_to_ctr", &ping_in.frame()), OK);
        let reply = Packet::icmp(C2, OTHER, 0, 0, [0, 9, 0, 1]);
        let e = icmp_error_about(router, C2, 11, 0, &reply);
        assert_eq!(verdict(env, "berth_to_ctr", &e), OK);
        // Another identifier: no such ping.
        let other = Packet::icmp(C2, OTHER, 8, 0, [0, 8, 0, 1]);
        let e = icmp_error_about(router, C2, 11, 0, &other);
        assert_eq!(verdict(env, "berth_to_ctr", &e), SHOT);
        // A quoted ICMP that is not echo has no flow.
        let ts = Packet::icmp(C2, OTHER, 13, 0, [0, 7, 0, 1]);
        let e = icmp_error_about(router, C2, 11, 0, &ts);
        assert_eq!(verdict(env, "berth_to_ctr", &e), SHOT);
        assert_eq!(env.counter(Counter::PolicyDeniedIcmp), denied + 2);
    });
}

fn icmp_rule(ty: Option<u8>, code: Option<u8>, peer: RulePeer) -> PolicyRule {
    PolicyRule {
        proto: Some(RuleProto::Icmp),
        ports: (0, 0),
        icmp_type: ty,
        icmp_code: code,
        peer,
    }
}

#[test]
fn icmp_other_than_echo_and_errors_is_judged_per_packet_by_the_rules() {
    in_fixture_ns(|env| {
        setup(env);
        let (ing, egr) = (
            env.counter(Counter::PolicyDeniedIngress),
            env.counter(Counter::PolicyDeniedEgress),
        );
        let ts_to = |dst| Packet::icmp(OTHER, dst, 13, 0, [0, 1, 0, 1]).frame();
        // api's ingress opens echo only; db's opens no ICMP at all.
        assert_eq!(verdict(env, "berth_to_ctr", &ts_to(C2)), SHOT);
        assert_eq!(verdict(env, "berth_to_ctr", &ts_to(C1)), SHOT);
        assert_eq!(verdict(env, "berth_to_ctr", &ts_to(C3)), OK, "no policy");
        // A timestamp rule for api, and `all` from api's group for db.
        env.set_rules(
            API_TASK,
            DIR_INGRESS,
            &[icmp_rule(Some(13), Some(0), any())],
        );
        env.set_rules(
            DB_TASK,
            DIR_INGRESS,
            &[tcp(true, 0, 65535, RulePeer::Group(SG_API))],
        );
        assert_eq!(verdict(env, "berth_to_ctr", &ts_to(C2)), OK, "type 13 rule");
        let code1 = Packet::icmp(OTHER, C2, 13, 1, [0, 1, 0, 1]).frame();
        assert_eq!(verdict(env, "berth_to_ctr", &code1), SHOT, "code 0 only");
        assert_eq!(verdict(env, "berth_to_ctr", &ts_to(C1)), SHOT, "not sg-api");
        // api -> db: api's egress (all) and db's ingress (all from sg-api).
        let east = Packet::icmp(C2, C1, 13, 0, [0, 1, 0, 1]).frame();
        assert_eq!(verdict(env, "berth_from_ctr", &east), OK);
        // Nothing is tracked: db's answer is judged by db's egress (443
        // only) and api's ingress (type 13 only) and refused.
        let answer = Packet::icmp(C1, C2, 14, 0, [0, 1, 0, 1]).frame();
        assert_eq!(verdict(env, "berth_from_ctr", &answer), SHOT);
        env.set_rules(DB_TASK, DIR_EGRESS, &[icmp_rule(None, None, any())]);
        assert_eq!(
            verdict(env, "berth_from_ctr", &answer),
            SHOT,
            "api's ingress"
        );
        env.set_rules(
            API_TASK,
            DIR_INGRESS,
            &[icmp_rule(Some(14), None, RulePeer::Group(SG_DB))],
        );
        assert_eq!(verdict(env, "berth_from_ctr", &answer), OK);
        // A redirect is no error berth tracks: db's egress rules decide.
        let redirect = icmp_error_about(C1, OTHER, 5, 1, &from(OTHER, 1, C1, 2));
        assert_eq!(verdict(env, "berth_from_ctr", &redirect), OK);
        assert_eq!(env.counter(Counter::PolicyDeniedIngress), ing + 5);
        assert_eq!(env.counter(Counter::PolicyDeniedEgress), egr + 1);
    });
}

/// The verdict of `berth_from_ctr` for `frame` sent on bridge port `port`.
fn sent_on(env: &Env, port: u32, frame: &[u8]) -> u32 {
    let v = env.tc_on("berth_from_ctr", frame, port);
    assert_eq!(v.frame, frame, "berth_from_ctr changed a frame");
    v.code
}

fn spoofed_drops(env: &Env) -> u64 {
    env.counter(Counter::ContainerSpoofedSource)
}

#[test]
fn a_container_cannot_borrow_a_group_members_address() {
    in_fixture_ns(|env| {
        setup(env);
        // C3 (no groups) claims api's address to reach db, which admits sg-api.
        let borrowed = from(C2, 40000, C1, 5432).frame();
        assert_eq!(sent_on(env, port_of(C3), &borrowed), SHOT);
        assert_eq!(spoofed_drops(env), 1);
        // The same packet from api's own port goes through.
        assert_eq!(sent_on(env, port_of(C2), &borrowed), OK);
        // Nor can C3 pose as api towards a task without groups, or as db
        // towards anyone: the claimed source has policy.
        assert_eq!(
            sent_on(env, port_of(C3), &from(C2, 40001, OTHER, 80).frame()),
            SHOT
        );
        assert_eq!(
            sent_on(env, port_of(C3), &from(C1, 40002, C3, 80).frame()),
            SHOT
        );
        // Fragments and ICMP errors carry the source too.
        let mut frag = Packet::udp(C2, 5000, C1, 5432).with_payload_len(100);
        frag.frag = pkt::IP_MF;
        assert_eq!(sent_on(env, port_of(C3), &frag.frame()), SHOT);
        let quoted = Packet::tcp(C1, 5432, C2, 40000);
        let err = Packet::icmp_error(C2, C1, 3, 3, [0; 4], &quoted, 28);
        assert_eq!(sent_on(env, port_of(C3), &err.frame()), SHOT);
        assert_eq!(spoofed_drops(env), 5);
    });
}

#[test]
fn a_container_with_policy_sends_only_from_its_own_address() {
    in_fixture_ns(|env| {
        setup(env);
        // db's egress allows 443 anywhere; an address nobody owns does not
        // let it skip that, or pose as a stranger to anyone.
        let stranger = Ipv4Addr::new(172, 17, 9, 9);
        assert_eq!(
            sent_on(env, port_of(C1), &from(stranger, 40000, OTHER, 443).frame()),
            SHOT
        );
        assert_eq!(
            sent_on(env, port_of(C1), &from(stranger, 40001, OTHER, 22).frame()),
            SHOT
        );
        assert_eq!(
            sent_on(env, port_of(C1), &from(C1, 40002, OTHER, 443).frame()),
            OK
        );
        // A receiver with policy is protected from a sender without.
        assert_eq!(
            sent_on(env, port_of(C3), &from(stranger, 40003, C2, 80).frame()),
            SHOT
        );
        assert_eq!(spoofed_drops(env), 3);
    });
}

#[test]
fn no_source_check_without_policy_on_either_end() {
    in_fixture_ns(|env| {
        setup(env);
        // C3 and the outside world have no groups: as with Docker, any
        // source goes (a container routing for others keeps working).
        let stranger = Ipv4Addr::new(172, 17, 9, 9);
        for src in [stranger, OTHER, C3] {
            assert_eq!(
                sent_on(env, port_of(C3), &from(src, 40000, OTHER, 25).frame()),
                OK,
                "from {src}"
            );
        }
        assert_eq!(
            sent_on(env, port_of(C1), &from(stranger, 40000, OTHER, 25).frame()),
            SHOT,
            "db's port has policy, whatever it claims"
        );
        assert_eq!(spoofed_drops(env), 1);
        // ARP is no IPv4 packet: the source check leaves it alone (its own
        // address C3 passes). Until session 9, C3 could also claim the
        // address of api (C2, which has policy) here; such a claim is now
        // refused on every port (`policy_bypass_fixtures::arp_from_any_
        // container_never_claims_the_hosts_or_a_policy_containers_address`).
        assert_eq!(
            sent_on(env, port_of(C3), &pkt::arp_request(C3, BRIDGE_IP)),
            OK
        );
        assert_eq!(
            sent_on(env, port_of(C3), &pkt::arp_request(C2, BRIDGE_IP)),
            SHOT
        );
        assert_eq!(spoofed_drops(env), 1, "ARP is not counted as a source");
    });
}

#[test]
fn a_port_whose_addresses_are_unknown_owns_none() {
    in_fixture_ns(|env| {
        setup(env);
        let unknown = env.add_port("pc9");
        // Not even a real address of a task with policy...
        assert_eq!(
            sent_on(env, unknown, &from(C2, 40000, C1, 5432).frame()),
            SHOT
        );
        // ...while nobody involved has policy, it is not judged.
        assert_eq!(
            sent_on(env, unknown, &from(C3, 40001, OTHER, 25).frame()),
            OK
        );
        // Learned later: its own address is its own.
        env.port_addrs(unknown, &[Ipv4Addr::new(172, 17, 0, 9), C2]);
        assert_eq!(
            sent_on(env, unknown, &from(C2, 40002, C1, 5432).frame()),
            OK
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
        let syn_ack = seg(s, pkt::SYN | pkt::ACK, 900, 101).frame();
        assert_eq!(verdict(env, "berth_from_ctr", &syn_ack), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &syn_ack), OK);
        assert_eq!(
            env.ct_lookup(&k).map(|e| e.0),
            Some(false),
            "SYN-ACK: still"
        );
        let ack = seg(c, pkt::ACK, 101, 901).frame();
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
        let before = env.counter(Counter::CtNoFlow);
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
        assert_eq!(env.counter(Counter::CtNoFlow), before + 10);
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
        verdict(env, "berth_from_ctr", &seg(c, pkt::ACK, 101, 901).frame());
        let closing =
            |env: &Env| env.ct_lookup(&k).unwrap().1.flags & berth_maps::CT_F_CLOSING != 0;
        let oow = env.counter(Counter::TcpOutOfWindow);
        let spoofed = seg(s.clone(), pkt::RST, 900 + 3_000_000, 0).frame();
        assert_eq!(verdict(env, "berth_to_ctr", &spoofed), OK, "forwarded");
        assert!(!closing(env), "a guessed RST does not close the flow");
        assert_eq!(env.counter(Counter::TcpOutOfWindow), oow + 1);
        let rst = seg(s, pkt::RST, 901, 0).frame();
        assert_eq!(verdict(env, "berth_to_ctr", &rst), OK);
        assert!(closing(env), "an in-window RST does");
    });
}

/// A flow the previous release tracked (16-byte `CtEntry`, layout 1), as
/// the upgrade converts it into `BERTH_CT`: its mid-stream segments, which
/// would be dropped as belonging to no flow, pass both ways; its RST is
/// forwarded but not believed (no sequence state is known).
#[test]
fn a_flow_converted_from_layout_1_keeps_passing_mid_stream() {
    use berth::datapath::pins::migrate;
    use berth_maps::{CtEntry, FlowKey, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_REPLIED};
    in_fixture_ns(|env| {
        setup(env);
        let mut data = from(C2, 40100, C1, 5432);
        (data.tcp_flags, data.tcp_seq, data.tcp_ack) = (pkt::PSH | pkt::ACK, 123_456, 654_321);
        data.payload = b"SELECT 1".to_vec();
        let no_flow = env.counter(Counter::CtNoFlow);
        assert_eq!(verdict(env, "berth_from_ctr", &data.frame()), SHOT);
        assert_eq!(env.counter(Counter::CtNoFlow), no_flow + 1);

        let key = FlowKey {
            src_addr_be: u32::from_ne_bytes(C2.octets()),
            dst_addr_be: u32::from_ne_bytes(C1.octets()),
            src_port_be: 40100u16.to_be(),
            dst_port_be: 5432u16.to_be(),
            proto: pkt::TCP,
            _pad: [0; 3],
        };
        let v1 = migrate::CtEntryV1 {
            last_seen_ns: 1,
            flags: migrate::F_REPLIED_V1,
            _pad: [0; 7],
        };
        let bytes = migrate::ct_entry_v1_to_v2(&[], &migrate::ct_v1_bytes(&v1));
        let entry: CtEntry = bytemuck::pod_read_unaligned(&bytes);
        HashMap::<&mut MapData, FlowKey, CtEntry>::try_from(env.ebpf.map_mut("BERTH_CT").unwrap())
            .unwrap()
            .insert(key, entry, 0)
            .unwrap();

        assert_eq!(verdict(env, "berth_from_ctr", &data.frame()), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &data.frame()), OK);
        let mut answer = from(C1, 5432, C2, 40100);
        (answer.tcp_flags, answer.tcp_seq, answer.tcp_ack) = (pkt::ACK, 654_321, 123_464);
        assert_eq!(verdict(env, "berth_from_ctr", &answer.frame()), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &answer.frame()), OK);
        let oow = env.counter(Counter::TcpOutOfWindow);
        let mut rst = answer;
        rst.tcp_flags = pkt::RST;
        assert_eq!(verdict(env, "berth_from_ctr", &rst.frame()), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &rst.frame()), OK);

        let (established, e) = env.ct_lookup(&key).expect("still tracked");
        assert!(established);
        assert!(e.last_seen_ns > 1, "refreshed by the new programs");
        assert_eq!(e.flags, CT_F_ESTABLISHED | CT_F_REPLIED);
        assert_eq!(e.flags & CT_F_CLOSING, 0, "the RST is not believed");
        assert_eq!(env.counter(Counter::TcpOutOfWindow), oow + 2);
        assert_eq!(env.counter(Counter::CtNoFlow), no_flow + 1);
    });
}

// ------------------------------------------------ datapath log (berth_log)

/// Every datapath log record waiting in aya-log's ring, raw.
fn log_records(env: &mut Env) -> Vec<Vec<u8>> {
    let mut ring =
        aya::maps::RingBuf::try_from(env.ebpf.map_mut(berth_maps::DP_LOG_MAP).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(item.to_vec());
    }
    out
}

fn dp_log(env: &mut Env, on: bool) {
    let mut m: aya::maps::Array<&mut MapData, u64> =
        aya::maps::Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    let level = if on {
        berth_maps::DP_LOG_DEBUG
    } else {
        berth_maps::DP_LOG_OFF
    };
    m.set(berth_maps::CONFIG_DP_LOG, level, 0).unwrap();
}

fn has(record: &[u8], part: &[u8]) -> bool {
    record.windows(part.len()).any(|w| w == part)
}

/// The one record a refusal wrote: its message, and each address as aya-log
/// carries an `{:i}` argument (the address as a host-order u32).
fn one_line(env: &mut Env, message: &str, addrs: &[Ipv4Addr]) {
    let recs = log_records(env);
    assert_eq!(recs.len(), 1, "one line per refusal");
    let r = &recs[0];
    assert!(
        has(r, message.as_bytes()),
        "{message:?} not in {:?}",
        String::from_utf8_lossy(r)
    );
    for a in addrs {
        assert!(has(r, &u32::from(*a).to_ne_bytes()), "{a} not in the line");
    }
    assert!(
        r.len() <= berth_maps::DP_LOG_RECORD_MAX as usize,
        "a {}-byte record: the ring is sized for {} at most",
        r.len(),
        berth_maps::DP_LOG_RECORD_MAX
    );
}

#[test]
fn container_veth_refusals_are_written_by_the_tail_called_log_program() {
    in_fixture_ns(|env| {
        setup(env);
        // Off: refused, nothing written.
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 40002, C1, 5432).frame()),
            SHOT
        );
        assert!(log_records(env).is_empty(), "the log is off by default");

        dp_log(env, true);
        // East-west, by the receiver's ingress rules (db admits sg-api only).
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 40003, C1, 5432).frame()),
            SHOT
        );
        one_line(env, "policy refused a new flow: ", &[C3, C1]);
        // By the sender's egress rules (db may open 443 only).
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C1, 40004, OTHER, 80).frame()),
            SHOT
        );
        one_line(
            env,
            "policy refused a new flow by its sender's egress rules: ",
            &[C1, OTHER],
        );
        // What a container receives from the host, at its veth's egress.
        assert_eq!(
            verdict(
                env,
                "berth_to_ctr",
                &from(BRIDGE_IP, 40005, C1, 5432).frame()
            ),
            SHOT
        );
        one_line(env, "policy refused a new flow: ", &[BRIDGE_IP, C1]);
        // A spoofed source: C3 claims api's address on its own port.
        let spoofed = from(C2, 40006, C1, 5432).frame();
        assert_eq!(sent_on(env, port_of(C3), &spoofed), SHOT);
        one_line(env, "spoofed source dropped on container port ", &[C2, C1]);
        // An allowed flow writes nothing.
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C2, 40007, C1, 5432).frame()),
            OK
        );
        assert!(log_records(env).is_empty());

        // Without its program the refusal stands and the lost line is counted.
        let lost = env.counter(Counter::DatapathLogLimited);
        env.clear_tail(berth_maps::tail::LOG);
        assert_eq!(
            verdict(env, "berth_from_ctr", &from(C3, 40008, C1, 5432).frame()),
            SHOT
        );
        assert!(log_records(env).is_empty());
        assert_eq!(env.counter(Counter::DatapathLogLimited), lost + 1);
    });
}

/// Refused first fragments are remembered apart from allowed ones
/// (`BERTH_FRAGS_DENY`, `frag.rs`): more of them than that table holds,
/// from spoofed sources to a port api's groups refuse, never evict the
/// verdict an allowed datagram's first fragment left at api's port, whose
/// later fragments then still pass (they used to find no verdict:
/// `frag_no_first`).
#[test]
fn a_flood_of_refused_first_fragments_never_evicts_an_allowed_verdict() {
    in_fixture_ns(|env| {
        setup(env);
        let api = port_of(C2);
        // A large ping to api, which api's ingress allows.
        let mut ping = Packet::icmp(OTHER, C2, 8, 0, [0, 7, 0, 1]);
        ping.frag = 0;
        let [first, middle, last] = fragments(ping, 0x6401);
        assert_eq!(received_on(env, api, &first), OK);
        let n = berth_maps::FRAGS_CAPACITY.max(berth_maps::FRAGS_DENY_CAPACITY) + 256;
        let refused = env.counter(Counter::PolicyDeniedIngress);
        let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
        for i in 0..n {
            let src = Ipv4Addr::from(base + i);
            let [f, ..] = fragments(udp(src, 1024 + (i % 60000) as u16, C2, 7000), i as u16);
            assert_eq!(
                received_on(env, api, &f),
                SHOT,
                "refused first fragment {i}"
            );
        }
        assert_eq!(
            env.counter(Counter::PolicyDeniedIngress),
            refused + u64::from(n)
        );
        let no_first = env.counter(Counter::FragNoFirst);
        assert_eq!(received_on(env, api, &middle), OK, "middle after the flood");
        assert_eq!(received_on(env, api, &last), OK, "last after the flood");
        assert_eq!(env.counter(Counter::FragNoFirst), no_first);
        // The newest refusal still holds for its datagram.
        let denied = env.counter(Counter::FragDenied);
        let i = n - 1;
        let [_, later, _] = fragments(
            udp(
                Ipv4Addr::from(base + i),
                1024 + (i % 60000) as u16,
                C2,
                7000,
            ),
            i as u16,
        );
        assert_eq!(received_on(env, api, &later), SHOT);
        assert_eq!(env.counter(Counter::FragDenied), denied + 1);
    });
}
