//! Flow-log counting through the real programs: each packet of a tracked
//! flow adds to that flow's counters and no other's; a refused new flow
//! writes exactly one ring record, with the fields the daemon logs; a full
//! ring counts a loss and changes no packet's verdict or bytes.
use std::net::Ipv4Addr;

use aya::maps::{Array, MapData, RingBuf};
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::{
    Counter, FlowEvent, FlowKey, NatEntry, CONFIG_FLOW_LOG, FLOW_EV_REJECT_POLICY, PROTO_TCP,
    PROTO_UDP,
};

use crate::{reply::from_container, run::*, table::*};

fn key(c_port: u16, client_port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr_be: u32::from_ne_bytes(C1.octets()),
        dst_addr_be: u32::from_ne_bytes(CLIENT.octets()),
        src_port_be: c_port.to_be(),
        dst_port_be: client_port.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn entry(env: &Env, k: &FlowKey) -> NatEntry {
    env.map_get("BERTH_NAT", k)
        .or_else(|| env.map_get("BERTH_NAT_NEW", k))
        .expect("the flow is tracked")
}

/// IPv4 total length of a frame (Ethernet header off).
fn ip_len(p: &Packet) -> u64 {
    p.frame().len() as u64 - 14
}

fn flow_log_on(env: &mut Env, on: bool) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(CONFIG_FLOW_LOG, u64::from(on), 0).unwrap();
}

fn ring_records(env: &mut Env) -> Vec<FlowEvent> {
    let mut ring = RingBuf::try_from(env.ebpf.map_mut("BERTH_FLOW_LOG").unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<FlowEvent>(), "one record per item");
        out.push(bytemuck::pod_read_unaligned(&item));
    }
    out
}

#[test]
fn each_packet_counts_in_its_own_flow_and_direction_only() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let mut a = Packet::udp(CLIENT, 5000, HOST, 8053);
        let mut sent = 0;
        for len in [10, 200, 1] {
            a.payload = vec![b'a'; len];
            assert_eq!(env.tc("berth_ingress", &a.frame()).code, TC_ACT_REDIRECT);
            sent += ip_len(&a);
        }
        let b = Packet::udp(CLIENT, 5001, HOST, 8053);
        assert_eq!(env.tc("berth_ingress", &b.frame()).code, TC_ACT_REDIRECT);
        let mut reply = from_container(C1, 53, CLIENT, 5000, pkt::UDP);
        let mut replied = 0;
        for len in [7, 70] {
            reply.payload = vec![b'r'; len];
            assert_eq!(env.tc("berth_reply", &reply.frame()).code, TC_ACT_REDIRECT);
            replied += ip_len(&reply);
        }
        let e = entry(env, &key(53, 5000, PROTO_UDP));
        assert_eq!((e.packets, e.bytes), ([3, 2], [sent, replied]));
        assert_eq!(e.tcp_flags, [0, 0], "no TCP bits on UDP");
        assert!(e.opened_ns != 0 && e.opened_ns <= e.last_seen_ns, "{e:?}");
        assert_ne!(e.ifindex, 0, "the uplink it came in by");
        let other = entry(env, &key(53, 5001, PROTO_UDP));
        assert_eq!((other.packets, other.bytes), ([1, 0], [ip_len(&b), 0]));
    });
}

#[test]
fn tcp_flows_keep_the_fin_syn_and_rst_bits_each_way() {
    for xdp in [false, true] {
        in_fixture_ns(move |env| {
            publish_defaults(env);
            let mut c = Packet::tcp(CLIENT, 42000, HOST, 8080);
            let ingress = |env: &Env, p: &Packet| {
                if xdp {
                    assert_eq!(env.xdp("berth_xdp", &p.frame()).code, XDP_PASS);
                } else {
                    assert_eq!(env.tc("berth_ingress", &p.frame()).code, TC_ACT_REDIRECT);
                }
            };
            c.tcp_flags = pkt::SYN;
            c.tcp_seq = 1000;
            ingress(env, &c);
            let mut s = from_container(C1, 80, CLIENT, 42000, pkt::TCP);
            (s.tcp_flags, s.tcp_seq, s.tcp_ack) = (pkt::SYN | pkt::ACK, 5000, 1001);
            assert_eq!(env.tc("berth_reply", &s.frame()).code, TC_ACT_REDIRECT);
            (c.tcp_flags, c.tcp_seq, c.tcp_ack) = (pkt::ACK, 1001, 5001);
            ingress(env, &c);
            (c.tcp_flags, c.tcp_seq) = (pkt::FIN | pkt::ACK, 1001);
            ingress(env, &c);
            let e = entry(env, &key(80, 42000, PROTO_TCP));
            assert_eq!(e.packets, [3, 1], "xdp {xdp}");
            assert_eq!(e.tcp_flags, [0x02 | 0x01, 0x02], "xdp {xdp}");
        });
    }
}

/// C1 gets a security group with no rules: every new flow to it is refused.
fn refuse_everything_to_c1(env: &mut Env) {
    publish_defaults(env);
    env.set_endpoint(C1, 1, true);
}

#[test]
fn a_refused_flow_writes_one_record_only_while_a_flow_log_reads() {
    in_fixture_ns(|env| {
        refuse_everything_to_c1(env);
        let syn = Packet::tcp(CLIENT, 40000, HOST, 8080);
        assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_SHOT);
        assert!(ring_records(env).is_empty(), "no flow log, no record");

        flow_log_on(env, true);
        assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_SHOT);
        let recs = ring_records(env);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = recs[0];
        let be = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        assert_eq!(
            (r.src_addr_be, r.dst_addr_be, r.ctr_addr_be),
            (be(CLIENT), be(HOST), be(C1))
        );
        assert_eq!(
            (
                u16::from_be(r.src_port_be),
                u16::from_be(r.dst_port_be),
                u16::from_be(r.ctr_port_be)
            ),
            (40000, 8080, 80)
        );
        assert_eq!((r.proto, r.kind), (PROTO_TCP, FLOW_EV_REJECT_POLICY));
        assert_eq!(u64::from(r.ip_len), ip_len(&syn));
        assert_eq!(r.tcp_flags, pkt::SYN);
        assert_ne!(r.ifindex, 0);
        assert_ne!(r.ktime_ns, 0);
        assert!(
            env.nat_entries().is_empty(),
            "a refused flow is not tracked"
        );
        assert_eq!(env.counter(Counter::FlowLogLost), 0);
    });
}

#[test]
fn a_full_ring_counts_a_loss_and_changes_no_verdict() {
    in_fixture_ns(|env| {
        refuse_everything_to_c1(env);
        flow_log_on(env, true);
        let mut syn = Packet::tcp(CLIENT, 40000, HOST, 8080);
        // Nobody reads: refusals fill the ring until one finds no room.
        let mut written = 0u32;
        while env.counter(Counter::FlowLogLost) == 0 {
            syn.sport = 1024 + (written % 60000) as u16;
            assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_SHOT);
            written += 1;
            assert!(written < 100_000, "the ring never filled");
        }
        let before = env.counter(Counter::FlowLogLost);
        assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_SHOT);
        assert_eq!(env.counter(Counter::FlowLogLost), before + 1);
        // A flow to a container without policy is forwarded as always.
        let ok = Packet::tcp(CLIENT, 41000, HOST, 8090);
        let v = env.tc("berth_ingress", &ok.frame());
        assert_eq!(v.code, TC_ACT_REDIRECT);
        let mut want = ok;
        (want.dst, want.dport) = (C2, 90);
        want.ttl -= 1;
        assert_eq!(
            &v.frame[14..],
            &want.frame()[14..],
            "the translated packet, byte for byte past the MACs"
        );
        // What was written is there, whole, and no more.
        let recs = ring_records(env);
        assert_eq!(recs.len() as u32 + before as u32, written);
        assert!(recs.iter().all(|r| r.kind == FLOW_EV_REJECT_POLICY));
    });
}

fn datapath_log_lines(env: &mut Env) -> usize {
    let mut ring = RingBuf::try_from(env.ebpf.map_mut("AYA_LOGS").unwrap()).unwrap();
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

#[test]
fn the_datapath_log_is_off_by_default_and_rate_limited_per_cpu_when_on() {
    in_fixture_ns(|env| {
        refuse_everything_to_c1(env);
        let syn = Packet::tcp(CLIENT, 40000, HOST, 8080);
        assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_SHOT);
        assert_eq!(datapath_log_lines(env), 0, "off by default");

        let mut m: Array<&mut MapData, u64> =
            Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
        m.set(berth_maps::CONFIG_DP_LOG, berth_maps::DP_LOG_DEBUG, 0)
            .unwrap();
        // A flood of refusals. BPF_PROG_TEST_RUN runs on the calling
        // thread's CPU, which may change between runs: the bound is per CPU.
        const FLOOD: u64 = 500;
        let started = std::time::Instant::now();
        for _ in 0..FLOOD {
            assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_SHOT);
        }
        let secs = started.elapsed().as_secs() + 1;
        let written = datapath_log_lines(env) as u64;
        let limited = env.counter(Counter::DatapathLogLimited);
        assert_eq!(written + limited, FLOOD, "each refusal written or counted");
        assert!(written >= 1, "the log is on");
        // The burst, and what the bucket earned meanwhile, per CPU it ran on.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        assert!(
            written <= cpus * (berth_maps::DP_LOG_BURST + berth_maps::DP_LOG_PER_SEC * secs),
            "{written} lines in {secs} s"
        );
    });
}
