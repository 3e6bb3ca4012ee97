//! The security-group part of the daemon's API.
//!
//! ```text
//! GET    /v1/sgs                          -> 200 [SgView, ...]
//! POST   /v1/sgs {"name","description"?}  -> 201 SgView
//! GET    /v1/sgs/{name}                   -> 200 SgView with "hostCounters"
//! DELETE /v1/sgs/{name}, POST /v1/sgs/{name}/delete
//!                                         -> 200 SgView (as it was)
//! POST   /v1/sgs/{name}/rules        RuleSpec -> 201 SgView
//! POST   /v1/sgs/{name}/rules/delete RuleSpec -> 200 SgView
//! POST   /v1/sgs/{name}/attach {"task"}   -> 200 SgView
//! POST   /v1/sgs/{name}/detach {"task"}   -> 200 SgView
//! errors -> 400 (bad input), 404 (unknown group, task or rule),
//!           409 (exists, duplicate, limit, still in use) {"error":"one line"}
//! ```
//!
//! A `RuleSpec`: `{"direction":"ingress","protocol":"tcp","port":"5432",
//! "sg":"sg-api","description":"..."}`; `cidr` instead of `sg`; ICMP takes
//! `icmpType`/`icmpCode` (-1: any) instead of `port`.
use axum::{
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};

use crate::{
    domain::error::Result,
    domain::rules::RuleSpec,
    engine::registry::Berth,
    engine::sg_book::SgView,
    interfaces::api::{ApiError, JsonBody},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSgRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub task: String,
}

/// The routes, to merge into the API's router.
pub fn routes() -> Router<Berth> {
    Router::new()
        .route("/v1/sgs", get(list).post(create))
        .route("/v1/sgs/{name}", get(show).delete(remove))
        .route("/v1/sgs/{name}/delete", post(remove))
        .route("/v1/sgs/{name}/rules", post(add_rule))
        .route("/v1/sgs/{name}/rules/delete", post(remove_rule))
        .route("/v1/sgs/{name}/attach", post(attach))
        .route("/v1/sgs/{name}/detach", post(detach))
}

async fn list(State(berth): State<Berth>) -> Json<Vec<SgView>> {
    Json(berth.sg_list().await)
}

async fn create(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<CreateSgRequest>,
) -> Result<(StatusCode, Json<SgView>), ApiError> {
    let view = berth.sg_create(req.name, req.description).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn show(
    State(berth): State<Berth>,
    Path(name): Path<String>,
) -> Result<Json<SgView>, ApiError> {
    Ok(Json(berth.sg_show(name).await?))
}

async fn remove(
    State(berth): State<Berth>,
    Path(name): Path<String>,
) -> Result<Json<SgView>, ApiError> {
    Ok(Json(berth.sg_remove(name).await?))
}

async fn add_rule(
    State(berth): State<Berth>,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<RuleSpec>,
) -> Result<(StatusCode, Json<SgView>), ApiError> {
    let view = berth.sg_add_rule(name, spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn remove_rule(
    State(berth): State<Berth>,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<RuleSpec>,
) -> Result<Json<SgView>, ApiError> {
    Ok(Json(berth.sg_remove_rule(name, spec).await?))
}

async fn attach(
    State(berth): State<Berth>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<TaskRequest>,
) -> Result<Json<SgView>, ApiError> {
    Ok(Json(berth.sg_attach(name, req.task).await?))
}

async fn detach(
    State(berth): State<Berth>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<TaskRequest>,
) -> Result<Json<SgView>, ApiError> {
    Ok(Json(berth.sg_detach(name, req.task).await?))
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use axum::{body::Body, extract::Request};
    use http_body_util::BodyExt as _;
    use serde_json::{json, Value};
    use tower::ServiceExt as _;

    use crate::{
        adapters::store::Store,
        domain::cidr::Ipv4Cidr,
        domain::spec::{PortRange, PortSpec},
        engine::allocator::PortPolicy,
        engine::fake::{FakeDatapath, FakeHost},
        engine::registry::{Berth, Bridge, Registry},
    };

    struct Api {
        _dir: tempfile::TempDir,
        datapath: Arc<FakeDatapath>,
        berth: Berth,
        router: axum::Router,
    }

    fn api() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let datapath = Arc::new(FakeDatapath::default());
        let registry = Registry::open(
            Store::open(dir.path()).unwrap(),
            datapath.clone(),
            Bridge::Fixed {
                name: "br0".into(),
                subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
            },
            Arc::new(FakeHost::default()),
            PortPolicy::new(PortRange {
                start: 49153,
                end: 49162,
            }),
        )
        .unwrap();
        let berth = Berth::new(registry);
        Api {
            _dir: dir,
            datapath,
            router: crate::interfaces::api::router(berth.clone()),
            berth,
        }
    }

    impl Api {
        async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
                .unwrap();
            let resp = self.router.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap())
        }
    }

    #[tokio::test]
    async fn the_whole_lifecycle_over_http() {
        let api = api();
        let specs: Vec<PortSpec> = vec!["8080:80".parse().unwrap()];
        api.berth
            .add("web".into(), Ipv4Addr::new(172, 17, 0, 2), specs)
            .await
            .unwrap();

        let (status, body) = api
            .call(
                "POST",
                "/v1/sgs",
                Some(json!({"name": "web", "description": "front"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["id"], 1);
        assert_eq!(
            body["egress"],
            json!([
                {"direction": "egress", "protocol": "all", "cidr": "0.0.0.0/0"},
                {"direction": "egress", "protocol": "all", "cidr": "::/0"}
            ])
        );
        assert_eq!(body["ingress"], json!([]));

        let rule = json!({"direction": "ingress", "protocol": "tcp", "port": "80",
                          "cidr": "192.0.2.0/24"});
        let (status, body) = api
            .call("POST", "/v1/sgs/web/rules", Some(rule.clone()))
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = api
            .call("POST", "/v1/sgs/web/rules", Some(rule.clone()))
            .await;
        assert_eq!(status, 409);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .ends_with("(InvalidPermission.Duplicate)"),
            "{body}"
        );
        let bad = json!({"direction": "ingress", "protocol": "tcp", "port": "80",
                         "cidr": "192.0.2.1/24"});
        let (status, body) = api.call("POST", "/v1/sgs/web/rules", Some(bad)).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error": "192.0.2.1/24 is not a canonical CIDR (host bits are set); did you mean 192.0.2.0/24?"})
        );

        let (status, body) = api
            .call("POST", "/v1/sgs/web/attach", Some(json!({"task": "nope"})))
            .await;
        assert_eq!(
            (status, body),
            (404, json!({"error": "no such task: nope"}))
        );
        let (status, body) = api
            .call("POST", "/v1/sgs/web/attach", Some(json!({"task": "web"})))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tasks"], json!(["web"]));
        assert_eq!(body["members"], json!(["172.17.0.2"]));
        assert_eq!(
            api.datapath.endpoints.lock().unwrap()[&Ipv4Addr::new(172, 17, 0, 2)],
            (1, true)
        );

        let (status, body) = api.call("GET", "/v1/sgs/web", None).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["hostCounters"],
            json!({
                "ct_table_full": 0,
                "frag_denied": 0,
                "frag_no_first": 0,
                "policy_denied_egress": 0,
                "policy_denied_icmp": 0,
                "policy_denied_ingress": 0
            })
        );
        let (status, body) = api.call("GET", "/v1/sgs", None).await;
        assert_eq!(status, 200);
        assert_eq!(body.as_array().unwrap().len(), 1);
        assert!(body[0].get("hostCounters").is_none());

        let (status, body) = api.call("DELETE", "/v1/sgs/web", None).await;
        assert_eq!(status, 409);
        assert_eq!(
            body["error"],
            "security group web is attached to task web; detach it first (DependencyViolation)"
        );
        let (status, _) = api
            .call("POST", "/v1/sgs/web/detach", Some(json!({"task": "web"})))
            .await;
        assert_eq!(status, 200);
        let (status, _) = api
            .call("POST", "/v1/sgs/web/rules/delete", Some(rule))
            .await;
        assert_eq!(status, 200);
        let (status, body) = api.call("POST", "/v1/sgs/web/delete", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["name"], "web");
        let (status, body) = api.call("GET", "/v1/sgs/web", None).await;
        assert_eq!(
            (status, body),
            (404, json!({"error": "no such security group: web"}))
        );
    }

    #[tokio::test]
    async fn ipv6_rules_are_added_shown_and_compiled_for_the_datapath() {
        let api = api();
        let specs: Vec<PortSpec> = vec!["8080:80".parse().unwrap()];
        api.berth
            .add("web".into(), Ipv4Addr::new(172, 17, 0, 2), specs)
            .await
            .unwrap();
        api.call("POST", "/v1/sgs", Some(json!({"name": "web"})))
            .await;
        let rules = [
            json!({"direction": "ingress", "protocol": "tcp", "port": "443", "cidr": "2001:db8::/32"}),
            json!({"direction": "ingress", "protocol": "icmpv6", "icmpType": 128, "cidr": "::/0"}),
        ];
        for rule in &rules {
            let (status, body) = api
                .call("POST", "/v1/sgs/web/rules", Some(rule.clone()))
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let bad = json!({"direction": "ingress", "protocol": "icmpv6", "cidr": "0.0.0.0/0"});
        let (status, body) = api.call("POST", "/v1/sgs/web/rules", Some(bad)).await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"error": "protocol icmpv6 is IPv6's and 0.0.0.0/0 is an IPv4 CIDR; use --proto icmp"})
            )
        );
        let (status, body) = api
            .call("POST", "/v1/sgs/web/attach", Some(json!({"task": "web"})))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["ingress"],
            json!([
                {"direction": "ingress", "protocol": "tcp", "port": "443", "cidr": "2001:db8::/32"},
                {"direction": "ingress", "protocol": "icmpv6", "icmpType": 128, "icmpCode": -1,
                 "cidr": "::/0"}
            ])
        );
        let policies = api.datapath.policies.lock().unwrap();
        let (ingress, egress) = &policies[&1];
        assert_eq!(ingress.len(), 2);
        assert!(
            ingress.iter().all(|r| r.applies_v6() && !r.applies_v4()),
            "{ingress:?}"
        );
        assert_eq!(
            egress.iter().filter(|r| r.applies_v6()).count(),
            1,
            "the default egress covers IPv6: {egress:?}"
        );
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_in_one_line() {
        let api = api();
        let (status, body) = api
            .call(
                "POST",
                "/v1/sgs",
                Some(json!({"name": "x", "colour": "red"})),
            )
            .await;
        assert_eq!(status, 400);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid JSON body: unknown field `colour`"),
            "{body}"
        );
        let (status, body) = api
            .call("POST", "/v1/sgs", Some(json!({"name": "a b"})))
            .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["error"],
            "invalid security group name \"a b\": only letters, digits, '_', '.' and '-' are allowed"
        );
        let (status, _) = api.call("PUT", "/v1/sgs", None).await;
        assert_eq!(status, 405);
    }
}
