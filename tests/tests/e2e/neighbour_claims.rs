//! Neighbour claims on the bridge, end to end against the real daemon and
//! CLI: a container *without* policy answering ARP, or advertising an IPv6
//! neighbour, for the address of a container with policy or for the
//! host's (the gateway's) is refused at its own port (`neigh_spoofed`), so
//! the host's and the policy container's neighbour caches keep the owners'
//! MACs: no interception past the owner's security groups. The same
//! container still announces its own address (the caches take that one,
//! so the frames do reach and would move them) and resolves its
//! neighbours. Frames are injected with a packet socket in the container's
//! namespace. (A container *with* policy claiming a neighbour's address:
//! `policy_bypass::a_container_with_policy_cannot_take_a_neighbours_address_by_arp`.)
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr::{CONTAINER2_IP, CONTAINER2_IP6, CONTAINER_IP, CONTAINER_IP6},
    pkt::{self, Mac},
    rawsock::RawSocket,
    NetNs, Rig,
};

/// How long claims are repeated: the kernel ignores an ARP update within
/// its lock time (1 s) of the entry's last change.
const CLAIMING: Duration = Duration::from_millis(2500);
const ROUND: Duration = Duration::from_millis(500);
/// How long a resolution may take.
const RESOLVING: Duration = Duration::from_secs(3);
/// A MAC no one has: the host's entry for t2 starts with it.
pub(super) const FAKE_MAC: Mac = [0x02, 0xde, 0xad, 0, 0, 0x03];

/// t1 (the first container) in a group of its own (policy, nothing let
/// in), t2 (the second) without any; both with their IPv6 addresses when
/// `dual`.
fn setup(dual: bool) -> Rig {
    let builder = Rig::builder().wait_for_ports();
    let rig = if dual { builder.dual_stack() } else { builder }.start();
    for (task, ip, ip6, spec) in [
        ("t1", CONTAINER_IP, CONTAINER_IP6, "8080:80"),
        ("t2", CONTAINER2_IP, CONTAINER2_IP6, "8081:80"),
    ] {
        let (ip, ip6) = (ip.to_string(), ip6.to_string());
        let mut args = vec!["map", "add", "--task", task, "--ip", &ip, "-p", spec];
        if dual {
            args.extend(["--ip6", &ip6]);
        }
        rig.berth(&args);
    }
    rig.berth(&["sg", "create", "sg-t1"]);
    rig.berth(&["sg", "attach", "sg-t1", "--task", "t1"]);
    rig
}

pub(super) fn mac_text(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `ns`'s neighbour entry for `ip` on `dev`, set to `mac` (stale, as a
/// learned entry ages).
pub(super) fn neigh_set(ns: &NetNs, ip: IpAddr, mac: Mac, dev: &str) {
    ns.ip([
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &mac_text(mac),
        "dev",
        dev,
        "nud",
        "stale",
    ])
    .unwrap_or_else(|e| panic!("ip neigh replace {ip}: {e:#}"));
}

/// Whether `ns`'s neighbour entry for `ip` on `dev` holds `mac`; the
/// entry's text for the message.
pub(super) fn neigh_has(ns: &NetNs, ip: IpAddr, dev: &str, mac: Mac) -> (bool, String) {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let shown = ns
        .ip([family, "neigh", "show", &ip.to_string(), "dev", dev])
        .unwrap_or_else(|e| panic!("ip neigh show {ip}: {e:#}"));
    (shown.contains(&mac_text(mac)), shown)
}

/// Sends `frames` from `sock` every [`ROUND`] for [`CLAIMING`]; the rounds
/// sent.
pub(super) fn claim_for_a_while(sock: &RawSocket, frames: &[Vec<u8>]) -> u64 {
    let deadline = Instant::now() + CLAIMING;
    let mut rounds = 0;
    while Instant::now() < deadline {
        for f in frames {
            sock.send(f).expect("send a claim");
        }
        rounds += 1;
        thread::sleep(ROUND);
    }
    rounds
}

/// `ns` (a container) forgets its neighbours, then sends a datagram to
/// each of `owners`; each must be resolved to its MAC.
fn resolves(ns: &NetNs, dev: &str, owners: &[(IpAddr, Mac)]) {
    ns.ip(["neigh", "flush", "dev", dev]).expect("flush");
    for &(ip, _) in owners {
        ns.run(move || {
            let any: IpAddr = if ip.is_ipv6() {
                "::".parse().unwrap()
            } else {
                "0.0.0.0".parse().unwrap()
            };
            let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
            s.send_to(b"who", SocketAddr::new(ip, 9))
        })
        .unwrap_or_else(|e| panic!("send to {ip}: {e}"));
    }
    let deadline = Instant::now() + RESOLVING;
    for &(ip, mac) in owners {
        loop {
            let (ok, shown) = neigh_has(ns, ip, dev, mac);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ip} not resolved to {}: {shown:?}",
                mac_text(mac)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_container_without_policy_cannot_take_a_policy_containers_or_the_gateways_address_by_arp() {
    let rig = setup(false);
    let (host, t1, t2) = (&rig.topo.host, &rig.topo.container, &rig.topo.container2);
    let t1_mac = t1.link().unwrap().mac;
    let t2_mac = t2.link().unwrap().mac;
    let bridge_mac = host.bridge_link().unwrap().mac;
    let gateway = IpAddr::V4(host.bridge_ip);
    neigh_set(&host.ns, CONTAINER_IP.into(), t1_mac, host.bridge);
    neigh_set(&host.ns, CONTAINER2_IP.into(), FAKE_MAC, host.bridge);
    neigh_set(&t1.ns, gateway, bridge_mac, t1.ifname);
    let sock = RawSocket::open_in(&t2.ns, t2.ifname).unwrap();
    let claims = [
        // t1's address, to the host; the gateway's, to t1.
        pkt::arp(2, t2_mac, CONTAINER_IP, bridge_mac, host.bridge_ip),
        pkt::arp(2, t2_mac, host.bridge_ip, t1_mac, CONTAINER_IP),
        // Its own, to the host.
        pkt::arp(2, t2_mac, CONTAINER2_IP, bridge_mac, host.bridge_ip),
    ];
    let before = rig.counter("neigh_spoofed");
    let rounds = claim_for_a_while(&sock, &claims);

    let (ok, shown) = neigh_has(&host.ns, CONTAINER2_IP.into(), host.bridge, t2_mac);
    assert!(ok, "t2's own announcement did not reach the host: {shown}");
    let (ok, shown) = neigh_has(&host.ns, CONTAINER_IP.into(), host.bridge, t1_mac);
    assert!(ok, "t2 took t1's address at the host: {shown}");
    let (ok, shown) = neigh_has(&t1.ns, gateway, t1.ifname, bridge_mac);
    assert!(ok, "t2 took the gateway's address at t1: {shown}");
    let spoofed = rig.counter("neigh_spoofed");
    assert_eq!(spoofed, before + 2 * rounds, "two refused claims a round");

    // It still resolves the gateway and t1, claiming nothing.
    resolves(
        &t2.ns,
        t2.ifname,
        &[(gateway, bridge_mac), (CONTAINER_IP.into(), t1_mac)],
    );
    assert_eq!(rig.counter("neigh_spoofed"), spoofed);
}

/// An unsolicited neighbour advertisement for `target` from the container
/// `(ip, mac)`, to all nodes, announcing its own MAC.
pub(super) fn advert(from: (IpAddr, Mac), target: IpAddr) -> Vec<u8> {
    let (IpAddr::V6(src), IpAddr::V6(target)) = (from.0, target) else {
        panic!("IPv6 addresses only");
    };
    let mut f = pkt::neighbour_advert(src, target, Some(from.1));
    f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&from.1);
    f
}

/// The bridge's link-local address (the kernel's, from its MAC).
pub(super) fn link_local(ns: &NetNs, dev: &str) -> IpAddr {
    let shown = ns
        .ip(["-6", "-o", "addr", "show", "dev", dev, "scope", "link"])
        .expect("ip addr show");
    shown
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on {dev}: {shown:?}"))
}

#[test]
fn a_container_without_policy_cannot_take_a_policy_containers_or_the_gateways_address_by_neighbour_advertisement(
) {
    let rig = setup(true);
    let (host, t1, t2) = (&rig.topo.host, &rig.topo.container, &rig.topo.container2);
    let t1_mac = t1.link().unwrap().mac;
    let t2_mac = t2.link().unwrap().mac;
    let bridge_mac = host.bridge_link().unwrap().mac;
    let gateway = IpAddr::V6(host.bridge_ip6.expect("a dual-stack bridge"));
    let gateway_ll = link_local(&host.ns, host.bridge);
    let (t1_ip, t2_ip) = (IpAddr::V6(CONTAINER_IP6), IpAddr::V6(CONTAINER2_IP6));
    neigh_set(&host.ns, t1_ip, t1_mac, host.bridge);
    neigh_set(&host.ns, t2_ip, FAKE_MAC, host.bridge);
    neigh_set(&t1.ns, gateway, bridge_mac, t1.ifname);
    neigh_set(&t1.ns, gateway_ll, bridge_mac, t1.ifname);
    let sock = RawSocket::open_in(&t2.ns, t2.ifname).unwrap();
    let t2_from = (t2_ip, t2_mac);
    let claims = [
        advert(t2_from, t1_ip),
        advert(t2_from, gateway),
        advert(t2_from, gateway_ll),
        // Its own.
        advert(t2_from, t2_ip),
    ];
    let before = rig.counter("neigh_spoofed");
    let rounds = claim_for_a_while(&sock, &claims);

    let (ok, shown) = neigh_has(&host.ns, t2_ip, host.bridge, t2_mac);
    assert!(ok, "t2's own advertisement did not reach the host: {shown}");
    let (ok, shown) = neigh_has(&host.ns, t1_ip, host.bridge, t1_mac);
    assert!(ok, "t2 took t1's address at the host: {shown}");
    for gw in [gateway, gateway_ll] {
        let (ok, shown) = neigh_has(&t1.ns, gw, t1.ifname, bridge_mac);
        assert!(ok, "t2 took the gateway's {gw} at t1: {shown}");
    }
    let spoofed = rig.counter("neigh_spoofed");
    assert_eq!(spoofed, before + 3 * rounds, "three refused claims a round");

    resolves(&t2.ns, t2.ifname, &[(gateway, bridge_mac), (t1_ip, t1_mac)]);
    assert_eq!(rig.counter("neigh_spoofed"), spoofed);
}
