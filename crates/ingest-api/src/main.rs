//! ingest-api binary: parse config, set up logging, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use ingest_api::{Config, StartError, serve};
use service_kit::{logging, report, shutdown};

/// Per event a request allocates and frees a dozen small buffers; mimalloc does that in a
/// fraction of glibc malloc's instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    report::exit_code(
        serve(config, shutdown::signal()).await,
        StartError::is_usage,
    )
}
