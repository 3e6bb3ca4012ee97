//! The NAT66 client-port clash remap (`ebpf/src/remap6.rs`): one client
//! port to two host ports of one container port. Frame in -> verdict and
//! exact frame out, every expected frame built from scratch by `pkt`
//! (checksums over the whole packet); the remapped port is the one
//! `nat_remap_port6` names first, computed here on its own.
use std::net::Ipv6Addr;

use aya::maps::{HashMap, MapData};
use berth::model::Protocol;
use berth_integration::{
    pkt::{self, CLIENT6, HOST6},
    testrun::*,
};
use berth_maps::{
    nat_remap_port6, Counter, FlowKey6, NatEntry6, NatFwd6, NAT6_FWD_MAP, NAT6_MAP, NAT_REMAP_TRIES,
};

use crate::{
    icmp6::{error6, frame, tcp as tcp100, DEST_UNREACH, PACKET_TOO_BIG, PORT_UNREACH, ROUTER6},
    ipv6::publish6,
    nat66::{expect, flow, key, seg, setup, tcp, to_client, to_ctr, udp, C1_6, TC_SHOT},
    run::TC_ACT_REDIRECT,
};

/// The client's port in every flow here.
const CPORT: u16 = 40000;

/// The client port the `attempt`-th remap of client:`CPORT` -> host
/// port `hport` tries.
fn remapped(hport: u16, attempt: u32) -> u16 {
    nat_remap_port6(&CLIENT6.octets(), CPORT, hport, attempt)
}

/// The client-side tuple a remap is kept under.
fn wire(proto: u8, hport: u16) -> FlowKey6 {
    FlowKey6 {
        src_addr: CLIENT6.octets(),
        dst_addr: HOST6.octets(),
        src_port_be: CPORT.to_be(),
        dst_port_be: hport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn fwd(env: &Env, w: &FlowKey6) -> Option<NatFwd6> {
    env.map_get(NAT6_FWD_MAP, w)
}

/// `setup`'s mappings plus `[::]:8081` -> `:80` (TCP) and `[::]:8054` ->
/// `:53` (UDP): the second host port of each container port. Then the
/// first flow of each opens with the client's own port.
fn setup_clash(env: &mut Env) {
    setup(env);
    publish6(env, Ipv6Addr::UNSPECIFIED, 8081, Protocol::Tcp, 80);
    publish6(env, Ipv6Addr::UNSPECIFIED, 8054, Protocol::Udp, 53);
    expect(
        env,
        "berth_ingress",
        &tcp(CLIENT6, CPORT, HOST6, 8080, 64, pkt::SYN),
        TC_ACT_REDIRECT,
        &to_ctr(tcp(CLIENT6, CPORT, C1_6, 80, 63, pkt::SYN)),
        "first tcp flow keeps the client's port",
    );
    expect(
        env,
        "berth_ingress",
        &udp(CLIENT6, CPORT, HOST6, 8053, 64),
        TC_ACT_REDIRECT,
        &to_ctr(udp(CLIENT6, CPORT, C1_6, 53, 63)),
        "first udp flow keeps the client's port",
    );
    assert_eq!(env.counter(Counter::NatPortRemap), 0);
}

#[test]
fn a_clashing_tcp_flow_gets_another_client_port_both_ways_to_established() {
    in_fixture_ns(|env| {
        setup_clash(env);
        let r = remapped(8081, 0);
        assert_ne!(r, CPORT);
        let (syn, ack, synack) = (pkt::SYN, pkt::ACK, pkt::SYN | pkt::ACK);
        expect(
            env,
            "berth_ingress",
            &tcp(CLIENT6, CPORT, HOST6, 8081, 64, syn),
            TC_ACT_REDIRECT,
            &to_ctr(tcp(CLIENT6, r, C1_6, 80, 63, syn)),
            "clashing syn: remapped source port",
        );
        assert_eq!(env.counter(Counter::NatPortRemap), 1);
        let f = fwd(env, &wire(pkt::TCP, 8081)).expect("the remap is kept");
        assert_eq!(
            (f.backend_addr, u16::from_be(f.backend_port_be)),
            (C1_6.octets(), 80)
        );
        assert_eq!(u16::from_be(f.remap_port_be), r);
        let (est, e) = flow(env, &key(pkt::TCP, 80, r)).expect("tracked under its port");
        assert!(!est);
        assert_eq!(
            (u16::from_be(e.host_port_be), u16::from_be(e.client_port_be)),
            (8081, CPORT)
        );
        let (_, first) = flow(env, &key(pkt::TCP, 80, CPORT)).unwrap();
        assert_eq!(
            u16::from_be(first.host_port_be),
            8080,
            "the first flow keeps its tuple"
        );
        // The container answers the remapped port; the client gets it on
        // its own, from the host port it asked.
        let answer = (0x3000_0000, 0x1000_0001);
        expect(
            env,
            "berth_reply",
            &seg(C1_6, 80, CLIENT6, r, 64, synack, answer),
            TC_ACT_REDIRECT,
            &to_client(seg(HOST6, 8081, CLIENT6, CPORT, 63, synack, answer)),
            "syn-ack of the remapped flow",
        );
        let last = (0x1000_0001, 0x3000_0001);
        expect(
            env,
            "berth_ingress",
            &seg(CLIENT6, CPORT, HOST6, 8081, 64, ack, last),
            TC_ACT_REDIRECT,
            &to_ctr(seg(CLIENT6, r, C1_6, 80, 63, ack, last)),
            "the handshake's ack keeps the port",
        );
        let (est, e) = flow(env, &key(pkt::TCP, 80, r)).unwrap();
        assert!(est, "established after the client's ack");
        assert_eq!(e.packets, [2, 1]);
        // The first flow's packets are still its own.
        expect(
            env,
            "berth_reply",
            &tcp(C1_6, 80, CLIENT6, CPORT, 64, synack),
            TC_ACT_REDIRECT,
            &to_client(tcp(HOST6, 8080, CLIENT6, CPORT, 63, synack)),
            "the first flow's reply",
        );
        assert_eq!(env.counter(Counter::NatPortRemap), 1, "one remap per flow");
    });
}

#[test]
fn a_clashing_udp_flow_gets_another_client_port_and_its_reply_the_clients_own() {
    in_fixture_ns(|env| {
        setup_clash(env);
        let r = remapped(8054, 0);
        for what in ["first datagram", "second datagram"] {
            expect(
                env,
                "berth_ingress",
                &udp(CLIENT6, CPORT, HOST6, 8054, 64),
                TC_ACT_REDIRECT,
                &to_ctr(udp(CLIENT6, r, C1_6, 53, 63)),
                what,
            );
        }
        expect(
            env,
            "berth_reply",
            &udp(C1_6, 53, CLIENT6, r, 64),
            TC_ACT_REDIRECT,
            &to_client(udp(HOST6, 8054, CLIENT6, CPORT, 63)),
            "reply",
        );
        assert_eq!(
            flow(env, &key(pkt::UDP, 53, r)).map(|f| f.0),
            Some(true),
            "established by its reply"
        );
        assert_eq!(env.counter(Counter::NatPortRemap), 1);
        // The first flow still answers on the client's port and 8053.
        expect(
            env,
            "berth_reply",
            &udp(C1_6, 53, CLIENT6, CPORT, 64),
            TC_ACT_REDIRECT,
            &to_client(udp(HOST6, 8053, CLIENT6, CPORT, 63)),
            "the first flow's reply",
        );
    });
}

#[test]
fn a_clash_with_no_free_port_is_refused_and_nothing_is_kept() {
    in_fixture_ns(|env| {
        setup_clash(env);
        // Every port the remap would try is some other flow's.
        {
            let mut m: HashMap<&mut MapData, FlowKey6, NatEntry6> =
                HashMap::try_from(env.ebpf.map_mut(NAT6_MAP).unwrap()).unwrap();
            for i in 0..NAT_REMAP_TRIES {
                let e = NatEntry6 {
                    host_addr: HOST6.octets(),
                    host_port_be: 8080u16.to_be(),
                    client_port_be: remapped(8081, i).to_be(),
                    ..NatEntry6::default()
                };
                m.insert(key(pkt::TCP, 80, remapped(8081, i)), e, 0)
                    .unwrap();
            }
        }
        let f = tcp(CLIENT6, CPORT, HOST6, 8081, 64, pkt::SYN);
        expect(env, "berth_ingress", &f, TC_SHOT, &f, "no port free");
        assert_eq!(env.counter(Counter::NatPortRemapFailed), 1);
        assert_eq!(env.counter(Counter::NatPortRemap), 0);
        assert!(fwd(env, &wire(pkt::TCP, 8081)).is_none(), "no remap kept");
        let (_, first) = flow(env, &key(pkt::TCP, 80, CPORT)).unwrap();
        assert_eq!(u16::from_be(first.host_port_be), 8080);
    });
}

#[test]
fn icmpv6_errors_about_a_remapped_flow_carry_the_port_each_side_knows() {
    in_fixture_ns(|env| {
        setup_clash(env);
        let r = remapped(8081, 0);
        let syn = tcp(CLIENT6, CPORT, HOST6, 8081, 64, pkt::SYN);
        assert_eq!(env.tc("berth_ingress", &syn).code, TC_ACT_REDIRECT);
        // From outside: a reply of the remapped flow as it left, and as
        // its container sent it (to the remapped port). Whole, cut past
        // the TCP checksum, cut right after the ports.
        let left = tcp100(HOST6, 8081, CLIENT6, CPORT, pkt::ACK);
        let sent = tcp100(C1_6, 80, CLIENT6, r, pkt::ACK);
        for quote in [usize::MAX, 70, 48] {
            let ptb = error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &left, quote);
            let want = error6((PACKET_TOO_BIG, 0), ROUTER6, C1_6, &sent, quote);
            expect(
                env,
                "berth_ingress",
                &frame(&ptb, 64),
                TC_ACT_REDIRECT,
                &to_ctr(frame(&want, 63)),
                &format!("packet too big quoting {quote} bytes"),
            );
        }
        // The first flow's reply still maps to the client's own port.
        let left1 = tcp100(HOST6, 8080, CLIENT6, CPORT, pkt::ACK);
        let sent1 = tcp100(C1_6, 80, CLIENT6, CPORT, pkt::ACK);
        expect(
            env,
            "berth_ingress",
            &frame(
                &error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &left1, 200),
                64,
            ),
            TC_ACT_REDIRECT,
            &to_ctr(frame(
                &error6((PACKET_TOO_BIG, 0), ROUTER6, C1_6, &sent1, 200),
                63,
            )),
            "packet too big about the first flow",
        );
        // A quote naming the remapped port from outside names no flow the
        // client has: forged.
        let odd = tcp100(HOST6, 8081, CLIENT6, r, pkt::ACK);
        let f = frame(&error6((PACKET_TOO_BIG, 0), ROUTER6, HOST6, &odd, 200), 64);
        expect(
            env,
            "berth_ingress",
            &f,
            TC_SHOT,
            &f,
            "quote of the remapped port from outside",
        );
        assert_eq!(env.counter(Counter::IcmpForged), 1);
        // From the container: what the client sent as it arrived (to the
        // remapped port), and as the client sent it.
        let got = tcp100(CLIENT6, r, C1_6, 80, pkt::SYN);
        let was = tcp100(CLIENT6, CPORT, HOST6, 8081, pkt::SYN);
        let unreach = (DEST_UNREACH, PORT_UNREACH);
        expect(
            env,
            "berth_reply",
            &frame(&error6(unreach, C1_6, CLIENT6, &got, usize::MAX), 64),
            TC_ACT_REDIRECT,
            &to_client(frame(
                &error6(unreach, HOST6, CLIENT6, &was, usize::MAX),
                63,
            )),
            "port unreachable from the container",
        );
        assert_eq!(env.counter(Counter::IcmpXlate), 5);
    });
}
