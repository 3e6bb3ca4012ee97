//! Flows the previous release tracked (layout 1: 16-byte `NatEntry`, one
//! table, entries made by a flow's first packet), as the upgrade converts
//! them (`berth::datapath::pins::migrate`). Their packets are no longer
//! SYNs, so without the converted entry the new programs would drop them
//! (`nat_no_flow`); with it they are translated both ways, exactly as any
//! established flow's.
use aya::maps::{HashMap, MapData};
use berth::datapath::pins::migrate;
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::{Counter, FlowKey, NatEntry, NAT_F_CLOSING, NAT_F_ESTABLISHED, NAT_F_REPLIED};

use crate::{reply::from_container, run::*, table::*};

/// The reply-direction key of the TCP flow CLIENT:`sport` -> HOST:8080
/// (published to C1:80).
fn flow_key(sport: u16) -> FlowKey {
    FlowKey {
        src_addr_be: u32::from_ne_bytes(C1.octets()),
        dst_addr_be: u32::from_ne_bytes(CLIENT.octets()),
        src_port_be: 80u16.to_be(),
        dst_port_be: sport.to_be(),
        proto: pkt::TCP,
        _pad: [0; 3],
    }
}

fn key_bytes(k: &FlowKey) -> Vec<u8> {
    bytemuck::bytes_of(k).to_vec()
}

/// Puts in `BERTH_NAT` what the upgrade makes of layout 1's entry for the
/// flow from `sport`: seen 1 ns after boot, answered.
fn pin_converted_flow(env: &mut Env, sport: u16) -> FlowKey {
    let key = flow_key(sport);
    let v1 = migrate::NatEntryV1 {
        host_addr_be: u32::from_ne_bytes(HOST.octets()),
        host_port_be: 8080u16.to_be(),
        flags: migrate::F_REPLIED_V1,
        _pad: 0,
        last_seen_ns: 1,
    };
    let bytes = migrate::nat_entry_v1_to_v3(&key_bytes(&key), &migrate::nat_v1_bytes(&v1));
    let entry: NatEntry = bytemuck::pod_read_unaligned(&bytes);
    let mut m: HashMap<&mut MapData, FlowKey, NatEntry> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_NAT").unwrap()).unwrap();
    m.insert(key, entry, 0).unwrap();
    key
}

fn seg(mut p: Packet, flags: u8, seq: u32, ack: u32) -> Packet {
    (p.tcp_flags, p.tcp_seq, p.tcp_ack, p.tcp_window) = (flags, seq, ack, 502);
    p
}

fn check(f: Failures, n: usize) {
    assert!(
        f.0.is_empty(),
        "{} failures:\n{}",
        f.0.len(),
        f.0.join("\n")
    );
    assert!(n > 0);
}

#[test]
fn a_flow_converted_from_layout_1_is_translated_both_ways_mid_stream() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let client = Packet::tcp(CLIENT, 42600, HOST, 8080);
        let mut data = seg(client.clone(), pkt::PSH | pkt::ACK, 7_000_000, 9_000_000);
        data.payload = b"after the upgrade".to_vec();

        // Without the converted entry: a segment of no flow, dropped.
        let mut none = Table::default();
        none.drop("an untracked mid-stream segment", data.frame());
        let mut f = Failures(Vec::new());
        let docker0 = ifindex("docker0");
        for c in &none.cases {
            run_xdp(env, &mut f, c, docker0);
            run_tc(env, &mut f, "berth_ingress", c);
        }
        check(f, none.cases.len());

        let key = pin_converted_flow(env, 42600);
        let mut client_side = Table::default();
        client_side.dnat("migrated: the client's data", &data, C1_80);
        client_side.dnat(
            "migrated: the client's FIN",
            &seg(client, pkt::FIN | pkt::ACK, 7_000_017, 9_000_000),
            C1_80,
        );
        let mut f = Failures(Vec::new());
        for c in &client_side.cases {
            run_xdp(env, &mut f, c, docker0);
            run_tc(env, &mut f, "berth_ingress", c);
        }
        let reply = from_container(C1, 80, CLIENT, 42600, pkt::TCP);
        let mut container_side = Table::default();
        container_side.snat(
            "migrated: the container's answer",
            &seg(reply.clone(), pkt::ACK, 9_000_000, 7_000_017),
            (HOST, 8080),
        );
        let oow = env.counter(Counter::TcpOutOfWindow);
        container_side.snat(
            "migrated: the container's RST",
            &seg(reply, pkt::RST, 9_000_000, 0),
            (HOST, 8080),
        );
        for c in &container_side.cases {
            run_tc(env, &mut f, "berth_reply", c);
        }
        check(f, client_side.cases.len() + container_side.cases.len());

        // Still the established flow it was converted to; no sequence state
        // is learnt mid-stream, so neither the FIN nor the RST is believed
        // (the RST is counted).
        let e: NatEntry = env.map_get("BERTH_NAT", &key).expect("still tracked");
        assert!(e.last_seen_ns > 1, "refreshed by the new programs");
        assert_eq!(e.flags, NAT_F_ESTABLISHED | NAT_F_REPLIED);
        assert_eq!(e.flags & NAT_F_CLOSING, 0);
        assert_eq!(env.counter(Counter::TcpOutOfWindow), oow + 1);
        assert!(env
            .map_get::<FlowKey, NatEntry>("BERTH_NAT_NEW", &key)
            .is_none());
    });
}
