//! The datapath log's IPv6 lines at an uplink and the bridge (`dplog6.rs`):
//! each refusal IPv4 writes a line for (the security groups, a loopback or
//! host source, a clash with no free port, a full table) writes one line
//! with IPv4's wording, through `berth_log` (tail-called: the IPv6
//! programs have no stack for it), naming the IPv6 addresses (aya-log
//! carries an `{:i}` of 16 bytes as the address's octets) and only while
//! the log is on; without `berth_log` the refusal stands and the lost
//! line is counted. The veths' IPv6 lines: `policy6_fixtures`.
use std::net::Ipv6Addr;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::{
    nat_remap_port6, Counter, FlowKey6, NatEntry6, CONFIG_DP_LOG, CONFIG_MAP, CONFIG_NO_POLICY,
    DP_LOG_DEBUG, DP_LOG_MAP, DP_LOG_RECORD_MAX, NAT6_CAPACITY, NAT6_MAP, NAT_REMAP_TRIES,
};

use crate::{
    ipv6::publish6,
    nat66::{key, seg, setup, tcp, udp, C1_6, TC_SHOT},
    run::TC_ACT_REDIRECT,
};

fn config(env: &mut Env, index: u32, value: u64) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut(CONFIG_MAP).unwrap()).unwrap();
    m.set(index, value, 0).unwrap();
}

fn records(env: &mut Env) -> Vec<Vec<u8>> {
    let mut ring = RingBuf::try_from(env.ebpf.map_mut(DP_LOG_MAP).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(item.to_vec());
    }
    out
}

fn has(record: &[u8], part: &[u8]) -> bool {
    record.windows(part.len()).any(|w| w == part)
}

/// The one line a refusal wrote: it holds `message`, each of `addrs`
/// (as 16 octets) and each of `numbers` (aya-log's u32 arguments), and
/// none of `not`.
fn one_line(env: &mut Env, message: &str, addrs: &[Ipv6Addr], numbers: &[u32], not: &[Ipv6Addr]) {
    let recs = records(env);
    assert_eq!(recs.len(), 1, "one line per refusal: {message:?}");
    let r = &recs[0];
    let text = String::from_utf8_lossy(r);
    assert!(has(r, message.as_bytes()), "{message:?} not in {text:?}");
    for a in addrs {
        assert!(has(r, &a.octets()), "{a} not in {text:?}");
    }
    for n in numbers {
        assert!(has(r, &n.to_ne_bytes()), "{n} not in {text:?}");
    }
    for a in not {
        assert!(!has(r, &a.octets()), "{a} in {text:?}");
    }
    assert!(
        r.len() <= DP_LOG_RECORD_MAX as usize,
        "a {}-byte record",
        r.len()
    );
}

/// The container of `nat66::setup` has policy and no IPv6 rule.
#[test]
fn ipv6_refusals_at_an_uplink_write_ipv4s_lines_with_ipv6_addresses() {
    in_fixture_ns(|env| {
        setup(env);
        config(env, CONFIG_NO_POLICY, 0);
        env.set_endpoint6(C1_6, 7, true);
        let syn = tcp(CLIENT6, 40000, HOST6, 8080, 64, pkt::SYN);
        assert_eq!(env.tc("berth_ingress", &syn).code, TC_SHOT);
        assert!(records(env).is_empty(), "the log is off by default");

        config(env, CONFIG_DP_LOG, DP_LOG_DEBUG);
        assert_eq!(env.tc("berth_ingress", &syn).code, TC_SHOT);
        // The container and its port, as IPv4's line names them.
        one_line(
            env,
            "policy refused a new flow: [",
            &[CLIENT6, C1_6],
            &[40000, 80, 6],
            &[HOST6],
        );
        let from_host = tcp(HOST6, 40001, HOST6, 8080, 64, pkt::SYN);
        assert_eq!(env.tc("berth_ingress", &from_host).code, TC_SHOT);
        one_line(
            env,
            "spoofed source dropped on an uplink: ",
            &[HOST6],
            &[],
            &[],
        );
        let from_lo = tcp(Ipv6Addr::LOCALHOST, 40002, HOST6, 8080, 64, pkt::SYN);
        assert_eq!(env.tc("berth_ingress", &from_lo).code, TC_SHOT);
        one_line(
            env,
            "martian dropped on an uplink: ",
            &[Ipv6Addr::LOCALHOST, HOST6],
            &[],
            &[],
        );

        // Without its program the refusal stands; the line is counted lost.
        let lost = env.counter(Counter::DatapathLogLimited);
        env.clear_tail(berth_maps::tail::LOG);
        assert_eq!(env.tc("berth_ingress", &syn).code, TC_SHOT);
        assert!(records(env).is_empty());
        assert_eq!(env.counter(Counter::DatapathLogLimited), lost + 1);
    });
}

#[test]
fn an_ipv6_clash_with_no_free_port_writes_the_clash_line() {
    in_fixture_ns(|env| {
        setup(env);
        publish6(env, Ipv6Addr::UNSPECIFIED, 8081, Protocol::Tcp, 80);
        config(env, CONFIG_DP_LOG, DP_LOG_DEBUG);
        let first = tcp(CLIENT6, 40000, HOST6, 8080, 64, pkt::SYN);
        assert_eq!(env.tc("berth_ingress", &first).code, TC_ACT_REDIRECT);
        assert!(records(env).is_empty(), "a flow that opens writes nothing");
        // Every port the remap would try is some other flow's.
        {
            let mut m: HashMap<&mut MapData, FlowKey6, NatEntry6> =
                HashMap::try_from(env.ebpf.map_mut(NAT6_MAP).unwrap()).unwrap();
            for i in 0..NAT_REMAP_TRIES {
                let port = nat_remap_port6(&CLIENT6.octets(), 40000, 8081, i);
                m.insert(key(pkt::TCP, 80, port), NatEntry6::default(), 0)
                    .unwrap();
            }
        }
        let clash = tcp(CLIENT6, 40000, HOST6, 8081, 64, pkt::SYN);
        assert_eq!(env.tc("berth_ingress", &clash).code, TC_SHOT);
        assert_eq!(env.counter(Counter::NatPortRemapFailed), 1);
        one_line(
            env,
            "flow clash: [",
            &[CLIENT6],
            &[40000, 8081],
            &[HOST6, C1_6],
        );
    });
}

/// `BERTH_NAT6` (established flows never evict) full of another client's
/// flows.
fn fill_established6(env: &mut Env) {
    let mut m: HashMap<&mut MapData, FlowKey6, NatEntry6> =
        HashMap::try_from(env.ebpf.map_mut(NAT6_MAP).unwrap()).unwrap();
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77).octets();
    for i in 0..NAT6_CAPACITY {
        let mut k = key(pkt::UDP, 9, 0);
        k.dst_addr = other;
        k.dst_addr[12..].copy_from_slice(&i.to_be_bytes());
        m.insert(k, NatEntry6::default(), 0).unwrap();
    }
}

/// A full table, at the bridge (a UDP flow's first reply) and at the
/// uplink (a TCP handshake's last ACK): both lines name the client.
#[test]
fn ipv6_flows_refused_for_a_full_table_write_the_full_table_line() {
    in_fixture_ns(|env| {
        setup(env);
        fill_established6(env);
        config(env, CONFIG_DP_LOG, DP_LOG_DEBUG);
        let first = udp(CLIENT6, 5353, HOST6, 8053, 64);
        assert_eq!(env.tc("berth_ingress", &first).code, TC_ACT_REDIRECT);
        let reply = udp(C1_6, 53, CLIENT6, 5353, 64);
        assert_eq!(env.tc("berth_reply", &reply).code, TC_SHOT);
        one_line(
            env,
            "flow table full: a published-port flow of ",
            &[CLIENT6],
            &[],
            &[C1_6],
        );

        let (c, s) = (0x1000_0000, 0x3000_0000);
        let syn = seg(CLIENT6, 42000, HOST6, 8080, 64, pkt::SYN, (c, 0));
        assert_eq!(env.tc("berth_ingress", &syn).code, TC_ACT_REDIRECT);
        let synack = seg(
            C1_6,
            80,
            CLIENT6,
            42000,
            64,
            pkt::SYN | pkt::ACK,
            (s, c + 1),
        );
        assert_eq!(env.tc("berth_reply", &synack).code, TC_ACT_REDIRECT);
        let ack = seg(CLIENT6, 42000, HOST6, 8080, 64, pkt::ACK, (c + 1, s + 1));
        assert_eq!(env.tc("berth_ingress", &ack).code, TC_SHOT);
        one_line(
            env,
            "flow table full: a published-port flow of ",
            &[CLIENT6],
            &[],
            &[C1_6],
        );
    });
}
