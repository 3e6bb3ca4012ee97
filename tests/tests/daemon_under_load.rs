//! The daemon under load: unpublishing with a full flow table, many idle
//! API connections, request limits, the socket's group, and new bridge
//! ports hooked as they appear. Root only.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr,
    flows::{count_flows_of, FlowFill},
    Bpffs, Daemon, Topology,
};

/// Guards drop in field order: daemon, then bpffs, then namespaces.
struct Setup {
    daemon: Daemon,
    bpffs: Bpffs,
    _topo: Topology,
}

fn setup() -> Setup {
    let topo = Topology::build().expect("build topology");
    let bpffs = Bpffs::new().expect("bpffs");
    let daemon = Daemon::start(&topo.host.ns, &bpffs).expect("start daemon");
    Setup {
        daemon,
        bpffs,
        _topo: topo,
    }
}

/// Runs `map ls` over and over until stopped; returns the slowest answer.
fn keep_listing(daemon: &Daemon, stop: &AtomicBool) -> Duration {
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        daemon.cli_ok(["map", "ls"]).expect("map ls");
        slowest = slowest.max(t.elapsed());
    }
    slowest
}

#[test]
fn removing_a_1000_port_range_with_a_full_flow_table_is_quick_and_blocks_nobody() {
    let s = setup();
    let range_ip = addr::CONTAINER2_IP;
    let other_ip = addr::CONTAINER_IP;
    s.daemon
        .cli_ok([
            "map",
            "add",
            "--task",
            "range",
            "--ip",
            &range_ip.to_string(),
            "-p",
            "20000-20999:20000-20999",
        ])
        .unwrap();
    s.daemon
        .cli_ok([
            "map",
            "add",
            "--task",
            "other",
            "--ip",
            &other_ip.to_string(),
            "-p",
            "8080:80",
        ])
        .unwrap();
    // 250 000 of the table's 262 144 flows: 200 per port of the range, and
    // 50 000 of another task's, which must survive.
    let range_flows = FlowFill {
        ctr_ip: range_ip,
        ctr_ports: 20000..=20999,
        host_base: 20000,
        client_ip: addr::CLIENT_IP,
        per_port: 200,
    }
    .insert(s.bpffs.path())
    .unwrap();
    let other_flows = FlowFill {
        ctr_ip: other_ip,
        ctr_ports: 80..=80,
        host_base: 8080,
        client_ip: addr::CLIENT_IP,
        per_port: 50_000,
    }
    .insert(s.bpffs.path())
    .unwrap();
    assert_eq!(
        count_flows_of(s.bpffs.path(), range_ip).unwrap(),
        range_flows
    );

    let stop = AtomicBool::new(false);
    let (took, slowest_ls) = thread::scope(|sc| {
        let lister = sc.spawn(|| keep_listing(&s.daemon, &stop));
        // Let the lister get going first.
        thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        s.daemon.cli_ok(["map", "rm", "--task", "range"]).unwrap();
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        (took, lister.join().unwrap())
    });
    eprintln!(
        "map rm of 1000 ports with {} flows: {took:?}; slowest map ls meanwhile: {slowest_ls:?}",
        range_flows + other_flows
    );
    assert!(took < Duration::from_secs(2), "map rm took {took:?}");
    assert!(
        slowest_ls < Duration::from_secs(1),
        "map ls took {slowest_ls:?}"
    );
    assert_eq!(
        count_flows_of(s.bpffs.path(), range_ip).unwrap(),
        0,
        "the range's flows are forgotten"
    );
    assert_eq!(
        count_flows_of(s.bpffs.path(), other_ip).unwrap(),
        other_flows,
        "the other task's flows stay"
    );
}
