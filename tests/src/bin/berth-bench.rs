//! `cargo xtask bench`: berth's first measurements, side by side with the
//! peers in one run.
//!
//! 1. Datapath cost per packet via BPF_PROG_TEST_RUN (ingress hit, miss,
//!    reply; TC and XDP) at 1, 1 000 and 65 000 mappings, beside an empty
//!    program's floor.
//! 2. On the namespace topology: TCP connections per second and iperf3
//!    throughput through berth (XDP and TC attach), through Docker-style
//!    iptables DNAT, and straight to the container IP. Peers interleaved
//!    (A B C D A B C D ...), medians with min-max.
//!
//! Results: `bench/results.json` and `bench/RESULTS.md`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use berth::model::Protocol;
use berth_integration::{
    pkt::Packet,
    testrun::{binding, in_fixture_ns, C1, CLIENT, HOST},
    Bpffs, Daemon, DaemonOptions, NetNs, Topology, TopologyOptions,
};
use serde_json::{json, Value};

struct Opts {
    quick: bool,
    out_dir: PathBuf,
}

fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out_dir = root.parent().unwrap_or(&root).join("bench");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out_dir = PathBuf::from(args.next().context("--out needs a directory")?),
            other => bail!("unknown argument {other:?} (use --quick, --out DIR)"),
        }
    }
    Ok(Opts { quick, out_dir })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stats(mut v: Vec<f64>) -> Value {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    json!({ "median": median(&mut v), "min": min, "max": max, "samples": v })
}

// ---------------------------------------------------------------- datapath

fn datapath_costs(quick: bool) -> Result<Value> {
    let repeat: u32 = if quick { 20_000 } else { 200_000 };
    let samples = if quick { 3 } else { 7 };
    in_fixture_ns(move |env| -> Result<Value> {
        env.host_addr(HOST);
        let syn = |dport: u16| Packet::tcp(CLIENT, 40000, HOST, dport).frame();
        let mut rows = Vec::new();
        let mut measure = |name: &str, n: usize, f: &dyn Fn() -> u128| {
            let v: Vec<f64> = (0..samples).map(|_| f() as f64).collect();
            rows.push(json!({"path": name, "mappings": n, "ns_per_packet": stats(v)}));
        };
        let floor = syn(9);
        measure("floor_tc", 0, &|| {
            env.tc_ns("berth_empty_tc", &floor, repeat)
        });
        measure("floor_xdp", 0, &|| {
            env.xdp_ns("berth_empty_xdp", &floor, repeat)
        });
        let mut published = 0usize;
        for n in [1usize, 1_000, 65_000] {
            // The measured port is the one added last.
            while published < n {
                let port = 10_000 + published as u16;
                env.publish(&binding(
                    std::net::Ipv4Addr::UNSPECIFIED,
                    port,
                    C1,
                    80,
                    Protocol::Tcp,
                ));
                published += 1;
            }
            let last = 10_000 + (n as u16 - 1);
            let hit = syn(last);
            let miss = syn(9);
            let mut reply = Packet::tcp(C1, 80, CLIENT, 40000);
            reply.tcp_flags = 0x12;
            let reply = reply.frame();
            env.tc("berth_ingress", &hit); // creates the flow the reply belongs to
            measure("ingress_hit_tc", n, &|| {
                env.tc_ns("berth_ingress", &hit, repeat)
            });
            measure("ingress_hit_xdp", n, &|| {
                env.xdp_ns("berth_xdp", &hit, repeat)
            });
            measure("ingress_miss_tc", n, &|| {
                env.tc_ns("berth_ingress", &miss, repeat)
            });
            measure("ingress_miss_xdp", n, &|| {
                env.xdp_ns("berth_xdp", &miss, repeat)
            });
            measure("reply_tc", n, &|| env.tc_ns("berth_reply", &reply, repeat));
        }
        Ok(Value::Array(rows))
    })
}

// ---------------------------------------------------------------- verifier

/// Each program as the verifier accepted it: instructions walked (the
/// number its one-million limit applies to) and code sizes.
fn verifier_budget() -> Result<Value> {
    let rows = in_fixture_ns(|env| env.verifier_budget());
    Ok(Value::Array(
        rows.into_iter()
            .map(|b| {
                json!({
                    "program": b.name,
                    "kind": b.kind,
                    "verified_insns": b.verified_insns,
                    "xlated_bytes": b.xlated_bytes,
                    "jited_bytes": b.jited_bytes,
                })
            })
            .collect(),
    ))
}

// ---------------------------------------------------------------- topology

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    Direct,
    Iptables,
    BerthTc,
    BerthXdp,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Iptables => "iptables-dnat",
            Peer::BerthTc => "berth-tc",
            Peer::BerthXdp => "berth-xdp",
        }
    }
}

const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;

/// One host per peer, so nothing one peer configures touches another.
struct Bed {
    peer: Peer,
    _daemon: Option<Daemon>,
    _bpffs: Option<Bpffs>,
    _iperf: berth_integration::Child,
    topo: Topology,
    target_http: SocketAddr,
    target_iperf: SocketAddr,
}

fn docker_publish(host: &NetNs, host_port: u16, ip: &str, port: u16) -> Result<()> {
    // As Docker 28 writes a published port (iptables backend).
    let (hp, p) = (host_port.to_string(), port.to_string());
    let dest = format!("{ip}:{port}");
    host.exec(
        "iptables",
        [
            "-w",
            "-t",
            "nat",
            "-A",
            "DOCKER",
            "!",
            "-i",
            "docker0",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &hp,
            "-j",
            "DNAT",
            "--to-destination",
            &dest,
        ],
    )?;
    let d = format!("{ip}/32");
    host.exec(
        "iptables",
        [
            "-w", "-t", "filter", "-I", "DOCKER", "1", "-d", &d, "!", "-i", "docker0", "-o",
            "docker0", "-p", "tcp", "-m", "tcp", "--dport", &p, "-j", "ACCEPT",
        ],
    )?;
    Ok(())
}

fn bed(peer: Peer) -> Result<Bed> {
    // Checksum offload on, as on a real host.
    let topo = Topology::build_with(TopologyOptions {
        tx_checksum_off: false,
        ..Default::default()
    })?;
    let iperf = topo
        .container
        .ns
        .spawn("iperf3", ["-s", "-p", &IPERF_PORT.to_string()])?;
    let ctr = "172.17.0.2";
    let (mut daemon, mut bpffs) = (None, None);
    let (target_http, target_iperf) = match peer {
        Peer::Direct => {
            topo.client
                .ns
                .ip(["route", "add", "172.17.0.0/16", "via", "192.0.2.1"])?;
            topo.host.ns.exec(
                "iptables",
                [
                    "-w",
                    "-I",
                    "DOCKER-USER",
                    "1",
                    "-d",
                    "172.17.0.0/16",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            (
                format!("{ctr}:{HTTP_PORT}").parse()?,
                format!("{ctr}:{IPERF_PORT}").parse()?,
            )
        }
        Peer::Iptables => {
            docker_publish(&topo.host.ns, HTTP_PORT, ctr, HTTP_PORT)?;
            docker_publish(&topo.host.ns, IPERF_PORT, ctr, IPERF_PORT)?;
            (topo.host.addr(HTTP_PORT), topo.host.addr(IPERF_PORT))
        }
        Peer::BerthTc | Peer::BerthXdp => {
            let fs = Bpffs::new()?;
            let attach = if peer == Peer::BerthTc { "tc" } else { "xdp" };
            let d = Daemon::start_with(
                &topo.host.ns,
                &fs,
                DaemonOptions {
                    attach: Some(attach.into()),
                    ..Default::default()
                },
            )?;
            d.cli_ok([
                "map",
                "add",
                "--task",
                "bench",
                "--ip",
                ctr,
                "-p",
                &format!("{HTTP_PORT}:{HTTP_PORT}"),
                "-p",
                &format!("{IPERF_PORT}:{IPERF_PORT}"),
            ])?;
            daemon = Some(d);
            bpffs = Some(fs);
            (topo.host.addr(HTTP_PORT), topo.host.addr(IPERF_PORT))
        }
    };
    start_rr_server(&topo.container.ns, HTTP_PORT)?;
    Ok(Bed {
        peer,
        _daemon: daemon,
        _bpffs: bpffs,
        _iperf: iperf,
        topo,
        target_http,
        target_iperf,
    })
}

/// A blocking accept loop answering each connection with a few bytes, then
/// closing (so TIME_WAIT lands on the server side). Lives until the
/// process exits.
fn start_rr_server(ns: &NetNs, port: u16) -> Result<()> {
    let l = ns.run(move || TcpListener::bind(("0.0.0.0", port)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((mut c, _)) = l.accept() {
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nok");
        }
    });
    Ok(())
}

/// Sequential short connections for `dur`: connect, request, read to EOF.
fn conn_rate(ns: &NetNs, target: SocketAddr, dur: Duration) -> Result<f64> {
    ns.run(move || -> Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 64];
        while start.elapsed() < dur {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .with_context(|| format!("connect {target}"))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            while c.read(&mut buf)? > 0 {}
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

fn iperf_gbps(ns: &NetNs, target: SocketAddr, secs: u32) -> Result<f64> {
    let out = ns.exec(
        "iperf3",
        [
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ],
    )?;
    let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no end.sum_received.bits_per_second in iperf3 output")
}

fn topology_bench(quick: bool) -> Result<Value> {
    let reps = if quick { 3 } else { 5 };
    let conn_dur = Duration::from_millis(if quick { 1000 } else { 3000 });
    let iperf_secs = if quick { 1 } else { 3 };
    let peers = [Peer::Direct, Peer::Iptables, Peer::BerthTc, Peer::BerthXdp];
    let beds: Vec<Bed> = peers.iter().map(|p| bed(*p)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300)); // iperf3 servers listening
    let mut conn: Vec<Vec<f64>> = vec![Vec::new(); beds.len()];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); beds.len()];
    for rep in 0..reps {
        for (i, b) in beds.iter().enumerate() {
            let c = conn_rate(&b.topo.client.ns, b.target_http, conn_dur)
                .with_context(|| format!("{} connections/s", b.peer.name()))?;
            conn[i].push(c);
        }
        for (i, b) in beds.iter().enumerate() {
            let t = iperf_gbps(&b.topo.client.ns, b.target_iperf, iperf_secs)
                .with_context(|| format!("{} iperf3", b.peer.name()))?;
            tput[i].push(t);
        }
        eprintln!("bench: topology repetition {}/{reps} done", rep + 1);
    }
    let rows: Vec<Value> = beds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({
                "peer": b.peer.name(),
                "connections_per_s": stats(conn[i].clone()),
                "throughput_gbps": stats(tput[i].clone()),
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

// ---------------------------------------------------------------- report

fn med(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

fn markdown(results: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# berth benchmark results\n\nMachine: {}. Mode: {}. Generated by `cargo xtask bench{}`.\n\n",
        results["machine"].as_str().unwrap_or("?"),
        if results["quick"].as_bool() == Some(true) { "quick" } else { "full" },
        if results["quick"].as_bool() == Some(true) { " --quick" } else { "" },
    ));
    s.push_str("## Datapath cost per packet (BPF_PROG_TEST_RUN)\n\n");
    s.push_str(
        "| path | mappings | ns/packet (median) | min-max | × floor |\n|---|---:|---:|---:|---:|\n",
    );
    let rows = results["datapath"].as_array().cloned().unwrap_or_default();
    let floor = |hook: &str| {
        rows.iter()
            .find(|r| r["path"] == format!("floor_{hook}"))
            .map(|r| med(&r["ns_per_packet"]))
            .unwrap_or(f64::NAN)
    };
    for r in &rows {
        let path = r["path"].as_str().unwrap_or("");
        let hook = if path.ends_with("xdp") { "xdp" } else { "tc" };
        let v = &r["ns_per_packet"];
        s.push_str(&format!(
            "| {path} | {} | {:.1} | {:.1}-{:.1} | {:.2} |\n",
            r["mappings"],
            med(v),
            v["min"].as_f64().unwrap_or(0.0),
            v["max"].as_f64().unwrap_or(0.0),
            med(v) / floor(hook)
        ));
    }
    s.push_str("\n## Verifier budget\n\n");
    s.push_str(
        "| program | kind | verified insns | xlated bytes | jited bytes |\n|---|---|---:|---:|---:|\n",
    );
    for r in results["verifier_budget"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let n = |k: &str| r[k].as_u64().map_or("?".to_string(), |v| v.to_string());
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r["program"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            n("verified_insns"),
            n("xlated_bytes"),
            n("jited_bytes"),
        ));
    }
    s.push_str(
        "\n## Through the namespace topology (client → host uplink → docker0 → container)\n\n",
    );
    s.push_str("| peer | connections/s (median, min-max) | × direct | iperf3 Gbit/s (median, min-max) | × direct |\n|---|---:|---:|---:|---:|\n");
    let topo = results["topology"].as_array().cloned().unwrap_or_default();
    let direct = topo.iter().find(|r| r["peer"] == "direct");
    let (dc, dt) = direct
        .map(|d| (med(&d["connections_per_s"]), med(&d["throughput_gbps"])))
        .unwrap_or((f64::NAN, f64::NAN));
    for r in &topo {
        let c = &r["connections_per_s"];
        let t = &r["throughput_gbps"];
        s.push_str(&format!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.2} | {:.2} ({:.2}-{:.2}) | {:.2} |\n",
            r["peer"].as_str().unwrap_or(""),
            med(c),
            c["min"].as_f64().unwrap_or(0.0),
            c["max"].as_f64().unwrap_or(0.0),
            med(c) / dc,
            med(t),
            t["min"].as_f64().unwrap_or(0.0),
            t["max"].as_f64().unwrap_or(0.0),
            med(t) / dt,
        ));
    }
    s
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("berth-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    if !berth_integration::is_root() {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    eprintln!("bench: verifier budget...");
    let budget = verifier_budget()?;
    eprintln!("bench: datapath cost per packet (BPF_PROG_TEST_RUN)...");
    let datapath = datapath_costs(opts.quick)?;
    eprintln!("bench: namespace topology (direct, iptables DNAT, berth tc, berth xdp)...");
    let topology = topology_bench(opts.quick)?;
    let results = json!({
        "machine": machine(),
        "quick": opts.quick,
        "verifier_budget": budget,
        "datapath": datapath,
        "topology": topology,
    });
    let md = markdown(&results);
    std::fs::create_dir_all(&opts.out_dir)?;
    let suffix = if opts.quick { "-quick" } else { "" };
    let json_path = opts.out_dir.join(format!("results{suffix}.json"));
    let md_path = opts.out_dir.join(format!("RESULTS{suffix}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    eprintln!(
        "bench: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}
