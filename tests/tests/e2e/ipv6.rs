//! IPv6 through the real daemon (issue 15). What needs no IPv6 publishing
//! from the CLI yet: the host's IPv6 addresses the datapath's wildcard
//! (`[::]`) mappings serve follow the host's interfaces.
use std::{
    collections::BTreeSet,
    net::Ipv6Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use berth_integration::Rig;

/// The addresses in the pinned `BERTH_HOST_ADDRS6`.
fn host_addrs6(rig: &Rig) -> BTreeSet<Ipv6Addr> {
    use berth::datapath::sys;
    let pin = rig.bpffs.path().join("berth/BERTH_HOST_ADDRS6");
    let fd = sys::obj_get(&pin).expect("BERTH_HOST_ADDRS6 pinned");
    sys::map_keys(&fd, 16)
        .expect("keys")
        .into_iter()
        .map(|k| Ipv6Addr::from(<[u8; 16]>::try_from(k.as_slice()).unwrap()))
        .collect()
}

fn ip(rig: &Rig, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", rig.topo.host.ns.name(), "ip"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (the daemon looks every 2 s) until `want` holds of the set.
fn until(rig: &Rig, what: &str, want: impl Fn(&BTreeSet<Ipv6Addr>) -> bool) {
    let start = Instant::now();
    loop {
        let now = host_addrs6(rig);
        if want(&now) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {now:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_hosts_ipv6_addresses_are_followed_as_they_come_and_go() {
    let rig = Rig::start();
    let added: Ipv6Addr = "2001:db8:77::1".parse().unwrap();
    until(&rig, "loopback at start", |s| {
        s.contains(&Ipv6Addr::LOCALHOST) && !s.contains(&added)
    });
    ip(
        &rig,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:77::1/64",
            "dev",
            "up0",
            "nodad",
        ],
    );
    until(&rig, "an address added to the uplink", |s| {
        s.contains(&added)
    });
    ip(
        &rig,
        &["-6", "addr", "del", "2001:db8:77::1/64", "dev", "up0"],
    );
    until(&rig, "the address removed", |s| !s.contains(&added));
}

#[test]
fn an_address_that_goes_ends_the_wildcard_flows_on_it_and_keeps_the_bound_ones() {
    use aya::maps::{HashMap, Map, MapData};
    use berth_maps::{FlowKey6, NatEntry6, ServiceKey6};
    let rig = Rig::start();
    let gone: Ipv6Addr = "2001:db8:77::1".parse().unwrap();
    let stays: Ipv6Addr = "2001:db8:77::2".parse().unwrap();
    for a in ["2001:db8:77::1/64", "2001:db8:77::2/64"] {
        ip(&rig, &["-6", "addr", "add", a, "dev", "up0", "nodad"]);
    }
    until(&rig, "both added", |s| {
        s.contains(&gone) && s.contains(&stays)
    });
    let pin = |name: &str| MapData::from_pin(rig.bpffs.path().join("berth").join(name)).unwrap();
    // As the datapath would have them: port 9090 bound to the address
    // that goes, flows on it through 8080 ([::]) and 9090, and one on the
    // address that stays.
    let mut services: HashMap<MapData, ServiceKey6, berth_maps::Backend6> =
        HashMap::try_from(Map::HashMap(pin("BERTH_SERVICES6"))).unwrap();
    let bound = ServiceKey6 {
        host_addr: gone.octets(),
        host_port_be: 9090u16.to_be(),
        proto: 6,
        _pad: 0,
    };
    services
        .insert(bound, berth_maps::Backend6::default(), 0)
        .unwrap();
    let mut nat6: HashMap<MapData, FlowKey6, NatEntry6> =
        HashMap::try_from(Map::HashMap(pin("BERTH_NAT6"))).unwrap();
    let flow = |client_port: u16, host: Ipv6Addr, host_port: u16| {
        let k = FlowKey6 {
            src_addr: "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            dst_addr: "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets(),
            src_port_be: 80u16.to_be(),
            dst_port_be: client_port.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let e = NatEntry6 {
            host_addr: host.octets(),
            host_port_be: host_port.to_be(),
            client_port_be: client_port.to_be(),
            ..Default::default()
        };
        (k, e)
    };
    let wildcard_on_gone = flow(40001, gone, 8080);
    let bound_on_gone = flow(40002, gone, 9090);
    let on_stays = flow(40003, stays, 8080);
    for (k, e) in [wildcard_on_gone, bound_on_gone, on_stays] {
        nat6.insert(k, e, 0).unwrap();
    }
    ip(
        &rig,
        &["-6", "addr", "del", "2001:db8:77::1/64", "dev", "up0"],
    );
    until(&rig, "the address removed", |s| {
        !s.contains(&gone) && s.contains(&stays)
    });
    // The flows end in the same pass that removes the address, just after.
    let start = Instant::now();
    loop {
        let left: BTreeSet<u16> = nat6
            .keys()
            .map(|k| u16::from_be(k.unwrap().dst_port_be))
            .collect();
        if left == BTreeSet::from([40002, 40003]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "only the wildcard flow on it must end: {left:?} left"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
