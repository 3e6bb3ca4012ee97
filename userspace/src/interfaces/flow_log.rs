//! `berth daemon --flow-log`: VPC-Flow-Log records of the published-port
//! flows, one capture window at a time, to stdout or to a file with
//! size-based rotation. The ring of refused flows is read as it fills;
//! at each window's end the flow tables are read and the window's records
//! written (see `engine::flowlog` for what a record holds).
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use tokio::{io::unix::AsyncFd, sync::oneshot, time::MissedTickBehavior};

use crate::{
    adapters::datapath::flowlog::{FlowLogTap, FlowRing},
    domain::{
        error::{Error, Result},
        flowlog::{FlowLogFormat, Record},
    },
    engine::{
        flowlog::{Aggregator, Clock, WindowInput},
        registry::Berth,
    },
};

/// AWS's default and longest capture window is 10 minutes, its shortest
/// one minute; berth's default is AWS's shortest.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// Shorter windows mean a table scan more often for little more detail.
pub const MIN_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_MAX_SIZE_MIB: u64 = 64;
pub const DEFAULT_MAX_FILES: u32 = 5;

#[derive(Debug, Args)]
pub struct FlowLogArgs {
    /// Write VPC-Flow-Log records of published-port flows to this file
    /// (rotated by size), or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub flow_log: Option<PathBuf>,
    /// The record's fields, as AWS writes a custom format: '${version}
    /// ${srcaddr} ${pkt-dstaddr} …' [default: the version-2 fields].
    #[arg(long, value_name = "FORMAT", requires = "flow_log", value_parser = parse_format)]
    pub flow_log_format: Option<FlowLogFormat>,
    /// Seconds per capture window (at least 10).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_INTERVAL_SECS, value_parser = parse_interval)]
    pub flow_log_interval: u64,
    /// Rotate the file once it would grow past this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MAX_SIZE_MIB, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub flow_log_max_size: u64,
    /// Files kept: the current one and the rotated PATH.1 … PATH.(N-1).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FILES, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flow_log_max_files: u32,
    /// The `account-id` field [default: `-`].
    #[arg(long, value_name = "ID", requires = "flow_log", value_parser = parse_account)]
    pub flow_log_account_id: Option<String>,
}

fn parse_format(s: &str) -> std::result::Result<FlowLogFormat, String> {
    FlowLogFormat::parse(s)
}

fn parse_interval(s: &str) -> std::result::Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if n < MIN_INTERVAL_SECS {
        return Err(format!(
            "a capture window is at least {MIN_INTERVAL_SECS} seconds"
        ));
    }
    if n > 86_400 {
        return Err("a capture window is at most 86400 seconds".into());
    }
    Ok(n)
}

fn parse_account(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("an account id is 1 to 64 letters, digits or '-'".into());
    }
    Ok(s.to_string())
}

/// Where records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Stdout,
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct FlowLogConfig {
    pub dest: Dest,
    pub format: FlowLogFormat,
    pub interval: Duration,
    pub max_bytes: u64,
    pub max_files: u32,
    pub account_id: Option<String>,
}

impl FlowLogArgs {
    pub fn config(self) -> Option<FlowLogConfig> {
        let path = self.flow_log?;
        Some(FlowLogConfig {
            dest: if path.as_os_str() == "-" {
                Dest::Stdout
            } else {
                Dest::File(path)
            },
            format: self.flow_log_format.unwrap_or_default(),
            interval: Duration::from_secs(self.flow_log_interval),
            max_bytes: self.flow_log_max_size * 1024 * 1024,
            max_files: self.flow_log_max_files,
            account_id: self.flow_log_account_id,
        })
    }
}

/// Appends lines to stdout or to a file, rotating the file by size:
/// `PATH` is renamed `PATH.1`, `PATH.1` `PATH.2`, …, and the oldest of
/// `max_files` is deleted.
pub struct Writer {
    dest: Dest,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl Writer {
    /// Opens the file (creating it 0640, appending to what is there) so a
    /// bad path stops the daemon at start, not at the first window.
    pub fn open(c: &FlowLogConfig) -> Result<Self> {
        let mut w = Self {
            dest: c.dest.clone(),
            file: None,
            size: 0,
            max_bytes: c.max_bytes,
            max_files: c.max_files,
        };
        if let Dest::File(path) = &c.dest {
            w.reopen(path)
                .map_err(|e| Error::io(format!("opening the flow log {}", path.display()), e))?;
        }
        Ok(w)
    }

    fn reopen(&mut self, path: &Path) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    fn rotate(&mut self, path: &Path) -> io::Result<()> {
        self.file = None;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        if self.max_files <= 1 {
            fs::remove_file(path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(numbered(self.max_files - 1)).or_else(ignore_missing)?;
            for n in (1..self.max_files - 1).rev() {
                fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
            }
            fs::rename(path, numbered(1)).or_else(ignore_missing)?;
        }
        self.reopen(path)
    }

    /// Writes the lines; one window's lines go to one file.
    pub fn write_lines(&mut self, lines: &[String]) -> io::Result<()> {
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        match self.dest.clone() {
            Dest::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf.as_bytes())?;
                out.flush()
            }
            Dest::File(path) => {
                if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
                    self.rotate(&path)?;
                }
                if self.file.is_none() {
                    self.reopen(&path)?;
                }
                let f = self.file.as_mut().expect("opened just above");
                f.write_all(buf.as_bytes())?;
                self.size += buf.len() as u64;
                Ok(())
            }
        }
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe {
        libc::clock_gettime(id, &raw mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Both clocks now.
pub fn clock_now() -> Clock {
    Clock {
        mono_ns: clock_ns(libc::CLOCK_MONOTONIC),
        unix_ns: clock_ns(libc::CLOCK_REALTIME),
    }
}

/// The uplinks' ifindexes and names, for `interface-id`.
pub fn uplink_indexes(names: &[String]) -> Vec<(u32, String)> {
    names
        .iter()
        .filter_map(|n| {
            let c = std::ffi::CString::new(n.as_str()).ok()?;
            // SAFETY: a valid NUL-terminated name.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            (i != 0).then(|| (i, n.clone()))
        })
        .collect()
}

/// Everything the flow log runs on.
pub struct FlowLog {
    pub config: FlowLogConfig,
    pub tap: FlowLogTap,
    pub ring: FlowRing,
    pub writer: Writer,
    pub uplinks: Vec<(u32, String)>,
}

/// Runs until `stop` fires, then writes the window in progress and returns.
pub async fn run(log: FlowLog, berth: Berth, stop: oneshot::Receiver<()>) {
    let FlowLog {
        config,
        mut tap,
        ring,
        mut writer,
        uplinks,
    } = log;
    // SAFETY: the ring owns its map's fd, which stays open and the same
    // for as long as the ring lives, and the AsyncFd owns the ring.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "flow log: cannot watch the datapath's ring; no flow log");
            return;
        }
    };
    let lost_now = tap.lost().unwrap_or(0);
    let mut agg = Aggregator::new(
        config.account_id.clone(),
        uplinks,
        clock_now().now_s(),
        lost_now,
    );
    match tap.scan() {
        Ok(live) => agg.seed(&live),
        Err(e) => tracing::warn!(error = %e, "flow log: reading the flow tables at start"),
    }
    let start = tokio::time::Instant::now() + config.interval;
    let mut tick = tokio::time::interval_at(start, config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        let last = tokio::select! {
            guard = ring.readable_mut() => {
                match guard {
                    Ok(mut g) => {
                        let clock = clock_now();
                        g.get_inner_mut().drain(|ev| agg.refused(ev, &clock));
                        g.clear_ready();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "flow log: reading the datapath's ring");
                        return;
                    }
                }
                continue;
            }
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let clock = clock_now();
        ring.get_mut().drain(|ev| agg.refused(ev, &clock));
        // Walking the flow tables (one syscall per flow) and writing the
        // window are blocking work: the daemon's async work shares one
        // thread, which the API must keep.
        let scanned = tokio::task::spawn_blocking(move || {
            let live = tap.scan();
            (tap, live)
        })
        .await;
        let live = match scanned {
            Ok((t, live)) => {
                tap = t;
                live.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "flow log: reading the flow tables");
                    Vec::new()
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "flow log: reading the flow tables failed; no flow log");
                return;
            }
        };
        let bindings = berth.bindings().await;
        let records: Vec<Record> = agg.close(WindowInput {
            live,
            departed: tap.take_departed(),
            lost_total: tap.lost().unwrap_or(0),
            bindings: &bindings,
            clock: clock_now(),
        });
        let lines: Vec<String> = records.iter().map(|r| config.format.render(r)).collect();
        let written = tokio::task::spawn_blocking(move || {
            let r = writer.write_lines(&lines);
            (writer, r, lines.len())
        })
        .await;
        match written {
            Ok((w, r, records)) => {
                writer = w;
                if let Err(e) = r {
                    tracing::warn!(error = %e, records, "flow log: writing a window's records");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "flow log: writing a window's records failed; no flow log");
                return;
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dest: Dest, max_bytes: u64, max_files: u32) -> FlowLogConfig {
        FlowLogConfig {
            dest,
            format: FlowLogFormat::default(),
            interval: Duration::from_mins(1),
            max_bytes,
            max_files,
            account_id: None,
        }
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let mut w = Writer::open(&config(Dest::File(path.clone()), 30, 3)).unwrap();
        for i in 0..5 {
            w.write_lines(&[format!("window {i} line 1"), format!("window {i} line 2")])
                .unwrap();
        }
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "window 4 line 1\nwindow 4 line 2\n");
        assert_eq!(
            read(&dir.path().join("flows.log.1")),
            "window 3 line 1\nwindow 3 line 2\n"
        );
        assert_eq!(
            read(&dir.path().join("flows.log.2")),
            "window 2 line 1\nwindow 2 line 2\n"
        );
        assert!(!dir.path().join("flows.log.3").exists());
    }

    #[test]
    fn an_existing_file_is_appended_to_and_counts_towards_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        fs::write(&path, "0123456789\n").unwrap();
        let mut w = Writer::open(&config(Dest::File(path.clone()), 20, 2)).unwrap();
        w.write_lines(&["abc".into()]).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "0123456789\nabc\n");
        w.write_lines(&["0123456789".into()]).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "0123456789\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("flows.log.1")).unwrap(),
            "0123456789\nabc\n"
        );
    }

    #[test]
    fn a_bad_path_fails_at_open_in_one_line() {
        let err = Writer::open(&config(
            Dest::File("/nonexistent-dir/flows.log".into()),
            10,
            2,
        ))
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("opening the flow log /nonexistent-dir/flows.log"),
            "{err}"
        );
    }

    #[test]
    fn windows_shorter_than_ten_seconds_are_refused() {
        assert_eq!(
            parse_interval("9").unwrap_err(),
            "a capture window is at least 10 seconds"
        );
        assert_eq!(parse_interval("10"), Ok(10));
        assert_eq!(
            parse_interval("x").unwrap_err(),
            "\"x\" is not a number of seconds"
        );
        assert_eq!(
            parse_interval("86401").unwrap_err(),
            "a capture window is at most 86400 seconds"
        );
        assert_eq!(
            parse_account("12 3").unwrap_err(),
            "an account id is 1 to 64 letters, digits or '-'"
        );
        assert_eq!(parse_account("123456789012").unwrap(), "123456789012");
    }
}
