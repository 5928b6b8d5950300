//! ingest-api binary: parse config, set up logging, bind, run until SIGTERM/SIGINT.

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Parser;
use ingest_api::{Config, run, shutdown_signal};

#[actix_web::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ingest_api::telemetry::init_logging(config.log_format);
    let listener = match TcpListener::bind(config.bind) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.bind);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound socket has an address");
    // Tests and scripts read this line to learn the port when --bind ends in :0.
    println!("ingest-api listening on http://{addr}");
    match run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            log::error!("{msg}");
            if matches!(e, ingest_api::StartError::Usage(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
