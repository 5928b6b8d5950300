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
    /// With its SQLSTATE and message when PostgreSQL answered with an error (tokio-postgres's
    /// own text is only "db error"). Not a `source`: the message already says all it holds.
    #[error("postgres: {}", describe_postgres(.0))]
    Postgres(tokio_postgres::Error),
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
    /// The `events` table does not have the columns this flusher writes, with their types: no
    /// row could be written, and none must be dead-lettered for it.
    #[error("{0}")]
    Schema(String),
}

impl From<tokio_postgres::Error> for FlusherError {
    fn from(e: tokio_postgres::Error) -> Self {
        FlusherError::Postgres(e)
    }
}

/// `SQLSTATE 53100: could not extend file …` for an error PostgreSQL sent (with its detail and
/// hint), else the client's text and its cause (`error connecting to server: Connection
/// refused`).
pub fn describe_postgres(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    if let Some(db) = e.as_db_error() {
        let mut text = format!("SQLSTATE {}: {}", db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The `class` label of `eventtracker_flusher_postgres_errors_total` for a failed write: the
/// SQLSTATE's class (its first two characters, e.g. `53` for insufficient resources such as a
/// full disk), or, when PostgreSQL sent none, `connection` (no connection, or it broke),
/// `timeout` (`--pg-timeout-ms` passed) or `other`.
pub fn sqlstate_class(sqlstate: &str) -> String {
    match sqlstate.get(..2) {
        Some(class) if class.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            class.to_ascii_uppercase()
        }
        _ => "other".into(),
    }
}
impl From<redis_queue::redis::RedisError> for FlusherError {
    fn from(e: redis_queue::redis::RedisError) -> Self {
        FlusherError::Queue(QueueError::Redis(e))
    }
}

impl FlusherError {
    /// The process must stop: the queue's layout in Redis does not match this process's
    /// settings (a different shard count, an unsharded backlog), the `events` columns do not
    /// match what it writes, or a worker panicked.
    pub fn is_fatal(&self) -> bool {
        match self {
            FlusherError::Queue(e) => e.is_fatal(),
            FlusherError::Panic(_) | FlusherError::Usage(_) | FlusherError::Schema(_) => true,
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

    /// The `class` label this error is counted under (see [`sqlstate_class`]).
    pub fn postgres_class(&self) -> String {
        let client = |e: &tokio_postgres::Error| match e.as_db_error() {
            Some(db) => sqlstate_class(db.code().code()),
            None if e.is_closed()
                || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                "connection".into()
            }
            None => "other".into(),
        };
        match self {
            FlusherError::Postgres(e) => client(e),
            FlusherError::PostgresPool(deadpool_postgres::PoolError::Backend(e)) => client(e),
            FlusherError::PostgresPool(deadpool_postgres::PoolError::Timeout(_))
            | FlusherError::PostgresTimeout { .. } => "timeout".into(),
            FlusherError::PostgresPool(_) => "connection".into(),
            _ => "other".into(),
        }
    }

    /// An error reply from a healthy Redis (as opposed to a connection that failed).
    pub fn redis_code(&self) -> Option<&str> {
        match self {
            FlusherError::Queue(e) => e.code(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_are_two_characters_or_other() {
        assert_eq!(sqlstate_class("53100"), "53");
        assert_eq!(sqlstate_class("57P01"), "57");
        assert_eq!(sqlstate_class("et001"), "ET");
        assert_eq!(sqlstate_class("5"), "other");
        assert_eq!(sqlstate_class("\"x1"), "other");
        let timeout = FlusherError::PostgresTimeout {
            what: "the COPY",
            ms: 300,
        };
        assert_eq!(timeout.postgres_class(), "timeout");
        assert_eq!(FlusherError::Config("x".into()).postgres_class(), "other");
    }
}
