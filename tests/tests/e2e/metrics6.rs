//! Per-binding counters of IPv6 bindings end to end (issues 14 and 15):
//! an IPv6 binding counts in its own slot, both ways, exactly what the
//! test sent; a dual-stack port's two bindings count apart in `berth
//! stats`, `/metrics` (told apart by `host_ip`) and `berth top`.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use berth_integration::{
    any, any6,
    rig::REQUEST_TIMEOUT as T,
    traffic::{recv_datagram, udp_socket_in},
    Rig,
};
use serde_json::Value;

use super::metrics::{
    check_exposition, counters, metrics_of, stats_columns, udp_exchange, value_of,
};

/// The IPv6 header and UDP's: what a datagram's payload is counted with.
const UDP6_OVERHEAD: u64 = 40 + 8;
/// The IPv4 header and UDP's.
const UDP_OVERHEAD: u64 = 20 + 8;

/// A dual-stack rig with `task`'s `spec` published over IPv6 only.
fn published6(task: &str, spec: &str) -> Rig {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    rig.berth(&[
        "map",
        "add",
        "--task",
        task,
        "--ip6",
        "fd00:17::2",
        "-p",
        spec,
    ]);
    rig
}

/// The bindings of `task` from `berth stats --task T --json`.
fn stats_rows(rig: &Rig, task: &str) -> Vec<Value> {
    let rows = rig.json(&["stats", "--task", task, "--json"]);
    rows.as_array().expect("an array").clone()
}

/// The one row of `rows` bound to `bind_ip`.
fn row<'a>(rows: &'a [Value], bind_ip: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["bindIP"] == bind_ip)
        .unwrap_or_else(|| panic!("no binding on {bind_ip}: {rows:?}"))
}

/// `N` datagrams of known sizes over IPv6 from one client socket (one
/// flow), `M` replies: packets and bytes (IPv6 header and payload) each
/// way exactly, in `berth stats`, `map ls --stats` and its JSON.
#[test]
fn udp_counters_over_ipv6_equal_what_was_sent_each_way() {
    let mut rig = published6("dns6", "5353:53/udp");
    let server = udp_socket_in(&rig.topo.container.ns, any6(53), T);
    let client = udp_socket_in(&rig.topo.client.ns, any6(0), T);
    let target = rig.topo.host.addr6(5353);
    let (sizes, replies) = ([1usize, 100, 333, 1000, 1400], [7usize, 700]);
    for reply_from in udp_exchange(&client, &server, target, &sizes, &replies) {
        assert_eq!(reply_from, target, "translated back to the host's port");
    }
    let want_in: u64 = sizes.iter().map(|n| *n as u64 + UDP6_OVERHEAD).sum();
    let want_out: u64 = replies.iter().map(|n| *n as u64 + UDP6_OVERHEAD).sum();
    let want = [5, want_in, 2, want_out, 1, 0, 1];
    let rows = stats_rows(&rig, "dns6");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        counters(&rows[0]["stats"]),
        want,
        "packets, bytes in; packets, bytes out; flows opened, refused, tracked"
    );
    let cells = stats_columns(&rig, 5353, want);
    assert_eq!(cells[1..3], ["fd00:17::2", "::"], "{cells:?}");
    let json = rig.json(&["map", "ls", "--stats", "--json"]);
    assert_eq!(json[0]["bindIP"], "::");
    assert_eq!(json[0]["stats"]["bytesOut"], want_out);
    // The slot is pinned with the maps: a restarted daemon adopts it.
    rig.daemon.restart().unwrap();
    client.send_to(b"again", target).unwrap();
    recv_datagram(&server).expect("datagram after the restart");
    let rows = stats_rows(&rig, "dns6");
    assert_eq!(
        counters(&rows[0]["stats"])[..2],
        [6, want_in + 5 + UDP6_OVERHEAD],
        "kept across the restart"
    );
}

/// An IPv6 security group with no rule refuses the flow: counted as
/// refused in the IPv6 binding's slot, nothing forwarded or opened.
#[test]
fn an_ipv6_flow_a_security_group_refuses_is_counted_as_refused() {
    let rig = published6("dns6", "5353:53/udp");
    rig.berth(&["sg", "create", "closed"]);
    rig.berth(&["sg", "attach", "closed", "--task", "dns6"]);
    let server = udp_socket_in(&rig.topo.container.ns, any6(53), Duration::from_millis(500));
    let client = udp_socket_in(&rig.topo.client.ns, any6(0), T);
    for _ in 0..2 {
        client.send_to(b"knock", rig.topo.host.addr6(5353)).unwrap();
    }
    assert!(recv_datagram(&server).is_none(), "the group refuses it");
    let rows = stats_rows(&rig, "dns6");
    assert_eq!(counters(&rows[0]["stats"]), [0, 0, 0, 0, 0, 2, 0]);
}

/// One port published over both families is two bindings, each counting
/// its own family's traffic only: two datagrams over IPv4, three over
/// IPv6, in `berth stats`, `/metrics` (one series each, by `host_ip`)
/// and `berth top` (`[::]:5353/udp` beside `0.0.0.0:5353/udp`).
#[test]
fn a_dual_stack_ports_two_bindings_count_apart() {
    let rig = Rig::builder().dual_stack().wait_for_ports().start();
    rig.berth_words("map add --task dns --ip 172.17.0.2 --ip6 fd00:17::2 -p 5353:53/udp");
    // Not IPv6-only: one socket hears both families.
    let server = udp_socket_in(&rig.topo.container.ns, any6(53), T);
    let client4 = udp_socket_in(&rig.topo.client.ns, any(0), T);
    let client6 = udp_socket_in(&rig.topo.client.ns, any6(0), T);
    for _ in 0..2 {
        client4
            .send_to(&[b'4'; 44], rig.topo.host.addr(5353))
            .unwrap();
        recv_datagram(&server).expect("over IPv4");
    }
    for _ in 0..3 {
        client6
            .send_to(&[b'6'; 66], rig.topo.host.addr6(5353))
            .unwrap();
        recv_datagram(&server).expect("over IPv6");
    }
    let rows = stats_rows(&rig, "dns");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        counters(&row(&rows, "0.0.0.0")["stats"]),
        [2, 2 * (44 + UDP_OVERHEAD), 0, 0, 1, 0, 1]
    );
    assert_eq!(
        counters(&row(&rows, "::")["stats"]),
        [3, 3 * (66 + UDP6_OVERHEAD), 0, 0, 1, 0, 1]
    );

    let text = metrics_of(&rig);
    let scrape = check_exposition(&text);
    let labels = |ip| {
        [
            ("task", "dns"),
            ("host_ip", ip),
            ("host_port", "5353"),
            ("protocol", "udp"),
            ("direction", "in"),
        ]
    };
    assert_eq!(
        value_of(&scrape, "berth_forwarded_packets_total", &labels("0.0.0.0")),
        2.0
    );
    assert_eq!(
        value_of(&scrape, "berth_forwarded_packets_total", &labels("::")),
        3.0
    );
    assert_eq!(
        value_of(&scrape, "berth_forwarded_bytes_total", &labels("::")),
        (3 * (66 + UDP6_OVERHEAD)) as f64
    );
    let series = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "berth_forwarded_packets_total" && s.labels.get("task") == Some("dns")
        })
        .count();
    assert_eq!(series, 4, "two bindings, two directions: {text}");

    // Traffic keeps flowing while top samples, so both rows show a rate.
    let stop = AtomicBool::new(false);
    let target = rig.topo.host.addr6(5353);
    let out = thread::scope(|sc| {
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = client6.send_to(&[b'p'; 200], target);
                thread::sleep(Duration::from_millis(5));
            }
        });
        let out = rig.berth(&["top", "--once", "--interval", "1"]);
        stop.store(true, Ordering::Relaxed);
        out
    });
    let v6 = out
        .lines()
        .find(|l| l.contains("[::]:5353/udp"))
        .unwrap_or_else(|| panic!("no IPv6 binding row: {out}"));
    let rate: f64 = v6
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('k')
        .parse()
        .unwrap();
    assert!(rate > 0.0, "packets/s in over IPv6: {v6}");
    assert!(out.contains("0.0.0.0:5353/udp"), "{out}");
}
