//! Configuration: every flag also reads a `FLUSHER_*` environment variable. `--help` is the
//! reference; the README's table is checked against it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::retention::parse_duration;
use service_kit::logging::LogFormat;
use service_kit::secret::Secret;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flusher",
    version,
    about = "EventTracker writer: drains the Redis stream into TimescaleDB with binary COPY."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Drain the stream into PostgreSQL (the default when no subcommand is given).
    Run,
    /// Apply the SQL migrations that are not applied yet, then exit.
    Migrate,
    /// Drop chunks older than --retention once, then exit (for a cron job).
    Retention,
    /// Look at, replay or delete the entries in the dead-letter stream(s) `<stream-key>:dead`.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetterCommand {
    /// Print dead letters, oldest first, one JSON object a line (with the reason and SQLSTATE).
    List {
        /// Print at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        count: usize,
    },
    /// Put dead letters back on the queue (after fixing what made them fail).
    Requeue {
        /// Dead-letter entry IDs (as printed by `list`).
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Dead-letter entry IDs (as printed by `list`).
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Settings every subcommand needs.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// PostgreSQL URL (may hold a password; never logged).
    #[arg(
        long,
        env = "FLUSHER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/eventtracker",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Secret,

    /// Redis URL (may hold a password; never logged); with --redis-cluster, comma-separated seed node URLs.
    #[arg(
        long,
        env = "FLUSHER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: Secret,

    /// Talk to a Redis Cluster (follows MOVED/ASK and topology changes) instead of one node.
    #[arg(long, env = "FLUSHER_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// Redis stream key events are queued in; dead letters go to `<stream-key>:dead` (with shards: `<key>:{0}` … and `<key>:{0}:dead` …).
    #[arg(
        long,
        env = "FLUSHER_STREAM_KEY",
        default_value = "event_queue",
        global = true
    )]
    pub stream_key: String,

    /// Streams the queue is split into; every flusher reads all of them. Must match ingest-api's (stored in `<key>:shards`).
    #[arg(long, env = "FLUSHER_SHARDS", default_value_t = 1, global = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub shards: usize,

    /// Consumer group shared by all flushers.
    #[arg(long, env = "FLUSHER_GROUP", default_value = "flushers", global = true)]
    pub group: String,

    /// Drop event chunks older than this (e.g. `30d`, `12h`); off when not set. Recorded in Redis (`<key>:retention`), where ingest-api reads it and refuses events older than it less an hour.
    #[arg(long, env = "FLUSHER_RETENTION", value_parser = parse_duration, global = true)]
    pub retention: Option<Duration>,

    /// Log lines as `text` or `json` (one object a line); the level comes from RUST_LOG.
    #[arg(long, env = "FLUSHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Settings of the drain loop. Global, as [`GlobalArgs`] are: `flusher run --batch-size 10` and
/// `flusher --batch-size 10 run` mean the same (`flusher` alone is `flusher run`).
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// Consumer name in the group; defaults to `<hostname>-<pid>`.
    #[arg(long, global = true, env = "FLUSHER_CONSUMER")]
    pub consumer: Option<String>,

    /// Entries read and written per batch.
    #[arg(long, global = true, env = "FLUSHER_BATCH_SIZE", default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub batch_size: usize,

    /// Most rows one COPY carries: under a backlog, up to this many entries (several reads of --batch-size) are written in one statement, and the next COPY's entries are read while it is written; a light load is written read by read. Must be at least --batch-size.
    #[arg(long, global = true, env = "FLUSHER_MAX_COPY_ROWS", default_value_t = 3000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_copy_rows: usize,

    /// Batches in flight at once: each read by its own consumer (`<consumer>-<n>`) and written
    /// on its own pooled PostgreSQL connection.
    #[arg(long, global = true, env = "FLUSHER_CONCURRENCY", default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub concurrency: usize,

    /// How long one blocking read waits for new entries, in milliseconds (with shards: after a sweep of all found none, a read blocks on one shard for this / shards).
    #[arg(long, global = true, env = "FLUSHER_BLOCK_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub block_ms: u64,

    /// Timeout of every other Redis call, in milliseconds.
    #[arg(long, global = true, env = "FLUSHER_REDIS_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub redis_timeout_ms: u64,

    /// Entries pending longer than this (ms) with another consumer are claimed and written.
    #[arg(long, global = true, env = "FLUSHER_CLAIM_IDLE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub claim_idle_ms: u64,

    /// Consumers idle this long (seconds) with nothing pending are removed from the group.
    #[arg(long, global = true, env = "FLUSHER_CONSUMER_IDLE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub consumer_idle_secs: u64,

    /// An entry delivered more often than this is retried alone (and dead-lettered only if its data is refused).
    #[arg(long, global = true, env = "FLUSHER_MAX_DELIVERIES", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_deliveries: u64,

    /// First wait after a failed write, in milliseconds; doubles each time.
    #[arg(long, global = true, env = "FLUSHER_BACKOFF_INITIAL_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub backoff_initial_ms: u64,

    /// Longest wait between retries, in milliseconds.
    #[arg(long, global = true, env = "FLUSHER_BACKOFF_MAX_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub backoff_max_ms: u64,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(
        long,
        global = true,
        env = "FLUSHER_METRICS_BIND",
        default_value = "0.0.0.0:9100"
    )]
    pub metrics_bind: SocketAddr,

    /// Longest wait for a pooled PostgreSQL connection, and for each COPY (or de-duplicating write) to commit, in milliseconds; past it the connection is dropped and the batch retried. Must be below --claim-idle-ms [default: half of --claim-idle-ms, at most 10000].
    #[arg(long, global = true, env = "FLUSHER_PG_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub pg_timeout_ms: Option<u64>,

    /// How often a running flusher drops chunks older than --retention, in seconds (one flusher at a time).
    #[arg(long, global = true, env = "FLUSHER_RETENTION_EVERY_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub retention_every_secs: u64,

    /// PostgreSQL connections in the pool.
    #[arg(long, global = true, env = "FLUSHER_PG_POOL_SIZE", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub pg_pool_size: usize,

    /// Seconds to finish the batch in hand after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, global = true, env = "FLUSHER_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout_secs: u64,
}

impl RunConfig {
    /// What clap cannot check flag by flag: how flags relate.
    pub fn check(&self) -> Result<(), String> {
        if self.max_copy_rows < self.batch_size {
            return Err(format!(
                "--max-copy-rows ({}) must be at least --batch-size ({})",
                self.max_copy_rows, self.batch_size
            ));
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(format!(
                "--backoff-initial-ms ({}) must not be above --backoff-max-ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        // A write still running when another flusher may claim its entries would race it.
        if self.pg_timeout().as_millis() >= u128::from(self.claim_idle_ms) {
            return Err(format!(
                "--pg-timeout-ms ({}) must be below --claim-idle-ms ({}): a write must give up \
                 before another flusher may claim its entries",
                self.pg_timeout().as_millis(),
                self.claim_idle_ms
            ));
        }
        Ok(())
    }

    /// `--pg-timeout-ms`, or half of `--claim-idle-ms` up to 10 s.
    pub fn pg_timeout(&self) -> Duration {
        Duration::from_millis(
            self.pg_timeout_ms
                .unwrap_or((self.claim_idle_ms / 2).clamp(1, 10_000)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_never_show_in_debug() {
        let cli = Cli::try_parse_from([
            "flusher",
            "--database-url",
            "postgres://u:pg-secret@db/x",
            "--redis-url",
            "redis://:redis-secret@r:6379/",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(
            cli.common.database_url.expose(),
            "postgres://u:pg-secret@db/x"
        );
    }
}
