//! `docker run -p` through berth: Debian's real dockerd (20.10) runs in the
//! test's host namespace with `--userland-proxy-path
//! target/debug/berth-docker-proxy` and a bridge of its own (`bdk0`,
//! 172.18.0.0/16); the berth daemon serves that bridge. Clients call the
//! host's uplink from the client namespace, as everywhere else.
//!
//! One dockerd start is shared by the scenarios of each test (a start costs
//! seconds); each scenario states what it checks.
use std::{
    fs,
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr,
    dockerd::{topology_for_dockerd, DOCKER_BRIDGE, HTTPD_IMAGE},
    http_get, tcp_connect, udp_request, Dockerd, DockerdOptions, NetNs, Rig,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

/// Guards drop in field order: dockerd (its containers, shims), then the
/// rig (the berth daemon, its bpffs, the namespaces).
struct Setup {
    docker: Dockerd,
    rig: Rig,
}

fn proxy_bin() -> PathBuf {
    let berth = berth_integration::berth_bin().expect("berth binary");
    let shim = berth.with_file_name("berth-docker-proxy");
    assert!(
        shim.is_file(),
        "{} is missing: run `cargo xtask build`",
        shim.display()
    );
    shim
}

fn setup() -> Setup {
    let topo = topology_for_dockerd().expect("build topology");
    let rig = Rig::builder().bridge(DOCKER_BRIDGE).start_on(topo);
    let berth = &rig.daemon;
    let docker = Dockerd::start(
        &rig.topo.host.ns,
        DockerdOptions {
            bridge: DOCKER_BRIDGE.into(),
            userland_proxy: Some(proxy_bin()),
            env: vec![("BERTH_SOCKET".into(), berth.socket().display().to_string())],
            ..Default::default()
        },
    )
    .expect("start dockerd");
    docker
        .import_httpd_image(&["sh", "httpd", "sleep", "echo"])
        .expect("import busybox image");
    Setup { docker, rig }
}

impl Setup {
    fn run_httpd(&self, name: &str, publish: &str, extra: &[&str]) -> std::process::Output {
        // httpd as PID 1 ignores SIGTERM: spare every stop dockerd's 10 s.
        let mut args = vec![
            "run",
            "-d",
            "--stop-timeout",
            "1",
            "--name",
            name,
            "-p",
            publish,
        ];
        args.extend_from_slice(extra);
        args.extend([HTTPD_IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"]);
        self.docker.docker(&args).expect("docker run")
    }

    fn client_get(&self, port: u16, path: &str) -> anyhow::Result<String> {
        let addr = self.rig.topo.host.addr(port);
        let path = path.to_string();
        self.rig
            .topo
            .client
            .ns
            .run(move || http_get(addr, &path, T))
    }

    /// The client's address as the container saw it, retried while the
    /// httpd process is still starting (the port is published before the
    /// container's process runs).
    fn remote_addr_seen(&self, port: u16) -> String {
        let deadline = Instant::now() + T;
        loop {
            match self.client_get(port, "/cgi-bin/ip") {
                Ok(body) => {
                    let seen = body.trim().trim_start_matches('[').trim_end_matches(']');
                    return seen.trim_start_matches("::ffff:").to_string();
                }
                Err(e) if Instant::now() > deadline => panic!("GET :{port}/cgi-bin/ip: {e:#}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn bindings(&self) -> Vec<Value> {
        let out = self
            .rig
            .daemon
            .cli_ok(["map", "ls", "--json"])
            .expect("map ls");
        let v: Value = serde_json::from_str(&out).expect("map ls --json is JSON");
        v.as_array().expect("an array").clone()
    }

    /// `(task, hostPort, protocol)` of every binding.
    fn published(&self) -> Vec<(String, u64, String)> {
        self.bindings()
            .iter()
            .map(|b| {
                (
                    b["task"].as_str().unwrap_or_default().to_string(),
                    b["hostPort"].as_u64().unwrap_or_default(),
                    b["protocol"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn wait_unpublished(&self, port: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.published().iter().any(|(_, p, _)| *p == port) {
            assert!(
                Instant::now() < deadline,
                "{what}: port {port} still published: {:?}",
                self.published()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn container_ip(&self, name: &str) -> String {
        self.docker
            .docker_ok(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])
            .expect("docker inspect")
    }

    fn sandbox(&self, name: &str) -> PathBuf {
        PathBuf::from(
            self.docker
                .docker_ok(["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name])
                .expect("docker inspect"),
        )
    }

    /// Whatever dockerd started for `0.0.0.0:port/tcp`, shim or not.
    fn proxy_pid(&self, port: u16) -> u32 {
        let parent = self.docker.pid().expect("dockerd runs");
        let want = format!("-host-ip\00.0.0.0\0-host-port\0{port}\0");
        children_of(parent)
            .into_iter()
            .find(|pid| {
                let c = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&c).contains(&want)
            })
            .unwrap_or_else(|| panic!("no proxy for 0.0.0.0:{port} under dockerd {parent}"))
    }

    /// The berth-docker-proxy dockerd started for `host_ip:port/proto`.
    fn shim_pid(&self, host_ip: &str, port: u16, proto: &str) -> u32 {
        let parent = self.docker.pid().expect("dockerd runs");
        let want = [
            "-proto",
            proto,
            "-host-ip",
            host_ip,
            "-host-port",
            &port.to_string(),
        ]
        .join("\0");
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("berth-docker-proxy")
                && cmdline.contains(&want)
                && ppid(pid) == Some(parent)
            {
                return pid;
            }
        }
        panic!("no berth-docker-proxy for {host_ip}:{port}/{proto} under dockerd {parent}");
    }
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn children_of(parent: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| ppid(pid) == Some(parent))
        .collect()
}

/// A `key: N kB` line of `/proc/<pid>/<file>`.
fn kib(pid: u32, file: &str, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/{file}"))
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A UDP server inside a container's network namespace (busybox-static
/// has no UDP server applet): answers each datagram with the sender's
/// address as the container sees it.
fn udp_peer_echo(sandbox: PathBuf, port: u16) -> thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = thread::spawn(move || {
        let ns = fs::File::open(&sandbox).expect("container netns");
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind in the container");
        sock.set_read_timeout(Some(Duration::from_mins(1))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(from.ip().to_string().as_bytes(), from);
        }
    });
    rx.recv_timeout(T).expect("udp server up");
    h
}

#[test]
fn docker_run_p_publishes_through_berth_with_the_clients_address() {
    let s = setup();

    // TCP: published under the container's name, the client's own address
    // reaches the container (through docker-proxy it would be 172.18.0.1).
    let out = s.run_httpd("web", "8080:80", &[]);
    assert!(out.status.success(), "docker run: {}", stderr_of(&out));
    let web_ip = s.container_ip("web");
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());
    let web: Vec<Value> = s
        .bindings()
        .into_iter()
        .filter(|b| b["hostPort"] == 8080)
        .collect();
    assert_eq!(web.len(), 1, "one binding for 8080: {web:?}");
    assert_eq!(web[0]["task"], "web");
    assert_eq!(web[0]["containerIP"], web_ip.as_str());
    assert_eq!(web[0]["containerPort"], 80);
    assert_eq!(web[0]["protocol"], "tcp");

    // The shim stays small, and so does the unpublisher it forked;
    // dockerd's IPv6 twin ([::]:8080) holds nothing and forks nothing.
    let shim = s.shim_pid("0.0.0.0", 8080, "tcp");
    let unpublisher = children_of(shim);
    assert_eq!(unpublisher.len(), 1, "one unpublisher: {unpublisher:?}");
    let v6_twin = s.shim_pid("::", 8080, "tcp");
    assert!(children_of(v6_twin).is_empty());
    for (what, pid) in [
        ("shim", shim),
        ("unpublisher", unpublisher[0]),
        ("[::] twin", v6_twin),
    ] {
        let (rss, pss) = (
            kib(pid, "status", "VmRSS:"),
            kib(pid, "smaps_rollup", "Pss:"),
        );
        eprintln!("berth-docker-proxy {what}: RSS {rss} KiB, PSS {pss} KiB");
        assert!(rss < 16 * 1024, "{what} RSS {rss} KiB");
    }

    // UDP, with the client's address as the container sees it.
    let out = s
        .docker
        .docker([
            "run",
            "-d",
            "--stop-timeout",
            "1",
            "--name",
            "dns",
            "-p",
            "5353:53/udp",
            HTTPD_IMAGE,
            "sleep",
            "600",
        ])
        .unwrap();
    assert!(out.status.success(), "docker run udp: {}", stderr_of(&out));
    let _echo = udp_peer_echo(s.sandbox("dns"), 53);
    let target = s.rig.topo.host.addr(5353);
    let reply = s
        .rig
        .topo
        .client
        .ns
        .run(move || udp_request(target, "who am i", T))
        .expect("UDP through the mapping");
    assert_eq!(reply.from, target, "the reply comes from the host port");
    assert_eq!(reply.text, addr::CLIENT_IP.to_string());
    assert!(s.published().contains(&("dns".into(), 5353, "udp".into())));

    // A second container on the same host port: dockerd's own allocator.
    let out = s.run_httpd("web2", "8080:80", &[]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("Bind for 0.0.0.0:8080 failed: port is already allocated"),
        "{}",
        stderr_of(&out)
    );
    // A host port berth holds for something else: the shim's refusal, in
    // Docker's words, reaches `docker run`, and nothing is left behind.
    s.rig
        .daemon
        .cli_ok([
            "map",
            "add",
            "--task",
            "other",
            "--ip",
            "172.18.0.250",
            "-p",
            "9090:80",
        ])
        .unwrap();
    let out = s.run_httpd("web3", "9090:80", &[]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains(
            "Error starting userland proxy: Bind for 0.0.0.0:9090 failed: port is already allocated"
        ),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        s.published().iter().filter(|(_, p, _)| *p == 9090).count(),
        1,
        "only berth's own 9090"
    );

    // A user-defined network is not berth's bridge: the real docker-proxy
    // serves the port (dockerd's own DNAT carries the client), berth
    // publishes nothing.
    s.docker
        .docker_ok(["network", "create", "--subnet", "172.19.0.0/16", "user"])
        .unwrap();
    let out = s.run_httpd("userweb", "8082:80", &["--network", "user"]);
    assert!(out.status.success(), "docker run: {}", stderr_of(&out));
    let proxy = s.proxy_pid(8082);
    let argv0 = fs::read(format!("/proc/{proxy}/cmdline")).unwrap();
    let argv0 = String::from_utf8_lossy(argv0.split(|&b| b == 0).next().unwrap()).into_owned();
    assert_eq!(
        argv0, "/usr/sbin/docker-proxy",
        "the shim exec'd docker-proxy"
    );
    assert_eq!(s.client_get(8082, "/").unwrap(), "hello\n");
    assert!(!s.published().iter().any(|(_, p, _)| *p == 8082));
    s.docker.docker_ok(["rm", "-f", "userweb"]).unwrap();

    // docker stop unpublishes; the port no longer answers.
    s.docker.docker_ok(["stop", "-t", "1", "web"]).unwrap();
    s.wait_unpublished(8080, "docker stop");
    let addr = s.rig.topo.host.addr(8080);
    s.rig
        .topo
        .client
        .ns
        .run(move || tcp_connect(addr, Duration::from_secs(1)))
        .unwrap_err();
    // docker start publishes again, docker rm -f unpublishes.
    s.docker.docker_ok(["start", "web"]).unwrap();
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());
    s.docker.docker_ok(["rm", "-f", "web"]).unwrap();
    s.wait_unpublished(8080, "docker rm -f");

    // A shim killed with SIGKILL: its unpublisher removes the mapping.
    let shim = s.shim_pid("0.0.0.0", 5353, "udp");
    unsafe {
        libc::kill(shim as i32, libc::SIGKILL);
    }
    s.wait_unpublished(5353, "kill -9 of the shim");
}

#[test]
fn dockerd_death_unpublishes_and_its_restart_publishes_again_across_a_berth_restart() {
    let mut s = setup();
    let out = s.run_httpd("web", "8080:80", &["--restart", "always"]);
    assert!(out.status.success(), "docker run: {}", stderr_of(&out));
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());

    // dockerd SIGKILLed: each shim gets its parent-death signal.
    s.docker.kill().unwrap();
    s.wait_unpublished(8080, "dockerd killed");

    // The new dockerd restarts the container: published again, same name.
    s.docker.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.published().contains(&("web".into(), 8080, "tcp".into())) {
        assert!(
            Instant::now() < deadline,
            "not republished: {:?}",
            s.published()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());

    // A berth restart keeps the mapping (the store) and the shim's
    // unpublish still reaches the new daemon.
    s.rig.daemon.restart().unwrap();
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());

    // A clean dockerd stop stops the container and unpublishes.
    s.docker.stop().unwrap();
    s.wait_unpublished(8080, "dockerd stopped");
}

/// The shim started by hand the way dockerd starts it, in dockerd's (the
/// host's) network namespace: fd 3 a pipe whose other end is returned.
fn spawn_shim(
    host: &NetNs,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, fs::File) {
    spawn_shim_with_listen_fd(host, args, env, None)
}

/// [`spawn_shim`], with `listen` as fd 4 (what `-use-listen-fd` engines pass).
fn spawn_shim_with_listen_fd(
    host: &NetNs,
    args: &[&str],
    env: &[(&str, &str)],
    listen: Option<i32>,
) -> (std::process::Child, fs::File) {
    use std::os::{fd::FromRawFd as _, unix::process::CommandExt as _};
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read, write) = (fds[0], fds[1]);
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={}", host.path().display()))
        .arg(proxy_bin())
        .args(args)
        .envs(env.iter().copied());
    unsafe {
        c.pre_exec(move || {
            inherit_as(write, 3)?;
            if let Some(fd) = listen {
                inherit_as(fd, 4)?;
            }
            Ok(())
        });
    }
    let child = c.spawn().expect("spawn berth-docker-proxy");
    unsafe {
        libc::close(write);
    }
    (child, unsafe { fs::File::from_raw_fd(read) })
}

/// What the shim wrote on fd 3, up to its closing it.
fn status_of(mut pipe: fs::File) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("fd 3 closed within 10 s")
}

#[test]
fn what_berth_cannot_publish_runs_the_real_docker_proxy_and_errors_reach_fd_3() {
    let rig = Rig::start();
    let (topo, berth) = (&rig.topo, &rig.daemon);
    let sock = berth.socket().display().to_string();
    let dir = berth.workdir().to_path_buf();
    // A stand-in docker-proxy: records its argv, says ready on fd 3.
    let fake = dir.join("fake-docker-proxy");
    let argv_file = dir.join("argv");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$0 $*\" > {}\nprintf '0\\n' >&3\n",
            argv_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake_s = fake.display().to_string();
    // Every start below names the stand-in, so nothing here can ever run the
    // real docker-proxy (the option, when given, comes first).
    let env = [
        ("BERTH_SOCKET", sock.as_str()),
        ("BERTH_DOCKER_PROXY_FALLBACK", fake_s.as_str()),
    ];

    // SCTP: the real proxy replaces the shim, without berth's own option.
    let sctp = "-proto sctp -host-ip 0.0.0.0 -host-port 9000 -container-ip 172.17.0.2 -container-port 9000";
    let mut args: Vec<&str> = sctp.split(' ').collect();
    args.extend(["-fallback-proxy", &fake_s]);
    let (mut child, pipe) = spawn_shim(&topo.host.ns, &args, &env);
    assert_eq!(status_of(pipe), "0\n");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        fs::read_to_string(&argv_file).unwrap().trim(),
        format!("{fake_s} {sctp}"),
        "dockerd's arguments as given"
    );

    // An IPv6 host address for an IPv4 container berth does not hold: the
    // real proxy too (found through the environment this time).
    let v6 = "-proto tcp -host-ip :: -host-port 8080 -container-ip 172.17.0.2 -container-port 80";

    let (mut child, pipe) = spawn_shim(&topo.host.ns, &v6.split(' ').collect::<Vec<_>>(), &env);
    assert_eq!(status_of(pipe), "0\n");
    assert!(child.wait().unwrap().success());
    assert!(fs::read_to_string(&argv_file)
        .unwrap()
        .contains("-host-ip ::"));

    // A container on another bridge (a user-defined network): the real
    // proxy, as berth serves docker0 only here.
    let other =
        "-proto tcp -host-ip 0.0.0.0 -host-port 7070 -container-ip 10.9.0.2 -container-port 80";
    let (mut child, pipe) = spawn_shim(&topo.host.ns, &other.split(' ').collect::<Vec<_>>(), &env);
    assert_eq!(status_of(pipe), "0\n");
    assert!(child.wait().unwrap().success());
    assert!(fs::read_to_string(&argv_file)
        .unwrap()
        .contains("-container-ip 10.9.0.2"));
    assert!(!berth.cli_ok(["map", "ls"]).unwrap().contains("7070"));

    // Once berth holds 8080 for IPv4 its bind guard keeps [::]:8080 from
    // any proxy: the shim says ready and holds nothing until stopped.
    berth
        .cli_ok([
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.17.0.2",
            "-p",
            "8080:80",
        ])
        .unwrap();
    fs::remove_file(&argv_file).unwrap();
    let (mut child, pipe) = spawn_shim(&topo.host.ns, &v6.split(' ').collect::<Vec<_>>(), &env);
    assert_eq!(status_of(pipe), "0\n");
    assert!(!argv_file.exists(), "no docker-proxy ran");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let out = berth.cli_ok(["map", "ls", "--json"]).unwrap();
    assert!(
        out.contains("\"hostPort\":8080"),
        "the IPv4 mapping stays: {out}"
    );

    // Refusals go back on fd 3 as `1\n<one line>`, in Docker's words.
    let taken =
        "-proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.3 -container-port 80";
    let (mut child, pipe) = spawn_shim(&topo.host.ns, &taken.split(' ').collect::<Vec<_>>(), &env);
    assert_eq!(
        status_of(pipe),
        "1\nBind for 0.0.0.0:8080 failed: port is already allocated"
    );
    assert!(!child.wait().unwrap().success());
    let (mut child, pipe) = spawn_shim(
        &topo.host.ns,
        &["-proto", "icmp", "-host-port", "1", "-container-port", "1"],
        &env,
    );
    assert_eq!(status_of(pipe), "1\nunsupported protocol icmp");
    assert!(!child.wait().unwrap().success());
    let unreachable = [
        ("BERTH_SOCKET", "/nonexistent/berth.sock"),
        ("BERTH_DOCKER_PROXY_FALLBACK", fake_s.as_str()),
    ];
    let ok4 =
        "-proto udp -host-ip 0.0.0.0 -host-port 5353 -container-ip 172.17.0.2 -container-port 53";
    let (mut child, pipe) = spawn_shim(
        &topo.host.ns,
        &ok4.split(' ').collect::<Vec<_>>(),
        &unreachable,
    );
    assert_eq!(
        status_of(pipe),
        "1\ncannot reach the berth daemon at /nonexistent/berth.sock: is `berth daemon` running?"
    );
    assert!(!child.wait().unwrap().success());
}

#[test]
fn an_engine_that_hands_over_its_bound_socket_is_published() {
    // Docker 28+ binds the host port itself, passes the socket as fd 4 with
    // `-use-listen-fd` and keeps its own copy: that listener is dockerd's,
    // not a host process in the way.
    use std::os::fd::AsRawFd as _;
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let held = rig
        .topo
        .host
        .ns
        .run(|| std::net::TcpListener::bind("0.0.0.0:8088"))
        .expect("the engine's socket on 8088");
    // berth accepts `heldByDocker` only for a socket Docker's engine
    // holds: the engine here is a process run from an executable named
    // dockerd, holding the socket as dockerd keeps its copy.
    let engine_dir = std::env::temp_dir().join(format!("berth-fake-engine-{}", std::process::id()));
    let mut engine = fake_engine_holding(&engine_dir, held.as_raw_fd());
    let sock = rig.daemon.socket().display().to_string();
    let args = "-proto tcp -host-ip 0.0.0.0 -host-port 8088 -container-ip 172.17.0.2 -container-port 80 -use-listen-fd";
    let (mut child, pipe) = spawn_shim_with_listen_fd(
        &rig.topo.host.ns,
        &args.split(' ').collect::<Vec<_>>(),
        &[("BERTH_SOCKET", sock.as_str())],
        Some(held.as_raw_fd()),
    );
    assert_eq!(status_of(pipe), "0\n");
    let body = rig
        .client_get(8088)
        .expect("GET through the handed-over port");
    assert!(
        body.starts_with("192.0.2.2:"),
        "the client's own address: {body}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    assert!(rig.bindings().is_empty(), "unpublished when stopped");
    drop(held);
    let _ = engine.kill();
    let _ = engine.wait();
    let _ = fs::remove_dir_all(&engine_dir);
}

/// A stand-in for dockerd holding `fd` (as fd 5): busybox's `sleep` run
/// from a copy named `dockerd` in `dir`.
/// In a child between fork and exec: `fd` as descriptor `target` of the
/// program it runs. dup2 leaves the copy without close-on-exec; when `fd`
/// already is `target` (a test run alone opens few files) dup2 does
/// nothing, and the flag is cleared instead.
fn inherit_as(fd: i32, target: i32) -> std::io::Result<()> {
    let r = if fd == target {
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
    } else {
        unsafe { libc::dup2(fd, target) }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fake_engine_holding(dir: &std::path::Path, fd: i32) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    fs::create_dir_all(dir).unwrap();
    let exe = dir.join("dockerd");
    fs::copy("/bin/busybox", &exe).expect("busybox-static");
    let mut c = std::process::Command::new(&exe);
    c.arg0("sleep").arg("600");
    unsafe {
        c.pre_exec(move || inherit_as(fd, 5));
    }
    c.spawn().expect("the fake engine")
}

#[test]
fn held_by_docker_for_a_port_a_non_docker_process_listens_on_is_refused() {
    // A caller may claim Docker holds a port (`-use-listen-fd` does); when
    // only another process listens there, berth refuses and changes nothing.
    use std::os::fd::AsRawFd as _;
    let rig = Rig::start();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let squatter = rig
        .topo
        .host
        .ns
        .run(|| std::net::TcpListener::bind("0.0.0.0:8089"))
        .expect("a host process on 8089");
    let sock = rig.daemon.socket().display().to_string();
    let args = "-proto tcp -host-ip 0.0.0.0 -host-port 8089 -container-ip 172.17.0.2 -container-port 80 -use-listen-fd";
    let (mut child, pipe) = spawn_shim_with_listen_fd(
        &rig.topo.host.ns,
        &args.split(' ').collect::<Vec<_>>(),
        &[("BERTH_SOCKET", sock.as_str())],
        Some(squatter.as_raw_fd()),
    );
    let status = status_of(pipe);
    assert!(
        status.starts_with("1\nheldByDocker refused: 0.0.0.0:8089/tcp is held by pid "),
        "{status}"
    );
    assert!(
        status.contains("not by dockerd or docker-proxy"),
        "{status}"
    );
    assert!(!child.wait().unwrap().success());
    assert!(rig.bindings().is_empty(), "nothing published");
    drop(squatter);
}

/// `(task, hostPort, protocol)` of every binding, as [`Setup::published`] lists them.
type Published = [(String, u64, String)];

#[test]
fn docker_run_capital_p_and_a_port_range_publish_through_the_shims() {
    let s = setup();
    let wait_published = |what: &str, ok: &dyn Fn(&Published) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = s.published();
            if ok(&now) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: berth has {now:?}");
            thread::sleep(Duration::from_millis(100));
        }
    };

    // `-P`: dockerd picks the host port and starts a shim for it.
    let port = s.docker.run_httpd_exposed("auto").expect("docker run -P");
    wait_published("docker run -P", &|b| {
        b.contains(&("auto".into(), u64::from(port), "tcp".into()))
    });
    assert_eq!(s.remote_addr_seen(port), addr::CLIENT_IP.to_string());

    // A range: one shim per port, each published under the container's name;
    // `docker rm -f` unpublishes every one.
    let out = s.run_httpd("range", "9000-9002:80-82", &[]);
    assert!(out.status.success(), "docker run: {}", stderr_of(&out));
    wait_published("docker run -p 9000-9002:80-82", &|b| {
        (9000..=9002).all(|p| b.contains(&("range".into(), p, "tcp".into())))
    });
    assert_eq!(s.remote_addr_seen(9000), addr::CLIENT_IP.to_string());
    s.docker
        .docker_ok(["rm", "-f", "range"])
        .expect("docker rm -f");
    for p in 9000..=9002 {
        s.wait_unpublished(p, "docker rm -f range");
    }
}
