//! `BERTH_EXACT_PORTS`: the service lookup probes a mapping on the packet's
//! exact address only where the port's bit is set (the daemon sets it
//! before publishing one, `userspace/src/adapters/datapath/exact_ports.rs`).
//! The last rows clear a bit against the rules on purpose,
//! to show the probe is skipped.
use std::net::Ipv4Addr;

use berth::model::Protocol;
use berth_integration::testrun::*;
use berth_maps::PROTO_TCP;

use crate::{run::*, table::*};

/// Runs `cases` through both ingress hooks; panics with every failure.
fn run(env: &Env, cases: &[Case]) {
    let docker0 = ifindex("docker0");
    let mut f = Failures(Vec::new());
    for c in cases {
        run_xdp(env, &mut f, c, docker0);
        run_tc(env, &mut f, "berth_ingress", c);
    }
    assert!(f.0.is_empty(), "{}", f.0.join("\n"));
}

#[test]
fn the_exact_probe_follows_the_ports_bit() {
    in_fixture_ns(|env| {
        env.host_addr(HOST);
        env.host_addr(HOST2);
        env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
        let any = Ipv4Addr::UNSPECIFIED;
        // Env::publish sets the bit of an address-bound mapping's port.
        env.publish(&binding(HOST2, 8083, C2, 83, Protocol::Tcp));
        env.publish(&binding(any, 8083, C1, 83, Protocol::Tcp));
        env.publish(&binding(any, 8084, C1, 84, Protocol::Tcp));
        let mut to_host2 = client_tcp(8083);
        to_host2.dst = HOST2;
        let mut to_host = client_tcp(8083);
        to_host.sport = 40001;
        let mut only_wildcard = client_tcp(8084);
        only_wildcard.dst = HOST2;
        only_wildcard.sport = 40002;
        let mut t = Table::default();
        t.dnat(
            "bit set: the address-bound mapping wins",
            &to_host2,
            (C2, 83),
        );
        t.dnat(
            "bit set: another address takes the wildcard",
            &to_host,
            (C1, 83),
        );
        t.dnat("bit clear: a wildcard-only port", &only_wildcard, (C1, 84));
        run(env, &t.cases);

        env.clear_nat();
        env.set_exact_port(PROTO_TCP, 8083, false);
        let mut t = Table::default();
        t.dnat(
            "bit cleared: the exact mapping is not probed",
            &to_host2,
            (C1, 83),
        );
        run(env, &t.cases);

        env.clear_nat();
        env.set_exact_port(PROTO_TCP, 8083, true);
        let mut t = Table::default();
        t.dnat(
            "bit set again: the exact mapping is back",
            &to_host2,
            (C2, 83),
        );
        run(env, &t.cases);
    });
}
