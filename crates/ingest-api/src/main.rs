//! ingest-api binary: parse config, set up logging, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use ingest_api::{Config, StartError, serve};
use service_kit::{logging, report, shutdown};

#[actix_web::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    report::exit_code(
        serve(config, shutdown::signal()).await,
        StartError::is_usage,
    )
}
