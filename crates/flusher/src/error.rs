//! The one error type of the flusher. Variants keep their causes (the log line prints the
//! chain, see `service_kit::report`), and two rules decide what an error means: [`is_fatal`]
//! (stop the process) and [`is_usage`] (exit code 2).
//!
//! [`is_fatal`]: FlusherError::is_fatal
//! [`is_usage`]: FlusherError::is_usage

use redis_queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum FlusherError {
    /// Settings that are wrong alone (an unparsable URL, a missing `--retention`).
    #[error("{0}")]
    Config(String),
    /// Flags that are fine alone but not together: exit code 2, as clap's own refusals.
    #[error("{0}")]
    Usage(String),
    /// A Redis call failed, timed out, or the queue's layout does not match the settings.
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    PostgresPool(#[from] deadpool_postgres::PoolError),
    /// Taking a connection or a write took longer than `--pg-timeout-ms`.
    #[error("postgres: {what} took longer than {ms} ms (--pg-timeout-ms)")]
    PostgresTimeout { what: &'static str, ms: u128 },
    #[error("migration {name}: {source}")]
    Migration {
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot listen on {addr} for /metrics, /healthz and /readyz (another flusher on this \
         host? give each its own --metrics-bind or FLUSHER_METRICS_BIND)"
    )]
    MetricsBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("a worker panicked: {0}")]
    Panic(#[from] tokio::task::JoinError),
}

impl From<redis_queue::redis::RedisError> for FlusherError {
    fn from(e: redis_queue::redis::RedisError) -> Self {
        FlusherError::Queue(QueueError::Redis(e))
    }
}

impl FlusherError {
    /// The process must stop: the queue's layout in Redis does not match this process's
    /// settings (a different shard count, an unsharded backlog), or a worker panicked.
    pub fn is_fatal(&self) -> bool {
        match self {
            FlusherError::Queue(e) => e.is_fatal(),
            FlusherError::Panic(_) | FlusherError::Usage(_) => true,
            _ => false,
        }
    }

    /// Exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, FlusherError::Usage(_))
    }

    /// The consumer group (or the stream) is gone, e.g. after Redis lost its data: re-create it.
    pub fn is_no_group(&self) -> bool {
        matches!(self, FlusherError::Queue(e) if e.code() == Some("NOGROUP"))
    }

    /// An error reply from a healthy Redis (as opposed to a connection that failed).
    pub fn redis_code(&self) -> Option<&str> {
        match self {
            FlusherError::Queue(e) => e.code(),
            _ => None,
        }
    }
}
