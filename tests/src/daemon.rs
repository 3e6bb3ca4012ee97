//! The real `berth daemon` in a topology's host namespace, and its CLI.
use std::{
    ffi::OsString,
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    cmd,
    names::TempDir,
    process::{tail, Child},
    Bpffs, Cgroup, NetNs,
};

/// How long a CLI call may take before it is killed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one raw API request.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start the daemon. `Default` matches the standard topology.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// `--uplink` (repeated).
    pub uplinks: Vec<String>,
    /// `--bridge`.
    pub bridge: String,
    /// `--attach`, if given.
    pub attach: Option<String>,
    /// Appended after the standard arguments.
    pub extra_args: Vec<String>,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// The binary; `None` means [`berth_bin`].
    pub bin: Option<PathBuf>,
    /// How long to wait for `GET /v1/health` to answer 200.
    pub startup_timeout: Duration,
    /// How long to wait after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            uplinks: vec![crate::topology::addr::UPLINK.to_string()],
            bridge: crate::topology::addr::BRIDGE.to_string(),
            attach: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            bin: None,
            startup_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// A running `berth daemon` (via `ip netns exec <host> berth daemon …`)
/// with its socket, state dir and logs in a private temp dir. Dropping the
/// guard stops it (SIGTERM, then SIGKILL) and, if the test is panicking,
/// prints the daemon's stderr. Drop it before the [`Bpffs`] and the
/// namespace it runs in (declare it after them).
#[derive(Debug)]
pub struct Daemon {
    bin: PathBuf,
    netns: String,
    argv: Vec<OsString>,
    /// Where `argv`'s [`DaemonOptions::extra_args`] begin.
    extra_from: usize,
    env: Vec<(String, String)>,
    startup_timeout: Duration,
    stop_timeout: Duration,
    socket: PathBuf,
    state_dir: PathBuf,
    bpffs: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    // Removed after the child has been stopped.
    cgroup: Cgroup,
    dir: TempDir,
}

impl Daemon {
    /// Starts the daemon in `host` with default options and waits until its
    /// API answers.
    pub fn start(host: &NetNs, bpffs: &Bpffs) -> Result<Self> {
        Self::start_with(host, bpffs, DaemonOptions::default())
    }

    pub fn start_with(host: &NetNs, bpffs: &Bpffs, opts: DaemonOptions) -> Result<Self> {
        let bin = match opts.bin {
            Some(b) => b,
            None => berth_bin()?,
        };
        let dir = TempDir::new("daemon")?;
        let cgroup = Cgroup::new("cgroup")?;
        let socket = dir.path().join("berth.sock");
        let state_dir = dir.path().join("state");
        let mut argv: Vec<OsString> = vec!["daemon".into()];
        for u in &opts.uplinks {
            argv.extend(["--uplink".into(), u.into()]);
        }
        argv.extend(["--bridge".into(), opts.bridge.clone().into()]);
        argv.extend(["--socket".into(), socket.clone().into()]);
        argv.extend(["--state-dir".into(), state_dir.clone().into()]);
        argv.extend(["--bpffs".into(), bpffs.path().into()]);
        if let Some(a) = &opts.attach {
            argv.extend(["--attach".into(), a.into()]);
        }
        let extra_from = argv.len();
        argv.extend(opts.extra_args.iter().map(OsString::from));
        let mut d = Self {
            bin,
            netns: host.name().to_string(),
            argv,
            extra_from,
            env: {
                let mut env = opts.env;
                // The bind guard covers this cgroup only, never the host's root.
                env.push(("BERTH_CGROUP".into(), cgroup.path().display().to_string()));
                env
            },
            startup_timeout: opts.startup_timeout,
            stop_timeout: opts.stop_timeout,
            socket,
            state_dir,
            bpffs: bpffs.path().to_path_buf(),
            stdout_path: dir.path().join("daemon.stdout"),
            stderr_path: dir.path().join("daemon.stderr"),
            child: None,
            starts: 0,
            cgroup,
            dir,
        };
        d.start_again()?;
        Ok(d)
    }

    /// Starts the process again with the same arguments, socket, state dir
    /// and bpffs (after [`Daemon::stop`] or [`Daemon::kill`]) and waits
    /// until it is healthy.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!(
                "the daemon is already running (pid {})",
                self.pid().unwrap_or(0)
            );
        }
        self.child = None;
        self.starts += 1;
        // Mark each start in the log so restarts can be told apart.
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
        {
            let _ = writeln!(f, "--- berth-integration: start #{} ---", self.starts);
        }
        let c = self.daemon_command();
        let mut child =
            Child::spawn_logging_to(c, self.stdout_path.clone(), self.stderr_path.clone())?;
        child.set_stop_timeout(self.stop_timeout);
        self.child = Some(child);
        self.wait_healthy()
    }

    /// `ip netns exec <host> berth daemon …` with its environment.
    fn daemon_command(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns])
            .arg(&self.bin)
            .args(&self.argv);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// How the daemon is started, as a line a person can paste into a root
    /// shell (the demo prints it).
    pub fn command_line(&self) -> String {
        cmd::shell_line(&self.daemon_command())
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.startup_timeout;
        let mut last_err = anyhow!("no answer yet");
        loop {
            let child = self.child.as_mut().context("daemon not started")?;
            if let Some(st) = child.try_wait()? {
                bail!(
                    "berth daemon exited during startup ({st}); stderr:\n{}",
                    tail(&self.stderr(), 40)
                );
            }
            match api_request(
                &self.socket,
                "GET",
                "/v1/health",
                None,
                Duration::from_secs(2),
            ) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last_err = anyhow!("health answered {}: {}", r.status, r.body),
                Err(e) => last_err = e,
            }
            if Instant::now() >= deadline {
                let stderr = tail(&self.stderr(), 40);
                if let Some(mut c) = self.child.take() {
                    let _ = c.stop();
                }
                bail!(
                    "berth daemon not healthy within {:?} ({last_err:#}); stderr:\n{stderr}",
                    self.startup_timeout
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait, SIGKILL if needed; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.stop(),
            None => bail!("the daemon was never started"),
        }
    }

    /// SIGKILL (a crash, as far as the daemon can tell).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.kill(),
            None => bail!("the daemon was never started"),
        }
    }

    /// Replaces the arguments given after the standard ones
    /// ([`DaemonOptions::extra_args`]), from the next start on.
    pub fn set_extra_args(&mut self, extra: &[&str]) {
        self.argv.truncate(self.extra_from);
        self.argv.extend(extra.iter().map(OsString::from));
    }

    /// [`Daemon::stop`] then [`Daemon::start_again`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::is_running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// The API socket (`--socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The cgroup the daemon's bind guard covers.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// `--bpffs`.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The temp dir holding the socket, state dir and logs.
    pub fn workdir(&self) -> &Path {
        self.dir.path()
    }

    /// The binary being run.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Everything the daemon wrote to stderr, across restarts.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the daemon wrote to stdout, across restarts.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// `berth --socket <sock> args…` run in the host namespace (where an
    /// operator would run it); the output whatever the exit status. Killed
    /// after [`CLI_TIMEOUT`].
    pub fn cli<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        cmd::output_with_timeout(&mut self.cli_command(args), CLI_TIMEOUT)
    }

    /// `ip netns exec <host> berth --socket <sock> args…`.
    fn cli_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns])
            .arg(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args);
        c
    }

    /// What [`Daemon::cli`] runs for `args`, as a line for a root shell.
    pub fn cli_command_line(&self, args: &[&str]) -> String {
        cmd::shell_line(&self.cli_command(args))
    }

    /// Like [`Daemon::cli`] but a non-zero exit is an error quoting stderr;
    /// returns stdout.
    pub fn cli_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.cli(&args)?;
        if !out.status.success() {
            bail!(
                "`berth {}` failed ({}): {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One raw HTTP/1.1 request to the API socket.
    pub fn api(&self, method: &str, path: &str, json_body: Option<&str>) -> Result<HttpResponse> {
        api_request(&self.socket, method, path, json_body, API_TIMEOUT)
    }

    /// [`Daemon::api`] with JSON in and out.
    pub fn api_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let body = body.map(ToString::to_string);
        let r = self.api(method, path, body.as_deref())?;
        let v = if r.body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.body)
                .with_context(|| format!("{method} {path}: body is not JSON: {:?}", r.body))?
        };
        Ok((r.status, v))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Err(e) = c.stop() {
                eprintln!("berth-integration: stopping the daemon: {e:#}");
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- berth daemon stderr ({}) ---\n{}\n--- end of daemon stderr ---",
                self.stderr_path.display(),
                tail(&self.stderr(), 80)
            );
        }
    }
}

/// The `berth` binary: `$BERTH_BIN`, else `berth` next to the running
/// executable or one directory up (test binaries live in
/// `target/<profile>/deps/`, bins in `target/<profile>/`).
pub fn berth_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("BERTH_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut looked = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("berth");
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
        dir = d.parent();
    }
    bail!(
        "berth binary not found (looked at {}); run `cargo build -p berth` or set BERTH_BIN",
        looked.join(", ")
    )
}

/// Status and body of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// Sends one HTTP/1.1 request (`Connection: close`) over a Unix socket and
/// reads the whole response within `timeout`.
pub fn api_request(
    socket: &Path,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    s.set_write_timeout(Some(timeout))?;
    let body = json_body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if json_body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())
        .with_context(|| format!("{method} {path}: cannot send"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{method} {path}: no complete answer within {timeout:?}");
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if let Some(r) = parse_http_response(&raw, false)? {
                    return Ok(r);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow!("{method} {path}: {e}")),
        }
    }
    parse_http_response(&raw, true)?.ok_or_else(|| {
        anyhow!(
            "{method} {path}: truncated response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Parses a complete response (Content-Length, chunked, or delimited by
/// EOF when `at_eof`); `None` while more bytes are needed.
fn parse_http_response(raw: &[u8], at_eof: bool) -> Result<Option<HttpResponse>> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let rest = &raw[head_end + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                content_length = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        match decode_chunked(rest)? {
            Some(b) => b,
            None => return Ok(None),
        }
    } else if let Some(n) = content_length {
        if rest.len() < n {
            return Ok(None);
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    if !chunked && content_length.is_none() && !at_eof {
        // Delimited by the end of the stream.
        return Ok(None);
    }
    Ok(Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| anyhow!("bad chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_responses_parse() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        let r = parse_http_response(raw, false).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "{\"ok\":true}");
        assert_eq!(
            parse_http_response(&raw[..raw.len() - 1], false).unwrap(),
            None
        );
    }

    #[test]
    fn chunked_responses_parse() {
        let raw = b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let r = parse_http_response(raw, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (409, "Wikipedia"));
    }
}
