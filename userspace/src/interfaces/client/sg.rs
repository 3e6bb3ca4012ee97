//! The client's security-group calls (`/v1/sgs...`, see `api::sg`).
use hyper::Method;

use super::{to_json, Client};
use crate::{
    domain::rules::RuleSpec,
    domain::{error::Result, rules::validate_name, task::validate_task_name},
    engine::sg_book::SgView,
    interfaces::api::sg::{CreateSgRequest, TaskRequest},
};

/// Client calls. Names go into paths as they are: callers validate them
/// first (the CLI does).
impl Client {
    pub async fn sg_list(&self) -> Result<Vec<SgView>> {
        self.call(Method::GET, "/v1/sgs", None).await
    }

    pub async fn sg_show(&self, name: &str) -> Result<SgView> {
        validate_name(name)?;
        self.call(Method::GET, &format!("/v1/sgs/{name}"), None)
            .await
    }

    pub async fn sg_create(&self, req: &CreateSgRequest) -> Result<SgView> {
        self.call(Method::POST, "/v1/sgs", Some(to_json(req)?))
            .await
    }

    pub async fn sg_remove(&self, name: &str) -> Result<SgView> {
        validate_name(name)?;
        self.call(Method::POST, &format!("/v1/sgs/{name}/delete"), None)
            .await
    }

    pub async fn sg_add_rule(&self, name: &str, spec: &RuleSpec) -> Result<SgView> {
        validate_name(name)?;
        self.call(
            Method::POST,
            &format!("/v1/sgs/{name}/rules"),
            Some(to_json(spec)?),
        )
        .await
    }

    pub async fn sg_remove_rule(&self, name: &str, spec: &RuleSpec) -> Result<SgView> {
        validate_name(name)?;
        self.call(
            Method::POST,
            &format!("/v1/sgs/{name}/rules/delete"),
            Some(to_json(spec)?),
        )
        .await
    }

    pub async fn sg_attach(&self, name: &str, task: &str) -> Result<SgView> {
        validate_name(name)?;
        validate_task_name(task)?;
        let req = TaskRequest {
            task: task.to_owned(),
        };
        self.call(
            Method::POST,
            &format!("/v1/sgs/{name}/attach"),
            Some(to_json(&req)?),
        )
        .await
    }

    pub async fn sg_detach(&self, name: &str, task: &str) -> Result<SgView> {
        validate_name(name)?;
        validate_task_name(task)?;
        let req = TaskRequest {
            task: task.to_owned(),
        };
        self.call(
            Method::POST,
            &format!("/v1/sgs/{name}/detach"),
            Some(to_json(&req)?),
        )
        .await
    }
}
