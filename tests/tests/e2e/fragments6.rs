//! IPv6 fragments through NAT66 end to end (issue 15): a UDP datagram
//! larger than the uplink's MTU, sent by an IPv6 client to a published
//! IPv6 port, is cut by the client's kernel, translated fragment by
//! fragment (the first by its flow, the later ones as their first went)
//! and reassembled by the container's kernel with the client's address;
//! the container's answer, as large, is cut by the container's kernel and
//! leaves from the host's address and port.
use berth_integration::{rig::REQUEST_TIMEOUT as T, udp_request, Mode, Rig};

/// The client's address on the dual-stack rig's uplink network.
const CLIENT6: &str = "2001:db8::2";

fn large_datagram_over_ipv6_gets_its_whole_answer(mode: Mode) {
    let rig = Rig::builder().dual_stack().mode(mode).start();
    let echo = rig.serve_udp_echo6(&rig.topo.container.ns, 53);
    rig.berth(&[
        "map",
        "add",
        "--task",
        "dns6",
        "--ip6",
        "fd00:17::2",
        "-p",
        "5353:53/udp",
    ]);
    let target = rig.topo.host.addr6(5353);
    let translated = rig.counter("frag_xlate");
    let payload: String = (0..3000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let p = payload.clone();
    let reply = rig
        .topo
        .client
        .ns
        .run(move || udp_request(target, &p, T))
        .unwrap_or_else(|e| {
            panic!(
                "no answer to a 3000-byte datagram over IPv6: {e:#}\nserver saw {:?}\n{}",
                echo.peers(),
                rig.berth(&["stats"])
            )
        });
    assert_eq!(reply.from, target, "the answer comes from the host port");
    let (peer, echoed) = reply.text.split_once(' ').expect("peer and payload");
    assert!(
        peer.starts_with(&format!("[{CLIENT6}]:")),
        "the container saw {peer}"
    );
    assert_eq!(echoed.len(), payload.len(), "the whole datagram came back");
    assert_eq!(echoed, payload);
    // Two later fragments each way at least (3000 bytes in 1500-byte
    // fragments).
    assert!(
        rig.counter("frag_xlate") >= translated + 4,
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
