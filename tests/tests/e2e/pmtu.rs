//! Path-MTU discovery through a published port, end to end: the
//! container's link is smaller (1280) than the client's (1500); a client
//! that does path-MTU discovery (`IP_PMTUDISC_DO`, as QUIC, DNS over large
//! EDNS buffers and TCP do) learns the smaller MTU from berth's "ICMP
//! fragmentation needed" and gets through with what fits, instead of
//! losing every large packet in silence. Over IPv4 and IPv6, TC and XDP.
use std::{
    io,
    net::UdpSocket,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    any, any6,
    traffic::{recv_datagram, udp_socket_in},
    Mode, Rig,
};

/// The container's MTU in these tests (IPv6's minimum, a common VPN or
/// overlay path's size).
const SMALL_MTU: u16 = 1280;

/// A rig whose published UDP port 5353 leads to the container behind a
/// 1280-byte link (its veth, both ends, and the bridge); over IPv6 too
/// when `ipv6` (published on `[::]:5353` only).
fn small_mtu_rig(mode: Mode, ipv6: bool) -> Rig {
    let mut b = Rig::builder().mode(mode).wait_for_ports();
    if ipv6 {
        b = b.dual_stack();
    }
    let rig = b.start();
    let mtu = SMALL_MTU.to_string();
    let host = &rig.topo.host;
    let ctr = &rig.topo.container;
    ctr.ns
        .ip(["link", "set", ctr.ifname, "mtu", &mtu])
        .expect("container link mtu");
    host.ns
        .ip(["link", "set", &ctr.host_veth, "mtu", &mtu])
        .expect("container veth mtu");
    host.ns
        .ip(["link", "set", host.bridge, "mtu", &mtu])
        .expect("bridge mtu");
    if ipv6 {
        rig.berth_words("map add --task dns6 --ip6 fd00:17::2 -p 5353:53/udp");
    } else {
        rig.map_add("dns", "172.17.0.2", &["5353:53/udp"]);
    }
    rig
}

/// The socket option level and names of path-MTU discovery for `sock`'s
/// family: (level, `*_MTU_DISCOVER`, its `*_PMTUDISC_DO`, `*_MTU`).
fn pmtu_opts(sock: &UdpSocket) -> (libc::c_int, libc::c_int, libc::c_int, libc::c_int) {
    if sock.local_addr().expect("local address").is_ipv6() {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
            libc::IPV6_MTU,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
            libc::IP_MTU,
        )
    }
}

fn set_pmtudisc_do(sock: &UdpSocket) {
    let (level, opt, v, _) = pmtu_opts(sock);
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "MTU_DISCOVER: {}", io::Error::last_os_error());
}

/// The path MTU the kernel knows for a connected socket's peer.
fn ip_mtu(sock: &UdpSocket) -> u32 {
    let (level, _, _, opt) = pmtu_opts(sock);
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above, with room for the int the kernel writes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "MTU: {}", io::Error::last_os_error());
    v as u32
}

/// Sends 1400-byte datagrams until the client's kernel refuses one with
/// EMSGSIZE (it has learnt the path MTU), or `deadline` passes.
fn until_emsgsize(sock: &UdpSocket, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        match sock.send(&[0x5a; 1400]) {
            Ok(_) => thread::sleep(Duration::from_millis(100)),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return true,
            Err(e) => panic!("send: {e}"),
        }
    }
    false
}

fn client_learns_the_containers_path_mtu(mode: Mode, ipv6: bool) {
    let rig = small_mtu_rig(mode, ipv6);
    let (_dns, target, bind, client) = if ipv6 {
        (
            rig.serve_udp_echo6(&rig.topo.container.ns, 53),
            rig.topo.host.addr6(5353),
            any6(0),
            "[2001:db8::2]:",
        )
    } else {
        (
            rig.serve_udp_echo(&rig.topo.container.ns, 53),
            rig.topo.host.addr(5353),
            any(0),
            "192.0.2.2:",
        )
    };
    let sent = rig.counter("frag_needed_sent");
    let sock = udp_socket_in(&rig.topo.client.ns, bind, Duration::from_secs(3));
    sock.connect(target).expect("connect");
    set_pmtudisc_do(&sock);
    assert_eq!(ip_mtu(&sock), 1500, "the client's own link, at first");

    assert!(
        until_emsgsize(&sock, Duration::from_secs(3)),
        "the client never heard the path is smaller (frag_needed_sent {}, no_route {})\n{}",
        rig.counter("frag_needed_sent"),
        rig.counter("no_route"),
        rig.berth(&["stats"])
    );
    assert_eq!(ip_mtu(&sock), u32::from(SMALL_MTU), "the path MTU learnt");
    assert!(rig.counter("frag_needed_sent") > sent);

    // What fits gets through and is answered (once the error a later
    // ICMP error left pending on the socket is taken).
    let _ = sock.take_error();
    let payload = [0x61u8; 1200];
    sock.send(&payload).expect("send 1200 bytes");
    let (reply, from) = recv_datagram(&sock).expect("the 1200-byte datagram's echo");
    assert_eq!(from, target);
    let text = String::from_utf8(reply).expect("text");
    let (peer, echoed) = text.split_once(' ').expect("peer and payload");
    assert!(peer.starts_with(client), "the container saw {peer}");
    assert_eq!(echoed.as_bytes(), payload);
}

#[test]
fn a_pmtu_discovering_client_learns_the_containers_smaller_mtu_tc() {
    client_learns_the_containers_path_mtu(Mode::Tc, false);
}

#[test]
fn a_pmtu_discovering_client_learns_the_containers_smaller_mtu_xdp() {
    client_learns_the_containers_path_mtu(Mode::Xdp, false);
}

/// IPv6 routers never fragment: every packet over the path's MTU is
/// answered ("packet too big"), DF or not.
#[test]
fn a_pmtu_discovering_ipv6_client_learns_the_containers_smaller_mtu_tc() {
    client_learns_the_containers_path_mtu(Mode::Tc, true);
}

/// XDP leaves IPv6 to the TC program beside it (`berth_deliver`).
#[test]
fn a_pmtu_discovering_ipv6_client_learns_the_containers_smaller_mtu_xdp() {
    client_learns_the_containers_path_mtu(Mode::Xdp, true);
}
