//! Requests to the daemon's API, answered by the daemon's own router and
//! handlers (`berth::api::router`) over a real store in a private directory
//! and the in-memory datapath and host of the unit tests (`berth::fake`).
//!
//! An input is up to eight requests separated by 0xFF (a byte JSON never
//! holds). In each, the first byte picks the endpoint and the rest is the
//! body; for an endpoint with a `{name}`, the body's first line is the name.
//! Every input starts from an empty daemon, so a failure replays alone.
//!
//! What must hold: no panic; every answer is JSON with a 2xx or 4xx status
//! (a 5xx from an in-memory datapath is a bug); every refusal is
//! `{"error": "<one line>"}`; a binding request that parses survives a JSON
//! round trip; afterwards the datapath holds exactly the bindings the API
//! lists.
#![no_main]
use std::{collections::BTreeSet, path::PathBuf, sync::Arc};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use berth::{
    engine::allocator::PortPolicy,
    api::{router, AddRequest, RemoveRequest},
    fake::{FakeDatapath, FakeHost},
    model::Binding,
    domain::cidr::Ipv4Cidr,
    spec::PortRange,
    state::{Berth, Bridge, Registry},
    adapters::store::Store,
};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use tower::ServiceExt as _;

/// (method, path); `{}` is replaced by the name.
const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/v1/bindings"),
    ("POST", "/v1/bindings/delete"),
    ("POST", "/v1/tasks"),
    ("POST", "/v1/tasks/{}/stop"),
    ("DELETE", "/v1/tasks/{}"),
    ("POST", "/v1/sgs"),
    ("POST", "/v1/sgs/{}/rules"),
    ("POST", "/v1/sgs/{}/rules/delete"),
    ("POST", "/v1/sgs/{}/attach"),
    ("POST", "/v1/sgs/{}/detach"),
    ("POST", "/v1/sgs/{}/delete"),
    ("GET", "/v1/sgs/{}"),
    ("GET", "/v1/bindings"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/sgs"),
    ("GET", "/v1/stats"),
];
const MAX_REQUESTS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(data));
});

async fn run(data: &[u8]) {
    let daemon = Daemon::start();
    for request in data.split(|&b| b == 0xFF).take(MAX_REQUESTS) {
        let Some((&which, rest)) = request.split_first() else {
            continue;
        };
        let (method, path) = ENDPOINTS[usize::from(which) % ENDPOINTS.len()];
        let (path, body) = if path.contains("{}") {
            let (name, body) = split_line(rest);
            (path.replace("{}", &encode_segment(name)), body)
        } else {
            (path.to_owned(), rest)
        };
        match path.as_str() {
            "/v1/bindings" if method == "POST" => round_trip::<AddRequest>(body),
            "/v1/bindings/delete" => round_trip::<RemoveRequest>(body),
            _ => {}
        }
        daemon.call(method, &path, body).await;
    }
    // The registry and the datapath agree on what is published.
    let (_, listed) = daemon.call("GET", "/v1/bindings", b"").await;
    let listed: BTreeSet<Binding> =
        serde_json::from_value(listed).expect("GET /v1/bindings lists bindings");
    let held: BTreeSet<Binding> = daemon.datapath.bindings().into_iter().collect();
    assert_eq!(listed, held, "the API and the datapath disagree");
}

/// A daemon as `berth daemon` builds it, minus the kernel: a fresh store
/// in a directory of this process, the fakes instead of the datapath and
/// the host.
struct Daemon {
    router: Router,
    datapath: Arc<FakeDatapath>,
}

impl Daemon {
    fn start() -> Self {
        let dir = store_dir();
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("a store in a private directory");
        let datapath = Arc::new(FakeDatapath::default());
        let bridge = Bridge::Fixed {
            name: "docker0".into(),
            subnets: vec![Ipv4Cidr::new([172, 17, 0, 1].into(), 16)],
        };
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
        .expect("a registry over an empty store");
        Daemon {
            router: router(Berth::new(registry)),
            datapath,
        }
    }

    /// One request through the router; checks the answer's shape.
    async fn call(&self, method: &str, path: &str, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_vec()))
            .expect("a valid request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("a whole body")
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path} -> {status}: not JSON ({e}): {bytes:?}"));
        assert!(
            status.is_success() || status.is_client_error(),
            "{method} {path} -> {status}: {value}"
        );
        if !status.is_success() {
            let line = value["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} -> {status}: no error line: {value}"));
            assert!(
                !line.is_empty() && !line.contains('\n'),
                "{method} {path} -> {status}: not one line: {line:?}"
            );
        }
        (status, value)
    }
}

/// The store directory, on tmpfs when there is one (a commit syncs).
fn store_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    base.join(format!("berth-fuzz-api-{}", std::process::id()))
}

/// A body that deserializes as the handler's request type survives a
/// serialize/deserialize round trip.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let again: T = serde_json::from_slice(&serde_json::to_vec(&req).expect("serializes"))
        .expect("round trip parses");
    assert_eq!(again, req);
}

fn split_line(rest: &[u8]) -> (&[u8], &[u8]) {
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[]),
    }
}

/// A path segment that decodes back to the name (as UTF-8, lossily: the
/// router refuses other bytes before any handler runs).
fn encode_segment(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
