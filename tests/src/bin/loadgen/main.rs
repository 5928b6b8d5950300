//! `loadgen`: the load generator and measuring tool behind `scripts/bench`.
//!
//! Every subcommand prints one line of JSON on stdout (its result, see `output.rs`) and exits
//! non-zero on failure; `loadgen entry` prints a raw queue entry instead. `loadgen --help` and
//! `loadgen SUBCOMMAND --help` describe the flags.

mod copy;
mod drain;
mod events;
mod fill;
mod ingest;
mod output;
mod poller;
mod queue;
mod sender;
mod stats;
mod tracker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and measuring tool behind scripts/bench"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// POST batches of unique events to ingest-api for a fixed time (paced with --rate).
    Ingest(ingest::IngestArgs),
    /// Ingest at a paced rate while a poller times each sampled batch from its 200 to its rows
    /// being visible in PostgreSQL.
    E2e(ingest::E2eArgs),
    /// Queue N events straight into the stream (MULTI/EXEC of `chunk` XADDs, as ingest-api does).
    Fill(fill::FillArgs),
    /// Started with the flushers: poll XLEN until the queue is empty.
    Drain(drain::DrainArgs),
    /// Load a binary COPY file in transactions of `batch` rows over one connection.
    Copy(copy::CopyArgs),
    /// Print one queue entry's `e` field (an event-sized payload for redis-benchmark), not JSON.
    Entry,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(Some(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand; its result as one line of JSON (None: it printed what it had to).
async fn run(cmd: Cmd) -> Result<Option<String>, Error> {
    let line = match cmd {
        Cmd::Ingest(a) => serde_json::to_string(&ingest::ingest(&a).await?)?,
        Cmd::E2e(a) => serde_json::to_string(&ingest::e2e(&a).await?)?,
        Cmd::Fill(a) => serde_json::to_string(&fill::fill(&a).await?)?,
        Cmd::Drain(a) => serde_json::to_string(&drain::drain(&a).await?)?,
        Cmd::Copy(a) => serde_json::to_string(&copy::copy(&a).await?)?,
        Cmd::Entry => {
            let events_gen = events::EventGen::new();
            let entry = events_gen.queued(events_gen.ids.next(), OffsetDateTime::now_utc());
            print!("{}", entry.encode());
            return Ok(None);
        }
    };
    Ok(Some(line))
}
