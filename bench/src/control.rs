//! Control plane and memory: how long publishing and unpublishing take in
//! each system, and what 1 000 published ports cost in memory.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    peers::{
        extras, iptables_batch, iptables_rules, nft_docker29, nft_docker29_add, nft_map,
        nft_map_elements, spawn_docker_proxy_here, Mapping, CTR2,
    },
    stats::summary,
    Settings,
};
use berth_integration::{
    daemon::api_request, Bpffs, Child, Daemon, DaemonOptions, NetNs, Topology,
};

const BIG: Duration = Duration::from_mins(5);
/// docker-proxy processes actually started; larger counts are scaled from these.
pub const PROXIES_MEASURED: usize = 100;
/// Of 10 000 iptables mappings, how many are removed with -D (timed, scaled).
const IPT_DELETED: usize = 200;
/// Ports added one call each on top of 10 000 (per-port cost at scale).
const ONE_BY_ONE: usize = 20;

fn api(d: &Daemon, path: &str, body: &Value) -> Result<()> {
    let r = api_request(d.socket(), "POST", path, Some(&body.to_string()), BIG)?;
    if r.status / 100 != 2 {
        bail!("POST {path}: {} {}", r.status, r.body);
    }
    Ok(())
}

fn ms(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Waits until no flow of `ctr_ip` is tracked any more.
fn wait_for_no_flows(fs: &Bpffs, ctr_ip: std::net::Ipv4Addr) -> Result<()> {
    let t = Instant::now();
    while berth_integration::flows::count_flows_of(fs.path(), ctr_ip)? > 0 {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the flows of {ctr_ip} were not forgotten within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn range_maps(n: usize) -> Vec<Mapping> {
    extras(n)
}

fn specs(maps: &[Mapping]) -> Vec<String> {
    maps.iter()
        .map(|m| format!("{}:{}", m.host_port, m.ctr_port))
        .collect()
}

/// Handles of rules in `chain` of Docker 29's table that match one of `ports`.
fn nft_handles(ns: &NetNs, chain: &str, ports: &HashSet<u16>) -> Result<Vec<u64>> {
    let out = ns.exec(
        "nft",
        ["-a", "list", "chain", "ip", "docker-bridges", chain],
    )?;
    let mut v = Vec::new();
    for line in out.lines() {
        let Some(h) = line.rsplit_once("# handle ") else {
            continue;
        };
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "dport")
            .nth(1)
            .and_then(|p| p.parse::<u16>().ok());
        if port.is_some_and(|p| ports.contains(&p)) {
            v.push(h.1.trim().parse()?);
        }
    }
    Ok(v)
}

/// Deletes the rules of `maps` by handle (at most `limit` per chain).
fn nft_docker29_delete(ns: &NetNs, maps: &[Mapping], limit: usize) -> Result<()> {
    let ports: HashSet<u16> = maps.iter().map(|m| m.host_port).collect();
    let mut batch = String::new();
    for chain in ["nat-prerouting-and-output", "filter-forward-in__docker0"] {
        for h in nft_handles(ns, chain, &ports)?.into_iter().take(limit) {
            batch.push_str(&format!(
                "delete rule ip docker-bridges {chain} handle {h}\n"
            ));
        }
    }
    ns.exec_with_stdin("nft", ["-f", "-"], &batch)?;
    Ok(())
}

#[derive(Default)]
struct Times {
    publish: Vec<f64>,
    unpublish: Vec<f64>,
}

fn row(system: &str, op: &str, ports: usize, how: &str, t: &Times, scale: f64) -> Value {
    let scaled = |v: &[f64]| v.iter().map(|x| x * scale).collect::<Vec<_>>();
    json!({
        "system": system,
        "operation": op,
        "ports": ports,
        "how": how,
        "scaled_from": if scale != 1.0 { Some((ports as f64 / scale).round() as usize) } else { None },
        "publish_ms": summary(&scaled(&t.publish)),
        "unpublish_ms": summary(&scaled(&t.unpublish)),
    })
}

pub struct ControlResult {
    pub control: Value,
    pub memory: Value,
}

/// Flows per port of the 1 000-port range in the full-table row: 200 000 of
/// the table's [`FULL_TABLE_FLOWS`].
const FULL_TABLE_FLOWS_PER_PORT: u32 = 200;
/// `--max-flows` of the daemon the control rows run (a large host's; it
/// also gets room for their 10 000 single mappings).
const FULL_TABLE_FLOWS: u32 = 262_144;

/// The daemon flags of a large host: room for [`FULL_TABLE_FLOWS`] flows and
/// the 10 000 single mappings the bench publishes.
pub fn large_host_flags() -> Vec<String> {
    vec![
        "--max-flows".into(),
        FULL_TABLE_FLOWS.to_string(),
        "--max-mappings".into(),
        "16384".into(),
    ]
}

/// What 1 000 published ports cost: berth with its default capacities,
/// with nothing and then a 1 000-port range published, and (with `peers`)
/// docker-proxy, [`PROXIES_MEASURED`] processes.
pub fn memory(peers: bool) -> Result<Value> {
    let topo = Topology::build()?;
    let fs = Bpffs::new()?;
    let d = Daemon::start_with(
        &topo.host.ns,
        &fs,
        DaemonOptions {
            attach: Some("tc".into()),
            ..Default::default()
        },
    )?;
    let pid = d.pid().context("daemon pid")?;
    // What the daemon holds once it has settled: it returns the heap a
    // burst of work freed a moment after the work (`adapters::memory`).
    let settle = || std::thread::sleep(berth::adapters::memory::TRIM_DELAY * 2);
    settle();
    let berth_empty = berth_memory(pid)?;
    let spec = super::peers::extra_range_spec(1_000);
    let body = json!({"task": "range", "containerIP": CTR2, "ports": [spec]});
    api(&d, "/v1/bindings", &body)?;
    settle();
    let berth_1000 = berth_memory(pid)?;
    drop(d);
    drop(fs);
    let mut memory = json!({"berth_empty": berth_empty, "berth_1000": berth_1000});
    if peers {
        let mut children: Vec<Child> = topo.host.ns.try_run(|| {
            (0..PROXIES_MEASURED)
                .map(|i| {
                    spawn_docker_proxy_here(&Mapping {
                        udp: false,
                        host_port: 30_000 + i as u16,
                        ctr_ip: CTR2,
                        ctr_port: 80,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })??;
        memory["docker_proxy_100"] = proxies_memory(&children)?;
        memory["docker_proxy_measured"] = json!(PROXIES_MEASURED);
        for c in &mut children {
            c.stop()?;
        }
    }
    Ok(memory)
}

/// The control-plane rows; with `peers == false` only berth's (the
/// `control-berth` section), which needs none of the peers' packages.
pub fn control_and_memory(s: &Settings, peers: bool) -> Result<ControlResult> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let range = range_maps(1_000);
    let singles = range_maps(10_000);

    let memory = memory(peers)?;
    // --- berth (tc) on a Docker 28 host.
    let topo = Topology::build()?;
    let fs = Bpffs::new()?;
    let d = Daemon::start_with(
        &topo.host.ns,
        &fs,
        DaemonOptions {
            attach: Some("tc".into()),
            extra_args: large_host_flags(),
            ..Default::default()
        },
    )?;
    let (mut r_api, mut r_cli, mut s_one, mut one, mut r_full) = (
        Times::default(),
        Times::default(),
        Times::default(),
        Times::default(),
        Times::default(),
    );
    let range_spec = super::peers::extra_range_spec(1_000);
    for _ in 0..s.cp_reps {
        let body = json!({"task": "range", "containerIP": CTR2, "ports": [range_spec]});
        r_api.publish.push(ms(|| api(&d, "/v1/bindings", &body))?);
        r_api.unpublish.push(ms(|| {
            api(&d, "/v1/bindings/delete", &json!({"task": "range"}))
        })?);
        // The same, with the flow table nearly full of the range's flows:
        // unpublishing forgets every one of them.
        r_full.publish.push(ms(|| api(&d, "/v1/bindings", &body))?);
        let first = super::peers::EXTRA_BASE;
        berth_integration::flows::FlowFill {
            ctr_ip: CTR2.parse()?,
            ctr_ports: first..=first + 999,
            host_base: first,
            client_ip: berth_integration::addr::CLIENT_IP,
            per_port: FULL_TABLE_FLOWS_PER_PORT,
        }
        .insert(fs.path())?;
        r_full.unpublish.push(ms(|| {
            api(&d, "/v1/bindings/delete", &json!({"task": "range"}))
        })?);
        // The answer comes before the flows are forgotten (a background
        // sweep); let that finish untimed, or the next row's publish of
        // the same range would wait for it.
        wait_for_no_flows(&fs, CTR2.parse()?)?;
        r_cli.publish.push(ms(|| {
            d.cli_ok([
                "map",
                "add",
                "--task",
                "range",
                "--ip",
                CTR2,
                "-p",
                &range_spec,
            ])
            .map(|_| ())
        })?);
        r_cli.unpublish.push(ms(|| {
            d.cli_ok(["map", "rm", "--task", "range"]).map(|_| ())
        })?);

        let body = json!({"task": "singles", "containerIP": CTR2, "ports": specs(&singles)});
        s_one.publish.push(ms(|| api(&d, "/v1/bindings", &body))?);
        // One more port at a time, one request each, with 10 000 present.
        let more: Vec<Mapping> = (0..ONE_BY_ONE)
            .map(|i| Mapping {
                udp: false,
                host_port: 40_000 + i as u16,
                ctr_ip: CTR2,
                ctr_port: 80,
            })
            .collect();
        let t = Instant::now();
        for (i, m) in more.iter().enumerate() {
            let body = json!({"task": format!("one{i}"), "containerIP": CTR2, "ports": specs(std::slice::from_ref(m))});
            api(&d, "/v1/bindings", &body)?;
        }
        one.publish
            .push(t.elapsed().as_secs_f64() * 1e3 / ONE_BY_ONE as f64);
        let t = Instant::now();
        for i in 0..ONE_BY_ONE {
            api(
                &d,
                "/v1/bindings/delete",
                &json!({"task": format!("one{i}")}),
            )?;
        }
        one.unpublish
            .push(t.elapsed().as_secs_f64() * 1e3 / ONE_BY_ONE as f64);
        s_one.unpublish.push(ms(|| {
            api(&d, "/v1/bindings/delete", &json!({"task": "singles"}))
        })?);
    }
    rows.push(row(
        "berth",
        "range_1000",
        1_000,
        "API: one request with a 1000-port range",
        &r_api,
        1.0,
    ));
    rows.push(row(
        "berth",
        "range_1000_full_flow_table",
        1_000,
        "API: one request with a 1000-port range; 200 000 of its flows tracked when it is removed",
        &r_full,
        1.0,
    ));
    rows.push(
        row(
            "berth",
            "range_1000",
            1_000,
            "CLI: `berth map add -p 20000-20999:20000-20999` (process start included)",
            &r_cli,
            1.0,
        )
        .with_system("berth-cli"),
    );
    rows.push(row(
        "berth",
        "single_10000",
        10_000,
        "API: one request listing 10 000 single-port specs",
        &s_one,
        1.0,
    ));
    rows.push(row(
        "berth",
        "one_more_at_10000",
        1,
        "API: one request per port, 10 000 already published (per port)",
        &one,
        1.0,
    ));
    drop(d);
    drop(fs);
    if !peers {
        return Ok(ControlResult {
            control: Value::Array(rows),
            memory,
        });
    }

    eprintln!(
        "bench: control plane: berth done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    // --- iptables (Docker 28 rules), on the same host.
    let host = &topo.host.ns;
    let restore = |input: &str| -> Result<()> {
        host.exec_with_stdin("iptables-restore", ["-w", "--noflush"], input)
            .map(|_| ())
    };
    let (mut ir, mut is, mut ione) = (Times::default(), Times::default(), Times::default());
    let add_range = iptables_rules(&range, false);
    let del_range = iptables_rules(&range, true);
    let add_singles = iptables_rules(&singles, false);
    let spread: Vec<Mapping> = singles
        .iter()
        .step_by(singles.len() / IPT_DELETED)
        .copied()
        .collect();
    let del_some = iptables_rules(&spread, true);
    for _ in 0..s.cp_reps {
        ir.publish.push(ms(|| restore(&add_range))?);
        ir.unpublish.push(ms(|| restore(&del_range))?);
        is.publish.push(ms(|| restore(&add_singles))?);
        // Docker 28 runs one iptables command per rule: two per port.
        let m = Mapping {
            udp: false,
            host_port: 40_000,
            ctr_ip: CTR2,
            ctr_port: 80,
        };
        let nat = |op: &str| {
            vec![
                "-w".to_string(),
                "-t".into(),
                "nat".into(),
                op.into(),
                "DOCKER".into(),
                "!".into(),
                "-i".into(),
                "docker0".into(),
                "-p".into(),
                "tcp".into(),
                "-m".into(),
                "tcp".into(),
                "--dport".into(),
                m.host_port.to_string(),
                "-j".into(),
                "DNAT".into(),
                "--to-destination".into(),
                format!("{}:{}", m.ctr_ip, m.ctr_port),
            ]
        };
        let filter = |op: &[&str]| {
            let mut v: Vec<String> = vec!["-w".into(), "-t".into(), "filter".into()];
            v.extend(op.iter().map(ToString::to_string));
            v.extend([
                "-d".to_string(),
                format!("{}/32", m.ctr_ip),
                "!".into(),
                "-i".into(),
                "docker0".into(),
                "-o".into(),
                "docker0".into(),
                "-p".into(),
                "tcp".into(),
                "-m".into(),
                "tcp".into(),
                "--dport".into(),
                m.ctr_port.to_string(),
                "-j".into(),
                "ACCEPT".into(),
            ]);
            v
        };
        let t = Instant::now();
        for _ in 0..ONE_BY_ONE / 4 {
            host.exec("iptables", nat("-A"))?;
            host.exec("iptables", filter(&["-I", "DOCKER", "1"]))?;
        }
        ione.publish
            .push(t.elapsed().as_secs_f64() * 1e3 / (ONE_BY_ONE / 4) as f64);
        let t = Instant::now();
        for _ in 0..ONE_BY_ONE / 4 {
            host.exec("iptables", nat("-D"))?;
            host.exec("iptables", filter(&["-D", "DOCKER"]))?;
        }
        ione.unpublish
            .push(t.elapsed().as_secs_f64() * 1e3 / (ONE_BY_ONE / 4) as f64);
        // Removing all 10 000 with -D takes minutes (each -D searches the
        // chain: 141 s measured once here), so remove 200 spread evenly over
        // the chains, scale linearly (an overestimate) and flush the rest untimed.
        is.unpublish
            .push(ms(|| restore(&del_some))? * (singles.len() / IPT_DELETED) as f64);
        restore(&iptables_batch(&[]))?;
    }
    rows.push(row(
        "iptables-dnat",
        "range_1000",
        1_000,
        "iptables-restore --noflush: 1000 DNAT + 1000 ACCEPT rules (Docker expands ranges)",
        &ir,
        1.0,
    ));
    rows.push(row("iptables-dnat", "single_10000", 10_000, "iptables-restore --noflush: 10 000 DNAT + 10 000 ACCEPT rules; removal: -D of each rule, **200 spread over the 10 000 measured and scaled ×50** (each -D searches the chain, which shrinks as rules go, so this overestimates: removing all 10 000 took 141 s once on the development VM)", &is, 1.0));
    rows.push(row("iptables-dnat", "one_more_at_10000", 1, "two `iptables` commands per port, as Docker 28 runs them, 10 000 already published (per port)", &ione, 1.0));

    eprintln!(
        "bench: control plane: iptables done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    // --- docker-proxy: 100 processes, scaled.
    let proxy_maps: Vec<Mapping> = (0..PROXIES_MEASURED)
        .map(|i| Mapping {
            udp: false,
            host_port: 30_000 + i as u16,
            ctr_ip: CTR2,
            ctr_port: 80,
        })
        .collect();
    let mut px = Times::default();
    for _ in 0..s.cp_reps {
        let t = Instant::now();
        let mut children: Vec<Child> = host.try_run(|| {
            proxy_maps
                .iter()
                .map(spawn_docker_proxy_here)
                .collect::<Result<Vec<_>>>()
        })??;
        px.publish.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        for c in &mut children {
            c.stop()?;
        }
        px.unpublish.push(t.elapsed().as_secs_f64() * 1e3);
        drop(children);
    }
    let n = PROXIES_MEASURED as f64;
    rows.push(row(
        "docker-proxy",
        "range_1000",
        1_000,
        "start/stop 1000 docker-proxy processes (100 measured, scaled ×10)",
        &px,
        1_000.0 / n,
    ));
    rows.push(row(
        "docker-proxy",
        "single_10000",
        10_000,
        "start/stop 10 000 docker-proxy processes (100 measured, scaled ×100)",
        &px,
        10_000.0 / n,
    ));
    rows.push(row(
        "docker-proxy",
        "one_more_at_10000",
        1,
        "start/stop one docker-proxy (mean of 100)",
        &px,
        1.0 / n,
    ));
    drop(topo);

    eprintln!(
        "bench: control plane: docker-proxy done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    // --- nftables, Docker 29 rules and a map, on a host without iptables rules.
    let topo = Topology::build_with(berth_integration::TopologyOptions {
        docker_iptables: false,
        ..Default::default()
    })?;
    let host = &topo.host.ns;
    let nft =
        |input: &str| -> Result<()> { host.exec_with_stdin("nft", ["-f", "-"], input).map(|_| ()) };
    let (mut nr, mut ns1, mut none) = (Times::default(), Times::default(), Times::default());
    nft(&nft_docker29(&[]))?;
    let add_range = nft_docker29_add(&range);
    let add_singles = nft_docker29_add(&singles);
    for _ in 0..s.cp_reps {
        nr.publish.push(ms(|| nft(&add_range))?);
        nr.unpublish
            .push(ms(|| nft_docker29_delete(host, &range, usize::MAX))?);
        ns1.publish.push(ms(|| nft(&add_singles))?);
        let m = Mapping {
            udp: false,
            host_port: 40_000,
            ctr_ip: CTR2,
            ctr_port: 80,
        };
        let one_add = nft_docker29_add(std::slice::from_ref(&m));
        let t = Instant::now();
        for _ in 0..ONE_BY_ONE / 4 {
            nft(&one_add)?;
        }
        none.publish
            .push(t.elapsed().as_secs_f64() * 1e3 / (ONE_BY_ONE / 4) as f64);
        let t = Instant::now();
        for _ in 0..ONE_BY_ONE / 4 {
            nft_docker29_delete(host, std::slice::from_ref(&m), 1)?;
        }
        none.unpublish
            .push(t.elapsed().as_secs_f64() * 1e3 / (ONE_BY_ONE / 4) as f64);
        ns1.unpublish
            .push(ms(|| nft_docker29_delete(host, &singles, usize::MAX))?);
    }
    rows.push(row(
        "nftables-dnat",
        "range_1000",
        1_000,
        "nft -f: 1000 DNAT + 1000 accept rules (Docker 29 per-port rules); removal by handle",
        &nr,
        1.0,
    ));
    rows.push(row(
        "nftables-dnat",
        "single_10000",
        10_000,
        "nft -f: 10 000 DNAT + 10 000 accept rules; removal by handle (listing included)",
        &ns1,
        1.0,
    ));
    rows.push(row(
        "nftables-dnat",
        "one_more_at_10000",
        1,
        "one nft -f per port, 10 000 already published (per port; removal: list + delete)",
        &none,
        1.0,
    ));
    nft("delete table ip docker-bridges\n")?;

    eprintln!(
        "bench: control plane: nftables (Docker 29) done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let (mut mr, mut ms1) = (Times::default(), Times::default());
    nft(&nft_map(&[]))?;
    let (add_r, del_r) = (
        nft_map_elements(&range, false),
        nft_map_elements(&range, true),
    );
    let (add_s, del_s) = (
        nft_map_elements(&singles, false),
        nft_map_elements(&singles, true),
    );
    for _ in 0..s.cp_reps {
        mr.publish.push(ms(|| nft(&add_r))?);
        mr.unpublish.push(ms(|| nft(&del_r))?);
        ms1.publish.push(ms(|| nft(&add_s))?);
        ms1.unpublish.push(ms(|| nft(&del_s))?);
    }
    rows.push(row(
        "nftables-map",
        "range_1000",
        1_000,
        "nft -f: 1000 map + 1000 set elements",
        &mr,
        1.0,
    ));
    rows.push(row(
        "nftables-map",
        "single_10000",
        10_000,
        "nft -f: 10 000 map + 10 000 set elements",
        &ms1,
        1.0,
    ));
    drop(topo);

    Ok(ControlResult {
        control: Value::Array(rows),
        memory,
    })
}

trait WithSystem {
    fn with_system(self, s: &str) -> Value;
}

impl WithSystem for Value {
    fn with_system(mut self, s: &str) -> Value {
        self["system"] = json!(s);
        self
    }
}

// ---------------------------------------------------------------- memory

/// The kernel's accounting of every map and program the daemon holds
/// (`memlock` in /proc/<pid>/fdinfo, one entry per map or program id), and
/// the daemon's RSS and PSS.
fn berth_memory(pid: u32) -> Result<Value> {
    let mut maps = serde_json::Map::new();
    let (mut map_total, mut prog_total) = (0u64, 0u64);
    let mut seen = HashSet::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(text) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let memlock: u64 = field("memlock:").and_then(|v| v.parse().ok()).unwrap_or(0);
        if let Some(id) = field("map_id:") {
            if seen.insert(format!("map{id}")) {
                map_total += memlock;
                let key = format!(
                    "map{id} type {} max_entries {} key {} value {}",
                    field("map_type:").unwrap_or_default(),
                    field("max_entries:").unwrap_or_default(),
                    field("key_size:").unwrap_or_default(),
                    field("value_size:").unwrap_or_default()
                );
                maps.insert(key, json!(memlock));
            }
        } else if let Some(id) = field("prog_id:") {
            if seen.insert(format!("prog{id}")) {
                prog_total += memlock;
            }
        }
    }
    let (rss, pss) = rss_pss(pid)?;
    Ok(json!({
        "maps_memlock_bytes": map_total,
        "programs_memlock_bytes": prog_total,
        "daemon_rss_bytes": rss,
        "daemon_pss_bytes": pss,
        "maps": maps,
    }))
}

/// `VmRSS` and Pss of a process, in bytes.
pub(crate) fn rss_pss(pid: u32) -> Result<(u64, u64)> {
    let kb = |file: &str, key: &str| -> Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
            .with_context(|| format!("no {key} in /proc/{pid}/{file}"))
    };
    Ok((kb("status", "VmRSS:")?, kb("smaps_rollup", "Pss:")?))
}

fn proxies_memory(children: &[Child]) -> Result<Value> {
    let (mut rss, mut pss) = (0u64, 0u64);
    for c in children {
        let (r, p) = rss_pss(c.pid())?;
        rss += r;
        pss += p;
    }
    Ok(json!({
        "processes": children.len(),
        "rss_bytes": rss,
        "pss_bytes": pss,
    }))
}
