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
    let container_ip = parse_container_ip(&req.container_ip)?;
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
