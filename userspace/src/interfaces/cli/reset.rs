//! `berth reset` (and `berth daemon --teardown`).
use std::path::PathBuf;

use clap::Args;

use super::{output::print, DEFAULT_BPFFS, DEFAULT_STATE_DIR};
use crate::{
    adapters::{
        host::SystemHost,
        reset::{self, ResetConfig},
    },
    domain::error::{Error, Result},
};

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The daemon's --state-dir.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The daemon's --bpffs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

pub async fn run(args: ResetArgs, socket: PathBuf) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::ResetNotRoot);
    }
    let config = ResetConfig {
        socket,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
    };
    let report = reset::reset(&config, &SystemHost::default()).await?;
    print(&format!("berth reset: {report}\n"))
}
