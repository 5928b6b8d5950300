//! flusher: drains the Redis queue into TimescaleDB. Reads batches as a consumer of a group,
//! writes each with one binary COPY, and acknowledges entries only after their rows committed.
//! Run as many as needed; they share the work through the consumer group.
//!
//! Where things live: [`commands`] (which subcommand runs; the one-shot ones), [`service`]
//! (`flusher run`: start-up, workers, shutdown), [`flush`] (a worker's loop: read, write, settle,
//! claim, isolate), [`sink`] (PostgreSQL: pool, COPY, de-duplication, error classes),
//! [`consumer`] (the consumer group on each shard), [`deadletters`], [`migrate`], [`retention`],
//! [`telemetry`] (metrics and probes), [`config`], [`error`].

pub mod commands;
pub mod config;
pub mod consumer;
pub mod deadletters;
pub mod error;
pub mod flush;
pub mod isolate;
pub mod migrate;
pub mod retention;
pub mod service;
pub mod sink;
pub mod telemetry;

pub use config::{Cli, Command, DeadLetterCommand, GlobalArgs, RunConfig};
pub use error::FlusherError;
