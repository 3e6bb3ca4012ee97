//! The CNI part of the daemon's API, what `berth-cni` calls. Bindings made
//! here carry their attachment (`"cni"` on each binding in `GET
//! /v1/bindings`), so DEL, CHECK and GC find them by what the runtime names.
//!
//! ```text
//! POST /v1/cni/add    {"attachment":{...},"containerIP","ports":[spec...]}
//!                     -> 201 [created Binding...]
//! POST /v1/cni/del    {"attachment":{...}}  -> 200 [removed Binding...] (may be empty)
//! POST /v1/cni/check  {"attachment":{...}}  -> 200 [{...Binding,"inDatapath":bool}]
//! POST /v1/cni/gc     {"network","validAttachments":[{"containerID","ifname"}]}
//!                     -> 200 [removed Binding...]
//! an attachment: {"network","containerID","ifname","podNamespace"?,"podName"?}
//! errors -> 400 (bad attachment or spec), 409 (port taken, ADD twice)
//! ```
use std::collections::BTreeSet;

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use serde::{Deserialize, Serialize};

use crate::{
    domain::cni::CniAttachment,
    domain::model::Binding,
    domain::task::{parse_container_ip, parse_specs},
    engine::registry::Berth,
    interfaces::api::{ApiError, JsonBody},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAddRequest {
    pub attachment: CniAttachment,
    #[serde(rename = "containerIP")]
    pub container_ip: String,
    /// The sandbox's IPv6 address, when it has one.
    #[serde(
        default,
        rename = "containerIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_ip6: Option<String>,
    pub ports: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttachmentRequest {
    pub attachment: CniAttachment,
}

/// One of GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CniGcRequest {
    pub network: String,
    pub valid_attachments: Vec<ValidAttachment>,
}

/// A binding of an attachment and whether the datapath publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedBindingView {
    #[serde(flatten)]
    pub binding: Binding,
    pub in_datapath: bool,
}

/// The routes, to merge into the API's router.
pub fn routes() -> Router<Berth> {
    Router::new()
        .route("/v1/cni/add", post(add))
        .route("/v1/cni/del", post(del))
        .route("/v1/cni/check", post(check))
        .route("/v1/cni/gc", post(gc))
}

async fn add(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<CniAddRequest>,
) -> Result<(StatusCode, Json<Vec<Binding>>), ApiError> {
    let container_ip = crate::domain::model::ContainerIps {
        v4: Some(parse_container_ip(&req.container_ip)?),
        v6: req
            .container_ip6
            .as_deref()
            .map(crate::domain::task::parse_container_ip6)
            .transpose()?,
    };
    let specs = parse_specs(&req.ports)?;
    let added = berth.add_cni(req.attachment, container_ip, specs).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn del(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<CniAttachmentRequest>,
) -> Result<Json<Vec<Binding>>, ApiError> {
    Ok(Json(berth.remove_cni(req.attachment).await?))
}

async fn check(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<CniAttachmentRequest>,
) -> Result<Json<Vec<CheckedBindingView>>, ApiError> {
    let checked = berth.check_cni(req.attachment).await?;
    Ok(Json(
        checked
            .into_iter()
            .map(|c| CheckedBindingView {
                binding: c.binding,
                in_datapath: c.in_datapath,
            })
            .collect(),
    ))
}

async fn gc(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<CniGcRequest>,
) -> Result<Json<Vec<Binding>>, ApiError> {
    let valid: BTreeSet<(String, String)> = req
        .valid_attachments
        .into_iter()
        .map(|a| (a.container_id, a.ifname))
        .collect();
    Ok(Json(berth.gc_cni(req.network, valid).await?))
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use serde_json::{json, Value};
    use tower::ServiceExt as _;

    use crate::{
        adapters::store::Store,
        domain::{cidr::Ipv4Cidr, spec::PortRange},
        engine::{
            allocator::PortPolicy,
            fake::{FakeDatapath, FakeHost},
            registry::{Berth, Bridge, Registry},
        },
        interfaces::api::router,
    };

    async fn post(app: &axum::Router, path: &str, body: Value) -> (u16, Value) {
        let req = axum::http::Request::post(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn app(dir: &tempfile::TempDir) -> axum::Router {
        let bridge = Bridge::Fixed {
            name: "cni0".into(),
            subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(10, 88, 0, 1), 16)],
        };
        let registry = Registry::open(
            Store::open(dir.path()).unwrap(),
            Arc::new(FakeDatapath::default()),
            bridge,
            Arc::new(FakeHost::default()),
            PortPolicy::new(PortRange {
                start: 49153,
                end: 49162,
            }),
        )
        .unwrap();
        router(Berth::new(registry))
    }

    fn attachment(container_id: &str) -> Value {
        json!({"network": "kube", "containerID": container_id, "ifname": "eth0",
               "podNamespace": "shop", "podName": "web-0"})
    }

    #[tokio::test]
    async fn the_attachment_is_kept_on_each_binding_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(&dir);
        let add = json!({"attachment": attachment("c1"), "containerIP": "10.88.0.5",
                         "ports": ["8080:80"]});
        let (status, body) = post(&app, "/v1/cni/add", add.clone()).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body[0]["task"], "c1");
        assert_eq!(body[0]["cni"], attachment("c1"));
        let (status, body) = post(&app, "/v1/cni/add", add).await;
        assert_eq!(status, 409, "{body}");

        let (status, body) = post(
            &app,
            "/v1/cni/check",
            json!({"attachment": attachment("c1")}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body[0]["inDatapath"], true);
        assert_eq!(body[0]["hostPort"], 8080);

        for bad in ["../etc", "", "-x"] {
            let (status, body) =
                post(&app, "/v1/cni/del", json!({"attachment": attachment(bad)})).await;
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("CNI attachment: invalid container ID"),
                "{body}"
            );
        }
        let (status, body) = post(
            &app,
            "/v1/cni/gc",
            json!({"network": "kube bad", "validAttachments": []}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let (status, body) =
            post(&app, "/v1/cni/del", json!({"attachment": attachment("c1")})).await;
        assert_eq!((status, body[0]["hostPort"].clone()), (200, json!(8080)));
        let (status, body) =
            post(&app, "/v1/cni/del", json!({"attachment": attachment("c1")})).await;
        assert_eq!((status, body), (200, json!([])));
    }
}
