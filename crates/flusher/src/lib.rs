//! flusher: drains the Redis queue into TimescaleDB. Reads batches as a consumer of a group,
//! writes each with one binary COPY, and acknowledges entries only after their rows committed.
//! Run as many as needed; they share the work through the consumer group.
//!
//! Where things live: [`commands`] (which subcommand runs; the one-shot ones), [`service`]
//! (`flusher run`: start-up, workers, shutdown), [`flush`] (a worker's loop: read, claim, hand
//! each batch on), [`isolate`] (writing a batch and settling every entry), [`policy`] (what to
//! do after a failed write: pure), [`backoff`] (the one doubling wait), [`ack`] (the
//! acknowledgement behind the next batch), [`stats`] (the counters), [`sink`] (PostgreSQL: pool,
//! COPY, de-duplication), [`consumer`] (the consumer group on each shard), [`deadletters`],
//! [`migrate`], [`retention`], [`telemetry`] (metrics and probes), [`config`], [`error`].

pub mod ack;
pub mod backoff;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod deadletters;
pub mod error;
pub mod flush;
pub mod isolate;
pub mod migrate;
pub mod policy;
pub mod retention;
pub mod service;
pub mod sink;
pub mod stats;
pub mod telemetry;

pub use config::{Cli, Command, DeadLetterCommand, GlobalArgs, RunConfig};
pub use error::FlusherError;
