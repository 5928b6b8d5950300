//! `bench`: what `scripts/bench` runs. Measures EventTracker against the limits of the Redis and
//! PostgreSQL it runs on, on the same machine and in the same run: starts private services,
//! runs the raw tools and the pipeline (through `loadgen`), prints a table with the targets met
//! or MISSED, writes the JSON (serde) and an SVG picture beside it. See bench/README.md.

mod cluster;
mod config;
mod cpu;
mod e2e;
mod flush;
mod ingest;
#[path = "../loadgen/output.rs"]
mod output;
mod procs;
mod raw;
mod report;
mod services;
mod svg;
mod write;

use std::process::ExitCode;

use clap::Parser;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Fails with a formatted message.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*).into()) };
}

/// Adds what was being done to an error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()).into())
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| what().into())
    }
}

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let cfg = match config::Config::new(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    services::on_signals(&cfg);
    let result = run(&cfg);
    procs::stop_all_children();
    services::stop(&cfg);
    if let Some(code) = services::interrupted() {
        eprintln!("bench: interrupted; logs kept in {}", cfg.work.display());
        return ExitCode::from(code);
    }
    match result {
        Ok(()) => {
            cfg.discard_work();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "bench: FAILED after {:.0}s: {e}",
                cfg.started.elapsed().as_secs_f64()
            );
            eprintln!("bench: logs kept in {}", cfg.work.display());
            ExitCode::FAILURE
        }
    }
}

/// Every measurement in order, then the table, the JSON and the picture.
fn run(cfg: &config::Config) -> Result<()> {
    services::check_ports_free(cfg)?;
    services::claim(cfg);
    let settings = services::start(cfg)?;
    let mut rep = report::Report::new(cfg, settings);
    raw::raw_xadd(cfg, &mut rep)?;
    flush::flush_rows(cfg, &mut rep)?;
    let ingest_api = ingest::ingest_row(cfg, &mut rep)?;
    ingest::ingest_https_row(cfg, &mut rep)?;
    e2e::e2e_rows(cfg, &mut rep, ingest_api)?;
    rep.add_ratios();
    cluster::cluster_rows(cfg, &mut rep)?;
    rep.finish(cfg)
}
