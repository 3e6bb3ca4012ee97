//! `cargo xtask bench`: berth side by side with its peers in one run.
//!
//! 1. Verifier budget of every program.
//! 2. Datapath cost per packet via `BPF_PROG_TEST_RUN` (ingress hit, miss,
//!    reply; TC and XDP; security groups with 1 and 300 rules) at 1, 1 000
//!    and 65 000 mappings, beside an empty program's floor.
//! 3. On the namespace topology, one per peer (direct, Docker's iptables
//!    DNAT, Docker 29's nftables DNAT, a map-based nftables DNAT, the real
//!    docker-proxy, berth tc, berth xdp): connections/s, latency p50/p99,
//!    iperf3 throughput, UDP small-packet rate and CPU per unit of work, at
//!    1 and at 10 000 published ports. Peers interleaved, medians with
//!    min-max.
//! 4. XDP vs TC on veth (stack, TC redirect, `XDP_PASS`, `XDP_REDIRECT`).
//! 5. Control plane (publish/unpublish a 1 000-port range and 10 000
//!    single mappings) and memory for 1 000 ports.
//! 6. Docker: `docker run -p 9000-9999:9000-9999` with a real dockerd via
//!    docker-proxy, berth-docker-proxy and berth's events mode (time until
//!    the ports answer and are published, until removed; memory of the
//!    proxies and the berth daemon). `--quick`: 100 ports.
//! 7. IPv6 (`ipv6`): connections/s over IPv6 through Docker's ip6tables
//!    DNAT and through berth, beside the direct path.
//!
//! Results: `bench/results.json`, `bench/RESULTS.md` and `bench/*.svg`
//! (`*-quick.*` with `--quick`). `--from-json FILE` redraws the report and
//! charts from a results file without measuring anything.
use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context as _, Result};
use berth_bench::{control, datapath, docker, ipv6, machine, report, topo, veth, Settings};
use berth_integration::testrun::in_fixture_ns;
use serde_json::{json, Value};

struct Opts {
    quick: bool,
    out_dir: PathBuf,
    /// Sections to run (all when empty).
    only: Vec<String>,
    from_json: Option<PathBuf>,
    /// The previous release's eBPF object, measured beside berth's own.
    previous: Option<PathBuf>,
    /// This tree's object built without counters (issue 14).
    uncounted: Option<PathBuf>,
    /// The commit that object was built from (`--previous-commit`, which
    /// `cargo xtask bench` passes), for the report's label.
    previous_commit: Option<String>,
}

/// `control-berth`: berth's control-plane rows only; `memory`: the memory
/// for 1 000 ports only; `huge`: the 65 000-port connections/s of the
/// direct path and berth only (none is part of a full run: `control` and
/// `topology` measure them).
const SECTIONS: [&str; 10] = [
    "verifier",
    "datapath",
    "topology",
    "veth",
    "control",
    "control-berth",
    "memory",
    "docker",
    "ipv6",
    "huge",
];

fn parse_args() -> Result<Opts> {
    let mut quick = false;
    // The crate's own directory holds the results the READMEs link to.
    let mut out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut only = Vec::new();
    let mut from_json = None;
    let mut previous = None;
    let mut uncounted = None;
    let mut previous_commit = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out_dir = PathBuf::from(args.next().context("--out needs a directory")?),
            "--only" => {
                let list = args.next().context("--only needs a list")?;
                for s in list.split(',') {
                    if !SECTIONS.contains(&s) {
                        bail!("unknown section {s:?} (sections: {})", SECTIONS.join(","));
                    }
                    only.push(s.to_string());
                }
            }
            "--previous-object" => {
                previous = Some(PathBuf::from(
                    args.next().context("--previous-object needs a file")?,
                ))
            }
            "--uncounted-object" => {
                uncounted = Some(PathBuf::from(
                    args.next().context("--uncounted-object needs a file")?,
                ))
            }
            "--previous-commit" => {
                previous_commit = Some(args.next().context("--previous-commit needs a commit")?)
            }
            "--from-json" => {
                from_json = Some(PathBuf::from(
                    args.next().context("--from-json needs a file")?,
                ))
            }
            other => bail!(
                "unknown argument {other:?} (use --quick, --out DIR, --only {}, --from-json FILE, --previous-object FILE [--previous-commit C], --uncounted-object FILE)",
                SECTIONS.join(",")
            ),
        }
    }
    Ok(Opts {
        quick,
        out_dir,
        only,
        from_json,
        previous,
        uncounted,
        previous_commit,
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

fn verifier_markdown(results: &Value) -> String {
    let mut s = String::new();
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
    s
}

// ---------------------------------------------------------------- main

fn main() {
    if let Err(e) = run() {
        eprintln!("berth-bench: {e:#}");
        std::process::exit(1);
    }
}

fn write_outputs(results: &Value, opts: &Opts, quick: bool) -> Result<()> {
    let mut md = report::markdown(results) + &verifier_markdown(results);
    if results.get("ipv6").is_some() {
        md += &ipv6::markdown(results);
    }
    std::fs::create_dir_all(&opts.out_dir)?;
    let suffix = if quick { "-quick" } else { "" };
    let json_path = opts.out_dir.join(format!("results{suffix}.json"));
    let md_path = opts.out_dir.join(format!("RESULTS{suffix}.md"));
    if opts.from_json.is_none() {
        std::fs::write(&json_path, serde_json::to_string_pretty(results)? + "\n")?;
    }
    std::fs::write(&md_path, &md)?;
    let charts = report::write_charts(results, &opts.out_dir, suffix)?;
    println!("{md}");
    eprintln!(
        "bench: wrote {}{} and {} charts ({})",
        if opts.from_json.is_none() {
            format!("{}, ", json_path.display())
        } else {
            String::new()
        },
        md_path.display(),
        charts.len(),
        charts.join(" ")
    );
    Ok(())
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    if let Some(path) = &opts.from_json {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let results: Value = serde_json::from_str(&text)?;
        let quick = results["quick"].as_bool().unwrap_or(false);
        return write_outputs(&results, &opts, quick);
    }
    if !berth_integration::is_root() {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    let wanted = |s: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == s);
    // The topology section spawns docker-proxy itself (the docker section
    // checks for it on its own, dockerd spawns it there).
    if wanted("topology") && !std::path::Path::new(berth_bench::peers::DOCKER_PROXY).is_file() {
        bail!(
            "{} is missing: `cargo xtask bench` installs Debian's docker.io for it",
            berth_bench::peers::DOCKER_PROXY
        );
    }
    let settings = Settings::new(opts.quick);
    let started = Instant::now();
    let mut results = json!({
        "machine": machine(),
        "commit": berth_bench::commit(),
        "quick": opts.quick,
        "settings": settings.json(),
    });
    let mut section = |name: &str, f: &dyn Fn() -> Result<Value>| -> Result<()> {
        if !wanted(name) {
            return Ok(());
        }
        let t = Instant::now();
        eprintln!("bench: {name}...");
        let v = f().with_context(|| format!("section {name}"))?;
        eprintln!("bench: {name} took {:.0} s", t.elapsed().as_secs_f64());
        results[name] = v;
        Ok(())
    };
    section("verifier", &verifier_budget)?;
    section("datapath", &|| {
        let previous = match &opts.previous {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let uncounted = match &opts.uncounted {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        Ok(datapath::datapath_costs(&settings, previous, uncounted))
    })?;

    section("topology", &|| topo::topology_bench(&settings))?;
    section("veth", &|| veth::veth_bench(&settings))?;
    let mut control_result = None;
    let peers = wanted("control");
    if peers || opts.only.iter().any(|o| o == "control-berth") {
        let t = Instant::now();
        eprintln!("bench: control plane and memory...");
        control_result = Some(control::control_and_memory(&settings, peers)?);
        eprintln!(
            "bench: control plane and memory took {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    section("docker", &|| docker::docker_bench(&settings))?;
    section("ipv6", &|| ipv6::ipv6_bench(&settings))?;
    if opts.only.iter().any(|o| o == "huge") && !wanted("topology") {
        let t = Instant::now();
        eprintln!("bench: 65 000 ports (direct, berth)...");
        results["topology"] = topo::huge_bench(&settings)?;
        eprintln!(
            "bench: 65 000 ports took {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(c) = control_result {
        results["control_plane"] = c.control;
        results["memory"] = c.memory;
    } else if opts.only.iter().any(|o| o == "memory") {
        let proxy = std::path::Path::new(berth_bench::peers::DOCKER_PROXY).is_file();
        results["memory"] = control::memory(proxy)?;
    }
    // The verifier section was stored under its section name; the report
    // reads it as verifier_budget.
    if let Some(v) = results.get("verifier").cloned() {
        results["verifier_budget"] = v;
        results.as_object_mut().map(|o| o.remove("verifier"));
    }
    if opts.previous.is_some() && results.get("datapath").is_some() {
        // Only what the caller said the object is: an object passed
        // without its commit is labelled so, never with a guessed one.
        results["datapath_previous_release"] = json!(opts
            .previous_commit
            .as_deref()
            .unwrap_or("an object given without its commit"));
    }
    results["elapsed_s"] = json!(started.elapsed().as_secs_f64().round());
    write_outputs(&results, &opts, opts.quick)
}
