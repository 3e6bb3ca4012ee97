//! IPv6 rows (issue 15, `--only ipv6`): connections/s over IPv6 from the
//! wan client to a published port, through ip6tables DNAT as Docker 28
//! writes it (`--ipv6`, ip6tables on) and through berth (TC), beside the
//! direct path (the client routed to the container's IPv6 address, no
//! DNAT) as the floor. Each peer has a dual-stack topology of its own;
//! repetitions interleave the peers, each starting with the next one.
//!
//! berth's row is measured only when its uplink translates IPv6 (NAT66):
//! a peer whose published port does not answer gets a row saying so
//! instead of a number, so the table never shows a rate of something that
//! did not happen.
use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use berth_integration::{addr, Bpffs, Daemon, DaemonOptions, Topology, TopologyOptions};
use serde_json::{json, Value};

use super::{
    load::{self, RrServer6, RR_PORT},
    stats::{summary, with_cpu},
    Settings,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer6 {
    Direct,
    Ip6tables,
    BerthTc,
}

impl Peer6 {
    pub const ALL: [Self; 3] = [Self::Direct, Self::Ip6tables, Self::BerthTc];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct6",
            Self::Ip6tables => "ip6tables6",
            Self::BerthTc => "berth-tc6",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => "client routed to [fd00:17::2]:8080, no DNAT (the floor)",
            Self::Ip6tables => {
                "Docker 28's ip6tables DNAT for [::]:8080 -> [fd00:17::2]:8080, userland proxy off"
            }
            Self::BerthTc => "berth daemon, --attach tc, [2001:db8::1]:8080 -> [fd00:17::2]:8080",
        }
    }
}

/// Docker 28's per-port ip6tables rules for `[::]:port/tcp` -> `[ctr]:port`
/// (its iptables rules with IPv6 addresses), as an `ip6tables-restore
/// --noflush` batch.
pub fn ip6tables_rules(port: u16, ctr: Ipv6Addr) -> String {
    let mut s = String::from("*nat\n");
    let _ = writeln!(
        s,
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport {port} -j DNAT --to-destination [{ctr}]:{port}"
    );
    s.push_str("COMMIT\n*filter\n");
    let _ = writeln!(
        s,
        "-I DOCKER 1 -d {ctr}/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport {port} -j ACCEPT"
    );
    s.push_str("COMMIT\n");
    s
}

/// One peer on its own dual-stack topology. Fields drop in order: the
/// daemon, its bpffs, the server, the namespaces.
pub struct Bed6 {
    pub peer: Peer6,
    daemon: Option<Daemon>,
    bpffs: Option<Bpffs>,
    rr: RrServer6,
    pub topo: Topology,
}

impl Bed6 {
    pub fn new(peer: Peer6) -> Result<Self> {
        // Offloads on, as on a real host (and as the IPv4 rows run).
        let topo = Topology::build_with(TopologyOptions {
            tx_checksum_off: false,
            ..TopologyOptions::dual_stack()
        })?;
        let rr = RrServer6::start(&topo.container.ns)?;
        let mut bed = Self {
            peer,
            daemon: None,
            bpffs: None,
            rr,
            topo,
        };
        let host = &bed.topo.host.ns;
        let ctr = addr::CONTAINER_IP6;
        match peer {
            Peer6::Direct => {
                bed.topo.client.ns.ip([
                    "-6",
                    "route",
                    "add",
                    "fd00:17::/64",
                    "via",
                    &addr::HOST_IP6.to_string(),
                ])?;
                host.exec(
                    "ip6tables",
                    [
                        "-w",
                        "-I",
                        "DOCKER-USER",
                        "1",
                        "-d",
                        "fd00:17::/64",
                        "-j",
                        "ACCEPT",
                    ],
                )?;
            }
            Peer6::Ip6tables => {
                host.exec_with_stdin(
                    "ip6tables-restore",
                    ["-w", "--noflush"],
                    &ip6tables_rules(RR_PORT, ctr),
                )
                .context("ip6tables-restore")?;
            }
            Peer6::BerthTc => {
                let fs = Bpffs::new()?;
                let d = Daemon::start_with(
                    host,
                    &fs,
                    DaemonOptions {
                        attach: Some("tc".into()),
                        ..Default::default()
                    },
                )?;
                publish_berth6(&d, ctr)?;
                bed.daemon = Some(d);
                bed.bpffs = Some(fs);
            }
        }
        Ok(bed)
    }

    pub fn target(&self) -> SocketAddr {
        match self.peer {
            Peer6::Direct => self.topo.container.addr6(RR_PORT),
            _ => self.topo.host.addr6(RR_PORT),
        }
    }

    /// Whether the measured port answers within `timeout`.
    pub fn ready(&self, timeout: Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        let target = self.target();
        loop {
            let ok = self.topo.client.ns.try_run(|| {
                berth_integration::tcp_connect(target, Duration::from_millis(500)).is_ok()
            })?;
            if ok || std::time::Instant::now() >= deadline {
                return Ok(ok);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// berth's IPv6 mapping, through the CLI.
fn publish_berth6(d: &Daemon, ctr: Ipv6Addr) -> Result<()> {
    let spec = format!("[{}]:{RR_PORT}:{RR_PORT}", addr::HOST_IP6);
    let ip6 = ctr.to_string();
    d.cli_ok(["map", "add", "--task", "bench6", "--ip6", &ip6, "-p", &spec])?;
    Ok(())
}

/// The section: every peer set up, the ready ones measured `reps` times
/// in interleaved rounds.
pub fn ipv6_bench(s: &Settings) -> Result<Value> {
    let mut beds = Vec::new();
    for p in Peer6::ALL {
        beds.push(Bed6::new(p).with_context(|| format!("setting up {}", p.name()))?);
    }
    let mut ready = Vec::new();
    for b in &beds {
        ready.push(b.ready(Duration::from_secs(5))?);
    }
    if !ready[0] {
        bail!("the direct IPv6 path does not answer: the topology is broken");
    }
    let mut conn = vec![Vec::new(); beds.len()];
    let mut cpu = vec![Vec::new(); beds.len()];
    for rep in 0..s.reps {
        // Each repetition starts with the next peer, so none is always
        // measured first (on a cold cache or right after setup).
        for i in (0..beds.len()).map(|k| (k + rep) % beds.len()) {
            if !ready[i] {
                continue;
            }
            let b = &beds[i];
            let (r, secs_cpu) =
                with_cpu(|| load::conn_rate(&b.topo.client.ns, b.target(), s.conn_dur));
            let (n, secs) = r.with_context(|| format!("{} connections/s", b.peer.name()))?;
            conn[i].push(n as f64 / secs);
            cpu[i].push(secs_cpu * 1e6 / n.max(1) as f64);
        }
        eprintln!("bench: ipv6: repetition {}/{} done", rep + 1, s.reps);
    }
    let rows: Vec<Value> = beds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut row = json!({"peer": b.peer.name(), "setup": b.peer.describe()});
            if ready[i] {
                row["connections_per_s"] = summary(&conn[i]);
                row["cpu_us_per_connection"] = summary(&cpu[i]);
                row["accepted"] = json!(b.rr.accepted());
            } else {
                row["unavailable"] = json!(format!(
                    "{} does not answer on {}: no IPv6 translation on this build",
                    b.peer.name(),
                    b.target()
                ));
            }
            row
        })
        .collect();
    Ok(json!({ "rows": rows }))
}

/// The section's table for RESULTS.md.
pub fn markdown(results: &Value) -> String {
    let mut s = String::from(
        "\n## IPv6: connections/s (ip6tables DNAT vs berth)\n\n| peer | setup | connections/s (median, min-max) | CPU µs/connection |\n|---|---|---:|---:|\n",
    );
    for r in results["ipv6"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let cell = |k: &str| {
            let v = &r[k];
            match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
                (Some(m), Some(lo), Some(hi)) => format!("{m:.0} ({lo:.0}-{hi:.0})"),
                _ => r["unavailable"].as_str().unwrap_or("?").to_string(),
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r["peer"].as_str().unwrap_or(""),
            r["setup"].as_str().unwrap_or(""),
            cell("connections_per_s"),
            if r["unavailable"].is_string() {
                "-".to_string()
            } else {
                cell("cpu_us_per_connection")
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip6tables_rules_are_dockers_with_ipv6_addresses() {
        let r = ip6tables_rules(8080, addr::CONTAINER_IP6);
        assert!(r.contains(
            "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:17::2]:8080"
        ));
        assert!(r.contains(
            "-I DOCKER 1 -d fd00:17::2/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport 8080 -j ACCEPT"
        ));
        assert_eq!(r.matches("COMMIT").count(), 2);
    }

    #[test]
    fn an_unavailable_row_says_why_instead_of_a_number() {
        let results = json!({"ipv6": {"rows": [
            {"peer": "direct6", "setup": "d", "connections_per_s": {"median": 100.0, "min": 90.0, "max": 110.0},
             "cpu_us_per_connection": {"median": 5.0, "min": 4.0, "max": 6.0}},
            {"peer": "berth-tc6", "setup": "b", "unavailable": "no IPv6 translation"},
        ]}});
        let md = markdown(&results);
        assert!(
            md.contains("| direct6 | d | 100 (90-110) | 5 (4-6) |"),
            "{md}"
        );
        assert!(
            md.contains("| berth-tc6 | b | no IPv6 translation | - |"),
            "{md}"
        );
    }
}
