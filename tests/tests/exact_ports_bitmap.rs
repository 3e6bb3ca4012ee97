//! The daemon keeps `BERTH_EXACT_PORTS` exact: a port's bit is set while at
//! least one mapping bound to a host address publishes it (wildcard
//! mappings set nothing), cleared when the last one goes, and rebuilt from
//! the pinned services at a restart, dropping a bit nothing justifies.
use berth::datapath::sys;
use berth_integration::{Bpffs, Daemon, Topology};
use berth_maps::{exact_ports_slot, EXACT_PORTS_MAP, PROTO_TCP, PROTO_UDP};

fn bit(bpffs: &Bpffs, proto: u8, port: u16) -> bool {
    let fd = sys::obj_get(&bpffs.path().join("berth").join(EXACT_PORTS_MAP)).unwrap();
    let (i, b) = exact_ports_slot(proto, port);
    let mut v = [0u8; 8];
    assert!(sys::map_lookup(&fd, &i.to_ne_bytes(), &mut v).unwrap());
    u64::from_ne_bytes(v) & b != 0
}

fn set_bit(bpffs: &Bpffs, proto: u8, port: u16) {
    let fd = sys::obj_get(&bpffs.path().join("berth").join(EXACT_PORTS_MAP)).unwrap();
    let (i, b) = exact_ports_slot(proto, port);
    sys::map_update(&fd, &i.to_ne_bytes(), &b.to_ne_bytes()).unwrap();
}

#[test]
fn the_exact_ports_bitmap_follows_the_address_bound_mappings() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let mut d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    let add = |d: &mut Daemon, task: &str, ip: &str, ports: &str| {
        d.cli_ok(["map", "add", "--task", task, "--ip", ip, "-p", ports])
            .unwrap();
    };
    add(&mut d, "w", "172.17.0.2", "8080:80");
    assert!(
        !bit(&bpffs, PROTO_TCP, 8080),
        "a wildcard mapping sets nothing"
    );
    add(&mut d, "a", "172.17.0.3", "192.0.2.1:9000:90");
    add(&mut d, "b", "172.17.0.4", "127.0.0.1:9000:90");
    add(&mut d, "c", "172.17.0.5", "127.0.0.1:9001:91/udp");
    assert!(bit(&bpffs, PROTO_TCP, 9000), "two mappings on 9000");
    assert!(bit(&bpffs, PROTO_UDP, 9001), "udp 9001");
    assert!(!bit(&bpffs, PROTO_TCP, 9001), "tcp 9001 has nothing");
    d.cli_ok(["map", "rm", "--task", "a"]).unwrap();
    assert!(bit(&bpffs, PROTO_TCP, 9000), "one mapping on 9000 left");
    // A bit no mapping justifies (as a crash between the two steps would
    // leave it) is dropped by the rebuild at the start.
    set_bit(&bpffs, PROTO_TCP, 7000);
    d.restart().unwrap();
    assert!(!bit(&bpffs, PROTO_TCP, 7000), "rebuilt from the services");
    assert!(bit(&bpffs, PROTO_TCP, 9000), "kept across the restart");
    d.cli_ok(["map", "rm", "--task", "b"]).unwrap();
    assert!(
        !bit(&bpffs, PROTO_TCP, 9000),
        "the last one on 9000 is gone"
    );
    assert!(bit(&bpffs, PROTO_UDP, 9001), "udp 9001 untouched");
    d.cli_ok(["map", "rm", "--task", "c"]).unwrap();
    assert!(!bit(&bpffs, PROTO_UDP, 9001));
}
