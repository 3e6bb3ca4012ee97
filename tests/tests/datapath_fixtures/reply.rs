//! `berth_reply`: a container's packets reaching the bridge, replies of the
//! flows [`reply_flows`] sets up and packets of no tracked flow.
use std::net::Ipv4Addr;

use berth_integration::{
    pkt::{self, Ipv6Packet, Packet, ETH_LEN},
    testrun::*,
};

use crate::{icmp::reply_icmp_errors, table::*};

/// The flows the reply table answers: ingress packets that must be
/// translated first. (client packet, container address and port).
pub(crate) fn reply_flows() -> Vec<Packet> {
    let mut v = vec![
        Packet::tcp(CLIENT, 40000, HOST, 8080),
        Packet::tcp(CLIENT, 40001, HOST, 8081),
        Packet::tcp(CLIENT, 40002, HOST2, 8080),
        Packet::udp(CLIENT, 5000, HOST, 8053),
        Packet::tcp(CLIENT, 40003, HOST, 1),
        Packet::tcp(CLIENT, 40004, HOST, 65535),
        Packet::tcp(OTHER, 40005, HOST, 8080),
        Packet::tcp(CLIENT, 40006, HOST, 8090),
        Packet::tcp(CLIENT_UNRESOLVED, 40007, HOST, 8080),
        Packet::udp(CLIENT, 5001, HOST, 8054),
        Packet::tcp(CLIENT, 40008, HOST2, 8083),
    ];
    // Reply tuples taken by the flows above: these get remapped client
    // ports (see `remapped_port`).
    v.push(remapped_tcp_flow());
    v.push(remapped_udp_flow());
    let mut many = Packet::udp(CLIENT, 5002, HOST, MANY_FIRST + MANY - 1);
    many.payload = b"last".to_vec();
    v.push(many);
    v
}

/// 40001 -> 8082 clashes with 40001 -> 8081 (both to 172.17.0.2:80).
pub(crate) fn remapped_tcp_flow() -> Packet {
    Packet::tcp(CLIENT, 40001, HOST, 8082)
}

/// 5000 -> 8055 clashes with 5000 -> 8053 (both to 172.17.0.2:53).
pub(crate) fn remapped_udp_flow() -> Packet {
    Packet::udp(CLIENT, 5000, HOST, 8055)
}

/// A container's packet, as it reaches the bridge's ingress hook.
pub(crate) fn from_container(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    proto: u8,
) -> Packet {
    let mut p = if proto == pkt::TCP {
        Packet::tcp(src, sport, dst, dport)
    } else {
        Packet::udp(src, sport, dst, dport)
    };
    p.eth_dst = BRIDGE_MAC;
    p.eth_src = if src == C1 {
        C1_MAC
    } else {
        [0x02, 0x42, 0xac, 0x11, 0, 0x03]
    };
    p.tcp_flags = pkt::SYN | pkt::ACK;
    p
}

pub(crate) fn c1_reply(dport: u16) -> Packet {
    from_container(C1, 80, CLIENT, dport, pkt::TCP)
}

/// A container's large reply, fragmented at the container: the first
/// fragment is translated by the flow table, the later ones by what it
/// left in `BERTH_FRAGS`. The rows run in order.
fn reply_fragments(t: &mut Table) {
    let nat = |want: Vec<u8>| Expect::Nat { want, neigh: false };
    let big = |p: Packet, id: u16| {
        let mut p = p.with_payload_len(3000);
        p.ip_id = id;
        p.frag = 0;
        p
    };
    let p = big(from_container(C1, 53, CLIENT, 5000, pkt::UDP), 0x5001);
    let out = snat(&p, HOST, 8053, true);
    t.add(
        "first fragment of a tracked udp reply",
        pkt::fragment(&p, 0, 1480, true),
        nat(pkt::fragment(&out, 0, 1480, true)),
    );
    t.add(
        "later fragment of a tracked udp reply follows its first",
        pkt::fragment(&p, 1480, 1480, true),
        nat(pkt::fragment(&out, 1480, 1480, true)),
    );
    let mut q = p;
    q.ttl = 1;
    t.drop(
        "later fragment with ttl 1 of a translated reply is dropped",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let q = big(from_container(C1, 53, CLIENT, 5000, pkt::UDP), 0x5002);
    t.pass(
        "later fragment of a reply whose first fragment never came",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let q = big(from_container(C1, 43210, OTHER, 443, pkt::UDP), 0x5003);
    t.pass(
        "first fragment of the container's own datagram",
        pkt::fragment(&q, 0, 1480, true),
    );
    t.pass(
        "later fragment of the container's own datagram",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let mut q = big(c1_reply(40000), 0x5004);
    q.tcp_flags = pkt::ACK;
    let out = snat(&q, HOST, 8080, true);
    t.add(
        "first fragment of a tracked tcp reply",
        pkt::fragment(&q, 0, 1480, true),
        nat(pkt::fragment(&out, 0, 1480, true)),
    );
    t.add(
        "later fragment of a tracked tcp reply follows its first",
        pkt::fragment(&q, 1480, 1480, true),
        nat(pkt::fragment(&out, 1480, 1480, true)),
    );
    // What the bridge hands up when br_netfilter reassembled fragments
    // that did not pass a container's veth hook: BPF cannot fragment it.
    let mut q = from_container(C1, 53, CLIENT, 5000, pkt::UDP).with_payload_len(2000);
    q.frag = 0;
    t.add(
        "reassembled udp reply longer than the uplink mtu is dropped",
        q.frame(),
        Expect::DropAfterNat,
    );
}

pub(crate) fn reply_cases() -> Vec<Case> {
    let mut t = Table::default();
    let host_8080 = (HOST, 8080);
    for (flags, what) in [
        (pkt::SYN | pkt::ACK, "syn-ack"),
        (pkt::ACK, "ack"),
        (pkt::PSH | pkt::ACK, "psh-ack"),
        (pkt::FIN | pkt::ACK, "fin-ack"),
        (pkt::RST, "rst"),
        (pkt::RST | pkt::ACK, "rst-ack"),
        (pkt::URG | pkt::ACK, "urg-ack"),
        (pkt::ECE | pkt::ACK, "ece-ack"),
        (pkt::CWR | pkt::ACK, "cwr-ack"),
    ] {
        let mut p = c1_reply(40000);
        p.tcp_flags = flags;
        if flags & pkt::PSH != 0 {
            p.payload = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        }
        t.snat(format!("tcp {what} reply"), &p, host_8080);
    }
    for n in [1, 2, 1001, 1460] {
        let mut p = c1_reply(40000).with_payload_len(n);
        p.tcp_flags = pkt::ACK;
        t.snat(
            format!("tcp reply with {n} bytes of payload"),
            &p,
            host_8080,
        );
    }
    let mut p = c1_reply(40000).with_payload_len(1461);
    p.tcp_flags = pkt::ACK;
    t.add(
        "tcp reply one byte over the uplink mtu",
        p.frame(),
        Expect::DropAfterNat,
    );

    t.snat(
        "reply through the second host port",
        &c1_reply(40001),
        (HOST, 8081),
    );
    t.snat(
        "reply from the host address the client used",
        &c1_reply(40002),
        (HOST2, 8080),
    );
    t.snat(
        "reply of host port 1",
        &from_container(C1, 65535, CLIENT, 40003, pkt::TCP),
        (HOST, 1),
    );
    t.snat(
        "reply of host port 65535",
        &from_container(C1, 1, CLIENT, 40004, pkt::TCP),
        (HOST, 65535),
    );
    t.snat(
        "reply from a second container",
        &from_container(C2, 90, CLIENT, 40006, pkt::TCP),
        (HOST, 8090),
    );
    t.snat(
        "reply of an address-bound mapping",
        &from_container(C2, 83, CLIENT, 40008, pkt::TCP),
        (HOST2, 8083),
    );
    t.snat(
        "reply to a client whose mac is unknown",
        &from_container(C1, 80, CLIENT_UNRESOLVED, 40007, pkt::TCP),
        host_8080,
    );
    t.add(
        "reply with no route back to the client",
        from_container(C1, 80, OTHER, 40005, pkt::TCP).frame(),
        Expect::DropAfterNat,
    );

    let udp = |payload: &[u8]| {
        let mut p = from_container(C1, 53, CLIENT, 5000, pkt::UDP);
        p.payload = payload.to_vec();
        p
    };
    let host_8053 = (HOST, 8053);
    t.snat("udp reply", &udp(b"pong"), host_8053);
    t.snat("empty udp reply", &udp(b""), host_8053);
    t.snat("udp reply filling the mtu", &udp(&[0x5a; 1472]), host_8053);
    for n in [0, 1, 4] {
        let mut p = udp(&vec![0x11; n]);
        p.udp_no_csum = true;
        t.snat(
            format!("udp reply without checksum ({n} bytes) keeps zero"),
            &p,
            host_8053,
        );
    }
    let mut p = udp(&[0; 6]);
    pkt::force_udp_csum_zero(&mut p);
    t.snat("udp reply whose checksum computed to zero", &p, host_8053);
    let mut out = snat(&udp(&[0; 6]), HOST, 8053, true);
    pkt::force_udp_csum_zero(&mut out);
    t.snat(
        "udp reply whose translated checksum computes to zero",
        &udp(&out.payload),
        host_8053,
    );
    let mut out = snat(&c1_reply(40000).with_payload_len(6), HOST, 8080, true);
    pkt::force_tcp_csum_zero(&mut out);
    let mut p = c1_reply(40000);
    p.payload = out.payload.clone();
    t.snat(
        "tcp reply whose translated checksum computes to zero",
        &p,
        host_8080,
    );
    t.snat(
        "udp reply of an address-bound mapping",
        &from_container(C1, 54, CLIENT, 5001, pkt::UDP),
        (HOST, 8054),
    );
    t.snat(
        "udp reply of the last of many mappings",
        &from_container(C1, 31000 + MANY - 1, CLIENT, 5002, pkt::UDP),
        (HOST, MANY_FIRST + MANY - 1),
    );

    // Replies of flows whose client port a clash remapped: they leave
    // from the flow's host port, to the client's own port.
    for (flow, what) in [(remapped_tcp_flow(), "tcp"), (remapped_udp_flow(), "udp")] {
        let r = remapped_port(&flow);
        let c_port = if flow.proto == pkt::TCP { 80 } else { 53 };
        let mut p = from_container(C1, c_port, CLIENT, r, flow.proto);
        p.payload = b"pong".to_vec();
        let mut want = snat(&p, HOST, flow.dport, true);
        want.dport = flow.sport;
        t.add(
            format!("{what} reply of a remapped flow goes to the client's own port"),
            p.frame(),
            Expect::Nat {
                want: want.frame(),
                neigh: false,
            },
        );
    }
    for n in [4, 20, 40] {
        let mut p = c1_reply(40000);
        p.ip_options = record_route(n);
        t.snat(
            format!("tcp reply with {n} bytes of ipv4 options"),
            &p,
            host_8080,
        );
    }
    let mut p = udp(b"pong");
    p.ip_options = record_route(12);
    t.snat("udp reply with ipv4 options", &p, host_8053);
    let mut p = c1_reply(40000);
    p.tcp_options = syn_options();
    t.snat("tcp syn-ack reply with options", &p, host_8080);
    let mut p = c1_reply(40000);
    p.tos = 0x03;
    t.snat("reply with ecn ce kept", &p, host_8080);
    let mut p = c1_reply(40000);
    p.ip_id = 0;
    p.frag = 0;
    t.snat("reply with ip id 0 and no df", &p, host_8080);
    let mut p = c1_reply(40000);
    p.tcp_flags = pkt::ACK;
    p.eth_pad = vec![0; 6];
    t.snat("tcp reply with ethernet padding", &p, host_8080);
    for ttl in [2, 255] {
        let mut p = c1_reply(40000);
        p.ttl = ttl;
        t.snat(format!("reply with ttl {ttl}"), &p, host_8080);
    }
    for ttl in [0, 1] {
        let mut p = c1_reply(40000);
        p.ttl = ttl;
        t.drop(format!("reply with ttl {ttl} is dropped"), p.frame());
    }
    let p = c1_reply(40000).with_payload_len(8);
    let want = snat(&p, HOST, 8080, true).frame();
    let (input, want) = with_bad_csum(p.frame(), want, p.l4_csum_off());
    t.add(
        "reply with a wrong tcp checksum keeps it wrong",
        input,
        Expect::Nat { want, neigh: false },
    );
    let want = snat(&p, HOST, 8080, true).frame();
    let (input, want) = with_bad_csum(p.frame(), want, ETH_LEN + 10);
    t.add(
        "reply with a wrong ipv4 checksum keeps it wrong",
        input,
        Expect::Nat { want, neigh: false },
    );

    // Not a reply to a tracked flow.
    t.pass(
        "container's own outbound connection",
        from_container(C1, 43210, OTHER, 443, pkt::TCP).frame(),
    );
    t.pass("reply to a client port never seen", c1_reply(40999).frame());
    t.pass(
        "tracked ports over udp instead of tcp",
        from_container(C1, 80, CLIENT, 40000, pkt::UDP).frame(),
    );
    t.pass(
        "tracked client from another container port",
        from_container(C1, 81, CLIENT, 40000, pkt::TCP).frame(),
    );
    t.pass(
        "tracked ports to another client address",
        from_container(C1, 80, Ipv4Addr::new(192, 0, 2, 4), 40000, pkt::TCP).frame(),
    );
    t.pass(
        "tracked ports from another container",
        from_container(C2, 80, CLIENT, 40000, pkt::TCP).frame(),
    );
    t.pass(
        "container to container",
        from_container(C1, 80, C2, 5555, pkt::TCP).frame(),
    );
    t.pass(
        "container dns query",
        from_container(C1, 5353, OTHER, 53, pkt::UDP).frame(),
    );
    t.pass("arp from the container", pkt::arp_request(C1, BRIDGE_IP));
    let mut p = Packet::icmp(C1, CLIENT, 8, 0, [0, 1, 0, 1]);
    p.eth_dst = BRIDGE_MAC;
    p.eth_src = C1_MAC;
    t.pass("icmp echo from the container", p.frame());
    t.pass(
        "ipv6 from the container",
        Ipv6Packet::new(pkt::TCP, 80).frame(),
    );

    // A tracked flow's packet that is odd.
    let tracked = c1_reply(40000).with_payload_len(4).frame();
    reply_fragments(&mut t);
    t.pass(
        "tracked reply cut inside the tcp header",
        tracked[..44].to_vec(),
    );
    t.pass(
        "tracked reply with ihl 4",
        pkt::fix_ipv4_csum(pkt::put8(tracked.clone(), ETH_LEN, 0x44)),
    );
    t.pass(
        "tracked reply with total length below the headers",
        pkt::fix_ipv4_csum(pkt::put16(tracked.clone(), ETH_LEN + 2, 39)),
    );
    t.pass(
        "tracked reply with total length past the frame",
        pkt::fix_ipv4_csum(pkt::put16(tracked.clone(), ETH_LEN + 2, 45)),
    );
    t.pass(
        "tracked reply with tcp data offset 4",
        pkt::put8(tracked.clone(), ETH_LEN + 32, 0x40),
    );
    t.pass("vlan-tagged tracked reply", pkt::vlan_tagged(&tracked, 10));
    let u = udp(b"pong").frame();
    t.pass(
        "tracked udp reply with udp length 0",
        pkt::put16(u.clone(), ETH_LEN + 24, 0),
    );
    t.pass(
        "tracked udp reply with udp length past the datagram",
        pkt::put16(u, ETH_LEN + 24, 100),
    );
    reply_icmp_errors(&mut t);
    t.cases
}
