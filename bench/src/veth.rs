//! XDP vs TC on veth: the same direct path (client → container IP, no
//! translation) with four ways through the host's uplink `up0`:
//!
//! - `stack`: no program; routed by the kernel through docker0;
//! - `tc-redirect`: a TC (tcx ingress) program that rewrites the MACs and
//!   `bpf_redirect`s to the container's host-side veth (skipping the
//!   bridge, routing and netfilter);
//! - `xdp-pass`: an XDP program that only returns `XDP_PASS` (the cost of
//!   having XDP attached to a veth at all);
//! - `xdp-redirect`: the same forward as `tc-redirect` from XDP
//!   (`XDP_REDIRECT` into the host-side veth).
//!
//! The programs are hand-assembled ([`super::rawbpf`]) so that only the
//! hook differs. berth's own modes (TC redirect after DNAT; XDP DNAT handed
//! to TC through metadata, because XDP cannot redirect into a bridge) are
//! in the main table.
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    load,
    peers::{Bed, Peer},
    rawbpf::{self, Action},
    stats::{summary, with_cpu},
    Settings,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Stack,
    TcRedirect,
    XdpPass,
    XdpRedirect,
}

impl Variant {
    const ALL: [Self; 4] = [
        Self::Stack,
        Self::TcRedirect,
        Self::XdpPass,
        Self::XdpRedirect,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Stack => "stack",
            Self::TcRedirect => "tc-redirect",
            Self::XdpPass => "xdp-pass",
            Self::XdpRedirect => "xdp-redirect",
        }
    }
}

fn gso_of_uplink_peer(bed: &Bed) -> String {
    // up0's peer is wp-host in the wan namespace: what the sender side may
    // hand to up0 in one piece.
    bed.topo
        .wan
        .exec("ethtool", ["-k", "wp-host"])
        .map(|out| {
            out.lines()
                .filter(|l| {
                    l.starts_with("generic-segmentation-offload")
                        || l.starts_with("tcp-segmentation-offload")
                })
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

pub fn veth_bench(s: &Settings) -> Result<Value> {
    // Checksum offload off at the endpoints: XDP_REDIRECT turns a frame
    // into an xdp_frame, which loses the "checksum still to be filled in"
    // state of a local sender's packets, and the container then drops them
    // as corrupt. With complete checksums (as from a NIC) all four work.
    let bed = Bed::with_options(Peer::Direct, true)?;
    // XDP_REDIRECT into a veth needs NAPI on the receiving end, which GRO
    // turns on; on for every variant so they differ only in the hook.
    bed.topo
        .container
        .ns
        .exec("ethtool", ["-K", "eth0", "gro", "on"])?;
    // The redirects bypass conntrack on the way in, so the replies would
    // look like new flows from the container and be masqueraded: exempt
    // client-bound traffic from Docker's MASQUERADE rule.
    bed.topo.host.ns.exec(
        "iptables",
        [
            "-w",
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "1",
            "-s",
            "172.17.0.0/16",
            "-d",
            "192.0.2.0/24",
            "-j",
            "RETURN",
        ],
    )?;
    bed.wait_ready(Duration::from_secs(5))?;
    let host_veth = bed.topo.container.host_veth_link(&bed.topo.host)?;
    let uplink = bed.topo.host.uplink_link()?;
    let redirect = Action::Redirect {
        dst: bed.topo.container.ip,
        ifindex: host_veth.ifindex,
        dmac: bed.topo.container.link()?.mac,
        smac: host_veth.mac,
    };
    let host = &bed.topo.host.ns;
    let progs = host.try_run(|| -> Result<_> {
        Ok((
            rawbpf::load(rawbpf::PROG_TYPE_SCHED_CLS, redirect).context("tc-redirect")?,
            rawbpf::load(rawbpf::PROG_TYPE_XDP, Action::Pass).context("xdp-pass")?,
            rawbpf::load(rawbpf::PROG_TYPE_XDP, redirect).context("xdp-redirect")?,
        ))
    })??;
    let gso_before = gso_of_uplink_peer(&bed);
    let mut gso_with_xdp = String::new();

    let n = Variant::ALL.len();
    let (mut gbps, mut cpu_gb, mut pps, mut cpu_pkt) = (
        vec![vec![]; n],
        vec![vec![]; n],
        vec![vec![]; n],
        vec![vec![]; n],
    );
    for rep in 0..s.reps {
        for (i, v) in Variant::ALL.iter().enumerate() {
            let link = host.try_run(|| -> Result<Option<std::os::fd::OwnedFd>> {
                Ok(match v {
                    Variant::Stack => None,
                    Variant::TcRedirect => Some(rawbpf::attach(
                        &progs.0,
                        uplink.ifindex,
                        rawbpf::ATTACH_TCX_INGRESS,
                    )?),
                    Variant::XdpPass => Some(rawbpf::attach(
                        &progs.1,
                        uplink.ifindex,
                        rawbpf::ATTACH_XDP,
                    )?),
                    Variant::XdpRedirect => Some(rawbpf::attach(
                        &progs.2,
                        uplink.ifindex,
                        rawbpf::ATTACH_XDP,
                    )?),
                })
            })??;
            if rep == 0 && *v == Variant::XdpPass {
                gso_with_xdp = gso_of_uplink_peer(&bed);
            }
            let ns = &bed.topo.client.ns;
            let (r, cpu) = with_cpu(|| load::iperf(ns, bed.iperf_target(), s.iperf_secs));
            let (g, bytes) = r.with_context(|| format!("{} iperf3", v.name()))?;
            gbps[i].push(g);
            cpu_gb[i].push(cpu * 1e3 / (bytes / 1e9).max(1e-9));
            let before = bed.servers.udp_received();
            let (r, cpu) = with_cpu(|| {
                let r = load::udp_blast(ns, bed.udp_target(), s.udp_dur);
                std::thread::sleep(Duration::from_millis(150));
                r
            });
            let (_, secs) = r.with_context(|| format!("{} UDP", v.name()))?;
            let got = bed.servers.udp_received() - before;
            pps[i].push(got as f64 / secs);
            cpu_pkt[i].push(cpu * 1e9 / got.max(1) as f64);
            drop(link);
        }
        eprintln!(
            "bench: XDP vs TC on veth: repetition {}/{} done",
            rep + 1,
            s.reps
        );
    }
    let rows: Vec<Value> = Variant::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "variant": v.name(),
                "throughput_gbps": summary(&gbps[i]),
                "cpu_ms_per_gb": summary(&cpu_gb[i]),
                "udp_pps": summary(&pps[i]),
                "cpu_ns_per_udp_packet": summary(&cpu_pkt[i]),
            })
        })
        .collect();
    Ok(json!({
        "rows": rows,
        "uplink_peer_offloads_without_xdp": gso_before,
        "uplink_peer_offloads_with_xdp": gso_with_xdp,
    }))
}
