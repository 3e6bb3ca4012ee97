//! The gate on bridge ports not hooked yet (`--default-sg`), through
//! `BPF_PROG_TEST_RUN`: frames whose source MAC was not last seen on a hooked
//! port are refused at the bridge (`berth_reply`) and at other ports'
//! egress (`berth_to_ctr`); everything else is judged as before. With
//! several bridges, each one's MAC is the host's and each one's hooked
//! ports count alike.
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::{Counter, BRIDGE_MACS_MAP, CONFIG_PORT_GATE};

const OK: u32 = 0;
const SHOT: u32 = 2;
/// docker0 in the fixture namespace.
const BRIDGE_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x01];
/// cni0, a second served bridge.
const BRIDGE2_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x58, 0, 0x01];
/// A container behind a port.
const CTR_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0, 0x05];

fn mac_u64(m: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

fn set_config(env: &mut Env, index: u32, value: u64) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(index, value, 0).unwrap();
}

/// What the daemon writes for a served bridge (MAC -> its ifindex), or
/// removes once it is gone.
fn set_bridge_mac(env: &mut Env, mac: [u8; 6], ifindex: Option<u32>) {
    let mut m: HashMap<&mut MapData, u64, u32> =
        HashMap::try_from(env.ebpf.map_mut(BRIDGE_MACS_MAP).unwrap()).unwrap();
    match ifindex {
        Some(i) => m.insert(mac_u64(mac), i, 0).unwrap(),
        None => m.remove(&mac_u64(mac)).unwrap(),
    }
}

/// A MAC the port programs learned on port `ifindex`.
fn set_learned(env: &mut Env, mac: [u8; 6], ifindex: u32) {
    let mut m: HashMap<&mut MapData, u64, u32> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_PORT_MACS").unwrap()).unwrap();
    m.insert(mac_u64(mac), ifindex, 0).unwrap();
}

fn set_hooked(env: &mut Env, ifindex: u32, hooked: bool) {
    let mut m: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_HOOKED_PORTS").unwrap()).unwrap();
    if hooked {
        m.insert(ifindex, 1, 0).unwrap();
    } else {
        m.remove(&ifindex).unwrap();
    }
}

fn learned_port(env: &mut Env, mac: [u8; 6]) -> Option<u32> {
    let m: HashMap<&mut MapData, u64, u32> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_PORT_MACS").unwrap()).unwrap();
    m.get(&mac_u64(mac), 0).ok()
}

fn unhooked_count(env: &mut Env) -> u64 {
    let m: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(env.ebpf.map_mut("BERTH_COUNTERS").unwrap()).unwrap();
    m.get(&(Counter::UnhookedPort as u32), 0)
        .unwrap()
        .iter()
        .sum()
}

/// A container's TCP segment to a client, from `src_mac`.
fn from_port(src_mac: [u8; 6]) -> Vec<u8> {
    let mut p = Packet::tcp(C1, 80, CLIENT, 40000);
    p.eth_src = src_mac;
    p.eth_dst = BRIDGE_MAC;
    p.frame()
}

/// Another bridge port's ifindex, as `berth_to_ctr` sees a bridged frame.
const OTHER_PORT: u32 = 77;

fn verdict(env: &Env, prog: &str, frame: &[u8]) -> u32 {
    // Frames reach a port's egress from another port (bridged).
    let v = env.tc_from(prog, frame, OTHER_PORT);
    if v.code == OK {
        assert_eq!(v.frame, frame, "{prog} changed a frame it passed");
    }
    v.code
}

fn setup(env: &mut Env, gate: bool) {
    set_bridge_mac(env, BRIDGE_MAC, Some(4));
    set_config(env, CONFIG_PORT_GATE, u64::from(gate));
}

#[test]
fn without_a_default_group_unhooked_ports_are_not_judged() {
    in_fixture_ns(|env| {
        setup(env, false);
        let f = from_port(CTR_MAC);
        assert_eq!(verdict(env, "berth_reply", &f), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &f), OK);
        // Nothing is learned either: no per-packet cost when the gate is off.
        assert_eq!(verdict(env, "berth_from_ctr", &f), OK);
        assert_eq!(learned_port(env, CTR_MAC), None);
        assert_eq!(unhooked_count(env), 0);
    });
}

#[test]
fn with_a_default_group_ipv4_from_a_port_not_hooked_is_refused_and_counted() {
    in_fixture_ns(|env| {
        setup(env, true);
        let f = from_port(CTR_MAC);
        // Never seen on a hooked port: refused towards the host and other ports.
        assert_eq!(verdict(env, "berth_reply", &f), SHOT);
        assert_eq!(verdict(env, "berth_to_ctr", &f), SHOT);
        assert_eq!(unhooked_count(env), 2);
        // ARP is not IPv4: it passes (it carries no data).
        let arp = pkt::arp(1, CTR_MAC, C1, [0; 6], BRIDGE_IP);
        assert_eq!(verdict(env, "berth_reply", &arp), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &arp), OK);
        // What the host routes or translates carries the bridge's MAC...
        assert_eq!(verdict(env, "berth_to_ctr", &from_port(BRIDGE_MAC)), OK);
        // ...and what it sends itself came in by no interface at all.
        assert_eq!(env.tc_from("berth_to_ctr", &f, 0).code, OK);
        assert_eq!(unhooked_count(env), 2);
    });
}

#[test]
fn a_port_counts_as_hooked_once_listed_and_no_longer_once_gone() {
    in_fixture_ns(|env| {
        setup(env, true);
        let f = from_port(CTR_MAC);
        // The port's own program learns where the MAC comes in (BPF_PROG_TEST_RUN
        // runs TC programs on lo)...
        assert_eq!(verdict(env, "berth_from_ctr", &f), OK);
        let lo = ifindex("lo");
        assert_eq!(learned_port(env, CTR_MAC), Some(lo));
        // ...but until the daemon lists the port as hooked, it stays refused.
        assert_eq!(verdict(env, "berth_reply", &f), SHOT);
        set_hooked(env, lo, true);
        assert_eq!(verdict(env, "berth_reply", &f), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &f), OK);
        // The port goes away; a new container reusing the MAC (Docker
        // derives it from the IP) is refused until its own port is hooked.
        set_hooked(env, lo, false);
        assert_eq!(verdict(env, "berth_reply", &f), SHOT);
        assert_eq!(verdict(env, "berth_to_ctr", &f), SHOT);
    });
}

#[test]
fn every_served_bridges_mac_is_the_hosts_and_a_gone_bridges_is_not() {
    in_fixture_ns(|env| {
        setup(env, true);
        // cni0 not served yet: a frame from its MAC is a port's like any.
        let from_cni0 = from_port(BRIDGE2_MAC);
        assert_eq!(verdict(env, "berth_to_ctr", &from_cni0), SHOT);
        assert_eq!(verdict(env, "berth_reply", &from_cni0), SHOT);
        assert_eq!(unhooked_count(env), 2);
        // Served: what the host routes out of cni0 passes byte-identical,
        // as docker0's always did.
        set_bridge_mac(env, BRIDGE2_MAC, Some(9));
        assert_eq!(verdict(env, "berth_to_ctr", &from_cni0), OK);
        assert_eq!(verdict(env, "berth_reply", &from_cni0), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &from_port(BRIDGE_MAC)), OK);
        assert_eq!(unhooked_count(env), 2);
        // Deleted (the daemon drops its MAC): refused again, and docker0's
        // MAC is untouched by it.
        set_bridge_mac(env, BRIDGE2_MAC, None);
        assert_eq!(verdict(env, "berth_to_ctr", &from_cni0), SHOT);
        assert_eq!(verdict(env, "berth_to_ctr", &from_port(BRIDGE_MAC)), OK);
        assert_eq!(unhooked_count(env), 3);
    });
}

#[test]
fn a_hooked_port_of_the_second_bridge_counts_as_hooked_everywhere() {
    in_fixture_ns(|env| {
        setup(env, true);
        set_bridge_mac(env, BRIDGE2_MAC, Some(9));
        // A container on cni0, behind its port 78: learned there, not yet
        // listed as hooked.
        const CNI_PORT: u32 = 78;
        const CNI_CTR_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x58, 0, 0x05];
        set_learned(env, CNI_CTR_MAC, CNI_PORT);
        let f = from_port(CNI_CTR_MAC);
        assert_eq!(verdict(env, "berth_reply", &f), SHOT);
        set_hooked(env, CNI_PORT, true);
        // Hooked: it reaches the host (either bridge's berth_reply) and
        // other ports as docker0's containers do, frame untouched.
        assert_eq!(verdict(env, "berth_reply", &f), OK);
        assert_eq!(verdict(env, "berth_to_ctr", &f), OK);
        // Its port goes with cni0: refused again.
        set_hooked(env, CNI_PORT, false);
        assert_eq!(verdict(env, "berth_reply", &f), SHOT);
    });
}
