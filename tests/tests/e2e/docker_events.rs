//! Docker events mode: Debian's real dockerd (20.10) runs with
//! `--userland-proxy=false` and a bridge of its own (`bdk0`,
//! 172.18.0.0/16); the berth daemon serves that bridge with `--docker
//! unix://<dockerd's socket>` and publishes what `docker run -p` asks for.
//! Clients call the host's uplink from the client namespace.
use std::{
    thread,
    time::{Duration, Instant},
};

use berth_integration::{
    addr,
    dockerd::{topology_for_dockerd, DOCKER_BRIDGE, HTTPD_IMAGE},
    http_get, Bpffs, Daemon, DaemonOptions, Dockerd, DockerdOptions, Rig, Topology,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);
const ECS_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/cluster/abc123";

/// Guards drop in field order: the berth daemon, dockerd (its containers),
/// the bpffs, then the namespaces.
struct Setup {
    berth: Daemon,
    docker: Dockerd,
    _bpffs: Bpffs,
    topo: Topology,
}

fn setup() -> Setup {
    setup_with(&[])
}

/// [`setup`] with more flags for the berth daemon.
fn setup_with(berth_flags: &[&str]) -> Setup {
    let topo = topology_for_dockerd().expect("build topology");
    let host = &topo.host.ns;
    let docker = Dockerd::start(
        host,
        DockerdOptions {
            bridge: DOCKER_BRIDGE.into(),
            no_userland_proxy: true,
            ..Default::default()
        },
    )
    .expect("start dockerd");
    docker
        .import_httpd_image(&["sh", "httpd"])
        .expect("import busybox image");
    let bpffs = Bpffs::new().expect("bpffs");
    let berth = Daemon::start_with(
        host,
        &bpffs,
        DaemonOptions {
            bridge: DOCKER_BRIDGE.into(),
            extra_args: std::iter::once(format!("--docker=unix://{}", docker.socket().display()))
                .chain(berth_flags.iter().map(ToString::to_string))
                .collect(),
            ..Default::default()
        },
    )
    .expect("start berth");
    Setup {
        berth,
        docker,
        _bpffs: bpffs,
        topo,
    }
}

impl Setup {
    fn run_httpd(&self, name: &str, publish: &str) {
        self.run_httpd_with(name, publish, &[]);
    }

    fn run_httpd_with(&self, name: &str, publish: &str, extra: &[&str]) {
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
        let out = self.docker.docker(args).expect("docker run");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The client's address as the container saw it, retried while berth
    /// has not seen the event or httpd is still starting. Each attempt is
    /// short, so one made while a restarted container's address still
    /// belongs to its dying predecessor's port (seconds on a loaded
    /// machine) does not use up the whole wait.
    fn remote_addr_seen(&self, port: u16) -> String {
        let deadline = Instant::now() + 2 * T;
        let addr = self.topo.host.addr(port);
        loop {
            match self
                .topo
                .client
                .ns
                .run(move || http_get(addr, "/cgi-bin/ip", Duration::from_secs(2)))
            {
                Ok(body) => {
                    let seen = body.trim().trim_start_matches('[').trim_end_matches(']');
                    return seen.trim_start_matches("::ffff:").to_string();
                }
                Err(e) if Instant::now() > deadline => panic!("GET :{port}/cgi-bin/ip: {e:#}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `(task, hostPort)` of every binding.
    fn published(&self) -> Vec<(String, u64)> {
        let out = self.berth.cli_ok(["map", "ls", "--json"]).expect("map ls");
        let v: Value = serde_json::from_str(&out).expect("map ls --json is JSON");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|b| {
                (
                    b["task"].as_str().unwrap_or_default().to_string(),
                    b["hostPort"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// `map ls --json` shows the ECS labels on every binding of `task` and
    /// on no other.
    fn assert_ecs_labels_only_on(&self, task: &str) {
        let out = self.berth.cli_ok(["map", "ls", "--json"]).expect("map ls");
        let v: Value = serde_json::from_str(&out).expect("map ls --json is JSON");
        for b in v.as_array().expect("an array") {
            if b["task"] == task {
                assert_eq!(b["ecsTaskArn"], ECS_ARN, "{b}");
                assert_eq!(b["ecsContainerName"], "web", "{b}");
            } else {
                assert!(b.get("ecsTaskArn").is_none(), "{b}");
                assert!(b.get("ecsContainerName").is_none(), "{b}");
            }
        }
    }

    /// Until `status --json` says berth is (or is not) connected to dockerd.
    fn wait_for_docker_connected(&self, connected: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.berth.cli_ok(["status", "--json"]).expect("status");
            let v: Value = serde_json::from_str(&out).expect("status --json is JSON");
            if v["docker"]["connected"] == connected {
                return;
            }
            assert!(Instant::now() < deadline, "connected {connected}: {v}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&[(String, u64)]) -> bool) {
        self.wait_for_within(Duration::from_secs(10), what, ok);
    }

    fn wait_for_within(&self, within: Duration, what: &str, ok: impl Fn(&[(String, u64)]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.published();
            if ok(&now) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: berth has {now:?}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn docker_run_p_is_published_from_events_and_unpublished_on_stop_and_across_a_berth_restart() {
    let mut s = setup();

    // Published from the start event, named after the container; the
    // container sees the client's own address (docker-proxy would show the
    // bridge gateway; dockerd runs without it here).
    s.run_httpd("web", "8080:80");
    s.wait_for("docker run -p 8080:80", |b| {
        b.contains(&("web".to_string(), 8080))
    });
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());

    // `berth status` says berth follows dockerd and publishes one
    // container as one task.
    let socket = format!("unix://{}", s.docker.socket().display());
    let status: Value =
        serde_json::from_str(&s.berth.cli_ok(["status", "--json"]).expect("status --json"))
            .expect("status --json is JSON");
    let docker = &status["docker"];
    assert_eq!(docker["socket"], socket.as_str(), "{status}");
    assert_eq!(docker["connected"], true, "{status}");
    assert_eq!(
        (&docker["containers"], &docker["tasks"]),
        (&1.into(), &1.into())
    );
    let text = s.berth.cli_ok(["status"]).expect("status");
    let line = text
        .lines()
        .find(|l| l.starts_with("docker "))
        .expect(&text);
    assert!(
        line.starts_with(&format!("docker     {socket} connected since 20"))
            && line.ends_with("; publishing 1 container as 1 task"),
        "{line}"
    );

    // docker stop: unpublished.
    s.docker.docker_ok(["stop", "web"]).expect("docker stop");
    s.wait_for("docker stop", |b| b.iter().all(|(_, p)| *p != 8080));

    // A container on a user-defined network is not on berth's bridge:
    // berth says so in one line and publishes nothing; dockerd's own DNAT
    // carries the client.
    s.docker
        .docker_ok(["network", "create", "--subnet", "172.19.0.0/16", "user"])
        .expect("docker network create");
    s.run_httpd_with("userweb", "8085:80", &["--network", "user"]);
    let deadline = Instant::now() + T;
    let said = "Docker container's ports not published by berth: it has no address on berth's bridge; dockerd's own NAT rules serve them";
    while !s
        .berth
        .stderr()
        .lines()
        .any(|l| l.contains(said) && l.contains("userweb") && l.contains("user 172.19.0."))
    {
        assert!(
            Instant::now() < deadline,
            "not logged:\n{}",
            s.berth.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.remote_addr_seen(8085), addr::CLIENT_IP.to_string());
    assert!(s.published().iter().all(|(_, p)| *p != 8085));
    s.docker
        .docker_ok(["rm", "-f", "userweb"])
        .expect("docker rm -f");

    // A port range publishes under one task; `docker rm -f` (a die
    // without a stop) unpublishes all of it.
    s.run_httpd("range", "9000-9002:80-82");
    s.wait_for("docker run -p 9000-9002:80-82", |b| {
        (9000..=9002).all(|p| b.contains(&("range".to_string(), p)))
    });
    s.docker
        .docker_ok(["rm", "-f", "range"])
        .expect("docker rm -f");
    s.wait_for("docker rm -f", |b| b.iter().all(|(t, _)| t != "range"));

    // A container that stops while berth is down is unpublished at berth's
    // start; one still running stays published. The ECS agent's labels
    // name a task and show on its bindings, also after the restart.
    s.run_httpd("api", "8081:80");
    s.run_httpd("db", "8082:80");
    s.run_httpd_with(
        "ecs-agent-made",
        "8083:80",
        &[
            "--label",
            &format!("com.amazonaws.ecs.task-arn={ECS_ARN}"),
            "--label",
            "com.amazonaws.ecs.container-name=web",
        ],
    );
    s.wait_for("three more containers", |b| {
        b.contains(&("api".to_string(), 8081))
            && b.contains(&("db".to_string(), 8082))
            && b.contains(&("abc123.web".to_string(), 8083))
    });
    s.assert_ecs_labels_only_on("abc123.web");
    s.berth.stop().expect("stop berth");
    s.docker.docker_ok(["stop", "api"]).expect("docker stop");
    s.berth.start_again().expect("start berth");
    s.wait_for("berth restarted after api stopped", |b| {
        !b.iter().any(|(t, _)| t == "api")
            && b.contains(&("db".to_string(), 8082))
            && b.contains(&("abc123.web".to_string(), 8083))
    });
    assert_eq!(s.remote_addr_seen(8082), addr::CLIENT_IP.to_string());
    s.assert_ecs_labels_only_on("abc123.web");
}

#[test]
fn a_dockerd_restart_is_reconciled_restarted_containers_published_stopped_ones_not() {
    let mut s = setup();
    s.run_httpd_with("keep", "8080:80", &["--restart", "always"]);
    s.run_httpd("gone", "8081:80");
    s.wait_for("two containers", |b| {
        b.contains(&("keep".to_string(), 8080)) && b.contains(&("gone".to_string(), 8081))
    });

    // dockerd SIGKILLed: the event stream breaks, the containers run on
    // under their shims, and berth keeps publishing them meanwhile.
    s.docker.kill().expect("kill dockerd");
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());
    assert!(s.published().contains(&("gone".to_string(), 8081)));
    s.wait_for_docker_connected(false);

    // The new dockerd stops what the old one left and restarts only
    // `--restart always`; berth reconnects and reconciles: `keep` is
    // published again (at the address it came back with), `gone` is not.
    s.docker.start_again().expect("start dockerd again");
    s.wait_for_within(Duration::from_secs(30), "dockerd restarted", |b| {
        b.contains(&("keep".to_string(), 8080)) && !b.iter().any(|(t, _)| t == "gone")
    });
    s.wait_for_docker_connected(true);
    assert_eq!(s.remote_addr_seen(8080), addr::CLIENT_IP.to_string());
}

#[test]
fn a_container_berth_refuses_is_logged_and_not_counted_as_published() {
    let s = setup_with(&["--max-ports-per-request", "2"]);
    s.run_httpd("wide", "9000-9002:80-82");
    s.run_httpd("narrow", "8080:80");
    s.wait_for("the narrow one", |b| {
        b.contains(&("narrow".to_string(), 8080))
    });
    assert!(s.published().iter().all(|(t, _)| t != "wide"));
    assert!(
        s.berth
            .stderr()
            .lines()
            .any(|l| l.contains("publishing Docker container failed") && l.contains("wide")),
        "not logged:\n{}",
        s.berth.stderr()
    );
    let status: Value =
        serde_json::from_str(&s.berth.cli_ok(["status", "--json"]).expect("status --json"))
            .expect("status --json is JSON");
    assert_eq!(
        (&status["docker"]["containers"], &status["docker"]["tasks"]),
        (&1.into(), &1.into()),
        "{status}"
    );
}

#[test]
fn an_unreachable_docker_api_is_logged_and_the_daemon_serves_meanwhile() {
    let rig = Rig::builder()
        .flags(&["--docker", "unix:///nonexistent/docker.sock"])
        .start();
    let berth = &rig.daemon;
    assert_eq!(rig.berth(&["map", "ls", "--json"]).trim(), "[]");
    let deadline = Instant::now() + T;
    while !berth
        .stderr()
        .contains("Docker API unreachable; retrying in the background")
    {
        assert!(Instant::now() < deadline, "not logged:\n{}", berth.stderr());
        thread::sleep(Duration::from_millis(100));
    }
    // `berth status` says so too, with the error and since when.
    let docker = loop {
        let status: Value =
            serde_json::from_str(&rig.berth(&["status", "--json"])).expect("status --json is JSON");
        if status["docker"]["lastError"].is_string() {
            break status["docker"].clone();
        }
        assert!(Instant::now() < deadline, "no lastError: {status}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(docker["socket"], "unix:///nonexistent/docker.sock");
    assert_eq!(docker["connected"], false);
    let error = docker["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("/nonexistent/docker.sock"), "{error}");
    let text = rig.berth(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("docker "))
        .expect(&text);
    assert!(
        line.starts_with("docker     unix:///nonexistent/docker.sock not connected since 20")
            && line.ends_with(&format!(
                "(last error: {error}); publishing 0 containers as 0 tasks"
            )),
        "{line}"
    );
    let refused = berth
        .cli(["daemon", "--bridge", "x", "--docker", "tcp://h:2375"])
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "berth: invalid value 'tcp://h:2375' for '--docker [<unix:///PATH>]': --docker tcp://h:2375: only unix:///path sockets are supported"
    );
}

#[test]
fn docker_run_capital_p_is_published_and_a_security_group_applies_to_the_container() {
    let s = setup();
    // `-P`: Docker picks the host port of each exposed port; berth publishes
    // what Docker picked.
    let port = s.docker.run_httpd_exposed("auto").expect("docker run -P");
    s.wait_for("docker run -P", |b| {
        b.contains(&("auto".to_string(), u64::from(port)))
    });
    assert_eq!(s.remote_addr_seen(port), addr::CLIENT_IP.to_string());

    // A security group attached to the container's task by its name: only
    // the first client may reach port 80, the second is dropped.
    for args in [
        vec!["sg", "create", "sg-web"],
        vec![
            "sg",
            "rule",
            "add",
            "sg-web",
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "80",
            "--cidr",
            "192.0.2.2/32",
        ],
        vec!["sg", "attach", "sg-web", "--task", "auto"],
    ] {
        s.berth.cli_ok(args).expect("berth sg");
    }
    assert_eq!(s.remote_addr_seen(port), addr::CLIENT_IP.to_string());
    let target = s.topo.host.addr(port);
    let refused = s
        .topo
        .client2
        .ns
        .run(move || http_get(target, "/cgi-bin/ip", Duration::from_secs(2)));
    assert!(
        refused.is_err(),
        "client2 reached a port its group does not allow: {refused:?}"
    );
}

#[test]
fn a_udp_port_is_published_from_events_and_unpublished_on_rm() {
    let s = setup();
    s.run_httpd("dns", "5353:53/udp");
    s.wait_for("docker run -p 5353:53/udp", |b| {
        b.contains(&("dns".to_string(), 5353))
    });
    let out = s.berth.cli_ok(["map", "ls", "--json"]).expect("map ls");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let b = v
        .as_array()
        .expect("an array")
        .iter()
        .find(|b| b["task"] == "dns")
        .expect("the dns binding");
    assert_eq!(
        (b["protocol"].as_str(), b["containerPort"].as_u64()),
        (Some("udp"), Some(53)),
        "{b}"
    );
    s.docker
        .docker_ok(["rm", "-f", "dns"])
        .expect("docker rm -f");
    s.wait_for("docker rm -f dns", |b| b.iter().all(|(t, _)| t != "dns"));
}

/// `(task, hostPort, containerIP, dockerEvents)` of every binding.
fn owned(s: &Setup) -> Vec<(String, u64, String, bool)> {
    let out = s.berth.cli_ok(["map", "ls", "--json"]).expect("map ls");
    let v: Value = serde_json::from_str(&out).expect("map ls --json is JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|b| {
            (
                b["task"].as_str().unwrap_or_default().to_string(),
                b["hostPort"].as_u64().unwrap_or_default(),
                b["containerIP"].as_str().unwrap_or_default().to_string(),
                b["dockerEvents"] == true,
            )
        })
        .collect()
}

#[test]
fn a_container_named_like_a_hand_made_task_is_not_published_and_the_task_is_left_alone() {
    let s = setup();
    s.berth
        .cli_ok([
            "map",
            "add",
            "--task",
            "web",
            "--ip",
            "172.18.0.250",
            "-p",
            "8085:80",
        ])
        .expect("hand-made task web");
    let hand = vec![("web".to_string(), 8085, "172.18.0.250".to_string(), false)];
    s.run_httpd("web", "8080:80");
    s.run_httpd("api", "8086:80");
    s.wait_for("the api container", |b| {
        b.contains(&("api".to_string(), 8086))
    });
    // The follower handles events in order: web's start came before api's.
    let mut now = owned(&s);
    now.sort();
    let api = ("api".to_string(), 8086, now[0].2.clone(), true);
    assert_eq!(
        now,
        [api.clone(), hand[0].clone()],
        "web's container not published"
    );
    let warned: Vec<String> = s
        .berth
        .stderr()
        .lines()
        .filter(|l| l.contains("Docker container not published"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warned.len(), 1, "one warning:\n{}", s.berth.stderr());
    assert!(
        warned[0].contains("container=web") && warned[0].contains("task=web"),
        "names both: {}",
        warned[0]
    );
    let status = s.berth.cli_ok(["status"]).expect("status");
    assert!(
        status.contains("1 container not published, task name taken (web -> task web)"),
        "{status}"
    );
    // Its stop must not remove the hand-made task either.
    let out = s.docker.docker(["stop", "web"]).expect("docker stop");
    assert!(out.status.success());
    s.wait_for_docker_connected(true);
    thread::sleep(Duration::from_secs(1));
    let status = s.berth.cli_ok(["status"]).expect("status");
    assert!(!status.contains("not published"), "{status}");
    let mut now = owned(&s);
    now.sort();
    assert_eq!(now, [api.clone(), hand[0].clone()]);

    // A hand `map add` may not join the task Docker made; `map rm` may
    // unpublish it.
    let out = s
        .berth
        .cli([
            "map",
            "add",
            "--task",
            "api",
            "--ip",
            "172.18.0.251",
            "-p",
            "8087:80",
        ])
        .expect("map add");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task api follows a Docker container"), "{err}");
    let mut now = owned(&s);
    now.sort();
    assert_eq!(now, [api, hand[0].clone()]);
    s.berth
        .cli_ok(["map", "rm", "--task", "api"])
        .expect("map rm of Docker's task");
    assert_eq!(owned(&s), hand);
}
