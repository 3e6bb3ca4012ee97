//! A small HTTP/1 client for the daemon's API over its Unix socket.
mod cni;
mod sg;

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, client::conn::http1, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;

use crate::{
    domain::error::{Error, Result},
    domain::model::{Binding, TaskRecord},
    interfaces::api::{AddRequest, ErrorBody, RemoveRequest, RunTaskRequest, Stats, TaskView},
};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn health(&self) -> Result<()> {
        self.call::<serde_json::Value>(Method::GET, "/v1/health", None)
            .await
            .map(drop)
    }

    pub async fn bindings(&self) -> Result<Vec<Binding>> {
        self.call(Method::GET, "/v1/bindings", None).await
    }

    pub async fn add(&self, req: &AddRequest) -> Result<Vec<Binding>> {
        self.call(Method::POST, "/v1/bindings", Some(to_json(req)?))
            .await
    }

    pub async fn remove(&self, req: &RemoveRequest) -> Result<Vec<Binding>> {
        self.call(Method::POST, "/v1/bindings/delete", Some(to_json(req)?))
            .await
    }

    pub async fn stats(&self) -> Result<Stats> {
        self.call(Method::GET, "/v1/stats", None).await
    }

    /// Bindings with their counters; of one task (a valid task name, it
    /// goes into the query as is) when given.
    pub async fn binding_stats(
        &self,
        task: Option<&str>,
    ) -> Result<Vec<crate::interfaces::api::BindingStatsView>> {
        let path = match task {
            Some(t) => format!("/v1/bindings/stats?task={t}"),
            None => "/v1/bindings/stats".to_owned(),
        };
        self.call(Method::GET, &path, None).await
    }

    pub async fn set_log(
        &self,
        s: &crate::interfaces::api::log::LogSettings,
    ) -> Result<crate::interfaces::api::log::LogSettings> {
        let body = serde_json::to_vec(s).map_err(|e| Error::DaemonProtocol(e.to_string()))?;
        self.call(Method::PUT, "/v1/log", Some(body)).await
    }

    pub async fn status(&self) -> Result<crate::interfaces::api::StatusView> {
        self.call(Method::GET, "/v1/status", None).await
    }

    pub async fn tasks(&self) -> Result<Vec<TaskView>> {
        self.call(Method::GET, "/v1/tasks", None).await
    }

    pub async fn run_task(&self, req: &RunTaskRequest) -> Result<TaskRecord> {
        self.call(Method::POST, "/v1/tasks", Some(to_json(req)?))
            .await
    }

    /// `name` must be a valid task name (it goes into the path as is).
    pub async fn stop_task(&self, name: &str) -> Result<TaskView> {
        self.call(Method::POST, &format!("/v1/tasks/{name}/stop"), None)
            .await
    }

    /// Follows `GET /v1/events`, calling `on_line` with each line (one JSON
    /// event) until it returns false or the daemon ends the stream. Only
    /// the connection and the response head are under the timeout.
    pub async fn events(
        &self,
        existing: bool,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<()> {
        let path = if existing {
            "/v1/events?existing=true"
        } else {
            "/v1/events"
        };
        let (resp, conn) = tokio::time::timeout(self.timeout, self.start(Method::GET, path, None))
            .await
            .map_err(|_| self.timeout_error())??;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.http_error(e))?
                .to_bytes();
            conn.abort();
            return Err(api_error(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_error(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(eol) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=eol).collect();
                let line = String::from_utf8_lossy(&line[..eol]);
                if !line.trim().is_empty() && !on_line(&line) {
                    conn.abort();
                    return Ok(());
                }
            }
        }
        conn.abort();
        Ok(())
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let (status, bytes) = tokio::time::timeout(self.timeout, self.send(method, path, body))
            .await
            .map_err(|_| self.timeout_error())??;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::DaemonProtocol(format!("unexpected answer from the daemon to {path}: {e}"))
        })
    }

    fn timeout_error(&self) -> Error {
        Error::DaemonTimeout {
            path: self.socket.clone(),
            secs: self.timeout.as_secs(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let (resp, conn) = self.start(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http_error(e))?
            .to_bytes();
        conn.abort();
        Ok((status, bytes))
    }

    /// Sends a request and returns the response head (the body still to be
    /// read) and the connection task, to abort once done.
    async fn start(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(
        hyper::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<std::result::Result<(), hyper::Error>>,
    )> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Request(e.into()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.http_error(e))?;
        Ok((resp, conn))
    }

    fn connect_error(&self, err: io::Error) -> Error {
        match err.kind() {
            io::ErrorKind::PermissionDenied => Error::DaemonPermissionDenied(self.socket.clone()),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::DaemonUnreachable(self.socket.clone())
            }
            _ => Error::io(
                format!(
                    "connecting to the berth daemon at {}",
                    self.socket.display()
                ),
                err,
            ),
        }
    }

    fn http_error(&self, err: hyper::Error) -> Error {
        Error::DaemonProtocol(format!(
            "talking to the berth daemon at {}: {err}",
            self.socket.display()
        ))
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| format!("the daemon answered {status}"));
    Error::Api {
        status: status.as_u16(),
        message,
    }
}

pub(crate) fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(Error::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_daemon_is_one_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        let err = Client::new(&path).bindings().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the berth daemon at {}: is `berth daemon` running?",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn stale_socket_is_reported_as_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = Client::new(&path).health().await.unwrap_err();
        assert!(matches!(err, Error::DaemonUnreachable(_)), "{err}");
    }
}
