//! `berth events`: binding added/removed events, one JSON object per line.
use super::output::print;
use crate::{
    domain::error::{Error, Result},
    interfaces::client::Client,
};

/// Prints events as they come; `count` ends it early.
pub async fn run(client: &Client, existing: bool, count: Option<u64>) -> Result<()> {
    if count == Some(0) {
        return Ok(());
    }
    let mut seen = 0u64;
    let mut failed = None;
    client
        .events(existing, |line| {
            if let Err(err) = print(&format!("{line}\n")) {
                failed = Some(err);
                return false;
            }
            seen += 1;
            count.is_none_or(|n| seen < n)
        })
        .await?;
    match failed {
        Some(err) => Err(err),
        None if count.is_some_and(|n| seen < n) => Err(Error::DaemonProtocol(format!(
            "the daemon ended the event stream after {seen} events"
        ))),
        None => Ok(()),
    }
}
