//! A flood of refused first fragments must not break the fragmented
//! datagrams berth lets through (`ebpf/src/frag.rs`, `frag6.rs`): the
//! client sends a 3000-byte UDP datagram, fragment by fragment, to a
//! published port of a task with security groups that admit the client;
//! between its first fragment and the rest, a flooder on the same LAN sends
//! more refused first fragments (spoofed sources the groups do not admit,
//! each with another IP id) than berth's fragment tables hold. The datagram
//! still reaches the container whole and its answer comes back whole.
//! Before, one table held refusals and allowed datagrams alike, the flood
//! evicted the datagram's entries, and its later fragments went to the
//! host untranslated.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    thread,
    time::Duration,
};

use super::fragments::letters;
use berth_integration::{
    any, any6,
    pkt::{self, Ipv6Packet, Packet},
    rig::REQUEST_TIMEOUT as T,
    traffic::{recv_datagram, udp_socket_in},
    Bpffs, Daemon, DaemonOptions, Mode, NetNs, Rig, Topology,
};

/// Twice as many refused first fragments as the daemon's fragment tables
/// hold (allowed or refused) at its default `--max-flows` and
/// `--max-flows6`.
fn flood_len() -> u32 {
    let allowed = berth_maps::frags_capacity(berth_maps::DEFAULT_MAX_FLOWS)
        .max(berth_maps::frags_capacity(berth_maps::DEFAULT_MAX_FLOWS6));
    let refused = berth_maps::frags_deny_capacity(berth_maps::DEFAULT_MAX_FLOWS).max(
        berth_maps::frags_deny_capacity(berth_maps::DEFAULT_MAX_FLOWS6),
    );
    2 * allowed.max(refused)
}

/// Sends complete IP packets (headers included) to `dst` from the calling
/// thread's namespace, through a raw socket (`IPPROTO_RAW`: the kernel
/// sends each as it is, fragment bits and all, filling in only IPv4's
/// header checksum). Paced, so the receiving veth's backlog keeps up.
///
/// The thread runs on CPU 0 only, and with it the uplink's programs (a
/// veth hands a frame to its peer on the sending CPU): an LRU map keeps a
/// CPU's newest entries on that CPU's own list until it needs room, so a
/// flood from one CPU could miss an entry another CPU wrote, and the test
/// would pass by luck. A real flood comes in on every CPU.
fn send_raw(packets: &[Vec<u8>], dst: IpAddr) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it; sched_setaffinity reads it (0: the calling thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(dst, 0)),
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )?;
    let to = socket2::SockAddr::from(SocketAddr::new(dst, 0));
    for (i, p) in packets.iter().enumerate() {
        socket.send_to(p, &to)?;
        if i % 128 == 127 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// IP packets (no Ethernet header) from frames.
fn ip_of(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    frames
        .into_iter()
        .map(|f| f[pkt::ETH_LEN..].to_vec())
        .collect()
}

/// One family's datagram and flood: the client's datagram from
/// `client_ip:port` to the published `target` in fragments, and the
/// flood's first fragments (sources the groups refuse).
struct Flood {
    datagram: Vec<Vec<u8>>,
    flood: Vec<Vec<u8>>,
}

fn flood4(client_ip: Ipv4Addr, port: u16, target: SocketAddr, payload: &[u8]) -> Flood {
    let SocketAddr::V4(t) = target else {
        unreachable!()
    };
    let mut p = Packet::udp(client_ip, port, *t.ip(), t.port());
    p.payload = payload.to_vec();
    p.ip_id = 0x4242;
    p.frag = 0;
    let len = 8 + payload.len();
    let datagram = (0..len)
        .step_by(1480)
        .map(|off| pkt::fragment(&p, off, 1480, off + 1480 < len))
        .collect();
    let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
    let flood = (0..flood_len())
        .map(|i| {
            let src = Ipv4Addr::from(base + i);
            let mut q = Packet::udp(src, 1024 + (i % 60000) as u16, *t.ip(), t.port());
            q.payload = payload.to_vec();
            q.ip_id = 0x5000u16.wrapping_add(i as u16);
            q.frag = 0;
            pkt::fragment(&q, 0, 1480, true)
        })
        .collect();
    Flood {
        datagram: ip_of(datagram),
        flood: ip_of(flood),
    }
}

fn flood6(client_ip: Ipv6Addr, port: u16, target: SocketAddr, payload: &[u8]) -> Flood {
    let SocketAddr::V6(t) = target else {
        unreachable!()
    };
    let whole = |src: Ipv6Addr, sport: u16| {
        let mut p = Ipv6Packet::new(pkt::UDP, t.port());
        (p.src, p.dst, p.sport, p.payload) = (src, *t.ip(), sport, payload.to_vec());
        p.frame()
    };
    let datagram = pkt::fragments6(&whole(client_ip, port), &[], 0x4242_4242, 1232);
    let flood = (0..flood_len())
        .map(|i| {
            let mut a = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0).octets();
            a[12..].copy_from_slice(&i.to_be_bytes());
            let frags = pkt::fragments6(
                &whole(a.into(), 1024 + (i % 60000) as u16),
                &[],
                0x5000_0000 + i,
                1232,
            );
            frags.into_iter().next().unwrap()
        })
        .collect();
    Flood {
        datagram: ip_of(datagram),
        flood: ip_of(flood),
    }
}

/// Sends the datagram's first fragment, the flood, then its later
/// fragments, from `client`, to `target`; `sock` (bound to the datagram's
/// source port) gets the answer: the container's echo of what it received,
/// prefixed with the peer it saw.
fn datagram_through_a_flood(
    rig: &Rig,
    client: &NetNs,
    sock: &UdpSocket,
    target: SocketAddr,
    f: Flood,
) -> String {
    let dst = target.ip();
    let refused = rig.counter("policy_denied_ingress");
    let (first, later) = f.datagram.split_at(1);
    let (first, later) = (first.to_vec(), later.to_vec());
    client
        .run(move || send_raw(&first, dst))
        .expect("send the first fragment");
    let n = f.flood.len() as u64;
    let flood = f.flood;
    client
        .run(move || send_raw(&flood, dst))
        .expect("send the flood");
    // Every refused first fragment was seen and refused before the rest
    // of the datagram comes.
    let mut seen = rig.counter("policy_denied_ingress") - refused;
    for _ in 0..50 {
        if seen >= n {
            break;
        }
        thread::sleep(Duration::from_millis(20));
        seen = rig.counter("policy_denied_ingress") - refused;
    }
    assert_eq!(seen, n, "the flood's first fragments refused at the uplink");
    let translated = rig.counter("frag_xlate");
    client
        .run(move || send_raw(&later, dst))
        .expect("send the later fragments");
    let (answer, from) = recv_datagram(sock).unwrap_or_else(|| {
        panic!(
            "no answer to the datagram sent through the flood\n{}",
            rig.berth(&["stats"])
        )
    });
    assert_eq!(from, target, "the answer comes from the published port");
    assert!(
        rig.counter("frag_xlate") > translated,
        "its later fragments were translated at the uplink"
    );
    String::from_utf8(answer).expect("an echo of letters")
}

/// The dns task (C1's UDP 53 on host port 5353) with a group admitting
/// only the client (`client_cidr`), which also refuses the flood's sources.
fn dns_with_groups(rig: &Rig, map: &str, client_cidr: &str) -> berth_integration::UdpEchoServer {
    let echo = if map.contains("--ip6") {
        rig.serve_udp_echo6(&rig.topo.container.ns, 53)
    } else {
        rig.serve_udp_echo(&rig.topo.container.ns, 53)
    };
    rig.berth_words(map);
    rig.berth(&["sg", "create", "dns"]);
    rig.berth_words(&format!(
        "sg rule add dns --ingress --proto udp --port 53 --cidr {client_cidr}"
    ));
    rig.berth(&["sg", "attach", "dns", "--task", "dns"]);
    echo
}

fn ipv4_datagram_arrives_whole_through_a_flood(mode: Mode) {
    let rig = Rig::builder().mode(mode).wait_for_ports().start();
    let _echo = dns_with_groups(
        &rig,
        "map add --task dns --ip 172.17.0.2 -p 5353:53/udp",
        "192.0.2.2/32",
    );
    let client = &rig.topo.client;
    let sock = udp_socket_in(&client.ns, any(0), T);
    let port = sock.local_addr().unwrap().port();
    let target = rig.topo.host.addr(5353);
    let payload = letters(3000);
    let f = flood4(client.ip, port, target, payload.as_bytes());
    assert_eq!(f.datagram.len(), 3);
    let answer = datagram_through_a_flood(&rig, &client.ns, &sock, target, f);
    assert_eq!(
        answer,
        format!("{}:{port} {payload}", client.ip),
        "the container got the whole datagram from the client"
    );
}

#[test]
fn an_ipv4_datagram_sent_through_a_flood_of_refused_first_fragments_arrives_whole_tc() {
    ipv4_datagram_arrives_whole_through_a_flood(Mode::Default);
}

#[test]
fn an_ipv4_datagram_sent_through_a_flood_of_refused_first_fragments_arrives_whole_xdp() {
    ipv4_datagram_arrives_whole_through_a_flood(Mode::Xdp);
}

#[test]
fn an_ipv6_datagram_sent_through_a_flood_of_refused_first_fragments_arrives_whole() {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    let _echo = dns_with_groups(
        &rig,
        "map add --task dns --ip 172.17.0.2 --ip6 fd00:17::2 -p 5353:53/udp",
        "2001:db8::2/128",
    );
    let client = &rig.topo.client;
    let client6 = client.ip6.expect("a dual-stack client");
    let sock = udp_socket_in(&client.ns, any6(0), T);
    let port = sock.local_addr().unwrap().port();
    let target = rig.topo.host.addr6(5353);
    let payload = letters(3000);
    let f = flood6(client6, port, target, payload.as_bytes());
    assert_eq!(f.datagram.len(), 3);
    let answer = datagram_through_a_flood(&rig, &client.ns, &sock, target, f);
    assert_eq!(
        answer,
        format!("[{client6}]:{port} {payload}"),
        "the container got the whole datagram from the client"
    );
}

/// (capacity of `BERTH_FRAGS`, `BERTH_FRAGS_DENY`, `BERTH_FRAGS6`,
/// `BERTH_FRAGS6_DENY`), as `berth status` reads them from the kernel.
fn frag_capacities(d: &Daemon) -> [u64; 4] {
    let s: serde_json::Value =
        serde_json::from_str(&d.cli_ok(["status", "--json"]).expect("status")).unwrap();
    let maps = s["datapath"]["maps"].as_array().unwrap();
    [
        berth_maps::FRAGS_MAP,
        berth_maps::FRAGS_DENY_MAP,
        berth_maps::FRAGS6_MAP,
        berth_maps::FRAGS6_DENY_MAP,
    ]
    .map(|n| {
        let m = maps.iter().find(|m| m["name"] == n).unwrap();
        m["capacity"].as_u64().unwrap()
    })
}

fn migrated(d: &Daemon) -> Vec<String> {
    let s: serde_json::Value =
        serde_json::from_str(&d.cli_ok(["status", "--json"]).expect("status")).unwrap();
    s["datapath"]["migrated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The fragment tables follow `--max-flows` (IPv4) and `--max-flows6`
/// (IPv6): a sixteenth of the flows each for allowed datagrams in flight
/// (at least 1024) and a sixty-fourth for refusals (at least 64). Pins of
/// the previous build (1024-slot `BERTH_FRAGS` and `BERTH_FRAGS6`, no
/// refusal tables) are resized at start and the refusal tables made; so
/// are they when the flags change across a restart.
#[test]
fn the_fragment_tables_follow_max_flows_and_older_pins_are_resized() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let small = ["--max-flows", "1024", "--max-flows6", "1024"];
    let mut d = Daemon::start_with(
        &topo.host.ns,
        &bpffs,
        DaemonOptions {
            extra_args: small.iter().map(ToString::to_string).collect(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(frag_capacities(&d), [1024, 64, 1024, 64]);
    d.stop().unwrap();
    // What the previous build left: the same allowed tables, no refusal
    // tables.
    for name in [berth_maps::FRAGS_DENY_MAP, berth_maps::FRAGS6_DENY_MAP] {
        std::fs::remove_file(bpffs.path().join("berth").join(name)).unwrap();
    }
    d.set_extra_args(&["--max-flows", "65536", "--max-flows6", "32768"]);
    d.start_again().unwrap();
    assert_eq!(frag_capacities(&d), [4096, 1024, 2048, 512]);
    let m = migrated(&d);
    for (name, to) in [
        (berth_maps::FRAGS_MAP, 4096),
        (berth_maps::FRAGS6_MAP, 2048),
    ] {
        assert!(
            m.iter()
                .any(|l| l.starts_with(&format!("{name}: capacity 1024 -> {to}"))),
            "{name}: {m:?}"
        );
    }
    d.stop().unwrap();
    d.set_extra_args(&[]);
    d.start_again().unwrap();
    assert_eq!(frag_capacities(&d), [1024, 256, 1024, 256]);
}
