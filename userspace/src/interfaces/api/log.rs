//! `PUT /v1/log`: the datapath log on or off at run time (`berth log
//! --datapath debug|off`). Body and answer: `{"datapath":"debug"}`.
use axum::{extract::State, routing::put, Json, Router};
use serde::{Deserialize, Serialize};

use crate::{
    engine::registry::Berth,
    interfaces::api::{ApiError, JsonBody},
};

/// The datapath log's level: `debug` writes the rare events (rate-limited),
/// `off` nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathLogLevel {
    Debug,
    Off,
}

impl DatapathLogLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Off => "off",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub datapath: DatapathLogLevel,
}

/// The routes, to merge into the API's router.
pub fn routes() -> Router<Berth> {
    Router::new().route("/v1/log", put(set))
}

async fn set(
    State(berth): State<Berth>,
    JsonBody(req): JsonBody<LogSettings>,
) -> Result<Json<LogSettings>, ApiError> {
    berth
        .set_datapath_log(req.datapath == DatapathLogLevel::Debug)
        .await?;
    tracing::info!(datapath = req.datapath.as_str(), "datapath log");
    Ok(Json(req))
}
