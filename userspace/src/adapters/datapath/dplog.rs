//! The datapath log's userspace end: aya-log's reader of the programs'
//! log ring, each line forwarded into the daemon's tracing log (target
//! `berth::datapath`), and the switch the programs check
//! (`CONFIG_DP_LOG`). The reader lives as long as the datapath: aya-log's
//! ring is a map the per-port programs, loaded later, still refer to.
use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
};

use berth_maps::{CONFIG_DP_LOG, CONFIG_MAP, DP_LOG_DEBUG, DP_LOG_OFF};

use super::{bpf::map_err, BpfDatapath, DatapathError};

/// Hands aya-log's records to tracing. They are written at info level: the
/// datapath log is off unless an operator turned it on.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "berth::datapath", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

pub(super) type Logger = Arc<Mutex<aya_log::EbpfLogger<TracingLog>>>;

/// The log ring, readable when its fd is.
pub struct DpLogReader {
    logger: Logger,
    fd: RawFd,
}

impl DpLogReader {
    /// Forwards every line waiting.
    pub fn flush(&self) {
        self.logger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
    }
}

impl AsRawFd for DpLogReader {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

pub(super) fn init(ebpf: &mut aya::Ebpf) -> Result<Logger, DatapathError> {
    let logger = aya_log::EbpfLogger::init_with_logger(ebpf, TracingLog)
        .map_err(|e| DatapathError::Other(format!("opening the datapath log: {e}")))?;
    Ok(Arc::new(Mutex::new(logger)))
}

impl BpfDatapath {
    /// A reader of the log ring for the daemon to poll.
    pub fn datapath_log_reader(&self) -> DpLogReader {
        let fd = self
            .dp_logger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_raw_fd();
        DpLogReader {
            logger: self.dp_logger.clone(),
            fd,
        }
    }

    pub(super) fn write_datapath_log(&self, on: bool) -> Result<(), DatapathError> {
        let level = if on { DP_LOG_DEBUG } else { DP_LOG_OFF };
        self.lock()
            .config
            .set(CONFIG_DP_LOG, level, 0)
            .map_err(map_err(CONFIG_MAP))
    }
}
