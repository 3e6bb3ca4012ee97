//! `berth_ingress` / `berth_xdp`: frames arriving on an uplink.
use std::net::Ipv4Addr;

use berth_integration::{
    pkt::{self, Ipv6Packet, Packet, V6Ext, ETH_LEN},
    testrun::*,
};

use crate::{icmp::ingress_icmp_errors, table::*};

pub(crate) fn ingress_cases() -> Vec<Case> {
    let mut t = Table::default();
    ingress_normal(&mut t);
    ingress_header_fields(&mut t);
    ingress_addresses_and_ports(&mut t);
    ingress_malformed(&mut t);
    ingress_other_protocols(&mut t);
    ingress_icmp_errors(&mut t);
    ingress_martians(&mut t);
    t.cases
}

/// Loopback and local sources on an uplink: every IPv4 packet, translated
/// or not, is dropped (CVE-2020-8558; spoofed container or host sources).
fn ingress_martians(t: &mut Table) {
    let lo = Ipv4Addr::LOCALHOST;
    let mut p = client_tcp(LOOPBACK_PORT);
    p.dst = lo;
    t.drop("loopback: tcp to a 127.0.0.1-bound mapping", p.frame());
    let mut p = client_udp(LOOPBACK_PORT);
    p.dst = lo;
    t.drop("loopback: udp to a 127.0.0.1-bound mapping", p.frame());
    for (dst, what) in [
        (lo, "127.0.0.1"),
        (Ipv4Addr::new(127, 1, 2, 3), "127.1.2.3"),
        (Ipv4Addr::new(127, 255, 255, 255), "127.255.255.255"),
    ] {
        let mut p = client_tcp(8080);
        p.dst = dst;
        t.drop(
            format!("loopback: tcp to {what} on a wildcard mapping"),
            p.frame(),
        );
        let mut p = client_udp(8053);
        p.dst = dst;
        t.drop(
            format!("loopback: udp to {what} on a wildcard mapping"),
            p.frame(),
        );
    }
    let mut p = client_tcp(9999);
    p.dst = lo;
    t.drop("loopback: tcp to 127.0.0.1, unmapped port", p.frame());
    t.drop(
        "loopback: icmp echo to 127.0.0.1",
        Packet::icmp(CLIENT, lo, 8, 0, [0, 1, 0, 1]).frame(),
    );

    // Loopback and bridge-subnet sources: every packet.
    let always = [
        (lo, "loopback source 127.0.0.1"),
        (Ipv4Addr::new(127, 9, 9, 9), "loopback source 127.9.9.9"),
        (C1, "a container's source"),
        (
            Ipv4Addr::new(172, 17, 200, 9),
            "an unassigned bridge-subnet source",
        ),
        (BRIDGE_IP, "the bridge's own address as source"),
    ];
    for (src, what) in always {
        let mut p = client_tcp(8080);
        p.src = src;
        t.drop(
            format!("spoofed: {what}, tcp to a published port"),
            p.frame(),
        );
        let mut p = client_udp(8053);
        p.src = src;
        t.drop(
            format!("spoofed: {what}, udp to a published port"),
            p.frame(),
        );
        let mut p = client_udp(9999);
        p.src = src;
        t.drop(
            format!("spoofed: {what}, udp to an unmapped port"),
            p.frame(),
        );
        let mut p = client_udp(8053).with_payload_len(100);
        p.src = src;
        p.frag = pkt::IP_MF;
        t.drop(format!("spoofed: {what}, udp first fragment"), p.frame());
        t.drop(
            format!("spoofed: {what}, icmp echo"),
            Packet::icmp(src, HOST, 8, 0, [0, 1, 0, 1]).frame(),
        );
    }
    // The host's own addresses: whatever berth would translate (a new flow,
    // an ICMP error about a tracked one); the kernel drops the rest as
    // martians.
    for (src, what) in [
        (HOST, "the host's uplink address"),
        (HOST2, "the host's second address"),
    ] {
        let mut p = client_tcp(8080);
        p.src = src;
        t.drop(
            format!("spoofed: {what} as source, tcp to a published port"),
            p.frame(),
        );
        let mut p = client_udp(8053);
        p.src = src;
        p.dst = HOST2;
        t.drop(
            format!("spoofed: {what} as source, udp to a published port"),
            p.frame(),
        );
        let (left, _) = crate::icmp::left_and_sent(true);
        let e = crate::icmp::icmp_err(
            (UPLINK_MAC, CLIENT_MAC),
            (src, HOST, 64),
            crate::icmp::FRAG_NEEDED,
            &left,
            28,
        );
        t.drop(
            format!("spoofed: {what} as source, icmp error about a tracked flow"),
            e.frame(),
        );
        let mut p = client_udp(9999);
        p.src = src;
        t.pass(
            format!("{what} as source, unmapped port: left to the kernel"),
            p.frame(),
        );
    }
    let mut p = client_udp(9999);
    p.src = C1;
    p.dst = C2;
    t.drop(
        "spoofed: a container's source to another container",
        p.frame(),
    );

    // Just outside each range: translated as any client.
    for (src, what) in [
        (Ipv4Addr::new(126, 255, 255, 255), "126.255.255.255"),
        (Ipv4Addr::new(128, 0, 0, 1), "128.0.0.1"),
        (
            Ipv4Addr::new(172, 16, 255, 255),
            "172.16.255.255 (below the bridge subnet)",
        ),
        (
            Ipv4Addr::new(172, 18, 0, 2),
            "172.18.0.2 (above the bridge subnet)",
        ),
        (
            Ipv4Addr::new(192, 0, 2, 101),
            "a neighbour of the host's addresses",
        ),
    ] {
        let mut p = client_tcp(8080);
        p.src = src;
        t.dnat(format!("client source {what}"), &p, C1_80);
    }
    let mut p = Packet::udp(Ipv4Addr::UNSPECIFIED, 68, Ipv4Addr::BROADCAST, 67);
    p.eth_dst = [0xff; 6];
    t.pass("dhcp discover from 0.0.0.0", p.frame());
    t.pass(
        "arp claiming a container's address",
        pkt::arp_request(C1, HOST),
    );
}

fn ingress_normal(t: &mut Table) {
    for (flags, what) in [
        (pkt::SYN, "syn"),
        (pkt::SYN | pkt::ACK, "syn-ack"),
        (pkt::ACK, "ack"),
        (pkt::PSH | pkt::ACK, "psh-ack"),
        (pkt::FIN | pkt::ACK, "fin-ack"),
        (pkt::FIN, "bare fin"),
        (pkt::RST, "rst"),
        (pkt::RST | pkt::ACK, "rst-ack"),
        (pkt::URG | pkt::ACK, "urg-ack with urgent data"),
        (pkt::SYN | pkt::ECE | pkt::CWR, "ecn-setup syn (ece+cwr)"),
        (pkt::ECE | pkt::ACK, "ece-ack"),
        (pkt::CWR | pkt::ACK, "cwr-ack"),
        (0, "no flags (null scan)"),
        (pkt::FIN | pkt::PSH | pkt::URG, "fin+psh+urg (xmas scan)"),
        (0xff, "every flag"),
    ] {
        let mut p = client_tcp(8080);
        p.tcp_flags = flags;
        if flags & pkt::ACK != 0 {
            p.tcp_ack = 0x2000_0001;
        }
        if flags & pkt::URG != 0 {
            p.tcp_urg = 3;
            p.payload = b"urg!".to_vec();
        }
        t.dnat(format!("tcp {what} to a wildcard mapping"), &p, C1_80);
    }
    for n in [1, 2, 3, 255, 1000, 1001, 1459, 1460] {
        let mut p = client_tcp(8080).with_payload_len(n);
        p.tcp_flags = pkt::PSH | pkt::ACK;
        t.dnat(format!("tcp segment with {n} bytes of payload"), &p, C1_80);
    }
    // Only a SYN opens a flow: any other TCP packet of no tracked flow is
    // dropped (nat_no_flow), so scans and floods create nothing.
    for (flags, what) in [
        (pkt::ACK, "ack"),
        (pkt::PSH | pkt::ACK, "psh-ack"),
        (pkt::SYN | pkt::ACK, "syn-ack"),
        (pkt::RST, "rst"),
        (pkt::RST | pkt::ACK, "rst-ack"),
        (pkt::FIN | pkt::ACK, "fin-ack"),
        (pkt::SYN | pkt::FIN, "syn-fin"),
        (pkt::SYN | pkt::RST, "syn-rst"),
        (0, "no flags"),
    ] {
        let mut p = client_tcp(8080);
        p.sport = 41000;
        p.tcp_flags = flags;
        t.drop(
            format!("tcp {what} of no tracked flow is dropped"),
            p.frame(),
        );
    }
    let mut p = client_tcp(8080).with_payload_len(1461);
    p.tcp_flags = pkt::ACK;
    t.add(
        "tcp segment one byte over the bridge mtu (DF): fragmentation needed",
        p.frame(),
        Expect::TooBig {
            want: crate::pmtu::frag_needed(&p, 1500),
        },
    );

    let c1_53 = (C1, 53);
    for n in [0, 1, 2, 3, 4, 511, 1471, 1472] {
        let p = client_udp(8053).with_payload_len(n);
        t.dnat(format!("udp datagram with {n} bytes of payload"), &p, c1_53);
    }
    t.drop(
        "udp datagram one byte over the bridge mtu, no DF: dropped as it came",
        client_udp(8053).with_payload_len(1473).frame(),
    );
    let mut p = client_udp(8053).with_payload_len(1473);
    p.frag = pkt::IP_DF;
    t.add(
        "udp datagram one byte over the bridge mtu (DF): fragmentation needed",
        p.frame(),
        Expect::TooBig {
            want: crate::pmtu::frag_needed(&p, 1500),
        },
    );
    for n in [0, 1, 4] {
        let mut p = client_udp(8053).with_payload_len(n);
        p.udp_no_csum = true;
        t.dnat(
            format!("udp without checksum ({n}-byte payload) keeps zero"),
            &p,
            c1_53,
        );
    }
    let mut p = client_udp(8053).with_payload_len(6);
    pkt::force_udp_csum_zero(&mut p);
    t.dnat(
        "udp whose checksum computed to zero (sent as 0xffff)",
        &p,
        c1_53,
    );
    // Chosen so the translated datagram's checksum computes to zero: it
    // must leave as 0xffff, never as 0 ("no checksum").
    let mut out = dnat(&client_udp(8053).with_payload_len(6), C1, 53, true);
    pkt::force_udp_csum_zero(&mut out);
    let mut p = client_udp(8053);
    p.payload = out.payload.clone();
    t.dnat("udp whose translated checksum computes to zero", &p, c1_53);
    let mut p = client_tcp(8080).with_payload_len(6);
    pkt::force_tcp_csum_zero(&mut p);
    t.dnat("tcp with checksum 0x0000", &p, C1_80);
    let mut out = dnat(&client_tcp(8080).with_payload_len(6), C1, 80, true);
    pkt::force_tcp_csum_zero(&mut out);
    let mut p = client_tcp(8080);
    p.payload = out.payload.clone();
    t.dnat("tcp whose translated checksum computes to zero", &p, C1_80);

    // Checksums are not berth's to verify: a wrong one stays wrong by the
    // same amount, so the receiver drops the packet as it would have.
    for (what, p, to) in [
        ("ipv4 header", client_tcp(8080), C1_80),
        ("tcp", client_tcp(8080).with_payload_len(10), C1_80),
        ("udp", client_udp(8053), c1_53),
    ] {
        let off = if what == "ipv4 header" {
            ETH_LEN + 10
        } else {
            p.l4_csum_off()
        };
        let (input, want) = with_bad_csum(p.frame(), dnat(&p, to.0, to.1, true).frame(), off);
        t.add(
            format!("wrong {what} checksum stays wrong by the same amount"),
            input,
            Expect::Nat { want, neigh: false },
        );
    }

    // Ethernet pads short frames to 60 bytes; the padding is not the
    // packet's and must not upset the checksums.
    let mut p = client_tcp(8080);
    p.tcp_flags = pkt::ACK;
    p.eth_pad = vec![0; 6];
    t.dnat("tcp ack with ethernet padding", &p, C1_80);
    let mut p = client_udp(8053).with_payload_len(0);
    p.eth_pad = vec![0xee; 18];
    t.dnat("empty udp datagram with ethernet padding", &p, c1_53);
    // The UDP length is shorter than the IPv4 payload: the stack trims.
    let mut p = client_udp(8053);
    p.ip_trailer = vec![0xaa; 4];
    t.dnat("udp length shorter than the ipv4 payload", &p, c1_53);
}

fn ingress_header_fields(t: &mut Table) {
    // IPv4 options of every length: the L4 header is found from IHL.
    for n in (4..=40).step_by(4) {
        let mut p = client_tcp(8080);
        p.ip_options = record_route(n);
        t.dnat(
            format!("tcp with {n} bytes of ipv4 options (ihl {})", 5 + n / 4),
            &p,
            C1_80,
        );
        let mut p = client_udp(8053);
        p.ip_options = record_route(n);
        t.dnat(
            format!("udp with {n} bytes of ipv4 options (ihl {})", 5 + n / 4),
            &p,
            (C1, 53),
        );
    }
    let mut p = client_tcp(8080);
    p.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    t.dnat("ipv4 options nop nop nop eol", &p, C1_80);
    let mut p = client_tcp(8080);
    p.ip_options = vec![0x94, 0x04, 0, 0];
    t.dnat("ipv4 router-alert option", &p, C1_80);
    let mut p = client_tcp(8080);
    p.ip_options = vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    t.dnat("ipv4 timestamp option", &p, C1_80);
    let mut p = client_tcp(8080);
    p.ip_options = vec![1; 40];
    p.tcp_options = vec![1; 40];
    t.dnat("largest ipv4 and tcp headers (ihl 15, doff 15)", &p, C1_80);

    // TCP options.
    let mut p = client_tcp(8080);
    p.tcp_options = vec![2, 4, 0x05, 0xb4];
    t.dnat("tcp syn with mss option (doff 6)", &p, C1_80);
    let mut p = client_tcp(8080);
    p.tcp_options = syn_options();
    t.dnat("tcp syn with linux syn options (doff 10)", &p, C1_80);
    let mut p = client_tcp(8080).with_payload_len(100);
    p.tcp_flags = pkt::ACK;
    p.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    t.dnat("tcp data with timestamps option (doff 8)", &p, C1_80);
    let mut p = client_tcp(8080);
    p.tcp_options = vec![1; 40];
    t.dnat("tcp with 40 bytes of options (doff 15)", &p, C1_80);

    for (tos, what) in [
        (0x01, "ecn ect(1)"),
        (0x02, "ecn ect(0)"),
        (0x03, "ecn ce"),
        (0xb8, "dscp ef"),
        (0x20, "dscp cs1"),
        (0xfc, "dscp 63"),
        (0xff, "every tos bit"),
    ] {
        let mut p = client_tcp(8080);
        p.tos = tos;
        t.dnat(format!("tcp with {what} (tos {tos:#04x}) kept"), &p, C1_80);
    }
    for id in [0, 1, 0x8000, 0xffff] {
        let mut p = client_tcp(8080);
        p.ip_id = id;
        t.dnat(format!("ip id {id:#06x} kept"), &p, C1_80);
    }
    for (frag, what) in [
        (0, "tcp without df"),
        (pkt::IP_RESERVED, "reserved ip flag (not a fragment)"),
        (pkt::IP_RESERVED | pkt::IP_DF, "reserved ip flag with df"),
    ] {
        let mut p = client_tcp(8080);
        p.frag = frag;
        t.dnat(what, &p, C1_80);
    }
    let mut p = client_udp(8053);
    p.frag = pkt::IP_DF;
    t.dnat("udp with df", &p, (C1, 53));

    ingress_fragments(t);

    for ttl in [0, 1] {
        let mut p = client_tcp(8080);
        p.ttl = ttl;
        t.drop(format!("tcp ttl {ttl} to a mapping is dropped"), p.frame());
        let mut p = client_udp(8053);
        p.ttl = ttl;
        t.drop(format!("udp ttl {ttl} to a mapping is dropped"), p.frame());
        let mut p = client_tcp(9999);
        p.ttl = ttl;
        t.pass(format!("ttl {ttl} to an unmapped port passes"), p.frame());
    }
    for ttl in [2, 3, 128, 255] {
        let mut p = client_tcp(8080);
        p.ttl = ttl;
        t.dnat(
            format!("tcp ttl {ttl} forwarded with ttl {}", ttl - 1),
            &p,
            C1_80,
        );
    }
}

/// A datagram to a published port: its first fragment is translated like
/// any packet (the incremental L4 checksum update covers the whole
/// datagram), its later fragments by what the first left in `BERTH_FRAGS`
/// (destination address, IPv4 checksum, TTL). The rows run in order.
fn ingress_fragments(t: &mut Table) {
    let big = |p: Packet, id: u16| {
        let mut p = p.with_payload_len(3000);
        p.ip_id = id;
        p
    };
    let nat = |want: Vec<u8>| Expect::Nat { want, neigh: false };
    let p = big(client_udp(8053), 0x4001);
    let out = dnat(&p, C1, 53, true);
    t.add(
        "udp first fragment to a published port: address, port, checksums",
        pkt::fragment(&p, 0, 1480, true),
        nat(pkt::fragment(&out, 0, 1480, true)),
    );
    t.add(
        "udp middle fragment follows its first fragment",
        pkt::fragment(&p, 1480, 1480, true),
        nat(pkt::fragment(&out, 1480, 1480, true)),
    );
    t.add(
        "udp last fragment follows its first fragment",
        pkt::fragment(&p, 2960, 48, false),
        nat(pkt::fragment(&out, 2960, 48, false)),
    );
    let mut q = p.clone();
    q.ttl = 1;
    t.drop(
        "later fragment with ttl 1 of a translated datagram is dropped",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let mut q = p.clone();
    q.src = OTHER;
    t.pass(
        "later fragment with a translated datagram's id from another client",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let mut q = p;
    q.dst = HOST2;
    t.pass(
        "later fragment with a translated datagram's id to another host address",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let q = big(client_tcp(8080), 0x4001);
    t.pass(
        "later fragment with a translated udp datagram's id over tcp",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let q = big(client_udp(8053), 0x4002);
    t.pass(
        "later fragment whose first fragment never came (left to the host)",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let q = big(client_udp(9999), 0x4003);
    t.pass(
        "udp first fragment to an unmapped port",
        pkt::fragment(&q, 0, 1480, true),
    );
    t.pass(
        "later fragment of a datagram to an unmapped port",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let mut q = big(client_udp(8053), 0x4004);
    q.udp_no_csum = true;
    let out = dnat(&q, C1, 53, true);
    t.add(
        "udp first fragment without checksum keeps zero",
        pkt::fragment(&q, 0, 1480, true),
        nat(pkt::fragment(&out, 0, 1480, true)),
    );
    let mut q = big(client_udp(8053), 0x4005);
    q.ttl = 1;
    t.drop(
        "udp first fragment with ttl 1 to a mapping is dropped",
        pkt::fragment(&q, 0, 1480, true),
    );
    t.pass(
        "later fragment of a datagram whose first fragment was dropped",
        pkt::fragment(&q, 1480, 1480, true),
    );
    let mut q = big(client_tcp(8080), 0x4006);
    q.tcp_flags = pkt::ACK;
    let out = dnat(&q, C1, 80, true);
    t.add(
        "tcp first fragment to a published port",
        pkt::fragment(&q, 0, 1480, true),
        nat(pkt::fragment(&out, 0, 1480, true)),
    );
    t.add(
        "tcp later fragment follows its first fragment",
        pkt::fragment(&q, 1480, 1480, true),
        nat(pkt::fragment(&out, 1480, 1480, true)),
    );
    let q = big(client_tcp(8080), 0x4007);
    t.pass(
        "tcp fragment at offset 8 (inside the tcp header), no first fragment",
        pkt::fragment(&q, 8, 100, true),
    );
    for (frag, id, what) in [
        (pkt::IP_DF, 0x4008, "df and mf together: a first fragment"),
        (
            pkt::IP_RESERVED,
            0x4009,
            "reserved flag with mf: a first fragment",
        ),
    ] {
        let mut q = big(client_udp(8053), id);
        q.frag = frag;
        let out = dnat(&q, C1, 53, true);
        t.add(
            what,
            pkt::fragment(&q, 0, 1480, true),
            nat(pkt::fragment(&out, 0, 1480, true)),
        );
    }
    let mut q = big(client_udp(8053), 0x400a);
    q.ip_options = record_route(8);
    let out = dnat(&q, C1, 53, true);
    t.add(
        "udp first fragment with ipv4 options",
        pkt::fragment(&q, 0, 1472, true),
        nat(pkt::fragment(&out, 0, 1472, true)),
    );
    t.add(
        "later fragment with ipv4 options follows its first",
        pkt::fragment(&q, 1472, 1472, true),
        nat(pkt::fragment(&out, 1472, 1472, true)),
    );
    let q = big(client_udp(8053), 0x400b);
    t.pass(
        "udp first fragment too short to hold its header",
        pkt::fragment(&q, 0, 4, true),
    );
    t.pass(
        "later fragment of a first fragment too short for its header",
        pkt::fragment(&q, 8, 1480, false),
    );
    let q = big(Packet::icmp(CLIENT, HOST, 8, 0, [0, 1, 0, 1]), 0x400c);
    t.pass(
        "later fragment of a large ping to the host",
        pkt::fragment(&q, 1480, 1480, true),
    );
}

fn ingress_addresses_and_ports(t: &mut Table) {
    // The client's 40000 -> 8080 flow (to 172.17.0.2:80) is tracked: the
    // same client port to another host port or address of that container
    // port would reply with the same tuple, so it gets another client port.
    t.dnat_remapped(
        "second host port to the same container port (clash: client port remapped)",
        &client_tcp(8081),
        C1_80,
    );
    let mut p = client_tcp(8080);
    p.dst = HOST2;
    t.dnat_remapped(
        "wildcard mapping on another host address (clash: client port remapped)",
        &p,
        C1_80,
    );
    t.dnat_remapped(
        "mapping bound to this host address (clash: client port remapped)",
        &client_tcp(8082),
        C1_80,
    );
    let mut p = client_tcp(8081).with_payload_len(10);
    p.tcp_flags = pkt::PSH | pkt::ACK;
    t.dnat_remapped("later segment of a remapped flow keeps its port", &p, C1_80);
    t.dnat_remapped(
        "udp clash: second host port of one container port",
        &client_udp(8055),
        (C1, 53),
    );
    let mut p = client_tcp(8081);
    p.sport = 1000;
    t.dnat("privileged client port, no clash", &p, C1_80);
    let mut p = client_tcp(8082);
    p.sport = 1000;
    t.dnat_remapped(
        "privileged client port remapped to a privileged one",
        &p,
        C1_80,
    );
    let mut p = client_tcp(8082);
    p.dst = HOST2;
    t.pass("mapping bound to another host address", p.frame());
    let mut p = client_tcp(8082);
    p.dst = OTHER;
    t.pass(
        "bound mapping's port to an address not the host's",
        p.frame(),
    );
    let mut p = client_tcp(8083);
    p.dst = HOST2;
    t.dnat("address-bound mapping wins over the wildcard", &p, (C2, 83));
    t.dnat(
        "wildcard beside an address-bound mapping",
        &client_tcp(8083),
        (C1, 83),
    );
    t.dnat(
        "udp mapping bound to this host address",
        &client_udp(8054),
        (C1, 54),
    );
    let mut p = client_udp(8054);
    p.dst = HOST2;
    t.pass("udp mapping bound to another host address", p.frame());
    t.dnat(
        "container neighbour unresolved",
        &client_tcp(8090),
        (C2, 90),
    );

    for (dst, what) in [
        (OTHER, "an address not the host's"),
        (
            Ipv4Addr::new(192, 0, 2, 255),
            "the subnet broadcast address",
        ),
        (Ipv4Addr::BROADCAST, "the limited broadcast address"),
        (Ipv4Addr::UNSPECIFIED, "0.0.0.0"),
        (Ipv4Addr::new(224, 0, 0, 1), "a multicast group"),
        (C1, "the container itself"),
    ] {
        let mut p = client_tcp(8080);
        p.dst = dst;
        t.pass(format!("tcp wildcard port to {what}"), p.frame());
        let mut p = client_udp(8053);
        p.dst = dst;
        t.pass(format!("udp wildcard port to {what}"), p.frame());
    }
    let mut p = client_tcp(8080);
    p.src = OTHER;
    t.dnat("client from another network", &p, C1_80);

    t.pass("udp to a tcp-only port", client_udp(8080).frame());
    t.pass("tcp to a udp-only port", client_tcp(8053).frame());
    for port in [0, 79, 80, 8079, 8084, 9999] {
        t.pass(
            format!("tcp to unmapped port {port}"),
            client_tcp(port).frame(),
        );
    }
    t.dnat("host port 1", &client_tcp(1), (C1, 65535));
    t.dnat("host port 65535", &client_tcp(65535), (C1, 1));
    t.dnat("udp host port 1", &client_udp(1), (C1, 65535));
    t.pass("udp host port 65535 unmapped", client_udp(65535).frame());
    for sport in [0, 1, 65535] {
        let mut p = client_tcp(8080);
        p.sport = sport;
        t.dnat(format!("client source port {sport}"), &p, C1_80);
    }

    let last = MANY_FIRST + MANY - 1;
    for (i, what) in [(0, "first"), (MANY / 2, "middle"), (MANY - 1, "last")] {
        t.dnat(
            format!("tcp to the {what} of {MANY} mappings"),
            &client_tcp(MANY_FIRST + i),
            (C1, 30000 + i),
        );
        t.dnat(
            format!("udp to the {what} of {MANY} mappings"),
            &client_udp(MANY_FIRST + i),
            (C1, 31000 + i),
        );
    }
    t.pass(
        format!("one past {MANY} mappings"),
        client_tcp(last + 1).frame(),
    );
    t.pass(
        format!("one before {MANY} mappings"),
        client_tcp(MANY_FIRST - 1).frame(),
    );
}

fn ingress_malformed(t: &mut Table) {
    let mut tcp = client_tcp(8080).with_payload_len(4);
    tcp.tcp_flags = pkt::PSH | pkt::ACK;
    let tcp_frame = tcp.frame();
    for (cut, what) in [
        (14, "ethernet header only"),
        (15, "one byte of ipv4"),
        (33, "ipv4 header less one byte"),
        (34, "ipv4 header only"),
        (35, "one byte of tcp"),
        (38, "tcp ports only"),
        (47, "tcp header up to the data offset"),
        (53, "tcp header less one byte"),
        (54, "tcp header without its payload"),
        (57, "payload less one byte"),
    ] {
        t.pass(
            format!("tcp frame cut at {cut} bytes: {what}"),
            tcp_frame[..cut].to_vec(),
        );
    }
    let udp_frame = client_udp(8053).frame();
    for (cut, what) in [
        (34, "ipv4 header only"),
        (38, "udp ports only"),
        (41, "udp header less one byte"),
        (42, "udp header without its payload"),
    ] {
        t.pass(
            format!("udp frame cut at {cut} bytes: {what}"),
            udp_frame[..cut].to_vec(),
        );
    }
    let mut p = client_tcp(8080);
    p.ip_options = record_route(8);
    let f = p.frame();
    t.pass("tcp frame cut inside the ipv4 options", f[..38].to_vec());
    t.pass(
        "tcp frame cut right after the ipv4 options",
        f[..42].to_vec(),
    );

    for ihl in 0..5u8 {
        let f = pkt::put8(tcp_frame.clone(), ETH_LEN, 0x40 | ihl);
        t.pass(format!("bogus ihl {ihl}"), pkt::fix_ipv4_csum(f));
    }
    for ihl in [10u8, 15] {
        let f = pkt::put8(tcp_frame.clone(), ETH_LEN, 0x40 | ihl);
        t.pass(
            format!("ihl {ihl} reaches past the end of the frame"),
            pkt::fix_ipv4_csum(f),
        );
    }
    for v in [0u8, 5, 6, 15] {
        let f = pkt::put8(tcp_frame.clone(), ETH_LEN, (v << 4) | 5);
        t.pass(
            format!("ip version {v} in an ipv4 ethertype"),
            pkt::fix_ipv4_csum(f),
        );
    }

    let tot = |f: &Vec<u8>, v: u16| pkt::fix_ipv4_csum(pkt::put16(f.clone(), ETH_LEN + 2, v));
    for (len, what) in [
        (0, "zero"),
        (19, "shorter than the ipv4 header"),
        (20, "the ipv4 header alone"),
        (39, "shorter than ipv4 + tcp headers"),
    ] {
        t.pass(
            format!("tcp total length {len}: {what}"),
            tot(&tcp_frame, len),
        );
    }
    t.pass(
        "udp total length 27: shorter than ipv4 + udp headers",
        tot(&udp_frame, 27),
    );
    let full = (tcp_frame.len() - ETH_LEN) as u16;
    t.pass(
        "tcp total length one more than the frame",
        tot(&tcp_frame, full + 1),
    );
    t.pass("tcp total length 65535", tot(&tcp_frame, 65535));
    let full = (udp_frame.len() - ETH_LEN) as u16;
    t.pass(
        "udp total length one more than the frame",
        tot(&udp_frame, full + 1),
    );

    for doff in 0..5u8 {
        let f = pkt::put8(tcp_frame.clone(), ETH_LEN + 20 + 12, doff << 4);
        t.pass(format!("tcp data offset {doff}"), f);
    }
    let syn = client_tcp(8080).frame();
    t.pass(
        "tcp data offset 15 with a 20-byte segment",
        pkt::put8(syn.clone(), ETH_LEN + 32, 15 << 4),
    );
    t.pass(
        "tcp data offset 6 with a 20-byte segment",
        pkt::put8(syn, ETH_LEN + 32, 6 << 4),
    );

    let udp_len = |f: &Vec<u8>, v: u16| pkt::put16(f.clone(), ETH_LEN + 24, v);
    t.pass("udp length 0", udp_len(&udp_frame, 0));
    t.pass("udp length 7", udp_len(&udp_frame, 7));
    t.pass(
        "udp length one more than the datagram",
        udp_len(&udp_frame, 13),
    );
    t.pass("udp length 65535", udp_len(&udp_frame, 65535));
}

fn ingress_other_protocols(t: &mut Table) {
    // ICMP: echo to the host, and errors about flows berth did not
    // translate, pass untouched.
    let untracked = Packet::tcp(HOST, 9999, CLIENT, 40000);
    for (ty, code, rest, what) in [
        (8, 0, [0, 1, 0, 1], "echo request"),
        (0, 0, [0, 1, 0, 1], "echo reply"),
        (13, 0, [0, 1, 0, 1], "timestamp request"),
        (9, 0, [1, 0, 0, 30], "router advertisement"),
        (42, 0, [0; 4], "unknown type 42"),
    ] {
        t.pass(
            format!("icmp {what} to the host"),
            Packet::icmp(CLIENT, HOST, ty, code, rest).frame(),
        );
    }
    for (ty, code, rest, what) in [
        (3, 3, [0; 4], "port unreachable"),
        (3, 4, [0, 0, 0x05, 0x78], "fragmentation needed"),
        (11, 0, [0; 4], "time exceeded"),
        (5, 1, [192, 0, 2, 254], "redirect"),
        (4, 0, [0; 4], "source quench"),
        (12, 0, [20, 0, 0, 0], "parameter problem"),
    ] {
        let p = Packet::icmp_error(CLIENT, HOST, ty, code, rest, &untracked, 28);
        t.pass(
            format!("icmp {what} about a flow berth never saw"),
            p.frame(),
        );
    }
    // A quote of what a client sent to a published port, coming back in.
    let p = Packet::icmp_error(CLIENT, HOST, 3, 3, [0; 4], &client_tcp(8080), 28);
    t.pass("icmp error quoting a packet to a published port", p.frame());
    let p = Packet::icmp_error(CLIENT, HOST, 3, 4, [0, 0, 5, 0x78], &untracked, 20);
    t.pass("icmp error quoting only an ipv4 header", p.frame());
    let mut f = Packet::icmp(CLIENT, HOST, 8, 0, [0; 4]).frame();
    f.truncate(ETH_LEN + 24);
    t.pass("icmp header cut short", f);

    let ports = [0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1];
    for (proto, what) in [
        (pkt::SCTP, "sctp"),
        (pkt::GRE, "gre"),
        (pkt::ESP, "esp"),
        (2, "igmp"),
        (255, "reserved protocol 255"),
    ] {
        let p = Packet::raw(CLIENT, HOST, proto, ports.to_vec());
        t.pass(
            format!("{what} with port-like bytes 40000 -> 8080"),
            p.frame(),
        );
    }

    // Layer 2: only untagged Ethernet II + IPv4 is looked at.
    t.pass("arp request for the host", pkt::arp_request(CLIENT, HOST));
    t.pass(
        "arp reply to the host",
        pkt::arp(2, CLIENT_MAC, CLIENT, UPLINK_MAC, HOST),
    );
    let syn = client_tcp(8080).frame();
    t.pass(
        "vlan-tagged tcp to a mapped port",
        pkt::vlan_tagged(&syn, 10),
    );
    t.pass(
        "priority-tagged tcp (vid 0)",
        pkt::vlan_tagged(&syn, 0x6000),
    );
    t.pass(
        "qinq (802.1ad + 802.1q) tcp",
        pkt::qinq_tagged(&syn, 100, 10),
    );
    t.pass(
        "double 802.1q tcp",
        pkt::vlan_tagged(&pkt::vlan_tagged(&syn, 10), 100),
    );
    t.pass(
        "vlan-tagged udp to a mapped port",
        pkt::vlan_tagged(&client_udp(8053).frame(), 10),
    );
    t.pass(
        "vlan-tagged arp",
        pkt::vlan_tagged(&pkt::arp_request(CLIENT, HOST), 10),
    );
    let mut lldp = syn[..12].to_vec();
    lldp.extend(0x88ccu16.to_be_bytes());
    lldp.extend([0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 2, 0, 0]);
    t.pass("lldp", lldp);
    let mut llc = syn[..12].to_vec();
    llc.extend(46u16.to_be_bytes()); // 802.3 length field, then LLC
    llc.extend([0x42, 0x42, 0x03]);
    llc.resize(60, 0);
    t.pass("802.3 llc frame", llc);
    let mut p = syn.clone();
    p[12..14].copy_from_slice(&0x0801u16.to_be_bytes());
    t.pass("ipv4 bytes under another ethertype", p);
    t.pass("ethernet header only, ipv4 ethertype", syn[..14].to_vec());

    // IPv6 passes untouched until it is supported.
    use V6Ext::*;
    let v6 = [
        (
            "ipv6 tcp syn to a mapped port number",
            Ipv6Packet::new(pkt::TCP, 8080),
        ),
        ("ipv6 udp to a mapped port number", {
            let mut p = Ipv6Packet::new(pkt::UDP, 8053);
            p.payload = b"ping".to_vec();
            p
        }),
        ("icmpv6 echo request", Ipv6Packet::icmpv6(128, 0)),
        ("icmpv6 neighbour solicitation", Ipv6Packet::icmpv6(135, 0)),
        (
            "ipv6 hop-by-hop then tcp",
            Ipv6Packet::new(pkt::TCP, 8080).with_ext(&[HopByHop]),
        ),
        (
            "ipv6 routing header then udp",
            Ipv6Packet::new(pkt::UDP, 8053).with_ext(&[Routing]),
        ),
        (
            "ipv6 first fragment of udp",
            Ipv6Packet::new(pkt::UDP, 8053).with_ext(&[Fragment {
                offset: 0,
                more: true,
            }]),
        ),
        (
            "ipv6 later fragment",
            Ipv6Packet::new(pkt::UDP, 8053).with_ext(&[Fragment {
                offset: 100,
                more: false,
            }]),
        ),
        (
            "ipv6 destination options then tcp",
            Ipv6Packet::new(pkt::TCP, 8080).with_ext(&[DestOpts]),
        ),
        (
            "ipv6 hop-by-hop, routing, destination options, tcp",
            Ipv6Packet::new(pkt::TCP, 8080).with_ext(&[HopByHop, Routing, DestOpts]),
        ),
    ];
    for (what, p) in v6 {
        t.pass(what, p.frame());
    }
    let f = Ipv6Packet::new(pkt::TCP, 8080).frame();
    t.pass("ipv6 tcp header cut short", f[..ETH_LEN + 40 + 10].to_vec());
    t.pass("vlan-tagged ipv6 tcp", pkt::vlan_tagged(&f, 10));
}
