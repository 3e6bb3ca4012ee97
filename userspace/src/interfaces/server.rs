//! Serving the API router on the Unix socket with bounded resources: at
//! most `max_connections` open connections, a header read timeout that also
//! closes idle connections, and the caller's credentials (`SO_PEERCRED`)
//! attached to every request so each change is logged with who asked.
//!
//! At the cap, a new connection takes the place of the oldest one that has
//! not sent a byte yet (idle connections never keep a real client out);
//! when every connection is busy, it gets a one-line 503 and is closed.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body, extract::Request, http::Method, middleware::Next, response::Response, Router,
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt as _,
    net::{UnixListener, UnixStream},
    sync::{oneshot, watch, Semaphore},
};
use tower::ServiceExt as _;

use crate::domain::limits::{ApiLimits, BodyLimits};

/// Who is on the other end of an API connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

fn caller_of(stream: &UnixStream) -> Option<Caller> {
    stream.peer_cred().ok().map(|c| Caller {
        uid: c.uid(),
        gid: c.gid(),
        pid: c.pid(),
    })
}

/// Logs every request that may change something (anything but GET/HEAD),
/// with the caller and the outcome.
pub async fn log_changes(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let caller = req.extensions().get::<Caller>().copied();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let (uid, pid) = match caller {
        Some(c) => (
            c.uid.to_string(),
            c.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        ),
        None => ("?".to_owned(), "?".to_owned()),
    };
    tracing::info!(
        %method,
        %path,
        uid = %uid,
        pid = %pid,
        status = resp.status().as_u16(),
        "API change request"
    );
    resp
}

/// Refused connections being answered at once; more are just closed.
const REFUSALS_IN_FLIGHT: usize = 64;

/// Descriptors the daemon needs besides API connections (maps, programs,
/// links, the store, netlink).
const FD_HEADROOM: u64 = 256;

/// Raises the soft open-files limit to the hard one (systemd's soft default
/// is 1024), so `max_connections` connections fit; warns when they cannot.
pub fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the `rlimit` we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
                libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim);
            }
        }
    }
    let needed = max_connections as u64 + FD_HEADROOM;
    if lim.rlim_cur < needed {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections,
            "the open-files limit is below --max-connections plus what the daemon needs; \
             raise LimitNOFILE or lower --max-connections"
        );
    }
}

/// Connections that have not sent their first byte, oldest first; each
/// can be told to close.
#[derive(Default)]
struct Idle {
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

type IdleSet = Arc<Mutex<Idle>>;

fn idle_register(set: &IdleSet) -> (u64, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let mut idle = set
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    idle.next += 1;
    let id = idle.next;
    idle.waiting.insert(id, tx);
    (id, rx)
}

fn idle_forget(set: &IdleSet, id: u64) {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .waiting
        .remove(&id);
}

/// Closes the oldest idle connection; false when there is none.
fn idle_evict_oldest(set: &IdleSet) -> bool {
    let mut idle = set
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while let Some((_, tx)) = idle.waiting.pop_first() {
        if tx.send(()).is_ok() {
            return true;
        }
    }
    false
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// connections finish for at most `grace`.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Answering a refused client takes a moment; a flood of them is closed
    // without an answer rather than piling up tasks and descriptors.
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let idle = IdleSet::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // The evicted connection hands its place over at once.
            Err(_) if idle_evict_oldest(&idle) => {
                tokio::time::timeout(Duration::from_secs(1), permits.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, limits.max_connections).await;
                    drop(slot);
                });
            }
            continue;
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        let idle = idle.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, limits, idle, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the grace period; closing them");
    }
}

async fn serve_connection(
    stream: UnixStream,
    app: Router,
    limits: ApiLimits,
    idle: IdleSet,
    mut stop: watch::Receiver<bool>,
) {
    // Idle until the first byte: then another connection may take our place.
    let (id, evicted) = idle_register(&idle);
    let first = tokio::select! {
        r = tokio::time::timeout(limits.header_timeout, first_byte(&stream)) => r,
        _ = evicted => {
            tracing::debug!("idle API connection closed to make room");
            return;
        }
        _ = stop.wait_for(|s| *s) => {
            idle_forget(&idle, id);
            return;
        }
    };
    idle_forget(&idle, id);
    if !matches!(first, Ok(Ok(()))) {
        return; // nothing sent within the header timeout, or an error
    }
    let caller = caller_of(&stream);
    let body = limits.body;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(c) = caller {
            req.extensions_mut().insert(c);
        }
        req.extensions_mut().insert::<BodyLimits>(body);
        let app = app.clone();
        async move { app.oneshot(req.map(Body::new)).await }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "API connection ended");
    }
}

/// Resolves once the client has sent something (or hung up). Readiness
/// alone is not proof: tokio may report a fresh socket readable, so peek.
async fn first_byte(stream: &UnixStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut b = [0u8; 1];
            // SAFETY: `b` is valid for one byte; MSG_PEEK leaves the data
            // for hyper to read.
            let n = unsafe {
                libc::recv(
                    fd,
                    b.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        match peeked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Tells a client over the connection cap why, in one line, and closes.
async fn refuse(mut stream: UnixStream, max: usize) {
    let caller = caller_of(&stream);
    tracing::warn!(
        max,
        uid = caller.map(|c| c.uid),
        pid = caller.and_then(|c| c.pid),
        "API connection refused: too many open connections"
    );
    let body = serde_json::json!({
        "error": format!("too many open API connections (the daemon allows {max}); try again later")
    })
    .to_string();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    // Reading what the client sent before closing keeps the kernel from
    // resetting the connection under the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), drain(&mut stream)).await;
}

async fn drain(stream: &mut UnixStream) -> Result<(), Infallible> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::{Path, PathBuf},
        sync::Mutex,
    };

    use axum::routing::post;
    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::interfaces::api::JsonBody;

    struct Server {
        _dir: tempfile::TempDir,
        path: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            (&mut self.task).await.unwrap();
        }
    }

    async fn echo(JsonBody(v): JsonBody<serde_json::Value>) -> axum::Json<serde_json::Value> {
        axum::Json(v)
    }

    fn app() -> Router {
        Router::new()
            .route("/echo", post(echo).get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(log_changes))
    }

    async fn start(limits: ApiLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(
            listener,
            app(),
            limits,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        Server {
            _dir: dir,
            path,
            stop: Some(stop),
            task,
        }
    }

    /// Sends `raw` and reads until the server closes (or 5 s pass).
    async fn exchange(path: &Path, raw: &str) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        read_all(&mut s).await
    }

    async fn read_all(s: &mut UnixStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn post_echo(body: &str) -> String {
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    const GET: &str = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn at_the_cap_a_new_connection_replaces_the_oldest_idle_one() {
        let server = start(ApiLimits {
            max_connections: 2,
            ..Default::default()
        })
        .await;
        let mut oldest = UnixStream::connect(&server.path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _newer = UnixStream::connect(&server.path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answered = exchange(&server.path, GET).await;
        assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
        let started = std::time::Instant::now();
        assert_eq!(read_all(&mut oldest).await, "", "closed without a word");
        assert!(started.elapsed() < Duration::from_secs(1));
        server.stop().await;
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_a_new_one_gets_a_one_line_503() {
        let server = start(ApiLimits {
            max_connections: 2,
            ..Default::default()
        })
        .await;
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut s = UnixStream::connect(&server.path).await.unwrap();
            // A header under way: not idle.
            s.write_all(b"GET /echo HTTP/1.1\r\n").await.unwrap();
            busy.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = exchange(&server.path, GET).await;
        assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
        assert!(
            refused.ends_with(
                r#"{"error":"too many open API connections (the daemon allows 2); try again later"}"#
            ),
            "{refused}"
        );
        busy.pop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answered = exchange(&server.path, GET).await;
        assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
        server.stop().await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout_and_frees_its_place() {
        let server = start(ApiLimits {
            max_connections: 1,
            header_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .await;
        let mut idle = UnixStream::connect(&server.path).await.unwrap();
        let started = std::time::Instant::now();
        let got = read_all(&mut idle).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "closed after {waited:?}: {got:?}"
        );
        // A header started but never finished is cut off the same way.
        let mut slow = UnixStream::connect(&server.path).await.unwrap();
        slow.write_all(b"GET /echo HTTP/1.1\r\nHost").await.unwrap();
        let started = std::time::Instant::now();
        read_all(&mut slow).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(slow);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answered = exchange(&server.path, GET).await;
        assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_408() {
        let server = start(ApiLimits {
            body: BodyLimits {
                timeout: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let mut s = UnixStream::connect(&server.path).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"a\"")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let resp = String::from_utf8_lossy(&buf[..n]);
        assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
        assert!(
            resp.ends_with(r#"{"error":"request body not received within 0.3 s"}"#),
            "{resp}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_body_over_the_size_limit_is_413_and_one_under_it_is_read() {
        let server = start(ApiLimits {
            body: BodyLimits {
                max_bytes: 64,
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(100));
        let resp = exchange(&server.path, &post_echo(&big)).await;
        assert!(resp.starts_with("HTTP/1.1 413 "), "{resp}");
        assert!(
            resp.ends_with(
                r#"{"error":"request body larger than 64 bytes, the most the daemon accepts"}"#
            ),
            "{resp}"
        );
        let resp = exchange(&server.path, &post_echo(r#"{"x":1}"#)).await;
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
        assert!(resp.ends_with(r#"{"x":1}"#), "{resp}");
        server.stop().await;
    }

    /// Collects log output for one test.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_change_is_logged_with_the_callers_uid_and_pid() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let server = start(ApiLimits::default()).await;
        exchange(&server.path, &post_echo(r#"{"x":1}"#)).await;
        exchange(&server.path, GET).await;
        server.stop().await;
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let line = text
            .lines()
            .find(|l| l.contains("API change request"))
            .unwrap_or_else(|| panic!("no change logged: {text}"));
        assert!(line.contains("method=POST"), "{line}");
        assert!(line.contains("path=/echo"), "{line}");
        assert!(line.contains(&format!("uid={uid}")), "{line}");
        assert!(
            line.contains(&format!("pid={}", std::process::id())),
            "{line}"
        );
        assert!(line.contains("status=200"), "{line}");
        assert_eq!(
            text.matches("API change request").count(),
            1,
            "reads are not logged: {text}"
        );
    }
}
