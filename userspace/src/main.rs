//! `berth`: the daemon and the CLI in one binary; all logic is in the library.
use std::process::ExitCode;

use anyhow::Context as _;
use berth::cli::{one_line_clap_error, Cli};
use clap::{error::ErrorKind, Parser as _};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.is_daemon() {
        init_logging();
    }
    // One thread for the daemon too. Its async work is waiting on sockets,
    // netlink and timers, and short handlers; what takes long (store
    // commits, walks of the flow tables) runs on the blocking pool. The
    // multi-threaded runtime would start a worker per CPU (96 on a 96-core
    // host), each with its stack and malloc arena: memory that follows the
    // host's size, not the work (issue 11).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(cli.execute())?;
    Ok(())
}

/// key=value logs on stderr; `RUST_LOG` overrides the default `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn clap_exit(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        // Bare `berth` or `berth map`: the help is the most useful answer,
        // but it is still a failed command.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("berth: {}", one_line_clap_error(err));
            ExitCode::FAILURE
        }
    }
}
