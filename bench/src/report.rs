//! bench/RESULTS.md and the SVG charts, from the results JSON alone (so
//! they can be regenerated from a committed results.json).
use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::Value;

use super::{
    stats::med,
    svg::{bar_chart, fmt_num, line_chart, Line, Series},
};

const BERTHS: [&str; 2] = ["berth-tc", "berth-xdp"];

fn topo_rows(r: &Value) -> Vec<Value> {
    r["topology"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn peers(r: &Value) -> Vec<String> {
    r["topology"]["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["peer"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn cell<'a>(rows: &'a [Value], peer: &str, ports: u64) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["peer"] == peer && r["ports"].as_u64() == Some(ports))
}

/// Median of `metric` for `peer` at `ports`.
fn m(rows: &[Value], peer: &str, ports: u64, metric: &str) -> Option<f64> {
    cell(rows, peer, ports)
        .map(|c| med(&c[metric]))
        .filter(|v| v.is_finite())
}

fn span(v: &Value, f: impl Fn(f64) -> String) -> String {
    let (a, b) = (v["min"].as_f64(), v["max"].as_f64());
    match (a, b) {
        (Some(a), Some(b)) => format!("{} ({}–{})", f(med(v)), f(a), f(b)),
        _ => "—".into(),
    }
}

fn r2(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "—".into())
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}
fn f1(x: f64) -> String {
    format!("{x:.1}")
}
fn f2(x: f64) -> String {
    format!("{x:.2}")
}
fn kpps(x: f64) -> String {
    format!("{:.0}", x / 1e3)
}

/// Higher-is-better metrics: berth ÷ peer; lower-is-better: peer ÷ berth.
/// Either way > 1 means berth does better.
fn advantage(berth: Option<f64>, peer: Option<f64>, higher_better: bool) -> Option<f64> {
    let (b, p) = (berth?, peer?);
    if b <= 0.0 || p <= 0.0 {
        return None;
    }
    Some(if higher_better { b / p } else { p / b })
}

const METRICS: [(&str, &str, bool); 6] = [
    ("connections_per_s", "connections/s", true),
    ("rtt_p50_us", "latency p50", false),
    ("rtt_p99_us", "latency p99", false),
    ("throughput_gbps", "TCP throughput", true),
    ("udp_pps", "UDP packets/s delivered", true),
    ("cpu_us_per_connection", "CPU per connection", false),
];

fn topology_tables(s: &mut String, r: &Value) {
    let rows = topo_rows(r);
    let peers = peers(r);
    for ports in [1u64, 10_000] {
        let _ = writeln!(
            s,
            "\n### {} published port{}\n",
            if ports == 1 {
                "1".to_string()
            } else {
                "10 000".into()
            },
            if ports == 1 {
                " (only the measured ones: TCP 8080, TCP 5201, UDP 5353)"
            } else {
                "s (9 997 extra mappings added first, the 3 measured ones last)"
            }
        );
        s.push_str("| peer | connections/s | × direct | latency p50 µs | latency p99 µs | iperf3 Gbit/s | × direct | UDP kpps delivered (sent) | × direct |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &peers {
            let Some(c) = cell(&rows, p, ports) else {
                let _ = writeln!(s, "| {p} | not measured | | | | | | | |");
                continue;
            };
            let x = |metric: &str| {
                r2(advantage(
                    m(&rows, p, ports, metric),
                    m(&rows, "direct", ports, metric),
                    true,
                ))
            };
            let _ = writeln!(
                s,
                "| {p} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
                span(&c["connections_per_s"], f0),
                x("connections_per_s"),
                span(&c["rtt_p50_us"], f1),
                span(&c["rtt_p99_us"], f1),
                span(&c["throughput_gbps"], f2),
                x("throughput_gbps"),
                span(&c["udp_pps"], kpps),
                kpps(med(&c["udp_sent_pps"])),
                x("udp_pps"),
            );
        }
        s.push_str("\nCPU time of the whole machine (both cores, /proc/stat) per unit of work:\n\n| peer | µs per connection | µs per round trip | ms per GB (iperf3) | ns per UDP packet delivered |\n|---|---:|---:|---:|---:|\n");
        for p in &peers {
            let Some(c) = cell(&rows, p, ports) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {p} | {} | {} | {} | {} |",
                span(&c["cpu_us_per_connection"], f1),
                span(&c["cpu_us_per_round_trip"], f1),
                span(&c["cpu_ms_per_gb"], f0),
                span(&c["cpu_ns_per_udp_packet"], f0),
            );
        }
    }
    huge_table(s, &rows, &peers);
    s.push_str("\nThe UDP sink never answers, so conntrack keeps the flow NEW and every datagram of it walks the filter rules again (an established TCP flow skips them): with 10 000 published ports, Docker's per-port ACCEPT rules make every datagram pay what only the first packet of a TCP connection pays. berth's datapath does not involve netfilter.\n");
    for b in BERTHS {
        let _ = writeln!(
            s,
            "\n### {b} against each peer (> 1 means {b} does better: higher rate, or lower latency/CPU)\n"
        );
        let others: Vec<&String> = peers.iter().filter(|p| p.as_str() != b).collect();
        s.push_str("| metric | ports |");
        for p in &others {
            let _ = write!(s, " vs {p} |");
        }
        s.push_str("\n|---|---:|");
        for _ in &others {
            s.push_str("---:|");
        }
        s.push('\n');
        for (key, label, hb) in METRICS {
            let counts: &[u64] = if key == "connections_per_s" {
                &[1, 10_000, 65_000]
            } else {
                &[1, 10_000]
            };
            for &ports in counts {
                let _ = write!(s, "| {label} | {ports} |");
                for p in &others {
                    let _ = write!(
                        s,
                        " {} |",
                        r2(advantage(
                            m(&rows, b, ports, key),
                            m(&rows, p, ports, key),
                            hb
                        ))
                    );
                }
                s.push('\n');
            }
        }
    }
}

/// `65000` as "65 000".
fn fmt_ports(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The 65 000-port phase: connections/s only, the peers measured there.
fn huge_table(s: &mut String, rows: &[Value], peers: &[String]) {
    const PORTS: u64 = 65_000;
    if !peers.iter().any(|p| cell(rows, p, PORTS).is_some()) {
        return;
    }
    s.push_str("\n### 65 000 published ports (64 997 extra mappings on the highest ports, the 3 measured ones last; connections/s only)\n\n**× direct per round**: each repetition's rate over the direct path's in the same repetition, median (min–max); the machine's load drifts between rounds more than the peers differ, and a ratio within a round cancels that drift.\n\n| peer | connections/s | × direct | × direct per round | × iptables | µs CPU per connection |\n|---|---:|---:|---:|---:|---:|\n");
    for p in peers {
        let Some(c) = cell(rows, p, PORTS) else {
            continue;
        };
        let x = |peer: &str| {
            r2(advantage(
                m(rows, p, PORTS, "connections_per_s"),
                m(rows, peer, PORTS, "connections_per_s"),
                true,
            ))
        };
        let _ = writeln!(
            s,
            "| {p} | {} | {} | {} | {} | {} |",
            span(&c["connections_per_s"], f0),
            x("direct"),
            per_round_ratio(rows, p, "direct", PORTS).unwrap_or_else(|| "—".into()),
            x("iptables-dnat"),
            span(&c["cpu_us_per_connection"], f1),
        );
    }
}

/// Median (min–max) of `peer`'s connections/s over `base`'s, repetition by
/// repetition (samples are stored in repetition order).
fn per_round_ratio(rows: &[Value], peer: &str, base: &str, ports: u64) -> Option<String> {
    let samples = |p: &str| -> Option<Vec<f64>> {
        cell(rows, p, ports)?["connections_per_s"]["samples"]
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    let (a, b) = (samples(peer)?, samples(base)?);
    let mut v: Vec<f64> = a
        .iter()
        .zip(&b)
        .filter(|(_, d)| **d > 0.0)
        .map(|(x, d)| x / d)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(format!(
        "{:.2} ({:.2}–{:.2})",
        super::stats::percentile(&v, 50.0),
        v[0],
        v[v.len() - 1]
    ))
}

fn control_table(s: &mut String, r: &Value) {
    let rows = r["control_plane"].as_array().cloned().unwrap_or_default();
    s.push_str(
        "| system | operation | publish ms | unpublish ms | how |\n|---|---|---:|---:|---|\n",
    );
    for op in [
        "range_1000",
        "range_1000_full_flow_table",
        "single_10000",
        "one_more_at_10000",
    ] {
        for row in rows.iter().filter(|x| x["operation"] == op) {
            let scaled = if row["scaled_from"].is_null() {
                String::new()
            } else {
                format!(" **(scaled from {})**", row["scaled_from"])
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {}{} |",
                row["system"].as_str().unwrap_or(""),
                op.replace('_', " "),
                span(&row["publish_ms"], f1),
                span(&row["unpublish_ms"], f1),
                row["how"].as_str().unwrap_or(""),
                scaled
            );
        }
    }
}

pub struct Memory {
    pub berth_maps: f64,
    pub berth_maps_empty: f64,
    pub berth_rss: f64,
    pub berth_pss: f64,
    pub proxy_rss_1000: f64,
    pub proxy_pss_1000: f64,
}

pub fn memory(r: &Value) -> Option<Memory> {
    let mm = &r["memory"];
    let n = mm["docker_proxy_measured"].as_f64()?;
    let f = |v: &Value| v.as_f64();
    Some(Memory {
        berth_maps: f(&mm["berth_1000"]["maps_memlock_bytes"])?,
        berth_maps_empty: f(&mm["berth_empty"]["maps_memlock_bytes"])?,
        berth_rss: f(&mm["berth_1000"]["daemon_rss_bytes"])?,
        berth_pss: f(&mm["berth_1000"]["daemon_pss_bytes"])?,
        proxy_rss_1000: f(&mm["docker_proxy_100"]["rss_bytes"])? * 1000.0 / n,
        proxy_pss_1000: f(&mm["docker_proxy_100"]["pss_bytes"])? * 1000.0 / n,
    })
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn memory_table(s: &mut String, r: &Value) {
    let Some(x) = memory(r) else {
        s.push_str("(not measured)\n");
        return;
    };
    let berth = x.berth_maps + x.berth_rss;
    let _ = writeln!(
        s,
        "| what | bytes |\n|---|---:|\n\
         | berth maps (kernel `memlock` of every map, 1 000 ports published) | {} |\n\
         | berth maps with nothing published | {} |\n\
         | berth daemon RSS / PSS | {} / {} |\n\
         | **berth total (maps + daemon RSS)** | **{}** |\n\
         | docker-proxy × 1 000, RSS (100 processes measured, ×10) | {} |\n\
         | docker-proxy × 1 000, PSS (100 processes measured, ×10) | {} |\n\
         | **docker-proxy RSS ÷ berth total** | **{:.1}×** |\n\
         | docker-proxy PSS ÷ berth total | {:.1}× |\n",
        mib(x.berth_maps),
        mib(x.berth_maps_empty),
        mib(x.berth_rss),
        mib(x.berth_pss),
        mib(berth),
        mib(x.proxy_rss_1000),
        mib(x.proxy_pss_1000),
        x.proxy_rss_1000 / berth,
        x.proxy_pss_1000 / berth,
    );
    let maps = r["memory"]["berth_1000"]["maps"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut maps: Vec<(String, f64)> = maps
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap_or(0.0)))
        .collect();
    maps.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    s.push_str("\nberth's maps, largest first (map type 1 = hash, 6 = per-CPU array, 9 = LRU hash):\n\n| map | memlock |\n|---|---:|\n");
    for (k, v) in maps.iter().filter(|m| m.1 > 0.0) {
        let k = k.split_once(' ').map(|x| x.1).unwrap_or(k);
        let _ = writeln!(s, "| {k} | {} |", mib(*v));
    }
    s.push_str("\nThe daemon runs with its default capacities (`--max-flows`, `--max-mappings`; the control-plane rows above use `--max-flows 262144`). berth's plain hash maps allocate an entry when it is inserted (BPF_F_NO_PREALLOC): an empty one costs its bucket array, 16 bytes per slot of capacity, and each published port adds its two entries. The LRU tables (unestablished flows, socket translations, fragments, port MACs) cannot be allocated on use and are preallocated at their (smaller) capacities.\n");
}

fn dp_rows(r: &Value) -> Vec<Value> {
    r["datapath"].as_array().cloned().unwrap_or_default()
}

/// The current build's median for a path.
fn dp(rows: &[Value], path: &str, n: u64, rules: Option<u64>) -> Option<f64> {
    dp_of(rows, None, path, n, rules)
}

/// A build's median for a path (`None`: the current build's rows, which
/// carry no `build`).
fn dp_of(
    rows: &[Value],
    build: Option<&str>,
    path: &str,
    n: u64,
    rules: Option<u64>,
) -> Option<f64> {
    rows.iter()
        .find(|x| {
            x["build"].as_str() == build
                && x["path"] == path
                && x["mappings"].as_u64() == Some(n)
                && x["rules"].as_u64() == rules
        })
        .map(|x| med(&x["ns_per_packet"]))
}

/// A path's cost above its hook's empty-program floor, at 1 mapping.
fn above_floor(rows: &[Value], build: Option<&str>, path: &str, rules: Option<u64>) -> Option<f64> {
    let floor = if path.ends_with("xdp") {
        "floor_xdp"
    } else {
        "floor_tc"
    };
    Some(dp_of(rows, build, path, 1, rules)? - dp_of(rows, build, floor, 0, None)?)
}

/// This build's cost above the floor ÷ the previous release's, at 1 mapping.
fn vs_previous(rows: &[Value], path: &str, rules: Option<u64>) -> Option<f64> {
    let prev = above_floor(rows, Some(super::datapath::PREVIOUS), path, rules)?;
    let cur = above_floor(rows, None, path, rules)?;
    (prev > 0.0).then(|| cur / prev)
}

/// The established TCP path against the previous release: (TC: the worse
/// of ingress hit and reply, XDP: ingress hit).
fn established_vs_previous(rows: &[Value]) -> (Option<f64>, Option<f64>) {
    let tc = match (
        vs_previous(rows, "ingress_hit_tc", None),
        vs_previous(rows, "reply_tc", None),
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    (tc, vs_previous(rows, "ingress_hit_xdp", None))
}

const DP_PATHS: [(&str, Option<u64>); 19] = [
    ("ingress_hit_tc", None),
    ("ingress_hit_xdp", None),
    ("ingress_hit_tc_wildcard_host", None),
    ("ingress_hit_xdp_wildcard_host", None),
    ("ingress_miss_tc", None),
    ("ingress_miss_xdp", None),
    ("reply_tc", None),
    ("policy_tracked_to_ctr", None),
    ("policy_tracked_from_ctr", None),
    ("from_ctr_tc", None),
    ("to_ctr_tc", None),
    ("from_ctr_no_sg_host", None),
    ("to_ctr_no_sg_host", None),
    ("policy_to_ctr", Some(1)),
    ("policy_to_ctr", Some(300)),
    ("policy_from_ctr", Some(1)),
    ("policy_from_ctr", Some(300)),
    ("ingress_policy_tc", Some(1)),
    ("ingress_policy_tc", Some(300)),
];

fn datapath_table(s: &mut String, r: &Value) {
    let rows = dp_rows(r);
    let floor_tc = dp(&rows, "floor_tc", 0, None).unwrap_or(f64::NAN);
    let floor_xdp = dp(&rows, "floor_xdp", 0, None).unwrap_or(f64::NAN);
    let _ = writeln!(
        s,
        "Empty-program floor: TC {floor_tc:.1} ns, XDP {floor_xdp:.1} ns per run.\n\n\
         | path | rules | ns at 1 mapping | at 1 000 | at 65 000 | above floor at 1 | × floor at 1 | 65 000 vs 1 |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (path, rules) in DP_PATHS {
        let floor = if path.ends_with("xdp") {
            floor_xdp
        } else {
            floor_tc
        };
        let v: Vec<Option<f64>> = [1u64, 1_000, 65_000]
            .iter()
            .map(|n| dp(&rows, path, *n, rules))
            .collect();
        let fmt = |x: Option<f64>| x.map(f1).unwrap_or_else(|| "—".into());
        let change = match (v[0], v[2]) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:+.0} %", (b / a - 1.0) * 100.0),
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {path} | {} | {} | {} | {} | {} | {} | {change} |",
            rules.map(|r| r.to_string()).unwrap_or_default(),
            fmt(v[0]),
            fmt(v[1]),
            fmt(v[2]),
            v[0].map(|x| f1(x - floor)).unwrap_or_default(),
            v[0].map(|x| f2(x / floor)).unwrap_or_default(),
        );
    }
    s.push_str("\nEach figure is the median of single runs, each on a fresh copy of its frame (BPF_PROG_TEST_RUN's repeat would run the program again on the frame it had already translated), so it includes the kernel's per-run timer overhead; the floor is an empty program timed the same way. ingress_hit: an ACK of an established TCP flow to a published port (lookup, flow refresh, DNAT, checksums, FIB, redirect). ingress_miss: a packet to an unpublished port of the host. reply: the container's ACK of that flow, SNAT'd back. policy_*: a new flow every rule of which is evaluated and refused (so nothing gets tracked between runs); policy_tracked_to_ctr / _from_ctr: an ACK of an established security-group flow, each way. from_ctr_tc / to_ctr_tc: a container without security groups sending / receiving, on its veth; _no_sg_host: the same where no endpoint has policy (the daemon's flag lets the hooks skip their lookups). ingress_hit_*_wildcard_host: the hit where every mapping is on the wildcard address (the daemon's flag lets the service lookup skip the exact-address probe). ingress_policy_tc: a new north-south flow to a published port judged against the container's rules.\n");
    previous_table(s, r);
    counting_table(s, r);
}

/// What counting costs per packet (issue 14): this build's path minus the
/// same tree without counters, each above its own floor, at `n` mappings.
fn counting_cost(rows: &[Value], path: &str, n: u64) -> Option<f64> {
    let floor = if path.ends_with("xdp") {
        "floor_xdp"
    } else {
        "floor_tc"
    };
    let above =
        |build| Some(dp_of(rows, build, path, n, None)? - dp_of(rows, build, floor, 0, None)?);
    Some(above(None)? - above(Some(super::datapath::UNCOUNTED))?)
}

const COUNTED_PATHS: [&str; 3] = ["ingress_hit_tc", "ingress_hit_xdp", "reply_tc"];

/// The object without counters beside this one (rows with `build`
/// `uncounted`), when measured.
fn counting_table(s: &mut String, r: &Value) {
    let rows = dp_rows(r);
    let without = Some(super::datapath::UNCOUNTED);
    if dp_of(&rows, without, "floor_tc", 0, None).is_none() {
        s.push_str("
The object without counters was not measured in this run (`cargo xtask bench` builds it with the ebpf crate's `bench-uncounted` feature).
");
        return;
    }
    s.push_str("
### What counting costs (issue 14)

This tree's eBPF object built with the ebpf crate's `bench-uncounted` feature (no per-binding counters, no per-flow packet/byte/flag counts; the datapath's own drop and event counters stay), loaded into the same namespace and measured in the same rounds; ns above each object's own empty-program floor.

| path | mappings | without counters | with | counting costs |
|---|---:|---:|---:|---:|
");
    for path in COUNTED_PATHS {
        for n in [1u64, 1_000, 65_000] {
            let floor = if path.ends_with("xdp") {
                "floor_xdp"
            } else {
                "floor_tc"
            };
            let above = |build| {
                Some(dp_of(&rows, build, path, n, None)? - dp_of(&rows, build, floor, 0, None)?)
            };
            let fmt = |x: Option<f64>| x.map(f1).unwrap_or_else(|| "—".into());
            let _ = writeln!(
                s,
                "| {path} | {n} | {} | {} | {} ns |",
                fmt(above(without)),
                fmt(above(None)),
                fmt(counting_cost(&rows, path, n)),
            );
        }
    }
}

/// The previous release, measured in the same run (rows with `build`).
fn previous_table(s: &mut String, r: &Value) {
    let rows = dp_rows(r);
    let prev = Some(super::datapath::PREVIOUS);
    if dp_of(&rows, prev, "floor_tc", 0, None).is_none() {
        s.push_str("\nThe previous release was not measured in this run (`cargo xtask bench` builds it from git; see bench/README.md).\n");
        return;
    }
    let _ = writeln!(
        s,
        "\n### Against the previous release\n\nThe previous release's eBPF object ({}), loaded into the same namespace with the same maps and frames and measured in the same rounds, alternately with this one; at 1 mapping, ns above each build's own empty-program floor.\n\n| path | rules | previous | this build | × previous |\n|---|---:|---:|---:|---:|",
        r["datapath_previous_release"].as_str().unwrap_or("commit not recorded")
    );
    for (path, rules) in DP_PATHS {
        let p = above_floor(&rows, prev, path, rules);
        let c = above_floor(&rows, None, path, rules);
        let fmt = |x: Option<f64>| x.map(f1).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "| {path} | {} | {} | {} | {} |",
            rules.map(|r| r.to_string()).unwrap_or_default(),
            fmt(p),
            fmt(c),
            vs_previous(&rows, path, rules)
                .map(f2)
                .unwrap_or_else(|| "—".into()),
        );
    }
    let (tc, xdp) = established_vs_previous(&rows);
    let _ = writeln!(
        s,
        "\nEstablished TCP path (the worse of ingress hit and reply on TC; ingress hit on XDP): {} × the previous release on TC, {} × on XDP (goal: ≤ 1.10×).",
        tc.map(f2).unwrap_or_else(|| "—".into()),
        xdp.map(f2).unwrap_or_else(|| "—".into()),
    );
}

fn veth_table(s: &mut String, r: &Value) {
    let rows = r["veth"]["rows"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        s.push_str("(not measured)\n");
        return;
    }
    let stack = rows.iter().find(|x| x["variant"] == "stack");
    s.push_str("| variant | iperf3 Gbit/s | × stack | UDP kpps delivered | × stack | CPU ms per GB | CPU ns per packet |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for x in &rows {
        let ratio = |k: &str| r2(stack.map(|st| med(&x[k]) / med(&st[k])));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x["variant"].as_str().unwrap_or(""),
            span(&x["throughput_gbps"], f2),
            ratio("throughput_gbps"),
            span(&x["udp_pps"], kpps),
            ratio("udp_pps"),
            span(&x["cpu_ms_per_gb"], f0),
            span(&x["cpu_ns_per_udp_packet"], f0),
        );
    }
    let _ = writeln!(
        s,
        "\nOffloads of `up0`'s peer (`wp-host`) without XDP: `{}`; with an XDP program on `up0`: `{}`.",
        r["veth"]["uplink_peer_offloads_without_xdp"].as_str().unwrap_or("?"),
        r["veth"]["uplink_peer_offloads_with_xdp"].as_str().unwrap_or("?")
    );
}

fn goal(
    s: &mut String,
    what: &str,
    tc: Option<f64>,
    xdp: Option<f64>,
    target: &str,
    ok: fn(f64) -> bool,
) {
    let f = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!(
            "{} {}",
            fmt_num(v),
            if ok(v) { "met" } else { "**missed**" }
        ),
        _ => "—".into(),
    };
    let _ = writeln!(s, "| {what} | {target} | {} | {} |", f(tc), f(xdp));
}

fn goals(s: &mut String, r: &Value) {
    let rows = topo_rows(r);
    let adv = |b: &str, p: &str, ports: u64, k: &str, hb: bool| {
        advantage(m(&rows, b, ports, k), m(&rows, p, ports, k), hb)
    };
    s.push_str("| goal (issue 6) | target | berth-tc | berth-xdp |\n|---|---|---:|---:|\n");
    let both = |b: &dyn Fn(&str) -> Option<f64>| (b("berth-tc"), b("berth-xdp"));
    let (a, b) = both(&|x| adv(x, "direct", 1, "connections_per_s", true));
    goal(
        s,
        "connections/s vs direct, 1 port",
        a,
        b,
        "≥ 0.95×",
        |v| v >= 0.95,
    );
    for (ports, what) in [
        (10_000, "connections/s vs direct, 10 000 ports (issue 11)"),
        (65_000, "connections/s vs direct, 65 000 ports (issue 11)"),
    ] {
        let (a, b) = both(&|x| adv(x, "direct", ports, "connections_per_s", true));
        goal(s, what, a, b, "≥ 0.95×", |v| v >= 0.95);
    }
    let (a, b) = both(&|x| adv(x, "iptables-dnat", 1, "connections_per_s", true));
    goal(
        s,
        "connections/s vs iptables, 1 port",
        a,
        b,
        "≥ 1×",
        |v| v >= 1.0,
    );
    let (a, b) = both(&|x| adv(x, "docker-proxy", 1, "connections_per_s", true));
    goal(
        s,
        "connections/s vs docker-proxy, 1 port",
        a,
        b,
        "≥ 1.5×",
        |v| v >= 1.5,
    );
    let (a, b) = both(&|x| adv(x, "iptables-dnat", 10_000, "connections_per_s", true));
    goal(
        s,
        "connections/s vs iptables, 10 000 ports",
        a,
        b,
        "≥ 20×",
        |v| v >= 20.0,
    );
    let (a, b) = both(&|x| adv(x, "direct", 1, "throughput_gbps", true));
    goal(s, "throughput vs direct", a, b, "≥ 0.95×", |v| v >= 0.95);
    let (a, b) = both(&|x| adv(x, "docker-proxy", 1, "throughput_gbps", true));
    goal(s, "throughput vs docker-proxy", a, b, "≥ 1.3×", |v| {
        v >= 1.3
    });
    let (a, b) = both(&|x| adv(x, "iptables-dnat", 1, "rtt_p99_us", false));
    goal(
        s,
        "p99 latency: iptables ÷ berth",
        a,
        b,
        "≥ 1× (p99 ≤ iptables')",
        |v| v >= 1.0,
    );
    let dpr = dp_rows(r);
    let ftc = dp(&dpr, "floor_tc", 0, None);
    let fxdp = dp(&dpr, "floor_xdp", 0, None);
    let hit = |p: &str, n: u64| dp(&dpr, p, n, None);
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    goal(
        s,
        "ingress hit ÷ empty-program floor",
        div(hit("ingress_hit_tc", 1), ftc),
        div(hit("ingress_hit_xdp", 1), fxdp),
        "≤ 3×",
        |v| v <= 3.0,
    );
    goal(
        s,
        "ingress hit at 65 000 ÷ at 1 mapping",
        div(hit("ingress_hit_tc", 65_000), hit("ingress_hit_tc", 1)),
        div(hit("ingress_hit_xdp", 65_000), hit("ingress_hit_xdp", 1)),
        "≤ 1.10×",
        |v| v <= 1.10,
    );
    let (tc, xdp) = established_vs_previous(&dpr);
    goal(
        s,
        "established TCP path ÷ previous release, above the floor (issue 9)",
        tc,
        xdp,
        "≤ 1.10×",
        |v| v <= 1.10,
    );
    goal(
        s,
        "counting's cost on the ingress hit path, ns per packet at 1 mapping (issue 14)",
        counting_cost(&dpr, "ingress_hit_tc", 1),
        counting_cost(&dpr, "ingress_hit_xdp", 1),
        "≤ 5 ns",
        |v| v <= 5.0,
    );
    let cp = r["control_plane"].as_array().cloned().unwrap_or_default();
    let range = cp
        .iter()
        .find(|x| x["system"] == "berth" && x["operation"] == "range_1000")
        .map(|x| med(&x["publish_ms"]));
    goal(
        s,
        "publish a 1 000-port range (API), ms",
        range,
        range,
        "< 50 ms",
        |v| v < 50.0,
    );
    let ratio = |op: &str| {
        cp.iter()
            .find(|x| x["system"] == "berth" && x["operation"] == op)
            .and_then(|x| div(Some(med(&x["unpublish_ms"])), Some(med(&x["publish_ms"]))))
    };
    // The control plane runs in TC mode only; the XDP column stays empty.
    goal(
        s,
        "unpublish ÷ publish, 1 000-port range (issue 10)",
        ratio("range_1000"),
        None,
        "≤ 2×",
        |v| v <= 2.0,
    );
    goal(
        s,
        "the same with 200 000 of its flows tracked",
        ratio("range_1000_full_flow_table"),
        None,
        "≤ 2×",
        |v| v <= 2.0,
    );
    let mem = memory(r).map(|x| x.proxy_rss_1000 / (x.berth_maps + x.berth_rss));
    goal(
        s,
        "memory for 1 000 ports: docker-proxy RSS ÷ berth",
        mem,
        mem,
        "≥ 200×",
        |v| v >= 200.0,
    );
}

/// `docker run -p` of a range in each Docker mode, ratios against
/// docker-proxy (how many times slower or bigger docker-proxy is).
fn docker_table(s: &mut String, r: &Value) {
    let d = &r["docker"];
    let rows = d["rows"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return;
    }
    let ports = d["ports"].as_u64().unwrap_or(0);
    let first = d["first_port"].as_u64().unwrap_or(0);
    let _ = writeln!(
        s,
        "\n## Docker: `docker run -d -p {first}-{last}:{first}-{last}`\n\n\
         A real dockerd (Debian's docker.io) in the topology's host namespace, one per mode; the container runs busybox httpd on the range's first and last ports. \
         **run**: from `docker run` until both ports answer a GET from the client namespace *and* the publish is visible (all {ports} ports in berth's `map ls`, or a docker-proxy process for each of the {ports} host ports). \
         **rm**: from `docker rm -f` until both ports refuse and nothing is published. \
         **CLI**: when `docker run` / `docker rm -f` itself returned. \
         **memory**: summed RSS and PSS of the proxy processes (dockerd 20.10 starts one per port and address family, 0.0.0.0 and ::) plus the berth daemon where one runs, with the range published; summed RSS counts the pages the proxies share once per process, PSS divides them among the sharers. \
         Runs per mode: {} (with more, medians and (min–max)). \
         ×: docker-proxy's figure ÷ this mode's.{}\n",
        rows.first().map_or(Value::Null, |x| x["reps"].clone()),
        if r["quick"].as_bool() == Some(true) {
            format!(" Quick run: {ports} ports instead of the issue's 1 000.")
        } else {
            String::new()
        },
        last = first + ports.saturating_sub(1),
    );
    s.push_str("| mode | ports | run ms | × | CLI ms | rm ms | × | CLI ms | proxies | RSS | × | PSS | × |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let base = rows.iter().find(|x| x["mode"] == "docker-proxy");
    let ratio = |row: &Value, get: &dyn Fn(&Value) -> Option<f64>| -> String {
        r2(base.and_then(get).zip(get(row)).map(|(b, v)| b / v))
    };
    let run = |x: &Value| x["run_ms"]["median"].as_f64();
    let rm = |x: &Value| x["rm_ms"]["median"].as_f64();
    let rss = |x: &Value| x["memory"]["rss_bytes"].as_f64();
    let pss = |x: &Value| x["memory"]["pss_bytes"].as_f64();
    for row in &rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} |",
            row["mode"].as_str().unwrap_or(""),
            row["ports"],
            span(&row["run_ms"], f0),
            ratio(row, &run),
            span(&row["run_cli_ms"], f0),
            span(&row["rm_ms"], f0),
            ratio(row, &rm),
            span(&row["rm_cli_ms"], f0),
            row["memory"]["proxy_processes"],
            if row["memory"]["berth_daemon"] == true {
                " + berth daemon"
            } else {
                ""
            },
            rss(row).map_or("?".into(), mib),
            ratio(row, &rss),
            pss(row).map_or("?".into(), mib),
            ratio(row, &pss),
        );
    }
    for row in &rows {
        let _ = writeln!(
            s,
            "\n- **{}**: {}",
            row["mode"].as_str().unwrap_or(""),
            row["setup"].as_str().unwrap_or("")
        );
    }
}

pub fn markdown(r: &Value) -> String {
    let quick = r["quick"].as_bool() == Some(true);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# berth benchmark results\n\nCommit: {}. Machine: {}. Mode: {}. Generated by `cargo xtask bench{}` in {:.0} s. \
         Medians over {} interleaved repetitions, (min–max) beside them. Ratios matter more than absolute numbers on a shared VM; \
         CPU figures are for the whole machine, so anything else running on it counts too.\n",
        r["commit"].as_str().unwrap_or("not recorded"),
        r["machine"].as_str().unwrap_or("?"),
        if quick { "quick" } else { "full" },
        if quick { " --quick" } else { "" },
        r["elapsed_s"].as_f64().unwrap_or(0.0),
        r["settings"]["reps"],
    );
    s.push_str("\n## Peers\n\nEach on a topology of its own (client → host uplink `up0` → `docker0` → container), built once; checksum and segmentation offloads on.\n\n");
    for p in r["topology"]["peers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "- **{}**: {}{}",
            p["peer"].as_str().unwrap_or(""),
            p["setup"].as_str().unwrap_or(""),
            if p["scaled"] == false {
                " — not measured at 10 000 ports: that would take 10 000 processes (dockerd starts one per port); a proxy's per-connection work does not depend on how many other proxies run"
            } else {
                ""
            }
        );
    }
    let st = &r["settings"];
    let _ = writeln!(
        s,
        "\nLoad: connections/s from one client making sequential short connections (connect, 18-byte request, 40-byte answer, server closes) for {} s; \
         latency from {} round trips of {} bytes on one persistent connection (TCP_NODELAY); iperf3 for {} s; \
         UDP: one sender thread, {}-byte datagrams (64-byte frames) from one source port, as fast as sendmmsg goes for {} s, counted at the container.",
        st["conn_secs"], st["rtt_n"], super::load::PING_BYTES, st["iperf_secs"], super::load::UDP_PAYLOAD, st["udp_secs"]
    );
    s.push_str("\n## Goals\n\n");
    goals(&mut s, r);
    s.push_str("\n## Through the namespace topology\n");
    topology_tables(&mut s, r);
    s.push_str("\n## Control plane\n\nWall-clock time of each operation in the host namespace, medians over repetitions.\n\n");
    control_table(&mut s, r);
    s.push_str("\n## Memory for 1 000 published ports\n\n");
    memory_table(&mut s, r);
    docker_table(&mut s, r);
    s.push_str("\n## Datapath cost per packet (BPF_PROG_TEST_RUN)\n\n");
    datapath_table(&mut s, r);
    s.push_str("\n## XDP vs TC on veth\n\nThe direct path (no translation) with four ways through `up0`; see bench/README.md.\n\n");
    veth_table(&mut s, r);
    s
}

// ---------------------------------------------------------------- charts

fn peer_chart(
    r: &Value,
    metric: &str,
    title: &str,
    unit: &str,
    higher_better: bool,
    port_counts: &[u64],
) -> String {
    let rows = topo_rows(r);
    let peers = peers(r);
    let series: Vec<Series> = port_counts
        .iter()
        .map(|ports| Series {
            name: match *ports {
                1 => "1 port".into(),
                n => format!("{} ports", fmt_ports(n)),
            },
            values: peers.iter().map(|p| m(&rows, p, *ports, metric)).collect(),
            notes: peers
                .iter()
                .map(|p| {
                    if p == "berth-tc" {
                        return None;
                    }
                    advantage(
                        m(&rows, "berth-tc", *ports, metric),
                        m(&rows, p, *ports, metric),
                        higher_better,
                    )
                    .map(|a| format!("tc {a:.2}×"))
                })
                .collect(),
        })
        .collect();
    bar_chart(
        title,
        &format!(
            "medians; \"tc N×\" above a bar: berth-tc does N× {} than that peer (> 1 = berth-tc better) · {}",
            if higher_better { "more" } else { "better (lower)" },
            r["machine"].as_str().unwrap_or("")
        ),
        unit,
        &peers,
        &series,
        false,
    )
}

fn ratio_label(a: f64) -> String {
    if a >= 10.0 {
        format!("{a:.0}×")
    } else {
        format!("{a:.2}×")
    }
}

fn control_chart(r: &Value) -> String {
    let rows = r["control_plane"].as_array().cloned().unwrap_or_default();
    let systems = [
        "berth",
        "iptables-dnat",
        "nftables-dnat",
        "nftables-map",
        "docker-proxy",
    ];
    let get = |sys: &str, op: &str, k: &str| {
        rows.iter()
            .find(|x| x["system"] == sys && x["operation"] == op)
            .map(|x| med(&x[k]))
    };
    let series: Vec<Series> = [
        ("publish 1 000-port range", "range_1000", "publish_ms"),
        ("unpublish it", "range_1000", "unpublish_ms"),
        (
            "publish 10 000 single mappings",
            "single_10000",
            "publish_ms",
        ),
        ("unpublish them", "single_10000", "unpublish_ms"),
    ]
    .iter()
    .map(|(name, op, k)| Series {
        name: name.to_string(),
        values: systems.iter().map(|sys| get(sys, op, k)).collect(),
        notes: systems
            .iter()
            .map(|sys| {
                if *sys == "berth" {
                    None
                } else {
                    advantage(get("berth", op, k), get(sys, op, k), false).map(ratio_label)
                }
            })
            .collect(),
    })
    .collect();
    bar_chart(
        "Control plane: time to publish and unpublish",
        "milliseconds, log scale; \"N×\" = berth (API) is N× faster; docker-proxy scaled from 100 processes",
        "ms (log)",
        &systems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        &series,
        true,
    )
}

fn memory_chart(r: &Value) -> Option<String> {
    let x = memory(r)?;
    let berth = x.berth_maps + x.berth_rss;
    let cats = vec![
        "berth maps".to_string(),
        "berth daemon RSS".into(),
        "berth total".into(),
        "docker-proxy ×1000 RSS".into(),
        "docker-proxy ×1000 PSS".into(),
    ];
    let vals = [
        x.berth_maps,
        x.berth_rss,
        berth,
        x.proxy_rss_1000,
        x.proxy_pss_1000,
    ];
    let mb = 1024.0 * 1024.0;
    Some(bar_chart(
        "Memory for 1 000 published ports",
        "MiB, log scale; docker-proxy scaled from 100 processes; \"N×\" = N× berth's total",
        "MiB (log)",
        &cats,
        &[Series {
            name: "memory".into(),
            values: vals.iter().map(|v| Some(v / mb)).collect(),
            notes: vals
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if i >= 3 {
                        Some(format!("{:.0}×", v / berth))
                    } else {
                        None
                    }
                })
                .collect(),
        }],
        true,
    ))
}

fn datapath_chart(r: &Value) -> String {
    let rows = dp_rows(r);
    let mut lines: Vec<Line> = [
        "ingress_hit_tc",
        "ingress_hit_xdp",
        "ingress_miss_tc",
        "ingress_miss_xdp",
        "reply_tc",
    ]
    .iter()
    .map(|p| Line {
        name: p.to_string(),
        points: [1u64, 1_000, 65_000]
            .iter()
            .filter_map(|n| dp(&rows, p, *n, None).map(|v| (*n as f64, v)))
            .collect(),
        dashed: false,
    })
    .collect();
    for f in ["floor_tc", "floor_xdp"] {
        if let Some(v) = dp(&rows, f, 0, None) {
            lines.push(Line {
                name: f.to_string(),
                points: vec![(1.0, v), (1_000.0, v), (65_000.0, v)],
                dashed: true,
            });
        }
    }
    line_chart(
        "Datapath cost per packet vs number of mappings",
        "BPF_PROG_TEST_RUN, ns per run (median); dashed: empty-program floor; security-group paths are in the table",
        "published mappings (log)",
        "ns per packet",
        &lines,
    )
}

fn veth_chart(r: &Value, metric: &str, title: &str, unit: &str, scale: f64) -> Option<String> {
    let rows = r["veth"]["rows"].as_array()?;
    let stack = rows
        .iter()
        .find(|x| x["variant"] == "stack")
        .map(|x| med(&x[metric]));
    let cats: Vec<String> = rows
        .iter()
        .map(|x| x["variant"].as_str().unwrap_or("").to_string())
        .collect();
    Some(bar_chart(
        title,
        "direct path, no translation, one hook on up0 at a time; label: × the stack",
        unit,
        &cats,
        &[Series {
            name: metric.into(),
            values: rows.iter().map(|x| Some(med(&x[metric]) / scale)).collect(),
            notes: rows
                .iter()
                .map(|x| stack.map(|s| format!("{:.2}×", med(&x[metric]) / s)))
                .collect(),
        }],
        false,
    ))
}

/// Writes every chart into `dir` with `suffix` (`""` or `"-quick"`);
/// returns the file names.
pub fn write_charts(r: &Value, dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut charts: Vec<(&str, String)> = Vec::new();
    if !topo_rows(r).is_empty() {
        charts.extend([
            (
                "connections",
                peer_chart(
                    r,
                    "connections_per_s",
                    "TCP connections per second",
                    "connections/s",
                    true,
                    &[1, 10_000, 65_000],
                ),
            ),
            (
                "latency-p99",
                peer_chart(
                    r,
                    "rtt_p99_us",
                    "Request latency p99, persistent connection",
                    "µs",
                    false,
                    &[1, 10_000],
                ),
            ),
            (
                "latency-p50",
                peer_chart(
                    r,
                    "rtt_p50_us",
                    "Request latency p50, persistent connection",
                    "µs",
                    false,
                    &[1, 10_000],
                ),
            ),
            (
                "throughput",
                peer_chart(
                    r,
                    "throughput_gbps",
                    "TCP throughput (iperf3)",
                    "Gbit/s",
                    true,
                    &[1, 10_000],
                ),
            ),
            (
                "udp",
                peer_chart(
                    r,
                    "udp_pps",
                    "UDP small packets delivered per second",
                    "packets/s",
                    true,
                    &[1, 10_000],
                ),
            ),
            (
                "cpu-per-connection",
                peer_chart(
                    r,
                    "cpu_us_per_connection",
                    "CPU time per connection (whole machine)",
                    "µs",
                    false,
                    &[1, 10_000],
                ),
            ),
        ]);
    }
    if r["control_plane"].is_array() {
        charts.push(("control-plane", control_chart(r)));
    }
    if !dp_rows(r).is_empty() {
        charts.push(("datapath", datapath_chart(r)));
    }
    if let Some(c) = memory_chart(r) {
        charts.push(("memory", c));
    }
    if let Some(c) = veth_chart(
        r,
        "throughput_gbps",
        "XDP vs TC on veth: TCP throughput",
        "Gbit/s",
        1.0,
    ) {
        charts.push(("veth-throughput", c));
    }
    if let Some(c) = veth_chart(
        r,
        "udp_pps",
        "XDP vs TC on veth: UDP packets delivered per second",
        "packets/s",
        1.0,
    ) {
        charts.push(("veth-udp", c));
    }
    let mut names = Vec::new();
    for (name, svg) in charts {
        let file = format!("{name}{suffix}.svg");
        std::fs::write(dir.join(&file), svg)?;
        names.push(file);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(peer: &str, samples: &[f64]) -> Value {
        json!({"peer": peer, "ports": 65_000, "connections_per_s": {"samples": samples}})
    }

    #[test]
    fn the_per_round_ratio_pairs_repetitions_not_medians() {
        // Medians of the two columns give 1900 / 2000 = 0.95; round by
        // round berth ran at 1.90, 0.45 and 0.90 of the direct path.
        let rows = [
            row("direct", &[1000.0, 2000.0, 3000.0]),
            row("berth-xdp", &[1900.0, 900.0, 2700.0]),
        ];
        assert_eq!(
            per_round_ratio(&rows, "berth-xdp", "direct", 65_000).as_deref(),
            Some("0.90 (0.45–1.90)")
        );
        assert_eq!(per_round_ratio(&rows, "berth-tc", "direct", 65_000), None);
    }
}
