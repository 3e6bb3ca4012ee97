//! The tables' vocabulary: what a program must do with a frame, the
//! mappings every table runs against, and builders of expected frames.
use std::net::Ipv4Addr;

use berth::model::Protocol;
use berth_integration::{
    pkt::{self, Packet},
    testrun::*,
};

/// The mapping most cases use: wildcard 8080/tcp -> 172.17.0.2:80.
pub(crate) const C1_80: (Ipv4Addr, u16) = (C1, 80);

/// First and count of the block of many mappings (`many_*` cases).
pub(crate) const MANY_FIRST: u16 = 20000;
pub(crate) const MANY: u16 = 256;
pub(crate) const CLIENT_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

/// A mapping bound to loopback, reachable from the host only.
pub(crate) const LOOPBACK_PORT: u16 = 9000;

pub(crate) fn publish_defaults(env: &mut Env) {
    env.host_addr(HOST);
    env.host_addr(HOST2);
    // As the daemon fills them: loopback is one of the host's addresses,
    // and docker0's subnet is where the containers live.
    env.host_addr(Ipv4Addr::LOCALHOST);
    env.bridge_subnet(Ipv4Addr::new(172, 17, 0, 0), 16);
    let any = Ipv4Addr::UNSPECIFIED;
    let (tcp, udp) = (Protocol::Tcp, Protocol::Udp);
    for b in [
        binding(any, 8080, C1, 80, tcp),
        binding(any, 8081, C1, 80, tcp),
        binding(HOST, 8082, C1, 80, tcp),
        // The same host port bound to one address and to the wildcard.
        binding(HOST2, 8083, C2, 83, tcp),
        binding(any, 8083, C1, 83, tcp),
        binding(any, 8053, C1, 53, udp),
        // A second host port of the same container port (clash remaps).
        binding(any, 8055, C1, 53, udp),
        binding(HOST, 8054, C1, 54, udp),
        binding(any, 8090, C2, 90, tcp),
        binding(Ipv4Addr::LOCALHOST, LOOPBACK_PORT, C1, 9000, tcp),
        binding(Ipv4Addr::LOCALHOST, LOOPBACK_PORT, C1, 9000, udp),
        // Extreme ports, both ways.
        binding(any, 1, C1, 65535, tcp),
        binding(any, 65535, C1, 1, tcp),
        binding(any, 1, C1, 65535, udp),
    ] {
        env.publish(&b);
    }
    for i in 0..MANY {
        env.publish(&binding(any, MANY_FIRST + i, C1, 30000 + i, tcp));
        env.publish(&binding(any, MANY_FIRST + i, C1, 31000 + i, udp));
    }
}

/// What a program must do with a frame.
#[derive(Clone)]
pub(crate) enum Expect {
    /// Translated and redirected: exactly this frame leaves. `neigh`: the
    /// next hop's MAC is not known yet (MACs left to the kernel).
    Nat { want: Vec<u8>, neigh: bool },
    /// Passed byte-identical.
    Pass,
    /// Dropped untouched.
    Drop,
    /// Dropped after the rewrite (no route, or longer than the route's
    /// MTU): the bytes go nowhere, so only the verdict is checked.
    DropAfterNat,
    /// Too long for the container's route: answered with exactly this
    /// frame (an ICMP error) out of the uplink it came in by (`pmtu`).
    TooBig { want: Vec<u8> },
}

#[derive(Clone)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) frame: Vec<u8>,
    pub(crate) expect: Expect,
}

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) cases: Vec<Case>,
}

impl Table {
    pub(crate) fn add(&mut self, name: impl Into<String>, frame: Vec<u8>, expect: Expect) {
        self.cases.push(Case {
            name: name.into(),
            frame,
            expect,
        });
    }

    pub(crate) fn pass(&mut self, name: impl Into<String>, frame: Vec<u8>) {
        self.add(name, frame, Expect::Pass);
    }

    pub(crate) fn drop(&mut self, name: impl Into<String>, frame: Vec<u8>) {
        self.add(name, frame, Expect::Drop);
    }

    /// `p` must leave DNAT'd to `to`.
    pub(crate) fn dnat(&mut self, name: impl Into<String>, p: &Packet, to: (Ipv4Addr, u16)) {
        let resolved = to.0 == C1;
        let want = dnat(p, to.0, to.1, resolved).frame();
        self.add(
            name,
            p.frame(),
            Expect::Nat {
                want,
                neigh: !resolved,
            },
        );
    }

    /// `p`'s reply tuple is taken by another flow: it must leave DNAT'd to
    /// `to` from the first client port berth tries instead of its own.
    pub(crate) fn dnat_remapped(
        &mut self,
        name: impl Into<String>,
        p: &Packet,
        to: (Ipv4Addr, u16),
    ) {
        let resolved = to.0 == C1;
        let mut want = dnat(p, to.0, to.1, resolved);
        want.sport = remapped_port(p);
        self.add(
            name,
            p.frame(),
            Expect::Nat {
                want: want.frame(),
                neigh: !resolved,
            },
        );
    }

    /// `p` (a container's packet) must leave SNAT'd from `from`.
    pub(crate) fn snat(&mut self, name: impl Into<String>, p: &Packet, from: (Ipv4Addr, u16)) {
        let resolved = p.dst != CLIENT_UNRESOLVED;
        let want = snat(p, from.0, from.1, resolved).frame();
        self.add(
            name,
            p.frame(),
            Expect::Nat {
                want,
                neigh: !resolved,
            },
        );
    }
}

/// The client port a clash gives the client packet `p` when the first one
/// tried is free (README: remapped ports), never the client's own.
pub(crate) fn remapped_port(p: &Packet) -> u16 {
    let port = berth_maps::nat_remap_port(u32::from_ne_bytes(p.src.octets()), p.sport, p.dport, 0);
    assert_ne!(port, p.sport, "a remap keeps the port: {p:?}");
    assert_eq!(
        port >= 1024,
        p.sport >= 1024,
        "a remap keeps the port class: {p:?}"
    );
    port
}

pub(crate) fn client_tcp(dport: u16) -> Packet {
    Packet::tcp(CLIENT, 40000, HOST, dport)
}

pub(crate) fn client_udp(dport: u16) -> Packet {
    Packet::udp(CLIENT, 5000, HOST, dport)
}

/// `p` as it must leave towards container `ip:port` on the bridge.
pub(crate) fn dnat(p: &Packet, ip: Ipv4Addr, port: u16, resolved: bool) -> Packet {
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

/// The reply as it must leave the uplink: from the host address and port
/// the flow came in on.
pub(crate) fn snat(p: &Packet, host: Ipv4Addr, host_port: u16, resolved: bool) -> Packet {
    let mut t = p.clone();
    t.src = host;
    t.sport = host_port;
    t.ttl -= 1;
    if resolved {
        t.eth_dst = CLIENT_MAC;
        t.eth_src = UPLINK_MAC;
    }
    t
}

/// `n` bytes of IPv4 options: a record-route option with `(n - 4) / 4`
/// empty slots, then end-of-options.
pub(crate) fn record_route(n: usize) -> Vec<u8> {
    assert!((4..=40).contains(&n) && n.is_multiple_of(4));
    let mut o = vec![7, (n - 1) as u8, 4];
    o.resize(n - 1, 0);
    o.push(0);
    o
}

/// SYN options as Linux sends them: MSS, SACK permitted, timestamps,
/// window scale (20 bytes).
pub(crate) fn syn_options() -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend(0x0102_0304u32.to_be_bytes());
    o.extend(0u32.to_be_bytes());
    o.extend([1, 3, 3, 7]);
    o
}

/// Both the fixed-up frame of `p` with a wrong checksum at `off` and the
/// frame that must leave, whose checksum stays wrong by the same amount.
pub(crate) fn with_bad_csum(
    mut input: Vec<u8>,
    mut want: Vec<u8>,
    off: usize,
) -> (Vec<u8>, Vec<u8>) {
    let good = u16::from_be_bytes([input[off], input[off + 1]]);
    let bad = good ^ 0x0f0f;
    input[off..off + 2].copy_from_slice(&bad.to_be_bytes());
    let out_good = u16::from_be_bytes([want[off], want[off + 1]]);
    let out_bad = pkt::keep_csum_error(out_good, good, bad);
    want[off..off + 2].copy_from_slice(&out_bad.to_be_bytes());
    (input, want)
}
