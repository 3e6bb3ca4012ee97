//! IPv6 fragments through NAT66 (`frag6.rs`): a datagram's first fragment
//! is translated like any packet and remembered; its later fragments
//! (no L4 header) follow it, at the uplink (`berth_ingress` ->
//! `berth_ingress6`) and the bridge (`berth_reply` -> `berth_reply6`).
//! Every expected fragment is cut from the whole translated datagram,
//! built from scratch by `pkt` (its UDP checksum over all of it with the
//! IPv6 pseudo header), so the first fragment's incrementally updated
//! checksum is checked against the whole datagram's.
use std::net::Ipv6Addr;

use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Ipv6Packet, V6Ext, CLIENT6, ETH_LEN, HOST6},
    testrun::*,
};
use berth_maps::{Counter, FragEntry6, FragKey6, FRAGS6_MAP, FRAG_K_DNAT, FRAG_K_SNAT};

use crate::{
    ipv6::publish6,
    nat66::{expect, macs},
    run::TC_ACT_REDIRECT,
};

const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
const L3: usize = ETH_LEN + 40;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const ID: u32 = 0x0102_0304;
/// Fragment payload sizes: 1232 bytes (a multiple of 8) per fragment.
const CHUNK: usize = 1232;

/// `[2001:db8::1]:8053` -> `[fd00::2]:53` (UDP); the host owns
/// `2001:db8::1`; nobody has policy.
fn setup(env: &mut Env) {
    publish6(env, HOST6, 8053, Protocol::Udp, 53);
    env.host_addr6(HOST6);
    let mut m: aya::maps::Array<&mut aya::maps::MapData, u64> =
        aya::maps::Array::try_from(env.ebpf.map_mut(berth_maps::CONFIG_MAP).unwrap()).unwrap();
    m.set(berth_maps::CONFIG_NO_POLICY, 1, 0).unwrap();
}

/// A UDP datagram of `len` payload bytes, as one whole frame.
fn datagram(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, hop: u8, len: usize) -> Vec<u8> {
    let mut p = Ipv6Packet::new(pkt::UDP, dport);
    (p.src, p.dst, p.sport, p.hop_limit) = (src, dst, sport, hop);
    p.payload = (0..len).map(|i| (i % 251) as u8).collect();
    p.frame()
}

/// The fragments of a whole frame's datagram, [`CHUNK`] bytes each.
fn fragments(whole: &[u8], before: &[V6Ext], id: u32) -> Vec<Vec<u8>> {
    pkt::fragments6(whole, before, id, CHUNK)
}

/// The key a translation (`kind` DNAT or SNAT) of datagram `id` from
/// `src` to `dst` is remembered under.
fn nat_frag_key(src: Ipv6Addr, dst: Ipv6Addr, id: u32, kind: u8) -> FragKey6 {
    FragKey6 {
        src_addr: src.octets(),
        dst_addr: dst.octets(),
        id_be: id.to_be(),
        kind,
        _pad: [0; 3],
        // The NAT kinds are shared by every hook: no port.
        ifindex: 0,
    }
}

/// The client's 3000-byte datagram and the container's 3000-byte answer,
/// each in three fragments, translated whole; `before`: extension headers
/// ahead of the fragment header.
fn datagram_and_answer_are_translated(env: &mut Env, before: &[V6Ext]) {
    let sent = fragments(&datagram(CLIENT6, 5353, HOST6, 8053, 64, 3000), before, ID);
    let want = fragments(&datagram(CLIENT6, 5353, C1_6, 53, 63, 3000), before, ID);
    assert_eq!(sent.len(), 3);
    for (i, (f, w)) in sent.iter().zip(&want).enumerate() {
        let w = macs(w.clone(), C1_MAC, BRIDGE_MAC);
        expect(
            env,
            "berth_ingress",
            f,
            TC_ACT_REDIRECT,
            &w,
            &format!("fragment {i} in"),
        );
    }
    let k = nat_frag_key(CLIENT6, HOST6, ID, FRAG_K_DNAT);
    let e: FragEntry6 = env.map_get(FRAGS6_MAP, &k).expect("the first remembered");
    assert_eq!(e.addr, C1_6.octets());
    // The answer, cut by the container with its own identification.
    let answer_id = 0x0a0b_0c0d;
    let sent = fragments(
        &datagram(C1_6, 53, CLIENT6, 5353, 64, 3000),
        before,
        answer_id,
    );
    let want = fragments(
        &datagram(HOST6, 8053, CLIENT6, 5353, 63, 3000),
        before,
        answer_id,
    );
    for (i, (f, w)) in sent.iter().zip(&want).enumerate() {
        let w = macs(w.clone(), CLIENT_MAC, UPLINK_MAC);
        expect(
            env,
            "berth_reply",
            f,
            TC_ACT_REDIRECT,
            &w,
            &format!("fragment {i} of the answer"),
        );
    }
    let k = nat_frag_key(C1_6, CLIENT6, answer_id, FRAG_K_SNAT);
    let e: FragEntry6 = env.map_get(FRAGS6_MAP, &k).expect("the answer remembered");
    assert_eq!(e.addr, HOST6.octets());
}

#[test]
fn a_fragmented_datagram_and_its_fragmented_answer_are_translated_whole() {
    in_fixture_ns(|env| {
        setup(env);
        datagram_and_answer_are_translated(env, &[]);
        assert_eq!(env.counter(Counter::IngressDnat), 1, "first fragment in");
        assert_eq!(env.counter(Counter::ReplySnat), 1, "first fragment out");
        assert_eq!(env.counter(Counter::FragXlate), 4, "two later each way");
        assert_eq!(env.counter(Counter::Ipv6Untranslated), 0);
        assert_eq!(env.counter(Counter::Fragment), 0);
    });
}

#[test]
fn fragments_behind_extension_headers_are_translated_whole() {
    in_fixture_ns(|env| {
        setup(env);
        datagram_and_answer_are_translated(env, &[V6Ext::HopByHop, V6Ext::DestOpts]);
        assert_eq!(env.counter(Counter::FragXlate), 4);
    });
    // Destination options after the fragment header travel in the first
    // fragment only, ahead of the UDP header.
    in_fixture_ns(|env| {
        setup(env);
        let mut p = Ipv6Packet::new(pkt::UDP, 8053);
        (p.sport, p.payload) = (5353, vec![5; 2000]);
        p.ext = vec![V6Ext::DestOpts];
        let mut t = p.clone();
        (t.dst, t.dport, t.hop_limit) = (C1_6, 53, 63);
        let sent = fragments(&p.frame(), &[], ID);
        let want = fragments(&t.frame(), &[], ID);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0][L3 + 8], 17, "dest opts name udp");
        for (i, (f, w)) in sent.iter().zip(&want).enumerate() {
            let w = macs(w.clone(), C1_MAC, BRIDGE_MAC);
            expect(
                env,
                "berth_ingress",
                f,
                TC_ACT_REDIRECT,
                &w,
                &format!("fragment {i} behind dest opts"),
            );
        }
    });
}

#[test]
fn a_later_fragment_without_its_first_is_left_to_the_host() {
    in_fixture_ns(|env| {
        setup(env);
        let whole = datagram(CLIENT6, 5353, HOST6, 8053, 64, 3000);
        let frags = fragments(&whole, &[], ID);
        expect(
            env,
            "berth_ingress",
            &frags[0],
            TC_ACT_REDIRECT,
            &macs(
                fragments(&datagram(CLIENT6, 5353, C1_6, 53, 63, 3000), &[], ID)[0].clone(),
                C1_MAC,
                BRIDGE_MAC,
            ),
            "first",
        );
        // Another identification, another source, another destination:
        // another datagram, whose first fragment nobody saw.
        let mut other_id = frags[1].clone();
        other_id[L3 + 4..L3 + 8].copy_from_slice(&(ID + 1).to_be_bytes());
        let mut other_src = frags[1].clone();
        other_src[ETH_LEN + 8..ETH_LEN + 24].copy_from_slice(&OTHER6.octets());
        let mut other_dst = frags[1].clone();
        other_dst[ETH_LEN + 24..ETH_LEN + 40].copy_from_slice(&OTHER6.octets());
        for (what, f) in [
            ("another id", &other_id),
            ("another source", &other_src),
            ("another destination", &other_dst),
        ] {
            expect(env, "berth_ingress", f, TC_OK, f, what);
        }
        assert_eq!(env.counter(Counter::Fragment), 3);
        // At the bridge, a container's fragment of no translated datagram
        // is its own traffic.
        let own = fragments(&datagram(C1_6, 53, CLIENT6, 5353, 64, 3000), &[], 9);
        expect(
            env,
            "berth_reply",
            &own[1],
            TC_OK,
            &own[1],
            "container's own",
        );
        // A DNAT entry is not an SNAT one: the client's id at the bridge.
        expect(
            env,
            "berth_reply",
            &frags[2],
            TC_OK,
            &frags[2],
            "wrong kind",
        );
        assert_eq!(env.counter(Counter::Fragment), 5);
        assert_eq!(env.counter(Counter::FragXlate), 0);
    });
}

#[test]
fn a_later_fragment_forwarding_would_expire_is_dropped() {
    in_fixture_ns(|env| {
        setup(env);
        let frags = fragments(&datagram(CLIENT6, 5353, HOST6, 8053, 64, 3000), &[], ID);
        assert_eq!(env.tc("berth_ingress", &frags[0]).code, TC_ACT_REDIRECT);
        let mut f = frags[1].clone();
        f[ETH_LEN + 7] = 1;
        expect(env, "berth_ingress", &f, TC_SHOT, &f, "hop limit 1");
        assert_eq!(env.counter(Counter::TtlExceeded), 1);
    });
}

#[test]
fn first_fragments_nat66_does_not_translate_are_left_alone() {
    in_fixture_ns(|env| {
        setup(env);
        // An ICMPv6 echo cut in two: not a published port's.
        let mut p = Ipv6Packet::icmpv6(128, 0);
        p.payload = vec![1; 2000];
        let frags = fragments(&p.frame(), &[], ID);
        for f in &frags {
            expect(env, "berth_ingress", f, TC_OK, f, "fragmented echo");
        }
        // A first fragment too short for the UDP header: untranslated, so
        // its later fragments are orphans.
        let whole = datagram(CLIENT6, 5353, HOST6, 8053, 64, 3000);
        let mut tiny = fragments(&whole, &[], ID + 7)[0].clone();
        tiny.truncate(L3 + 8 + 4);
        tiny[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&12u16.to_be_bytes());
        expect(env, "berth_ingress", &tiny, TC_OK, &tiny, "tiny first");
        assert_eq!(env.counter(Counter::IngressDnat), 0);
        assert_eq!(env.counter(Counter::FragXlate), 0);
        assert!(env
            .map_entries::<FragKey6, FragEntry6>(FRAGS6_MAP)
            .is_empty());
    });
}

#[test]
fn an_atomic_fragment_is_a_whole_packet() {
    in_fixture_ns(|env| {
        setup(env);
        let atomic = V6Ext::Fragment {
            offset: 0,
            more: false,
        };
        let mut p = Ipv6Packet::new(pkt::UDP, 8053);
        (p.sport, p.payload, p.ext) = (5353, b"atomic".to_vec(), vec![atomic]);
        let mut t = p.clone();
        (t.dst, t.dport, t.hop_limit) = (C1_6, 53, 63);
        expect(
            env,
            "berth_ingress",
            &p.frame(),
            TC_ACT_REDIRECT,
            &macs(t.frame(), C1_MAC, BRIDGE_MAC),
            "atomic fragment",
        );
        assert!(
            env.map_entries::<FragKey6, FragEntry6>(FRAGS6_MAP)
                .is_empty(),
            "nothing follows an atomic fragment"
        );
    });
}
