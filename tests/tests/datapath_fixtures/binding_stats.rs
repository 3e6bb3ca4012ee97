//! Per-binding counters (`BERTH_BINDING_STATS`) under `BPF_PROG_TEST_RUN`:
//! a hit adds exactly the packet and its IPv4 total length to its own
//! mapping's slot, on the CPU the program ran on, and nothing anywhere
//! else; a miss, a refusal and a packet of no flow add no traffic. The
//! test thread is pinned to one CPU, so the slot that must move is known.
use aya::maps::{HashMap, MapData, PerCpuArray};
use berth::{
    datapath::bpf_keys::{backend, service_key},
    model::{Binding, Protocol},
};
use berth_integration::{
    pkt::{Packet, ACK},
    testrun::*,
};
use berth_maps::{program, Backend, BindingStats, ServiceKey};

use crate::table::*;

/// The slots the cases' mappings count in.
const SLOT_UDP: u32 = 5;
const SLOT_UDP_OTHER: u32 = 6;
const SLOT_TCP: u32 = 7;
const SLOT_REFUSED: u32 = 9;

fn publish_in_slot(env: &mut Env, b: &Binding, slot: u32) {
    let mut m: HashMap<&mut MapData, ServiceKey, Backend> =
        HashMap::try_from(env.ebpf.map_mut("BERTH_SERVICES").unwrap()).unwrap();
    let mut v = backend(b);
    v.binding = slot;
    m.insert(service_key(b), v, 0).unwrap();
}

/// Every slot on every CPU: `[cpu][slot]`.
fn all_slots(env: &Env) -> Vec<Vec<BindingStats>> {
    let m: PerCpuArray<&MapData, BindingStats> =
        PerCpuArray::try_from(env.ebpf.map("BERTH_BINDING_STATS").unwrap()).unwrap();
    let per_slot: Vec<Vec<BindingStats>> = (0..m.len())
        .map(|s| m.get(&s, 0).unwrap().iter().copied().collect())
        .collect();
    let cpus = per_slot[0].len();
    (0..cpus)
        .map(|c| per_slot.iter().map(|s| s[c]).collect())
        .collect()
}

fn pin_to_last_cpu() -> usize {
    let cpu = aya::util::online_cpus().unwrap().into_iter().max().unwrap() as usize;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    cpu
}

fn tot_len(frame: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([frame[16], frame[17]]))
}

/// Runs `prog` on `frame` and checks that the slots moved exactly by
/// `delta` on `slot` of `cpu` and nowhere else.
fn check(
    env: &Env,
    cpu: usize,
    case: &str,
    run: impl FnOnce(&Env),
    slot: u32,
    delta: BindingStats,
) {
    let before = all_slots(env);
    run(env);
    let after = all_slots(env);
    for (c, (b, a)) in before.iter().zip(&after).enumerate() {
        for (s, (b, a)) in b.iter().zip(a).enumerate() {
            let want = if c == cpu && s == slot as usize {
                BindingStats {
                    packets_in: b.packets_in + delta.packets_in,
                    bytes_in: b.bytes_in + delta.bytes_in,
                    packets_out: b.packets_out + delta.packets_out,
                    bytes_out: b.bytes_out + delta.bytes_out,
                    flows_opened: b.flows_opened + delta.flows_opened,
                    flows_refused: b.flows_refused + delta.flows_refused,
                }
            } else {
                *b
            };
            assert_eq!(*a, want, "{case}: cpu {c} slot {s}");
        }
    }
}

#[test]
fn a_hit_counts_in_its_own_slot_on_its_cpu_and_nothing_else_moves() {
    in_fixture_ns(|env| {
        let cpu = pin_to_last_cpu();
        publish_defaults(env);
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        publish_in_slot(env, &binding(any, 8053, C1, 53, Protocol::Udp), SLOT_UDP);
        publish_in_slot(
            env,
            &binding(any, 8055, C1, 53, Protocol::Udp),
            SLOT_UDP_OTHER,
        );
        publish_in_slot(env, &binding(any, 8080, C1, 80, Protocol::Tcp), SLOT_TCP);
        publish_in_slot(
            env,
            &binding(any, 8090, C2, 90, Protocol::Tcp),
            SLOT_REFUSED,
        );

        let mut first = client_udp(8053);
        first.payload = vec![7; 100];
        let f = first.frame();
        let len = tot_len(&f);
        assert_eq!(len, 20 + 8 + 100);
        let opened = BindingStats {
            packets_in: 1,
            bytes_in: len,
            flows_opened: 1,
            ..Default::default()
        };
        check(
            env,
            cpu,
            "first datagram (tc)",
            |e| {
                e.tc(program::INGRESS, &f);
            },
            SLOT_UDP,
            opened,
        );
        let again = BindingStats {
            packets_in: 1,
            bytes_in: len,
            ..Default::default()
        };
        check(
            env,
            cpu,
            "same flow again (xdp)",
            |e| {
                e.xdp(program::XDP, &f);
            },
            SLOT_UDP,
            again,
        );

        // The container's reply, at the bridge: counted out, in the slot
        // its flow entry carries.
        let mut reply = Packet::udp(C1, 53, CLIENT, 5000);
        reply.eth_src = C1_MAC;
        reply.eth_dst = BRIDGE_MAC;
        reply.payload = vec![9; 33];
        let r = reply.frame();
        let out = BindingStats {
            packets_out: 1,
            bytes_out: tot_len(&r),
            ..Default::default()
        };
        check(
            env,
            cpu,
            "reply (tc)",
            |e| {
                e.tc(program::REPLY, &r);
            },
            SLOT_UDP,
            out,
        );

        // A port nothing is published on: nothing moves.
        let miss = client_udp(9999).frame();
        check(
            env,
            cpu,
            "miss",
            |e| {
                e.tc(program::INGRESS, &miss);
            },
            0,
            BindingStats::default(),
        );

        // TCP that opens nothing (an ACK of no flow): dropped, uncounted.
        let mut stray = client_tcp(8080);
        stray.tcp_flags = ACK;
        let stray = stray.frame();
        check(
            env,
            cpu,
            "tcp of no flow",
            |e| {
                e.tc(program::INGRESS, &stray);
            },
            0,
            BindingStats::default(),
        );

        // A SYN opens a flow of the TCP mapping.
        let syn = client_tcp(8080).frame();
        let syn_counted = BindingStats {
            packets_in: 1,
            bytes_in: tot_len(&syn),
            flows_opened: 1,
            ..Default::default()
        };
        check(
            env,
            cpu,
            "syn",
            |e| {
                e.tc(program::INGRESS, &syn);
            },
            SLOT_TCP,
            syn_counted,
        );

        // A task whose groups allow nothing: refused, counted as such,
        // no traffic and no flow.
        env.set_endpoint(C2, 42, true);
        let refused = client_tcp(8090).frame();
        let r = env.tc(program::INGRESS, &refused);
        assert_eq!(r.code, 2, "refused: TC_ACT_SHOT");
        check(
            env,
            cpu,
            "refused by a security group",
            |e| {
                e.tc(program::INGRESS, &refused);
            },
            SLOT_REFUSED,
            BindingStats {
                flows_refused: 1,
                ..Default::default()
            },
        );
    });
}
