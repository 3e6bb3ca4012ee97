//! The API router end to end on a fake datapath: status codes, bodies, one-line errors.
use std::{net::Ipv4Addr, sync::Arc};

use axum::body::Body;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::*;
use crate::{
    adapters::store::Store,
    domain::cidr::Ipv4Cidr,
    domain::spec::PortRange,
    engine::allocator::PortPolicy,
    engine::fake::{FakeDatapath, FakeHost},
    engine::registry::{Bridge, Registry},
};

struct Api {
    _dir: tempfile::TempDir,
    datapath: Arc<FakeDatapath>,
    berth: Berth,
    router: Router,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    let bridge = Bridge::Fixed {
        name: "br0".into(),
        subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
    };
    let store = Store::open(dir.path()).unwrap();
    let policy = PortPolicy::new(PortRange {
        start: 49153,
        end: 49162,
    });
    let registry = Registry::open(
        store,
        datapath.clone(),
        bridge,
        Arc::new(FakeHost::default()),
        policy,
    )
    .unwrap();
    let berth = Berth::new(registry);
    Api {
        _dir: dir,
        datapath,
        router: router(berth.clone()),
        berth,
    }
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {bytes:?}"));
        (status, value)
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(&body.to_string())).await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }
}

fn error(msg: &str) -> Value {
    json!({ "error": msg })
}

#[tokio::test]
async fn health_says_ok() {
    assert_eq!(api().get("/v1/health").await, (200, json!({"ok": true})));
}

#[tokio::test]
async fn add_returns_201_and_the_bindings_in_ecs_names() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80", "5353:53/udp"]}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        body,
        json!([
            {"task": "web", "containerIP": "172.17.0.2", "bindIP": "0.0.0.0",
             "hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"task": "web", "containerIP": "172.17.0.2", "bindIP": "0.0.0.0",
             "hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ])
    );
    assert_eq!(api.get("/v1/bindings").await, (200, body));
    assert_eq!(api.datapath.bindings().len(), 2);
}

#[tokio::test]
async fn docker_adds_keep_the_ecs_labels_on_each_binding_and_others_cannot_set_them() {
    let api = api();
    let arn = "arn:aws:ecs:us-east-1:123456789012:task/prod/abc123";
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "abc123.web", "containerIP": "172.17.0.2", "ports": ["8080-8081:80-81"],
                   "heldByDocker": true, "ecsTaskArn": arn, "ecsContainerName": "web"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, all) = api.get("/v1/bindings").await;
    assert_eq!(all, body);
    for b in all.as_array().unwrap() {
        assert_eq!(b["ecsTaskArn"], arn);
        assert_eq!(b["ecsContainerName"], "web");
    }
    let refused = [
        (
            json!({"task": "x", "containerIP": "172.17.0.3", "ports": ["90:80"], "ecsTaskArn": arn}),
            "ecsTaskArn and ecsContainerName are for Docker events mode (heldByDocker)",
        ),
        (
            json!({"task": "x", "containerIP": "172.17.0.3", "ports": ["90:80"],
                   "heldByDocker": true, "ecsContainerName": "we\nb"}),
            "ecsContainerName must be 1 to 2048 bytes without control characters",
        ),
    ];
    for (req, msg) in refused {
        assert_eq!(api.post("/v1/bindings", req).await, (400, error(msg)));
    }
    assert_eq!(api.datapath.bindings().len(), 2);
}

#[tokio::test]
async fn list_is_empty_at_first() {
    assert_eq!(api().get("/v1/bindings").await, (200, json!([])));
}

#[tokio::test]
async fn conflicting_add_is_409_in_docker_words() {
    let api = api();
    let req = json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80"]});
    assert_eq!(api.post("/v1/bindings", req.clone()).await.0, 201);
    assert_eq!(
        api.post("/v1/bindings", req).await,
        (
            409,
            error("Bind for 0.0.0.0:8080 failed: port is already allocated")
        )
    );
}

#[tokio::test]
async fn bad_input_is_400_with_one_line() {
    let api = api();
    let cases = [
        (
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80/sctp"]}),
            "port spec \"8080:80/sctp\": unknown protocol \"sctp\"; use tcp or udp",
        ),
        (
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["80:0"]}),
            "port spec \"80:0\": port 0 is out of range 1-65535",
        ),
        (
            json!({"task": "web", "containerIP": "172.17", "ports": ["8080:80"]}),
            "malformed container IP \"172.17\"",
        ),
        (
            json!({"task": "web", "containerIP": "10.9.9.9", "ports": ["8080:80"]}),
            "container IP 10.9.9.9 is not in the subnet of bridge br0 (172.17.0.1/16)",
        ),
        (
            json!({"task": "a b", "containerIP": "172.17.0.2", "ports": ["8080:80"]}),
            "invalid task name \"a b\": only letters, digits, '_', '.' and '-' are allowed",
        ),
        (
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": []}),
            "no ports given",
        ),
    ];
    for (req, msg) in cases {
        assert_eq!(api.post("/v1/bindings", req).await, (400, error(msg)));
    }
    assert!(api.datapath.bindings().is_empty());
}

#[tokio::test]
async fn malformed_json_is_400_with_one_line() {
    let api = api();
    for body in [
        "{",
        "[]",
        r#"{"task": "web"}"#,
        r#"{"task":"w","containerIP":"172.17.0.2","ports":[],"x":1}"#,
    ] {
        let (status, value) = api.call("POST", "/v1/bindings", Some(body)).await;
        assert_eq!(status, 400, "{body}");
        let msg = value["error"].as_str().unwrap();
        assert!(msg.starts_with("invalid JSON body: "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

#[tokio::test]
async fn delete_removes_listed_ports_or_the_whole_task() {
    let api = api();
    api.post(
        "/v1/bindings",
        json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80", "8443:443"]}),
    )
    .await;
    let (status, body) = api
        .post(
            "/v1/bindings/delete",
            json!({"task": "web", "ports": ["8443:443"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["hostPort"], 8443);
    assert_eq!(body.as_array().unwrap().len(), 1);

    let (status, body) = api
        .post("/v1/bindings/delete", json!({"task": "web"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["hostPort"], 8080);
    assert_eq!(api.get("/v1/bindings").await, (200, json!([])));
    assert!(api.datapath.bindings().is_empty());
}

#[tokio::test]
async fn delete_of_unknown_task_or_binding_is_404() {
    let api = api();
    assert_eq!(
        api.post("/v1/bindings/delete", json!({"task": "nope", "ports": []}))
            .await,
        (404, error("no such task: nope"))
    );
    api.post(
        "/v1/bindings",
        json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80"]}),
    )
    .await;
    assert_eq!(
        api.post(
            "/v1/bindings/delete",
            json!({"task": "web", "ports": ["9090:90"]})
        )
        .await,
        (404, error("task web has no binding 0.0.0.0:9090:90/tcp"))
    );
}

#[tokio::test]
async fn stats_reports_datapath_counters() {
    let api = api();
    api.datapath.count(berth_maps::Counter::IngressPass, 7);
    let mut counters: serde_json::Map<String, Value> = berth_maps::COUNTER_NAMES
        .iter()
        .map(|n| (n.to_string(), json!(0)))
        .collect();
    counters.insert("ingress_pass".into(), json!(7));
    assert_eq!(
        api.get("/v1/stats").await,
        (200, json!({ "counters": counters }))
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let api = api();
    assert_eq!(
        api.get("/v1/nope").await,
        (404, error("no such endpoint: GET /v1/nope"))
    );
    assert_eq!(
        api.call("DELETE", "/v1/bindings", None).await,
        (405, error("method DELETE is not allowed on /v1/bindings"))
    );
}

#[tokio::test]
async fn failed_datapath_insert_is_500_and_changes_nothing() {
    let api = api();
    api.datapath.fail_insert_of_host_port(8001);
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8000-8002:80-82"]}),
        )
        .await;
    assert_eq!(status, 500);
    assert_eq!(body, error("eBPF map BINDINGS: injected failure"));
    assert_eq!(api.get("/v1/bindings").await, (200, json!([])));
    assert!(api.datapath.bindings().is_empty());
}

#[tokio::test]
async fn dynamic_add_answers_with_the_picked_port() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["80", "9000-9001/udp"]}),
        )
        .await;
    assert_eq!(status, 201);
    let ports: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["hostPort"].as_u64().unwrap())
        .collect();
    assert!(
        ports.iter().all(|p| (49153..=49162).contains(p)),
        "{ports:?}"
    );
    assert_eq!(ports[2], ports[1] + 1, "a block is contiguous");
    assert_eq!(api.get("/v1/bindings").await, (200, body));
}

#[tokio::test]
async fn exhaustion_is_409_in_one_line() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["9000-9019"]}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        error(
            "no free block of 20 contiguous host ports in 49153-49162 for 0.0.0.0/tcp \
             (0 reserved, 0 in use, 0 cooling down)"
        )
    );
}

fn web_def() -> Value {
    json!({"taskDefinition": {"family": "web", "containerDefinitions": [
        {"name": "web", "image": "nginx", "portMappings": [
            {"containerPort": 80, "hostPort": 0, "protocol": "tcp"},
            {"containerPortRange": "8000-8001"}
        ]}
    ]}})
}

#[tokio::test]
async fn tasks_run_list_and_stop() {
    let api = api();
    let (status, run) = api
        .post(
            "/v1/tasks",
            json!({"name": "web-1", "taskDefinition": web_def(), "ips": {"web": "172.17.0.2"}}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let nb = &run["containers"][0]["networkBindings"];
    assert_eq!(run["containers"][0]["name"], "web");
    assert!(
        run["containers"][0].get("containerIP").is_none(),
        "ECS shape"
    );
    assert_eq!(nb[0]["containerPort"], 80);
    assert_eq!(nb[0]["bindIP"], "0.0.0.0");
    assert_eq!(nb[1]["containerPortRange"], "8000-8001");
    let host_range = nb[1]["hostPortRange"].as_str().unwrap();
    assert!(host_range.starts_with("491"), "{host_range}");

    let (status, list) = api.get("/v1/tasks").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "web-1");
    assert_eq!(list[0]["containers"][0]["containerIP"], "172.17.0.2");
    assert_eq!(list[0]["containers"][0]["networkBindings"], *nb);
    assert_eq!(api.get("/v1/bindings").await.1.as_array().unwrap().len(), 3);

    let (status, stopped) = api.call("POST", "/v1/tasks/web-1/stop", None).await;
    assert_eq!(status, 200);
    assert_eq!(stopped["name"], "web-1");
    assert_eq!(api.get("/v1/tasks").await, (200, json!([])));
    assert!(api.datapath.bindings().is_empty());
    assert_eq!(
        api.call("DELETE", "/v1/tasks/web-1", None).await,
        (404, error("no such task: web-1"))
    );
}

#[tokio::test]
async fn delete_stops_a_task_too() {
    let api = api();
    let req = json!({"name": "w", "taskDefinition": web_def(), "ips": {"web": "172.17.0.2"}});
    assert_eq!(api.post("/v1/tasks", req.clone()).await.0, 201);
    assert_eq!(
        api.post("/v1/tasks", req).await,
        (
            409,
            error("task w already exists; stop it first or choose another --name")
        )
    );
    assert_eq!(api.call("DELETE", "/v1/tasks/w", None).await.0, 200);
    assert!(api.datapath.bindings().is_empty());
}

#[tokio::test]
async fn bad_task_requests_are_400_and_publish_nothing() {
    let api = api();
    let awsvpc = json!({"networkMode": "awsvpc", "containerDefinitions": [{"name": "web"}]});
    let cases = [
        (
            json!({"name": "w", "taskDefinition": awsvpc, "ips": {}}),
            "task definition: networkMode \"awsvpc\" gives each task its own elastic network \
             interface and IP address, so there are no host ports to publish; berth applies \
             to bridge mode only",
        ),
        (
            json!({"name": "w", "taskDefinition": web_def(), "ips": {}}),
            "container \"web\" has port mappings but no IP; add --ip web=CONTAINER_IP",
        ),
        (
            json!({"name": "w", "taskDefinition": web_def(), "ips": {"web": "172.17.0.2", "db": "172.17.0.3"}}),
            "--ip db=...: the task definition has no container named \"db\" (it has web)",
        ),
        (
            json!({"name": "w", "taskDefinition": web_def(), "ips": {"web": "300.1.1.1"}}),
            "malformed container IP \"300.1.1.1\"",
        ),
        (
            json!({"name": "w w", "taskDefinition": web_def(), "ips": {"web": "172.17.0.2"}}),
            "invalid task name \"w w\": only letters, digits, '_', '.' and '-' are allowed",
        ),
        (
            json!({"name": "w", "taskDefinition": {"containerDefinitions": [
                {"name": "web", "portMappings": [{"containerPort": 99999}]}]}, "ips": {"web": "172.17.0.2"}}),
            "task definition: containerDefinitions[0].portMappings[0].containerPort: port 99999 is out of range 1-65535",
        ),
    ];
    for (req, msg) in cases {
        assert_eq!(api.post("/v1/tasks", req).await, (400, error(msg)));
    }
    let (status, body) = api
        .post(
            "/v1/tasks",
            json!({"name": "w", "taskDefinition": {}, "extra": 1}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON body: "));
    assert!(api.datapath.bindings().is_empty());
    assert_eq!(api.get("/v1/tasks").await, (200, json!([])));
}

#[tokio::test]
async fn stopping_a_map_add_task_says_how_to_remove_it() {
    let api = api();
    api.post(
        "/v1/bindings",
        json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80"]}),
    )
    .await;
    assert_eq!(
        api.call("POST", "/v1/tasks/web/stop", None).await,
        (
            409,
            error("task web was published with `berth map add`; remove it with `berth map rm --task web`")
        )
    );
}

/// Opens `GET path` and returns its body, to read frame by frame.
async fn open_stream(api: &Api, path: &str) -> Body {
    let req = Request::builder().uri(path).body(Body::empty()).unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    resp.into_body()
}

async fn next_line(body: &mut Body) -> Option<Value> {
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("an event within 5 s")?
        .unwrap();
    let data = frame.into_data().unwrap();
    assert!(data.ends_with(b"\n"), "{data:?}");
    Some(serde_json::from_slice(&data).unwrap())
}

#[tokio::test]
async fn events_stream_added_and_removed_bindings_as_ndjson() {
    let api = api();
    let mut body = open_stream(&api, "/v1/events").await;
    api.post(
        "/v1/bindings",
        json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80"]}),
    )
    .await;
    api.post("/v1/bindings/delete", json!({"task": "web"}))
        .await;
    let added = next_line(&mut body).await.unwrap();
    assert_eq!(added["event"], "added");
    assert_eq!(
        added["binding"],
        json!({"task": "web", "containerIP": "172.17.0.2", "bindIP": "0.0.0.0",
               "hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
    );
    assert!(added["time"].as_str().unwrap().ends_with('Z'));
    assert!(added.get("container").is_none());
    let removed = next_line(&mut body).await.unwrap();
    assert_eq!(removed["event"], "removed");
    assert_eq!(removed["binding"]["hostPort"], 8080);

    // Tasks carry their container names.
    api.post(
        "/v1/tasks",
        json!({"name": "t", "taskDefinition": web_def(), "ips": {"web": "172.17.0.2"}}),
    )
    .await;
    let e = next_line(&mut body).await.unwrap();
    assert_eq!(
        (e["event"].as_str(), e["container"].as_str()),
        (Some("added"), Some("web"))
    );

    // The stream ends when the daemon shuts down.
    api.berth.close();
    while let Some(e) = next_line(&mut body).await {
        assert_eq!(e["event"], "added", "the rest of the task's bindings");
    }
}

#[tokio::test]
async fn event_subscribers_are_capped_with_a_one_line_503() {
    let mut api = api();
    api.berth = api.berth.clone().with_max_subscribers(1);
    api.router = router(api.berth.clone());
    let first = open_stream(&api, "/v1/events").await;
    assert_eq!(
        api.get("/v1/events").await,
        (
            503,
            error("too many event subscribers (the daemon allows 1); try again later")
        )
    );
    drop(first);
    drop(open_stream(&api, "/v1/events").await);
}

#[tokio::test]
async fn too_many_ports_in_one_request_is_400_and_publishes_nothing() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["1-65535:1-65535"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        error(
            "this request names 65535 ports; the daemon allows at most 16384 per request \
             (berth daemon --max-ports-per-request)"
        )
    );
    assert!(api.datapath.bindings().is_empty());
}

#[tokio::test]
async fn events_can_start_with_the_existing_bindings() {
    let api = api();
    api.post(
        "/v1/bindings",
        json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80", "8443:443"]}),
    )
    .await;
    let mut body = open_stream(&api, "/v1/events?existing=true").await;
    for port in [8080, 8443] {
        let e = next_line(&mut body).await.unwrap();
        assert_eq!(
            (e["event"].as_str(), e["binding"]["hostPort"].as_u64()),
            (Some("added"), Some(port))
        );
    }
    api.post(
        "/v1/bindings/delete",
        json!({"task": "web", "ports": ["8443:443"]}),
    )
    .await;
    let e = next_line(&mut body).await.unwrap();
    assert_eq!(e["event"], "removed");
}

#[tokio::test]
async fn binding_stats_of_one_task_and_an_unknown_task_is_404() {
    let api = api();
    api.post(
        "/v1/bindings",
        json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["8080:80"]}),
    )
    .await;
    api.post(
        "/v1/bindings",
        json!({"task": "db", "containerIP": "172.17.0.3", "ports": ["5432:5432"]}),
    )
    .await;
    let (status, body) = api.get("/v1/bindings/stats?task=web").await;
    assert_eq!(status, 200);
    // The fake datapath counts nothing: the binding, with no stats.
    assert_eq!(
        body,
        json!([{"task": "web", "containerIP": "172.17.0.2", "bindIP": "0.0.0.0",
                "hostPort": 8080, "containerPort": 80, "protocol": "tcp", "stats": null}])
    );
    assert_eq!(
        api.get("/v1/bindings/stats")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api.get("/v1/bindings/stats?task=nope").await,
        (404, error("no such task: nope"))
    );
    assert_eq!(api.get("/v1/bindings/stats?task=a%20b").await.0, 400);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_latency_by_route_template() {
    let api = api();
    let state = crate::interfaces::metrics::MetricsState::new(true);
    let router = api.router.clone().layer(axum::Extension(state));
    for path in ["/v1/tasks/a/stop", "/v1/tasks/b/stop", "/no/such/path"] {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::empty())
            .unwrap();
        router.clone().oneshot(req).await.unwrap();
    }
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        crate::interfaces::metrics::text::CONTENT_TYPE
    );
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains(
        "berth_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/tasks/{name}/stop\"} 2\n"
    ), "{text}");
    assert!(text.contains(
        "berth_api_request_duration_seconds_count{method=\"POST\",route=\"unmatched\"} 1\n"
    ));
    assert!(!text.contains("/v1/tasks/a/stop"));
    assert!(text.contains("berth_mappings 0\n"));
}

#[tokio::test]
async fn the_datapath_log_is_switched_on_and_off_and_a_bad_level_refused() {
    let api = api();
    assert_eq!(
        api.call("PUT", "/v1/log", Some(r#"{"datapath":"debug"}"#))
            .await,
        (200, json!({ "datapath": "debug" }))
    );
    assert!(api
        .datapath
        .datapath_log
        .load(std::sync::atomic::Ordering::SeqCst));
    let (status, _) = api
        .call("PUT", "/v1/log", Some(r#"{"datapath":"trace"}"#))
        .await;
    assert_eq!(status, 400);
    assert!(
        api.datapath
            .datapath_log
            .load(std::sync::atomic::Ordering::SeqCst),
        "a refused request changes nothing"
    );
    assert_eq!(
        api.call("PUT", "/v1/log", Some(r#"{"datapath":"off"}"#))
            .await,
        (200, json!({ "datapath": "off" }))
    );
    assert!(!api
        .datapath
        .datapath_log
        .load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn container_ipv6_publishes_a_plain_spec_on_both_families_with_one_host_port() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "containerIPv6": "fd00::2",
                   "ports": ["80", "[::]:8443:443"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let rows: Vec<(String, String, u64)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["bindIP"].as_str().unwrap().to_owned(),
                b["containerIP"].as_str().unwrap().to_owned(),
                b["hostPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{body}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("0.0.0.0", "172.17.0.2")
    );
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), ("::", "fd00::2"));
    assert_eq!(rows[0].2, rows[1].2, "one dynamic host port for both");
    assert_eq!(rows[2], ("::".into(), "fd00::2".into(), 8443));
    assert_eq!(api.datapath.bindings().len(), 3);
    let (_, listed) = api.get("/v1/bindings").await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn an_ipv6_spec_without_container_ipv6_or_a_bad_one_is_one_clear_error() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "ports": ["[::]:8080:80"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        error("port spec \"[::]:8080:80/tcp\" publishes over IPv6, but task web has no container IPv6 address (--ip6)")
    );
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "containerIPv6": "fd00::zz", "ports": ["80"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body, error("malformed container IPv6 address \"fd00::zz\""));
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIP": "172.17.0.2", "containerIPv6": "fe80::2", "ports": ["80"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("fe80::2"),
        "{body}"
    );
    assert!(api.datapath.bindings().is_empty());
}

#[tokio::test]
async fn an_ipv6_only_container_needs_no_container_ip() {
    let api = api();
    let (status, body) = api
        .post(
            "/v1/bindings",
            json!({"task": "web", "containerIPv6": "fd00::2", "ports": ["8080:80"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body[0]["bindIP"], "::");
    assert_eq!(body[0]["containerIP"], "fd00::2");
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (status, body) = api
        .post("/v1/bindings", json!({"task": "db", "ports": ["8081:80"]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body, error("malformed container IP \"\""));
}
