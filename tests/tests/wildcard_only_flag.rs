//! The daemon keeps `BERTH_CONFIG`'s `CONFIG_WILDCARD_ONLY` set only while
//! every published mapping is on the wildcard host address (the service
//! lookup then skips the exact-address probe): a mapping bound to one
//! address clears it, removing the last such mapping sets it again, and a
//! restart counts what the pinned services hold.
use berth::datapath::sys;
use berth_integration::{Bpffs, Daemon, Topology};
use berth_maps::{CONFIG_MAP, CONFIG_WILDCARD_ONLY};

fn flag(bpffs: &Bpffs) -> u64 {
    let fd = sys::obj_get(&bpffs.path().join("berth").join(CONFIG_MAP)).unwrap();
    let mut v = [0u8; 8];
    assert!(sys::map_lookup(&fd, &CONFIG_WILDCARD_ONLY.to_ne_bytes(), &mut v).unwrap());
    u64::from_ne_bytes(v)
}

#[test]
fn the_wildcard_only_flag_follows_the_published_mappings() {
    let topo = Topology::build().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let mut d = Daemon::start(&topo.host.ns, &bpffs).unwrap();
    assert_eq!(flag(&bpffs), 1, "nothing published");
    d.cli_ok([
        "map",
        "add",
        "--task",
        "w",
        "--ip",
        "172.17.0.2",
        "-p",
        "8080:80",
    ])
    .unwrap();
    assert_eq!(flag(&bpffs), 1, "a wildcard mapping");
    for ports in ["192.0.2.1:9000:90", "127.0.0.1:9001:91"] {
        d.cli_ok([
            "map",
            "add",
            "--task",
            "a",
            "--ip",
            "172.17.0.3",
            "-p",
            ports,
        ])
        .unwrap();
        assert_eq!(flag(&bpffs), 0, "{ports}: bound to an address");
    }
    d.cli_ok(["map", "rm", "--task", "a", "-p", "192.0.2.1:9000:90"])
        .unwrap();
    assert_eq!(flag(&bpffs), 0, "one address-bound mapping left");
    d.restart().unwrap();
    assert_eq!(flag(&bpffs), 0, "counted again at the start");
    d.cli_ok(["map", "rm", "--task", "a"]).unwrap();
    assert_eq!(flag(&bpffs), 1, "the last address-bound mapping is gone");
    d.restart().unwrap();
    assert_eq!(flag(&bpffs), 1, "wildcard mappings only after a restart");
}
