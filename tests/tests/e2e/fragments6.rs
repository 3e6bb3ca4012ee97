//! IPv6 fragments through NAT66 end to end (issue 15): a UDP datagram
//! larger than the uplink's MTU, sent by an IPv6 client to a published
//! IPv6 port, is cut by the client's kernel, translated fragment by
//! fragment (the first by its flow, the later ones as their first went)
//! and reassembled by the container's kernel with the client's address;
//! the container's answer, as large, is cut by the container's kernel and
//! leaves from the host's address and port.
//!
//! With security groups: a group that refuses the datagram keeps every
//! fragment of it from the container, one that allows it lets it in whole;
//! and a neighbour cannot slip forged fragments into a datagram the
//! container's port let in (a fragment's verdict is kept per port).
use std::{
    net::{Ipv6Addr, SocketAddr},
    thread,
    time::Duration,
};

use super::fragments::{a_large_datagram_is_answered_whole, letters};
use berth_integration::{
    pkt::{self, Ipv6Packet},
    rawsock::RawSocket,
    rig::REQUEST_TIMEOUT as T,
    traffic::{recv_datagram, udp_socket_in, UdpReply},
    udp_request, Mode, NetNs, Rig,
};

/// The client's address on the dual-stack rig's uplink network.
const CLIENT6: &str = "2001:db8::2";

fn large_datagram_over_ipv6_gets_its_whole_answer(mode: Mode) {
    let rig = Rig::builder().dual_stack().mode(mode).start();
    let echo = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    rig.berth_words("map add --task dns6 --ip6 fd00:17::2 -p 5353:53/udp");
    let target = rig.topo.host.addr6(5353);
    let translated =
        a_large_datagram_is_answered_whole(&rig, target, &format!("[{CLIENT6}]"), &echo);
    // Two later fragments each way at least (3000 bytes in 1500-byte
    // fragments).
    assert!(
        translated >= 4,
        "later fragments were translated both ways: {}",
        rig.berth(&["stats"])
    );
    assert_eq!(rig.counter("ipv6_untranslated"), 0);
    // Small datagrams keep working on the same port.
    let small = rig.client_udp6(5353, "ping").expect("a small answer");
    assert!(small.text.ends_with(" ping"), "{}", small.text);
}

#[test]
fn a_3000_byte_datagram_over_ipv6_to_a_published_port_gets_its_whole_answer_tc() {
    large_datagram_over_ipv6_gets_its_whole_answer(Mode::Tc);
}

#[test]
fn a_3000_byte_datagram_over_ipv6_to_a_published_port_gets_its_whole_answer_xdp() {
    large_datagram_over_ipv6_gets_its_whole_answer(Mode::Xdp);
}

/// How long a refused datagram is waited for.
const LOST: Duration = Duration::from_millis(1500);
const CTR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);

/// Whether `f` is an IPv6 fragment from `src` (its fragment header right
/// after the fixed one, as a sender's kernel writes it; neighbour
/// discovery from the same address is not).
fn fragment_from(f: &[u8], src: Ipv6Addr) -> bool {
    const NEXTHDR_FRAGMENT: u8 = 44;
    f.len() >= pkt::ETH_LEN + 40
        && u16::from_be_bytes([f[12], f[13]]) == pkt::ETH_P_IPV6
        && f[pkt::ETH_LEN + 6] == NEXTHDR_FRAGMENT
        && f[pkt::ETH_LEN + 8..pkt::ETH_LEN + 24] == src.octets()
}

/// `payload` from `from` to `target`: the answer (if any), and the
/// fragments from `src` that reached the container's `eth0` meanwhile.
fn send_watched(
    rig: &Rig,
    from: &NetNs,
    src: Ipv6Addr,
    target: SocketAddr,
    payload: &str,
    wait: Duration,
) -> (anyhow::Result<UdpReply>, Vec<Vec<u8>>) {
    let ctr = &rig.topo.container;
    let eth0 = RawSocket::open_in(&ctr.ns, ctr.ifname).expect("packet socket");
    thread::scope(|s| {
        let seen =
            s.spawn(|| eth0.collect(wait + Duration::from_millis(500), |f| fragment_from(f, src)));
        let p = payload.to_owned();
        let answer = from.run(move || udp_request(target, &p, wait));
        (answer, seen.join().unwrap().expect("capture"))
    })
}

/// A group without a rule for UDP keeps every fragment of a large IPv6
/// datagram from the container, whether it comes to a published port
/// (judged at the uplink: the refused first fragment is remembered as
/// refused there, and the later ones follow it) or straight from a
/// neighbour (judged at the container's veth: the later fragments follow
/// the refused first).
/// With a rule, both arrive whole and are answered whole.
#[test]
fn a_group_refusing_udp_keeps_every_fragment_of_a_large_ipv6_datagram_out_and_one_allowing_it_lets_it_in_whole(
) {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    let _echo = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    rig.berth_words("map add --task dns6 --ip 172.17.0.2 --ip6 fd00:17::2 -p 5353:53/udp");
    // A new group lets nothing in.
    rig.berth(&["sg", "create", "dns"]);
    rig.berth(&["sg", "attach", "dns", "--task", "dns6"]);
    let (client, neighbour) = (&rig.topo.client, &rig.topo.container2);
    let client6 = client.ip6.expect("a dual-stack client");
    let neighbour6 = neighbour.ip6.expect("a dual-stack neighbour");
    let published = rig.topo.host.addr6(5353);
    let direct = SocketAddr::new(CTR6.into(), 53);
    let payload = letters(3000);
    let counters = [
        "policy_denied_ingress",
        "frag_denied",
        "fragment",
        "frag_no_first",
    ];
    let before = counters.map(|c| rig.counter(c));

    let (answer, reached) = send_watched(&rig, &client.ns, client6, published, &payload, LOST);
    assert!(answer.is_err(), "a refused datagram was answered");
    assert!(
        reached.is_empty(),
        "{} client fragments reached the container",
        reached.len()
    );
    let (answer, reached) = send_watched(&rig, &neighbour.ns, neighbour6, direct, &payload, LOST);
    assert!(answer.is_err(), "a refused datagram was answered");
    assert!(
        reached.is_empty(),
        "{} neighbour fragments reached the container",
        reached.len()
    );
    // Each first fragment refused by the rules; the later ones refused by
    // their first's verdict, the client's at the uplink, the neighbour's
    // at the container's veth; none dropped for want of one. (`fragment`
    // counts the later fragments no translation was remembered for: the
    // neighbour's at its own veth, which are no reply of a published port.
    // The client's were counted there too, and left to the host, until
    // the uplink remembered a refused first fragment: log6.)
    let after = counters.map(|c| rig.counter(c));
    let stats = rig.berth(&["stats"]);
    assert_eq!(after[0], before[0] + 2, "{stats}");
    assert_eq!(after[1], before[1] + 4, "{stats}");
    assert_eq!(after[2], before[2] + 2, "{stats}");
    assert_eq!(after[3], before[3], "{stats}");

    // UDP 53 from the client's prefix and the bridge's: in whole, answered
    // whole, with the sender's own address.
    for cidr in ["2001:db8::/32", "fd00:17::/64"] {
        rig.berth(&[
            "sg",
            "rule",
            "add",
            "dns",
            "--ingress",
            "--proto",
            "udp",
            "--port",
            "53",
            "--cidr",
            cidr,
        ]);
    }
    for (from, src, target) in [
        (&client.ns, client6, published),
        (&neighbour.ns, neighbour6, direct),
    ] {
        let (reply, reached) = send_watched(&rig, from, src, target, &payload, T);
        let reply = reply.unwrap_or_else(|e| panic!("no answer to {src} once allowed: {e:#}"));
        assert_eq!(reply.from, target, "answered from where it was sent");
        let (peer, echoed) = reply.text.split_once(' ').expect("peer and payload");
        assert!(
            peer.starts_with(&format!("[{src}]:")),
            "the container saw {peer}"
        );
        assert_eq!(echoed, payload, "the whole datagram, both ways");
        assert!(
            reached.len() >= 2,
            "{src}'s fragments reached the container"
        );
    }
    assert_eq!(rig.counter("frag_denied"), after[1]);
}

/// The client's datagram to the published port, cut as its kernel would
/// (3 fragments of identification `id`), in frames from the client's
/// `eth0` to the host's uplink.
fn client_fragments(rig: &Rig, sport: u16, payload: &[u8], id: u32) -> Vec<Vec<u8>> {
    let mut p = Ipv6Packet::new(pkt::UDP, 5353);
    p.src = rig.topo.client.ip6.expect("a dual-stack client");
    p.dst = rig.topo.host.uplink_ip6.expect("a dual-stack host");
    (p.sport, p.payload) = (sport, payload.to_vec());
    let client_mac = rig.topo.client.link().unwrap().mac;
    let uplink_mac = rig.topo.host.uplink_link().unwrap().mac;
    pkt::fragments6(&p.frame(), &[], id, 1232)
        .into_iter()
        .map(|mut f| {
            f[..6].copy_from_slice(&uplink_mac);
            f[6..12].copy_from_slice(&client_mac);
            f
        })
        .collect()
}

/// A neighbour with a group of its own forges the last fragment of a
/// datagram the container's port let in (the client's source and
/// identification, the container's address, its own bytes with the
/// datagram's checksum kept). Before a fragment's verdict was kept per
/// port it left mallory's port on the verdict the container's port gave
/// (the counter check below fails then); whether the container then
/// reassembled it was left to timing and to what the host did with the
/// routed fragments (in this rig it did not).
#[test]
fn a_neighbours_forged_fragment_does_not_join_a_datagram_the_containers_port_let_in() {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    let (ctr, ctr2) = (&rig.topo.container, &rig.topo.container2);
    for (task, ip, ip6, spec) in [
        ("dns6", "172.17.0.2", "fd00:17::2", "5353:53/udp"),
        ("mallory", "172.17.0.3", "fd00:17::3", "9090:90"),
    ] {
        rig.berth(&[
            "map", "add", "--task", task, "--ip", ip, "--ip6", ip6, "-p", spec,
        ]);
    }
    rig.berth(&["sg", "create", "dns"]);
    rig.berth_words("sg rule add dns --ingress --proto udp --port 53 --cidr ::/0");
    rig.berth(&["sg", "attach", "dns", "--task", "dns6"]);
    // Mallory's group lets everything out.
    rig.berth(&["sg", "create", "mallory"]);
    rig.berth(&["sg", "attach", "mallory", "--task", "mallory"]);
    let server = udp_socket_in(
        &ctr.ns,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 53),
        LOST,
    );
    let client6 = rig.topo.client.ip6.unwrap();
    let payload = letters(3000);
    let real = client_fragments(&rig, 40053, payload.as_bytes(), 0x5eed);
    assert_eq!(real.len(), 3);
    // Mallory's copy of the last fragment, as it would arrive at the
    // container: its words swapped pairwise (another text, the same sum).
    let mut forged = real[2].clone();
    forged[pkt::ETH_LEN + 24..pkt::ETH_LEN + 40].copy_from_slice(&CTR6.octets());
    forged[..6].copy_from_slice(&ctr.link().unwrap().mac);
    forged[6..12].copy_from_slice(&ctr2.link().unwrap().mac);
    let body = pkt::ETH_LEN + 40 + 8;
    for w in forged[body..].chunks_exact_mut(4) {
        w.swap(0, 2);
        w.swap(1, 3);
    }
    assert_ne!(forged[body..], real[2][body..]);
    let lan = RawSocket::open_in(&rig.topo.client.ns, rig.topo.client.ifname).unwrap();
    let mallory = RawSocket::open_in(&ctr2.ns, ctr2.ifname).unwrap();
    let no_first = rig.counter("frag_no_first");
    // The first two fragments go in; then the forgery; then the real last.
    lan.send(&real[0]).unwrap();
    lan.send(&real[1]).unwrap();
    thread::sleep(Duration::from_millis(200));
    mallory.send(&forged).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rig.counter("frag_no_first"),
        no_first + 1,
        "the forgery was dropped at mallory's port: {}",
        rig.berth(&["stats"])
    );
    lan.send(&real[2]).unwrap();
    let (got, from) = recv_datagram(&server).unwrap_or_else(|| {
        panic!(
            "the client's datagram never arrived: {}",
            rig.berth(&["stats"])
        )
    });
    assert_eq!(from.ip(), client6, "from the client");
    assert!(
        got == payload.as_bytes(),
        "the container reassembled a forgery"
    );
    assert!(
        recv_datagram(&server).is_none(),
        "a second datagram arrived"
    );
}
