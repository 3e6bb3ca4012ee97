//! `docker run -p 9000-9999:9000-9999` three ways, with Debian's real
//! dockerd (20.10) in a test topology's host namespace: its own
//! docker-proxy, berth-docker-proxy beside a berth daemon, and berth's
//! events mode (`--userland-proxy=false`, `berth daemon --docker`).
//!
//! Per mode: how long from `docker run` until the first and last ports of
//! the range answer an HTTP GET from the client namespace *and* the
//! publish is visible (every port in berth's `map ls`, or on a
//! docker-proxy's command line); how long from `docker rm -f` until both
//! ports refuse and nothing is published any more; and the summed RSS and
//! PSS of the proxy processes plus the berth daemon where one runs, with
//! the range published. dockerd writes its own iptables DNAT in every
//! mode, so the ports may answer through it before berth has published:
//! hence the wait for the visible publish as well.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use berth_integration::{
    cmd::output_with_timeout,
    dockerd::{topology_for_dockerd, DOCKER_BRIDGE, HTTPD_IMAGE},
    http_get, Bpffs, Daemon, DaemonOptions, Dockerd, DockerdOptions, Topology,
};
use serde_json::{json, Value};

use super::{control::rss_pss, stats::summary, Settings};

/// The range of the issue; `--quick` publishes its first [`QUICK_PORTS`].
const FIRST_PORT: u16 = 9000;
const FULL_PORTS: u16 = 1000;
const QUICK_PORTS: u16 = 100;
/// 1 000 docker-proxy processes take a while to start on a loaded VM.
const READY_TIMEOUT: Duration = Duration::from_mins(5);
/// Runs per mode: with 1 000 ports one run and removal through
/// docker-proxy take minutes (2 000 processes started and stopped).
const RUNS: usize = 1;
const POLL: Duration = Duration::from_millis(100);
const DOCKER_PROXY: &str = "/usr/sbin/docker-proxy";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    DockerProxy,
    BerthDockerProxy,
    Events,
}

impl Mode {
    const ALL: [Self; 3] = [Self::DockerProxy, Self::BerthDockerProxy, Self::Events];

    fn name(self) -> &'static str {
        match self {
            Self::DockerProxy => "docker-proxy",
            Self::BerthDockerProxy => "berth-docker-proxy",
            Self::Events => "berth events",
        }
    }

    fn setup(self) -> &'static str {
        match self {
            Self::DockerProxy => "dockerd with its userland proxy, /usr/sbin/docker-proxy (one process per port and address family)",
            Self::BerthDockerProxy => "dockerd --userland-proxy-path berth-docker-proxy (one process per port and address family, publishing through the berth daemon)",
            Self::Events => "dockerd --userland-proxy=false; berth daemon --docker unix://<dockerd's socket>",
        }
    }
}

/// Guards drop in field order: dockerd (its containers), the berth daemon,
/// its bpffs, then the namespaces.
struct Setup {
    docker: Dockerd,
    berth: Option<Daemon>,
    _bpffs: Bpffs,
    topo: Topology,
    proxy: Option<PathBuf>,
}

fn berth_docker_proxy() -> Result<PathBuf> {
    let shim = berth_integration::berth_bin()?.with_file_name("berth-docker-proxy");
    if !shim.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p berth`",
            shim.display()
        );
    }
    Ok(shim)
}

fn setup(mode: Mode) -> Result<Setup> {
    let topo = topology_for_dockerd()?;
    let bpffs = Bpffs::new()?;
    let host = &topo.host.ns;
    let berth_opts = |extra_args| DaemonOptions {
        bridge: DOCKER_BRIDGE.into(),
        extra_args,
        ..Default::default()
    };
    let mut opts = DockerdOptions {
        bridge: DOCKER_BRIDGE.into(),
        ..Default::default()
    };
    let (berth, docker, proxy) = match mode {
        Mode::DockerProxy => (None, Dockerd::start(host, opts)?, Some(DOCKER_PROXY.into())),
        Mode::BerthDockerProxy => {
            let berth = Daemon::start_with(host, &bpffs, berth_opts(Vec::new()))?;
            let shim = berth_docker_proxy()?;
            opts.userland_proxy = Some(shim.clone());
            opts.env = vec![("BERTH_SOCKET".into(), berth.socket().display().to_string())];
            (Some(berth), Dockerd::start(host, opts)?, Some(shim))
        }
        Mode::Events => {
            opts.no_userland_proxy = true;
            let docker = Dockerd::start(host, opts)?;
            let flag = format!("--docker=unix://{}", docker.socket().display());
            let berth = Daemon::start_with(host, &bpffs, berth_opts(vec![flag]))?;
            (Some(berth), docker, None)
        }
    };
    docker.import_httpd_image(&["sh", "httpd"])?;
    Ok(Setup {
        docker,
        berth,
        _bpffs: bpffs,
        topo,
        proxy,
    })
}

/// Each of dockerd's children running `exe`: its PID and `-host-port`.
/// dockerd 20.10 starts one per port and address family (0.0.0.0 and ::).
fn proxies(dockerd: u32, exe: &Path) -> Vec<(u32, Option<u16>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if ppid != Some(dockerd) || args.first().map(Path::new) != Some(exe) {
                return None;
            }
            let port = args
                .iter()
                .position(|a| a == "-host-port")
                .and_then(|i| args.get(i + 1)?.parse().ok());
            Some((pid, port))
        })
        .collect()
}

impl Setup {
    /// The docker CLI against this dockerd, allowed [`READY_TIMEOUT`]: with
    /// 1 000 ports, `docker rm -f` stops 2 000 docker-proxy processes one by
    /// one and outlasts the harness's one-minute CLI timeout.
    fn docker_cli(&self, args: &[&str]) -> Result<()> {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.docker.socket().display()))
            .args(args);
        let out = output_with_timeout(&mut c, READY_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "`docker {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn dockerd_pid(&self) -> Result<u32> {
        self.docker.pid().context("dockerd pid")
    }

    /// Host ports published as far as the mode shows it: in berth's
    /// bindings, or on docker-proxy command lines.
    fn published(&self) -> Result<usize> {
        let ports: HashSet<Option<u16>> = match (&self.berth, &self.proxy) {
            (Some(b), _) => {
                let out = b.cli_ok(["map", "ls", "--json"])?;
                let v: Value = serde_json::from_str(&out).context("map ls --json")?;
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| u16::try_from(b["hostPort"].as_u64()?).ok())
                    .collect()
            }
            (None, Some(exe)) => proxies(self.dockerd_pid()?, exe)
                .into_iter()
                .map(|(_, port)| port)
                .collect(),
            (None, None) => HashSet::new(),
        };
        Ok(ports.len())
    }

    fn answers(&self, port: u16) -> bool {
        let addr = self.topo.host.addr(port);
        self.topo
            .client
            .ns
            .run(move || http_get(addr, "/", Duration::from_secs(1)))
            .is_ok()
    }

    fn wait_until(what: &str, done: impl Fn() -> Result<bool>) -> Result<()> {
        let t = Instant::now();
        while !done()? {
            if t.elapsed() > READY_TIMEOUT {
                bail!("{what}: not within {READY_TIMEOUT:?}");
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    fn memory(&self) -> Result<Value> {
        let mut pids: Vec<u32> = match &self.proxy {
            Some(exe) => proxies(self.dockerd_pid()?, exe)
                .into_iter()
                .map(|(pid, _)| pid)
                .collect(),
            None => Vec::new(),
        };
        let proxies = pids.len();
        if let Some(pid) = self.berth.as_ref().and_then(Daemon::pid) {
            pids.push(pid);
        }
        let (mut rss, mut pss) = (0u64, 0u64);
        for pid in pids {
            let (r, p) = rss_pss(pid)?;
            rss += r;
            pss += p;
        }
        Ok(json!({
            "proxy_processes": proxies,
            "berth_daemon": self.berth.is_some(),
            "rss_bytes": rss,
            "pss_bytes": pss,
        }))
    }
}

/// One mode: its own topology and dockerd, `reps` runs and removals.
fn measure(mode: Mode, ports: u16, reps: usize) -> Result<Value> {
    let s = setup(mode)?;
    let last = FIRST_PORT + ports - 1;
    let range = format!("{FIRST_PORT}-{last}:{FIRST_PORT}-{last}");
    // Two httpds, on the range's first and last ports.
    let cmd = format!("httpd -p {FIRST_PORT} -h /www && exec httpd -f -p {last} -h /www");
    let (mut run_ms, mut rm_ms, mut memory) = (Vec::new(), Vec::new(), Value::Null);
    // When the CLI returned, beside the waits above.
    let (mut run_cli_ms, mut rm_cli_ms) = (Vec::new(), Vec::new());
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for i in 0..reps {
        let name = format!("range{i}");
        let t = Instant::now();
        s.docker_cli(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &range,
            HTTPD_IMAGE,
            "sh",
            "-c",
            &cmd,
        ])?;
        run_cli_ms.push(ms(t));
        Setup::wait_until("ports answer and are published", || {
            Ok(s.answers(FIRST_PORT) && s.answers(last) && s.published()? == usize::from(ports))
        })
        .with_context(|| format!("{}: docker run -p {range}", mode.name()))?;
        run_ms.push(ms(t));
        if i == 0 {
            memory = s.memory()?;
        }
        let t = Instant::now();
        s.docker_cli(&["rm", "-f", &name])?;
        rm_cli_ms.push(ms(t));
        Setup::wait_until("ports refuse and are unpublished", || {
            Ok(!s.answers(FIRST_PORT) && !s.answers(last) && s.published()? == 0)
        })
        .with_context(|| format!("{}: docker rm -f", mode.name()))?;
        rm_ms.push(ms(t));
    }
    Ok(json!({
        "mode": mode.name(),
        "setup": mode.setup(),
        "ports": ports,
        "run_ms": summary(&run_ms),
        "rm_ms": summary(&rm_ms),
        "run_cli_ms": summary(&run_cli_ms),
        "rm_cli_ms": summary(&rm_cli_ms),
        "reps": reps,
        "memory": memory,
    }))
}

/// The docker section: a row per mode.
pub fn docker_bench(s: &Settings) -> Result<Value> {
    if !Path::new(DOCKER_PROXY).is_file() {
        bail!("{DOCKER_PROXY} is missing (docker.io; run `cargo xtask bootstrap`)");
    }
    let ports = if s.quick { QUICK_PORTS } else { FULL_PORTS };
    let rows = Mode::ALL
        .iter()
        .map(|&m| {
            eprintln!("bench: docker: {}, {ports} ports...", m.name());
            measure(m, ports, RUNS)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({ "ports": ports, "first_port": FIRST_PORT, "rows": rows }))
}
