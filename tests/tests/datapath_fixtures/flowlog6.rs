//! Flow-log counting of IPv6 flows through the real programs (NAT66,
//! `berth_ingress6`/`berth_reply6` behind `berth_ingress`/`berth_reply`):
//! each packet of a tracked IPv6 flow adds its IPv6 header and payload to
//! that flow's counters only; each refusal IPv4 logs — the task's security
//! groups, a client claiming the host's address, no room in the flow table
//! — writes exactly one IPv6 ring record (`FlowEvent6`, told from IPv4's by
//! its length) with the fields the daemon logs, and only while a flow log
//! reads; a full ring counts a loss and changes no verdict.
use std::net::Ipv6Addr;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::{
    Counter, FlowEvent, FlowEvent6, FlowKey6, NatEntry6, CONFIG_FLOW_LOG, CONFIG_MAP,
    CONFIG_NO_POLICY, FLOW_EV_REJECT_FULL, FLOW_EV_REJECT_POLICY, NAT6_CAPACITY, NAT6_MAP,
    NAT6_NEW_MAP, PROTO_TCP, PROTO_UDP,
};

use crate::{ipv6::publish6, run::TC_ACT_REDIRECT};

const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const L4: usize = pkt::ETH_LEN + 40;
const TC_SHOT: u32 = 2;

fn config(env: &mut Env, index: u32, value: u64) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut(CONFIG_MAP).unwrap()).unwrap();
    m.set(index, value, 0).unwrap();
}

/// `[::]:8080` -> `[fd00::2]:80` (TCP), `[2001:db8::1]:8053` -> `:53`
/// (UDP); `2001:db8::1` is the host's; nobody has policy.
fn setup(env: &mut Env) {
    publish6(env, Ipv6Addr::UNSPECIFIED, 8080, Protocol::Tcp, 80);
    publish6(env, HOST6, 8053, Protocol::Udp, 53);
    env.host_addr6(HOST6);
    config(env, CONFIG_NO_POLICY, 1);
}

fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, len: usize) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport) = (src, dst, sport);
    p.payload = vec![b'u'; len];
    p.frame()
}

/// A TCP segment with these flags and (sequence, acknowledgement), its
/// checksum computed over the whole segment.
fn tcp(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    (seq, ack): (u32, u32),
) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::TCP, dport);
    (p.src, p.dst, p.sport) = (src, dst, sport);
    let mut f = p.frame();
    f[L4 + 13] = flags;
    f[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
    f[L4 + 8..L4 + 12].copy_from_slice(&ack.to_be_bytes());
    f[L4 + 16..L4 + 18].copy_from_slice(&[0, 0]);
    let c = pkt::csum(&f[L4..], pkt::pseudo_sum6(src, dst, pkt::TCP, f.len() - L4));
    f[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

fn syn(sport: u16) -> Vec<u8> {
    tcp(CLIENT6, sport, HOST6, 8080, pkt::SYN, (0x1000_0000, 0))
}

/// The IPv6 header and payload of a frame: what a flow's bytes count.
fn ip_len(frame: &[u8]) -> u64 {
    frame.len() as u64 - pkt::ETH_LEN as u64
}

fn key(proto: u8, ctr_port: u16, client_port: u16) -> FlowKey6 {
    FlowKey6 {
        src_addr: C1_6.octets(),
        dst_addr: CLIENT6.octets(),
        src_port_be: ctr_port.to_be(),
        dst_port_be: client_port.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn entry(env: &Env, k: &FlowKey6) -> NatEntry6 {
    env.map_get::<FlowKey6, NatEntry6>(NAT6_MAP, k)
        .or_else(|| env.map_get(NAT6_NEW_MAP, k))
        .expect("the flow is tracked")
}

fn tracked(env: &Env) -> usize {
    env.map_entries::<FlowKey6, NatEntry6>(NAT6_MAP).len()
        + env.map_entries::<FlowKey6, NatEntry6>(NAT6_NEW_MAP).len()
}

/// Every record waiting in the ring, each an IPv6 one.
fn ring_records6(env: &mut Env) -> Vec<FlowEvent6> {
    let mut ring = RingBuf::try_from(env.ebpf.map_mut("BERTH_FLOW_LOG").unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<FlowEvent6>(), "an IPv6 record");
        assert_ne!(item.len(), size_of::<FlowEvent>());
        out.push(bytemuck::pod_read_unaligned(&item));
    }
    out
}

fn ports(r: &FlowEvent6) -> (u16, u16, u16) {
    (
        u16::from_be(r.src_port_be),
        u16::from_be(r.dst_port_be),
        u16::from_be(r.ctr_port_be),
    )
}

#[test]
fn each_ipv6_packet_counts_its_ip_length_in_its_own_flow_and_direction() {
    in_fixture_ns(|env| {
        setup(env);
        let mut sent = 0;
        for len in [10, 200, 1] {
            let f = udp(CLIENT6, 5000, HOST6, 8053, len);
            assert_eq!(env.tc("berth_ingress", &f).code, TC_ACT_REDIRECT);
            sent += ip_len(&f);
        }
        let other = udp(CLIENT6, 5001, HOST6, 8053, 3);
        assert_eq!(env.tc("berth_ingress", &other).code, TC_ACT_REDIRECT);
        let mut replied = 0;
        for len in [7, 70] {
            let f = udp(C1_6, 53, CLIENT6, 5000, len);
            assert_eq!(env.tc("berth_reply", &f).code, TC_ACT_REDIRECT);
            replied += ip_len(&f);
        }
        let e = entry(env, &key(PROTO_UDP, 53, 5000));
        assert_eq!((e.packets, e.bytes), ([3, 2], [sent, replied]));
        assert_eq!(e.tcp_flags, [0, 0], "no TCP bits on UDP");
        assert!(e.opened_ns != 0 && e.opened_ns <= e.last_seen_ns, "{e:?}");
        assert_ne!(e.ifindex, 0, "the uplink it came in by");
        let e = entry(env, &key(PROTO_UDP, 53, 5001));
        assert_eq!((e.packets, e.bytes), ([1, 0], [ip_len(&other), 0]));

        // TCP: SYN in, SYN-ACK out, ACK and FIN in.
        let f = syn(42000);
        assert_eq!(env.tc("berth_ingress", &f).code, TC_ACT_REDIRECT);
        let synack = pkt::SYN | pkt::ACK;
        let f = tcp(C1_6, 80, CLIENT6, 42000, synack, (0x3000_0000, 0x1000_0001));
        assert_eq!(env.tc("berth_reply", &f).code, TC_ACT_REDIRECT);
        for flags in [pkt::ACK, pkt::FIN | pkt::ACK] {
            let f = tcp(
                CLIENT6,
                42000,
                HOST6,
                8080,
                flags,
                (0x1000_0001, 0x3000_0001),
            );
            assert_eq!(env.tc("berth_ingress", &f).code, TC_ACT_REDIRECT);
        }
        let e = entry(env, &key(PROTO_TCP, 80, 42000));
        assert_eq!(e.packets, [3, 1]);
        assert_eq!(e.tcp_flags, [0x02 | 0x01, 0x02], "FIN|SYN in, SYN out");
    });
}

#[test]
fn a_refused_ipv6_flow_writes_one_ipv6_record_only_while_a_flow_log_reads() {
    in_fixture_ns(|env| {
        setup(env);
        // The container's task has policy and no IPv6 rule lets it in.
        config(env, CONFIG_NO_POLICY, 0);
        env.set_endpoint6(C1_6, 7, true);
        let f = syn(40000);
        let v = env.tc("berth_ingress", &f);
        assert_eq!((v.code, v.frame == f), (TC_SHOT, true));
        assert!(ring_records6(env).is_empty(), "no flow log, no record");

        config(env, CONFIG_FLOW_LOG, 1);
        let v = env.tc("berth_ingress", &f);
        assert_eq!((v.code, v.frame == f), (TC_SHOT, true), "the same verdict");
        let recs = ring_records6(env);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = recs[0];
        assert_eq!(
            (r.src_addr, r.dst_addr, r.ctr_addr),
            (CLIENT6.octets(), HOST6.octets(), C1_6.octets())
        );
        assert_eq!(ports(&r), (40000, 8080, 80));
        assert_eq!((r.proto, r.kind), (PROTO_TCP, FLOW_EV_REJECT_POLICY));
        assert_eq!(u64::from(r.ip_len), ip_len(&f));
        assert_eq!(r.tcp_flags, pkt::SYN);
        assert_ne!(r.ifindex, 0);
        assert_ne!(r.ktime_ns, 0);
        assert_eq!(tracked(env), 0, "a refused flow is not tracked");
        assert_eq!(env.counter(Counter::PolicyDeniedIngress), 2);

        // A client claiming the host's own address: refused, as IPv4
        // logs it (the policy kind).
        let f = tcp(HOST6, 40001, HOST6, 8080, pkt::SYN, (1, 0));
        assert_eq!(env.tc("berth_ingress", &f).code, TC_SHOT);
        let recs = ring_records6(env);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(
            (recs[0].src_addr, recs[0].kind),
            (HOST6.octets(), FLOW_EV_REJECT_POLICY)
        );
        assert_eq!(env.counter(Counter::FlowLogLost), 0);
    });
}

/// Fills `BERTH_NAT6` (established flows never evict) with flows of
/// another client.
fn fill_established6(env: &mut Env) {
    let mut m: HashMap<&mut MapData, FlowKey6, NatEntry6> =
        HashMap::try_from(env.ebpf.map_mut(NAT6_MAP).unwrap()).unwrap();
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77).octets();
    for i in 0..NAT6_CAPACITY {
        let mut k = key(PROTO_UDP, 9, 0);
        k.dst_addr = other;
        k.dst_addr[12..].copy_from_slice(&i.to_be_bytes());
        m.insert(k, NatEntry6::default(), 0).unwrap();
    }
}

#[test]
fn ipv6_flows_refused_for_a_full_table_are_full_records() {
    in_fixture_ns(|env| {
        setup(env);
        config(env, CONFIG_FLOW_LOG, 1);
        fill_established6(env);
        // UDP: the container's first reply would establish it.
        let first = udp(CLIENT6, 5353, HOST6, 8053, 20);
        assert_eq!(env.tc("berth_ingress", &first).code, TC_ACT_REDIRECT);
        let reply = udp(C1_6, 53, CLIENT6, 5353, 30);
        assert_eq!(env.tc("berth_reply", &reply).code, TC_SHOT);
        let recs = ring_records6(env);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = recs[0];
        assert_eq!(
            (r.src_addr, r.dst_addr, r.ctr_addr),
            (CLIENT6.octets(), HOST6.octets(), C1_6.octets()),
            "the flow as its client sent it"
        );
        assert_eq!(ports(&r), (5353, 8053, 53));
        assert_eq!((r.proto, r.kind), (PROTO_UDP, FLOW_EV_REJECT_FULL));
        assert_eq!(u64::from(r.ip_len), ip_len(&reply));
        assert_ne!(r.ifindex, 0, "the uplink the flow came in by");

        // TCP: the handshake's last ACK would establish it.
        let f = syn(42000);
        assert_eq!(env.tc("berth_ingress", &f).code, TC_ACT_REDIRECT);
        let synack = pkt::SYN | pkt::ACK;
        let f = tcp(C1_6, 80, CLIENT6, 42000, synack, (0x3000_0000, 0x1000_0001));
        assert_eq!(env.tc("berth_reply", &f).code, TC_ACT_REDIRECT);
        let ack = tcp(
            CLIENT6,
            42000,
            HOST6,
            8080,
            pkt::ACK,
            (0x1000_0001, 0x3000_0001),
        );
        assert_eq!(env.tc("berth_ingress", &ack).code, TC_SHOT);
        let recs = ring_records6(env);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = recs[0];
        assert_eq!((r.src_addr, r.ctr_addr), (CLIENT6.octets(), C1_6.octets()));
        assert_eq!(ports(&r), (42000, 8080, 80));
        assert_eq!((r.proto, r.kind), (PROTO_TCP, FLOW_EV_REJECT_FULL));
        assert_eq!(r.tcp_flags, pkt::ACK);
        assert_eq!(u64::from(r.ip_len), ip_len(&ack));
        assert!(env.counter(Counter::NatTableFull) >= 2);
    });
}

#[test]
fn a_full_ring_counts_a_lost_ipv6_record_and_changes_no_verdict() {
    in_fixture_ns(|env| {
        setup(env);
        config(env, CONFIG_NO_POLICY, 0);
        env.set_endpoint6(C1_6, 7, true);
        config(env, CONFIG_FLOW_LOG, 1);
        // Nobody reads: refusals fill the ring until one finds no room.
        let mut written = 0u32;
        while env.counter(Counter::FlowLogLost) == 0 {
            let f = syn(1024 + (written % 60000) as u16);
            assert_eq!(env.tc("berth_ingress", &f).code, TC_SHOT);
            written += 1;
            assert!(written < 100_000, "the ring never filled");
        }
        let before = env.counter(Counter::FlowLogLost);
        let f = syn(999);
        let v = env.tc("berth_ingress", &f);
        assert_eq!((v.code, v.frame == f), (TC_SHOT, true));
        assert_eq!(env.counter(Counter::FlowLogLost), before + 1);
        // What was written is there, whole, and no more.
        let recs = ring_records6(env);
        assert_eq!(recs.len() as u32 + before as u32, written);
        assert!(recs.iter().all(|r| r.kind == FLOW_EV_REJECT_POLICY));
        assert!(recs.iter().all(|r| r.dst_addr == HOST6.octets()));
    });
}
