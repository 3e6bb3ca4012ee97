//! The next-hop cache of DNAT'd packets (ebpf/src/nexthop.rs): a container
//! replaced at the same address with a new MAC is reached once the cached
//! answer is older than its interval, and one client's answer is never
//! used for another's packets (the FIB may answer differently per source).
use std::{net::Ipv4Addr, process::Command, time::Duration};

use berth::model::Protocol;
use berth_integration::{pkt::Packet, testrun::*};

use crate::{
    run::{TC_ACT_REDIRECT, XDP_PASS},
    table::CLIENT_UNRESOLVED,
};

/// Longer than the cache's interval (500 ms).
const PAST_THE_INTERVAL: Duration = Duration::from_millis(700);
const NEW_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0, 0x99];

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// (destination MAC, source MAC) `frame` leaves with, through TC and XDP.
fn macs(env: &Env, frame: &[u8]) -> [([u8; 6], [u8; 6]); 2] {
    let tc = env.tc("berth_ingress", frame);
    assert_eq!(tc.code, TC_ACT_REDIRECT, "translated");
    let xdp = env.xdp("berth_xdp", frame);
    assert_eq!(xdp.code, XDP_PASS, "handed off");
    let split = |f: &[u8]| {
        (
            <[u8; 6]>::try_from(&f[..6]).unwrap(),
            <[u8; 6]>::try_from(&f[6..12]).unwrap(),
        )
    };
    // XDP's frame comes back behind 8 bytes of hand-off metadata.
    [split(&tc.frame), split(&xdp.frame[8..])]
}

fn publish(env: &mut Env) {
    env.host_addr(HOST);
    env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
    env.publish(&binding(Ipv4Addr::UNSPECIFIED, 8080, C1, 80, Protocol::Tcp));
}

#[test]
fn a_container_replaced_with_a_new_mac_is_reached_after_the_interval() {
    in_fixture_ns(|env| {
        publish(env);
        let f = Packet::tcp(CLIENT, 40000, HOST, 8080).frame();
        assert_eq!(macs(env, &f), [(C1_MAC, BRIDGE_MAC); 2]);
        sh("ip neigh replace 172.17.0.2 lladdr 02:42:ac:11:00:99 dev docker0 nud permanent");
        std::thread::sleep(PAST_THE_INTERVAL);
        assert_eq!(macs(env, &f), [(NEW_MAC, BRIDGE_MAC); 2]);
    });
}

#[test]
fn one_clients_next_hop_is_not_used_for_another() {
    in_fixture_ns(|env| {
        publish(env);
        // Source routing: CLIENT_UNRESOLVED's packets for the containers
        // leave by the uplink, towards CLIENT.
        sh("ip route add 172.17.0.0/16 via 192.0.2.2 dev up0 table 100");
        sh("ip rule add from 192.0.2.3 lookup 100 pref 100");
        let other = Packet::tcp(CLIENT_UNRESOLVED, 40000, HOST, 8080).frame();
        let mine = Packet::tcp(CLIENT, 40000, HOST, 8080).frame();
        for _ in 0..2 {
            assert_eq!(macs(env, &other), [(CLIENT_MAC, UPLINK_MAC); 2]);
            assert_eq!(macs(env, &mine), [(C1_MAC, BRIDGE_MAC); 2]);
        }
    });
}
