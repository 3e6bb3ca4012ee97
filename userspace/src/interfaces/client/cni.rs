//! The client side of `api::cni`, for `berth-cni`.
use hyper::Method;

use super::{to_json, Client};
use crate::{
    domain::error::Result,
    domain::model::Binding,
    interfaces::api::cni::{CheckedBindingView, CniAddRequest, CniAttachmentRequest, CniGcRequest},
};

impl Client {
    pub async fn cni_add(&self, req: &CniAddRequest) -> Result<Vec<Binding>> {
        self.call(Method::POST, "/v1/cni/add", Some(to_json(req)?))
            .await
    }

    pub async fn cni_del(&self, req: &CniAttachmentRequest) -> Result<Vec<Binding>> {
        self.call(Method::POST, "/v1/cni/del", Some(to_json(req)?))
            .await
    }

    pub async fn cni_check(&self, req: &CniAttachmentRequest) -> Result<Vec<CheckedBindingView>> {
        self.call(Method::POST, "/v1/cni/check", Some(to_json(req)?))
            .await
    }

    pub async fn cni_gc(&self, req: &CniGcRequest) -> Result<Vec<Binding>> {
        self.call(Method::POST, "/v1/cni/gc", Some(to_json(req)?))
            .await
    }
}
