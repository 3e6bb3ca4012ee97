//! `berth log`: the daemon's logging at run time.
use clap::Args;

use crate::{
    domain::error::Result,
    interfaces::{
        api::log::{DatapathLogLevel, LogSettings},
        client::Client,
    },
};

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The datapath log: full tables, flow clashes, dropped spoofs and
    /// martians, policy refusals, rate-limited, into the daemon's log.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub datapath: DatapathLogLevel,
}

pub async fn run(client: &Client, args: LogArgs) -> Result<()> {
    let s = client
        .set_log(&LogSettings {
            datapath: args.datapath,
        })
        .await?;
    println!("datapath log: {}", s.datapath.as_str());
    Ok(())
}
