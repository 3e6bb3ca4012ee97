//! IPv6 through the real daemon (issue 15). What needs no IPv6 publishing
//! from the CLI yet: the host's IPv6 addresses the datapath's wildcard
//! (`[::]`) mappings serve follow the host's interfaces.
use std::{
    collections::BTreeSet,
    net::Ipv6Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use berth_integration::Rig;

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

fn ip(rig: &Rig, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", rig.topo.host.ns.name(), "ip"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (the daemon looks every 2 s) until `want` holds of the set.
fn until(rig: &Rig, what: &str, want: impl Fn(&BTreeSet<Ipv6Addr>) -> bool) {
    let start = Instant::now();
    loop {
        let now = host_addrs6(rig);
        if want(&now) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {now:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_hosts_ipv6_addresses_are_followed_as_they_come_and_go() {
    let rig = Rig::start();
    let added: Ipv6Addr = "2001:db8:77::1".parse().unwrap();
    until(&rig, "loopback at start", |s| {
        s.contains(&Ipv6Addr::LOCALHOST) && !s.contains(&added)
    });
    ip(
        &rig,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:77::1/64",
            "dev",
            "up0",
            "nodad",
        ],
    );
    until(&rig, "an address added to the uplink", |s| {
        s.contains(&added)
    });
    ip(
        &rig,
        &["-6", "addr", "del", "2001:db8:77::1/64", "dev", "up0"],
    );
    until(&rig, "the address removed", |s| !s.contains(&added));
}
