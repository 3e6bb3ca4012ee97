//! `cargo xtask demo`: berth's main job on a built-in topology.
//!
//! A client, a Docker-like host (uplink, docker0, Docker's iptables rules)
//! and two containers, all in network namespaces this program creates and
//! removes. It starts the real `berth daemon` on the host, publishes two
//! static mappings with the real CLI, sends requests from the client with
//! the real `curl` and `nc`, and prints what each side saw. Nothing is left
//! behind.
//!
//! Every command run on the topology is printed as a line for a root shell
//! (`ip netns exec <namespace> …`) and run as printed, through `sh -c`, so
//! what the demo shows is what it did. `--pause` waits for Enter before
//! cleaning up, so a newcomer can run the same lines by hand meanwhile.
use std::{
    io::BufRead as _,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use berth_integration::{
    cmd::{output_with_timeout, shell_quote},
    Bpffs, Daemon, HttpPeerServer, NetNs, Topology, UdpEchoServer,
};

/// How long one printed command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn step(title: &str) {
    println!("\n== {title}");
}

/// Prints `line` as a root shell prompt would show it, runs it with
/// `sh -c`, prints its stdout and returns the whole output.
fn shell(line: &str) -> Result<Output> {
    println!("# {line}");
    let out = output_with_timeout(Command::new("sh").args(["-c", line]), COMMAND_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !stdout.is_empty() && !stdout.ends_with('\n') {
        println!();
    }
    Ok(out)
}

/// [`shell`] for a command that must succeed.
fn shell_ok(line: &str) -> Result<String> {
    let out = shell(line)?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec <ns> args…` as one shell line.
fn in_ns(ns: &NetNs, args: &str) -> String {
    format!("ip netns exec {} {args}", shell_quote(ns.name()))
}

fn berth(daemon: &Daemon, args: &[&str]) -> Result<String> {
    shell_ok(&daemon.cli_command_line(args))
}

/// The demo needs both clients; bootstrap installs them.
fn check_clients() -> Result<()> {
    for tool in ["curl", "nc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("the demo runs `{tool}` as the client and it is not installed: run `cargo xtask bootstrap` (it installs curl and netcat-openbsd)");
        }
    }
    Ok(())
}

fn main() {
    let pause = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--pause") => true,
        Some(other) => {
            eprintln!("berth-demo: unknown argument {other:?} (the only one is --pause)");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(pause) {
        eprintln!("berth-demo: {e:#}");
        std::process::exit(1);
    }
}

fn run(pause: bool) -> Result<()> {
    if !berth_integration::is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    check_clients()?;
    step("Topology");
    let topo = Topology::build().context("building the demo topology")?;
    println!(
        "client {}  --  uplink up0 {} [host] docker0 {}  --  containers {} and {}",
        topo.client.ip,
        topo.host.uplink_ip,
        topo.host.bridge_ip,
        topo.container.ip,
        topo.container2.ip
    );
    for (role, ns) in [
        ("client", &topo.client.ns),
        ("host", &topo.host.ns),
        ("container 172.17.0.2", &topo.container.ns),
        ("container 172.17.0.3", &topo.container2.ns),
    ] {
        println!("  {role:<21} network namespace {}", ns.name());
    }
    println!("The host carries Docker's default iptables rules: FORWARD policy DROP, MASQUERADE for 172.17.0.0/16.");

    let _web = HttpPeerServer::start_in(&topo.container.ns, "0.0.0.0:80".parse()?)?;
    let _dns = UdpEchoServer::start_in(&topo.container2.ns, "0.0.0.0:53".parse()?)?;
    println!(
        "container {}: an HTTP server on :80 (built into the demo) that answers with the peer address it sees",
        topo.container.ip
    );
    println!(
        "container {}: a UDP server on :53 (built into the demo) that echoes each datagram after the peer address it sees",
        topo.container2.ip
    );

    step("Start the daemon on the host");
    let bpffs = Bpffs::new()?;
    println!(
        "(a private bpffs for this demo is mounted at {})",
        bpffs.path().display()
    );
    let daemon = Daemon::start(&topo.host.ns, &bpffs)?;
    println!("# {} &", daemon.command_line());
    println!(
        "(running, pid {}; BERTH_CGROUP limits its bind guard to a cgroup of the demo's own)",
        daemon.pid().unwrap_or(0)
    );

    step("Publish two ports, as `docker run -p 8080:80` and `-p 5353:53/udp` would");
    berth(
        &daemon,
        &[
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:80",
        ],
    )?;
    berth(
        &daemon,
        &[
            "map",
            "add",
            "--task",
            "dns",
            "--ip",
            "172.17.0.3",
            "-p",
            "5353:53/udp",
        ],
    )?;

    step("Requests from the client");
    let web = topo.host.addr(8080);
    let curl = in_ns(
        &topo.client.ns,
        &format!("curl -sS --max-time 5 http://{web}/"),
    );
    for _ in 0..2 {
        let seen = shell_ok(&curl)?;
        let seen = seen.trim();
        if !seen.starts_with(&format!("{}:", topo.client.ip)) {
            bail!("the container did not see the client's real address: {seen}");
        }
        println!("(the container saw the request come from {seen}: the client itself, no proxy in between)");
    }
    let dns = topo.host.addr(5353);
    let reply = shell_ok(&format!(
        "echo hello | {}",
        in_ns(
            &topo.client.ns,
            &format!("nc -u -w 2 {} {}", dns.ip(), dns.port())
        )
    ))?;
    if !reply.starts_with(&format!("{}:", topo.client.ip)) || !reply.trim_end().ends_with(" hello")
    {
        bail!("no echo from the container through {dns}: {reply:?}");
    }
    // nc connects its UDP socket, and a connected socket takes datagrams
    // from that one address only: an answer at all is one from the host port.
    println!(
        "(nc only accepts datagrams from {dns}: the reply left the host from the published port)"
    );

    step("What is published");
    berth(&daemon, &["map", "ls"])?;
    berth(&daemon, &["stats"])?;
    let nat = shell_ok(&in_ns(&topo.host.ns, "iptables -t nat -S"))?;
    let dnat_rules = nat.lines().filter(|l| l.contains("DNAT")).count();
    println!("(DNAT rules in the host's nat table: {dnat_rules}; no docker-proxy either: the eBPF datapath does it)");

    step("Unpublish");
    berth(&daemon, &["map", "rm", "--task", "web"])?;
    let after = shell(&in_ns(
        &topo.client.ns,
        &format!("curl -sS --max-time 1 http://{web}/"),
    ))?;
    if after.status.success() {
        bail!("port 8080 still reached the container after map rm");
    }
    println!(
        "(no answer: {})",
        String::from_utf8_lossy(&after.stderr).trim()
    );

    if pause {
        step("Paused");
        println!("Everything is still up: the lines above run as printed in another root shell.");
        println!("Press Enter to clean up.");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }

    step("Clean up");
    drop(daemon);
    drop(bpffs);
    drop(topo);
    println!("daemon stopped, bpffs unmounted, namespaces deleted. Demo OK.");
    Ok(())
}
