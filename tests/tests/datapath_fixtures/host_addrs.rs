//! A wildcard mapping answers on the host's own addresses; the datapath
//! checks that when a flow opens, not on every packet (an established
//! flow's entry holds the address its first packet was checked with). What
//! happens when an address goes while a flow is established, step by step
//! as the daemon drives it (README "How the datapath behaves"): the flow
//! keeps being translated until the daemon ends it, new flows to the
//! address are left to the kernel, and once the address is back the ended
//! flow's next segment is dropped (no flow) while new flows open. An
//! address-bound mapping never asked about the host's addresses.
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::Counter;

use crate::{reply::from_container, run::*, table::*};

fn run(env: &Env, t: Table) {
    let docker0 = ifindex("docker0");
    let mut f = Failures(Vec::new());
    for c in &t.cases {
        run_tc(env, &mut f, "berth_ingress", c);
        run_xdp(env, &mut f, c, docker0);
    }
    assert!(f.0.is_empty(), "{}", f.0.join("\n"));
}

fn to_host2(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Packet {
    let mut p = Packet::tcp(CLIENT, sport, HOST2, dport);
    (p.tcp_flags, p.tcp_seq, p.tcp_ack) = (flags, seq, ack);
    p
}

#[test]
fn an_address_removed_under_an_established_flow() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        // A flow to the wildcard mapping 8080 on HOST2, established.
        let syn = to_host2(42000, 8080, pkt::SYN, 1000, 0);
        assert_eq!(env.tc("berth_ingress", &syn.frame()).code, TC_ACT_REDIRECT);
        let mut syn_ack = from_container(C1, 80, CLIENT, 42000, pkt::TCP);
        (syn_ack.tcp_flags, syn_ack.tcp_seq, syn_ack.tcp_ack) = (pkt::SYN | pkt::ACK, 5000, 1001);
        assert_eq!(
            env.tc("berth_reply", &syn_ack.frame()).code,
            TC_ACT_REDIRECT
        );
        let ack = to_host2(42000, 8080, pkt::ACK, 1001, 5001);
        assert_eq!(env.tc("berth_ingress", &ack.frame()).code, TC_ACT_REDIRECT);

        env.remove_host_addr(HOST2);
        let mut t = Table::default();
        t.dnat(
            "address gone: the established flow is translated until the daemon ends it",
            &ack,
            C1_80,
        );
        t.pass(
            "address gone: a new flow to it is not the host's, left untouched",
            to_host2(42001, 8080, pkt::SYN, 7000, 0).frame(),
        );
        let mut expiring = to_host2(42002, 8080, pkt::SYN, 7000, 0);
        expiring.ttl = 1;
        t.pass(
            "address gone: TTL 1 to it is the kernel's to expire",
            expiring.frame(),
        );
        t.dnat(
            "address gone: an address-bound mapping on it never asked",
            &to_host2(42003, 8083, pkt::SYN, 7000, 0),
            (C2, 83),
        );
        run(env, t);

        // The daemon's sweep.
        env.clear_nat();
        let mut t = Table::default();
        t.pass(
            "address gone, flow ended: its next segment is left untouched",
            ack.frame(),
        );
        run(env, t);

        env.host_addr(HOST2);
        let no_flow = env.counter(Counter::NatNoFlow);
        let mut t = Table::default();
        t.drop(
            "address back: the ended flow's next segment is dropped (no flow)",
            ack.frame(),
        );
        t.dnat(
            "address back: a new flow opens",
            &to_host2(42004, 8080, pkt::SYN, 9000, 0),
            C1_80,
        );
        run(env, t);
        assert_eq!(
            env.counter(Counter::NatNoFlow),
            no_flow + 2,
            "counted, per hook"
        );
    });
}
