//! The host address tables on a host with many addresses (`--max-host-addrs`):
//! more IPv6 addresses than the 1 024 the tables used to hold are all the
//! host's (a `[::]` mapping answers on the last one added, no container may
//! claim it); a table too
//! small keeps the addresses that matter most (not link-local ones first),
//! warns once naming the flag, and `berth status` counts what it lacks; a
//! pinned table of another size is resized at start.
use std::{
    collections::BTreeSet,
    net::Ipv6Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use berth_integration::{addr::CONTAINER2_IP6, pkt, rawsock::RawSocket, Rig};
use serde_json::Value;

/// The addresses in the pinned `BERTH_HOST_ADDRS6`.
fn host_addrs6(rig: &Rig) -> BTreeSet<Ipv6Addr> {
    use berth::datapath::sys;
    let pin = rig.bpffs.path().join("berth/BERTH_HOST_ADDRS6");
    let fd = sys::obj_get(&pin).expect("BERTH_HOST_ADDRS6 pinned");
    sys::map_keys(&fd, 16)
        .expect("keys")
        .into_iter()
        .map(|k| Ipv6Addr::from(<[u8; 16]>::try_from(k.as_slice()).unwrap()))
        .collect()
}

/// Runs `ip -batch` in the rig's host namespace (never the root one).
fn ip_batch(rig: &Rig, lines: &[String]) {
    let file = rig.write_file("ip-batch", &(lines.join("\n") + "\n"));
    let out = Command::new("ip")
        .args(["-n", rig.topo.host.ns.name(), "-batch"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A link `hosts0` in the host namespace (a veth pair: this kernel has
/// no dummy links) holding `addrs`.
fn link_with(rig: &Rig, addrs: impl IntoIterator<Item = String>) {
    let mut lines = vec![
        "link add hosts0 type veth peer name hosts1".to_owned(),
        "link set hosts0 up".to_owned(),
        "link set hosts1 up".to_owned(),
    ];
    lines.extend(
        addrs
            .into_iter()
            .map(|a| format!("addr add {a} dev hosts0 nodad")),
    );
    ip_batch(rig, &lines);
}

/// Waits (the daemon looks every 2 s; a large set takes a few pushes'
/// time) until `want` holds of the pinned set.
fn until(rig: &Rig, what: &str, want: impl Fn(&BTreeSet<Ipv6Addr>) -> bool) {
    let start = Instant::now();
    loop {
        let now = host_addrs6(rig);
        if want(&now) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {} addresses",
            now.len()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The link-local addresses of the rig's bridge and of its ports (the
/// containers' host-side veths).
fn bridge_and_port_link_locals(rig: &Rig) -> (BTreeSet<Ipv6Addr>, BTreeSet<Ipv6Addr>) {
    let host = &rig.topo.host;
    let link_locals = |dev: &str| -> BTreeSet<Ipv6Addr> {
        let shown = host
            .ns
            .ip(["-6", "-o", "addr", "show", "dev", dev, "scope", "link"])
            .unwrap();
        shown
            .split_whitespace()
            .zip(shown.split_whitespace().skip(1))
            .filter(|(w, _)| *w == "inet6")
            .filter_map(|(_, a)| a.split('/').next()?.parse().ok())
            .collect()
    };
    let ports = host
        .ns
        .ip(["-o", "link", "show", "master", host.bridge])
        .unwrap();
    let ports: BTreeSet<Ipv6Addr> = ports
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
        .flat_map(link_locals)
        .collect();
    (link_locals(host.bridge), ports)
}

fn status(rig: &Rig) -> Value {
    serde_json::from_str(&rig.berth(&["status", "--json"])).unwrap()
}

/// 1 100 IPv6 addresses on a link of the host (more than the 1 024 both
/// tables used to hold, which then dropped some): every one is in the
/// table, a host process reaches the `[::]` mapping through the last one
/// added, translated at its socket to the container, and a container's
/// neighbour advertisement claiming it is refused at its port.
#[test]
fn more_ipv6_addresses_than_the_old_table_held_are_all_the_hosts() {
    let rig = Rig::builder().dual_stack().start();
    let _web = rig.serve_http6(&rig.topo.container.ns, 80);
    rig.berth_words("map add --task web6 --ip6 fd00:17::2 -p 8080:80");
    let many: Vec<Ipv6Addr> = (1..=1100u16)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, i >> 8, i & 0xff))
        .collect();
    link_with(&rig, many.iter().map(|a| format!("{a}/128")));
    let last = *many.last().unwrap();
    until(&rig, "all 1 100 addresses", |s| {
        many.iter().all(|a| s.contains(a))
    });
    assert!(host_addrs6(&rig).len() > 1100);
    let target = format!("[{last}]:8080");
    let out = rig.cg_probe(&rig.topo.host.ns, &["http", &target]);
    assert!(
        out.starts_with(&format!("peer={target} body=")),
        "{target}: {out}"
    );
    let fill = &status(&rig)["datapath"]["hostAddrs"];
    assert_eq!(fill["capacity"], berth_maps::DEFAULT_MAX_HOST_ADDRS);
    assert_eq!(fill["ipv6LeftOut"], 0, "{fill}");
    assert!(fill["ipv6"].as_u64().unwrap() > 1100, "{fill}");
    // An address the host does not have is not served.
    let out = rig.cg_probe(&rig.topo.host.ns, &["http", "[2001:db8:100::9999]:8080"]);
    assert!(!out.starts_with("peer="), "{out}");

    // No container may claim the last one as its neighbour address (the
    // bridge port's check asks the same table); an address the host does
    // not have passes that check.
    let t2 = &rig.topo.container2;
    let t2_mac = t2.link().unwrap().mac;
    let sock = RawSocket::open_in(&t2.ns, t2.ifname).unwrap();
    let advert = |target: Ipv6Addr| {
        let mut f = pkt::neighbour_advert(CONTAINER2_IP6, target, Some(t2_mac));
        f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&t2_mac);
        f
    };
    let before = rig.counter("neigh_spoofed");
    for _ in 0..3 {
        sock.send(&advert(last)).unwrap();
        sock.send(&advert("2001:db8:100::9999".parse().unwrap()))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.counter("neigh_spoofed") < before + 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rig.counter("neigh_spoofed"),
        before + 3,
        "the last address's claims only"
    );

    // A size of 0 or beyond any table is refused in one line, before
    // anything is loaded (the running daemon keeps serving).
    for bad in ["0", "16777217"] {
        let out = rig
            .daemon
            .cli(["daemon", "--bridge", "x", "--max-host-addrs", bad])
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "berth: invalid value '{bad}' for '--max-host-addrs <N>'"
            )),
            "{err}"
        );
    }
    let out = rig.cg_probe(&rig.topo.host.ns, &["http", &target]);
    assert!(out.starts_with(&format!("peer={target} body=")), "{out}");
}

/// A restart with `--max-host-addrs 64` on a host of about 110 IPv6
/// addresses: the pinned tables are resized (the IPv6 one keeping what
/// fits, link-local addresses left out first); the table then holds every
/// address that is not link-local, the daemon warns once naming the flag
/// however often the set changes while full, `berth status` and the
/// metrics count what is left out, and a new global address pushes a
/// link-local one out. When all fit again the count goes back to 0.
#[test]
fn a_table_too_small_keeps_the_addresses_that_matter_warns_once_and_counts_the_rest() {
    let mut rig = Rig::builder().dual_stack().start();
    let global: Ipv6Addr = "2001:db8:200::1".parse().unwrap();
    link_with(
        &rig,
        (1..=100u16)
            .map(|i| format!("fe80::1:{i:x}/64"))
            .chain([format!("{global}/128")]),
    );
    until(&rig, "the link-local addresses and the global one", |s| {
        s.contains(&global) && s.len() > 101
    });
    let before = host_addrs6(&rig);

    rig.daemon.stop().unwrap();
    rig.daemon.set_extra_args(&["--max-host-addrs", "64"]);
    rig.daemon.start_again().unwrap();
    let s = status(&rig);
    let migrated: Vec<&str> = s["datapath"]["migrated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let six = format!(
        "BERTH_HOST_ADDRS6: capacity {} -> 64 (64 entries kept, {} left out of the smaller table, link-local ones first)",
        berth_maps::DEFAULT_MAX_HOST_ADDRS,
        before.len() - 64
    );
    assert!(migrated.contains(&six.as_str()), "{migrated:?}");
    assert!(
        migrated.iter().any(|m| m.starts_with(&format!(
            "BERTH_HOST_ADDRS: capacity {} -> 64 (",
            berth_maps::DEFAULT_MAX_HOST_ADDRS
        ))),
        "{migrated:?}"
    );

    let not_link_local = |s: &BTreeSet<Ipv6Addr>| -> BTreeSet<Ipv6Addr> {
        s.iter()
            .copied()
            .filter(|a| !a.is_unicast_link_local())
            .collect()
    };
    let wanted = not_link_local(&before);
    assert!(wanted.contains(&global) && wanted.contains(&Ipv6Addr::LOCALHOST));
    until(&rig, "every address that is not link-local", |s| {
        s.len() == 64 && not_link_local(s) == wanted
    });
    // Of the link-local ones, the bridge's (its containers' gateway) is
    // kept, its ports' are the first left out.
    let (bridge_ll, port_lls) = bridge_and_port_link_locals(&rig);
    assert!(!bridge_ll.is_empty() && port_lls.len() >= 2);
    assert!(before.is_superset(&bridge_ll) && before.is_superset(&port_lls));
    let now = host_addrs6(&rig);
    assert!(now.is_superset(&bridge_ll), "{bridge_ll:?}");
    assert!(now.is_disjoint(&port_lls), "{port_lls:?}");
    let fill = status(&rig)["datapath"]["hostAddrs"].clone();
    assert_eq!(fill["capacity"], 64);
    assert_eq!(
        fill["ipv6"].as_u64().unwrap(),
        before.len() as u64,
        "{fill}"
    );
    assert_eq!(
        fill["ipv6LeftOut"].as_u64().unwrap(),
        before.len() as u64 - 64,
        "{fill}"
    );
    assert_eq!(fill["ipv4LeftOut"], 0, "{fill}");
    let text = rig.berth(&["status"]);
    assert!(
        text.contains(&format!(
            "FULL, left out: {} IPv6 (link-local ones first); start the daemon with a larger --max-host-addrs",
            before.len() - 64
        )),
        "{text}"
    );
    let metrics = super::metrics::metrics_of(&rig);
    assert!(
        metrics.contains(&format!(
            "berth_host_addresses_left_out{{family=\"ipv6\"}} {}",
            before.len() - 64
        )),
        "{metrics}"
    );

    // More link-local addresses, then a global one: still full, the global
    // one gets in, and the warning was said once.
    let second: Ipv6Addr = "2001:db8:200::2".parse().unwrap();
    ip_batch(
        &rig,
        &[
            "addr add fe80::2:1/64 dev hosts0 nodad".to_owned(),
            format!("addr add {second}/128 dev hosts0 nodad"),
        ],
    );
    until(&rig, "the second global address", |s| {
        s.len() == 64 && s.contains(&second) && s.contains(&global)
    });
    let warning = "BERTH_HOST_ADDRS6 is full: it holds 64 of the host's";
    let stderr = rig.daemon.stderr();
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(
        stderr.contains("start the daemon with a larger --max-host-addrs"),
        "{stderr}"
    );

    // The link goes: all fit again.
    ip_batch(&rig, &["link del hosts0".to_owned()]);
    until(&rig, "the link's addresses gone", |s| {
        !s.contains(&global) && s.len() < 64
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fill = status(&rig)["datapath"]["hostAddrs"].clone();
        if fill["ipv6LeftOut"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{fill}");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rig.daemon
            .stderr()
            .contains("every host address fits in its table again"),
        "{}",
        rig.daemon.stderr()
    );
}
