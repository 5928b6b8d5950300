//! flusher binary: parse config, set up logging, run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use flusher::{Cli, FlusherError, commands};
use service_kit::{logging, report, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.common.log_format);
    let result = commands::dispatch(cli, shutdown::signal()).await;
    report::exit_code(result, FlusherError::is_usage)
}
