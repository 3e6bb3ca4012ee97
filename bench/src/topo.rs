//! Traffic through the namespace topology: every peer on its own bed, built
//! once; repetitions interleave the peers (A B C … A B C …) metric by
//! metric, first with only the measured ports published, then with 10 000,
//! then connections/s alone with 65 000 (the direct path, iptables and
//! berth: the peers whose rate could depend on the number of ports).
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    load,
    peers::{Bed, Peer},
    stats::{percentile, summary, with_cpu},
    Settings,
};

/// Published ports in the scaled phase, the three measured ones included.
pub const SCALED_PORTS: usize = 10_000;
/// Published ports in the last phase (connections/s only), likewise.
pub const HUGE_PORTS: usize = 65_000;

#[derive(Default, Clone)]
struct Samples {
    conn: Vec<f64>,
    cpu_conn: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu_rt: Vec<f64>,
    gbps: Vec<f64>,
    cpu_gb: Vec<f64>,
    udp: Vec<f64>,
    udp_sent: Vec<f64>,
    cpu_pkt: Vec<f64>,
    /// The client's SYN retransmissions during each connections/s sample.
    syn_retrans: Vec<f64>,
}

impl Samples {
    fn json(&self, peer: Peer, ports: usize) -> Value {
        json!({
            "peer": peer.name(),
            "ports": ports,
            "connections_per_s": summary(&self.conn),
            "cpu_us_per_connection": summary(&self.cpu_conn),
            "rtt_p50_us": summary(&self.p50),
            "rtt_p99_us": summary(&self.p99),
            "cpu_us_per_round_trip": summary(&self.cpu_rt),
            "throughput_gbps": summary(&self.gbps),
            "cpu_ms_per_gb": summary(&self.cpu_gb),
            "udp_pps": summary(&self.udp),
            "udp_sent_pps": summary(&self.udp_sent),
            "cpu_ns_per_udp_packet": summary(&self.cpu_pkt),
            "syn_retransmits": self.syn_retrans,
        })
    }
}

fn measure_conn(b: &Bed, s: &Settings, out: &mut Samples) -> Result<()> {
    let retrans = || b.topo.client.ns.try_run(load::syn_retransmits).unwrap_or(0);
    let before = retrans();
    let (r, cpu) = with_cpu(|| load::conn_rate(&b.topo.client.ns, b.rr_target(), s.conn_dur));
    let (n, secs) = r.with_context(|| format!("{} connections/s", b.peer.name()))?;
    // A lost SYN costs its connect a second (the retransmission timer),
    // which a sample of a second or less cannot absorb: say so per sample,
    // so a low one is told apart from a slow datapath.
    let lost = retrans().saturating_sub(before);
    eprintln!(
        "bench: {}: {:.0} connections/s over {secs:.2} s, {lost} SYN retransmission(s)",
        b.peer.name(),
        n as f64 / secs
    );
    out.conn.push(n as f64 / secs);
    out.cpu_conn.push(cpu * 1e6 / n.max(1) as f64);
    out.syn_retrans.push(lost as f64);
    Ok(())
}

fn measure_rtt(b: &Bed, s: &Settings, out: &mut Samples) -> Result<()> {
    let (r, cpu) = with_cpu(|| load::round_trips(&b.topo.client.ns, b.rr_target(), s.rtt_n));
    let mut v = r.with_context(|| format!("{} latency", b.peer.name()))?;
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out.p50.push(percentile(&v, 50.0));
    out.p99.push(percentile(&v, 99.0));
    out.cpu_rt.push(cpu * 1e6 / v.len().max(1) as f64);
    Ok(())
}

fn measure_iperf(b: &Bed, s: &Settings, out: &mut Samples) -> Result<()> {
    let (r, cpu) = with_cpu(|| load::iperf(&b.topo.client.ns, b.iperf_target(), s.iperf_secs));
    let (gbps, bytes) = r.with_context(|| format!("{} iperf3", b.peer.name()))?;
    out.gbps.push(gbps);
    out.cpu_gb.push(cpu * 1e3 / (bytes / 1e9).max(1e-9));
    Ok(())
}

fn measure_udp(b: &Bed, s: &Settings, out: &mut Samples) -> Result<()> {
    let before = b.servers.udp_received();
    let (r, cpu) = with_cpu(|| {
        let r = load::udp_blast(&b.topo.client.ns, b.udp_target(), s.udp_dur);
        // Let the last datagrams drain into the sink.
        std::thread::sleep(Duration::from_millis(150));
        r
    });
    let (sent, secs) = r.with_context(|| format!("{} UDP", b.peer.name()))?;
    let got = b.servers.udp_received() - before;
    out.udp.push(got as f64 / secs);
    out.udp_sent.push(sent as f64 / secs);
    out.cpu_pkt.push(cpu * 1e9 / got.max(1) as f64);
    Ok(())
}

type Measure = fn(&Bed, &Settings, &mut Samples) -> Result<()>;

const ALL_METRICS: [(&str, Measure); 4] = [
    ("connections/s", measure_conn),
    ("latency", measure_rtt),
    ("iperf3", measure_iperf),
    ("udp", measure_udp),
];

fn run_phase(
    beds: &[&Bed],
    s: &Settings,
    ports: usize,
    metrics: &[(&str, Measure)],
) -> Result<Vec<Value>> {
    let mut samples = vec![Samples::default(); beds.len()];
    for rep in 0..s.reps {
        for (_, m) in metrics {
            // Each repetition starts with the next peer (as the IPv6
            // section does): in a fixed order the direct path always ran
            // first, right after a phase's setup, and berth-xdp always
            // right after berth-tc, so order effects passed for costs.
            for i in (0..beds.len()).map(|k| (k + rep) % beds.len()) {
                m(beds[i], s, &mut samples[i])?;
            }
        }
        eprintln!(
            "bench: {ports} published port(s): repetition {}/{} done",
            rep + 1,
            s.reps
        );
    }
    Ok(beds
        .iter()
        .zip(&samples)
        .map(|(b, smp)| smp.json(b.peer, ports))
        .collect())
}

pub fn topology_bench(s: &Settings) -> Result<Value> {
    let mut beds = Vec::new();
    for p in Peer::ALL {
        beds.push(Bed::new(p).with_context(|| format!("setting up {}", p.name()))?);
    }
    for b in &beds {
        b.wait_ready(Duration::from_secs(5))?;
    }
    std::thread::sleep(Duration::from_millis(200)); // iperf3 servers listening
    let all: Vec<&Bed> = beds.iter().collect();
    let mut rows = run_phase(&all, s, 1, &ALL_METRICS)?;

    let extra = SCALED_PORTS - super::peers::measured().len();
    for b in beds.iter_mut().filter(|b| b.peer.scales()) {
        b.set_extra(extra)
            .with_context(|| format!("{}: {SCALED_PORTS} ports", b.peer.name()))?;
    }
    let scaled: Vec<&Bed> = beds.iter().filter(|b| b.peer.scales()).collect();
    for b in &scaled {
        b.wait_ready(Duration::from_secs(10))?;
    }
    rows.extend(run_phase(&scaled, s, SCALED_PORTS, &ALL_METRICS)?);

    // Nearly every port of the host: connections/s only (the rate is what
    // grows with the number of rules), against the direct path in the
    // same rounds. Docker's nftables peers stay at 10 000: their rules
    // load slowly and berth is compared with iptables and the floor here.
    let huge_peer = |p: Peer| {
        matches!(
            p,
            Peer::Direct | Peer::Iptables | Peer::BerthTc | Peer::BerthXdp
        )
    };
    rows.extend(huge_phase(&mut beds, s, huge_peer)?);
    let peers: Vec<Value> = Peer::ALL
        .iter()
        .map(|p| json!({"peer": p.name(), "setup": p.describe(), "scaled": p.scales()}))
        .collect();
    Ok(json!({ "peers": peers, "rows": rows }))
}

/// Connections/s with [`HUGE_PORTS`] published on the beds `which` picks,
/// interleaved as every phase.
fn huge_phase(beds: &mut [Bed], s: &Settings, which: impl Fn(Peer) -> bool) -> Result<Vec<Value>> {
    let extra = HUGE_PORTS - super::peers::measured().len();
    for b in beds.iter_mut().filter(|b| which(b.peer)) {
        let t = std::time::Instant::now();
        b.set_extra(extra)
            .with_context(|| format!("{}: {HUGE_PORTS} ports", b.peer.name()))?;
        eprintln!(
            "bench: {}: {HUGE_PORTS} ports published in {:.1} s",
            b.peer.name(),
            t.elapsed().as_secs_f64()
        );
    }
    let huge: Vec<&Bed> = beds.iter().filter(|b| which(b.peer)).collect();
    for b in &huge {
        b.wait_ready(Duration::from_secs(30))?;
    }
    // One unrecorded sample per peer first: right after 65 000 ports are
    // published the machine is still busy with it (the first sample of a
    // run measured 2 693 connections/s for the direct path, at 7x the CPU
    // per connection of the others and no SYN lost), which only the peer
    // measured first paid.
    for b in &huge {
        eprint!("bench: warm-up, ");
        measure_conn(b, s, &mut Samples::default())?;
    }
    run_phase(&huge, s, HUGE_PORTS, &ALL_METRICS[..1])
}

/// `--only huge`: the 65 000-port phase alone for the direct path and
/// berth (TC and XDP), without the other peers' beds or phases: the goal
/// "at 65 000 ports at least 0.95x the direct path" measured in minutes,
/// with the same interleaving as the full run. Not part of a full run
/// (`topology` measures it).
pub fn huge_bench(s: &Settings) -> Result<Value> {
    let chosen = [Peer::Direct, Peer::BerthTc, Peer::BerthXdp];
    let mut beds = Vec::new();
    for p in chosen {
        beds.push(Bed::new(p).with_context(|| format!("setting up {}", p.name()))?);
    }
    for b in &beds {
        b.wait_ready(Duration::from_secs(5))?;
    }
    let rows = huge_phase(&mut beds, s, |p| chosen.contains(&p))?;
    let peers: Vec<Value> = chosen
        .iter()
        .map(|p| json!({"peer": p.name(), "setup": p.describe(), "scaled": p.scales()}))
        .collect();
    Ok(json!({ "peers": peers, "rows": rows }))
}
