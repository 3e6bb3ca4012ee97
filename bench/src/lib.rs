//! `cargo xtask bench`: berth side by side with the direct path, Docker's
//! iptables and nftables DNAT, a map-based nftables DNAT and the real
//! docker-proxy, on the same namespace topology; plus control-plane time,
//! memory, datapath cost per packet, XDP vs TC on veth, and `docker run -p`
//! of a port range through docker-proxy and berth's two Docker modes. The binary is
//! `src/main.rs`; results go to this crate's directory, `bench/`. The
//! namespaces, daemons and fixtures come from the test harness
//! (`berth-integration`).
pub mod control;
pub mod datapath;
pub mod docker;
pub mod ipv6;
pub mod load;
pub mod peers;
pub mod rawbpf;
pub mod report;
pub mod stats;
pub mod svg;
pub mod topo;
pub mod veth;

use std::time::Duration;

use serde_json::{json, Value};

/// How long each measurement runs; `--quick` or the full run.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub quick: bool,
    /// Interleaved repetitions of every peer and metric.
    pub reps: usize,
    pub conn_dur: Duration,
    /// Round trips per latency sample.
    pub rtt_n: usize,
    pub iperf_secs: u32,
    pub udp_dur: Duration,
    /// `BPF_PROG_TEST_RUN` runs (each on a fresh frame) and samples per path.
    pub dp_runs: u32,
    pub dp_samples: usize,
    /// Repetitions of each control-plane operation.
    pub cp_reps: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                reps: 3,
                conn_dur: Duration::from_millis(500),
                rtt_n: 2_000,
                iperf_secs: 1,
                udp_dur: Duration::from_millis(500),
                dp_runs: 4_000,
                dp_samples: 3,
                cp_reps: 1,
            }
        } else {
            Self {
                quick,
                reps: 5,
                conn_dur: Duration::from_secs(1),
                rtt_n: 10_000,
                iperf_secs: 2,
                udp_dur: Duration::from_secs(1),
                dp_runs: 20_000,
                dp_samples: 7,
                cp_reps: 3,
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "reps": self.reps,
            "conn_secs": self.conn_dur.as_secs_f64(),
            "rtt_n": self.rtt_n,
            "iperf_secs": self.iperf_secs,
            "udp_secs": self.udp_dur.as_secs_f64(),
            "datapath_runs": self.dp_runs,
            "datapath_samples": self.dp_samples,
            "control_plane_reps": self.cp_reps,
        })
    }
}

/// CPU model, cores and kernel, for the report.
pub fn machine() -> String {
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
        .map(std::num::NonZero::get)
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// The commit of the tree the bench runs from (`git rev-parse --short
/// HEAD`), with `+changes` when tracked files differ from it, so a results
/// file names what it measured; "unknown" outside a git checkout.
pub fn commit() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) if !head.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}+changes")
            } else {
                head
            }
        }
        _ => "unknown".into(),
    }
}
