//! Configuration: every flag also reads an `INGEST_*` environment variable. `--help` is the
//! reference; the README's table is checked against it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use service_kit::logging::LogFormat;
use service_kit::secret::Secret;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingest-api",
    version,
    about = "EventTracker HTTP intake: authenticates, validates and queues event batches in a Redis stream."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "INGEST_BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,

    /// Redis URL (may hold a password; never logged); with --redis-cluster, comma-separated seed node URLs.
    #[arg(
        long,
        env = "INGEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true
    )]
    pub redis_url: Secret,

    /// Talk to a Redis Cluster (follows MOVED/ASK and topology changes) instead of one node.
    #[arg(long, env = "INGEST_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Redis stream key events are queued in (with shards: `<key>:{0}` … `<key>:{N-1}`).
    #[arg(long, env = "INGEST_STREAM_KEY", default_value = "event_queue")]
    pub stream_key: String,

    /// Streams the queue is split into; each request goes to one. Must match every flusher's (stored in `<key>:shards`).
    #[arg(long, env = "INGEST_SHARDS", default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub shards: usize,

    /// API tokens as `source=secret` pairs, comma-separated. The source name is stored with every event.
    #[arg(
        long,
        env = "INGEST_TOKENS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub tokens: Vec<Secret>,

    /// File with one `source=secret` or `source=sha256:<64 hex>` a line (`#` starts a comment). Reread on SIGHUP and when it changes (a file that does not parse keeps the tokens in force).
    #[arg(long, env = "INGEST_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key. Reread on SIGHUP and when the file changes. Without it: plain HTTP, for a proxy that ends TLS.
    #[arg(long, env = "INGEST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert; needs --tls-cert. Reread with it.
    #[arg(long, env = "INGEST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Per-source rate limits as `source=RATE` or `source=RATE/BURST` (events per second, events at once; burst defaults to one second of rate), comma-separated; also `rate=`/`burst=` on a tokens file line. Off for sources not named. Past it: 429 rate_limited.
    #[arg(long, env = "INGEST_RATE_LIMITS", value_delimiter = ',')]
    pub rate_limits: Vec<String>,

    /// Timeout of every Redis call, in milliseconds; past it a request gets 503 queue_unavailable (on a cluster after up to 2× this, trying another shard).
    #[arg(long, env = "INGEST_REDIS_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub redis_timeout_ms: u64,

    /// Largest request body as received (compressed or not), in bytes.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_073_741_824))]
    pub max_body_bytes: usize,

    /// Largest request body after gzip decompression, in bytes.
    #[arg(long, env = "INGEST_MAX_DECOMPRESSED_BYTES", default_value_t = 10 * 1024 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_073_741_824))]
    pub max_decompressed_bytes: usize,

    /// Most bytes all request bodies together may hold in memory (past it: 503 server_busy).
    #[arg(long, env = "INGEST_MAX_INFLIGHT_BYTES", default_value_t = 128 * 1024 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_099_511_627_776))]
    pub max_inflight_bytes: usize,

    /// A request's headers must arrive within this many milliseconds (slowloris guard).
    #[arg(long, env = "INGEST_HEADER_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub header_timeout_ms: u64,

    /// A request's whole body must arrive within this many milliseconds (else 408).
    #[arg(long, env = "INGEST_BODY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub body_timeout_ms: u64,

    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "INGEST_KEEP_ALIVE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub keep_alive_secs: u64,

    /// Most concurrent connections per worker thread; past it new connections wait in the backlog.
    #[arg(long, env = "INGEST_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,

    /// Most events in one batch.
    #[arg(long, env = "INGEST_MAX_EVENTS", default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_events: usize,

    /// Largest `properties` JSON text of one event, in bytes.
    #[arg(long, env = "INGEST_MAX_PROPERTIES_BYTES", default_value_t = 32 * 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=1_073_741_824))]
    pub max_properties_bytes: usize,

    /// Earliest accepted event timestamp, in the contract's timestamp grammar (e.g. 2000-01-01T00:00:00Z).
    #[arg(
        long,
        env = "INGEST_MIN_TIMESTAMP",
        default_value = "2000-01-01T00:00:00Z"
    )]
    pub min_timestamp: String,

    /// How far ahead of the server's clock an event timestamp may be, in seconds.
    #[arg(long, env = "INGEST_MAX_FUTURE_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(0..=315_576_000))]
    pub max_future_secs: i64,

    /// A batch whose `sent_at` is further than this many seconds from the server's clock comes from a device with a wrong clock: each of its events is stored at `timestamp + (received_at - sent_at)`, its own timestamp kept as `device_time`, and the window judges the corrected time.
    #[arg(long, env = "INGEST_CLOCK_SKEW_THRESHOLD_SECS", default_value_t = 300, value_parser = clap::value_parser!(i64).range(1..=315_576_000))]
    pub clock_skew_threshold_secs: i64,

    /// Above this many entries in the queue (all shards together), requests get 503 queue_full.
    #[arg(long, env = "INGEST_MAX_QUEUE_LEN", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub max_queue_len: u64,

    /// Above this share of Redis `maxmemory` (used memory / maxmemory, on every shard's node), requests get 503 queue_full, so ingest alone never fills Redis.
    #[arg(long, env = "INGEST_MAX_REDIS_MEMORY_RATIO", default_value_t = 0.9, value_parser = crate::config::ratio)]
    pub max_redis_memory_ratio: f64,

    /// Seconds a client is told to wait (Retry-After) on a 503.
    #[arg(long, env = "INGEST_RETRY_AFTER_SECS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub retry_after_secs: u32,

    /// HTTP worker threads (0 = one per CPU core).
    #[arg(long, env = "INGEST_WORKERS", default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    pub workers: usize,

    /// Log lines as `text` or `json` (one object a line); the level comes from RUST_LOG.
    #[arg(long, env = "INGEST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds between SIGTERM/SIGINT and closing the listener: /readyz answers 503 and requests are still served, each answer with `Connection: close`, so load balancers stop sending first. Set it to how long yours takes to notice (probe interval × failures).
    #[arg(long, env = "INGEST_DRAIN_DELAY_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_delay_secs: u64,

    /// Seconds in-flight requests get to finish once the listener is closed (after --drain-delay-secs).
    #[arg(long, env = "INGEST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout_secs: u64,
}

/// A ratio in (0, 1], for `--max-redis-memory-ratio`.
pub fn ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!("{s:?} is not a number in (0, 1]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_passwords_never_show_in_debug() {
        let config = Config::try_parse_from([
            "ingest-api",
            "--tokens",
            "game=token-secret,tools=other-secret",
            "--redis-url",
            "redis://:redis-secret@r:6379/",
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(config.tokens.len(), 2);
        assert_eq!(config.tokens[1].expose(), "tools=other-secret");
    }
}
