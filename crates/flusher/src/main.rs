//! flusher binary: parse config, set up logging, run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use flusher::{Cli, FlusherError, commands};
use service_kit::{logging, report, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.common.log_format);
    shutdown::log_hangups(
        "ignored: the flusher reads its settings at start (restart it to change them)",
    );
    let result = commands::dispatch(cli, shutdown::signal()).await;
    report::exit_code(result, FlusherError::is_usage)
}
