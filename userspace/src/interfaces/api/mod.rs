//! The daemon's HTTP/JSON API (served on a Unix socket, see `socket`).
//!
//! ```text
//! GET  /v1/health           -> 200 {"ok":true}
//! GET  /v1/bindings         -> 200 [Binding, ...]
//! POST /v1/bindings         {"task","containerIP","ports":[spec...]} -> 201 [created Binding...]
//! POST /v1/bindings/delete  {"task","ports":[spec...]?}              -> 200 [removed Binding...]
//! GET  /v1/stats            -> 200 {"counters":{name: value}}
//! GET  /v1/bindings/stats[?task=T] -> 200 [Binding + "stats":{packetsIn,...}|null]
//! GET  /metrics             -> 200 Prometheus text (see `interfaces::metrics`)
//! GET  /v1/tasks            -> 200 [{"name", "containers":[{"name","containerIP","networkBindings"}]}]
//! POST /v1/tasks            {"name","taskDefinition":{...},"ips":{container: ip}}
//!                           -> 201 {"containers":[{"name","networkBindings":[...]}]}
//! POST /v1/tasks/{name}/stop, DELETE /v1/tasks/{name} -> 200 {"name","containers":[...]}
//! GET  /v1/events[?existing=true] -> 200 application/x-ndjson, one event per
//!                           line until the client or the daemon goes away
//! /v1/sgs...                security groups: see `api::sg`
//! /v1/cni/...               what `berth-cni` calls: see `api::cni`
//! errors                    -> 4xx/5xx {"error":"one line"}
//! ```
//!
//! Limits (see `limits` and `server`): ports per request and per task (400,
//! 409), body size (413) and body time (408), event subscribers (503),
//! open connections (503, written by the server before any routing).
//!
//! A port spec without a host port (`"80"`, `"0:80"`, `"9000-9009"`) asks
//! for dynamic host ports; the answer shows the ones picked.
pub mod cni;
pub mod log;
pub mod sg;

use std::{collections::BTreeMap, convert::Infallible, future::Future, pin::Pin};

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, Path, Request, State},
    http::{header, Method, StatusCode, Uri},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use http_body_util::BodyExt as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    domain::ecs::TaskDefinition,
    domain::error::Error,
    domain::events::{Event, Lagged},
    domain::limits::BodyLimits,
    domain::model::{Binding, ContainerIps, EcsLabels, TaskRecord},
    domain::task::{parse_container_ip, parse_container_ip6, parse_specs, validate_task_name},
    engine::datapath::DatapathStatus,
    engine::registry::{Berth, FromDocker},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunTaskRequest {
    pub name: String,
    /// Either shape: `RegisterTaskDefinition`'s input, or `DescribeTaskDefinition`'s
    /// output (`{"taskDefinition": {...}}`).
    #[serde(rename = "taskDefinition")]
    pub task_definition: serde_json::Value,
    /// Container name → its IPv4 address on the bridge.
    #[serde(default)]
    pub ips: BTreeMap<String, String>,
    /// Container name → its IPv6 address: that container's port mappings
    /// are published over IPv6 too, one host port for both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ips6: BTreeMap<String, String>,
}

/// A task run from a task definition, as `task ls` and `task stop` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub name: String,
    #[serde(flatten)]
    pub record: TaskRecord,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub task: String,
    /// Empty or absent with `containerIPv6`: an IPv6-only container.
    #[serde(
        rename = "containerIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub container_ip: String,
    /// The container's IPv6 address: a spec without a host IP then
    /// publishes over IPv6 too, and `[::]:…` specs are allowed.
    #[serde(
        default,
        rename = "containerIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_ip6: Option<String>,
    pub ports: Vec<String>,
    /// Docker events mode: dockerd itself listens on these host ports (its
    /// port reservation without a userland proxy), so a listener there is
    /// not a conflict.
    #[serde(
        default,
        rename = "heldByDocker",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub held_by_docker: bool,
    /// With `heldByDocker`: the container's ECS agent labels, shown on
    /// each binding.
    #[serde(
        default,
        rename = "ecsTaskArn",
        skip_serializing_if = "Option::is_none"
    )]
    pub ecs_task_arn: Option<String>,
    #[serde(
        default,
        rename = "ecsContainerName",
        skip_serializing_if = "Option::is_none"
    )]
    pub ecs_container_name: Option<String>,
    /// With `heldByDocker`: Docker events mode makes this task, which then
    /// is its own (see `Binding::docker_events`).
    #[serde(
        default,
        rename = "dockerEvents",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub docker_events: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    pub task: String,
    /// Empty or absent: every binding of the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Docker events mode asks: only a task it made is removed.
    #[serde(
        default,
        rename = "dockerEvents",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub docker_events: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub counters: BTreeMap<String, u64>,
}

/// `GET /v1/status`: the daemon and its datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub socket: String,
    pub store: String,
    pub datapath: Option<DatapathStatus>,
    /// Docker events mode (`--docker`) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerStatus>,
}

/// Docker events mode: the engine's API socket and what berth publishes
/// from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerStatus {
    pub socket: String,
    pub connected: bool,
    /// When `connected` last changed (RFC 3339, UTC); the daemon's start
    /// before the first attempt.
    pub since: String,
    /// The last failure to reach the engine or follow its events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Running containers berth publishes, and the tasks they make.
    pub containers: usize,
    pub tasks: usize,
    /// Running containers not published because their task name is taken
    /// by a task Docker events mode did not make (`name -> task`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clashes: Vec<String>,
}

/// The Docker follower writes, `GET /v1/status` reads.
pub type DockerLink = std::sync::Arc<std::sync::Mutex<DockerStatus>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// An error response: a status and one line.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status =
            StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, err.one_line())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), error = %self.message, "request refused");
        }
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// A JSON body that is parsed whatever the Content-Type says (so a bare
/// `curl -d '{...}'` works) and whose rejections are `{"error": ...}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    }
}

/// The whole body, within the server's time and size limits (defaults when
/// the request did not come through [`crate::interfaces::server`]).
async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    let limits = req
        .extensions()
        .get::<BodyLimits>()
        .copied()
        .unwrap_or_default();
    let limited = http_body_util::Limited::new(req.into_body(), limits.max_bytes);
    match tokio::time::timeout(limits.timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                limits.timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} bytes, the most the daemon accepts",
                limits.max_bytes
            ),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

pub fn router(berth: Berth) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/bindings", get(list_bindings).post(add_bindings))
        .route("/v1/bindings/delete", post(remove_bindings))
        .route("/v1/stats", get(stats))
        .route("/v1/status", get(status))
        .route("/v1/tasks", get(list_tasks).post(run_task))
        .route("/v1/tasks/{name}", axum::routing::delete(stop_task))
        .route("/v1/tasks/{name}/stop", post(stop_task))
        .route("/v1/events", get(events))
        .route("/v1/bindings/stats", get(binding_stats))
        .route("/metrics", get(crate::interfaces::metrics::scrape))
        .merge(sg::routes())
        .merge(cni::routes())
        .merge(log::routes())
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(crate::interfaces::server::log_changes))
        .layer(middleware::from_fn(
            crate::interfaces::metrics::time_requests,
        ))
        .with_state(berth)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true }))
}

async fn list_bindings(State(berth): State<Berth>) -> Json<Vec<Binding>> {
    Json(berth.bindings().await)
}

async fn add_bindings(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<AddRequest>,
) -> Result<(StatusCode, Json<Vec<Binding>>), ApiError> {
    validate_task_name(&req.task)?;
    let v6_only = req.container_ip.is_empty() && req.container_ip6.is_some();
    let container_ip = ContainerIps {
        v4: (!v6_only)
            .then(|| parse_container_ip(&req.container_ip))
            .transpose()?,
        v6: req
            .container_ip6
            .as_deref()
            .map(parse_container_ip6)
            .transpose()?,
    };
    let specs = parse_specs(&req.ports)?;
    let ecs = EcsLabels {
        task_arn: req.ecs_task_arn,
        container_name: req.ecs_container_name,
    };
    ecs.check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if !req.held_by_docker && ecs != EcsLabels::default() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ecsTaskArn and ecsContainerName are for Docker events mode (heldByDocker)",
        ));
    }
    if !req.held_by_docker && req.docker_events {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "dockerEvents is for Docker events mode (heldByDocker)",
        ));
    }
    let from_docker = req.held_by_docker.then_some(FromDocker {
        ecs,
        events: req.docker_events,
    });
    let added = berth
        .add_with(req.task, container_ip, specs, from_docker)
        .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn remove_bindings(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<RemoveRequest>,
) -> Result<Json<Vec<Binding>>, ApiError> {
    validate_task_name(&req.task)?;
    let specs = parse_specs(&req.ports)?;
    Ok(Json(
        berth
            .remove_owned(req.task, specs, req.docker_events)
            .await?,
    ))
}

async fn list_tasks(State(berth): State<Berth>) -> Json<Vec<TaskView>> {
    Json(
        berth
            .task_records()
            .await
            .into_iter()
            .map(|(name, record)| TaskView { name, record })
            .collect(),
    )
}

async fn run_task(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<RunTaskRequest>,
) -> Result<(StatusCode, Json<TaskRecord>), ApiError> {
    validate_task_name(&req.name)?;
    let def = TaskDefinition::from_value(&req.task_definition)?;
    let ips = req
        .ips
        .iter()
        .map(|(name, ip)| Ok((name.clone(), parse_container_ip(ip)?)))
        .collect::<Result<_, Error>>()?;
    let ips6 = req
        .ips6
        .iter()
        .map(|(name, ip)| Ok((name.clone(), parse_container_ip6(ip)?)))
        .collect::<Result<_, Error>>()?;
    let record = berth.run_task_dual(req.name, def, ips, ips6).await?;
    // Exactly ECS's shape: what registrars parse.
    Ok((StatusCode::CREATED, Json(record.without_ips())))
}

async fn stop_task(
    State(berth): State<Berth>,
    Path(name): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    validate_task_name(&name)?;
    let (record, _) = berth.stop_task(name.clone()).await?;
    Ok(Json(TaskView { name, record }))
}

type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

struct EventStream {
    snapshot: std::vec::IntoIter<Event>,
    rx: broadcast::Receiver<Event>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    closing: Closing,
    done: bool,
}

fn json_line(value: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Newline-delimited JSON events until the client hangs up or the daemon
/// shuts down. A subscriber that falls more than the buffer behind gets a
/// `{"event":"lagged","missed":N}` line and the end of the stream: it
/// should re-read the bindings and subscribe again.
async fn events(State(berth): State<Berth>, uri: Uri) -> Result<Response, ApiError> {
    let existing = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "existing" | "existing=true" | "existing=1"))
    });
    let sub = berth.subscribe(existing).await?;
    let stream = EventStream {
        snapshot: sub.snapshot.into_iter(),
        rx: sub.rx,
        _permit: sub.permit,
        closing: Box::pin(berth.closing()),
        done: false,
    };
    let body = futures_util::stream::unfold(stream, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(e) = st.snapshot.next() {
            return Some((Ok::<_, Infallible>(json_line(&e)), st));
        }
        tokio::select! {
            () = &mut st.closing => None,
            r = st.rx.recv() => match r {
                Ok(e) => Some((Ok(json_line(&e)), st)),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "an event subscriber fell behind; ending its stream");
                    st.done = true;
                    Some((Ok(json_line(&Lagged::now(missed))), st))
                }
                Err(RecvError::Closed) => None,
            },
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn stats(State(berth): State<Berth>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(Stats {
        counters: berth.counters().await?,
    }))
}

/// A binding with its per-binding counters (`None`: the datapath counts
/// nothing for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingStatsView {
    #[serde(flatten)]
    pub binding: Binding,
    pub stats: Option<crate::engine::datapath::BindingCounters>,
}

#[derive(Debug, Default, Deserialize)]
struct StatsQuery {
    task: Option<String>,
}

async fn binding_stats(
    State(berth): State<Berth>,
    query: axum::extract::Query<StatsQuery>,
) -> Result<Json<Vec<BindingStatsView>>, ApiError> {
    if let Some(t) = &query.task {
        validate_task_name(t)?;
    }
    let rows = berth.binding_counters(query.0.task).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(binding, stats)| BindingStatsView { binding, stats })
            .collect(),
    ))
}

/// Who the daemon is; the router gets it as an extension from the daemon.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    pub socket: std::path::PathBuf,
    pub store: std::path::PathBuf,
    pub docker: Option<DockerLink>,
}

async fn status(
    State(berth): State<Berth>,
    info: Option<axum::Extension<DaemonInfo>>,
) -> Result<Json<StatusView>, ApiError> {
    let datapath = berth.datapath_status().await?;
    let info = info.map(|axum::Extension(i)| i);
    Ok(Json(StatusView {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        socket: info
            .as_ref()
            .map_or(String::new(), |i| i.socket.display().to_string()),
        store: info
            .as_ref()
            .map_or(String::new(), |i| i.store.display().to_string()),
        datapath,
        docker: info.as_ref().and_then(|i| i.docker.as_ref()).map(|d| {
            d.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }),
    }))
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests;
