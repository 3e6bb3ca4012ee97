//! The daemon's "every mapping is on the wildcard address" flag
//! (`BERTH_CONFIG` index `CONFIG_WILDCARD_ONLY)`: while it is set, the service
//! lookup skips the exact-address probe. The daemon clears it before it
//! publishes a mapping on a specific address (datapath/bpf.rs), so the
//! rows with an address-bound mapping under the flag set it against the
//! rules on purpose, to show what it switches off.
use std::net::Ipv4Addr;

use aya::maps::{Array, MapData};
use berth::model::Protocol;
use berth_integration::testrun::*;
use berth_maps::CONFIG_WILDCARD_ONLY;

use crate::{run::*, table::*};

fn set_wildcard_only(env: &mut Env, on: bool) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(CONFIG_WILDCARD_ONLY, u64::from(on), 0).unwrap();
}

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

/// Wildcard mappings only, as the daemon flags them: published ports on
/// each host address are translated, anything else is left alone.
fn wildcard_cases(flag: &str) -> Vec<Case> {
    let mut t = Table::default();
    t.dnat(
        format!("{flag}: wildcard mapping"),
        &client_tcp(8080),
        C1_80,
    );
    let mut p = client_tcp(8080);
    p.dst = HOST2;
    // Another client port: the same one would clash with the flow above.
    p.sport = 40001;
    t.dnat(
        format!("{flag}: wildcard mapping, second address"),
        &p,
        C1_80,
    );
    t.dnat(
        format!("{flag}: wildcard udp mapping"),
        &client_udp(8053),
        (C1, 53),
    );
    t.pass(
        format!("{flag}: unpublished port"),
        client_tcp(9999).frame(),
    );
    let mut p = client_tcp(8080);
    p.dst = OTHER;
    t.pass(format!("{flag}: an address not the host's"), p.frame());
    t.cases
}

fn publish_wildcard(env: &mut Env) {
    env.host_addr(HOST);
    env.host_addr(HOST2);
    env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
    let any = Ipv4Addr::UNSPECIFIED;
    env.publish(&binding(any, 8080, C1, 80, Protocol::Tcp));
    env.publish(&binding(any, 8053, C1, 53, Protocol::Udp));
}

#[test]
fn wildcard_mappings_translate_with_the_flag_off_and_on() {
    in_fixture_ns(|env| {
        publish_wildcard(env);
        run(env, &wildcard_cases("flag off"));
        env.clear_nat();
        set_wildcard_only(env, true);
        run(env, &wildcard_cases("flag on"));
    });
}

#[test]
fn with_the_wildcard_only_flag_an_address_bound_mapping_is_not_probed() {
    in_fixture_ns(|env| {
        publish_wildcard(env);
        let any = Ipv4Addr::UNSPECIFIED;
        env.publish(&binding(HOST2, 8083, C2, 83, Protocol::Tcp));
        env.publish(&binding(any, 8083, C1, 83, Protocol::Tcp));
        let mut p = client_tcp(8083);
        p.dst = HOST2;
        let mut t = Table::default();
        t.dnat("flag off: the address-bound mapping wins", &p, (C2, 83));
        run(env, &t.cases);
        env.clear_nat();
        set_wildcard_only(env, true);
        let mut t = Table::default();
        t.dnat("flag on: only the wildcard mapping is seen", &p, (C1, 83));
        run(env, &t.cases);
    });
}
