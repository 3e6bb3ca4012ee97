//! IPv6 through the real daemon (issue 15): the host's IPv6 addresses the
//! datapath's wildcard (`[::]`) mappings serve follow the host's
//! interfaces; HTTP and UDP over IPv6 to a port published with
//! `map add --ip6` reach the container with the client's own address, in
//! both attach modes; the daemon expires idle IPv6 flows and forgets a
//! removed IPv6 binding's.
use std::{
    collections::BTreeSet,
    net::Ipv6Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    rig::{peer_ip, Mode},
    tcp_connect, HttpPeerServer, Rig, UdpEchoServer,
};

/// The client's address on the dual-stack rig's uplink network.
const CLIENT6: &str = "2001:db8::2";

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

/// A dual-stack rig in `mode` with the container's IPv6 HTTP server on 80
/// and UDP echo on 53 published over IPv6 only on `[::]:8080` and
/// `[::]:5353/udp`.
fn published6(mode: Mode, flags: &[&str]) -> (Rig, HttpPeerServer, UdpEchoServer) {
    let rig = Rig::builder().dual_stack().mode(mode).flags(flags).start();
    let web = rig.serve_http6(&rig.topo.container.ns, 80);
    let echo = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    rig.berth_words("map add --task web6 --ip6 fd00:17::2 -p 8080:80 -p 5353:53/udp");
    (rig, web, echo)
}

fn http_and_udp_reach_the_container_with_the_clients_address(mode: Mode) {
    let (rig, _web, _echo) = published6(mode, &[]);
    let body = rig
        .client_get6(8080)
        .expect("HTTP over IPv6 to [host]:8080");
    assert_eq!(peer_ip(&body), CLIENT6, "the container sees the client");
    let reply = rig
        .client_udp6(5353, "six")
        .expect("a UDP echo over IPv6 to [host]:5353");
    assert_eq!(
        reply.from,
        rig.topo.host.addr6(5353),
        "the answer comes from the address and port called"
    );
    // The echo answers with the sender's address and port.
    assert!(
        reply.text.starts_with(&format!("[{CLIENT6}]:")),
        "the container sees the client: {}",
        reply.text
    );
}

#[test]
fn http_and_udp_over_ipv6_reach_the_container_with_the_clients_address_tc() {
    http_and_udp_reach_the_container_with_the_clients_address(Mode::Tc);
}

#[test]
fn http_and_udp_over_ipv6_reach_the_container_with_the_clients_address_xdp() {
    http_and_udp_reach_the_container_with_the_clients_address(Mode::Xdp);
}

/// Entries in the pinned IPv6 flow table `name`.
fn nat6_entries(rig: &Rig, name: &str) -> usize {
    use berth::datapath::sys;
    let fd = sys::obj_get(&rig.bpffs.path().join("berth").join(name)).expect("pinned");
    sys::map_keys(&fd, size_of::<berth_maps::FlowKey6>())
        .expect("keys")
        .len()
}

fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// An answered UDP flow is gone once idle past its timeout (plus an expiry
/// pass); an established TCP flow, whose timeout is days, stays until its
/// binding is removed, and then goes at once.
#[test]
fn idle_ipv6_flows_expire_and_a_removed_bindings_flows_are_forgotten() {
    let (rig, _web, _echo) = published6(
        Mode::Tc,
        &["--ct-udp-timeout", "1", "--ct-udp-stream-timeout", "1"],
    );
    let target = rig.topo.host.addr6(8080);
    let conn = rig
        .topo
        .client
        .ns
        .run(move || tcp_connect(target, Duration::from_secs(3)))
        .expect("a TCP connection over IPv6");
    rig.client_udp6(5353, "six").expect("a UDP echo over IPv6");
    eventually("both flows tracked", Duration::from_secs(5), || {
        nat6_entries(&rig, "BERTH_NAT6") == 2
    });
    eventually(
        "the idle UDP flow expired, the TCP one kept",
        Duration::from_secs(15),
        || nat6_entries(&rig, "BERTH_NAT6") == 1,
    );
    thread::sleep(Duration::from_secs(6)); // past another expiry pass
    assert_eq!(nat6_entries(&rig, "BERTH_NAT6"), 1, "established TCP stays");
    rig.berth(&["map", "rm", "--task", "web6"]);
    eventually(
        "the removed binding's flow forgotten",
        Duration::from_secs(5),
        || nat6_entries(&rig, "BERTH_NAT6") + nat6_entries(&rig, "BERTH_NAT6_NEW") == 0,
    );
    drop(conn);
}
