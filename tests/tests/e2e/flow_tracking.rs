//! Flow tracking end to end (issue 9 items 5 and 6): a Docker-like host in
//! network namespaces, the real `berth daemon` and CLI, real sockets.
//!
//! - One client port to two host ports of one container port (UDP and
//!   TCP): each flow gets its own reply tuple, each reply comes from the
//!   host port it answers.
//! - A spoofed RST or FIN from the LAN with the flow's 4-tuple but a
//!   sequence number outside the window: forwarded, counted, and the flow
//!   not marked closing; an in-window RST marks it.
//! - A bounded flood of spoofed SYNs (frames built with `pkt`, injected
//!   through a packet socket in the client's namespace) against a daemon
//!   with small flow tables: afterwards, and meanwhile on another task, new
//!   connections work at once and an established one keeps working.
//! - The same for the security groups' tracking table: a task with groups
//!   floods SYNs at another one's ports over the bridge.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    flows::nat_tcp_flow,
    pkt::{self, Packet},
    rawsock::{ipv4_tuple, RawSocket},
    rig::REQUEST_TIMEOUT as T,
    tcp_connect, NetNs, Rig,
};
use berth_maps::{NAT_F_CLOSING, NAT_F_ESTABLISHED};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

fn host_addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        berth_integration::topology::addr::HOST_IP,
        port,
    ))
}

#[test]
fn udp_one_client_port_to_two_host_ports_gets_each_reply_from_the_port_it_asked() {
    let rig = Rig::start();
    let _echo = rig.serve_udp_echo(&rig.topo.container.ns, 53);
    rig.map_add("dns", "172.17.0.2", &["5353:53/udp", "5354:53/udp"]);
    one_client_port_to_two_host_ports(&rig, "0.0.0.0:0", host_addr, |p| {
        SocketAddr::V4(SocketAddrV4::new(rig.topo.client.ip, p))
    });
}

/// From one client socket (bound to `bind`) to host ports 5353, 5354,
/// 5353, 5354 of one container's UDP echo: each reply comes from the
/// port asked (`host(port)`); the container sees the client's own
/// address (`client(port)`) for the first flow and one other client port,
/// the same each time, for the clashing second.
pub(super) fn one_client_port_to_two_host_ports(
    rig: &Rig,
    bind: &'static str,
    host: impl Fn(u16) -> SocketAddr,
    client: impl Fn(u16) -> SocketAddr,
) {
    let sock = rig
        .topo
        .client
        .ns
        .run(move || UdpSocket::bind(bind).expect("bind"));
    sock.set_read_timeout(Some(T)).unwrap();
    let local = sock.local_addr().unwrap().port();
    let mut seen_by_container = Vec::new();
    for port in [5353, 5354, 5353, 5354] {
        sock.send_to(b"q", host(port)).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no reply through {port}: {e}"));
        assert_eq!(from, host(port), "the reply comes from the port asked");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (peer, payload) = text.split_once(' ').expect("echo: peer payload");
        assert_eq!(payload, "q");
        seen_by_container.push(peer.parse::<SocketAddr>().unwrap());
    }
    // The container sees the client's address; the second flow under
    // another client port, the same one each time.
    let client = client(local);
    assert_eq!(seen_by_container[0], client);
    assert_eq!(seen_by_container[2], client);
    let remapped = seen_by_container[1];
    assert_eq!(remapped.ip(), client.ip());
    assert_ne!(remapped.port(), local, "the clashing flow got another port");
    assert_eq!(seen_by_container[3], remapped);
    assert!(rig.counter("nat_port_remap") >= 1);
}

/// A TCP socket bound to `local` (`SO_REUSEADDR`, so two sockets may share
/// it towards different destinations), connected to `to`.
pub(super) fn connect_from(local: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    s.connect(&to.into())?;
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    Ok(s)
}

/// A line echo server: answers each line with "<peer> <line>".
fn start_line_echo(ns: &NetNs, port: u16) {
    start_line_echo_on(ns, "0.0.0.0", port);
}

/// [`start_line_echo`] on `addr` (`"::"` for IPv6 tests).
pub(super) fn start_line_echo_on(ns: &NetNs, addr: &'static str, port: u16) {
    let l = ns.run(move || TcpListener::bind((addr, port)).expect("bind echo server"));
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            thread::spawn(move || {
                let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if c.write_all(format!("{peer} {line}").as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// One request/answer on an open connection; the peer the server saw.
pub(super) fn ask(c: &mut TcpStream, what: &str) -> SocketAddr {
    c.write_all(format!("{what}\n").as_bytes()).expect("send");
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut line)
        .expect("answer");
    let (peer, rest) = line.trim_end().split_once(' ').expect("peer line");
    assert_eq!(rest, what);
    peer.parse().unwrap()
}

#[test]
fn tcp_one_client_port_to_two_host_ports_connects_both() {
    let rig = Rig::start();
    start_line_echo(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8085:80", "8086:80"]);
    let local: SocketAddr = format!("{}:45000", rig.topo.client.ip).parse().unwrap();
    let (mut a, mut b) = rig.topo.client.ns.run(move || {
        let a = connect_from(local, host_addr(8085)).expect("connect to 8085");
        let b = connect_from(local, host_addr(8086)).expect("connect to 8086 from the same port");
        (a, b)
    });
    assert_eq!(a.peer_addr().unwrap(), host_addr(8085));
    assert_eq!(b.peer_addr().unwrap(), host_addr(8086));
    let pa = ask(&mut a, "to 8085");
    let pb = ask(&mut b, "to 8086");
    assert_eq!(pa, local, "the first flow keeps the client's port");
    assert_eq!(pb.ip(), local.ip());
    assert_ne!(pb.port(), 45000, "the second got another client port");
    // Both stay usable, interleaved.
    assert_eq!(ask(&mut a, "again a"), pa);
    assert_eq!(ask(&mut b, "again b"), pb);
    assert!(rig.counter("nat_port_remap") >= 1);
}

/// Sends `n` spoofed SYNs (sources spread over 198.18.0.0/15, random
/// ports) to host:`port` through a packet socket on the client's eth0.
fn syn_flood(rig: &Rig, port: u16, n: u32) -> Duration {
    let host_mac = rig.topo.host.uplink_link().expect("uplink").mac;
    let client_mac = rig.topo.client.link().expect("client link").mac;
    let sock = rig.topo.client.ns.run(|| {
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert_ne!(ifindex, 0);
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        );
        fd
    });
    let start = Instant::now();
    let mut x: u32 = 0x9e37_79b9;
    let mut sent = 0;
    while sent < n {
        // xorshift: cheap, reproducible sources and ports.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let src = Ipv4Addr::new(198, 18 + (x >> 31) as u8, (x >> 8) as u8, x as u8);
        let mut p = Packet::tcp(
            src,
            1024 + (x >> 16) as u16 % 60000,
            berth_integration::topology::addr::HOST_IP,
            port,
        );
        p.eth_dst = host_mac;
        p.eth_src = client_mac;
        p.tcp_seq = x;
        let f = p.frame();
        let rc = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            // The device queue is full: let it drain.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                thread::sleep(Duration::from_micros(200));
                continue;
            }
            panic!("send: {e}");
        }
        sent += 1;
    }
    start.elapsed()
}

/// 300 000 spoofed SYNs against task A's port, with flow tables far
/// smaller than the flood (as a host's would be under a larger one).
/// Meanwhile and afterwards, new connections to A and to task B work and
/// a connection established before the flood keeps working.
#[test]
fn spoofed_syn_flood_neither_blocks_new_flows_nor_breaks_established_ones() {
    let rig = Rig::builder()
        .flags(&["--nat-max", "4096", "--ct-embryonic-max", "2048"])
        .start();
    start_line_echo(&rig.topo.container.ns, 80);
    start_line_echo(&rig.topo.container2.ns, 80);
    rig.map_add("a", "172.17.0.2", &["8085:80"]);
    rig.map_add("b", "172.17.0.3", &["8087:80"]);
    let mut before = rig
        .topo
        .client
        .ns
        .run(|| connect_from("0.0.0.0:0".parse().unwrap(), host_addr(8085)).expect("connect"));
    let peer = ask(&mut before, "before the flood");

    // Task B takes new connections while A is flooded.
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let ns = &rig.topo.client2.ns;
        let fails = std::sync::Mutex::new(Vec::new());
        thread::scope(|sc| {
            sc.spawn(|| {
                let mut ok = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = ns.run(|| connect_from("0.0.0.0:0".parse().unwrap(), host_addr(8087)));
                    match r {
                        Ok(mut c) => {
                            ask(&mut c, "during the flood");
                            ok += 1;
                        }
                        Err(e) => fails.lock().unwrap().push(e.to_string()),
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                assert!(ok > 0, "no connection to task b during the flood");
            });
            let took = syn_flood(&rig, 8085, 300_000);
            stop.store(true, Ordering::Relaxed);
            println!("flood of 300000 SYNs took {took:?}");
        });
        fails.into_inner().unwrap()
    };
    assert!(
        during.is_empty(),
        "connections to task b failed during the flood: {during:?}"
    );

    // At once afterwards: a new connection to each task, and the old one.
    let started = Instant::now();
    for (port, what) in [(8085, "a"), (8087, "b")] {
        let mut c = rig
            .topo
            .client
            .ns
            .run(move || connect_from("0.0.0.0:0".parse().unwrap(), host_addr(port)))
            .unwrap_or_else(|e| panic!("new connection to task {what} after the flood: {e}"));
        ask(&mut c, "after the flood");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        ask(&mut before, "after the flood"),
        peer,
        "established flow kept"
    );
    assert_eq!(
        rig.counter("nat_table_full"),
        0,
        "the flood established nothing"
    );
}

/// The sequence number `from` will send next on the TCP connection
/// `from` -> `to`, from the segments `sock` captured (the last one's end:
/// sequence number plus payload, SYN and FIN).
fn next_seq(sock: &RawSocket, from: SocketAddrV4, to: SocketAddrV4) -> u32 {
    let segs = sock
        .collect(Duration::from_millis(300), |f| {
            ipv4_tuple(f) == Some((pkt::TCP, *from.ip(), *to.ip(), from.port(), to.port()))
        })
        .expect("capture");
    let f = segs
        .last()
        .expect("a segment of the connection was captured");
    let ip = &f[pkt::ETH_LEN..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let tcp = &ip[ihl..];
    let doff = (tcp[12] >> 4) as usize * 4;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let flags = tcp[13];
    let ctl = u32::from(flags & pkt::SYN != 0) + u32::from(flags & pkt::FIN != 0);
    seq.wrapping_add((tot - ihl - doff) as u32)
        .wrapping_add(ctl)
}

/// A RST or FIN from the LAN with the flow's addresses and ports, as an
/// attacker who guessed the 4-tuple would send it.
fn forged_segment(rig: &Rig, client: SocketAddrV4, port: u16, flags: u8, seq: u32) -> Vec<u8> {
    let mut p = Packet::tcp(
        *client.ip(),
        client.port(),
        berth_integration::topology::addr::HOST_IP,
        port,
    );
    p.eth_dst = rig.topo.host.uplink_link().expect("uplink").mac;
    p.eth_src = rig.topo.client.link().expect("client link").mac;
    (p.tcp_flags, p.tcp_seq, p.tcp_ack) = (flags, seq, 0);
    p.frame()
}

/// Waits until `cond` holds (up to 2 s), so counters read after a frame
/// was injected see it.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Issue 9 item 7: a RST or FIN with a guessed 4-tuple but a sequence
/// number outside the window must not cut the flow's tracking short (to
/// 60 s); one within it does.
#[test]
fn a_spoofed_rst_or_fin_outside_the_window_does_not_mark_the_flow_closing() {
    let rig = Rig::start();
    start_line_echo(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8085:80"]);
    let host = SocketAddrV4::new(berth_integration::topology::addr::HOST_IP, 8085);
    let ctr = SocketAddrV4::new(berth_integration::topology::addr::CONTAINER_IP, 80);
    let lan = RawSocket::open_in(&rig.topo.client.ns, "eth0").expect("packet socket");
    let mut conn = rig
        .topo
        .client
        .ns
        .run(|| connect_from("0.0.0.0:0".parse().unwrap(), host_addr(8085)))
        .expect("connect");
    let SocketAddr::V4(client) = conn.local_addr().unwrap() else {
        unreachable!()
    };
    ask(&mut conn, "hello");
    let flags = || {
        nat_tcp_flow(rig.daemon.bpffs(), ctr, client)
            .expect("read BERTH_NAT")
            .expect("the flow is tracked")
            .flags
    };
    assert!(
        eventually(|| flags() & NAT_F_ESTABLISHED != 0),
        "established"
    );
    assert_eq!(flags() & NAT_F_CLOSING, 0);

    let oow = rig.counter("tcp_out_of_window");
    // Far outside any window the flow has seen (a quarter of the space).
    for (i, kind) in [(1, pkt::RST), (2, pkt::FIN | pkt::ACK)] {
        let nxt = next_seq(&lan, client, host);
        let forged = forged_segment(&rig, client, 8085, kind, nxt.wrapping_add(0x4000_0000));
        lan.send(&forged).expect("inject");
        assert!(
            eventually(|| rig.counter("tcp_out_of_window") == oow + i),
            "the out-of-window segment is counted ({} -> {})",
            oow,
            rig.counter("tcp_out_of_window")
        );
        assert_eq!(flags() & NAT_F_CLOSING, 0, "flags {:#x}", flags());
        ask(&mut conn, "still there");
    }

    // The same RST with the sequence number the client sends next.
    let nxt = next_seq(&lan, client, host);
    lan.send(&forged_segment(&rig, client, 8085, pkt::RST, nxt))
        .expect("inject");
    assert!(
        eventually(|| flags() & NAT_F_CLOSING != 0),
        "an in-window RST marks the flow closing"
    );
    assert_eq!(rig.counter("tcp_out_of_window"), oow + 2);
}

/// Entries in use in the pinned map `name`, from `berth status --json`.
fn map_entries(rig: &Rig, name: &str) -> u64 {
    fn find(v: &Value, name: &str) -> Option<u64> {
        match v {
            Value::Object(o) if o.get("name").and_then(Value::as_str) == Some(name) => {
                o.get("entries").and_then(Value::as_u64)
            }
            Value::Object(o) => o.values().find_map(|v| find(v, name)),
            Value::Array(a) => a.iter().find_map(|v| find(v, name)),
            _ => None,
        }
    }
    let out = rig.daemon.cli_ok(["status", "--json"]).expect("status");
    let v: Value = serde_json::from_str(&out).expect("status --json is JSON");
    find(&v, name).unwrap_or_else(|| panic!("no map {name} in {out}"))
}

/// Sends `n` SYNs from `from`'s eth0 (its own address: berth drops a
/// container's forged sources before they reach the tracking table) to
/// `to`, from and to ports spread over the whole range: what a task that
/// wants to exhaust the table does. Nobody completes a handshake.
fn syn_flood_over_the_bridge(
    from: &berth_integration::Container,
    to: &berth_integration::Container,
    n: u32,
) -> Duration {
    let raw = RawSocket::open_in(&from.ns, "eth0").expect("packet socket");
    let (src_mac, dst_mac) = (from.link().expect("link").mac, to.link().expect("link").mac);
    let start = Instant::now();
    let mut x: u32 = 0x2545_f491;
    let mut sent = 0;
    while sent < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut p = Packet::tcp(
            from.ip,
            1024 + (x >> 16) as u16 % 60000,
            to.ip,
            1024 + (x as u16) % 60000,
        );
        (p.eth_src, p.eth_dst, p.tcp_seq) = (src_mac, dst_mac, x);
        match raw.send(&p.frame()) {
            Ok(()) => sent += 1,
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::raw_os_error)
                    == Some(libc::ENOBUFS) =>
            {
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => panic!("send: {e:#}"),
        }
    }
    start.elapsed()
}

/// Issue 9 item 6 for the security groups' table (`BERTH_CT_NEW` /
/// `BERTH_CT)`: task A floods task B with SYNs over the bridge, 15 times
/// the unestablished table and 7 times the established one. Meanwhile
/// task C's new connections to B all complete; afterwards new connections
/// from A and C work at once, and C's connection opened before the flood
/// keeps working.
#[test]
fn a_syn_flood_between_tasks_with_groups_refuses_no_other_tasks_flows() {
    let rig = Rig::builder()
        .flags(&["--ct-max", "4096", "--ct-embryonic-max", "2048"])
        .start();
    let c = rig
        .topo
        .new_container("ctr3", Ipv4Addr::new(172, 17, 0, 4))
        .expect("third container");
    let (a, b) = (&rig.topo.container, &rig.topo.container2);
    start_line_echo(&b.ns, 80);
    rig.map_add("a", "172.17.0.2", &["8085:80"]);
    rig.map_add("b", "172.17.0.3", &["8086:80"]);
    rig.map_add("c", "172.17.0.4", &["8087:80"]);
    for args in [
        &["sg", "create", "mesh"][..],
        &[
            "sg",
            "rule",
            "add",
            "mesh",
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "1-65535",
            "--sg",
            "mesh",
        ],
        &["sg", "attach", "mesh", "--task", "a"],
        &["sg", "attach", "mesh", "--task", "b"],
        &["sg", "attach", "mesh", "--task", "c"],
    ] {
        rig.daemon.cli_ok(args).expect("sg");
    }
    let b_addr = b.addr(80);
    let connect_c = || {
        c.ns.run(|| connect_from("0.0.0.0:0".parse().unwrap(), b_addr))
    };
    // The daemon hooks the new port and learns its address within 250 ms.
    let mut before = None;
    for _ in 0..50 {
        if let Ok(conn) = connect_c() {
            before = Some(conn);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut before = before.expect("c reaches b before the flood");
    let peer = ask(&mut before, "before the flood");
    assert_eq!(peer.ip(), c.ip);

    let stop = AtomicBool::new(false);
    let (fails, slowest, ok, took) = thread::scope(|sc| {
        let during = sc.spawn(|| {
            let (mut fails, mut slowest, mut ok) = (Vec::new(), Duration::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match connect_c() {
                    Ok(mut conn) => {
                        ask(&mut conn, "during the flood");
                        slowest = slowest.max(t.elapsed());
                        ok += 1;
                    }
                    Err(e) => fails.push(e.to_string()),
                }
                thread::sleep(Duration::from_millis(10));
            }
            (fails, slowest, ok)
        });
        let took = syn_flood_over_the_bridge(a, b, 30_000);
        stop.store(true, Ordering::Relaxed);
        let (fails, slowest, ok) = during.join().unwrap();
        (fails, slowest, ok, took)
    });
    println!(
        "flood of 30000 SYNs took {took:?}; {ok} connections from c meanwhile, slowest {slowest:?}"
    );
    assert!(ok > 0, "no connection from c during the flood");
    assert!(fails.is_empty(), "c's connections failed: {fails:?}");
    // A dropped SYN or SYN-ACK is retransmitted after a second: anything
    // near that means one of c's packets was refused.
    assert!(
        slowest < Duration::from_millis(900),
        "a connection from c took {slowest:?}"
    );
    // An LRU map evicts in batches, so "full" is most of its capacity.
    let unestablished = map_entries(&rig, "BERTH_CT_NEW");
    println!("BERTH_CT_NEW holds {unestablished} of 2048 flows");
    assert!(
        unestablished >= 1024,
        "the flood reached the unestablished table: {unestablished}"
    );

    let started = Instant::now();
    for (who, ns) in [("c", &c.ns), ("a", &a.ns)] {
        let mut conn = ns
            .run(|| tcp_connect(b_addr, T))
            .unwrap_or_else(|e| panic!("new connection from {who} after the flood: {e}"));
        ask(&mut conn, "after the flood");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        ask(&mut before, "after the flood"),
        peer,
        "established flow kept"
    );
    assert_eq!(
        rig.counter("ct_table_full"),
        0,
        "the flood established nothing"
    );
}

/// Waits up to `secs` for `cond` (the daemon syncs host addresses every
/// 2 s).
fn within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// A wildcard mapping's address is checked when a flow opens, not on every
/// packet: when the host loses an address, the daemon ends the flows that
/// came in on it. Once the address is back, the ended flow's next segment
/// is dropped (no flow, counted) and new connections work.
#[test]
fn an_address_removed_under_an_established_flow_ends_it_and_new_flows_work_when_it_is_back() {
    let rig = Rig::start();
    start_line_echo(&rig.topo.container.ns, 80);
    rig.map_add("web", "172.17.0.2", &["8087:80"]);
    let extra = Ipv4Addr::new(192, 0, 2, 50);
    let cidr = format!("{extra}/24");
    let host = &rig.topo.host.ns;
    let uplink = rig.topo.host.uplink;
    let to = SocketAddr::from((extra, 8087));
    let connect = || {
        rig.topo
            .client
            .ns
            .run(move || tcp_connect(to, Duration::from_millis(500)))
    };
    host.ip(["addr", "add", &cidr, "dev", uplink]).unwrap();
    let mut old = None;
    assert!(
        within(10, || {
            old = connect().ok();
            old.is_some()
        }),
        "the daemon picks the new address up"
    );
    let mut old = old.unwrap();
    old.set_read_timeout(Some(T)).unwrap();
    assert_eq!(ask(&mut old, "before").ip(), rig.topo.client.ip);
    assert_eq!(map_entries(&rig, "BERTH_NAT"), 1, "one established flow");

    host.ip(["addr", "del", &cidr, "dev", uplink]).unwrap();
    assert!(
        within(10, || map_entries(&rig, "BERTH_NAT") == 0),
        "the daemon ends the flow of the address that went"
    );

    host.ip(["addr", "add", &cidr, "dev", uplink]).unwrap();
    let no_flow = rig.counter("nat_no_flow");
    let mut new = None;
    assert!(
        within(10, || {
            new = connect().ok();
            new.is_some()
        }),
        "a new connection works once the address is back"
    );
    let mut new = new.unwrap();
    new.set_read_timeout(Some(T)).unwrap();
    assert_eq!(ask(&mut new, "after").ip(), rig.topo.client.ip);
    old.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    old.write_all(b"ended?\n").unwrap();
    let mut line = String::new();
    assert!(
        BufReader::new(old.try_clone().unwrap())
            .read_line(&mut line)
            .is_err(),
        "the ended flow gets no answer: {line:?}"
    );
    assert!(
        rig.counter("nat_no_flow") > no_flow,
        "its segments are dropped as of no flow"
    );
}
