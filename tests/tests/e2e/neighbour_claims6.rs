//! IPv6 neighbour claims from containers no berth task knows, end to end
//! against the real daemon and CLI: the daemon learns each bridge port's
//! IPv6 addresses from its container's namespace, so a container on the
//! bridge that is no task's (until session 10 its port belonged to no known
//! task and its claims for a policy container's IPv6 address passed) is
//! refused a policy container's IPv6 address and the gateway's, untagged
//! or behind VLAN 0 tags, and the host keeps sending the victim's traffic
//! to the victim. An IPv6-only task with policy still announces its own
//! address, which only the learned address lets it. (Containers of tasks
//! without policy: `neighbour_claims`.)
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr::{CONTAINER2_IP6, CONTAINER_IP, CONTAINER_IP6},
    pkt::{self, Mac},
    rawsock::RawSocket,
    Rig,
};

use super::neighbour_claims::{advert, claim_for_a_while, neigh_has, neigh_set, FAKE_MAC};

/// t1 (the first container), dual-stack, in a group of its own (policy,
/// nothing let in). The second container is left to the test.
fn setup() -> Rig {
    let rig = Rig::builder().wait_for_ports().dual_stack().start();
    let (ip, ip6) = (CONTAINER_IP.to_string(), CONTAINER_IP6.to_string());
    rig.berth(&[
        "map", "add", "--task", "t1", "--ip", &ip, "--ip6", &ip6, "-p", "8080:80",
    ]);
    rig.berth(&["sg", "create", "sg-t1"]);
    rig.berth(&["sg", "attach", "sg-t1", "--task", "t1"]);
    rig
}

/// A copy of `frame` under an 802.1ad tag of VLAN 0 outside an 802.1Q
/// tag of VLAN 0: Linux reads what is inside as untagged.
fn qinq0(frame: &[u8]) -> Vec<u8> {
    pkt::qinq_tagged(frame, 0, 0)
}

/// Whether `f` is an IPv6 frame to `dst` sent to the MAC `mac`.
fn ipv6_to(f: &[u8], mac: Mac, dst: IpAddr) -> bool {
    let IpAddr::V6(dst) = dst else {
        return false;
    };
    f.len() >= pkt::ETH_LEN + 40
        && f[..6] == mac
        && u16::from_be_bytes([f[12], f[13]]) == 0x86dd
        && f[pkt::ETH_LEN + 24..pkt::ETH_LEN + 40] == dst.octets()
}

#[test]
fn a_container_no_task_knows_cannot_take_a_policy_containers_or_the_gateways_ipv6_address() {
    let rig = setup();
    let (host, t1, t2) = (&rig.topo.host, &rig.topo.container, &rig.topo.container2);
    let t1_mac = t1.link().unwrap().mac;
    let t2_mac = t2.link().unwrap().mac;
    let bridge_mac = host.bridge_link().unwrap().mac;
    let gateway = IpAddr::V6(host.bridge_ip6.expect("a dual-stack bridge"));
    let (t1_ip, t2_ip) = (IpAddr::V6(CONTAINER_IP6), IpAddr::V6(CONTAINER2_IP6));
    neigh_set(&host.ns, t1_ip, t1_mac, host.bridge);
    neigh_set(&host.ns, t2_ip, FAKE_MAC, host.bridge);
    neigh_set(&t1.ns, gateway, bridge_mac, t1.ifname);
    let sock = RawSocket::open_in(&t2.ns, t2.ifname).unwrap();
    let t2_from = (t2_ip, t2_mac);
    let claims = [
        advert(t2_from, t1_ip),
        advert(t2_from, gateway),
        qinq0(&advert(t2_from, t1_ip)),
        qinq0(&advert(t2_from, gateway)),
        // Its own, untagged.
        advert(t2_from, t2_ip),
    ];
    let (spoofed0, tagged0) = (
        rig.counter("neigh_spoofed"),
        rig.counter("ctr_frame_refused"),
    );
    let rounds = claim_for_a_while(&sock, &claims);

    let (ok, shown) = neigh_has(&host.ns, t2_ip, host.bridge, t2_mac);
    assert!(ok, "t2's own advertisement did not reach the host: {shown}");
    let (ok, shown) = neigh_has(&host.ns, t1_ip, host.bridge, t1_mac);
    assert!(ok, "t2 took t1's address at the host: {shown}");
    let (ok, shown) = neigh_has(&t1.ns, gateway, t1.ifname, bridge_mac);
    assert!(ok, "t2 took the gateway's address at t1: {shown}");
    assert_eq!(
        rig.counter("neigh_spoofed"),
        spoofed0 + 2 * rounds,
        "two refused claims a round"
    );
    assert_eq!(
        rig.counter("ctr_frame_refused"),
        tagged0 + 2 * rounds,
        "two tagged claims a round"
    );

    // What the host sends t1 goes to t1's MAC, never to t2.
    host.ns
        .run(move || {
            let s = UdpSocket::bind(SocketAddr::new("::".parse().unwrap(), 0))?;
            for _ in 0..3 {
                s.send_to(b"for t1", SocketAddr::new(t1_ip, 9))?;
            }
            Ok::<_, std::io::Error>(())
        })
        .expect("send to t1");
    let stolen = sock
        .collect(Duration::from_secs(1), |f| ipv6_to(f, t2_mac, t1_ip))
        .unwrap();
    assert!(stolen.is_empty(), "t1's traffic reached t2: {stolen:?}");
}

/// The container of an IPv6-only task with policy: its IPv4 address is no
/// task's, so its port's task is unknown; its own address is its port's
/// (learned), and only that lets it announce it. A policy container's
/// address it may not.
#[test]
fn an_ipv6_only_policy_tasks_container_announces_its_own_address_and_no_other() {
    let rig = setup();
    let ip6 = CONTAINER2_IP6.to_string();
    rig.berth(&["map", "add", "--task", "t2", "--ip6", &ip6, "-p", "8081:80"]);
    rig.berth(&["sg", "create", "sg-t2"]);
    rig.berth(&["sg", "attach", "sg-t2", "--task", "t2"]);
    let (host, t1, t2) = (&rig.topo.host, &rig.topo.container, &rig.topo.container2);
    let t1_mac = t1.link().unwrap().mac;
    let t2_mac = t2.link().unwrap().mac;
    let (t1_ip, t2_ip) = (IpAddr::V6(CONTAINER_IP6), IpAddr::V6(CONTAINER2_IP6));
    neigh_set(&host.ns, t1_ip, t1_mac, host.bridge);
    neigh_set(&host.ns, t2_ip, FAKE_MAC, host.bridge);
    let sock = RawSocket::open_in(&t2.ns, t2.ifname).unwrap();
    let t2_from = (t2_ip, t2_mac);
    let claims = [advert(t2_from, t2_ip), advert(t2_from, t1_ip)];
    let spoofed0 = rig.counter("neigh_spoofed");
    let rounds = claim_for_a_while(&sock, &claims);

    let (ok, shown) = neigh_has(&host.ns, t2_ip, host.bridge, t2_mac);
    assert!(ok, "t2's own advertisement did not reach the host: {shown}");
    let (ok, shown) = neigh_has(&host.ns, t1_ip, host.bridge, t1_mac);
    assert!(ok, "t2 took t1's address at the host: {shown}");
    assert_eq!(
        rig.counter("neigh_spoofed"),
        spoofed0 + rounds,
        "one refused claim a round"
    );
}

/// An IPv6 address a container gets after its port was hooked is learned
/// at once (the daemon follows IPv6 address events in the containers'
/// namespaces): the host's stale neighbour entry for it (an old
/// container's MAC) is forgotten, as for IPv4, and the container may
/// claim it from then on, though it is a policy task's.
#[test]
fn an_ipv6_address_a_container_gets_later_is_its_own_at_once() {
    let rig = setup();
    let later: Ipv6Addr = "fd00:17::77".parse().unwrap();
    rig.berth(&[
        "map",
        "add",
        "--task",
        "t3",
        "--ip6",
        &later.to_string(),
        "-p",
        "8082:80",
    ]);
    rig.berth(&["sg", "attach", "sg-t1", "--task", "t3"]);
    let (host, t2) = (&rig.topo.host, &rig.topo.container2);
    let t2_mac = t2.link().unwrap().mac;
    let (later_ip, t2_ip) = (IpAddr::V6(later), IpAddr::V6(CONTAINER2_IP6));
    neigh_set(&host.ns, later_ip, FAKE_MAC, host.bridge);
    let sock = RawSocket::open_in(&t2.ns, t2.ifname).unwrap();
    let claim = [advert((t2_ip, t2_mac), later_ip)];
    let spoofed0 = rig.counter("neigh_spoofed");
    let rounds = claim_for_a_while(&sock, &claim);
    assert_eq!(
        rig.counter("neigh_spoofed"),
        spoofed0 + rounds,
        "not its own yet"
    );
    let (ok, shown) = neigh_has(&host.ns, later_ip, host.bridge, FAKE_MAC);
    assert!(ok, "t2 took t3's address at the host: {shown}");

    t2.ns
        .ip([
            "-6",
            "addr",
            "add",
            &format!("{later}/64"),
            "dev",
            t2.ifname,
            "nodad",
        ])
        .expect("ip addr add");
    let t0 = Instant::now();
    while neigh_has(&host.ns, later_ip, host.bridge, FAKE_MAC).0 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the host's stale entry for {later} was not forgotten"
        );
        thread::sleep(Duration::from_millis(20));
    }
    neigh_set(&host.ns, later_ip, FAKE_MAC, host.bridge);
    let spoofed = rig.counter("neigh_spoofed");
    claim_for_a_while(&sock, &claim);
    let (ok, shown) = neigh_has(&host.ns, later_ip, host.bridge, t2_mac);
    assert!(
        ok,
        "t2's claim of its new address did not reach the host: {shown}"
    );
    assert_eq!(rig.counter("neigh_spoofed"), spoofed);
}
