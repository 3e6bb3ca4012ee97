//! Flow tracking across packets: where a flow lives (`BERTH_NAT_NEW` until it
//! is established, then `BERTH_NAT`), what promotes it, and which RST/FIN
//! mark it closing. Each packet still goes through the real programs; the
//! tables are read back after each step.
use std::net::Ipv4Addr;

use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::{
    Counter, FlowKey, NatEntry, NAT_F_CLOSING, NAT_F_ESTABLISHED, NAT_F_REPLIED, NAT_F_SEQ_FWD,
    NAT_F_SEQ_KNOWN,
};

use crate::{reply::from_container, run::*, table::*};

const ISN_C: u32 = 1000;
const ISN_S: u32 = 5000;

fn key(c_port: u16, client: Ipv4Addr, client_port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr_be: u32::from_ne_bytes(C1.octets()),
        dst_addr_be: u32::from_ne_bytes(client.octets()),
        src_port_be: c_port.to_be(),
        dst_port_be: client_port.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// (in `BERTH_NAT`, in `BERTH_NAT_NEW`) for the flow of `k`.
fn where_is(env: &Env, k: &FlowKey) -> (Option<NatEntry>, Option<NatEntry>) {
    (env.map_get("BERTH_NAT", k), env.map_get("BERTH_NAT_NEW", k))
}

/// Sends a client packet through the ingress hook (`xdp` or TC) and
/// checks it was translated.
fn client_sends(env: &Env, xdp: bool, p: &Packet) {
    let f = p.frame();
    if xdp {
        let v = env.xdp("berth_xdp", &f);
        assert_eq!((v.code, v.frame.len()), (XDP_PASS, f.len() + 8), "{p:?}");
    } else {
        assert_eq!(env.tc("berth_ingress", &f).code, TC_ACT_REDIRECT, "{p:?}");
    }
}

fn container_sends(env: &Env, p: &Packet) {
    assert_eq!(
        env.tc("berth_reply", &p.frame()).code,
        TC_ACT_REDIRECT,
        "{p:?}"
    );
}

fn seg(mut p: Packet, flags: u8, seq: u32, ack: u32, win: u16) -> Packet {
    (p.tcp_flags, p.tcp_seq, p.tcp_ack, p.tcp_window) = (flags, seq, ack, win);
    p
}

/// SYN (window scale 7) and SYN-ACK (window scale 7) of a flow from
/// `sport`; returns (client packet template, container packet template).
fn handshake_start(env: &Env, xdp: bool, sport: u16) -> (Packet, Packet) {
    let c = Packet::tcp(CLIENT, sport, HOST, 8080);
    let s = from_container(C1, 80, CLIENT, sport, pkt::TCP);
    let mut syn = seg(c.clone(), pkt::SYN, ISN_C, 0, 64240);
    syn.tcp_options = syn_options();
    client_sends(env, xdp, &syn);
    let mut syn_ack = seg(s.clone(), pkt::SYN | pkt::ACK, ISN_S, ISN_C + 1, 65160);
    syn_ack.tcp_options = syn_options();
    container_sends(env, &syn_ack);
    (c, s)
}

fn tcp_handshake_promotes(xdp: bool) {
    in_fixture_ns(move |env| {
        publish_defaults(env);
        let k = key(80, CLIENT, 42000, pkt::TCP);
        let c = Packet::tcp(CLIENT, 42000, HOST, 8080);
        let mut syn = seg(c.clone(), pkt::SYN, ISN_C, 0, 64240);
        syn.tcp_options = syn_options();
        client_sends(env, xdp, &syn);
        let (est, new) = where_is(env, &k);
        let e = new.expect("a SYN opens an unestablished flow");
        assert!(est.is_none(), "not established by a SYN");
        assert_eq!(e.flags, NAT_F_SEQ_FWD);
        assert_eq!(
            (e.seq_end[0], e.wscale[0], e.max_win[1]),
            (ISN_C + 1, 7, 64240)
        );
        assert_eq!(u16::from_be(e.client_port_be), 42000);

        let s = from_container(C1, 80, CLIENT, 42000, pkt::TCP);
        let mut syn_ack = seg(s, pkt::SYN | pkt::ACK, ISN_S, ISN_C + 1, 65160);
        syn_ack.tcp_options = syn_options();
        container_sends(env, &syn_ack);
        let (est, new) = where_is(env, &k);
        let e = new.expect("still unestablished after the SYN-ACK");
        assert!(est.is_none());
        assert_eq!(e.flags & NAT_F_SEQ_KNOWN, NAT_F_SEQ_KNOWN);
        assert_eq!(
            (e.seq_end[1], e.wscale[1], e.max_win[0]),
            (ISN_S + 1, 7, 65160)
        );

        // An ACK of something the container never sent does not promote.
        client_sends(
            env,
            xdp,
            &seg(c.clone(), pkt::ACK, ISN_C + 1, ISN_S + 9, 502),
        );
        assert!(
            where_is(env, &k).0.is_none(),
            "a wrong ACK promotes nothing"
        );

        client_sends(env, xdp, &seg(c, pkt::ACK, ISN_C + 1, ISN_S + 1, 502));
        let (est, new) = where_is(env, &k);
        let e = est.expect("the client's ACK of the SYN-ACK establishes the flow");
        assert!(new.is_none(), "moved, not copied");
        assert_eq!(e.flags & NAT_F_ESTABLISHED, NAT_F_ESTABLISHED);
        // The ACK's window is scaled (both SYNs announced a shift).
        assert_eq!(e.max_win[1], 502 << 7);
    });
}

#[test]
fn tcp_syn_opens_unestablished_flow_and_the_ack_after_syn_ack_promotes_it_tc() {
    tcp_handshake_promotes(false);
}

#[test]
fn tcp_syn_opens_unestablished_flow_and_the_ack_after_syn_ack_promotes_it_xdp() {
    tcp_handshake_promotes(true);
}

#[test]
fn udp_flow_is_promoted_by_the_containers_reply() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let k = key(53, CLIENT, 6000, pkt::UDP);
        client_sends(env, true, &Packet::udp(CLIENT, 6000, HOST, 8053));
        client_sends(env, false, &Packet::udp(CLIENT, 6000, HOST, 8053));
        let (est, new) = where_is(env, &k);
        assert!(est.is_none() && new.is_some(), "unanswered: unestablished");
        container_sends(env, &from_container(C1, 53, CLIENT, 6000, pkt::UDP));
        let (est, new) = where_is(env, &k);
        let e = est.expect("the reply establishes it");
        assert!(new.is_none());
        assert_eq!(
            e.flags & (NAT_F_ESTABLISHED | NAT_F_REPLIED),
            NAT_F_ESTABLISHED | NAT_F_REPLIED
        );
    });
}

#[test]
fn rst_marks_closing_only_within_the_window() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let (c, s) = handshake_start(env, false, 42100);
        client_sends(
            env,
            false,
            &seg(c.clone(), pkt::ACK, ISN_C + 1, ISN_S + 1, 502),
        );
        let k = key(80, CLIENT, 42100, pkt::TCP);
        let closing = |env: &Env| env.nat_lookup(&k).unwrap().flags & NAT_F_CLOSING != 0;
        let oow = env.counter(Counter::TcpOutOfWindow);

        // A guessed RST far from the window: forwarded, the flow untouched.
        client_sends(
            env,
            false,
            &seg(c.clone(), pkt::RST, ISN_C + 10_000_000, 0, 0),
        );
        assert!(!closing(env), "out-of-window RST marks nothing");
        container_sends(
            env,
            &seg(s.clone(), pkt::RST, ISN_S.wrapping_sub(5_000_000), 0, 0),
        );
        assert!(!closing(env), "nor one from the container side");
        assert_eq!(env.counter(Counter::TcpOutOfWindow), oow + 2);
        // Past the container's window unscaled (65160), within it scaled
        // once the container advertises 1000 << 7.
        let rst = seg(c, pkt::RST, ISN_C + 1 + 100_000, 0, 0);
        client_sends(env, false, &rst);
        assert!(!closing(env), "beyond the largest window seen");
        container_sends(env, &seg(s, pkt::ACK, ISN_S + 1, ISN_C + 1, 1000));
        client_sends(env, false, &rst);
        assert!(closing(env), "in-window RST (scaled window) marks closing");
        assert_eq!(env.counter(Counter::TcpOutOfWindow), oow + 3);
    });
}

#[test]
fn fin_marks_closing_only_within_the_window() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let (c, s) = handshake_start(env, true, 42200);
        client_sends(
            env,
            true,
            &seg(c.clone(), pkt::ACK, ISN_C + 1, ISN_S + 1, 502),
        );
        let k = key(80, CLIENT, 42200, pkt::TCP);
        let closing = |env: &Env| env.nat_lookup(&k).unwrap().flags & NAT_F_CLOSING != 0;
        container_sends(env, &seg(s, pkt::FIN | pkt::ACK, 0x7000_0000, ISN_C + 1, 1));
        assert!(!closing(env), "out-of-window FIN marks nothing");
        let mut data = seg(c.clone(), pkt::PSH | pkt::ACK, ISN_C + 1, ISN_S + 1, 502);
        data.payload = vec![7; 100];
        client_sends(env, true, &data);
        client_sends(
            env,
            true,
            &seg(c, pkt::FIN | pkt::ACK, ISN_C + 101, ISN_S + 1, 502),
        );
        assert!(closing(env), "the FIN after the data is in window");
        assert_eq!(env.nat_lookup(&k).unwrap().seq_end[0], ISN_C + 102);
    });
}

#[test]
fn containers_rst_answering_a_syn_marks_closing_only_with_the_right_ack() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        for (sport, ack, marks) in [(42300, ISN_C + 1, true), (42301, ISN_C + 77, false)] {
            let c = Packet::tcp(CLIENT, sport, HOST, 8080);
            client_sends(env, false, &seg(c, pkt::SYN, ISN_C, 0, 64240));
            let s = from_container(C1, 80, CLIENT, sport, pkt::TCP);
            container_sends(env, &seg(s, pkt::RST | pkt::ACK, 0, ack, 0));
            let e = env.nat_lookup(&key(80, CLIENT, sport, pkt::TCP)).unwrap();
            assert_eq!(e.flags & NAT_F_CLOSING != 0, marks, "ack {ack}");
        }
    });
}

#[test]
fn non_syn_tcp_of_no_flow_is_dropped_counted_and_creates_nothing() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let before = env.counter(Counter::NatNoFlow);
        let p = seg(Packet::tcp(CLIENT, 42400, HOST, 8080), pkt::ACK, 1, 1, 100);
        assert_eq!(env.tc("berth_ingress", &p.frame()).code, TC_ACT_SHOT);
        assert_eq!(env.xdp("berth_xdp", &p.frame()).code, XDP_DROP);
        assert_eq!(env.counter(Counter::NatNoFlow), before + 2);
        assert!(env.nat_entries().is_empty());
    });
}

#[test]
fn clash_remaps_the_client_port_and_counts_it() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let first = Packet::tcp(CLIENT, 42500, HOST, 8080);
        let second = Packet::tcp(CLIENT, 42500, HOST, 8081);
        client_sends(env, false, &first);
        assert_eq!(env.counter(Counter::NatPortRemap), 0);
        client_sends(env, false, &second);
        assert_eq!(env.counter(Counter::NatPortRemap), 1);
        let r = remapped_port(&second);
        let e = env
            .nat_lookup(&key(80, CLIENT, r, pkt::TCP))
            .expect("remapped flow");
        assert_eq!(
            (u16::from_be(e.host_port_be), u16::from_be(e.client_port_be)),
            (8081, 42500)
        );
        let wire = FlowKey {
            src_addr_be: u32::from_ne_bytes(CLIENT.octets()),
            dst_addr_be: u32::from_ne_bytes(HOST.octets()),
            src_port_be: 42500u16.to_be(),
            dst_port_be: 8081u16.to_be(),
            proto: pkt::TCP,
            _pad: [0; 3],
        };
        assert_eq!(
            u16::from_be(env.nat_fwd_lookup(&wire).unwrap().remap_port_be),
            r
        );
        // The first flow is untouched and has no remap entry.
        let e = env.nat_lookup(&key(80, CLIENT, 42500, pkt::TCP)).unwrap();
        assert_eq!(u16::from_be(e.host_port_be), 8080);
        let mut w = wire;
        w.dst_port_be = 8080u16.to_be();
        assert!(env.nat_fwd_lookup(&w).is_none());
    });
}
