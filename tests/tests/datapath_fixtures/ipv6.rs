//! IPv6 at an uplink (issue 15): the parser walks the extension headers to
//! the TCP/UDP ports. The IPv4 programs do not parse IPv6: `berth_ingress`
//! and `berth_deliver` (beside XDP) tail-call `berth_ingress6` for it, and
//! `berth_xdp` passes it on to `berth_deliver` untouched. What the parser
//! found is seen through what NAT66 does with it, the container having
//! policy and no rule (so no new IPv6 flow is let in, see `nat66.rs` for
//! translation): a frame it parsed as TCP/UDP to a published
//! IPv6 port is refused (`policy_denied_ingress`), or, a first fragment,
//! passes counted `ipv6_untranslated`; a frame it refused, or one to a port
//! nothing publishes, passes byte-identical and counts neither.
use std::net::Ipv6Addr;

use aya::maps::{HashMap, MapData};
use berth::{
    datapath::bpf_keys::{backend6, service_key6},
    model::Protocol,
};
use berth_integration::{
    pkt::{self, Ipv6Packet, V6Ext, ETH_LEN, HOST6},
    testrun::*,
};
use berth_maps::{Backend6, Counter, ServiceKey6, SERVICES6_MAP};

use crate::table::publish_defaults;

pub(crate) const C1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// Published on `[::]` (TCP) and on `HOST6` only (UDP).
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 8053;
/// The IPv6 header's next-header byte.
const NEXT_OFF: usize = ETH_LEN + 6;
const PAYLOAD_LEN_OFF: usize = ETH_LEN + 4;
const L3: usize = ETH_LEN + 40;

/// Published as the daemon's adapter encodes it (`bpf_keys`).
pub(crate) fn publish6(env: &mut Env, host: Ipv6Addr, port: u16, proto: Protocol, ctr_port: u16) {
    let mut m: HashMap<&mut MapData, ServiceKey6, Backend6> =
        HashMap::try_from(env.ebpf.map_mut(SERVICES6_MAP).unwrap()).unwrap();
    let key = service_key6(host, port, proto);
    m.insert(key, backend6(C1_6, ctr_port, 0), 0).unwrap();
}

fn tcp() -> Ipv6Packet {
    Ipv6Packet::new(pkt::TCP, TCP_PORT)
}

fn udp() -> Ipv6Packet {
    let mut p = Ipv6Packet::new(pkt::UDP, UDP_PORT);
    p.payload = b"ping".to_vec();
    p
}

fn first_frag() -> V6Ext {
    V6Ext::Fragment {
        offset: 0,
        more: true,
    }
}

/// (name, frame, whether the parser must find a published TCP/UDP port).
fn cases() -> Vec<(String, Vec<u8>, bool)> {
    use V6Ext::*;
    let mut c: Vec<(String, Vec<u8>, bool)> = Vec::new();
    let mut add = |name: &str, f: Vec<u8>, hit: bool| c.push((name.to_string(), f, hit));

    add("tcp syn to a port published on [::]", tcp().frame(), true);
    add(
        "udp to a port published on its address",
        udp().frame(),
        true,
    );
    let mut p = udp();
    p.dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77);
    add("udp to the port on another address", p.frame(), false);
    let mut p = tcp();
    p.dport = 9999;
    add("tcp to a port nothing publishes", p.frame(), false);
    let mut p = tcp();
    p.proto = pkt::UDP;
    add("udp to a port published for tcp only", p.frame(), false);
    let mut f = tcp().frame();
    f.extend([0; 6]);
    add("tcp in a padded ethernet frame", f, true);

    // Extension-header chains.
    for (name, ext) in [
        ("hop-by-hop", vec![HopByHop]),
        ("routing", vec![Routing]),
        ("destination options", vec![DestOpts]),
        (
            "hop-by-hop, routing, destination options",
            vec![HopByHop, Routing, DestOpts],
        ),
        (
            "six destination options (the walk's bound)",
            vec![DestOpts; 6],
        ),
    ] {
        add(
            &format!("{name} then tcp"),
            tcp().with_ext(&ext).frame(),
            true,
        );
        add(
            &format!("{name} then udp"),
            udp().with_ext(&ext).frame(),
            true,
        );
    }
    add(
        "seven destination options (past the bound)",
        tcp().with_ext(&[DestOpts; 7]).frame(),
        false,
    );
    add(
        "hop-by-hop after another header",
        tcp().with_ext(&[DestOpts, HopByHop]).frame(),
        false,
    );

    // Fragments.
    add(
        "first fragment of tcp",
        tcp().with_ext(&[first_frag()]).frame(),
        true,
    );
    let mut p = udp().with_ext(&[HopByHop, first_frag()]);
    p.payload = vec![7; 64];
    let mut f = p.frame();
    // The fragment carries only the header and 8 payload bytes; the UDP
    // length still names the whole datagram.
    f.truncate(L3 + 8 + 8 + 8 + 8);
    let plen = (f.len() - L3) as u16;
    f[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&plen.to_be_bytes());
    add("first fragment of a longer udp datagram", f, true);
    let later = Fragment {
        offset: 100,
        more: false,
    };
    // Of another datagram than the first fragments above (another
    // identification): a later fragment of a datagram whose first was
    // refused is dropped with it (`frag_refused`), one whose first nobody
    // saw passes as it is.
    let other_datagram = |mut f: Vec<u8>| {
        f[L3 + 4..L3 + 8].copy_from_slice(&0x0bad_f00du32.to_be_bytes());
        f
    };
    add(
        "later fragment of tcp",
        other_datagram(tcp().with_ext(&[later]).frame()),
        false,
    );
    add(
        "later fragment of udp",
        other_datagram(udp().with_ext(&[later]).frame()),
        false,
    );
    let atomic = Fragment {
        offset: 0,
        more: false,
    };
    add(
        "atomic fragment of udp",
        udp().with_ext(&[atomic]).frame(),
        true,
    );
    add(
        "two fragment headers",
        udp().with_ext(&[first_frag(), first_frag()]).frame(),
        false,
    );
    let mut f = tcp().with_ext(&[first_frag()]).frame();
    f.truncate(L3 + 8 + 12);
    f[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&20u16.to_be_bytes());
    add("first fragment cut inside the tcp header", f, false);

    // Headers that end the walk: AH, ESP, no next header.
    for (name, code) in [("ah", 51u8), ("esp", 50), ("no next header", 59)] {
        let mut f = tcp().with_ext(&[DestOpts]).frame();
        f[NEXT_OFF] = code;
        add(&format!("{name} before tcp"), f, false);
    }

    // ICMPv6, neighbour discovery above all.
    for (name, t) in [
        ("neighbour solicitation", 135u8),
        ("neighbour advertisement", 136),
        ("router advertisement", 134),
        ("echo request", 128),
        ("packet too big", 2),
    ] {
        add(
            &format!("icmpv6 {name}"),
            Ipv6Packet::icmpv6(t, 0).frame(),
            false,
        );
    }

    // Truncations at every header boundary of a chain, and inside each
    // (from the Ethernet header on: a test run refuses shorter frames):
    // with the payload length the whole packet had (past the frame), and
    // with one that agrees with the cut (each header's own bounds check).
    let full = tcp().with_ext(&[HopByHop, Routing, first_frag()]).frame();
    let cuts = [
        ETH_LEN,
        20,
        L3 - 1,
        L3,
        L3 + 1,
        L3 + 4,
        L3 + 8,
        L3 + 9,
        L3 + 20,
        L3 + 32,
        L3 + 33,
        L3 + 36,
        L3 + 40,
        L3 + 41,
        L3 + 50,
        full.len() - 1,
    ];
    for cut in cuts {
        add(
            &format!("chain cut at {cut} of {} bytes", full.len()),
            full[..cut].to_vec(),
            false,
        );
        if cut > L3 {
            let mut f = full[..cut].to_vec();
            let plen = (cut - L3) as u16;
            f[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&plen.to_be_bytes());
            add(
                &format!("chain cut at {cut}, payload length agreeing"),
                f,
                false,
            );
        }
    }
    add("the whole chain", full, true);

    // Inconsistent fixed headers.
    let mut f = tcp().frame();
    f[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&0u16.to_be_bytes());
    add("payload length 0 (jumbogram)", f, false);
    let mut f = tcp().frame();
    f[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&21u16.to_be_bytes());
    add("payload length past the frame", f, false);
    let mut f = tcp().with_ext(&[DestOpts]).frame();
    f[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&16u16.to_be_bytes());
    add("payload length shorter than the tcp header", f, false);
    let mut f = tcp().frame();
    f[ETH_LEN] = 0x40;
    add("version 4 under the ipv6 ethertype", f, false);
    let mut p = tcp();
    p.dst = Ipv6Addr::UNSPECIFIED;
    add("destination ::", p.frame(), false);
    let mut f = tcp().frame();
    f[L3 + 12] = 0x40;
    add("tcp data offset 4", f, false);
    let mut f = udp().frame();
    f[L3 + 4..L3 + 6].copy_from_slice(&7u16.to_be_bytes());
    add("udp length 7", f, false);
    let mut f = udp().frame();
    f[L3 + 4..L3 + 6].copy_from_slice(&13u16.to_be_bytes());
    add("udp length past the payload", f, false);
    add(
        "vlan-tagged tcp",
        pkt::vlan_tagged(&tcp().frame(), 10),
        false,
    );
    c
}

#[test]
fn ipv6_parse_table_passes_everything_and_finds_published_ports() {
    in_fixture_ns(|env| {
        publish_defaults(env);
        publish6(env, Ipv6Addr::UNSPECIFIED, TCP_PORT, Protocol::Tcp, 80);
        publish6(env, HOST6, UDP_PORT, Protocol::Udp, 53);
        let mut failures = Vec::new();
        let cases = cases();
        assert!(cases.len() >= 60, "only {} cases", cases.len());
        // The wildcard serves the host's own addresses only; the container
        // has policy and no rule, so no new flow is let in.
        env.host_addr6(HOST6);
        env.set_endpoint6(C1_6, 7, true);
        for (name, frame, hit) in &cases {
            // The kernel's skb test run refuses IPv6 frames shorter than
            // the fixed header (EINVAL): those reach XDP only.
            let tc_progs: &[&str] = if frame.len() < L3 {
                &[]
            } else {
                &["berth_ingress", "berth_deliver"]
            };
            for &prog in tc_progs {
                let found = |env: &Env| {
                    env.counter(Counter::Ipv6Untranslated)
                        + env.counter(Counter::PolicyDeniedIngress)
                };
                let before = found(env);
                let untranslated = env.counter(Counter::Ipv6Untranslated);
                let v = match env.try_tc(prog, frame) {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push(format!("{prog}: {name}: test run refused: {e:?}"));
                        continue;
                    }
                };
                let counted = found(env) - before;
                // Refused (dropped), or passed as it was (a first fragment).
                let passed = env.counter(Counter::Ipv6Untranslated) > untranslated;
                let want = if *hit && !passed { 2 } else { 0 };
                if v.code != want || v.frame != *frame {
                    failures.push(format!(
                        "{prog}: {name}: verdict {} (want {want}) or frame changed",
                        v.code
                    ));
                }
                if counted != u64::from(*hit) {
                    failures.push(format!(
                        "{prog}: {name}: counted {counted}, want {}",
                        u8::from(*hit)
                    ));
                }
            }
            // XDP leaves IPv6 to the TC program beside it: passed as it
            // is, nothing parsed, nothing counted.
            let before = env.counter(Counter::Ipv6Untranslated);
            match env.try_xdp("berth_xdp", frame) {
                Ok(v) if v.code == 2 && v.frame == *frame => {}
                Ok(v) => failures.push(format!(
                    "berth_xdp: {name}: verdict {} or frame changed",
                    v.code
                )),
                Err(e) => failures.push(format!("berth_xdp: {name}: test run refused: {e:?}")),
            }
            if env.counter(Counter::Ipv6Untranslated) != before {
                failures.push(format!("berth_xdp: {name}: counted"));
            }
        }
        // Every frame went to the IPv6 program: no slot was found empty.
        assert_eq!(env.counter(Counter::Ipv6NoProgram), 0);
        // IPv4 is untouched by any of it: nothing else moved.
        assert_eq!(env.counter(Counter::IngressDnat), 0);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}
