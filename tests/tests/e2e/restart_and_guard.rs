//! Restarts, adoption of pinned state, and the bind guard, end to end.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, MapData},
    programs::links::{FdLink, PinnedLink},
};
use berth_integration::{http_get, NetNs, Rig};
use berth_maps::{Backend, ServiceKey};

const T: Duration = Duration::from_secs(5);

fn bindings(rig: &Rig) -> String {
    rig.berth(&["map", "ls", "--json"])
}

/// `cg-probe bind PROTO ADDR` in `ns`, inside the daemon's cgroup: `ok`
/// or the error the bind guard gave.
fn bind_probe(rig: &Rig, ns: &NetNs, proto: &str, addr: &str) -> String {
    rig.cg_probe(ns, &["bind", proto, addr])
}

#[test]
fn host_process_cannot_bind_a_mapped_port() {
    let rig = Rig::start();
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "0.0.0.0:8080"),
        "ok",
        "free before mapping"
    );
    rig.map_add("w", "172.17.0.2", &["8080:80", "192.0.2.1:5353:53/udp"]);
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "0.0.0.0:8080"),
        "EADDRINUSE"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "192.0.2.1:8080"),
        "EADDRINUSE"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "udp", "0.0.0.0:5353"),
        "EADDRINUSE"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "udp", "0.0.0.0:8080"),
        "ok",
        "other protocol"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "0.0.0.0:8081"),
        "ok",
        "other port"
    );
    // The guard acts in the daemon's network namespace only.
    assert_eq!(
        bind_probe(&rig, &rig.topo.client.ns, "tcp", "0.0.0.0:8080"),
        "ok",
        "another namespace"
    );
    rig.daemon
        .cli_ok(["map", "rm", "--task", "w", "-p", "8080:80"])
        .unwrap();
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "0.0.0.0:8080"),
        "ok",
        "free again after rm"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "udp", "0.0.0.0:5353"),
        "EADDRINUSE"
    );
    let stats = rig.daemon.cli_ok(["stats", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["counters"]["bind_refused"], 4, "{stats}");
}

#[test]
fn host_process_cannot_bind_a_mapped_port_over_ipv6() {
    let mut rig = Rig::start();
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "[::]:8085"),
        "ok",
        "free before mapping"
    );
    rig.map_add("w", "172.17.0.2", &["8085:80", "127.0.0.1:5353:53/udp"]);
    // Dual-stack [::] would take IPv4 and IPv6 clients; [::1] those that
    // resolve localhost to ::1; v4-mapped addresses are IPv4 in disguise.
    for (proto, addr) in [
        ("tcp", "[::]:8085"),
        ("tcp", "[::1]:8085"),
        ("tcp", "[::ffff:0.0.0.0]:8085"),
        ("tcp", "[::ffff:127.0.0.1]:8085"),
        ("tcp", "[::ffff:192.0.2.1]:8085"),
        ("udp", "[::]:5353"),
        ("udp", "[::ffff:127.0.0.1]:5353"),
    ] {
        assert_eq!(
            bind_probe(&rig, &rig.topo.host.ns, proto, addr),
            "EADDRINUSE",
            "{proto} {addr}"
        );
    }
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "[::]:8086"),
        "ok",
        "other port"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "udp", "[::]:8085"),
        "ok",
        "other protocol"
    );
    assert_eq!(
        bind_probe(&rig, &rig.topo.client.ns, "tcp", "[::]:8085"),
        "ok",
        "another namespace"
    );
    let stats = rig.daemon.cli_ok(["stats", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["counters"]["bind_refused"], 7, "{stats}");
    // A restarted daemon replaces its pinned bind6 link rather than adding
    // a second one (two stacked hooks would each count the refusal).
    rig.daemon.restart().unwrap();
    assert_eq!(
        bind_probe(&rig, &rig.topo.host.ns, "tcp", "[::]:8085"),
        "EADDRINUSE",
        "after a restart"
    );
    let stats = rig.daemon.cli_ok(["stats", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["counters"]["bind_refused"], 8, "{stats}");
}

const CHUNK: usize = 64 << 10;

#[test]
fn a_long_transfer_survives_sigkill_and_restart() {
    let mut rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let listener = rig
        .topo
        .container
        .ns
        .run(|| TcpListener::bind("0.0.0.0:9000"))
        .unwrap();
    let sink = thread::spawn(move || -> std::io::Result<usize> {
        let (mut c, _) = listener.accept()?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        loop {
            match c.read(&mut buf)? {
                0 => break,
                k => n += k,
            }
        }
        c.write_all(&(n as u64).to_be_bytes())?;
        Ok(n)
    });
    rig.map_add("t", "172.17.0.2", &["9000:9000", "8080:80"]);
    let before = bindings(&rig);
    let addr = rig.topo.host.addr(9000);
    // A transfer paced to last about three seconds.
    let sender = rig.topo.client.ns.run(move || {
        let mut c = TcpStream::connect_timeout(&addr, T).expect("connect");
        c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        thread::spawn(move || -> std::io::Result<(usize, u64)> {
            let chunk = vec![7u8; CHUNK];
            let mut sent = 0;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                c.write_all(&chunk)?;
                sent += CHUNK;
                thread::sleep(Duration::from_millis(5));
            }
            c.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 8];
            c.read_exact(&mut ack)?;
            Ok((sent, u64::from_be_bytes(ack)))
        })
    });
    thread::sleep(Duration::from_millis(700));
    rig.daemon.kill().expect("SIGKILL the daemon mid-transfer");
    let target = rig.topo.host.addr(8080);
    let body = rig
        .topo
        .client
        .ns
        .run(move || http_get(target, "/", T))
        .expect("new connection while down");
    assert!(body.starts_with("192.0.2.2:"));
    rig.daemon.start_again().expect("restart");
    let (sent, received) = sender.join().unwrap().expect("the transfer finished");
    assert_eq!(sink.join().unwrap().unwrap(), sent);
    assert_eq!(received as usize, sent, "every byte arrived");
    assert!(sent > 20 * CHUNK, "a long transfer: {sent} bytes");
    assert_eq!(bindings(&rig), before, "no leaked or duplicated binding");
}

fn link_info(pin: &Path) -> (u32, u32) {
    let link: FdLink = PinnedLink::from_pin(pin).expect("pinned link").into();
    let info = link.info().expect("link info");
    (info.id(), info.program_id())
}

#[test]
fn restart_swaps_the_program_into_the_same_links_without_dropping_a_flow() {
    let mut rig = Rig::start();
    let listener = rig
        .topo
        .container
        .ns
        .run(|| TcpListener::bind("0.0.0.0:7"))
        .unwrap();
    thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    rig.map_add("echo", "172.17.0.2", &["7007:7"]);
    let links = rig.bpffs.path().join("berth/links");
    let ingress = links.join("berth_ingress@up0");
    let reply = links.join("berth_reply@docker0");
    let (ingress_link, ingress_prog) = link_info(&ingress);
    let (reply_link, reply_prog) = link_info(&reply);
    let addr = rig.topo.host.addr(7007);
    let mut c = rig
        .topo
        .client
        .ns
        .run(move || TcpStream::connect_timeout(&addr, T))
        .unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    // Keep the flow busy across the restart: every round trip must succeed.
    let pinger = thread::spawn(move || {
        let start = Instant::now();
        let mut rounds = 0u32;
        while start.elapsed() < Duration::from_secs(3) {
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).expect("echo during the restart");
            assert_eq!(&buf, b"ping");
            rounds += 1;
            thread::sleep(Duration::from_millis(2));
        }
        rounds
    });
    thread::sleep(Duration::from_millis(500));
    rig.daemon.stop().unwrap();
    rig.daemon.start_again().unwrap();
    assert!(pinger.join().expect("no round trip failed") > 100);
    let (ingress_link2, ingress_prog2) = link_info(&ingress);
    let (reply_link2, reply_prog2) = link_info(&reply);
    assert_eq!(ingress_link2, ingress_link, "same ingress link");
    assert_eq!(reply_link2, reply_link, "same reply link");
    assert_ne!(
        ingress_prog2, ingress_prog,
        "new ingress program swapped in"
    );
    assert_ne!(reply_prog2, reply_prog, "new reply program swapped in");
}

#[test]
fn restart_removes_map_entries_the_store_does_not_know() {
    let mut rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    rig.map_add("w", "172.17.0.2", &["8080:80"]);
    rig.daemon.stop().unwrap();
    // As if a crash had left an entry behind that never reached the store.
    {
        let map = MapData::from_pin(rig.bpffs.path().join("berth/BERTH_SERVICES")).unwrap();
        let mut services: HashMap<MapData, ServiceKey, Backend> =
            HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap();
        services
            .insert(
                ServiceKey {
                    host_addr_be: 0,
                    host_port_be: 8081u16.to_be(),
                    proto: 6,
                    _pad: 0,
                },
                Backend {
                    addr_be: u32::from_ne_bytes([172, 17, 0, 2]),
                    port_be: 80u16.to_be(),
                    _pad: 0,
                    binding: 0,
                },
                0,
            )
            .unwrap();
    }
    let stale = rig.topo.host.addr(8081);
    assert!(
        rig.topo
            .client
            .ns
            .run(move || http_get(stale, "/", T))
            .is_ok(),
        "the stale entry forwards while the daemon is down"
    );
    rig.daemon.start_again().unwrap();
    assert!(
        rig.topo
            .client
            .ns
            .run(move || http_get(stale, "/", Duration::from_secs(1)))
            .is_err(),
        "reconciled away"
    );
    let kept = rig.topo.host.addr(8080);
    rig.topo
        .client
        .ns
        .run(move || http_get(kept, "/", T))
        .expect("the stored binding stays");
}

/// The program id in each slot of the pinned `BERTH_TAILS` (0: empty).
fn tail_slots(rig: &Rig) -> Vec<u32> {
    use berth::datapath::sys;
    let fd = sys::obj_get(&rig.bpffs.path().join("berth/BERTH_TAILS")).expect("BERTH_TAILS pinned");
    (0..berth_maps::tail::LEN)
        .map(|slot| {
            let mut id = [0u8; 4];
            let found = sys::map_lookup(&fd, &slot.to_ne_bytes(), &mut id).expect("lookup");
            if found {
                u32::from_ne_bytes(id)
            } else {
                0
            }
        })
        .collect()
}

/// Only the slots of `tail::PROGRAMS` hold a program.
fn assert_filled(slots: &[u32], when: &str) {
    for (slot, id) in slots.iter().enumerate() {
        let wanted = berth_maps::tail::PROGRAMS
            .iter()
            .any(|(s, _)| *s as usize == slot);
        assert_eq!(*id != 0, wanted, "{when}: slot {slot} holds {id}");
    }
}

#[test]
fn tail_called_programs_stay_while_the_daemon_is_down_and_are_replaced_at_restart() {
    let mut rig = Rig::start();
    let first = tail_slots(&rig);
    assert_filled(&first, "first start");
    rig.daemon.stop().unwrap();
    // The pin keeps them: the IPv4 programs, still attached, still reach them.
    assert_eq!(tail_slots(&rig), first, "daemon stopped");
    rig.daemon.start_again().unwrap();
    let second = tail_slots(&rig);
    assert_filled(&second, "after the restart");
    for &(slot, name) in berth_maps::tail::PROGRAMS {
        let s = slot as usize;
        assert_ne!(second[s], first[s], "{name}: the new load's program");
    }

    // An array of another shape (an older or newer layout) is made anew
    // and filled, not refused and not copied (its entries are ids).
    rig.daemon.stop().unwrap();
    {
        use berth::datapath::sys;
        let pin = rig.bpffs.path().join("berth/BERTH_TAILS");
        std::fs::remove_file(&pin).unwrap();
        let shape = sys::MapShape {
            map_type: sys::BPF_MAP_TYPE_PROG_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 2,
            flags: 0,
        };
        let fd = sys::map_create("BERTH_TAILS", &shape).unwrap();
        sys::obj_pin(&fd, &pin).unwrap();
    }
    rig.daemon.start_again().unwrap();
    let third = tail_slots(&rig);
    assert_eq!(third.len(), berth_maps::tail::LEN as usize);
    assert_filled(&third, "after the array was made anew");
}
