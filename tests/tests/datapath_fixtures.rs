//! BPF_PROG_TEST_RUN tables: frame in -> verdict and exact frame out. The
//! expected frames are built from scratch by `support::pkt`, which computes
//! every checksum over the whole packet; the programs update them
//! incrementally. Needs root (loads eBPF, makes private namespaces).
use std::net::Ipv4Addr;

use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};
use berth_maps::{XDP_HANDOFF_MAGIC, XDP_HANDOFF_MAGIC_NEIGH};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn publish_defaults(env: &mut Env) {
    env.host_addr(HOST);
    env.host_addr(HOST2);
    let any = Ipv4Addr::UNSPECIFIED;
    env.publish(&binding(any, 8080, C1, 80, Protocol::Tcp));
    env.publish(&binding(any, 8081, C1, 80, Protocol::Tcp));
    env.publish(&binding(HOST, 8082, C1, 80, Protocol::Tcp));
    env.publish(&binding(any, 8053, C1, 53, Protocol::Udp));
    env.publish(&binding(any, 8090, C2, 90, Protocol::Tcp));
}

/// What the ingress program must do with a frame.
enum Expect {
    /// Translated towards the container and redirected; `neigh` when the
    /// container's MAC is not known yet (MACs left to the kernel).
    Dnat { to: Packet, neigh: bool },
    /// Passed byte-identical.
    Pass,
    /// Dropped.
    Drop,
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn client_tcp(dport: u16) -> Packet {
    Packet::tcp(CLIENT, 40000, HOST, dport)
}

/// `p` as it must leave towards container `ip:port` on the bridge.
fn dnat(p: &Packet, ip: Ipv4Addr, port: u16, resolved: bool) -> Packet {
    let mut t = p.clone();
    t.dst = ip;
    t.dport = port;
    t.ttl -= 1;
    if resolved {
        t.eth_dst = C1_MAC;
        t.eth_src = BRIDGE_MAC;
    }
    t
}

fn ingress_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name, frame, expect| {
        cases.push(Case {
            name,
            frame,
            expect,
        })
    };

    let p = client_tcp(8080);
    add(
        "tcp syn to wildcard mapping",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = client_tcp(8080);
    p.tcp_flags = pkt::ACK;
    p.payload = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    add(
        "tcp data segment",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = client_tcp(8080);
    p.payload = vec![0xab; 1001]; // odd length: checksum pads a zero byte
    add(
        "tcp odd-length payload",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let p = client_tcp(8081);
    add(
        "second host port to same container port",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = client_tcp(8080);
    p.dst = HOST2;
    add(
        "wildcard mapping on another host address",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let p = client_tcp(8082);
    add(
        "mapping bound to this host address",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = client_tcp(8082);
    p.dst = HOST2;
    add(
        "mapping bound to another host address",
        p.frame(),
        Expect::Pass,
    );

    let mut p = client_tcp(8080);
    p.dst = OTHER;
    add(
        "wildcard port to an address not the host's",
        p.frame(),
        Expect::Pass,
    );

    let p = Packet::udp(CLIENT, 5000, HOST, 8053);
    add(
        "udp datagram",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 53, true),
            neigh: false,
        },
    );

    let mut p = Packet::udp(CLIENT, 5000, HOST, 8053);
    p.udp_no_csum = true;
    add(
        "udp without checksum keeps zero",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 53, true),
            neigh: false,
        },
    );

    let mut p = Packet::udp(CLIENT, 5000, HOST, 8053);
    p.payload = Vec::new();
    add(
        "udp empty payload",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 53, true),
            neigh: false,
        },
    );

    let p = Packet::udp(CLIENT, 5000, HOST, 8080);
    add("udp to a tcp-only port", p.frame(), Expect::Pass);

    let p = client_tcp(8053);
    add("tcp to a udp-only port", p.frame(), Expect::Pass);

    let p = client_tcp(9999);
    add("unmapped port", p.frame(), Expect::Pass);

    let p = client_tcp(8090);
    add(
        "container neighbour unresolved",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C2, 90, false),
            neigh: true,
        },
    );

    let mut p = client_tcp(8080);
    p.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    add(
        "ipv4 options: l4 found from ihl",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = client_tcp(8080);
    p.ip_options = vec![0x94, 0x04, 0, 0]; // router alert
    add(
        "ipv4 router-alert option",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = Packet::udp(CLIENT, 5000, HOST, 8053);
    p.frag = 0x2000; // MF, offset 0: first fragment
    add("first fragment passes", p.frame(), Expect::Pass);

    let mut p = Packet::udp(CLIENT, 5000, HOST, 8053);
    p.frag = 0x0010; // offset 128 bytes, last fragment
    add("later fragment passes", p.frame(), Expect::Pass);

    let mut p = client_tcp(8080);
    p.ttl = 1;
    add("ttl 1 to a mapping is dropped", p.frame(), Expect::Drop);

    let mut p = client_tcp(8080);
    p.ttl = 2;
    add(
        "ttl 2 forwarded with ttl 1",
        p.frame(),
        Expect::Dnat {
            to: dnat(&p, C1, 80, true),
            neigh: false,
        },
    );

    let mut p = client_tcp(9999);
    p.ttl = 1;
    add("ttl 1 to an unmapped port passes", p.frame(), Expect::Pass);

    let mut f = client_tcp(8080).frame();
    f.truncate(14 + 20 + 10);
    add("truncated tcp header", f, Expect::Pass);

    let mut f = Packet::udp(CLIENT, 5000, HOST, 8053).frame();
    f.truncate(14 + 20 + 4);
    add("truncated udp header", f, Expect::Pass);

    let mut f = client_tcp(8080).frame();
    f.truncate(14 + 12);
    add("truncated ipv4 header", f, Expect::Pass);

    let mut f = client_tcp(8080).frame();
    f[14] = 0x44; // IHL 4
    add("bogus ihl below 5", f, Expect::Pass);

    let mut f = client_tcp(8080).frame();
    f[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes()); // shorter than headers
    add("total length shorter than headers", f, Expect::Pass);

    let mut f = client_tcp(8080).frame();
    f[14 + 20 + 12] = 0x40; // data offset 4
    add("tcp data offset below 5", f, Expect::Pass);

    let mut f = client_tcp(8080).frame();
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    add("ip version mismatch", f, Expect::Pass);

    let mut p = client_tcp(8080);
    p.proto = pkt::ICMP;
    add("icmp echo to the host", p.frame(), Expect::Pass);

    add("arp request", pkt::arp_request(CLIENT, HOST), Expect::Pass);
    add(
        "ipv6 tcp to a mapped port number",
        pkt::ipv6_tcp_syn(8080),
        Expect::Pass,
    );
    add(
        "vlan-tagged tcp to a mapped port",
        pkt::vlan_tagged(&client_tcp(8080).frame(), 10),
        Expect::Pass,
    );
    // The kernel hands no hook a frame shorter than an Ethernet header.
    add(
        "ethernet header only, ipv4 ethertype",
        client_tcp(8080).frame()[..14].to_vec(),
        Expect::Pass,
    );
    cases
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(failures: &mut Vec<String>, prog: &str, case: &str, ok: bool, what: String) {
    if !ok {
        failures.push(format!("[{prog}] {case}: {what}"));
    }
}

#[test]
fn ingress_table_tc_and_xdp() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let docker0 = ifindex("docker0");
        let mut failures = Vec::new();
        let cases = ingress_cases();
        assert!(cases.len() >= 30);
        for c in &cases {
            // BPF_PROG_TEST_RUN for skb programs refuses an IPv4 frame
            // without a whole IPv4 header (EINVAL); XDP takes any frame.
            let ipv4_ethertype = c.frame.len() >= 14 && c.frame[12..14] == [0x08, 0x00];
            let xdp = env.xdp("berth_xdp", &c.frame);
            if ipv4_ethertype && c.frame.len() < 14 + 20 {
                check(
                    &mut failures,
                    "xdp",
                    c.name,
                    xdp.code == XDP_PASS && xdp.frame == c.frame,
                    "not passed untouched".into(),
                );
                continue;
            }
            let tc = env.tc("berth_ingress", &c.frame);
            match &c.expect {
                Expect::Pass => {
                    check(
                        &mut failures,
                        "tc",
                        c.name,
                        tc.code == TC_ACT_OK,
                        format!("verdict {} != TC_ACT_OK", tc.code),
                    );
                    check(
                        &mut failures,
                        "tc",
                        c.name,
                        tc.frame == c.frame,
                        format!(
                            "frame changed:\n  in  {}\n  out {}",
                            hex(&c.frame),
                            hex(&tc.frame)
                        ),
                    );
                    check(
                        &mut failures,
                        "xdp",
                        c.name,
                        xdp.code == XDP_PASS,
                        format!("verdict {} != XDP_PASS", xdp.code),
                    );
                    check(
                        &mut failures,
                        "xdp",
                        c.name,
                        xdp.frame == c.frame,
                        format!(
                            "frame changed:\n  in  {}\n  out {}",
                            hex(&c.frame),
                            hex(&xdp.frame)
                        ),
                    );
                }
                Expect::Drop => {
                    check(
                        &mut failures,
                        "tc",
                        c.name,
                        tc.code == TC_ACT_SHOT,
                        format!("verdict {} != TC_ACT_SHOT", tc.code),
                    );
                    check(
                        &mut failures,
                        "xdp",
                        c.name,
                        xdp.code == XDP_DROP,
                        format!("verdict {} != XDP_DROP", xdp.code),
                    );
                }
                Expect::Dnat { to, neigh } => {
                    let want = to.frame();
                    check(
                        &mut failures,
                        "tc",
                        c.name,
                        tc.code == TC_ACT_REDIRECT,
                        format!("verdict {} != TC_ACT_REDIRECT", tc.code),
                    );
                    check(
                        &mut failures,
                        "tc",
                        c.name,
                        tc.frame == want,
                        format!("frame:\n  want {}\n  got  {}", hex(&want), hex(&tc.frame)),
                    );
                    check(
                        &mut failures,
                        "xdp",
                        c.name,
                        xdp.code == XDP_PASS,
                        format!("verdict {} != XDP_PASS", xdp.code),
                    );
                    // XDP test runs return the metadata in front of the frame.
                    let (meta, frame) = xdp.frame.split_at(8.min(xdp.frame.len()));
                    let magic = u32::from_ne_bytes(meta[..4].try_into().unwrap_or([0; 4]));
                    let ifx = u32::from_ne_bytes(meta[4..8].try_into().unwrap_or([0; 4]));
                    let want_magic = if *neigh {
                        XDP_HANDOFF_MAGIC_NEIGH
                    } else {
                        XDP_HANDOFF_MAGIC
                    };
                    check(&mut failures, "xdp", c.name, magic == want_magic && ifx == docker0, format!("handoff magic {magic:#x} ifindex {ifx}, want {want_magic:#x} {docker0}"));
                    check(
                        &mut failures,
                        "xdp",
                        c.name,
                        frame == want.as_slice(),
                        format!("frame:\n  want {}\n  got  {}", hex(&want), hex(frame)),
                    );
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    });
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// A container's packet, as it reaches the bridge's ingress hook.
fn from_container(src_port: u16, dst: Ipv4Addr, dst_port: u16, proto: u8) -> Packet {
    let mut p = if proto == pkt::TCP {
        Packet::tcp(C1, src_port, dst, dst_port)
    } else {
        Packet::udp(C1, src_port, dst, dst_port)
    };
    p.eth_dst = BRIDGE_MAC;
    p.eth_src = C1_MAC;
    p.tcp_flags = pkt::SYN | pkt::ACK;
    p
}

/// The reply as it must leave the uplink: from the host address and port
/// the flow came in on.
fn snat(p: &Packet, host: Ipv4Addr, host_port: u16) -> Packet {
    let mut t = p.clone();
    t.src = host;
    t.sport = host_port;
    t.ttl -= 1;
    t.eth_dst = CLIENT_MAC;
    t.eth_src = UPLINK_MAC;
    t
}

#[test]
fn reply_leaves_with_the_host_port_it_came_in_on() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        // Two flows to one container port through two host ports.
        assert_eq!(
            env.tc(
                "berth_ingress",
                &Packet::tcp(CLIENT, 40000, HOST, 8080).frame()
            )
            .code,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            env.tc(
                "berth_ingress",
                &Packet::tcp(CLIENT, 40001, HOST, 8081).frame()
            )
            .code,
            TC_ACT_REDIRECT
        );
        for (cport, host_port) in [(40000, 8080), (40001, 8081)] {
            let reply = from_container(80, CLIENT, cport, pkt::TCP);
            let v = env.tc("berth_reply", &reply.frame());
            assert_eq!(v.code, TC_ACT_REDIRECT, "reply to {cport}");
            let want = snat(&reply, HOST, host_port).frame();
            assert_eq!(hex(&v.frame), hex(&want), "reply to client port {cport}");
        }
    });
}

#[test]
fn reply_uses_the_host_address_the_client_used() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let mut p = Packet::tcp(CLIENT, 40000, HOST2, 8080);
        p.dst = HOST2;
        assert_eq!(env.tc("berth_ingress", &p.frame()).code, TC_ACT_REDIRECT);
        let reply = from_container(80, CLIENT, 40000, pkt::TCP);
        let v = env.tc("berth_reply", &reply.frame());
        assert_eq!(v.code, TC_ACT_REDIRECT);
        assert_eq!(hex(&v.frame), hex(&snat(&reply, HOST2, 8080).frame()));
    });
}

#[test]
fn udp_reply_comes_from_host_port_and_keeps_zero_checksum() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        assert_eq!(
            env.xdp("berth_xdp", &Packet::udp(CLIENT, 5000, HOST, 8053).frame())
                .code,
            XDP_PASS
        );
        for no_csum in [false, true] {
            let mut reply = from_container(53, CLIENT, 5000, pkt::UDP);
            reply.udp_no_csum = no_csum;
            let v = env.tc("berth_reply", &reply.frame());
            assert_eq!(v.code, TC_ACT_REDIRECT);
            assert_eq!(
                hex(&v.frame),
                hex(&snat(&reply, HOST, 8053).frame()),
                "udp_no_csum={no_csum}"
            );
        }
    });
}

#[test]
fn untracked_container_traffic_passes_untouched() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        // Outbound connection of a container (the host masquerades it), a
        // reply to a flow never seen, traffic between containers, ARP.
        let frames = vec![
            from_container(43210, OTHER, 443, pkt::TCP).frame(),
            from_container(80, CLIENT, 40999, pkt::TCP).frame(),
            from_container(80, C2, 5555, pkt::TCP).frame(),
            from_container(53, CLIENT, 5000, pkt::UDP).frame(),
            pkt::arp_request(C1, BRIDGE_IP),
        ];
        for f in frames {
            let v = env.tc("berth_reply", &f);
            assert_eq!(v.code, TC_ACT_OK);
            assert_eq!(v.frame, f);
        }
    });
}

#[test]
fn ingress_tracks_each_flow_once_with_the_host_side_tuple() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        let f = Packet::tcp(CLIENT, 40000, HOST, 8080).frame();
        for _ in 0..3 {
            env.tc("berth_ingress", &f);
        }
        env.tc(
            "berth_ingress",
            &Packet::tcp(CLIENT, 40000, HOST, 9999).frame(),
        );
        let entries = env.nat_entries();
        assert_eq!(entries.len(), 1, "one flow, one entry: {entries:?}");
        let (k, v) = entries[0];
        assert_eq!(k.src_addr_be, u32::from_ne_bytes(C1.octets()));
        assert_eq!(k.dst_addr_be, u32::from_ne_bytes(CLIENT.octets()));
        assert_eq!(u16::from_be(k.src_port_be), 80);
        assert_eq!(u16::from_be(k.dst_port_be), 40000);
        assert_eq!(v.host_addr_be, u32::from_ne_bytes(HOST.octets()));
        assert_eq!(u16::from_be(v.host_port_be), 8080);
        assert_eq!(v.flags & berth_maps::NAT_F_CLOSING, 0);
        let mut fin = Packet::tcp(CLIENT, 40000, HOST, 8080);
        fin.tcp_flags = pkt::FIN | pkt::ACK;
        env.tc("berth_ingress", &fin.frame());
        assert_ne!(
            env.nat_entries()[0].1.flags & berth_maps::NAT_F_CLOSING,
            0,
            "FIN marks the flow closing"
        );
    });
}

#[test]
fn deliver_redirects_only_handed_off_packets() {
    in_fixture_ns(|env| {
        // Without XDP metadata the deliver hook is a no-op.
        let f = Packet::tcp(CLIENT, 40000, HOST, 8080).frame();
        let v = env.tc("berth_deliver", &f);
        assert_eq!(v.code, TC_ACT_OK);
        assert_eq!(v.frame, f);
    });
}
