//! `cargo xtask demo`: berth's main job on a built-in topology.
//!
//! A client, a Docker-like host (uplink, docker0, Docker's iptables rules)
//! and two containers, all in network namespaces this program creates and
//! removes. It starts the real `berth daemon` on the host, publishes two
//! static mappings with the real CLI, sends real requests from the client,
//! and prints what each side saw. Nothing is left behind.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_integration::{
    http_get, udp_request, Bpffs, Daemon, HttpPeerServer, Topology, UdpEchoServer,
};

const T: Duration = Duration::from_secs(5);

fn step(title: &str) {
    println!("\n== {title}");
}

fn berth(daemon: &Daemon, args: &[&str]) -> Result<()> {
    println!("host# berth {}", args.join(" "));
    let out = daemon.cli_ok(args)?;
    print!("{out}");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("berth-demo: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    if !berth_integration::is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
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
    println!("The host carries Docker's default iptables rules: FORWARD policy DROP, MASQUERADE for 172.17.0.0/16.");

    let _web = HttpPeerServer::start_in(&topo.container.ns, "0.0.0.0:80".parse()?)?;
    let _dns = UdpEchoServer::start_in(&topo.container2.ns, "0.0.0.0:53".parse()?)?;
    println!(
        "container {}: an HTTP server on :80 that answers with the peer address it sees",
        topo.container.ip
    );
    println!("container {}: a UDP echo server on :53", topo.container2.ip);

    step("Start the daemon on the host");
    let bpffs = Bpffs::new()?;
    println!(
        "host# berth daemon --uplink up0 --bridge docker0 --bpffs {}",
        bpffs.path().display()
    );
    let daemon = Daemon::start(&topo.host.ns, &bpffs)?;
    println!("(running, pid {})", daemon.pid().unwrap_or(0));

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
    for _ in 0..2 {
        let target = topo.host.addr(8080);
        let seen = topo.client.ns.run(move || http_get(target, "/", T))?;
        println!(
            "client$ curl http://{target}/   -> the container saw the request come from {seen}"
        );
        if !seen.starts_with(&format!("{}:", topo.client.ip)) {
            bail!("the container did not see the client's real address: {seen}");
        }
    }
    let target = topo.host.addr(5353);
    let reply = topo
        .client
        .ns
        .run(move || udp_request(target, "hello", T))?;
    println!(
        "client$ echo hello | nc -u {target}   -> reply from {}: {:?}",
        reply.from, reply.text
    );
    if reply.from != target {
        bail!("the UDP reply came from {} instead of {target}", reply.from);
    }

    step("What is published");
    berth(&daemon, &["map", "ls"])?;
    berth(&daemon, &["stats"])?;
    let dnat_rules = topo
        .host
        .iptables_save()?
        .lines()
        .filter(|l| l.contains("DNAT"))
        .count();
    println!("iptables DNAT rules on the host: {dnat_rules} (no docker-proxy, no NAT rule: the eBPF datapath does it)");

    step("Unpublish");
    berth(&daemon, &["map", "rm", "--task", "web"])?;
    let target = topo.host.addr(8080);
    let after = topo
        .client
        .ns
        .run(move || http_get(target, "/", Duration::from_secs(1)));
    println!(
        "client$ curl http://{target}/   -> {}",
        if after.is_err() {
            "no answer (unpublished)"
        } else {
            "still answered!"
        }
    );
    if after.is_ok() {
        bail!("port 8080 still reached the container after map rm");
    }

    step("Clean up");
    drop(daemon);
    drop(bpffs);
    drop(topo);
    println!("daemon stopped, bpffs unmounted, namespaces deleted. Demo OK.");
    Ok(())
}
