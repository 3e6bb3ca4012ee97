//! The uplink's service-answer cache (`ebpf/src/svc_cache.rs`): an
//! established TCP flow's packet is matched on the cached answer, a new
//! flow never is (a mapping moved to another container takes the next SYN
//! at once), and a cached answer is trusted for 500 ms at most (a removed
//! mapping's leftover flow, which the daemon would sweep, is not
//! translated after that).
use std::{net::Ipv4Addr, time::Duration};

use berth::model::Protocol;
use berth_integration::{pkt::Packet, testrun::*};
use berth_maps::Counter;

use crate::run::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};

/// Longer than the cache's interval (500 ms).
const PAST_THE_INTERVAL: Duration = Duration::from_millis(700);
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let mut p = Packet::tcp(src, sport, dst, dport);
    (p.tcp_flags, p.tcp_seq, p.tcp_ack) = (flags, seq, ack);
    p.frame()
}

/// The IPv4 destination of a frame as TC left it.
fn dst(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

/// Runs this thread's test runs on one CPU: the cache is per CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0
        );
    }
}

fn setup(env: &mut Env) {
    pin_to_cpu0();
    env.host_addr(HOST);
    env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
}

/// A handshake from `cport` to HOST:8080 answered by `ctr`:80; returns the
/// client's ACK that completes it (to send again as an established
/// flow's packet).
fn handshake(env: &Env, cport: u16, ctr: Ipv4Addr) -> Vec<u8> {
    let syn = env.tc(
        "berth_ingress",
        &Packet::tcp(CLIENT, cport, HOST, 8080).frame(),
    );
    assert_eq!((syn.code, dst(&syn.frame)), (TC_ACT_REDIRECT, ctr), "SYN");
    let syn_ack = tcp(ctr, 80, CLIENT, cport, SYN_ACK, 5000, 0x1000_0001);
    assert_eq!(
        env.tc("berth_reply", &syn_ack).code,
        TC_ACT_REDIRECT,
        "SYN-ACK"
    );
    let ack = tcp(CLIENT, cport, HOST, 8080, ACK, 0x1000_0001, 5001);
    let v = env.tc("berth_ingress", &ack);
    assert_eq!((v.code, dst(&v.frame)), (TC_ACT_REDIRECT, ctr), "ACK");
    ack
}

#[test]
fn a_mapping_moved_to_another_container_takes_the_next_syn_at_once() {
    in_fixture_ns(|env| {
        setup(env);
        let to = |c| binding(Ipv4Addr::UNSPECIFIED, 8080, c, 80, Protocol::Tcp);
        env.publish(&to(C1));
        let ack = handshake(env, 40000, C1);
        // The flow's packets now come through the cache.
        let v = env.tc("berth_ingress", &ack);
        assert_eq!((v.code, dst(&v.frame)), (TC_ACT_REDIRECT, C1));
        env.unpublish(&to(C1));
        env.publish(&to(C2));
        // Within the interval, with C1 cached: a new flow looks the
        // mapping up.
        handshake(env, 40001, C2);
        // The old flow (left in the table here; the daemon sweeps it) is
        // not C2's: as without the cache, its ACK opens nothing.
        let before = env.counter(Counter::NatNoFlow);
        assert_eq!(env.tc("berth_ingress", &ack).code, TC_ACT_SHOT);
        assert_eq!(env.counter(Counter::NatNoFlow), before + 1);
    });
}

#[test]
fn a_removed_mappings_leftover_flow_is_not_translated_past_the_interval() {
    in_fixture_ns(|env| {
        setup(env);
        let b = binding(Ipv4Addr::UNSPECIFIED, 8080, C1, 80, Protocol::Tcp);
        env.publish(&b);
        let t = std::time::Instant::now();
        let ack = handshake(env, 40000, C1);
        env.unpublish(&b);
        let v = env.tc("berth_ingress", &ack);
        // The SYN cached the answer; unless this machine stalled past the
        // interval since, the established flow still matches it (what the
        // cache saves is this lookup).
        if t.elapsed() < Duration::from_millis(400) {
            assert_eq!((v.code, dst(&v.frame)), (TC_ACT_REDIRECT, C1), "cached");
        }
        std::thread::sleep(PAST_THE_INTERVAL);
        let before = env.counter(Counter::IngressPass);
        let v = env.tc("berth_ingress", &ack);
        assert_eq!(
            (v.code, dst(&v.frame)),
            (TC_ACT_OK, HOST),
            "past the interval"
        );
        assert_eq!(env.counter(Counter::IngressPass), before + 1);
    });
}
