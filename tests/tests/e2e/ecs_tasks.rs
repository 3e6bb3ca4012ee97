//! ECS task definitions end to end: `berth task run/stop/ls` with the real
//! daemon in the host namespace of a Docker-like topology, traffic from the
//! client namespace to the containers.
use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
};

use berth_integration::{rig::REQUEST_TIMEOUT as T, udp_request, NetNs, Rig};
use serde_json::{json, Value};

const RANGE: (u16, u16) = (50000, 50999);

/// What `aws ecs describe-task-definition --task-definition shop:7` prints
/// for a bridge-mode task of four containers: TCP and UDP, a static and
/// dynamic host ports, a container port range, and a container with no
/// ports at all. Most fields are there only to be ignored.
const SHOP: &str = r#"{
  "taskDefinition": {
    "taskDefinitionArn": "arn:aws:ecs:eu-west-1:123456789012:task-definition/shop:7",
    "family": "shop",
    "revision": 7,
    "status": "ACTIVE",
    "networkMode": "bridge",
    "requiresCompatibilities": ["EC2"],
    "compatibilities": ["EXTERNAL", "EC2"],
    "cpu": "512",
    "memory": "1024",
    "volumes": [],
    "placementConstraints": [],
    "requiresAttributes": [
      {"name": "com.amazonaws.ecs.capability.docker-remote-api.1.21"},
      {"name": "ecs.capability.container-port-range"}
    ],
    "registeredAt": "2024-03-01T10:00:00.000Z",
    "registeredBy": "arn:aws:iam::123456789012:user/ci",
    "containerDefinitions": [
      {
        "name": "web",
        "image": "public.ecr.aws/nginx/nginx:1.25",
        "cpu": 256,
        "memory": 512,
        "essential": true,
        "portMappings": [
          {"containerPort": 80, "hostPort": 0, "protocol": "tcp", "name": "web-80-tcp", "appProtocol": "http"},
          {"containerPort": 443, "hostPort": 8443, "protocol": "tcp"}
        ],
        "environment": [{"name": "MODE", "value": "prod"}],
        "mountPoints": [],
        "volumesFrom": [],
        "healthCheck": {
          "command": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
          "interval": 30, "timeout": 5, "retries": 3
        },
        "logConfiguration": {
          "logDriver": "awslogs",
          "options": {"awslogs-group": "/ecs/shop", "awslogs-region": "eu-west-1", "awslogs-stream-prefix": "web"}
        },
        "dependsOn": [{"containerName": "dns", "condition": "START"}]
      },
      {
        "name": "dns",
        "image": "coredns/coredns:1.11.1",
        "essential": false,
        "portMappings": [
          {"containerPort": 53, "protocol": "udp"},
          {"containerPort": 53, "hostPort": 0, "protocol": "tcp"}
        ]
      },
      {
        "name": "metrics",
        "image": "quay.io/prometheus/node-exporter:v1.7.0",
        "essential": false,
        "portMappings": [{"containerPortRange": "9100-9102", "protocol": "tcp"}]
      },
      {
        "name": "log-router",
        "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable",
        "essential": true,
        "firelensConfiguration": {"type": "fluentbit"}
      }
    ]
  },
  "tags": []
}"#;

/// `RegisterTaskDefinition` input: one container, a dynamic host port.
const WEB: &str = r#"{
  "family": "web",
  "containerDefinitions": [
    {"name": "web", "image": "nginx", "memory": 128,
     "portMappings": [{"containerPort": 80, "hostPort": 0}]}
  ]
}"#;

/// The daemon handing out dynamic host ports from [`RANGE`].
fn start_rig() -> Rig {
    let range = format!("{}-{}", RANGE.0, RANGE.1);
    Rig::builder().flags(&["--dynamic-ports", &range]).start()
}

fn task_run_args(file: &Path, name: &str, ips: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "task".into(),
        "run".into(),
        "--task-def".into(),
        file.display().to_string(),
        "--name".into(),
        name.into(),
    ];
    for ip in ips {
        args.extend(["--ip".to_string(), ip.to_string()]);
    }
    args
}

/// `berth task run`: its JSON output.
fn task_run(rig: &Rig, file: &Path, name: &str, ips: &[&str]) -> Value {
    let out = rig
        .daemon
        .cli_ok(task_run_args(file, name, ips))
        .expect("task run");
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    serde_json::from_str(&out).expect("task run prints JSON")
}

/// `berth task run` expected to fail: its one stderr line.
fn task_run_err(rig: &Rig, file: &Path, name: &str, ips: &[&str]) -> String {
    let out = rig.daemon.cli(task_run_args(file, name, ips)).unwrap();
    assert!(!out.status.success(), "task run {name} must fail");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    err
}

/// `net.ipv4.ip_local_reserved_ports` of `ns`, read in one `read` (the
/// kernel answers a read at a non-zero offset with end of file).
fn reserved_ports(ns: &NetNs) -> BTreeSet<u16> {
    let text = ns.run(|| {
        let mut buf = vec![0u8; 256 * 1024];
        let n = std::fs::File::open("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .and_then(|mut f| f.read(&mut buf))
            .expect("read ip_local_reserved_ports");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    });
    let mut ports = BTreeSet::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => ports.extend(a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()),
            None => {
                ports.insert(item.parse().unwrap());
            }
        }
    }
    ports
}

fn port(v: &Value) -> u16 {
    v.as_u64().expect("a port number") as u16
}

fn in_range(p: u16) -> bool {
    (RANGE.0..=RANGE.1).contains(&p)
}

#[test]
fn two_copies_of_one_task_definition_get_their_own_reachable_ports() {
    let rig = start_rig();
    let one = rig.serve_http(&rig.topo.container.ns, 80);
    let two = rig.serve_http(&rig.topo.container2.ns, 80);
    let file = rig.write_file("web.json", WEB);
    let a = task_run(&rig, &file, "web-1", &["web=172.17.0.2"]);
    let b = task_run(&rig, &file, "web-2", &["web=172.17.0.3"]);
    let pa = port(&a["containers"][0]["networkBindings"][0]["hostPort"]);
    let pb = port(&b["containers"][0]["networkBindings"][0]["hostPort"]);
    assert_ne!(pa, pb, "each copy has its own host port");
    assert!(in_range(pa) && in_range(pb), "{pa} {pb}");

    rig.client_get(pa).expect("copy 1");
    assert_eq!((one.peers().len(), two.peers().len()), (1, 0));
    rig.client_get(pb).expect("copy 2");
    assert_eq!((one.peers().len(), two.peers().len()), (1, 1));
    let body = rig.client_get(pb).unwrap();
    assert!(
        body.starts_with("192.0.2.2:"),
        "the client's own IP: {body}"
    );
}

#[test]
fn a_real_world_task_definition_publishes_every_container() {
    let rig = start_rig();
    let metrics_ctr = rig
        .topo
        .new_container("ctr3", "172.17.0.4".parse().unwrap())
        .unwrap();
    let c1 = &rig.topo.container.ns;
    let c2 = &rig.topo.container2.ns;
    let _web = rig.serve_http(c1, 80);
    let _tls = rig.serve_http(c1, 443);
    let _dns = rig.serve_udp_echo(c2, 53);
    let _dns_tcp = rig.serve_http(c2, 53);
    let _m0 = rig.serve_http(&metrics_ctr.ns, 9100);
    let _m2 = rig.serve_http(&metrics_ctr.ns, 9102);

    let file = rig.write_file("shop.json", SHOP);
    let out = task_run(
        &rig,
        &file,
        "shop-1",
        &["web=172.17.0.2", "dns=172.17.0.3", "metrics=172.17.0.4"],
    );
    let nb = |c: usize, i: usize| out["containers"][c]["networkBindings"][i].clone();
    let web80 = port(&nb(0, 0)["hostPort"]);
    let dns_udp = port(&nb(1, 0)["hostPort"]);
    let dns_tcp = port(&nb(1, 1)["hostPort"]);
    let range = nb(2, 0)["hostPortRange"].as_str().unwrap().to_string();
    let (start, end) = range.split_once('-').unwrap();
    let (start, end): (u16, u16) = (start.parse().unwrap(), end.parse().unwrap());
    assert_eq!(end, start + 2, "a contiguous block: {range}");
    // Exactly what ECS DescribeTasks shows for the containers.
    assert_eq!(
        out,
        json!({"containers": [
            {"name": "web", "networkBindings": [
                {"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": web80, "protocol": "tcp"},
                {"bindIP": "0.0.0.0", "containerPort": 443, "hostPort": 8443, "protocol": "tcp"}
            ]},
            {"name": "dns", "networkBindings": [
                {"bindIP": "0.0.0.0", "containerPort": 53, "hostPort": dns_udp, "protocol": "udp"},
                {"bindIP": "0.0.0.0", "containerPort": 53, "hostPort": dns_tcp, "protocol": "tcp"}
            ]},
            {"name": "metrics", "networkBindings": [
                {"bindIP": "0.0.0.0", "protocol": "tcp", "containerPortRange": "9100-9102",
                 "hostPortRange": range}
            ]},
            {"name": "log-router", "networkBindings": []}
        ]})
    );
    for p in [web80, dns_udp, dns_tcp, start] {
        assert!(in_range(p), "{p}");
    }
    let tcp: BTreeSet<u16> = [web80, dns_tcp, start, start + 1, start + 2].into();
    assert_eq!(tcp.len(), 5, "TCP ports are distinct");

    rig.client_get(web80).expect("web, dynamic port");
    rig.client_get(8443).expect("web, static port");
    rig.client_get(dns_tcp).expect("dns over TCP");
    rig.client_get(start).expect("metrics, first of the range");
    rig.client_get(end).expect("metrics, last of the range");
    let target = rig.topo.host.addr(dns_udp);
    let reply = rig
        .topo
        .client
        .ns
        .run(move || udp_request(target, "query", T))
        .expect("dns over UDP");
    assert_eq!(reply.from, target);

    // Listed as a task, with the container IPs.
    let ls = rig.json(&["task", "ls", "--json"]);
    assert_eq!(ls[0]["name"], "shop-1");
    assert_eq!(ls[0]["containers"][2]["containerIP"], "172.17.0.4");
    assert_eq!(
        ls[0]["containers"][2]["networkBindings"],
        out["containers"][2]["networkBindings"]
    );
    let table = rig.daemon.cli_ok(["task", "ls"]).unwrap();
    assert!(table.contains(&format!("{range}  9100-9102")), "{table}");
    assert_eq!(
        rig.json(&["map", "ls", "--json"]).as_array().unwrap().len(),
        7
    );

    // Registrars see container names in events.
    let events = rig
        .daemon
        .cli_ok(["events", "--existing", "--count", "7"])
        .unwrap();
    let containers: BTreeSet<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["container"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        containers,
        ["dns", "metrics", "web"].map(String::from).into()
    );

    // Every host port is reserved while mapped (a list longer than the
    // 32 bytes NetNs::sysctl reads).
    let mut mapped: BTreeSet<u16> = tcp;
    mapped.extend([8443, dns_udp]);
    assert_eq!(reserved_ports(&rig.topo.host.ns), mapped);

    let stopped = rig.daemon.cli_ok(["task", "stop", "shop-1"]).unwrap();
    assert!(stopped.contains("8443"), "{stopped}");
    assert!(
        rig.client_get(web80).is_err(),
        "stopped: no longer forwarded"
    );
    rig.client_get(8443).unwrap_err();
    assert_eq!(rig.json(&["map", "ls", "--json"]), json!([]));
    assert_eq!(rig.json(&["task", "ls", "--json"]), json!([]));
    assert!(
        reserved_ports(&rig.topo.host.ns).is_empty(),
        "every reservation released"
    );
}

#[test]
fn malformed_or_inapplicable_task_definitions_publish_nothing() {
    let rig = start_rig();
    let shop = rig.write_file("shop.json", SHOP);
    let ips = ["web=172.17.0.2", "dns=172.17.0.3", "metrics=172.17.0.4"];
    let def = |name: &str, mappings: &str| {
        rig.write_file(
            name,
            &format!(
                r#"{{"containerDefinitions": [{{"name": "web", "portMappings": {mappings}}}]}}"#
            ),
        )
    };
    let mode = |m: &str| {
        rig.write_file(
            &format!("{m}.json"),
            &format!(
                r#"{{"networkMode": "{m}", "containerDefinitions": [{{"name": "web",
                    "portMappings": [{{"containerPort": 80}}]}}]}}"#
            ),
        )
    };
    let mapping = "containerDefinitions[0].portMappings[0]";
    let cases: Vec<(PathBuf, Vec<&str>, String)> = vec![
        (
            rig.write_file("bad.json", r#"{"containerDefinitions": [ {"name": "web" "#),
            vec!["web=172.17.0.2"],
            "berth: task definition: not valid JSON: ".into(),
        ),
        (
            def("string-port.json", r#"[{"containerPort": "80"}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}.containerPort: expected an integer, got \"80\""),
        ),
        (
            def("big-port.json", r#"[{"containerPort": 80, "hostPort": 70000}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}.hostPort: port 70000 is out of range 0-65535"),
        ),
        (
            def("zero-port.json", r#"[{"containerPort": 0}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}.containerPort: port 0 is out of range 1-65535"),
        ),
        (
            def("both.json", r#"[{"containerPort": 80, "containerPortRange": "80-81"}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}: containerPort and containerPortRange are mutually exclusive; give one"),
        ),
        (
            def("neither.json", r#"[{"protocol": "tcp"}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}: give containerPort or containerPortRange"),
        ),
        (
            def("reversed.json", r#"[{"containerPortRange": "9010-9000"}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}.containerPortRange: port range 9010-9000 is reversed"),
        ),
        (
            def("sctp.json", r#"[{"containerPort": 80, "protocol": "sctp"}]"#),
            vec!["web=172.17.0.2"],
            format!("berth: task definition: {mapping}.protocol: unknown protocol \"sctp\"; use tcp or udp"),
        ),
        (
            def("not-a-list.json", r#"{"containerPort": 80}"#),
            vec!["web=172.17.0.2"],
            "berth: task definition: containerDefinitions[0].portMappings: expected an array, got {\"containerPort\":80}".into(),
        ),
        (
            mode("awsvpc"),
            vec!["web=172.17.0.2"],
            "berth: task definition: networkMode \"awsvpc\" gives each task its own elastic network \
             interface and IP address, so there are no host ports to publish; berth applies to \
             bridge mode only".into(),
        ),
        (
            mode("host"),
            vec!["web=172.17.0.2"],
            "berth: task definition: networkMode \"host\" runs the containers in the host's network \
             namespace, where they bind host ports themselves, so there is nothing to publish; \
             berth applies to bridge mode only".into(),
        ),
        (
            mode("none"),
            vec!["web=172.17.0.2"],
            "berth: task definition: networkMode \"none\" gives the containers no external network, \
             so there is nothing to publish; berth applies to bridge mode only".into(),
        ),
        (
            shop.clone(),
            vec!["web=172.17.0.2", "dns=172.17.0.3"],
            "berth: container \"metrics\" has port mappings but no IP; add --ip metrics=CONTAINER_IP".into(),
        ),
        (
            shop.clone(),
            vec!["web=172.17.0.2", "dns=172.17.0.3", "metrics=172.17.0.4", "db=172.17.0.9"],
            "berth: --ip db=...: the task definition has no container named \"db\" (it has web, dns, metrics, log-router)".into(),
        ),
        (
            shop.clone(),
            vec!["web=172.17.0.2", "dns=172.17.0.3", "metrics=10.9.9.9"],
            "berth: container IP 10.9.9.9 is not in the subnet of bridge docker0 (172.17.0.1/16)".into(),
        ),
    ];
    for (file, ips, want) in &cases {
        let err = task_run_err(&rig, file, "t", ips);
        assert!(
            err.starts_with(want.as_str()),
            "{}:\n got: {err}\nwant: {want}",
            file.display()
        );
    }
    // The daemon refuses what the CLI would have, too.
    let r = rig
        .daemon
        .api(
            "POST",
            "/v1/tasks",
            Some(r#"{"name": "t", "taskDefinition": {"networkMode": "awsvpc"}, "ips": {}}"#),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let r = rig.daemon.api("POST", "/v1/tasks", Some("{")).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    assert_eq!(
        rig.json(&["map", "ls", "--json"]),
        json!([]),
        "nothing published"
    );
    assert_eq!(rig.json(&["task", "ls", "--json"]), json!([]));
    // And a good run afterwards works, once.
    task_run(&rig, &shop, "t", &ips);
    let err = task_run_err(&rig, &shop, "t", &ips);
    assert_eq!(
        err,
        "berth: task t already exists; stop it first or choose another --name"
    );
}

#[test]
fn task_and_map_commands_keep_to_their_own_tasks() {
    let rig = start_rig();
    let file = rig.write_file("web.json", WEB);
    task_run(&rig, &file, "ecs", &["web=172.17.0.2"]);
    rig.map_add("manual", "172.17.0.3", &["8080:80"]);
    let out = rig.daemon.cli(["map", "rm", "--task", "ecs"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "berth: task ecs was started from a task definition; stop it with `berth task stop ecs`"
    );
    let out = rig.daemon.cli(["task", "stop", "manual"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "berth: task manual was published with `berth map add`; remove it with `berth map rm --task manual`"
    );
    let out = rig.daemon.cli(["task", "stop", "nope"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "berth: no such task: nope"
    );
    // The raw API's other spelling.
    let r = rig.daemon.api("DELETE", "/v1/tasks/ecs", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rig.json(&["task", "ls", "--json"]), json!([]));
    assert_eq!(
        rig.json(&["map", "ls", "--json"]).as_array().unwrap().len(),
        1
    );
}

#[test]
fn a_bare_array_of_container_definitions_runs_as_a_task() {
    // What `--container-definitions file://…` and Terraform's
    // `container_definitions` hold.
    let rig = start_rig();
    let _web = rig.serve_http(&rig.topo.container.ns, 80);
    let file = rig.write_file(
        "containers.json",
        r#"[{"name": "web", "image": "nginx", "portMappings": [{"containerPort": 80, "hostPort": 8080}]}]"#,
    );
    let out = task_run(&rig, &file, "web", &["web=172.17.0.2"]);
    assert_eq!(
        port(&out["containers"][0]["networkBindings"][0]["hostPort"]),
        8080
    );
    let body = rig.client_get(8080).expect("GET through the task's port");
    assert!(body.starts_with("192.0.2.2:"), "{body}");
}
