//! A child process that is stopped (SIGTERM, then SIGKILL) and reaped when
//! its guard drops, with stdout and stderr captured to files so a failing
//! test can show them.
use std::{
    fs::{self, File},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd::describe, names::TempDir};

/// How long [`Child::stop`] waits after SIGTERM before it sends SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Guard for a spawned process. Dropping it stops and reaps the process.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    what: String,
    status: Option<ExitStatus>,
    stop_timeout: Duration,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _logs: Option<TempDir>,
}

impl Child {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr captured to
    /// files in a fresh temp dir.
    pub fn spawn(cmd: Command) -> Result<Self> {
        let logs = TempDir::new("child")?;
        let stdout_path = logs.path().join("stdout");
        let stderr_path = logs.path().join("stderr");
        let mut child = Self::spawn_logging_to(cmd, stdout_path, stderr_path)?;
        child._logs = Some(logs);
        Ok(child)
    }

    /// Spawns `cmd` with stdout/stderr appended to the given files (created
    /// if missing); the files are left in place.
    pub fn spawn_logging_to(
        mut cmd: Command,
        stdout_path: PathBuf,
        stderr_path: PathBuf,
    ) -> Result<Self> {
        let what = describe(&cmd);
        let open = |p: &PathBuf| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))
        };
        let out: File = open(&stdout_path)?;
        let err: File = open(&stderr_path)?;
        let inner = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot spawn `{what}`"))?;
        Ok(Self {
            inner,
            what,
            status: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            stdout_path,
            stderr_path,
            _logs: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The command line, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Changes how long [`Child::stop`] (and drop) waits before SIGKILL.
    pub fn set_stop_timeout(&mut self, timeout: Duration) {
        self.stop_timeout = timeout;
    }

    /// The exit status if the process has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .inner
                .try_wait()
                .with_context(|| format!("cannot wait for `{}`", self.what))?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the process by pid. Refused once it has been
    /// reaped, since the pid may belong to someone else by then.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_some() {
            bail!("`{}` has already exited", self.what);
        }
        // SAFETY: kill(2) on the pid of our own unreaped child.
        if unsafe { libc::kill(self.pid() as libc::pid_t, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!("cannot signal `{}` (pid {}): {e}", self.what, self.pid());
        }
        Ok(())
    }

    /// SIGTERM, wait up to the stop timeout, then SIGKILL; returns the exit
    /// status. Idempotent.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(st) = self.wait_timeout(self.stop_timeout)? {
            return Ok(st);
        }
        self.kill()
    }

    /// SIGKILL and reap; returns the exit status. Idempotent.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        self.signal(libc::SIGKILL)?;
        let st = self
            .inner
            .wait()
            .with_context(|| format!("cannot wait for `{}`", self.what))?;
        self.status = Some(st);
        Ok(st)
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("berth-integration: stopping `{}`: {e:#}", self.what);
        }
    }
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
