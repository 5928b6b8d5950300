//! flusher binary: parse config, set up logging, run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use flusher::{Cli, Command, dead_letters, migrate, retention, run, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    flusher::telemetry::init_logging(cli.common.log_format);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.common, cli.run, shutdown_signal()).await,
        Command::Migrate => migrate(&cli.common).await,
        Command::Retention => retention(&cli.common).await,
        Command::DeadLetters(command) => dead_letters(&cli.common, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            log::error!("{msg}");
            if matches!(e, flusher::FlusherError::Usage(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
